# The transactional outbox end to end against the test broker: send()
# publishes on COMMIT only (ROLLBACK, a rolled-back savepoint, an error
# abort and a prepared transaction publish nothing until they commit);
# 100,000 messages over 1,000 keys from 8 concurrent sessions go out once
# each, in commit order per key; the relay killed around its Kafka commit,
# the server stopped with -m immediate and the broker down lose nothing;
# refused messages become dead letters and the others go on; the status
# view.  Every topic is read back by another client (confluent-kafka, in
# read_committed).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use IPC::Run;
use PipelineExt::Broker;
use PipelineExt::Exporter;
use PipelineExt::Crash;

my $broker = PipelineExt::Broker->start(
	brokers => 1,
	topics => { ob_rb => 2, ob => 8, ob_kill => 8, ob_outage => 8, ob_crash => 4, ob_down => 2, ob_small => 1, ob_batch => 1, ob_moved => 1, ob_order => 1, ob_lat => 1, ob_restored => 1, ob_pitr => 1, ob_cut => 2, ob_keycheck => 8, ob_later => 1, ob_other => 1 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('outbox');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
max_prepared_transactions = 4
restart_after_crash = on
log_min_messages = info
pipeline_ext.outbox_round_max = 1000
pipeline_ext.produce_timeout = '5s'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	my $ok = $node->poll_query_until('postgres', $query, $expected);
	ok($ok, $what) or diag("last result: " . $node->safe_psql('postgres', $query)
		. "\nstatus: " . $node->safe_psql('postgres', 'SELECT * FROM pipeline.outbox_status'));
	return $ok;
}

# everything sent so far is out: nothing left in the outbox, no round in flight
sub wait_drained
{
	my ($what) = @_;
	return wait_for(q{SELECT NOT EXISTS (SELECT FROM pipeline.outbox)
	                  AND NOT EXISTS (SELECT FROM pipeline.outbox_relay WHERE pending IS NOT NULL)},
		't', $what);
}

sub read_topic { return $broker->read_topic($_[0]); }

# --- nothing leaves before COMMIT, nothing after ROLLBACK --------------------
sql(q{BEGIN; SELECT pipeline.send('local', 'ob_rb', 'rolled back', 'k'); ROLLBACK;});
sql(q{BEGIN;
SELECT pipeline.send('local', 'ob_rb', 'kept 1', 'k');
SAVEPOINT s;
SELECT pipeline.send('local', 'ob_rb', 'in a rolled-back savepoint', 'k');
ROLLBACK TO s;
SELECT pipeline.send('local', 'ob_rb', 'kept 2', 'k');
COMMIT;});
my ($rc, $out, $err) = $node->psql('postgres', q{BEGIN;
SELECT pipeline.send('local', 'ob_rb', 'error abort', 'k');
SELECT 1 / 0;
COMMIT;});
like($err, qr/division by zero/, 'a transaction that sent, then failed');
# prepared: not committed yet, so not published; a later transaction's
# message goes out meanwhile, and the prepared one follows its COMMIT
# PREPARED (it is not skipped for having the smaller id)
sql(q{BEGIN; SELECT pipeline.send('local', 'ob_rb', 'prepared', 'k'); PREPARE TRANSACTION 'ob_prep';});
sql(q{SELECT pipeline.send('local', 'ob_rb', 'after the prepare', 'k')});
wait_for(q{SELECT published FROM pipeline.outbox_relay WHERE connection = 'local'}, '3',
	'the later message is published, the prepared one waits');
is(join(',', map { $_->[3] } @{ read_topic('ob_rb') }), 'kept 1,kept 2,after the prepare',
	'ROLLBACK, a rolled-back savepoint, an error abort and an open prepared transaction publish nothing');
sql(q{COMMIT PREPARED 'ob_prep'});
wait_drained('the prepared transaction\'s message goes out after COMMIT PREPARED');
my $rb = read_topic('ob_rb');
is(join(',', map { $_->[3] } @$rb), 'kept 1,kept 2,after the prepare,prepared',
	'in commit order, though the prepared message has the smaller outbox id');
like($rb->[0][4], qr/^\d+$/, 'each message carries its outbox id in a header');
{
	my $id = sql(q{SELECT pipeline.send('local', 'ob_hdr', 'with its id', 'k')});
	wait_drained('one more message goes out');
	is(read_topic('ob_hdr')->[0][4], $id, '... the id send() returned');
}

# --- commit order where the database does not order the writers ---------
# Outbox ids are drawn at send().  Here the transaction that sends first
# commits second, and the relay (held on its row lock) sees both in one
# round: it must publish them in commit order, not id order.
wait_drained('nothing in flight before the commit-order case');
# a session that holds the relay on its row lock (its rounds wait) until COMMIT
sub hold_relay
{
	my $h = $node->background_psql('postgres');
	$h->query_safe(q{BEGIN; SELECT FROM pipeline.outbox_relay WHERE connection = 'local' FOR UPDATE});
	return $h;
}
my $hold = hold_relay();
my $slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT pipeline.send('local', 'ob_order', 'sent first, committed second', 'k')});
sql(q{SELECT pipeline.send('local', 'ob_order', 'sent second, committed first', 'k')});
$slow->query_safe('COMMIT');
$hold->query_safe('COMMIT');
$slow->quit;
$hold->quit;
wait_drained('the relay publishes both');
is(join(',', map { $_->[3] } @{ read_topic('ob_order') }),
	'sent second, committed first,sent first, committed second',
	'one key, one round: commit order, though the later commit has the smaller outbox id');
# the same with a prepared transaction: it commits at COMMIT PREPARED, in
# another session, after the other one
$hold = hold_relay();
sql(q{BEGIN; SELECT pipeline.send('local', 'ob_order', 'prepared first, committed fourth', 'k'); PREPARE TRANSACTION 'ob_order'});
sql(q{SELECT pipeline.send('local', 'ob_order', 'sent second, committed third', 'k')});
sql(q{COMMIT PREPARED 'ob_order'});
$hold->query_safe('COMMIT');
$hold->quit;
wait_drained('the relay publishes both');
is(join(',', map { $_->[3] } @{ read_topic('ob_order') }[2, 3]),
	'sent second, committed third,prepared first, committed fourth',
	'one round: a prepared transaction goes out at its COMMIT PREPARED\'s place in the commit order');
# commit times are lost with a restart: what committed before it goes
# first, in id order (here also the commit order; the xids are in the
# other order)
$hold = hold_relay();
$slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT pg_current_xact_id()});
sql(q{SELECT pipeline.send('local', 'ob_order', 'smaller id, larger xid', 'k')});
$slow->query_safe(q{SELECT pipeline.send('local', 'ob_order', 'larger id, smaller xid', 'k'); COMMIT});
$slow->quit;
$node->stop('fast');
$node->start;
wait_drained('after a restart, the relay publishes both');
is(join(',', map { $_->[3] } @{ read_topic('ob_order') }[4, 5]),
	'smaller id, larger xid,larger id, smaller xid',
	'commit times lost with a restart: id order');
# an epoch of more than a round (outbox_round_max = 1000): the message
# with the smaller id falls in the first round, the one that committed
# before it (and after 1,200 others) beyond the round's cut
$hold = hold_relay();
$slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT pipeline.send('local', 'ob_order', 'before the cut, committed last', 'k')});
sql(q{SELECT count(pipeline.send('local', 'ob_cut', g::text, g::text)) FROM generate_series(1, 1200) g});
sql(q{SELECT pipeline.send('local', 'ob_order', 'after the cut, committed first', 'k')});
$slow->query_safe('COMMIT');
$slow->quit;
$hold->query_safe('COMMIT');
$hold->quit;
wait_drained('the relay publishes the epoch');
is(join(',', map { $_->[3] } @{ read_topic('ob_order') }[6, 7]),
	'after the cut, committed first,before the cut, committed last',
	'an epoch of more than a round: commit order across the cut');
is(scalar(@{ read_topic('ob_cut') }), 1200, '... and the 1,200 others went out once each');

# --- latency from COMMIT, not from send() --------------------------------
# In a database of its own, so that its relay's figures hold one message:
# sent, then 3 s before COMMIT.  The latency is no more than what the test
# itself sees from COMMIT to published (plus the histogram's 12.5 %).
$node->safe_psql('postgres', 'CREATE DATABASE ob_lat');
$node->safe_psql('ob_lat', "CREATE EXTENSION pipeline_ext; SELECT pipeline.create_connection('local', '$bs')");
my $lat = $node->background_psql('ob_lat');
$lat->query_safe(q{BEGIN; SELECT pipeline.send('local', 'ob_lat', 'slow to commit', 'k'); SELECT pg_sleep(3)});
my $committing = time();
$lat->query_safe('COMMIT');
$lat->quit;
$node->poll_query_until('ob_lat', q{SELECT published = 1 AND latency_p50_ms IS NOT NULL FROM pipeline.outbox_status WHERE connection = 'local'}, 't')
  or diag('the message was not published');
my $seen_ms = (time() - $committing) * 1000;
my $p50 = $node->safe_psql('ob_lat', q{SELECT latency_p50_ms FROM pipeline.outbox_status WHERE connection = 'local'});
ok($p50 > 0 && $p50 <= $seen_ms * 1.15 + 1,
	"outbox_status latency runs from COMMIT: p50 $p50 ms, COMMIT to published seen by the test $seen_ms ms");
$node->safe_psql('postgres', 'DROP DATABASE ob_lat');

# --- rows restored from another cluster's dump ------------------------------
# pg_dump keeps the outbox's rows with their senders' xids, from the
# cluster they were written in.  In a younger cluster such an xid is one
# that no transaction has reached: it must not read as "not committed yet".
sql(q{INSERT INTO pipeline.outbox (xid, connection, topic, key, value, sent_by)
      VALUES ('4000000000'::xid8, 'local', 'ob_restored', 'k', 'from another cluster', 10)});
wait_drained('a restored row with an xid this cluster has not reached is published');
is(join(',', map { $_->[3] } @{ read_topic('ob_restored') }), 'from another cluster', '... once');

# --- arguments and privileges ------------------------------------------------
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.send('nope', 'ob', 'x')});
like($err, qr/connection "nope" does not exist/, 'an unknown connection is refused at send()');
for my $f ('send', 'produce', 'produce_async')
{
	($rc, $out, $err) = $node->psql('postgres', qq{SELECT pipeline.$f('local', 'pipeline_ext_outbox_checkpoints', 'round 99', 'k')});
	like($err, qr/topic "pipeline_ext_outbox_checkpoints" is where the outbox relays keep their checkpoints/,
		"$f() refuses the relays' checkpoint topic");
}
sql(q{CREATE ROLE ob_other LOGIN; GRANT USAGE ON SCHEMA pipeline TO ob_other;});
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE ob_other; SELECT pipeline.send('local', 'ob', 'x')});
like($err, qr/permission denied for connection "local"/, 'a role that may not use the connection cannot send through it');
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE ob_other; SELECT count(*) FROM pipeline.outbox});
like($err, qr/permission denied for table outbox/, 'the outbox itself is not readable by other roles');
is(sql(q{SET ROLE ob_other; SELECT count(*) >= 0 FROM pipeline.outbox_status}), 't', '... its status view is');

# --- 100,000 messages over 1,000 keys from 8 sessions ------------------------
# Each transaction bumps its key's counter (a row lock: the writers of a
# key commit one after the other) and sends the new value; one in ten rolls
# back.  Per key, the topic must hold 1..n, each once, in that order.  The
# workload runs three times: undisturbed; with the relay killed (kill -9)
# and later the server stopped with -m immediate while the sessions send;
# and with the broker down for several seconds in the middle.
#
# The test broker (librdkafka's mock) writes no transaction markers, so a
# read_committed consumer still sees a Kafka transaction that the relay
# began before a crash or an outage and aborted: its messages appear twice,
# the aborted copy first.  A real broker hides the aborted copy.  The check
# does what a read_committed consumer of a real broker sees: of an outbox
# id seen more than once it keeps the last copy; and it allows such
# repeats only for one round (outbox_round_max = 1000, up to twice that
# with the rows it takes across its cut) per disruption,
# each a contiguous run in its partitions.
sql(q{CREATE TABLE key_seq (topic text, k int, n int NOT NULL DEFAULT 0, PRIMARY KEY (topic, k))});

sub send_script
{
	my ($topic) = @_;
	my $script = $node->basedir . "/send_$topic.sql";
	open(my $fh, '>', $script) or die;
	print $fh qq{\\set k random(1, 1000)
\\set r random(1, 10)
BEGIN;
UPDATE key_seq SET n = n + 1 WHERE topic = '$topic' AND k = :k;
SELECT pipeline.send('local', topic, n::text, k::text) FROM key_seq WHERE topic = '$topic' AND k = :k;
\\if :r = 1
ROLLBACK;
\\else
COMMIT;
\\endif
};
	close($fh);
	return $script;
}

sub pgbench_cmd
{
	my ($script, $tx) = @_;
	return [ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', $tx, '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres' ];
}

sub committed { return sql(qq{SELECT coalesce(sum(n), 0) FROM key_seq WHERE topic = '$_[0]'}); }
sub published { return sql(q{SELECT published FROM pipeline.outbox_relay WHERE connection = 'local'}); }

# pgbench in the background until the relay has published $more messages
# more, then $disrupt->(); the sessions a crash cuts off end there
sub send_while
{
	my ($topic, $tx, $more, $disrupt) = @_;
	my $from = published();
	my ($out, $err);
	my $h = IPC::Run::start(pgbench_cmd(send_script($topic), $tx), '>', \$out, '2>', \$err);
	$node->poll_query_until('postgres', qq{SELECT published >= $from + $more FROM pipeline.outbox_relay WHERE connection = 'local'}, 't')
	  or diag("the relay did not publish $more messages while pgbench ran");
	$disrupt->();
	$h->finish;
}

sub check_workload
{
	my ($topic, $what, $aborted) = @_;
	my $committed = committed($topic);
	cmp_ok($committed, '>=', 100000, "$what: $committed messages committed");
	wait_drained("$what: the relay publishes the backlog");
	my $msgs = read_topic($topic);
	my (%last, %copies, %part, $bad);
	for my $i (0 .. $#$msgs)
	{
		my ($p, $o, $k, $v, $id) = @{ $msgs->[$i] };
		$copies{$id}++;
		$last{$id} = $i;
		$part{$k} //= $p;
		$bad .= "key $k in partitions $part{$k} and $p; " if $part{$k} != $p;
	}
	if ($what eq 'undisturbed')
	{
		# one partition per key, the Java client's (murmur2), as produce() (001)
		my $keys = join("\n", sort keys %part) . "\n";
		my ($out, $err);
		IPC::Run::run([ '/usr/bin/python3', "$ENV{TESTDIR}/test/tools/key_partitions.py",
			'--bootstrap', $bs, '--topic', 'ob_keycheck', '--partitions', 8 ],
			'<', \$keys, '>', \$out, '2>', \$err, IPC::Run::timeout(120))
		  or die "key_partitions.py failed: $err";
		my @lines = split /\n/, $out;
		my $differ = grep { my ($k, $java) = split /\t/; $part{$k} != $java } @lines;
		is(scalar(@lines) . '/' . $differ, scalar(keys %part) . '/0',
			"$what: each key's partition is the Java client's murmur2 partition");
	}
	my $repeated = grep { $copies{$_} > 1 } keys %copies;
	# (a round is outbox_round_max = 1000 rows in id order, and up to as
	# many again of transactions that committed before its last, see the
	# relay's pe_relay_round_complete)
	cmp_ok($repeated, '<=', $aborted * 2000,
		"$what: outbox ids seen more than once: $repeated (the test broker's aborted rounds; at most $aborted round(s) of up to 2000)");
	# An aborted round's copies are contiguous in each partition (one
	# producer, one transaction at a time): so in each partition the copies
	# that a read_committed reader of a real broker would not see form at
	# most one run per aborted round, and no repeat is scattered elsewhere.
	my (%runs, %in_run);
	for my $i (sort { $msgs->[$a][0] <=> $msgs->[$b][0] || $msgs->[$a][1] <=> $msgs->[$b][1] } 0 .. $#$msgs)
	{
		my ($p, $id) = ($msgs->[$i][0], $msgs->[$i][4]);
		my $hidden = $last{$id} != $i;
		$runs{$p}++ if $hidden && !$in_run{$p};
		$in_run{$p} = $hidden;
	}
	my ($most) = sort { $b <=> $a } (values %runs, 0);
	cmp_ok($most, '<=', $aborted,
		"$what: in each partition the repeated copies form at most $aborted run(s), one per aborted round (most: $most)");
	my %seq;
	for my $i (0 .. $#$msgs)
	{
		my ($p, $o, $k, $v, $id) = @{ $msgs->[$i] };
		push @{ $seq{$k} }, $v if $last{$id} == $i;
	}
	is(scalar(keys %last), $committed, "$what: every committed message is in the topic, and nothing else");
	my $want = sql(qq{SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM key_seq WHERE topic = '$topic' AND n > 0});
	is(join(',', map { "$_:" . scalar(@{ $seq{$_} }) } sort { $a <=> $b } keys %seq), $want,
		"$what: each key's count is its committed count");
	my @order_bad = grep {
		my $k = $_;
		join(',', @{ $seq{$k} }) ne join(',', 1 .. scalar(@{ $seq{$k} }))
	} keys %seq;
	is(scalar(@order_bad), 0, "$what: per key, the messages are in commit order (1, 2, 3, ...)")
	  or diag("out of order: @order_bad[0 .. 4]");
	is($bad // '', '', "$what: one partition per key");
}

sub seed_keys { sql(qq{INSERT INTO key_seq (topic, k) SELECT '$_[0]', g FROM generate_series(1, 1000) g}); }

# undisturbed
seed_keys('ob');
$node->command_ok(pgbench_cmd(send_script('ob'), 14000),
	'8 sessions send, in transactions that commit or roll back');
check_workload('ob', 'undisturbed', 0);
my $committed = committed('ob');
is(sql(q{SELECT backlog || '/' || published || '/' || (latency_p99_ms > 0)
         FROM pipeline.outbox_status WHERE connection = 'local'}),
	'0/' . ($committed + 1214) . '/true', 'outbox_status: no backlog, what was published, a latency');
wait_for(q{SELECT msgs_per_sec > 0 FROM pipeline.outbox_status WHERE connection = 'local'}, 't',
	'outbox_status: the relay\'s rate over its last 10 s window');
# (a window holds only what was published while it ran: 20 s after the last round, none)
wait_for(q{SELECT msgs_per_sec = 0 FROM pipeline.outbox_status WHERE connection = 'local'}, 't',
	'... and 0 when it has published nothing for a window');

# the relay killed with SIGKILL, then the server stopped with -m immediate,
# each while the 8 sessions send and the relay publishes
seed_keys('ob_kill');
send_while('ob_kill', 7000, 10000, sub {
	my $pid = sql(q{SELECT pid FROM pg_stat_activity WHERE application_name = 'pipeline_ext outbox relay'});
	ok(kill_and_wait_restart($node, $pid), "kill -9 of the relay (pid $pid) while it publishes, and the restart");
});
$node->poll_query_until('postgres', 'SELECT 1', '1');
send_while('ob_kill', 7000, 10000, sub {
	$node->stop('immediate');
	$node->start;
});
while (committed('ob_kill') < 100000)
{
	my $tx = int((100000 - committed('ob_kill')) / 8 / 0.9) + 100;
	$node->command_ok(pgbench_cmd(send_script('ob_kill'), $tx), "sessions send $tx transactions each after the crashes");
}
check_workload('ob_kill', 'kill -9 and -m immediate', 2);

# the broker down for several seconds while the sessions send
seed_keys('ob_outage');
send_while('ob_outage', 14000, 20000, sub {
	$broker->ctl('down all');
	$node->poll_query_until('postgres',
		q{SELECT failures > 0 AND backlog > 0 FROM pipeline.outbox_status WHERE connection = 'local'}, 't');
	sleep(5);
	# (a message waits since before the 5 s: over 10 x 400 ms is critical)
	like(sql(q{SET pipeline_ext.health_latency = '400ms';
	           SELECT (s.oldest_age > interval '5 seconds') || '/' || h.status || '/' || h.reason
	             FROM pipeline.outbox_status s JOIN pipeline.health h ON h.consumer = 'outbox:' || s.connection
	            WHERE s.connection = 'local'}),
		qr{^true/critical/.*oldest message waiting .* is over 10 x 400 ms.*relay failing}s,
		'broker down: outbox_status shows the oldest message waiting, and pipeline.health says so');
	$broker->ctl('up all');
});
check_workload('ob_outage', 'broker down for several seconds', 1);

# --- the relay killed around its Kafka commit -------------------------------
# after_commit: the round is in Kafka, its rows are not yet removed; the
# restarted relay must find its checkpoint and not send it again.
# before_commit: the round was not committed; it is sent again.  (The test
# broker writes no transaction markers, so a read_committed consumer still
# sees the aborted first try: duplicates are allowed there, within that
# round only.  A real broker hides them.)
sub crash_case
{
	my ($where, $from) = @_;
	my $round = sql(q{SELECT round FROM pipeline.outbox_relay WHERE connection = 'local'}) + 2;
	$node->append_conf('postgresql.conf', "pipeline_ext.outbox_crash_at = '$where:$round'");
	$node->reload;
	my $log_pos = -s $node->logfile;
	sql(qq{SELECT pipeline.send('local', 'ob_crash', g::text, (g % 97)::text) FROM generate_series($from, $from + 2999) g});
	ok($node->wait_for_log(qr/crashing $where of round $round/, $log_pos), "the relay crashed $where of round $round");
	$node->append_conf('postgresql.conf', "pipeline_ext.outbox_crash_at = ''");
	$node->poll_query_until('postgres', 'SELECT 1', '1');
	$node->reload;
	wait_drained("after the crash $where, the rest goes out");
	return $round;
}
crash_case('after_commit', 1);
like(slurp_file($node->logfile), qr/round \d+ was committed to Kafka before the relay stopped/,
	'the restarted relay read its checkpoint and settled the committed round');
{
	my %n;
	$n{ $_->[3] }++ for @{ read_topic('ob_crash') };
	is(scalar(grep { $n{$_} != 1 } 1 .. 3000) . '/' . scalar(keys %n), '0/3000',
		'crash after the Kafka commit: every message once, none sent again');
}
crash_case('before_commit', 3001);
{
	my %n;
	$n{ $_->[3] }++ for @{ read_topic('ob_crash') };
	my @missing = grep { !$n{$_} } 3001 .. 6000;
	my @twice = grep { $n{$_} > 1 } 3001 .. 6000;
	is(scalar(@missing), 0, 'crash before the Kafka commit: nothing lost');
	# the second round of 1,000 (ids in order): 4001 .. 5000
	is(scalar(grep { $_ < 4001 || $_ > 5000 } @twice), 0,
		'... and only the round in flight was sent again (' . scalar(@twice) . ' seen twice on the test broker)');
}

# --- a round number that comes again ----------------------------------------
# After a restore to a point in time (or an asynchronous failover) the
# database's round count goes back, the checkpoint topic's does not.  A
# round found pending must be judged by its own checkpoint (its number and
# its ids), not by a later number written before the restore: here the
# count is set back by three, the round crashes before its Kafka commit,
# and the checkpoint topic's last round is higher.
{
	wait_drained('nothing in flight before the count goes back');
	my $last = sql(q{SELECT round FROM pipeline.outbox_relay WHERE connection = 'local'});
	sql(q{UPDATE pipeline.outbox_relay SET round = round - 3 WHERE connection = 'local'});
	my $round = $last - 2;
	$node->append_conf('postgresql.conf', "pipeline_ext.outbox_crash_at = 'before_commit:$round'");
	$node->reload;
	my $log_pos = -s $node->logfile;
	sql(q{SELECT pipeline.send('local', 'ob_pitr', 'after the count went back', 'k')});
	ok($node->wait_for_log(qr/crashing before_commit of round $round/, $log_pos),
		"the relay crashed before the Kafka commit of round $round, a number it had used before");
	$node->append_conf('postgresql.conf', "pipeline_ext.outbox_crash_at = ''");
	$node->poll_query_until('postgres', 'SELECT 1', '1');
	$node->reload;
	wait_drained('the round is settled after the restart');
	like(slurp_file($node->logfile, $log_pos),
		qr/round $round was not committed to Kafka before the relay stopped \(the last checkpoint is of round $last\); its 1 messages are sent again/,
		'the restarted relay sends the round again: the earlier checkpoint of a higher number is not its own');
	ok(grep({ $_->[3] eq 'after the count went back' } @{ read_topic('ob_pitr') }), '... and the message is in the topic');
}

# --- -m immediate in the middle of a backlog, then the broker down ----------
sql(q{SELECT pipeline.send('local', 'ob_crash', g::text, (g % 97)::text) FROM generate_series(6001, 26000) g});
$node->poll_query_until('postgres', q{SELECT published > 0 FROM pipeline.outbox_relay WHERE connection = 'local'}, 't');
$node->stop('immediate');
$node->start;
wait_drained('after an immediate stop and restart, the backlog goes out');
{
	my %n;
	$n{ $_->[3] }++ for @{ read_topic('ob_crash') };
	my @missing = grep { !$n{$_} } 6001 .. 26000;
	my @twice = sort { $a <=> $b } grep { $n{$_} > 1 } 6001 .. 26000;
	is(scalar(@missing), 0, 'immediate stop: nothing lost');
	cmp_ok(@twice ? $twice[-1] - $twice[0] + 1 : 0, '<=', 1000,
		'... sent again at most one round (' . scalar(@twice) . ' seen twice on the test broker)');
}

$broker->ctl('down all');
sql(q{SELECT pipeline.send('local', 'ob_down', g::text, g::text) FROM generate_series(1, 2000) g});
wait_for(q{SELECT failures > 0 AND last_error IS NOT NULL AND backlog > 0 FROM pipeline.outbox_status WHERE connection = 'local'},
	't', 'broker down: the messages wait in the outbox and the status shows why');
like(sql(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'outbox:local'}),
	qr/^(warning|critical): .*relay failing: /, 'pipeline.health says the outbox relay is failing');
$broker->ctl('up all');
wait_drained('broker back: the messages go out');
is(sql(q{SELECT lag_messages FROM pipeline.health WHERE consumer = 'outbox:local'}), '0', 'health: no backlog');
like(sql(q{SET pipeline_ext.health_latency = '1ms'; SELECT reason FROM pipeline.health WHERE consumer = 'outbox:local'}),
	qr/p95 commit-to-acknowledged latency [\d.]+ ms is over 1 ms/, "health: the outbox's latency is from COMMIT, and it says so");
{
	my %n;
	$n{ $_->[3] }++ for @{ read_topic('ob_down') };
	is(scalar(grep { ($n{$_} // 0) != 1 } 1 .. 2000) . '/' . scalar(keys %n), '0/2000',
		'every message of the outage once');
}

# --- rounds bounded by bytes: many small rounds, the same messages --------
$node->append_conf('postgresql.conf', "pipeline_ext.outbox_round_bytes = '1kB'");
$node->reload;
my $rounds_before = sql(q{SELECT round FROM pipeline.outbox_relay WHERE connection = 'local'});
sql(q{SELECT pipeline.send('local', 'ob_down', 'b' || g || repeat('.', 100), 'bytes') FROM generate_series(1, 300) g});
wait_drained('300 messages of about 110 bytes in rounds of 1 kB');
{
	my @got = map { $_->[3] =~ /^b(\d+)\./ ? $1 : () } @{ read_topic('ob_down') };
	is(join(',', @got), join(',', 1 .. 300), 'each once, in order');
	cmp_ok(sql(q{SELECT round FROM pipeline.outbox_relay WHERE connection = 'local'}) - $rounds_before, '>=', 30,
		'... in rounds of about ten messages');
}
$node->append_conf('postgresql.conf', "pipeline_ext.outbox_round_bytes = '64MB'");
$node->reload;

# --- refused messages are dead letters; the others go on --------------------
sql(q{SELECT pipeline.send('local', 'ob_small', 'before', 'a');
      SELECT pipeline.send('local', 'ob_small', repeat('x', 2000000), 'b');
      SELECT pipeline.send('local', 'ob_small', 'no such partition', 'c', NULL, 7);
      SELECT pipeline.send('local', 'ob_small', 'after', 'd');});
wait_drained('a round with refused messages settles');
is(join(',', map { $_->[3] } @{ read_topic('ob_small') }), 'before,after', 'the good messages are published');
is(sql(q{SELECT string_agg(key::text || ':' || (length(value) > 1000)::text, ',' ORDER BY id) FROM pipeline.outbox_dead_letters}),
	'\x62:true,\x63:false', 'the too-large one and the one for a missing partition are dead letters, with their bytes');
like(sql(q{SELECT string_agg(error, ' | ' ORDER BY id) FROM pipeline.outbox_dead_letters}),
	qr/too large.*\|.*(partition|Partition)/i, '... and the reasons');
is(sql(q{SELECT dead_letters FROM pipeline.outbox_status WHERE connection = 'local'}), '2', 'the status counts them');
is(sql(q{SET ROLE ob_other; SELECT count(*) FROM pipeline.outbox_dead_letters}), '0',
	'another role does not see them');

# --- a batch refused for its size: its small messages are not dead letters --
# A broker judges max.message.bytes by the record batch: one over a topic's
# limit fails every message in it, however small.  Each is sent again alone;
# only a message refused alone is a dead letter.
{
	my $dead = sql(q{SELECT count(*) FROM pipeline.outbox_dead_letters});
	$broker->ctl('error Produce MSG_SIZE_TOO_LARGE 1');
	sql(q{SELECT pipeline.send('local', 'ob_batch', 'small ' || g, 'k') FROM generate_series(1, 5) g});
	wait_drained('a round whose batch was refused for its size settles');
	is(join(',', map { $_->[3] } @{ read_topic('ob_batch') }), join(',', map { "small $_" } 1 .. 5),
		'every message of a batch refused for its size is published, once, in order');
	is(sql(q{SELECT count(*) FROM pipeline.outbox_dead_letters}), $dead, '... and none is a dead letter');

	# the first of the next round is refused again when alone: too large for good
	$broker->ctl('error Produce MSG_SIZE_TOO_LARGE 2');
	sql(q{SELECT pipeline.send('local', 'ob_batch', 'big ' || g, 'k') FROM generate_series(1, 3) g});
	wait_drained('a round with a message refused alone settles');
	is(join(',', map { $_->[3] } @{ read_topic('ob_batch') }), join(',', (map { "small $_" } 1 .. 5), 'big 2', 'big 3'),
		'the others of the round are published');
	like(sql(q{SELECT string_agg(convert_from(value, 'UTF8') || ': ' || error, ' | ') FROM pipeline.outbox_dead_letters
	            WHERE topic = 'ob_batch'}),
		qr/^big 1: [^|]*too large[^|]*$/i, 'the one refused alone is the only dead letter, with the reason');
}

# --- refused for good: a topic the cluster lacks, a topic not authorized ----
{
	my $dead = sql(q{SELECT count(*) FROM pipeline.outbox_dead_letters});
	# (the test broker would make the topic: it says what a broker without auto-creation says)
	$broker->ctl('topic_error ob_no_such_topic UNKNOWN_TOPIC_OR_PART');
	sql(q{SELECT pipeline.send('local', 'ob_no_such_topic', 'lost?', 'k');
	      SELECT pipeline.send('local', 'ob_small', 'after a missing topic', 'k');});
	wait_drained('a round with a message for a missing topic settles');
	like(sql(q{SELECT error FROM pipeline.outbox_dead_letters WHERE topic = 'ob_no_such_topic'}),
		qr/topic "ob_no_such_topic" does not exist/, 'a message for a topic the cluster lacks is a dead letter');
	$broker->ctl('error Produce TOPIC_AUTHORIZATION_FAILED 1');
	sql(q{SELECT pipeline.send('local', 'ob_small', 'not authorized', 'k')});
	wait_drained('a round refused as not authorized settles');
	like(sql(q{SELECT convert_from(value, 'UTF8') || ': ' || error FROM pipeline.outbox_dead_letters
	            WHERE value = convert_to('not authorized', 'UTF8')}),
		qr/^not authorized: .*authoriz/i, 'a message the broker refuses as not authorized is a dead letter, with the reason');
	is(sql(q{SELECT count(*) FROM pipeline.outbox_dead_letters}), $dead + 2, '... those two only');
	sql(q{SELECT pipeline.send('local', 'ob_small', 'and after', 'k')});
	wait_drained('the next message goes out');
	is(join(',', grep { /after/ } map { $_->[3] } @{ read_topic('ob_small') }), 'after,after a missing topic,and after',
		'... and the others are published');
}

# --- a sender that may no longer use its connection when the relay publishes -
# send() checks the role's right to the connection; the relay checks it again,
# against the connection as it is then.  A right revoked before the message
# went out, or the connection dropped and made again by another role, makes a
# dead letter with the reason, not a message sent with credentials that are no
# longer its sender's; the others go on.
{
	sql(q{CREATE ROLE ob_owner LOGIN; CREATE ROLE ob_sender LOGIN IN ROLE ob_owner; CREATE ROLE ob_thief LOGIN;
	      GRANT USAGE ON SCHEMA pipeline TO ob_owner, ob_sender, ob_thief;
	      GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb), pipeline.drop_connection(text)
	        TO ob_owner, ob_thief});
	sql(qq{SET ROLE ob_owner; SELECT pipeline.create_connection('ob_owned', '$bs')});
	sql(q{BEGIN;
	      SET ROLE ob_sender; SELECT pipeline.send('ob_owned', 'ob_rights', 'revoked before it went out', 'k');
	      RESET ROLE; REVOKE ob_owner FROM ob_sender;
	      COMMIT});
	sql(qq{BEGIN;
	       SET ROLE ob_owner; SELECT pipeline.send('ob_owned', 'ob_rights', 'its connection made again by another role', 'k');
	       SELECT pipeline.drop_connection('ob_owned');
	       SET ROLE ob_thief; SELECT pipeline.create_connection('ob_owned', '$bs');
	       COMMIT});
	sql(q{SET ROLE ob_thief; SELECT pipeline.send('ob_owned', 'ob_rights', 'sent by the connection''s owner', 'k')});
	wait_drained('rounds with senders that may no longer use the connection settle');
	is(join(',', map { $_->[3] } @{ read_topic('ob_rights') }), "sent by the connection's owner",
		'only the message of a role that may use the connection as it is now is published');
	like(sql(q{SELECT string_agg(convert_from(value, 'UTF8') || ': ' || error, ' | ' ORDER BY id) FROM pipeline.outbox_dead_letter
	            WHERE topic = 'ob_rights'}),
		qr/^revoked before it went out: role "ob_sender", which sent it, may not use connection "ob_owned" \(owned by ob_owner\)[^|]*\| its connection made again by another role: role "ob_owner", which sent it, may not use connection "ob_owned" \(owned by ob_thief\)/,
		'... the others are dead letters, with the reason');
	is(sql(q{SET ROLE ob_owner; SELECT count(*) FROM pipeline.outbox_dead_letters WHERE topic = 'ob_rights'}), '1',
		'... each seen by its sender');
}

# --- dead letters sent again, or deleted, by their senders -------------------
# Once the cause is fixed, resend_outbox_dead_letters() puts a role's dead
# letters back into the outbox (in its transaction, for it; it must be
# allowed to use the connection now), and a role deletes its own through the
# view.  Nobody touches another role's.
{
	my $all = sql(q{SELECT count(*) FROM pipeline.outbox_dead_letter});
	my $missing = sql(q{SELECT id FROM pipeline.outbox_dead_letters WHERE topic = 'ob_no_such_topic'});
	my $big = sql(q{SELECT id FROM pipeline.outbox_dead_letters WHERE key = 'b' AND length(value) > 1000});
	is(sql(q{SET ROLE ob_other; SELECT pipeline.resend_outbox_dead_letters()}), '0',
		"a role cannot send another role's dead letters again");
	is(sql(q{SET ROLE ob_other; DELETE FROM pipeline.outbox_dead_letters; RESET ROLE;
	         SELECT count(*) FROM pipeline.outbox_dead_letter}), $all, '... nor delete them');
	my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE ob_sender; SELECT pipeline.resend_outbox_dead_letters()});
	like($err, qr/permission denied for connection "ob_owned"/,
		'a role that may not use the connection now cannot send its dead letter again');
	is(sql(q{SELECT count(*) FROM pipeline.outbox_dead_letter}), $all, '... which stays');

	# the topic made (the test broker now creates it when asked): sent again, it goes out
	$broker->ctl('topic_error ob_no_such_topic NO_ERROR');
	is(sql(qq{BEGIN; SELECT pipeline.resend_outbox_dead_letters(ARRAY[$missing]); ROLLBACK;
	          SELECT count(*) FROM pipeline.outbox_dead_letters WHERE id = $missing}), "1\n1",
		'rolled back, a resend leaves the dead letter');
	is(sql(qq{SELECT pipeline.resend_outbox_dead_letters(ARRAY[$missing])}), '1', 'a dead letter sent again by its id');
	is(sql(qq{SELECT count(*) FROM pipeline.outbox_dead_letters WHERE id = $missing}), '0', '... is no longer one');
	wait_drained('the message sent again goes out');
	my $m = read_topic('ob_no_such_topic');
	is(join(',', map { "$_->[2]:$_->[3]" } @$m), 'k:lost?', '... and is published once, its key and value as they were');

	# still refused (too large): a dead letter again, with the reason; the others go on
	is(sql(qq{SELECT pipeline.resend_outbox_dead_letters(ARRAY[$big]);
	          SELECT pipeline.send('local', 'ob_small', 'beside the resent one', 'k')}) =~ /^1\n\d+$/ ? 1 : 0, 1,
		'a dead letter still refused is sent again');
	wait_drained('a round with a resent message still too large settles');
	like(sql(q{SELECT id || ' ' || error FROM pipeline.outbox_dead_letters WHERE key = 'b' AND length(value) > 1000}),
		qr/^(\d+) .*too large/i, '... and is a dead letter again, with the reason');
	isnt(sql(q{SELECT id FROM pipeline.outbox_dead_letters WHERE key = 'b' AND length(value) > 1000}), $big, '... under a new id');
	ok((grep { $_->[3] eq 'beside the resent one' } @{ read_topic('ob_small') }), '... and the others go on');

	# deleted by its sender
	is(sql(q{DELETE FROM pipeline.outbox_dead_letters WHERE key = 'b' AND length(value) > 1000;
	         SELECT count(*) FROM pipeline.outbox_dead_letter}), $all - 2, 'a role deletes its own dead letter (one more gone than the one sent again)');

	# a superuser sends everything again: each letter is still its first
	# sender's, whom the relay checks again; none goes out on another's rights
	my $before = sql(q{SELECT string_agg(sent_by::text || ':' || convert_from(value, 'UTF8'), ',' ORDER BY sent_by::text)
	                   FROM pipeline.outbox_dead_letters WHERE topic = 'ob_rights'});
	is(sql(q{SELECT pipeline.resend_outbox_dead_letters()}), $all - 2, 'a superuser sends every dead letter again');
	wait_drained('the rounds of the letters sent again settle');
	is(join(',', map { $_->[3] } @{ read_topic('ob_rights') }), "sent by the connection's owner",
		'... those refused for their sender stay unpublished');
	is(sql(q{SELECT string_agg(sent_by::text || ':' || convert_from(value, 'UTF8'), ',' ORDER BY sent_by::text)
	         FROM pipeline.outbox_dead_letters WHERE topic = 'ob_rights'}), $before, '... dead letters again, still their senders\'');
}

# --- a role (not a superuser) deletes its own dead letters, or sends them ---
# again: the values' bytes, the keys and the headers come back as they were,
# in the letters' order (the headers in jsonb's order of keys)
{
	$broker->ctl('topic_error ob_later UNKNOWN_TOPIC_OR_PART');
	sql(q{SET ROLE ob_thief;
	      SELECT pipeline.send('ob_owned', 'ob_later', '\x00ff0a09'::bytea, 'k1', '{"trace": "t-1", "empty": null}');
	      SELECT pipeline.send('ob_owned', 'ob_later', 'second', 'k2', '{"trace": "t-2"}');
	      SELECT pipeline.send('ob_owned', 'ob_later', 'to delete', 'k3');
	      SELECT pipeline.send('ob_owned', 'ob_later', 'third', 'k1');});
	wait_drained('a round for a topic the cluster lacks settles');
	is(sql(q{SET ROLE ob_thief; SELECT count(*) FROM pipeline.outbox_dead_letters WHERE topic = 'ob_later'}), '4',
		"a role sees its own four dead letters");
	is(sql(q{SET ROLE ob_thief; DELETE FROM pipeline.outbox_dead_letters WHERE value = convert_to('to delete', 'UTF8');
	         RESET ROLE; SELECT string_agg(convert_from(key, 'UTF8'), ',' ORDER BY id) FROM pipeline.outbox_dead_letter
	          WHERE topic = 'ob_later'}), 'k1,k2,k1', '... deletes one of them');
	$broker->ctl('topic_error ob_later NO_ERROR');
	is(sql(q{SET ROLE ob_thief; SELECT pipeline.resend_outbox_dead_letters()}), '3', '... and sends the others again');
	wait_drained('the letters a role sent again go out');
	is(sql(q{SELECT count(*) FROM pipeline.outbox_dead_letter WHERE topic = 'ob_later'}), '0', '... which are no longer dead letters');
	is(join(' | ', map { "$_->[2] $_->[5] $_->[6]" } sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @{ read_topic('ob_later') }),
		'k1 00ff0a09 empty=\N,trace=t-1 | k2 7365636f6e64 trace=t-2 | k1 7468697264 -',
		'... published once each, in their order, with their bytes, keys and headers');
}

# --- prometheus-postgres-exporter reads the outbox's figures -----------------
{
	my ($body, $log) = PipelineExt::Exporter::scrape($node, qr/^pipeline_outbox_published\{/m);
	my ($published, $dead) = split /\|/, sql(q{SELECT published || '|' || dead_letters FROM pipeline.outbox_status WHERE connection = 'local'});
	like($body, qr/^pipeline_outbox_published\{connection="local",server="[^"]*"\} $published$/m,
		"exporter: the outbox's published messages ($published, as outbox_status says)")
	  or diag("exporter said:\n$log\n" . substr($body, 0, 2000));
	like($body, qr/^pipeline_outbox_dead_letters\{connection="local",server="[^"]*"\} $dead$/m, 'exporter: its dead letters');
	like($body, qr/^pipeline_outbox_backlog\{connection="local",server="[^"]*"\} 0$/m, 'exporter: its backlog');
	like($body, qr/^pipeline_outbox_relay_running\{connection="local",server="[^"]*"\} 1$/m, 'exporter: the relay runs');
	my $failures = sql(q{SELECT failures FROM pipeline.outbox_status WHERE connection = 'local'});
	like($body, qr/^pipeline_outbox_failures\{connection="local",server="[^"]*"\} $failures$/m,
		"exporter: the relay's failed rounds ($failures, as outbox_status says)");
	like($body, qr/^pipeline_outbox_oldest_age_seconds\{connection="local",server="[^"]*"\} 0$/m,
		'exporter: the oldest waiting message\'s age (none waits)');
	like($body, qr/^pipeline_outbox_msgs_per_sec\{connection="local",server="[^"]*"\} [0-9.e+-]+$/m, 'exporter: the relay\'s rate');
	like($body, qr/^pipeline_outbox_latency_p99_ms\{connection="local",server="[^"]*"\} [0-9.e+-]+$/m,
		'exporter: its commit-to-acknowledged latency');
}

# --- a connection dropped and created again with other brokers --------------
# The relay keeps a producer per connection; it must follow the connection
# as it is now, not publish to the brokers (with the credentials, for the
# owner) of the one that was dropped.
my $broker2 = PipelineExt::Broker->start(brokers => 1, topics => { ob_moved => 1 });
sql(qq{SELECT pipeline.create_connection('moving', '$bs')});
sql(q{SELECT pipeline.send('moving', 'ob_moved', 'to the first brokers', 'k')});
wait_drained('published through the connection');
sql(q{SELECT pipeline.drop_connection('moving')});
sql(q{SELECT pipeline.create_connection('moving', '} . $broker2->bootstrap . q{')});
sql(q{SELECT pipeline.send('moving', 'ob_moved', 'to the second brokers', 'k')});
wait_drained('published after the connection was dropped and created again');
is(join(',', map { $_->[3] } @{ read_topic('ob_moved') }), 'to the first brokers',
	'the first brokers have only what was sent before the connection was dropped');
is(join(',', map { $_->[3] } @{ $broker2->read_topic('ob_moved') }), 'to the second brokers',
	'the relay publishes through the connection as it is now');

# --- a cluster that does not answer holds up no other connection ------------
# One relay serves every connection of its database in turn; it must not
# wait produce_timeout (here 10 minutes) on one whose cluster does not
# answer while another's messages wait.  Its round is begun (pending) before
# the other connection's message is sent, so the relay is trying it then.
sql(q{ALTER SYSTEM SET pipeline_ext.produce_timeout = '10min'});
sql(q{SELECT pg_reload_conf()});
sql(q{SELECT pipeline.create_connection('unanswered', '127.0.0.1:1')});
sql(q{SELECT pipeline.send('unanswered', 'ob_other', 'waits', 'k')});
wait_for(q{SELECT pending IS NOT NULL FROM pipeline.outbox_relay WHERE connection = 'unanswered'}, 't',
	'the relay tries the connection whose cluster does not answer');
sql(q{SELECT pipeline.send('local', 'ob_other', 'goes', 'k')});
wait_for(q{SELECT count(*) FROM pipeline.outbox WHERE connection = 'local'}, '0',
	'a message through another connection goes out meanwhile');
is(join(',', map { $_->[3] } @{ read_topic('ob_other') }), 'goes', '... to its topic');
is(sql(q{SELECT backlog FROM pipeline.outbox_status WHERE connection = 'unanswered'}), '1',
	'the message for the cluster that does not answer waits');
# once produce_timeout has gone by, a failure: shown on that connection's row only
sql(q{ALTER SYSTEM SET pipeline_ext.produce_timeout = '1s'});
sql(q{SELECT pg_reload_conf()});
wait_for(q{SELECT last_error LIKE 'connection "unanswered": could not initialise transactions%' AND last_error_at IS NOT NULL
             FROM pipeline.outbox_status WHERE connection = 'unanswered'}, 't',
	'a cluster that does not answer within produce_timeout is a failure, on its connection\'s row');
is(sql(q{SELECT count(*) FROM pipeline.outbox_status WHERE connection <> 'unanswered' AND (last_error IS NOT NULL OR last_error_at IS NOT NULL)}),
	'0', '... not on the rows of the other connections');
sql(q{SELECT pipeline.drop_connection('unanswered')});
wait_for(q{SELECT count(*) FROM pipeline.outbox_dead_letter WHERE connection = 'unanswered'}, '1',
	'... and is a dead letter once its connection is dropped');
sql(q{DELETE FROM pipeline.outbox_dead_letter WHERE connection = 'unanswered'});
sql(q{ALTER SYSTEM RESET pipeline_ext.produce_timeout});
sql(q{SELECT pg_reload_conf()});

# --- the extension made again while a session that sent stays ----------------
# A session keeps what it knows of pipeline.outbox until the table changes;
# another session's DROP EXTENSION and CREATE EXTENSION give it a new table,
# and its next send() writes there, without an error first.
sql('CREATE DATABASE ob_again');
$node->safe_psql('ob_again', qq{CREATE EXTENSION pipeline_ext; SELECT pipeline.create_connection('local', '$bs')});
{
	my $stays = $node->background_psql('ob_again');
	$stays->query_safe(q{BEGIN; SELECT pipeline.send('local', 'ob_rb', 'not sent', 'k'); ROLLBACK});
	# (its next transaction begun first: the drop's invalidation reaches it
	# when it locks the table, not when its transaction starts)
	$stays->query_safe(q{BEGIN; SELECT 1});
	$node->safe_psql('ob_again', qq{DROP EXTENSION pipeline_ext CASCADE; CREATE EXTENSION pipeline_ext;
	                                SELECT pipeline.create_connection('local', '$bs')});
	my ($out, $ret) = $stays->query(q{SELECT pipeline.send('local', 'ob_rb', 'not sent either', 'k') > 0});
	is($ret . $out, '0t', 'a session that sent writes into the outbox made again, at once');
	$stays->query_safe('ROLLBACK');
	$stays->quit;
}
sql('DROP DATABASE ob_again');

# --- DROP DATABASE where a relay runs --------------------------------------
sql('CREATE DATABASE ob_drop');
$node->safe_psql('ob_drop', qq{CREATE EXTENSION pipeline_ext; SELECT pipeline.create_connection('local', '$bs');
                               SELECT pipeline.send('local', 'ob_rb', 'from ob_drop', 'k');});
ok($node->poll_query_until('ob_drop', q{SELECT published FROM pipeline.outbox_relay}, '1'), 'a relay publishes in ob_drop');
($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE ob_drop');
is($rc . $err, '0', 'DROP DATABASE asks the relay to leave, and succeeds');

$node->stop;
done_testing();

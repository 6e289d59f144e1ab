# End-to-end producing from SQL against the test broker (real Kafka protocol
# over TCP on loopback): bytes, keys and headers as other clients read them,
# Java-compatible partitioning, asynchronous bulk producing, broker outages,
# cancellation, and secrets kept out of the server log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run qw(run start finish timeout);
use JSON::PP;
use Time::HiRes qw(time usleep);
use PipelineExt::Broker;

my $broker = PipelineExt::Broker->start(
	brokers => 1,
	topics => { events => 8, keycheck => 8, bulk0 => 8, bulk => 8, small => 1, bytes => 1 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('produce');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'pipeline_ext'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");

my ($ret, $stdout, $stderr);
my $script_start = time;

# Read a whole topic with kcat; returns the list of decoded JSON envelopes.
sub kcat_read
{
	my ($topic) = @_;
	my ($out, $err);
	run([ 'kcat', '-C', '-b', $bs, '-t', $topic, '-J', '-e', '-q' ],
		'>', \$out, '2>', \$err, timeout(120))
	  or die "kcat failed: $err";
	my $json = JSON::PP->new->utf8(0);
	return [ map { $json->decode($_) } grep { /\S/ } split /\n/, $out ];
}

# --- 10,000 messages with keys and headers, read back by kcat --------------
my $n = 10000;
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT count(pipeline.produce_async('local', 'events',
	         'value ' || g || ' ünïcødé ' || repeat('x', g % 50),
	         'key-' || (g % 997),
	         jsonb_build_object('seq', g::text, 'src', 'tap', 'empty', '', 'nothing', NULL)))
	  FROM generate_series(1, $n) g;
	COMMIT;
});
my $msgs = kcat_read('events');
is(scalar @$msgs, $n, "kcat reads back all $n messages");

my ($bad_value, $bad_key, $bad_headers) = (0, 0, 0);
my %partition_of;
my %seen_seq;
for my $m (@$msgs)
{
	my %h = @{ $m->{headers} // [] };
	my $g = $h{seq} // -1;
	$seen_seq{$g}++;
	# (this file has no "use utf8": the literal is already UTF-8 bytes)
	my $want = "value $g ünïcødé " . ('x' x ($g % 50));
	$bad_value++ unless defined $m->{payload} && $m->{payload} eq $want;
	$bad_key++ unless defined $m->{key} && $m->{key} eq 'key-' . ($g % 997);
	$bad_headers++
	  unless $h{src} eq 'tap' && exists $h{empty} && $h{empty} eq ''
	  && exists $h{nothing} && !defined $h{nothing}
	  && @{ $m->{headers} } == 8;
	$partition_of{ $m->{key} }{ $m->{partition} } = 1 if defined $m->{key};
}
is(scalar(keys %seen_seq), $n, 'every sequence number arrived once');
is($bad_value, 0, 'every value has the bytes that were produced');
is($bad_key, 0, 'every key is the one that was produced');
is($bad_headers, 0, 'every message carries its headers, null and empty ones included');
is(scalar(grep { keys %{ $partition_of{$_} } != 1 } keys %partition_of), 0,
	'each key always goes to one partition');

# --- partitioning agrees with the Java client (murmur2) -------------------
{
	my $keys = join("\n", sort keys %partition_of) . "\n";
	my ($out, $err);
	run([ '/usr/bin/python3', "$ENV{TESTDIR}/test/tools/key_partitions.py",
		'--bootstrap', $bs, '--topic', 'keycheck', '--partitions', 8 ],
		'<', \$keys, '>', \$out, '2>', \$err, timeout(120))
	  or die "key_partitions.py failed: $err";
	my ($java_diff, $rdk_diff, $count) = (0, 0, 0);
	for my $line (split /\n/, $out)
	{
		my ($k, $java, $rdk) = split /\t/, $line;
		my ($ours) = keys %{ $partition_of{$k} };
		$count++;
		$java_diff++ if $ours != $java;
		$rdk_diff++ if $ours != $rdk;
	}
	is($count, 997, 'partitions compared for all 997 keys');
	is($java_diff, 0, "every key's partition equals the Java client's murmur2 partition");
	is($rdk_diff, 0, "every key's partition equals python3-confluent-kafka's (partitioner=murmur2)");
}

# --- produce() reports partition and offset; bytea and jsonb values ----------
{
	my $rows = $node->safe_psql('postgres', q{
		SELECT r.partition, r.offset FROM generate_series(1, 5) g,
		       LATERAL pipeline.produce('local', 'small', 'sync ' || g, 'k' || g) r});
	is($rows, "0|0\n0|1\n0|2\n0|3\n0|4", 'produce() returns each partition and offset in order');
	my $j = $node->safe_psql('postgres',
		q{SELECT "offset" FROM pipeline.produce('local', 'small', '{"a": [1, 2]}'::jsonb)});
	is($j, '5', 'a jsonb value is produced');
	my $t = $node->safe_psql('postgres',
		q{SELECT "offset" FROM pipeline.produce('local', 'small', NULL::text, 'gone')});
	is($t, '6', 'a NULL value is produced as a tombstone');
	my $p = $node->safe_psql('postgres',
		q{SELECT partition FROM pipeline.produce('local', 'events', 'pinned', 'any-key', NULL, 5)});
	is($p, '5', 'an explicit partition is honoured');

	my $small = kcat_read('small');
	is($small->[2]{payload}, 'sync 3', 'kcat finds the value at the reported offset');
	is($small->[5]{payload}, '{"a": [1, 2]}', 'the jsonb value arrives as its text');
	ok(!defined $small->[6]{payload} && $small->[6]{key} eq 'gone', 'the tombstone arrives with a null value');

	# all 256 byte values survive as bytea
	$node->safe_psql('postgres', q{
		SELECT * FROM pipeline.produce('local', 'bytes',
		  (SELECT string_agg(set_byte('\x00'::bytea, 0, b), ''::bytea ORDER BY b) FROM generate_series(0, 255) b))});
	my ($raw, $err);
	run([ 'kcat', '-C', '-b', $bs, '-t', 'bytes', '-c', '1', '-e', '-q', '-f', '%s' ],
		'>', \$raw, '2>', \$err, timeout(60));
	is($raw, join('', map { chr } 0 .. 255), 'a bytea value arrives byte for byte');
}

# --- one producer per backend and connection, rebuilt when the connection changes
{
	($ret, $stdout, $stderr) = $node->psql('postgres', q{
SET client_min_messages = debug1;
SELECT partition FROM pipeline.produce('local', 'small', 'reuse 1');
SELECT partition FROM pipeline.produce('local', 'small', 'reuse 2');
SELECT pipeline.produce_async('local', 'small', 'reuse ' || g) FROM generate_series(3, 5) g;
});
	my $made = () = $stderr =~ /created producer for connection "local"/g;
	is($made, 1, 'one session reuses one producer for all its calls');

	# options reach the producer: a small message.max.bytes rejects a 2 kB value
	$node->safe_psql('postgres', qq{SELECT pipeline.create_connection('tiny', '$bs', '{"message.max.bytes": 1000}')});
	($ret, $stdout, $stderr) = $node->psql('postgres', q{
SET client_min_messages = debug1;
SELECT partition FROM pipeline.produce('tiny', 'small', repeat('y', 500));
SELECT pipeline.drop_connection('tiny');
SELECT pipeline.create_connection('tiny', '} . $bs . q{', '{"message.max.bytes": 100000}');
SELECT partition FROM pipeline.produce('tiny', 'small', repeat('y', 2000));
});
	$made = () = $stderr =~ /created producer for connection "tiny"/g;
	is($made, 2, 'the producer is rebuilt after its connection is dropped and re-created');
	unlike($stderr, qr/ERROR/, 'the re-created connection takes its new options');
	($ret, $stdout, $stderr) = $node->psql('postgres',
		q{SELECT pipeline.drop_connection('tiny'); SELECT pipeline.create_connection('tiny', '} . $bs
		  . q{', '{"message.max.bytes": 1000}'); SELECT partition FROM pipeline.produce('tiny', 'small', repeat('y', 2000))});
	like($stderr, qr/larger than the limit/, "the connection's options configure its producer (message.max.bytes)");
}

# --- 100,000 produce_async rows in one statement -----------------------------
# With a 50 ms round trip to the broker, one round trip per row would take
# over an hour; batched sending takes seconds.  The same statement without
# the round trip, run just before on this machine, is the baseline: what the
# round trip adds must stay under one round trip per 100 rows (50 s), which
# does not depend on how fast the machine runs the SQL and librdkafka.
my ($bulk_rows, $bulk_rtt_ms) = (100000, 50);
sub bulk_produce
{
	my ($topic) = @_;
	my $t = time;
	$node->safe_psql('postgres', qq{
		SELECT count(pipeline.produce_async('local', '$topic', 'bulk message ' || g, 'b' || (g % 10000)))
		  FROM generate_series(1, $bulk_rows) g});
	return time - $t;
}
my $baseline = bulk_produce('bulk0');
$broker->ctl("rtt all $bulk_rtt_ms");
my $elapsed = bulk_produce('bulk');
$broker->ctl('rtt all 0');
my $added_bound = $bulk_rows / 100 * $bulk_rtt_ms / 1000;
note sprintf('100,000 produce_async rows committed in %.1f s with a 50 ms broker round trip, %.1f s without', $elapsed, $baseline);
cmp_ok($elapsed - $baseline, '<', $added_bound,
	sprintf('produce_async does not pay a round trip per row: the 50 ms round trip added %.1f s (one per 100 rows would add %d s)',
		$elapsed - $baseline, $added_bound));
{
	my ($out, $err);
	run([ 'kcat', '-C', '-b', $bs, '-t', 'bulk', '-e', '-q', '-f', '%o\n' ],
		'>', \$out, '2>', \$err, timeout(120));
	my $count = () = $out =~ /\n/g;
	is($count, 100000, 'all 100,000 asynchronously produced messages arrived');
}

# --- unknown topic, oversized message -----------------------------------------
$broker->ctl('topic_error ghost UNKNOWN_TOPIC_OR_PART');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT * FROM pipeline.produce('local', 'ghost', 'boo')});
like($stderr, qr/topic "ghost" does not exist/, 'unknown topic: clear error');
# ... and again in the same session: the failed look-up is not cached, so
# the second produce() and a produce_async() fail the same way at once (not
# after the timeout, not at COMMIT)
($ret, $stdout, $stderr) = $node->psql('postgres', q{
	SET pipeline_ext.produce_timeout = '2s';
	SELECT * FROM pipeline.produce('local', 'ghost', 'boo');
	SELECT * FROM pipeline.produce('local', 'ghost', 'boo again');
	BEGIN;
	SELECT pipeline.produce_async('local', 'ghost', 'boo async');
	COMMIT;}, on_error_stop => 0);
is(scalar(() = $stderr =~ /ERROR:  topic "ghost" does not exist on connection "local"/g), 3,
	'unknown topic: the second produce() and a produce_async() in the same session fail the same way');
unlike($stderr, qr/acknowledg|timed out|could not be delivered/, '... not by waiting for an acknowledgement');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT * FROM pipeline.produce('local', 'small', repeat('x', 2000000))});
like($stderr, qr/message of 2000000 bytes to topic "small" is larger than the limit/,
	'oversized message: clear error');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT pipeline.produce_async('local', 'small', repeat('x', 2000000))});
like($stderr, qr/message of 2000000 bytes to topic "small" is larger than the limit/,
	'oversized async message fails at once, before the commit');

# --- broker down: bounded failure ----------------------------------------------
# The failing statement is timed inside its session, from just before it to
# just after its error, so that starting psql and a backend, which takes as
# long as the machine takes, is not counted.  The bounds are the 2 s timeout
# and the 3 s more that the extension gives librdkafka to report why
# (PE_DR_MARGIN_MS), and some.
sub timed_statement
{
	my ($set, $statement) = @_;
	my ($r, $out, $err) = $node->psql('postgres',
		"$set\nSELECT extract(epoch FROM clock_timestamp());\n$statement;\nSELECT extract(epoch FROM clock_timestamp());\n",
		on_error_stop => 0);
	my @t = grep { /^\d+(\.\d+)?$/ } split /\n/, $out;
	die "timed_statement: no start and end time in psql's output:\n$out\n$err" unless @t == 2;
	return ($r, $out, $err, $t[1] - $t[0]);
}
$broker->ctl('down all');
($ret, $stdout, $stderr, $elapsed) = timed_statement(q{SET pipeline_ext.produce_timeout = '2s';},
	q{SELECT * FROM pipeline.produce('local', 'small', 'while down')});
like($stderr, qr/(could not reach the brokers|no acknowledgement from the brokers) of connection "local" within 2000 ms/,
	'produce with the broker down fails with a clear error');
cmp_ok($elapsed, '<', 6, sprintf('... within the configured timeout (%.1f s for 2 s)', $elapsed));
cmp_ok($elapsed, '>=', 1.9, '... and not before it');

($ret, $stdout, $stderr, $elapsed) = timed_statement(q{SET pipeline_ext.produce_timeout = '2s';},
	q{SELECT pipeline.produce_async('local', 'events', 'async while down', 'k')});
like($stderr, qr/could not (reach the brokers|be delivered)|not acknowledged/,
	'produce_async with the broker down fails the commit');
cmp_ok($elapsed, '<', 8, sprintf('... within the configured timeout (%.1f s)', $elapsed));

# A warm producer (topic already known) whose messages cannot be delivered:
# the commit fails, says how many and why, and the transaction's own writes
# are rolled back with it.
{
	my $bin = "$ENV{TESTDIR}/test/broker/pe_broker";
	my $ctl = $broker->{control};
	$broker->ctl('up all');
	$node->safe_psql('postgres', 'CREATE TABLE audit (note text)');
	($ret, $stdout, $stderr) = $node->psql('postgres', qq{
SET pipeline_ext.produce_timeout = '2s';
SELECT partition FROM pipeline.produce('local', 'events', 'warm', 'k');
\\! $bin ctl $ctl down all
BEGIN;
INSERT INTO audit VALUES ('sent three');
SELECT pipeline.produce_async('local', 'events', 'doomed ' || g, 'k') FROM generate_series(1, 3) g;
COMMIT;
});
	# librdkafka reports the message timeout from a timer scan that a broker
	# in connect backoff can delay by seconds; when its report is late, our
	# own deadline (timeout + 3 s) fails the commit instead.  Both errors
	# must give the count and a reason.
	like($stderr, qr/3 of 3 messages produced in this transaction (could not be delivered|were not acknowledged within 2000 ms)/,
		'undeliverable async messages fail the commit, with the count')
	  or diag("psql said:\n$stdout\n$stderr");
	like($stderr, qr/first failure: Local: Message timed out|last broker error: \S+: Connect to \S+ failed: Connection refused/,
		'... and the reason');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM audit'), '0',
		"... and the transaction's own writes are rolled back");
}

# --- cancel (pg_cancel_backend) stops a wait promptly ---------------------------
{
	my ($in, $out, $err) = ('', '', '');
	my $h = start([ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
		"SET application_name = 'cancel_me'; SET pipeline_ext.produce_timeout = '60s';"
		  . " SELECT * FROM pipeline.produce('local', 'small', 'never acked')" ],
		'<', \$in, '>', \$out, '2>', \$err);
	$node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'cancel_me' AND state = 'active'})
	  or die 'the waiting produce did not start';
	usleep(500_000);
	$node->safe_psql('postgres',
		q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'cancel_me'});
	# timed from when the cancel has surely been sent, not from before the
	# psql that sends it starts.  The wait looks for a cancel between slices
	# of at most 2 s (its metadata look-up, with the broker down: slices of
	# 200 ms doubling up to 2 s), however late the cancel comes; half a
	# second more for the error to reach psql and psql to exit.
	my $tc = time;
	finish($h);
	my $took = time - $tc;
	like($err, qr/canceling statement due to user request/, 'a cancelled produce reports the cancel');
	cmp_ok($took, '<', 2.5, sprintf('... and returns promptly (%.2f s)', $took));
}
$broker->ctl('up all');

# the cached producer recovers once the broker is back
my $after = $node->safe_psql('postgres',
	q{SET pipeline_ext.produce_timeout = '20s'; SELECT partition FROM pipeline.produce('local', 'small', 'back up')});
is($after, '0', 'producing works again after the broker comes back');

# --- producer_stats and reset_stats -------------------------------------------
{
	my ($msgs, $fails, $p50, $p95, $p99, $max) = split /\|/, $node->safe_psql('postgres',
		'SELECT messages, delivery_failures, latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_max_ms FROM pipeline.producer_stats');
	my $wall_ms = (time - $script_start) * 1000;
	cmp_ok($msgs, '>=', 110000, "producer_stats counts the delivered messages of every backend ($msgs)");
	cmp_ok($fails, '>=', 3, "... and the delivery failures ($fails)");
	ok($p50 > 0 && $p50 <= $p95 && $p95 <= $p99 && $p99 <= $max && $max <= $wall_ms,
		"... latency percentiles are ordered and within the test's own wall time (p50 $p50, p95 $p95, p99 $p99, max $max ms; wall $wall_ms ms)");

	($ret, $stdout, $stderr) = $node->psql('postgres', q{
		CREATE ROLE stats_reader LOGIN; SET ROLE stats_reader;
		SELECT messages > 0 FROM pipeline.producer_stats;
		SELECT pipeline.reset_stats();});
	is($stdout, 't', 'producer_stats is readable by any role');
	like($stderr, qr/must be superuser to reset all statistics/, 'only a superuser resets all statistics');

	$node->safe_psql('postgres', 'SELECT pipeline.reset_stats()');
	is($node->safe_psql('postgres', 'SELECT messages || \'/\' || delivery_failures || \'/\' || (latency_p50_ms IS NULL) FROM pipeline.producer_stats'),
		'0/0/true', 'reset_stats() zeroes the producer totals and the histogram');

	# the latency follows the broker's round trip: not under it, and (as
	# produce() waits for each acknowledgement) not over the statement
	$broker->ctl('rtt all 300');
	my $t_slow = time;
	$node->safe_psql('postgres', q{SELECT pipeline.produce('local', 'small', 'slow ' || g) FROM generate_series(1, 5) g});
	my $slow_wall_ms = (time - $t_slow) * 1000;
	$broker->ctl('rtt all 0');
	my ($n, $slow50) = split /\|/, $node->safe_psql('postgres', 'SELECT messages, latency_p50_ms FROM pipeline.producer_stats');
	is($n, '5', 'after the reset only the new messages count');
	ok($slow50 >= 250 && $slow50 <= $slow_wall_ms,
		sprintf('with a 300 ms broker round trip the median delivery latency is %s ms (statement: %.0f ms)', $slow50, $slow_wall_ms));
}

# --- secrets stay out of the server log ------------------------------------------
# The test cluster runs with log_statement = all, which logs every statement's
# text, secrets included, whoever wrote it (README: Security); switch it off
# to check what pipeline_ext itself writes.
$node->append_conf('postgresql.conf', "log_statement = none\n");
$node->reload;
{
	my $key = 'U2VjcmV0S2V5VGhhdE11c3ROb3RMZWFr';
	my $pw = 'pa55-that-must-not-leak';
	$node->psql('postgres', "SELECT pipeline.create_eventhubs_connection('hub', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=$key')");
	# failing calls with secrets in their arguments
	$node->psql('postgres', "SELECT pipeline.create_eventhubs_connection('hub2', 'Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=$key')");
	$node->psql('postgres', "SELECT pipeline.create_eventhubs_connection('hub', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=$key')");
	$node->psql('postgres', qq{SELECT pipeline.create_connection('sasl', '$bs', '{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": "u", "sasl.password": "$pw"}')});
	$node->psql('postgres', qq{SELECT pipeline.create_connection('sasl', '$bs', '{"sasl.password": "$pw", "ackz": 1}')});
	# ... failing on something else than the secret: the name
	($ret, $stdout, $stderr) = $node->psql('postgres', qq{SELECT pipeline.create_connection('bad name', '$bs', '{"sasl.password": "$pw"}')});
	like($stderr, qr/invalid connection name "bad name"/, 'a bad connection name with a password in the options fails on the name');
	($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT pipeline.create_eventhubs_connection('bad name', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=$key')");
	like($stderr, qr/invalid connection name "bad name"/, '... and so does one with an Event Hubs key');
	# a producer that tries SASL against a broker that does not speak it: the
	# broker's answer is an authentication failure, given at once, not after
	# produce_timeout as "could not reach the brokers"
	($ret, $stdout, $stderr) = $node->psql('postgres',
		q{SET pipeline_ext.produce_timeout = '10min'; SET log_min_error_statement = panic;
		  \set VERBOSITY verbose
		  SELECT * FROM pipeline.produce('sasl', 'small', 'x')});
	isnt($ret, 0, 'producing through a SASL connection to a non-SASL broker fails');
	like($stderr, qr/ERROR:  28000: authentication failed for connection "sasl"/,
		'... at once, saying that authentication failed (28000)');
	unlike($stderr, qr/\Q$pw\E/, '... and the error does not contain the password');
	($ret, $stdout, $stderr) = $node->psql('postgres',
		q{SET pipeline_ext.produce_timeout = '10min'; SET log_min_error_statement = panic;
		  BEGIN; SELECT pipeline.produce_async('sasl', 'small', 'x'); COMMIT;});
	like($stderr, qr/authentication failed for connection "sasl"/, '... and so does the commit of produce_async');
	# a consumer on it shows the failure as its last error, and is retried
	$node->safe_psql('postgres', q{CREATE TABLE sasl_t (v text);
		SELECT pipeline.create_consumer('sasl_c', 'sasl', 'small', 'sasl_t', mode => 'append', format => 'text',
		    column_map => '{"v": "$value"}')});
	ok($node->poll_query_until('postgres',
		q{SELECT coalesce(bool_or(last_error LIKE 'authentication failed for connection "sasl"%'), false) FROM pipeline.consumer_status WHERE consumer = 'sasl_c'}),
		'a consumer shows the authentication failure as its last error');
	$node->safe_psql('postgres', q{SELECT pipeline.drop_consumer('sasl_c')});
	my $log = slurp_file($node->logfile);
	unlike($log, qr/\Q$key\E/, 'the server log never contains the SAS key');
	unlike($log, qr/\Q$pw\E/, 'the server log never contains the SASL password');
}

$node->stop;

# --- without shared_preload_libraries ----------------------------------------------
{
	my $plain = PostgreSQL::Test::Cluster->new('no_preload');
	$plain->init;
	$plain->start;
	$plain->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
	$plain->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");
	($ret, $stdout, $stderr) = $plain->psql('postgres',
		q{SELECT * FROM pipeline.produce('local', 'small', 'x')});
	like($stderr, qr/pipeline_ext must be loaded via shared_preload_libraries/,
		'without preloading, produce() says what is missing');
	like($stderr, qr/HINT:  Add pipeline_ext to shared_preload_libraries/, '... and the hint says what to add');
	$plain->stop;
}

$broker->stop;
done_testing();

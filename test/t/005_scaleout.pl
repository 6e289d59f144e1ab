# Scale-out: two PostgreSQL servers share one topic through one Kafka
# consumer group (group_id).  Each message lands exactly once in exactly one
# of the two servers' tables, while the group rebalances: both joining, a
# kill -9 of one server's worker, a stop of one whole server (its
# partitions move to the other) and its return (they are shared again).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use PipelineExt::Broker;
use PipelineExt::Crash;

my $broker = PipelineExt::Broker->start(brokers => 1, topics => { shared => 4 });
my $bs = $broker->bootstrap;

my @nodes;
for my $name ('east', 'west')
{
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
restart_after_crash = on
log_min_messages = info
});
	$node->start;
	# a member that stops answering leaves the group after 6 s
	$node->safe_psql('postgres', qq{
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('local', '$bs', '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}');
CREATE TABLE sc_t (seq int, p int, o bigint);
SELECT pipeline.create_consumer('sc', 'local', 'shared', 'sc_t', mode => 'append', group_id => 'pe-scaleout',
    column_map => '{"p": "\$partition", "o": "\$offset"}');
});
	push @nodes, $node;
}
my ($east, $west) = @nodes;

my $produced = 0;
sub produce
{
	my ($n, $via, $partitions) = @_;
	# spread over the given partitions (an array literal), or by key
	my $part = $partitions ? "('$partitions'::int[])[1 + g % cardinality('$partitions'::int[])]" : 'NULL';
	($via // $east)->safe_psql('postgres', sprintf(q{SELECT count(pipeline.produce_async('local', 'shared',
	    json_build_object('seq', g)::text, g::text, NULL, %s)) FROM generate_series(%d, %d) g},
		$part, $produced + 1, $produced + $n));
	$produced += $n;
}

# rows of both tables: total, distinct (partition, offset), distinct seq
sub tally
{
	my (%po, %seq, $total);
	for my $node (grep { defined $_ } @_)
	{
		# (a server restarting after the kill -9 answers later)
		my ($ret, $out) = $node->psql('postgres', 'SELECT seq, p, o FROM sc_t');
		return "unavailable" if $ret != 0;
		for my $line (split /\n/, $out)
		{
			my ($s, $p, $o) = split /\|/, $line;
			$total++;
			$po{"$p:$o"} = 1;
			$seq{$s} = 1;
		}
	}
	return sprintf('%d/%d/%d', $total // 0, scalar(keys %po), scalar(keys %seq));
}

sub wait_tally
{
	my ($expected, $name, @up) = @_;
	my $got = '';
	for (1 .. 1200)
	{
		$got = tally(@up);
		last if $got eq $expected;
		usleep(100_000);
	}
	is($got, $expected, "$name (rows/distinct partition-offset/distinct messages)");
}

sub partitions_of
{
	my $node = shift;
	my ($ret, $out) = $node->psql('postgres',
		q{SELECT coalesce(sum(cardinality(partitions)), 0) FROM pipeline._slots() WHERE consumer = 'sc' AND pid IS NOT NULL});
	return $ret == 0 ? $out : 'unavailable';
}

sub wait_partitions
{
	my ($node, $n, $name) = @_;
	my $got;
	for (1 .. 1200)
	{
		$got = partitions_of($node);
		last if $got eq $n;
		usleep(100_000);
	}
	is($got, $n, $name);
}

sub wait_committed
{
	my ($n, $name) = @_;
	is($broker->wait_group_committed('pe-scaleout', 'shared', 4, $n), $n, $name);
}

# both servers join the group: the 4 partitions are shared
wait_partitions($east, '2', 'east holds 2 of the 4 partitions');
wait_partitions($west, '2', 'west holds the other 2');
produce(2000);
wait_tally('2000/2000/2000', 'shared: 2,000 messages, each once, over both servers', $east, $west);
ok($east->safe_psql('postgres', 'SELECT count(*) FROM sc_t') > 0 && $west->safe_psql('postgres', 'SELECT count(*) FROM sc_t') > 0,
	'... and both servers applied some');
wait_committed('2000', '... and the group committed them');

# kill -9 of east's worker while 2,000 messages arrive: the server restarts
# its backends, the worker comes back and the group rebalances; a batch
# whose offsets the group refuses meanwhile is rolled back; each message
# lands once
my $pid = $east->safe_psql('postgres', q{SELECT pid FROM pipeline._slots() WHERE consumer = 'sc' AND pid IS NOT NULL});
produce(2000, $west);
kill_and_wait_restart($east, $pid);
wait_partitions($east, '2', 'east holds 2 partitions again after the kill -9 and its restart');
wait_partitions($west, '2', '... and west 2');
wait_tally('4000/4000/4000', 'kill -9 of one server\'s worker: every message once', $east, $west);
wait_committed('4000', '... and the group committed them');

# a crash between the group's commit and PostgreSQL's: the group answers the
# next offset commit 4 s late (having taken it), and the worker waiting for
# that answer (for over a second: that one), inside its batch's transaction,
# is killed.  At its restart it
# finds the group's commit of its own batch ahead of its database, and
# applies the batch again; the partitions' next owner resumes after it.
$broker->ctl('delay 1 OffsetCommit 4000 1');
produce(400, $west);
my ($victim, $victim_pid);
for (1 .. 300)
{
	for my $node ($east, $west)
	{
		my ($ret, $out) = $node->psql('postgres', q{SELECT pid FROM pg_stat_activity
		    WHERE application_name LIKE 'pipeline_ext consumer sc/%' AND state = 'active'
		      AND query = 'committing offsets to the Kafka group' AND state_change < now() - interval '1 second'});
		($victim, $victim_pid) = ($node, $out) if $ret == 0 && $out =~ /^\d+$/;
	}
	last if $victim;
	usleep(50_000);
}
ok($victim, 'a worker waits for the group to answer its commit (' . ($victim ? $victim->name : 'none') . ')');
my $victim_log = $victim ? -s $victim->logfile : 0;
kill_and_wait_restart($victim, $victim_pid) if $victim;
wait_partitions($east, '2', 'after the crash east holds 2 partitions');
wait_partitions($west, '2', '... and west 2');
wait_tally('4400/4400/4400', 'a crash between the two commits: every message once over both servers', $east, $west);
wait_committed('4400', '... and the group committed them');
like(slurp_file($victim->logfile, $victim_log), qr/partition \d+: applying offsets \d+ to \d+ again; group "pe-scaleout" took their commit, PostgreSQL did not/,
	'the crashed server applied its batch again at its restart') if $victim;

# a stop of east while it waits for the group to answer a commit the group
# took: the stop ends the wait and rolls the batch back.  Its partitions move
# to west, which resumes them after east's batch and carries east's claim to
# it in its own commits; east applies the batch when it comes back.
my $east_parts = $east->safe_psql('postgres',
	q{SELECT partitions FROM pipeline._slots() WHERE consumer = 'sc' AND pid IS NOT NULL});
$broker->ctl('delay 1 OffsetCommit 4000 1');
produce(200, $west, $east_parts);
my $waiting = 0;
for (1 .. 300)
{
	$waiting = $east->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity
	    WHERE application_name LIKE 'pipeline_ext consumer sc/%' AND state = 'active'
	      AND query = 'committing offsets to the Kafka group' AND state_change < now() - interval '1 second'});
	last if $waiting;
	usleep(50_000);
}
is($waiting, '1', "east waits for the group to answer its commit (partitions $east_parts)");
my $east_log = -s $east->logfile;
$east->stop('fast');
wait_partitions($west, '4', 'east stopped: west holds all 4 partitions');
my $before_down = $produced;
produce(2000, $west);
for (1 .. 1200)
{
	last if $west->safe_psql('postgres', "SELECT count(*) FROM sc_t WHERE seq > $before_down") == 2000;
	usleep(100_000);
}
is($west->safe_psql('postgres', "SELECT count(*) FROM sc_t WHERE seq > $before_down"), '2000',
	'west applies the 2,000 messages produced while east is down');
cmp_ok($west->safe_psql('postgres', "SELECT count(*) FROM sc_t WHERE seq > $before_down - 200 AND seq <= $before_down"), '<', 200,
	'... and not the batch the group took from east');
wait_committed($produced, '... and the group committed them');

# east comes back: the partitions are shared again, and nothing is applied twice
$east->start;
wait_partitions($east, '2', 'east is back: it holds 2 partitions');
wait_partitions($west, '2', '... and west 2');
like(slurp_file($east->logfile, $east_log), qr/partition \d+: applying offsets \d+ to \d+ again; group "pe-scaleout" took their commit, PostgreSQL did not/,
	'... and applied the batch the group took from it before it stopped');
my $before_return = $produced;
produce(2000);
wait_tally("$produced/$produced/$produced", 'after the return: every message once over both servers', $east, $west);
ok($east->safe_psql('postgres', "SELECT count(*) FROM sc_t WHERE seq > $before_return") > 0, 'east applies new messages again');

for my $node ($east, $west)
{
	$node->stop;
	unlike(slurp_file($node->logfile), qr/terminated by signal (?!9)/, $node->name . ': no worker crashed (other than the kill -9)');
}
$broker->stop;
done_testing();

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
	my ($n, $via) = @_;
	($via // $east)->safe_psql('postgres', sprintf(q{SELECT count(pipeline.produce_async('local', 'shared',
	    json_build_object('seq', g)::text, g::text)) FROM generate_series(%d, %d) g}, $produced + 1, $produced + $n));
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

# Each disruption comes once the group has committed every message (the
# figure the next owner of a partition resumes from), and new messages come
# once the group is stable again: see README, Scale-out, for a batch caught
# in a rebalance on this test broker or in a crash.
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

# kill -9 of east's worker: the server restarts its backends, the worker
# comes back and the group rebalances; messages produced meanwhile land once
my $pid = $east->safe_psql('postgres', q{SELECT pid FROM pipeline._slots() WHERE consumer = 'sc' AND pid IS NOT NULL});
kill 'KILL', $pid;
wait_partitions($east, '2', 'east holds 2 partitions again after the kill -9 and its restart');
wait_partitions($west, '2', '... and west 2');
produce(2000, $west);
wait_tally('4000/4000/4000', 'kill -9 of one server\'s worker: every message once', $east, $west);
wait_committed('4000', '... and the group committed them');

# a stop of east: its partitions move to west, which resumes them where east
# stopped (the group's committed offsets), not from its own start
$east->stop('fast');
wait_partitions($west, '4', 'east stopped: west holds all 4 partitions');
produce(2000, $west);
for (1 .. 1200)
{
	last if $west->safe_psql('postgres', 'SELECT count(*) FROM sc_t WHERE seq > 4000') == 2000;
	usleep(100_000);
}
is($west->safe_psql('postgres', 'SELECT count(*) FROM sc_t WHERE seq > 4000'), '2000',
	'west applies the 2,000 messages produced while east is down');
wait_committed('6000', '... and the group committed them');

# east comes back: the partitions are shared again, and nothing is applied twice
$east->start;
wait_partitions($east, '2', 'east is back: it holds 2 partitions');
wait_partitions($west, '2', '... and west 2');
produce(2000);
wait_tally('8000/8000/8000', 'after the return: every message once over both servers', $east, $west);
ok($east->safe_psql('postgres', 'SELECT count(*) FROM sc_t WHERE seq > 6000') > 0, 'east applies new messages again');

for my $node ($east, $west)
{
	$node->stop;
	unlike(slurp_file($node->logfile), qr/terminated by signal (?!9)/, $node->name . ': no worker crashed (other than the kill -9)');
}
$broker->stop;
done_testing();

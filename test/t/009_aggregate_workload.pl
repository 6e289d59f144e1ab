# Aggregates under the issue's workload, against the test broker: 100,000
# events over 6 partitions and 1,000 keys, 5 % of them out of order within
# the lateness and 1 % well beyond it, into tumbling, hopping and session
# aggregates, through an append consumer whose transactions take in
# several batches while it is behind; a slot worker killed with SIGKILL
# and the server stopped with -m immediate in the middle.  Every window, closed or open, equals plain
# SQL over the events the aggregate did not keep as late, and every event
# is either counted or kept as late: nothing twice, nothing lost.  Which
# events are late is also checked against the events alone: the watermark
# after each chunk is the least of the partitions' newest event times; no
# event within the lateness is kept as late; every event whose window had
# closed by the watermark of the chunk before is.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PipelineExt::Broker;
use PipelineExt::Crash;

my $broker = PipelineExt::Broker->start(brokers => 1, topics => { wl => 6 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('aggregate_workload');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
restart_after_crash = on
});
$node->start;

sub sql { return $node->safe_psql('postgres', "SET TimeZone = 'UTC';\n" . $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($node->poll_query_until('postgres', $query, $expected), $what)
	  or diag("last result: " . sql($query) . "\nstatus: " . sql('SELECT * FROM pipeline.consumer_status'));
}

# Event i: key i % 1,000, group i % 10; its time i / 10 s from the start,
# with a pause of 60 s every 5,000 events; 5 % of the events are 1 to 25 s
# older than that (out of order, within the lateness of 30 s), 1 % 120 to
# 299 s older (beyond it).  The sessions' lateness is 60 s: the 1 % join
# sessions that closed (the pauses end them) and are kept as late, or
# sessions still open.  The idle timeout is longer than the test: the
# watermark moves with the events' times alone, not with the clock (a slow
# machine's pause between chunks would move it), so that the test can
# tell from the events which ones were late.
sql(qq{CREATE EXTENSION pipeline_ext;
       SELECT pipeline.create_connection('local', '$bs');
       CREATE TABLE wl_events (id int PRIMARY KEY, g int, ts timestamptz, p int);
       -- the watermark the test computes after each chunk
       CREATE TABLE wl_marks (chunk int PRIMARY KEY, last_id int, watermark timestamptz);
       SELECT pipeline.create_consumer('wl', 'local', 'wl', 'wl_events', mode => 'append', batch_size => 1000,
                                       column_map => '{"p": "\$partition"}');
       SELECT pipeline.create_aggregate('wl_tumble', 'wl', '1 minute', 'ts', ARRAY['count(*)', 'max(id)'], ARRAY['g'],
                                        lateness => '30 seconds', idle_timeout => '1 day');
       SELECT pipeline.create_aggregate('wl_hop', 'wl', '2 minutes', 'ts', ARRAY['count(*)', 'sum(id)'], ARRAY['g'],
                                        slide => '1 minute', lateness => '30 seconds', idle_timeout => '1 day');
       SELECT pipeline.create_aggregate('wl_session', 'wl', '10 seconds', 'ts', ARRAY['count(*)', 'min(id)'], ARRAY['g'],
                                        kind => 'session', lateness => '60 seconds', idle_timeout => '1 day');});

sub produce
{
	my ($from, $to) = @_;
	sql(qq{SELECT count(pipeline.produce_async('local', 'wl',
	         json_build_object('id', i, 'g', i % 10,
	           'ts', timestamptz '2026-01-01 00:00:00+00' + i * interval '100 milliseconds' + i / 5000 * interval '60 seconds'
	                 - CASE WHEN i * 7919 % 100 < 5 THEN (1 + i % 25) * interval '1 second'
	                        WHEN i * 7919 % 100 = 5 THEN (120 + i % 180) * interval '1 second'
	                        ELSE interval '0' END)::text,
	         (i % 1000)::text))
	       FROM generate_series($from, $to) i});
}

# the events an aggregate kept as late, with the watermark then
sub late { return qq{SELECT (convert_from(value, 'UTF8')::jsonb->>'id')::int AS id, watermark FROM pipeline.late_events WHERE aggregate = '$_[0]'}; }

my $origin = q{timestamptz '2000-01-01 00:00:00+00'};
my %checks = (
	wl_tumble => [
		q{SELECT string_agg(concat_ws('|', window_start, g, count, max_id), ',' ORDER BY window_start, g) FROM wl_tumble},
		qq{SELECT string_agg(concat_ws('|', s, g, n, m), ',' ORDER BY s, g)
		     FROM (SELECT date_bin('1 minute', ts, $origin) AS s, g, count(*) AS n, max(id) AS m
		             FROM wl_events WHERE id NOT IN (SELECT id FROM (${\ late('wl_tumble')}) l) GROUP BY 1, 2) x}],
	# a late event of a hopping window still counts in those of its windows that were open
	wl_hop => [
		q{SELECT string_agg(concat_ws('|', window_start, g, count, sum_id), ',' ORDER BY window_start, g) FROM wl_hop},
		qq{SELECT string_agg(concat_ws('|', s, g, n, t), ',' ORDER BY s, g)
		     FROM (SELECT w.s, e.g, count(*) AS n, sum(e.id) AS t
		             FROM wl_events e LEFT JOIN (${\ late('wl_hop')}) l ON l.id = e.id,
		                  LATERAL (VALUES (date_bin('1 minute', e.ts, $origin)),
		                                  (date_bin('1 minute', e.ts, $origin) - interval '1 minute')) w(s)
		            WHERE l.id IS NULL OR w.s + interval '2 minutes' + interval '30 seconds' > l.watermark
		            GROUP BY 1, 2) x}],
	wl_session => [
		q{SELECT string_agg(concat_ws('|', window_start, window_end, g, count, min_id), ',' ORDER BY window_start, g) FROM wl_session},
		qq{SELECT string_agg(concat_ws('|', s, e, g, n, m), ',' ORDER BY s, g)
		     FROM (SELECT min(ts) AS s, max(ts) + interval '10 seconds' AS e, g, count(*) AS n, min(id) AS m
		             FROM (SELECT *, sum(fresh) OVER (PARTITION BY g ORDER BY ts, id) AS isl
		                     FROM (SELECT *, CASE WHEN ts >= lag(ts) OVER (PARTITION BY g ORDER BY ts, id) + interval '10 seconds'
		                                     THEN 1 ELSE 0 END AS fresh
		                             FROM wl_events WHERE id NOT IN (SELECT id FROM (${\ late('wl_session')}) l)) f) y
		            GROUP BY g, isl) x}]);

sub check_all
{
	my ($what, $n) = @_;
	wait_for(q{SELECT count(*) FROM wl_events}, $n, "$what: the consumer applied $n events");
	foreach my $agg (sort keys %checks)
	{
		my ($got, $want) = @{ $checks{$agg} };
		is(sql($got), sql($want), "$what: $agg equals plain SQL over the events it did not keep as late");
	}
	foreach my $agg ('wl_tumble', 'wl_session')
	{
		is(sql(qq{SELECT sum(count) + (SELECT count(*) FROM pipeline.late_events WHERE aggregate = '$agg') FROM $agg}), $n,
			"$what: $agg counted or kept as late each of the $n events once");
	}
	is(sql(q{SELECT count(*) FROM (SELECT FROM pipeline.late_events GROUP BY aggregate, "partition", "offset" HAVING count(*) > 1) d}), '0',
		"$what: no late event kept twice");
	# each event kept as late came after its windows had closed: its last
	# window's end plus the lateness not after the watermark it was kept at
	# (the rule itself, not the aggregate's word for it)
	is(sql(qq{SELECT count(*) FROM (${\ late('wl_tumble')}) l JOIN wl_events e ON e.id = l.id
	           WHERE date_bin('1 minute', e.ts, $origin) + interval '1 minute' + interval '30 seconds' > l.watermark}), '0',
		"$what: wl_tumble kept as late only events whose window had closed");
	is(sql(qq{SELECT count(*) FROM (${\ late('wl_hop')}) l JOIN wl_events e ON e.id = l.id
	           WHERE date_bin('1 minute', e.ts, $origin) + interval '1 minute' + interval '30 seconds' > l.watermark}), '0',
		"$what: wl_hop kept as late only events whose first window had closed");
	# from the events alone: no event in order or out of order within the
	# lateness (all but 1 %) is kept as late; every event whose windows had
	# closed by the watermark of the chunk before it is (the watermark never
	# goes back); some are
	foreach my $agg ('wl_tumble', 'wl_hop')
	{
		is(sql(qq{SELECT count(*) FROM (${\ late($agg)}) l WHERE l.id * 7919 % 100 <> 5}), '0',
			"$what: $agg kept as late no event that was within the lateness");
		my $due = qq{SELECT e.id FROM wl_events e JOIN wl_marks m ON m.last_id = (e.id - 1) / 10000 * 10000
		              WHERE date_bin('1 minute', e.ts, $origin) + interval '1 minute' + interval '30 seconds' < m.watermark};
		is(sql(qq{SELECT count(*) FROM ($due) d WHERE d.id NOT IN (SELECT id FROM (${\ late($agg)}) l)}), '0',
			"$what: $agg kept as late every event whose window had closed by the watermark of the chunk before");
		cmp_ok(sql(qq{SELECT count(*) FROM ($due) d}), '>=', 10, "$what: ... of which there are some");
	}
	# (a session: an event out of order by at most 25 s neither joins a
	# session that closed, whose end plus 60 s the watermark had passed, nor
	# makes one of its own that would be)
	is(sql(qq{SELECT count(*) FROM (${\ late('wl_session')}) l WHERE l.id * 7919 % 100 <> 5}), '0',
		"$what: wl_session kept as late no event that was within the lateness");
	# (an append consumer into a table keyed by id: a message applied twice would be a dead letter)
	is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'wl'}), '0', "$what: no message applied twice");
	is(sql(q{SELECT bool_and(open_windows = CASE name
	           WHEN 'wl_tumble' THEN (SELECT count(*) FROM wl_tumble WHERE NOT closed)
	           WHEN 'wl_hop' THEN (SELECT count(*) FROM wl_hop WHERE NOT closed)
	           ELSE (SELECT count(*) FROM wl_session WHERE NOT closed) END) FROM pipeline.aggregates}), 't',
		"$what: pipeline.aggregates counts the open windows of each");
}

# ten chunks of 10,000, each applied before the next: the watermark moves
# between them, so events out of order across a chunk's start are late
my $n = 0;
for my $chunk (1 .. 10)
{
	produce($n + 1, $n + 10000);
	$n += 10000;
	if ($chunk == 4)
	{
		my $pid = sql(q{SELECT worker_pid FROM pipeline.consumer_status WHERE consumer = 'wl' AND worker_pid IS NOT NULL LIMIT 1});
		ok(kill_and_wait_restart($node, $pid), "kill -9 of the slot worker while it applies chunk 4 (pid $pid), and the restart");
	}
	if ($chunk == 7)
	{
		$node->stop('immediate');
		$node->start;
		pass('the server stopped with -m immediate while chunk 7 is applied, and started again');
	}
	wait_for(q{SELECT count(*) FROM wl_events}, $n, "chunk $chunk applied");
	# the watermark is the least of the partitions' newest event times (the
	# partitions from the events: the consumer maps \$partition into p)
	sql(qq{INSERT INTO wl_marks SELECT $chunk, $n, min(newest) FROM (SELECT max(ts) AS newest FROM wl_events GROUP BY p) x});
	is(sql(qq{SELECT string_agg(name || ' ' || (watermark = (SELECT watermark FROM wl_marks WHERE chunk = $chunk)), ', ' ORDER BY name)
	            FROM pipeline.aggregates}),
		'wl_hop true, wl_session true, wl_tumble true', "chunk $chunk: each watermark is the least of the partitions' newest event times");
	check_all("after chunk $chunk", $n) if $chunk == 3 || $chunk == 10;
}
ok(sql(q{SELECT count(*) FROM pipeline.late_events WHERE aggregate = 'wl_tumble'}) > 0, 'some events came too late, and were kept');
cmp_ok(sql(q{SELECT count(*) FROM pipeline.late_events WHERE aggregate = 'wl_session'}), '>', 0,
	'... for the sessions too (those that would join a session closed)');
ok(sql(q{SELECT count(*) FROM wl_tumble WHERE closed}) > 0 && sql(q{SELECT count(*) FROM wl_session WHERE closed}) > 0,
	'windows and sessions closed on the way');

$node->stop;
done_testing();

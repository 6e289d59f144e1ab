# Continuous windowed aggregates fed by a consumer, against the test
# broker: tumbling and hopping windows with count, sum, avg, min and max
# per group equal the same aggregate computed afterwards with plain SQL
# over the consumer's table; reset_offsets() and a worker killed with
# SIGKILL do not count a message twice; an event without a time is a dead
# letter; bad definitions are refused with a hint.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PipelineExt::Broker;
use PipelineExt::Crash;

my $broker = PipelineExt::Broker->start(brokers => 1, topics => { agg => 4, agg_updates => 3, agg_updates2 => 3, agg_closed => 3, sess => 3, quiet => 2, quiet2 => 2, visits_out => 2, paris => 1, kinds => 1, sess1 => 1, fr => 1, backlog => 2, upk => 1, fresh_in => 2, fresh_out => 2, align => 2 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('aggregate');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
restart_after_crash = on
});
$node->start;

# the test's own sessions show UTC (the database's default is another zone)
sub sql { return $node->safe_psql('postgres', "SET TimeZone = 'UTC';\n" . $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($node->poll_query_until('postgres', $query, $expected), $what)
	  or diag("last result: " . sql($query) . "\nstatus: " . sql('SELECT * FROM pipeline.consumer_status'));
}

sub produce
{
	my ($from, $to) = @_;
	sql(qq{SELECT count(pipeline.produce_async('local', 'agg',
	         json_build_object('id', g, 'device', 'd' || g % 5,
	                           'ts', timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
	                           'temp', g % 37)::text, g::text))
	       FROM generate_series($from, $to) g});
}

# sessions here show times in another zone than UTC: what the workers emit
# must not depend on it
sql(q{ALTER DATABASE postgres SET TimeZone = 'Asia/Kolkata'});

sql(qq{CREATE EXTENSION pipeline_ext;
       SELECT pipeline.create_connection('local', '$bs');
       CREATE TABLE readings (id int PRIMARY KEY, device text, ts timestamptz, temp float8);
       SELECT pipeline.create_consumer('rd', 'local', 'agg', 'readings');
       SELECT pipeline.create_aggregate('per_min', 'rd', '1 minute', 'ts',
         ARRAY['count(*)', 'sum(temp)', 'avg(temp) AS mean', 'min(temp)', 'max(temp)'], ARRAY['device']);
       SELECT pipeline.create_aggregate('hop', 'rd', '2 minutes', 'ts', ARRAY['count(*)', 'max(id)'],
         slide => '1 minute');
       -- (grouped in C before the merge, aggregate_pre.c: sums and averages of an integer, text's min and max)
       SELECT pipeline.create_aggregate('ints', 'rd', '1 minute', 'ts',
         ARRAY['sum(id)', 'avg(id)', 'min(device)', 'max(device)', 'count(temp)']);});


# the optional extensions: a function that needs one that is missing says
# which Debian package has it; count(distinct) is exact without hll
foreach my $case (["percentile(temp, 0.9)", 'tdigest', 'postgresql-15-tdigest'],
	["median(temp)", 'tdigest', 'postgresql-15-tdigest'],
	["approx_count_distinct(temp)", 'hll', 'postgresql-15-hll'])
{
	my ($rc, $out, $err) = $node->psql('postgres',
		qq{SELECT pipeline.create_aggregate('a1', 'rd', '1 minute', 'ts', ARRAY['$case->[0]'])});
	like($err, qr/needs extension "$case->[1]", which is not in this database.*HINT:  Install the Debian package \Q$case->[2]\E/s,
		"$case->[0] without extension $case->[1]: an error naming the package");
}
sql(q{SELECT pipeline.create_aggregate('exact', 'rd', '1 minute', 'ts',
        ARRAY['count(distinct device) AS devices', 'exact_count_distinct(temp)', 'first(id)', 'last(id)',
              'first(device) AS first_device', 'last(temp)'])});
sql(q{CREATE EXTENSION hll; CREATE EXTENSION tdigest;
      SELECT pipeline.create_aggregate('approx', 'rd', '10 minutes', 'ts',
        ARRAY['count(distinct temp) AS temps', 'percentile(temp, 0.9)', 'median(temp)'], ARRAY['device'])});
is(sql(q{SELECT aggregates FROM pipeline.aggregates WHERE name = 'exact'}) . ' ' .
	sql(q{SELECT aggregates FROM pipeline.aggregates WHERE name = 'approx'}),
	'{"exact_count_distinct(device) AS devices","exact_count_distinct(temp) AS count_distinct_temp","first(id) AS first_id",'
	. '"last(id) AS last_id","first(device) AS first_device","last(temp) AS last_temp"} '
	. '{"approx_count_distinct(temp) AS temps","percentile(temp, 0.9) AS p90_temp","percentile(temp, 0.5) AS median_temp"}',
	'count(distinct) is exact without hll and approximate (hll) with it; percentiles keep their fraction');
is(sql(q{SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attname) FROM pg_attribute
          WHERE attrelid = 'approx'::regclass AND (attname LIKE '%__hll' OR attname LIKE '%__digest')}),
	'median_temp__digest tdigest, p90_temp__digest tdigest, temps__hll hll',
	'... whose states are an hll sketch and t-digests');

# the time from the messages' Kafka timestamps ('$timestamp'), kept in no
# column; a second consumer of the topic keeps them (column_map) to check
sql(q{CREATE TABLE readings_ts (id int PRIMARY KEY, kts timestamptz);
      SELECT pipeline.create_consumer('rd_ts', 'local', 'agg', 'readings_ts', column_map => '{"kts": "$timestamp"}');
      CREATE TABLE readings_ts2 (id int PRIMARY KEY);
      SELECT pipeline.create_consumer('rd_ts2', 'local', 'agg', 'readings_ts2', start => false);
      SELECT pipeline.create_aggregate('by_kafka_time', 'rd_ts2', '10 seconds', '$timestamp', ARRAY['count(*)', 'max(id)'])});
my $kts_sql = q{SELECT string_agg(concat_ws('|', window_start, window_end, count, max_id), ',' ORDER BY window_start) FROM by_kafka_time};
my $kts_want = q{SELECT string_agg(concat_ws('|', s, s + interval '10 seconds', n, m), ',' ORDER BY s)
                 FROM (SELECT date_bin('10 seconds', kts, timestamptz '2000-01-01 00:00:00+00') AS s, count(*) AS n, max(id) AS m
                         FROM readings_ts GROUP BY 1) x};

sql(q{SELECT pipeline.create_aggregate('alt', 'rd', '1 minute', 'ts', ARRAY['count(*)'])});
# cumulative windows: within each 10 minutes, the windows that end after
# 2, 4, ..., 10 minutes
sql(q{SELECT pipeline.create_aggregate('cum', 'rd', '10 minutes', 'ts', ARRAY['count(*)', 'max(id)'], slide => '2 minutes',
        kind => 'cumulative')});
# session windows: each device's events come every 5 s, so with a gap of
# 7 s a device has one session, that grows with every batch
sql(q{SELECT pipeline.create_aggregate('sess_rd', 'rd', '7 seconds', 'ts', ARRAY['count(*)', 'max(id)', 'first(id)', 'avg(temp)'],
        ARRAY['device'], kind => 'session')});

# emitting through the outbox: 'update' every change of a window, 'close'
# its final row once (open windows wait in the state table)
sql(q{SELECT pipeline.create_aggregate('emit_upd', 'rd', '1 minute', 'ts', ARRAY['count(*)', 'sum(temp)'],
        emit_topic => 'agg_updates');
      SELECT pipeline.create_aggregate('emit_cls', 'rd', '1 minute', 'ts', ARRAY['count(*)', 'avg(temp) AS mean'], ARRAY['device'],
        lateness => '5 seconds', emit => 'close', emit_topic => 'agg_closed')});
is(sql(q{SELECT string_agg(concat_ws(':', name, emit, state, emit_connection, emit_topic), ',' ORDER BY name)
           FROM pipeline.aggregates WHERE name LIKE 'emit%'}),
	'emit_cls:close:emit_cls_open:local:agg_closed,emit_upd:update:local:agg_updates', 'pipeline.aggregates shows how they emit');

is(sql(q{SELECT string_agg(name || ':' || window_kind || ':' || results::text, ',' ORDER BY name) FROM pipeline.aggregates}),
	'alt:tumbling:alt,approx:tumbling:approx,by_kafka_time:tumbling:by_kafka_time,cum:cumulative:cum,emit_cls:tumbling:emit_cls,emit_upd:tumbling:emit_upd,exact:tumbling:exact,hop:hopping:hop,ints:tumbling:ints,per_min:tumbling:per_min,sess_rd:session:sess_rd',
	'pipeline.aggregates lists them');

# what the aggregates must hold: the same, in plain SQL over the table
my $per_min_sql = q{SELECT string_agg(concat_ws('|', window_start, window_end, device, count, sum_temp,
                      round(mean::numeric, 6), min_temp, max_temp), ',' ORDER BY window_start, device) FROM per_min};
my $per_min_want = q{SELECT string_agg(concat_ws('|', s, s + interval '1 minute', device, n, st, round(a::numeric, 6), mi, ma),
                      ',' ORDER BY s, device)
                     FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s, device,
                                  count(*) AS n, sum(temp) AS st, avg(temp) AS a, min(temp) AS mi, max(temp) AS ma
                             FROM readings GROUP BY 1, 2) x};
my $hop_sql = q{SELECT string_agg(concat_ws('|', window_start, window_end, count, max_id), ',' ORDER BY window_start) FROM hop};
my $hop_want = q{SELECT string_agg(concat_ws('|', s, s + interval '2 minutes', n, m), ',' ORDER BY s)
                 FROM (SELECT s, count(*) AS n, max(id) AS m
                         FROM readings,
                              LATERAL (VALUES (date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00')),
                                              (date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') - interval '1 minute')) w(s)
                        GROUP BY s) x};

# first and last by event time (ts grows with id; messages come in by
# partition), distinct counts, percentiles within a t-digest's error
my $exact_sql = q{SELECT string_agg(concat_ws('|', window_start, devices, count_distinct_temp, first_id, last_id, first_device, last_temp),
                    ',' ORDER BY window_start) FROM exact};
my $exact_want = q{SELECT string_agg(concat_ws('|', s, d, t, f, l, fd, lt), ',' ORDER BY s)
                   FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s,
                                count(DISTINCT device) AS d, count(DISTINCT temp) AS t,
                                (array_agg(id ORDER BY ts))[1] AS f, (array_agg(id ORDER BY ts DESC))[1] AS l,
                                (array_agg(device ORDER BY ts))[1] AS fd, (array_agg(temp ORDER BY ts DESC))[1] AS lt
                           FROM readings GROUP BY 1) x};
my $approx_off = q{SELECT count(*) || ' windows, ' || count(*) FILTER (WHERE a.temps IS DISTINCT FROM x.t) || ' distinct counts off, '
                   || count(*) FILTER (WHERE abs(a.p90_temp - x.p90) > 2 OR abs(a.median_temp - x.p50) > 2) || ' percentiles off by more than 2'
                     FROM (SELECT date_bin('10 minutes', ts, timestamptz '2000-01-01 00:00:00+00') AS s, device,
                                  count(DISTINCT temp) AS t, percentile_cont(0.9) WITHIN GROUP (ORDER BY temp) AS p90,
                                  percentile_cont(0.5) WITHIN GROUP (ORDER BY temp) AS p50
                             FROM readings GROUP BY 1, 2) x
                     FULL JOIN approx a ON a.window_start = x.s AND a.device = x.device};

# plain SQL sessions: a new one where the gap since the device's last event is at least the gap
# plain SQL sessions: a new one where the time since the group's last
# event is at least the gap; $aggs, aggregates over each session's events
sub sessions_want
{
	my ($table, $group, $gap, $aggs) = @_;
	return qq{SELECT string_agg(v, ',' ORDER BY s, g)
	          FROM (SELECT min(ts) AS s, $group AS g,
	                       concat_ws('|', min(ts), max(ts) + interval '$gap', $group, $aggs) AS v
	                  FROM (SELECT *, sum(fresh) OVER (PARTITION BY $group ORDER BY ts) AS isl
	                          FROM (SELECT *, CASE WHEN ts >= lag(ts) OVER (PARTITION BY $group ORDER BY ts) + interval '$gap'
	                                          THEN 1 ELSE 0 END AS fresh FROM $table) f) y
	                 GROUP BY $group, isl) z};
}
my $sess_rd_sql = q{SELECT string_agg(concat_ws('|', window_start, window_end, device, count, max_id, first_id, round(avg_temp::numeric, 6)),
                      ',' ORDER BY window_start, device) FROM sess_rd};

sub check
{
	my ($what) = @_;
	my $want = sql($per_min_want);
	isnt($want, '', "$what: the table has events");
	is(sql($per_min_sql), $want, "$what: the tumbling windows equal plain SQL over the table");
	is(sql($hop_sql), sql($hop_want), "$what: the hopping windows equal plain SQL over the table");
	is(sql(q{SELECT string_agg(concat_ws('|', window_start, sum_id, avg_id, min_device, max_device, count_temp), ',' ORDER BY window_start)
	           FROM ints}),
		sql(q{SELECT string_agg(concat_ws('|', s, si, ai, mi, ma, ct), ',' ORDER BY s)
		        FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s, sum(id) AS si, avg(id) AS ai,
		                     min(device) AS mi, max(device) AS ma, count(temp) AS ct FROM readings GROUP BY 1) x}),
		"$what: sums and averages of an integer (bigint, numeric), text's min and max equal plain SQL");
	is(sql($exact_sql), sql($exact_want), "$what: first, last and exact distinct counts equal plain SQL");
	my $windows = sql(q{SELECT count(DISTINCT (date_bin('10 minutes', ts, timestamptz '2000-01-01 00:00:00+00'), device)) FROM readings});
	is(sql($approx_off), "$windows windows, 0 distinct counts off, 0 percentiles off by more than 2",
		"$what: hll distinct counts (exact at this size) and t-digest percentiles match plain SQL");
	is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, count, max_id), ',' ORDER BY window_start, window_end) FROM cum}),
		sql(q{SELECT string_agg(concat_ws('|', s, e, n, m), ',' ORDER BY s, e)
		        FROM (SELECT b AS s, b + k * interval '2 minutes' AS e, count(*) AS n, max(id) AS m
		                FROM readings, LATERAL (SELECT date_bin('10 minutes', ts, timestamptz '2000-01-01 00:00:00+00') AS b) y,
		                     generate_series(1, 5) k
		               WHERE b + k * interval '2 minutes' > ts GROUP BY 1, 2) x}),
		"$what: the cumulative windows equal plain SQL over the table");
	is(sql($sess_rd_sql), sql(sessions_want('readings', 'device', '7 seconds',
			q{count(*), max(id), (array_agg(id ORDER BY ts))[1], round(avg(temp)::numeric, 6)})),
		"$what: the session windows equal plain SQL sessions over the table");
}

produce(1, 3000);
# an event without a time: a dead letter, not applied, not counted
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 99999, "device": "d1", "temp": 1}', '99999')});
# nor one whose time is infinite: no window holds it
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 99998, "device": "d1", "ts": "infinity", "temp": 1}', '99998')});
# nor one so near the end of time that its windows' arithmetic would overflow
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 99997, "device": "d1", "ts": "294276-12-31 23:59:00+00", "temp": 1}', '99997')});
# nor one whose value a percentile (t-digest) cannot take
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 99996, "device": "d1", "ts": "2026-01-01 00:00:01+00", "temp": "NaN"}', '99996')});
wait_for(q{SELECT count(*) FROM readings}, '3000', 'the consumer applies 3,000 events');
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'rd'}, '4',
	'the events without a time, or with an infinite one, are dead letters');
like(sql(q{SELECT string_agg(error, ' / ' ORDER BY "offset") FROM pipeline.dead_letters WHERE consumer = 'rd'}),
	qr/aggregate "\w+": the event has no time.*aggregate "\w+": the event's time \(column "ts"\) is infinite/,
	'... with the reasons');
like(sql(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'rd' AND convert_from(value, 'UTF8') LIKE '%99997%'}),
	qr/the event's time is too near the limits of the timestamp range/, '... and for a time at the end of the range');
like(sql(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'rd' AND convert_from(value, 'UTF8') LIKE '%99996%'}),
	qr/column "temp" is not a finite double precision, which a percentile needs/, '... or a percentile of NaN');
check('3,000 events');
is(sql(q{SELECT sum(count) FROM per_min}), '3000', 'each event counted once');

# reset_offsets: the consumer reads everything again (upsert: the table is
# the same); the aggregates do not count it twice
sql(q{SELECT count(*) FROM pipeline.reset_offsets('rd', 'earliest')});
produce(3001, 3100);
wait_for(q{SELECT count(*) FROM readings}, '3100', 'after reset_offsets, the consumer goes on');
wait_for(q{SELECT sum(count) FROM per_min}, '3100', 'the aggregate counted the new events');
check('after reset_offsets');

# a worker killed with SIGKILL in the middle: the server restarts, the
# batch in flight rolls back with its aggregate update
produce(3101, 30000);
$node->poll_query_until('postgres', q{SELECT count(*) > 6000 FROM readings}, 't');
my $pid = sql(q{SELECT worker_pid FROM pipeline.consumer_status WHERE consumer = 'rd' AND worker_pid IS NOT NULL LIMIT 1});
ok(kill_and_wait_restart($node, $pid), "kill -9 of a slot worker (pid $pid), and the restart");
wait_for(q{SELECT count(*) FROM readings}, '30000', 'after the crash, all 30,000 events are applied');
wait_for(q{SELECT sum(count) FROM per_min}, '30000', 'each counted once');
check('after kill -9');

# '$timestamp' as the time: the other consumer, started now, reads it all (30,004: the events dead to the other consumer are fine here)
sql(q{SELECT pipeline.start_consumer('rd_ts2')});
wait_for(q{SELECT count(*) FROM readings_ts}, '30004', 'the consumer that keeps the timestamps has all events');
wait_for(q{SELECT count(*) FROM readings_ts2}, '30004', 'the one whose aggregate reads $timestamp too');
wait_for(qq{SELECT ($kts_sql) = ($kts_want)}, 't', q{windows over '$timestamp' equal plain SQL over the Kafka timestamps});

# what the emitting aggregates sent, as another client reads it; a round
# re-sent after the crash (the test broker hides no aborted transaction)
# is told by its outbox id header
sub load_topic
{
	my ($topic) = @_;
	my $msgs = $broker->read_topic($topic);
	sql(qq{DROP TABLE IF EXISTS got_$topic; CREATE TABLE got_$topic (k jsonb, v jsonb, id bigint)});
	while (my @chunk = splice(@$msgs, 0, 500))
	{
		sql("INSERT INTO got_$topic VALUES " . join(',', map { "(\$j\$$_->[2]\$j\$, \$j\$$_->[3]\$j\$, $_->[4])" } @chunk));
	}
	return sql("SELECT count(*) FROM got_$topic");
}
# What a read_committed reader of a real broker would see is the copies
# left once the test broker's aborted rounds are taken out: those rounds
# are what repeats an outbox id, so the repeats must look like them.  With
# $aborted disruptions of the relay (a crash), each id at most 1 + $aborted
# times, at most $aborted rounds of ids repeated (a round is at most
# outbox_round_max rows in id order and as many again across its cut, see
# pe_relay_round_complete), and in each partition the repeated copies in at
# most $aborted contiguous runs (one producer, one transaction at a time).
# With none, every id once: a window published twice by committed rounds,
# or a round aborted and never sent again, fails this.
sub check_copies
{
	my ($topic, $aborted) = @_;
	my $msgs = $broker->read_topic($topic);
	my $round = sql(q{SELECT current_setting('pipeline_ext.outbox_round_max')});
	my (%copies, %last, %runs, %in_run);
	for my $i (0 .. $#$msgs)
	{
		$copies{ $msgs->[$i][4] }++;
		$last{ $msgs->[$i][4] } = $i;
	}
	my ($most_copies) = sort { $b <=> $a } (values %copies, 0);
	my $repeated = grep { $copies{$_} > 1 } keys %copies;
	for my $i (sort { $msgs->[$a][0] <=> $msgs->[$b][0] || $msgs->[$a][1] <=> $msgs->[$b][1] } 0 .. $#$msgs)
	{
		my ($p, $hidden) = ($msgs->[$i][0], $last{ $msgs->[$i][4] } != $i);
		$runs{$p}++ if $hidden && !$in_run{$p};
		$in_run{$p} = $hidden;
	}
	my ($most_runs) = sort { $b <=> $a } (values %runs, 0);
	ok(scalar(@$msgs) > 0 && $most_copies <= 1 + $aborted && $repeated <= $aborted * 2 * $round && $most_runs <= $aborted,
		"$topic: repeats as $aborted aborted round(s) of the relay make them, no other ("
		  . scalar(@$msgs) . " messages, $repeated ids repeated, at most $most_copies copies, $most_runs run(s) in a partition)");
}
wait_for(q{SELECT coalesce(sum(backlog), 0) FROM pipeline.outbox_status}, '0', 'the relay published what the aggregates emitted');
ok(load_topic('agg_updates') > 0, 'emit update: messages in the topic');
# (one crash so far: the kill -9 above restarted the server, and its relay)
check_copies('agg_updates', 1);
check_copies('agg_closed', 1);
is(sql(q{SET TimeZone = 'UTC';
         SELECT count(*) || ' windows, ' || count(*) FILTER (WHERE g.v IS DISTINCT FROM r.v) || ' differ'
           FROM (SELECT DISTINCT ON (k) k, v FROM got_agg_updates ORDER BY k, id DESC) g
           FULL JOIN (SELECT jsonb_build_object('window_start', window_start, 'window_end', window_end) AS k,
                             to_jsonb(e) AS v FROM emit_upd e) r ON r.k = g.k}),
	sql(q{SELECT count(*) FROM emit_upd}) . ' windows, 0 differ',
	'emit update: the last message of each window is its row in the results table');
ok(sql(q{SELECT count(*) FROM got_agg_updates}) > sql(q{SELECT count(*) FROM emit_upd}), '... after earlier ones for its changes');
load_topic('agg_closed');
is(sql(q{SELECT count(DISTINCT id) || '/' || count(DISTINCT k) FROM got_agg_closed}),
	sql(q{SELECT count(*) || '/' || count(*) FROM emit_cls}), 'emit close: one message per closed window, once');
is(sql(q{SET TimeZone = 'UTC';
         SELECT count(*) FROM (SELECT DISTINCT k, v FROM got_agg_closed) g
           FULL JOIN (SELECT to_jsonb(e) - ARRAY['closed', 'count', 'mean', 'mean__sum', 'mean__count'] AS k,
                             to_jsonb(e) - ARRAY['mean__sum', 'mean__count'] AS v FROM emit_cls e) r ON r.k = g.k
          WHERE g.v IS DISTINCT FROM r.v}), '0', '... equal to the rows of the results table');
is(sql(q{SELECT count(*) FILTER (WHERE NOT closed) FROM emit_cls}) . '/' . sql(q{SELECT count(*) FILTER (WHERE closed) FROM emit_cls_open}),
	'0/0', 'emit close: the results table has closed windows only, the state table open ones only');
ok(sql(q{SELECT count(*) FROM emit_cls_open}) > 0, '... and some are open');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, device, count, round(mean::numeric, 6)), ',' ORDER BY window_start, device)
           FROM (SELECT * FROM emit_cls UNION ALL SELECT * FROM emit_cls_open) e}),
	sql(q{SELECT string_agg(concat_ws('|', s, device, n, round(a::numeric, 6)), ',' ORDER BY s, device)
            FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s, device, count(*) AS n, avg(temp) AS a
                    FROM readings GROUP BY 1, 2) x}),
	'emit close: closed and open windows together equal plain SQL over the table');
is(sql(q{SELECT (emitted = (SELECT count(*) FROM emit_cls)) || '/' || (last_emit_at IS NOT NULL) || '/' || open_windows
           FROM pipeline.aggregates WHERE name = 'emit_cls'}),
	'true/true/' . sql(q{SELECT count(*) FROM emit_cls_open}), 'pipeline.aggregates counts what it emitted and the open windows');

# watermarks: a window closes once the watermark (the least of the
# partitions' newest event times) passes its end plus the lateness; an
# event within the lateness still counts; a later one is kept, not counted
sql(q{SELECT pipeline.create_aggregate('closing', 'rd', '1 minute', 'ts', ARRAY['count(*)'], lateness => '10 seconds')});
produce(30001, 30600);    # 08:20:01 .. 08:30:00, every partition
wait_for(q{SELECT sum(count) FROM closing}, '600', 'the new aggregate counts what comes after it');
my $wm = sql(q{SELECT watermark FROM pipeline.aggregates WHERE name = 'closing'});
cmp_ok($wm, 'ge', '2026-01-01 08:29:30', "the watermark follows the events ($wm)");
is(sql(q{SELECT count(*) FILTER (WHERE closed) || '/' || bool_and(closed = (window_end + interval '10 seconds' <= w))
         FROM closing, (SELECT watermark AS w FROM pipeline.aggregates WHERE name = 'closing') x}),
	'9/true', 'the windows the watermark passed (end plus lateness) are closed, the others open');
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 40000, "device": "d0", "ts": "2026-01-01 08:00:00+00", "temp": 1}', '40000')});
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 40001, "device": "d0", "ts": "2026-01-01 08:29:30+00", "temp": 1}', '40001')});
wait_for(q{SELECT count(*) FROM readings WHERE id IN (40000, 40001)}, '2', 'the consumer applies a late and an in-time event');
is(sql(q{SELECT count FROM closing WHERE window_start = '2026-01-01 08:29:00+00'}), '61',
	'an event within the lateness counts in its open window');
is(sql(q{SELECT count(*) FROM closing WHERE window_start = '2026-01-01 08:00:00+00'}), '0', 'the late one does not');
like(sql(q{SELECT event_time || ' ' || convert_from(value, 'UTF8') || ' ' || reason FROM pipeline.late_events WHERE aggregate = 'closing'}),
	qr/^2026-01-01 08:00:00\+00 .*"id": 40000.* its window had closed/, 'it is kept as a late event, with its bytes and the reason');
is(sql(q{SELECT late_events FROM pipeline.aggregates WHERE name = 'closing'}), '1', 'pipeline.aggregates counts it');
is(sql(q{SELECT (windows_closed = (SELECT count(*) FROM closing WHERE closed)) || '/'
              || (open_windows = (SELECT count(*) FROM closing WHERE NOT closed)) || '/'
              || (last_batch_at IS NOT NULL) || '/' || (batch_ms >= 0)
         FROM pipeline.aggregates WHERE name = 'closing'}),
	'true/true/true/true', 'pipeline.aggregates: windows closed and open, the last batch and the time it added');
like(sql(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'aggregate:closing'}),
	qr/^warning: 1 late events kept in the last /, 'pipeline.health warns of the late event');
is(sql(q{SELECT reason FROM pipeline.health WHERE consumer = 'aggregate:closing'}),
	sql(q{SELECT format('1 late events kept in the last %s (pipeline.late_events) (watermark %s, %s open windows, %s closed, '
	                    '%s late events kept, last emit %s, %s ms added to the last batch)', current_setting('pipeline_ext.lag_window'),
	                    watermark, open_windows, windows_closed, late_events, last_emit_at, round(batch_ms::numeric, 1))
	        FROM pipeline.aggregates WHERE name = 'closing'}),
	'... and shows the watermark, the windows open and closed, the late events, the last emit and the time added to a batch');
is(sql(q{SELECT string_agg(consumer, ',' ORDER BY consumer) FROM pipeline.health WHERE consumer LIKE 'aggregate:%'}),
	'aggregate:alt,aggregate:approx,aggregate:by_kafka_time,aggregate:closing,aggregate:cum,aggregate:emit_cls,aggregate:emit_upd,aggregate:exact,aggregate:hop,aggregate:ints,aggregate:per_min,aggregate:sess_rd', '... and has a row for each aggregate');
{
	# the exporter's query for aggregates (sql/prometheus-postgres-exporter.yaml) runs and has them
	my $yaml = slurp_file(($ENV{TESTDIR} // '.') . '/sql/prometheus-postgres-exporter.yaml');
	my ($query) = $yaml =~ /^pipeline_aggregate:\n  query: \|\n(.*?)\n  metrics:/ms;
	ok(defined $query, 'the exporter has a query for aggregates');
	like(sql("SELECT string_agg(aggregate || ':' || late_events, ',' ORDER BY aggregate) FROM ($query) q"),
		qr/^alt:1,approx:1,by_kafka_time:\d+,closing:1,cum:\d+,emit_cls:1,emit_upd:1,exact:1,hop:1,ints:1,per_min:1,sess_rd:\d+$/, '... which reads them');
}

# a dead letter replayed once the table takes it: counted then, once
sql(q{ALTER TABLE readings ADD CONSTRAINT small CHECK (temp < 1000)});
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 40002, "device": "d0", "ts": "2026-01-01 08:30:30+00", "temp": 5000}', '40002')});
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'rd' AND error LIKE '%"small"%'}, '1',
	'a row the table refuses is a dead letter');
is(sql(q{SELECT count FROM closing WHERE window_start = '2026-01-01 08:30:00+00'}), '1', '... and is not counted');
sql(q{ALTER TABLE readings DROP CONSTRAINT small});
is(sql(q{SELECT replayed || '/' || failed FROM pipeline.replay_dead_letters('rd',
           (SELECT array_agg(id) FROM pipeline.dead_letters WHERE consumer = 'rd' AND error LIKE '%"small"%'))}),
	'1/0', 'replayed once the table takes it');
is(sql(q{SELECT count FROM closing WHERE window_start = '2026-01-01 08:30:00+00'}), '2', 'the replayed event counts in its window');

# reset_offsets forward past unread events, then back: those are applied
# then, and counted then (the aggregate keeps which offsets it counted, not
# only the highest)
sql(q{SELECT pipeline.stop_consumer('rd')});
sql(q{SELECT count(pipeline.produce_async('local', 'agg',
         json_build_object('id', g, 'device', 'd0', 'ts', timestamptz '2026-01-01 08:30:40+00', 'temp', 1)::text, g::text))
       FROM generate_series(41000, 41099) g});
sql(q{SELECT count(*) FROM pipeline.reset_offsets('rd', 'latest')});
sql(q{SELECT pipeline.start_consumer('rd')});
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 41100, "device": "d0", "ts": "2026-01-01 08:30:50+00", "temp": 1}', '41100')});
wait_for(q{SELECT count(*) FROM readings WHERE id = 41100}, '1', 'after reset_offsets forward, the next event is applied');
is(sql(q{SELECT count(*) FROM readings WHERE id BETWEEN 41000 AND 41099}), '0', '... and the ones it skipped are not');
sql(q{SELECT count(*) FROM pipeline.reset_offsets('rd', 'earliest')});
wait_for(q{SELECT count(*) FROM readings WHERE id BETWEEN 41000 AND 41099}, '100', 'back to earliest: the skipped ones are applied');
wait_for(q{SELECT count FROM closing WHERE window_start = '2026-01-01 08:30:00+00'}, '103',
	'... and counted, and nothing else twice');

# session windows from events that come out of order, in several batches:
# sessions start apart, grow at both ends and join when an event bridges
# them (users u0..u9, an event every 10 s, a pause of 60 s every 10
# events; gap 30 s)
sql(q{CREATE TABLE clicks (id int PRIMARY KEY, usr text, ts timestamptz, v float8);
      SELECT pipeline.create_consumer('rc', 'local', 'sess', 'clicks');
      SELECT pipeline.create_aggregate('visits', 'rc', '30 seconds', 'ts',
        ARRAY['count(*)', 'sum(v)', 'min(v)', 'max(v)', 'first(id)', 'last(id)', 'approx_count_distinct(v)', 'median(v)'],
        ARRAY['usr'], kind => 'session', lateness => '1 day', emit_topic => 'visits_out')});
my @order = map { $_->[0] } sort { $a->[1] <=> $b->[1] } map { [ $_, ($_ * 7919) % 2003 ] } 1 .. 2000;
while (my @chunk = splice(@order, 0, 500))
{
	my $ids = join(',', @chunk);
	sql(qq{SELECT count(pipeline.produce_async('local', 'sess', json_build_object('id', g, 'usr', 'u' || g % 10,
	        'ts', timestamptz '2026-01-01 00:00:00+00' + (g / 10 * 10 + g / 100 * 60) * interval '1 second', 'v', g % 13)::text, g::text))
	       FROM unnest('{$ids}'::int[]) g});
	my $n = 2000 - scalar(@order);
	wait_for(qq{SELECT count(*) FROM clicks}, $n, "session events: $n applied");
}
is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, usr, count, sum_v, min_v, max_v, first_id, last_id,
                                     approx_count_distinct_v, median_v), ',' ORDER BY window_start, usr) FROM visits}),
	sql(sessions_want('clicks', 'usr', '30 seconds',
		q{count(*), sum(v), min(v), max(v), (array_agg(id ORDER BY ts))[1], (array_agg(id ORDER BY ts DESC))[1],
		  count(DISTINCT v), percentile_cont(0.5) WITHIN GROUP (ORDER BY v)})),
	'session windows of out-of-order events in several batches equal plain SQL sessions');
is(sql(q{SELECT open_windows = (SELECT count(*) FROM visits WHERE NOT closed) FROM pipeline.aggregates WHERE name = 'visits'}), 't',
	'... and pipeline.aggregates counts their open windows');
# their topic: a session's last message is its row; a session that moved
# (it grew backwards, or was joined to an earlier one) has a tombstone
# under its old key, so a compacted topic holds the sessions of the table
wait_for(q{SELECT coalesce(sum(backlog), 0) FROM pipeline.outbox_status}, '0', 'the relay published the sessions');
{
	my $msgs = $broker->read_topic('visits_out');
	my %last;
	$last{ $_->[2] } = [ $_->[4], $_->[3] ] for sort { $a->[4] <=> $b->[4] } @$msgs;
	my @live = grep { $last{$_}[1] ne '\N' } keys %last;
	ok(scalar(grep { $last{$_}[1] eq '\N' } keys %last) > 0, 'sessions that moved left tombstones');
	sql(q{CREATE TABLE visits_topic (k jsonb, v jsonb)});
	sql("INSERT INTO visits_topic VALUES " . join(',', map { "(\$j\$$_\$j\$, \$j\$$last{$_}[1]\$j\$)" } @live)) if @live;
	is(sql(q{SELECT count(*) || ' sessions, ' || count(*) FILTER (WHERE t.v IS DISTINCT FROM r.v) || ' differ'
	           FROM visits_topic t FULL JOIN (SELECT to_jsonb(x) - ARRAY['closed', 'count', 'sum_v', 'min_v', 'max_v', 'first_id',
	                  'last_id', 'approx_count_distinct_v', 'median_v', 'first_id__time', 'last_id__time',
	                  'approx_count_distinct_v__hll', 'median_v__digest'] AS k,
	                  to_jsonb(x) - ARRAY['first_id__time', 'last_id__time', 'approx_count_distinct_v__hll', 'median_v__digest'] AS v
	                  FROM visits x) r ON r.k = t.k}),
		sql(q{SELECT count(*) FROM visits}) . ' sessions, 0 differ',
		'the live keys of the topic are the sessions of the table, with their rows');
}

# an idle partition holds the watermark back only until idle_timeout: with
# events on partition 0 alone, partition 1 (no event yet) keeps the
# watermark unset; after 2 s without a message from it, it no longer does
sql(q{CREATE TABLE quiet (id int PRIMARY KEY, ts timestamptz);
      SELECT pipeline.create_consumer('rq', 'local', 'quiet', 'quiet');
      SELECT pipeline.create_aggregate('quiet10', 'rq', '10 seconds', 'ts', ARRAY['count(*)'], idle_timeout => '2 seconds')});
# event $id at 2026-01-01 00:00 + $sec s, into partition $part of topic
# $topic, read by a consumer into the table of the same name; applied
sub timed_event
{
	my ($topic, $id, $sec, $part) = @_;
	sql(qq{SELECT pipeline.produce('local', '$topic', json_build_object('id', $id, 'ts', timestamptz '2026-01-01 00:00:00+00'
	        + $sec * interval '1 second')::text, '$id', partition => $part)});
	wait_for(qq{SELECT count(*) FROM $topic WHERE id = $id}, '1', "event $id applied");
}
sub quiet_event { timed_event('quiet', @_); }
quiet_event(1, 5, 0);
is(sql(q{SELECT watermark IS NULL FROM pipeline.aggregates WHERE name = 'quiet10'}), 't',
	'a partition without events holds the watermark back at first');
my $t0 = time;
sleep(1) while time - $t0 < 3;
quiet_event(2, 25, 0);
is(sql(q{SELECT watermark || ' ' || (SELECT string_agg(window_start || ':' || closed, ',' ORDER BY window_start) FROM quiet10)
           FROM pipeline.aggregates WHERE name = 'quiet10'}),
	'2026-01-01 00:00:25+00 2026-01-01 00:00:00+00:true,2026-01-01 00:00:20+00:false',
	'idle past idle_timeout, it does not: the watermark moves with partition 0, and closes its windows');
quiet_event(3, 21, 1);
is(sql(q{SELECT watermark FROM pipeline.aggregates WHERE name = 'quiet10'}), '2026-01-01 00:00:25+00',
	'the partition back with an older event does not move the watermark back');
# the whole topic quiet (no message for idle_timeout, the consumer caught
# up): the watermark moves on with the clock from the newest event time,
# and the last window closes without another event
wait_for(q{SELECT closed FROM quiet10 WHERE window_start = '2026-01-01 00:00:20+00'}, 't',
	'a quiet stream closes its last window as the clock passes its end');
ok(sql(q{SELECT watermark >= '2026-01-01 00:00:30+00' FROM pipeline.aggregates WHERE name = 'quiet10'}) eq 't',
	'... its watermark moved on');

# windows aligned as date_bin aligns them on another origin than the
# default (7-minute windows from 0:03, and 10-minute windows hopping by 4
# from 0:01), and over a time column without time zone
sql(q{CREATE TABLE align (id int PRIMARY KEY, g int, ts timestamptz, lts timestamp);
      SELECT pipeline.create_consumer('align', 'local', 'align', 'align', mode => 'append', batch_size => 100);
      SELECT pipeline.create_aggregate('al7', 'align', '7 minutes', 'ts', ARRAY['count(*)', 'sum(id)'], ARRAY['g'],
                                       origin => '2026-01-01 00:03:00+00', lateness => '1 day');
      SELECT pipeline.create_aggregate('alhop', 'align', '10 minutes', 'ts', ARRAY['count(*)', 'max(id)'], ARRAY['g'],
                                       slide => '4 minutes', origin => '2000-01-01 00:01:00+00', lateness => '1 day');
      SELECT pipeline.create_aggregate('allocal', 'align', '1 hour', 'lts', ARRAY['count(*)', 'min(id)'], lateness => '1 day');
      SELECT count(pipeline.produce_async('local', 'align',
               json_build_object('id', i, 'g', i % 3, 'ts', t, 'lts', t AT TIME ZONE 'UTC')::text, i::text))
        FROM generate_series(1, 600) i,
             LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + (i * 37 + (i % 11) * 60) * interval '1 second' AS t) x});
wait_for(q{SELECT count(*) FROM align}, '600', 'the events to align are applied');
wait_for(q{SELECT sum(count) FROM allocal}, '600', '... and counted');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, g, count, sum_id), ',' ORDER BY window_start, g) FROM al7}),
	sql(q{SELECT string_agg(concat_ws('|', s, s + interval '7 minutes', g, n, t), ',' ORDER BY s, g)
	        FROM (SELECT date_bin('7 minutes', ts, timestamptz '2026-01-01 00:03:00+00') AS s, g, count(*) AS n, sum(id) AS t
	                FROM align GROUP BY 1, 2) x}),
	'7-minute windows from 0:03 equal date_bin with that origin');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, g, count, max_id), ',' ORDER BY window_start, g) FROM alhop}),
	sql(q{SELECT string_agg(concat_ws('|', s, s + interval '10 minutes', g, n, m), ',' ORDER BY s, g)
	        FROM (SELECT w.s, g, count(*) AS n, max(id) AS m
	                FROM align, LATERAL (SELECT date_bin('4 minutes', ts, timestamptz '2000-01-01 00:01:00+00') - k * interval '4 minutes' AS s
	                                       FROM generate_series(0, 2) k) w
	               WHERE w.s + interval '10 minutes' > ts GROUP BY 1, 2) x}),
	'10-minute windows hopping by 4 minutes from 0:01 equal date_bin with that origin');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, pg_typeof(window_start), count, min_id), ',' ORDER BY window_start) FROM allocal}),
	sql(q{SELECT string_agg(concat_ws('|', s, s + interval '1 hour', pg_typeof(s), n, m), ',' ORDER BY s)
	        FROM (SELECT date_bin('1 hour', lts, timestamp '2000-01-01 00:00:00') AS s, count(*) AS n, min(id) AS m
	                FROM align GROUP BY 1) x}),
	'windows over a timestamp column (without time zone) equal date_bin over it, of its type');
sql(q{SELECT pipeline.drop_consumer('align')});

# a partition that had events and went quiet while another moves on (the
# complaint about Flink and RisingWave): it holds the watermark while it
# is within idle_timeout, and no longer after; its events when it comes
# back are judged by the watermark the others moved, and kept as late.
# (Partition 1 has an event at least every second, so the stream is never
# quiet as a whole: the watermark does not move with the clock.)
sql(q{CREATE TABLE quiet2 (id int PRIMARY KEY, ts timestamptz);
      SELECT pipeline.create_consumer('rq2', 'local', 'quiet2', 'quiet2');
      SELECT pipeline.create_aggregate('quiet2_10', 'rq2', '10 seconds', 'ts', ARRAY['count(*)'], idle_timeout => '6 seconds')});
sub quiet2_event { timed_event('quiet2', @_); }
quiet2_event(101, 5, 0);
my $p0_at = time;
quiet2_event(102, 8, 1);
is(sql(q{SELECT watermark FROM pipeline.aggregates WHERE name = 'quiet2_10'}), '2026-01-01 00:00:05+00',
	'a partition with events holds the watermark while within idle_timeout (the least of the partitions)');
my ($q2_id, $q2_sec) = (103, 9);
while (time - $p0_at < 8)
{
	quiet2_event($q2_id++, $q2_sec, 1);
	$q2_sec += 2;
	select(undef, undef, undef, 0.5);
}
quiet2_event($q2_id++, $q2_sec, 1);
is(sql(q{SELECT watermark || ' ' || (SELECT closed FROM quiet2_10 WHERE window_start = '2026-01-01 00:00:00+00')
           FROM pipeline.aggregates WHERE name = 'quiet2_10'}),
	sprintf('2026-01-01 00:00:%02d+00 true', $q2_sec),
	'quiet past idle_timeout, it no longer holds the watermark: it follows partition 1, and closes the window partition 0 held open');
quiet2_event(199, 7, 0);
is(sql(q{SELECT count(*) || ' ' || min(reason) FROM pipeline.late_events WHERE aggregate = 'quiet2_10'}),
	"1 its window had closed: the watermark had passed the window's end plus the lateness",
	'... back with an event of that window, partition 0 has it kept as late');
is(sql(q{SELECT watermark || ' ' || (SELECT count FROM quiet2_10 WHERE window_start = '2026-01-01 00:00:00+00')
           FROM pipeline.aggregates WHERE name = 'quiet2_10'}),
	sprintf('2026-01-01 00:00:%02d+00 3', $q2_sec), '... the window unchanged (events 101 to 103) and the watermark not moved back');
# partition 0 back, and within an idle timeout now of an hour: it holds the
# watermark while partition 1 goes far ahead, which pipeline.health says
sql(q{SELECT pipeline.alter_aggregate('quiet2_10', idle_timeout => '1 hour')});
like(sql(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'aggregate:quiet2_10'}),
	qr/^warning: 1 late events kept in the last [^;]*\(watermark /, 'pipeline.health: no warning of the watermark yet');
quiet2_event(200, 1000, 1);
like(sql(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'aggregate:quiet2_10'}),
	qr/^warning: .*; the watermark is 00:1\d:\d\d behind the newest event time: partition 0 holds it back, behind the others and not idle for idle_timeout 01:00:00 \(watermark 2026-01-01 00:00:\d\d\+00, /,
	'... then it warns of the partition that holds the watermark more than 10 windows back');

# day windows in a time zone: local midnight to midnight, 23 hours on the
# day Paris puts its clocks forward (2026-03-29); closed as the watermark
# passes their end
sql(q{CREATE TABLE paris (id int PRIMARY KEY, ts timestamptz);
      SELECT pipeline.create_consumer('rp', 'local', 'paris', 'paris');
      SELECT pipeline.create_aggregate('paris_days', 'rp', '1 day', 'ts', ARRAY['count(*)', 'max(id)'], time_zone => 'Europe/Paris');
      SELECT count(pipeline.produce_async('local', 'paris', json_build_object('id', h, 'ts',
               timestamptz '2026-03-27 20:00:00+00' + h * interval '1 hour')::text, h::text)) FROM generate_series(1, 80) h});
wait_for(q{SELECT count(*) FROM paris}, '80', 'the Paris events are applied');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, window_end, count, max_id, closed), ',' ORDER BY window_start) FROM paris_days}),
	sql(q{SELECT string_agg(concat_ws('|', d AT TIME ZONE 'Europe/Paris', (d + interval '1 day') AT TIME ZONE 'Europe/Paris', n, m,
	                                  (d + interval '1 day') AT TIME ZONE 'Europe/Paris' <= (SELECT max(ts) FROM paris)), ',' ORDER BY d)
	        FROM (SELECT date_trunc('day', ts AT TIME ZONE 'Europe/Paris') AS d, count(*) AS n, max(id) AS m FROM paris GROUP BY 1) x}),
	'day windows in Europe/Paris equal plain SQL over local days, and close as the watermark passes their end');
is(sql(q{SELECT string_agg((window_end - window_start)::text, ',' ORDER BY window_start) FROM paris_days}),
	'1 day,1 day,23:00:00,1 day,1 day', '... the day the clocks go forward has 23 hours');

# alter_aggregate keeps the state: an aggregate added is complete from the
# first window after every event counted (earlier ones show null); emit
# moves the open windows to the state table and back; the lateness changes
my $valid = sql(q{SELECT date_bin('1 minute', max(ts), timestamptz '2000-01-01 00:00:00+00') + interval '1 minute' FROM readings});
sql(q{SELECT pipeline.alter_aggregate('alt', add_aggregates => ARRAY['sum(temp) AS total', 'max(id)'], emit => 'close', lateness => '2 seconds')});
is(sql(q{SELECT emit || ' ' || state::text || ' ' || lateness || ' ' || array_to_string(aggregates, '; ') FROM pipeline.aggregates WHERE name = 'alt'}),
	"close alt_open 00:00:02 count(*) AS count; sum(total) AS total (from the window at $valid); max(id) AS max_id (from the window at $valid)"
	=~ s/sum\(total\)/sum(temp)/r,
	'alter_aggregate: the aggregates added, from which window they count, the emit mode and the lateness');
is(sql(q{SELECT count(*) FILTER (WHERE NOT closed) FROM alt}), '0', 'emit close: the open windows left the results table ...');
ok(sql(q{SELECT count(*) FROM alt_open}) > 0, '... for the state table');
produce(60001, 60600);
wait_for(q{SELECT count(*) FROM readings WHERE id > 60000}, '600', 'more events after the change');
my $alt_want = q{SELECT string_agg(concat_ws('|', s, n, CASE WHEN s >= '__V__' THEN t END, CASE WHEN s >= '__V__' THEN m END), ',' ORDER BY s)
                 FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s, count(*) AS n, sum(temp) AS t, max(id) AS m
                         FROM readings
                        WHERE id NOT IN (SELECT (convert_from(value, 'UTF8')::jsonb->>'id')::int FROM pipeline.late_events
                                          WHERE aggregate = 'alt')
                        GROUP BY 1) x} =~ s/__V__/$valid/gr;
my $alt_sql = q{SELECT string_agg(concat_ws('|', window_start, count, total, max_id), ',' ORDER BY window_start)
                FROM (SELECT * FROM alt UNION ALL SELECT * FROM alt_open) a};
wait_for(qq{SELECT ($alt_sql) = ($alt_want)}, 't',
	'the windows keep their counts; the aggregates added equal plain SQL from their first window, null before');
sql(q{SELECT pipeline.alter_aggregate('alt', emit => 'update')});
is(sql(q{SELECT (to_regclass('alt_open') IS NULL) || '/' || (state IS NULL) FROM pipeline.aggregates WHERE name = 'alt'}), 'true/true',
	'emit update again: the state table is gone ...');
is(sql($alt_sql =~ s/ UNION ALL SELECT \* FROM alt_open//r), sql($alt_want), '... and its windows are back in the results table');
# a lateness raised does not reopen the windows already closed: an event
# for one of them is late
my $alt0 = sql(q{SELECT count || '/' || closed FROM alt WHERE window_start = '2026-01-01 00:05:00+00'});
sql(q{SELECT pipeline.alter_aggregate('alt', lateness => '1 day')});
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 70001, "device": "d1", "ts": "2026-01-01 00:05:30+00", "temp": 1}', '70001')});
wait_for(q{SELECT count(*) FROM readings WHERE id = 70001}, '1', 'an event for a closed window, after the lateness was raised');
is(sql(q{SELECT count || '/' || closed FROM alt WHERE window_start = '2026-01-01 00:05:00+00'}), $alt0,
	'the closed window does not change ...');
is(sql(q{SELECT count(*) FROM pipeline.late_events WHERE aggregate = 'alt' AND convert_from(value, 'UTF8') LIKE '%70001%'}), '1',
	'... and the event is kept as late');

# idle_timeout changed: the windows stay as they were
my $alt_rows = sql(q{SELECT string_agg(concat_ws('|', window_start, count, total, closed), ',' ORDER BY window_start) FROM alt});
sql(q{SELECT pipeline.alter_aggregate('alt', idle_timeout => '10 minutes')});
is(sql(q{SELECT idle_timeout FROM pipeline.aggregates WHERE name = 'alt'}) . '/'
	 . (sql(q{SELECT string_agg(concat_ws('|', window_start, count, total, closed), ',' ORDER BY window_start) FROM alt}) eq $alt_rows),
	'00:10:00/1', 'alter_aggregate(idle_timeout): changed, and the windows kept');
# the lateness and idle timeout as an interval, and as an untyped parameter of a
# prepared statement (as drivers send one), in ISO 8601
sql(q{SELECT pipeline.alter_aggregate('alt', lateness => interval '1 day', idle_timeout => interval '11 minutes')});
is(sql(q{SELECT lateness || '/' || idle_timeout FROM pipeline.aggregates WHERE name = 'alt'}), '1 day/00:11:00',
	'alter_aggregate takes intervals');
sql(q{PREPARE alt_idle AS SELECT pipeline.alter_aggregate('alt', idle_timeout => $1); EXECUTE alt_idle('PT10M')});
is(sql(q{SELECT idle_timeout FROM pipeline.aggregates WHERE name = 'alt'}), '00:10:00', '... and an untyped parameter');

# another topic: what emit_upd sends from then on goes there, its windows
# kept; then none ('')
sql(q{SELECT pipeline.alter_aggregate('emit_upd', emit_topic => 'agg_updates2')});
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 70002, "device": "d1", "ts": "2026-01-02 00:00:30+00", "temp": 4}', '70002')});
wait_for(q{SELECT count(*) FROM emit_upd WHERE window_start = '2026-01-02 00:00:00+00'}, '1', 'a window after the topic changed');
wait_for(q{SELECT coalesce(sum(backlog), 0) FROM pipeline.outbox_status}, '0', '... published');
my $upd1 = load_topic('agg_updates');
load_topic('agg_updates2');
is(sql(q{SELECT string_agg(v->>'count', ',') FROM got_agg_updates2 WHERE (v->>'window_start')::timestamptz = '2026-01-02 00:00:00+00'}),
	sql(q{SELECT count FROM emit_upd WHERE window_start = '2026-01-02 00:00:00+00'}),
	'emit_topic changed: the window went to the new topic');
is(sql(q{SELECT count(*) FROM got_agg_updates WHERE (v->>'window_start')::timestamptz >= '2026-01-02 00:00:00+00'}), '0',
	'... not to the old one');
sql(q{SELECT pipeline.alter_aggregate('emit_upd', emit_topic => '')});
is(sql(q{SELECT emit_topic IS NULL AND emit_connection IS NULL FROM pipeline.aggregates WHERE name = 'emit_upd'}), 't',
	"emit_topic => '' stops sending to a topic");
sql(q{SELECT pipeline.produce('local', 'agg', '{"id": 70003, "device": "d1", "ts": "2026-01-02 00:01:30+00", "temp": 5}', '70003')});
wait_for(q{SELECT count(*) FROM emit_upd WHERE window_start = '2026-01-02 00:01:00+00'}, '1', 'a window after the topic was removed');
wait_for(q{SELECT coalesce(sum(backlog), 0) FROM pipeline.outbox_status}, '0', '... nothing waiting to be published');
is(load_topic('agg_updates2') . '/' . load_topic('agg_updates'), "1/$upd1", '... and nothing sent to either topic');
# (no crash since agg_updates2 was first written to: each window's message once)
check_copies('agg_updates2', 0);
foreach my $case ([q{'nope'}, qr/aggregate "nope" does not exist/],
	[q{'alt', add_aggregates => ARRAY['count(*)']}, qr/aggregate "alt" already has an output named "count"/],
	[q{'sess_rd', add_aggregates => ARRAY['sum(temp)']}, qr/aggregates cannot be added to session windows/],
	[q{'alt', emit => 'sometimes'}, qr/emit must be 'update' or 'close'/],
	[q{'alt', lateness => '-1 second'}, qr/lateness must be zero or more/],
	[q{'alt', lateness => '200000000 days'}, qr/lateness must be at most 36525 days/],
	[q{'alt', idle_timeout => '200000000 days'}, qr/idle timeout must be at most 36525 days/])
{
	my ($rc, $out, $err) = $node->psql('postgres', "SELECT pipeline.alter_aggregate($case->[0])");
	like($err, $case->[1], "alter_aggregate($case->[0]) is refused");
	like($err, qr/HINT:/, '... with a hint');
}

# bad definitions
sub refused
{
	my ($call, $re, $what) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "SELECT pipeline.create_aggregate($call)");
	like($err, $re, $what);
	like($err, qr/HINT:/, "... with a hint");
}
refused(q{'a1', 'rd', '1 minute', 'nope', ARRAY['count(*)']}, qr/time column "nope" is not a column/, 'an unknown column');
refused(q{'a1', 'rd', '1 minute', 'device', ARRAY['count(*)']}, qr/time column "device" is of type text, not a time/,
	'a time column that is not a time');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], ARRAY['nope']}, qr/group column "nope" is not a column/,
	'an unknown group column');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['max(nope)']}, qr/aggregated column "nope" is not a column/,
	'an unknown aggregated column');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], kind => 'sliding'}, qr/window kind "sliding" is not supported/,
	'an unknown window kind');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['stddev(temp)']}, qr/aggregate function "stddev" is not supported/,
	'an aggregate that is not supported');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['sum(device)']}, qr/sum\(device\) needs a number, and column "device" is of type text/,
	'a sum of text');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['percentile(temp, 1.5)']}, qr/fraction of percentile .* is not a number between 0 and 1/,
	'a percentile beyond 1');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['percentile(device, 0.5)']}, qr/percentile\(device\) needs a number/,
	'a percentile of text');
refused(q{'a1', 'rd', '1 day', 'ts', ARRAY['count(*)'], time_zone => 'CET'}, qr/time zone "CET" is also an abbreviation/,
	'a zone name that PostgreSQL would read as a fixed offset');
refused(q{'a1', 'rd', '1 day', 'ts', ARRAY['count(*)'], time_zone => 'Mars/Olympus'}, qr/time zone "Mars\/Olympus" is not known/,
	'an unknown time zone');
refused(q{'a1', 'rd', '10 minutes', 'ts', ARRAY['count(*)'], slide => '3 minutes', kind => 'cumulative'},
	qr/a cumulative window must be a whole number of steps/, 'a cumulative window that is not a whole number of steps');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], emit => 'always'}, qr/emit must be 'update' or 'close'/,
	'an emit mode that does not exist');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], emit_connection => 'local'}, qr/emit_connection needs an emit_topic/,
	'a connection without a topic');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], emit_topic => 't', emit_connection => 'nope'}, qr/connection "nope" does not exist/,
	'a connection that does not exist');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], emit_topic => 'agg'}, qr/cannot go to topic "agg", which their consumer "rd" reads/,
	'windows sent to the topic the consumer reads');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*) AS ' || repeat('n', 56)]}, qr/output name of aggregate .* is longer than 55 bytes/,
	'an output name too long for its state columns');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*) AS n__sum']}, qr/needs another output name/,
	'an output name with the state columns\' "__"');
# (a spec that does not parse is read by create_aggregate, not refused by the interval type's input without a hint)
refused(q{'a1', 'rd', 'fortnight', 'ts', ARRAY['count(*)']}, qr/the window "fortnight" does not parse as an interval/,
	'a window spec that does not parse');
refused(q{'a1', 'rd', '1 hour', 'ts', ARRAY['count(*)'], slide => '5 minuts'}, qr/the slide "5 minuts" does not parse as an interval/,
	'a slide that does not parse');
refused(q{'a1', 'rd', '1 hour', 'ts', ARRAY['count(*)'], lateness => 'late'}, qr/the lateness "late" does not parse as an interval/,
	'a lateness that does not parse');
refused(q{'a1', 'rd', '1 hour', 'ts', ARRAY['count(*)'], idle_timeout => 'now'}, qr/the idle timeout "now" does not parse as an interval/,
	'an idle timeout that does not parse');
refused(q{'a1', 'rd', '300000000 years', 'ts', ARRAY['count(*)']}, qr/the window "300000000 years" is out of the range of an interval/,
	'a window beyond the range of an interval');
refused(q{'a1', 'rd', repeat('1 second ', 10000), 'ts', ARRAY['count(*)']},
	qr/the window "(1 second ){6}1 seco\.\.\." does not parse as an interval/, 'a very long spec: quoted by its first 60 bytes');
refused(q{'a1', 'rd', '1 month', 'ts', ARRAY['count(*)']}, qr/window of months or years is not supported/,
	'a window of months');
# (past a century a window's arithmetic leaves the timestamp range: every event would be a dead letter)
refused(q{'a1', 'rd', '200000000 days', 'ts', ARRAY['count(*)']}, qr/window must be at most 36525 days/, 'a window too long');
refused(q{'a1', 'rd', '1 hour', 'ts', ARRAY['count(*)'], time_zone => 'Europe/Paris'}, qr/windows with a time zone must be whole days/,
	'an hour window with a time zone (its wall time repeats when the clocks go back)');
refused(q{'a1', 'rd', '1 day', 'ts', ARRAY['count(*)'], slide => '1 hour', kind => 'cumulative', time_zone => 'Europe/Paris'},
	qr/windows with a time zone must be whole days, and so must their slide/, '... nor hourly steps');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], lateness => '40000 days'}, qr/lateness must be at most 36525 days/,
	'a lateness too long');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], idle_timeout => '9000000 hours'}, qr/idle timeout must be at most 36525 days/,
	'an idle timeout too long');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(temp']}, qr/does not parse/, 'an aggregate that does not parse');
refused(q{'per_min', 'rd', '1 minute', 'ts', ARRAY['count(*)'], results => 'other'}, qr/aggregate "per_min" already exists/,
	'a name taken');
# a column the consumer fills from its default when a message lacks it:
# the aggregate would see it null
sql(q{CREATE TABLE stamped (id int PRIMARY KEY, received timestamptz DEFAULT now(), temp float8);
      SELECT pipeline.create_consumer('st', 'local', 'agg', 'stamped', start => false)});
refused(q{'a1', 'st', '1 minute', 'received', ARRAY['count(*)']}, qr/time column "received" takes its default when a message lacks it/,
	'a time column filled from its default');
refused(q{repeat('x', 64), 'rd', '1 minute', 'ts', ARRAY['count(*)']}, qr/longer than 63 bytes/, 'a name too long for a table');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], ARRAY['device', 'device']}, qr/group column "device" is given twice/,
	'a group column given twice');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*) AS pe_inserted']}, qr/needs another output name/,
	'an output with the name the emitting statement uses');
refused(q{'a1', 'rd', '1 minute', 'ts', ARRAY['count(*)'], results => 'readings'},
	qr/the results table "public.readings" of aggregate "a1" already exists/, 'a results table that exists');
sql(q{CREATE TABLE odd (id int PRIMARY KEY, ts timestamptz, closed boolean, "a__b" int, c1 int, c2 int, c3 int, c4 int, c5 int, c6 int, c7 int, c8 int, c9 int, c10 int, c11 int, c12 int, c13 int, c14 int, c15 int, c16 int, c17 int, c18 int, c19 int, c20 int, c21 int, c22 int, c23 int, c24 int, c25 int, c26 int, c27 int, c28 int, c29 int, c30 int, c31 int);
      SELECT pipeline.create_consumer('odd', 'local', 'agg', 'odd', start => false)});
refused(q{'a1', 'odd', '1 minute', 'ts', ARRAY['count(*)'], ARRAY['closed']}, qr/group column "closed" has a name the results table keeps/,
	'a group column named as a column of the results');
refused(q{'a1', 'odd', '1 minute', 'ts', ARRAY['count(*)'], ARRAY['a__b']}, qr/group column "a__b" has a name the results table keeps/,
	'... or as a state column');
refused(q{'a1', 'odd', '1 minute', 'ts', ARRAY['count(*)'], ARRAY['c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'c10', 'c11', 'c12', 'c13', 'c14', 'c15', 'c16', 'c17', 'c18', 'c19', 'c20', 'c21', 'c22', 'c23', 'c24', 'c25', 'c26', 'c27', 'c28', 'c29', 'c30', 'c31']}, qr/at most 30 group columns/,
	'31 group columns');
sql(q{SELECT pipeline.drop_consumer('odd'); DROP TABLE odd});
is(sql(q{SELECT count(*) FROM pg_class WHERE relname IN ('a1', 'other')}), '0', 'a refused definition leaves no table');

# --- the functions grouped in C (aggregate_pre.c) over every type they take, equal to plain SQL:
# sums beyond 2^63, float4, a lone -0, numeric, nulls; what they leave to the SQL statement (a min of
# an array column; a column whose type changed under the results) still counts right
# (the events' times go back and forth within two hours: a day of lateness counts them all)
sql(q{CREATE TABLE kinds (id int PRIMARY KEY, ts timestamptz, g text, i2 int2, i8 int8, f4 float4, f8 float8, n numeric, arr int[]);
      SELECT pipeline.create_consumer('kinds', 'local', 'kinds', 'kinds');
      SELECT pipeline.create_aggregate('kinds_agg', 'kinds', '1 hour', 'ts',
        ARRAY['sum(i2)', 'avg(i2)', 'sum(i8)', 'avg(i8)', 'sum(f4)', 'avg(f4)', 'sum(f8)', 'min(f8)', 'max(f8)',
              'sum(n)', 'avg(n)', 'min(n)', 'max(n)', 'count(n)'], ARRAY['g'], lateness => '1 day');
      SELECT pipeline.create_aggregate('arr_agg', 'kinds', '1 hour', 'ts', ARRAY['min(arr)', 'max(arr)', 'count(*)'], ARRAY['g'],
        lateness => '1 day');
      SELECT pipeline.create_aggregate('kinds_ints', 'kinds', '1 hour', 'ts', ARRAY['count(*)', 'min(id)', 'max(id)'], ARRAY['i2'],
        lateness => '1 day');
      -- (the window and lateness as intervals: the signature of 0.6.0)
      SELECT pipeline.create_aggregate('kinds_mm', 'kinds', interval '1 hour', 'ts',
        ARRAY['min(i2)', 'max(i2)', 'min(ts)', 'max(ts)', 'min(f4)', 'max(f4)', 'min(id)', 'max(id)'], ARRAY['g'],
        lateness => interval '1 day');});
sub produce_kinds
{
	my ($from, $to, $big) = @_;
	sql(qq{SELECT count(*) FROM (
	         SELECT g AS id, timestamptz '2026-02-01 00:00:00+00' + (g % 3) * interval '50 minutes' AS ts,
	                CASE WHEN g % 4 = 0 THEN 'b' ELSE 'a' END AS g, (g % 7 - 3)::int2 AS i2,
	                CASE WHEN g % 4 = 0 THEN g ELSE $big - g END AS i8,
	                (g / 8.0)::float4 AS f4, CASE WHEN g % 4 = 0 THEN -0.0::float8 ELSE g / 4.0 END AS f8,
	                CASE WHEN g % 5 = 0 THEN NULL ELSE (g / 7.0)::numeric(20,4) END AS n, ARRAY[g % 3, g] AS arr
	           FROM generate_series($from, $to) g) x,
	         LATERAL pipeline.produce('local', 'kinds', row_to_json(x)::text, x.id::text)});
}
my $kinds_sql = q{SELECT string_agg(concat_ws('|', window_start, g, sum_i2, avg_i2, sum_i8, avg_i8, sum_f4, avg_f4, sum_f8, min_f8,
                    max_f8, sum_n, avg_n, min_n, max_n, count_n), ',' ORDER BY window_start, g) FROM kinds_agg};
my $kinds_want = q{SELECT string_agg(concat_ws('|', s, g, a, b, c, d, e, f, h, i, j, k, l, m, o, p), ',' ORDER BY s, g)
                   FROM (SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS s, g, sum(i2) a, avg(i2) b,
                                sum(i8) c, avg(i8) d, sum(f4) e, avg(f4) f, sum(f8) h, min(f8) i, max(f8) j, sum(n) k,
                                avg(n) l, min(n) m, max(n) o, count(n) p FROM kinds GROUP BY 1, 2) x};
my $arr_sql = q{SELECT string_agg(concat_ws('|', window_start, g, min_arr, max_arr, count), ',' ORDER BY window_start, g) FROM arr_agg};
my $arr_want = q{SELECT string_agg(concat_ws('|', s, g, a, b, c), ',' ORDER BY s, g)
                 FROM (SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS s, g, min(arr) a, max(arr) b, count(*) c
                         FROM kinds GROUP BY 1, 2) x};
produce_kinds(1, 400, '9223372036854775807');
wait_for(q{SELECT count(*) FROM kinds}, 400, 'the events of every kind are applied');
wait_for(q{SELECT sum(count) FROM arr_agg}, 400, '... and counted');
is(sql($kinds_sql), sql($kinds_want),
	'grouped in C: int2, int8 (beyond 2^63), float4, float8 (a lone -0), numeric with nulls: equal to plain SQL');
is(sql($arr_sql), sql($arr_want), 'min and max of an array column (the SQL statement) equal plain SQL');
# (groups of a by-value type are hashed and compared by their numbers, min and max of numbers without a
# function call: an int2 with negative values, a timestamptz, a float4 and an int4)
is(sql(q{SELECT string_agg(concat_ws('|', window_start, i2, count, min_id, max_id), ',' ORDER BY window_start, i2) FROM kinds_ints}),
	sql(q{SELECT string_agg(concat_ws('|', s, i2, a, b, c), ',' ORDER BY s, i2)
	        FROM (SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS s, i2, count(*) a, min(id) b, max(id) c
	                FROM kinds GROUP BY 1, 2) x}),
	'grouped in C by an int2 with negative values: equal to plain SQL');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, g, min_i2, max_i2, min_ts, max_ts, min_f4, max_f4, min_id, max_id),
                           ',' ORDER BY window_start, g) FROM kinds_mm}),
	sql(q{SELECT string_agg(concat_ws('|', s, g, b, c, d, e, f, h, i, j), ',' ORDER BY s, g)
	        FROM (SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS s, g, min(i2) b, max(i2) c,
	                     min(ts) d, max(ts) e, min(f4) f, max(f4) h, min(id) i, max(id) j FROM kinds GROUP BY 1, 2) x}),
	'min and max of int2 (negative values too), timestamptz, float4, int4: equal to plain SQL');
# the sum of an int4 is a bigint, whose value the numeric results column takes: the SQL statement converts it
# (values that add up the same in any order: the windows' sums are merged batch by batch)
sql(q{SELECT pipeline.stop_consumer('kinds'); ALTER TABLE kinds ALTER i8 TYPE int4 USING (i8 % 1000)::int4;
      UPDATE kinds_agg SET sum_i8 = 0, avg_i8 = 0, avg_i8__sum = 0, avg_i8__count = 0;
      SELECT pipeline.start_consumer('kinds')});
produce_kinds(401, 800, '1000000');
wait_for(q{SELECT count(*) FROM kinds}, 800, 'after ALTER TABLE, more events are applied');
wait_for(q{SELECT sum(count_n) FROM kinds_agg}, sql(q{SELECT count(n) FROM kinds}), '... and counted');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, g, sum_i8, avg_i8__count), ',' ORDER BY window_start, g) FROM kinds_agg}),
	sql(q{SELECT string_agg(concat_ws('|', s, g, c, d), ',' ORDER BY s, g)
	        FROM (SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS s, g, sum(i8) FILTER (WHERE id > 400) c,
	                     count(i8) FILTER (WHERE id > 400) d FROM kinds GROUP BY 1, 2) x}),
	'a column whose type changed under its results: the sums go on, converted');
is(sql(q{SELECT count(*) FROM pipeline.consumers WHERE name = 'kinds' AND last_error IS NOT NULL}), 0, 'without an error');

# --- the merge straight into the heap (aggregate_direct.c): a null group is one window row, batch
# after batch, found through the index (NULLS NOT DISTINCT); a results table with a trigger or a column
# of its own takes the statement instead, which fires the trigger and fills the column's default
sql(q{SELECT pipeline.create_aggregate('nullg', 'kinds', '1 hour', 'ts', ARRAY['count(*)', 'sum(i2)', 'avg(i2)'], ARRAY['g'],
        lateness => '1 day');
      SELECT pipeline.create_aggregate('trig', 'kinds', '1 hour', 'ts', ARRAY['count(*)'], ARRAY['g'], lateness => '1 day');
      CREATE TABLE trig_log (g text, count bigint);
      CREATE FUNCTION trig_log() RETURNS trigger LANGUAGE plpgsql
        AS $$BEGIN INSERT INTO public.trig_log VALUES (NEW.g, NEW.count); RETURN NEW; END$$;
      CREATE TRIGGER trig_log AFTER INSERT OR UPDATE ON trig FOR EACH ROW EXECUTE FUNCTION trig_log();
      SELECT pipeline.create_aggregate('owncol', 'kinds', '1 hour', 'ts', ARRAY['count(*)'], ARRAY['g'], lateness => '1 day');
      ALTER TABLE owncol ADD COLUMN note text DEFAULT 'from the default'});
sub produce_null_group
{
	my ($from, $to, $ts) = @_;
	$ts //= '2026-02-01 00:10:00+00';
	sql(qq{SELECT count(*) FROM (SELECT g AS id, timestamptz '$ts' AS ts, NULL::text AS g, (g % 3)::int2 AS i2
	                               FROM generate_series($from, $to) g) x,
	         LATERAL pipeline.produce('local', 'kinds', row_to_json(x)::text, x.id::text)});
}
produce_null_group(10001, 10005);
wait_for(q{SELECT sum(count) FROM nullg}, '5', 'events of a null group are counted');
produce_null_group(10006, 10010);
wait_for(q{SELECT sum(count) FROM nullg}, '10', '... in a later batch too');
is(sql(q{SELECT count(*) || '|' || max(count) || '|' || max(sum_i2) || '|' || round(max(avg_i2), 6) FROM nullg WHERE g IS NULL}),
	sql(q{SELECT '1|' || count(*) || '|' || sum(g % 3) || '|' || round(avg(g % 3), 6) FROM generate_series(10001, 10010) g}),
	'... into one window row, merged');
# another session inserting the window a batch merges into: the merge waits for it, then adds to its row
my $other = $node->background_psql('postgres');
$other->query_safe(q{BEGIN; INSERT INTO nullg (window_start, window_end, g, count, sum_i2, avg_i2, avg_i2__sum, avg_i2__count)
                     VALUES ('2026-02-01 05:00:00+00', '2026-02-01 06:00:00+00', NULL, 100, 0, 0, 0, 100)});
produce_null_group(20001, 20003, '2026-02-01 05:10:00+00');
wait_for(q{SELECT count(*) > 0 FROM pg_stat_activity a JOIN pipeline._slots() s ON s.pid = a.pid
           WHERE s.consumer = 'kinds' AND a.wait_event = 'transactionid'}, 't',
	'a batch waits for a session inserting its window');
$other->query_safe('COMMIT');
$other->quit;
wait_for(q{SELECT count FROM nullg WHERE window_start = '2026-02-01 05:00:00+00'}, '103', '... then adds to the row it inserted');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'kinds'}) . '/'
   . sql(q{SELECT count(*) FROM nullg WHERE window_start = '2026-02-01 05:00:00+00'}) . '/'
   . sql(q{SELECT coalesce(last_error, 'none') FROM pipeline.consumers WHERE name = 'kinds'}), '0/1/none',
	'... with no dead letter, in one row, and no error on the way');
# a window changed by hand, then the table rewritten, between two batches: the merge adds to the row
# as it is now (where this process last wrote each window is a hint that is checked, not trusted)
sql(q{UPDATE nullg SET count = count + 1000 WHERE window_start = '2026-02-01 05:00:00+00'; VACUUM FULL nullg});
produce_null_group(20004, 20006, '2026-02-01 05:10:00+00');
wait_for(q{SELECT count FROM nullg WHERE window_start = '2026-02-01 05:00:00+00'}, '1106',
	'a window changed by hand and moved by VACUUM FULL: later events add to it');
is(sql(q{SELECT count(*) || '/' || sum(count) FROM nullg}), '2/1116', '... and every other window is as it was');
wait_for(q{SELECT sum(count) FROM trig WHERE window_start < '2026-02-01 05:00:00+00'}, '10', 'a results table with a trigger counts them');
is(sql(q{SELECT max(count) FROM trig_log WHERE count < 100}), '10', '... and its trigger saw every change');
wait_for(q{SELECT sum(count) FROM owncol WHERE window_start < '2026-02-01 05:00:00+00'}, '10', 'a results table with a column of its own counts them');
is(sql(q{SELECT string_agg(DISTINCT note, ',') FROM owncol}), 'from the default', '... and its column has its default');
# a column given a typmod: the statement, which rounds to it
sql(q{ALTER TABLE nullg ALTER avg_i2 TYPE numeric(10,2)});
produce_null_group(10011, 10013);
wait_for(q{SELECT sum(count) FROM nullg WHERE window_start < '2026-02-01 05:00:00+00'}, '13', 'after an ALTER TABLE of the results, more events are counted');
is(sql(q{SELECT avg_i2 FROM nullg WHERE g IS NULL AND window_start < '2026-02-01 05:00:00+00'}), sql(q{SELECT round(avg(g % 3), 2) FROM generate_series(10001, 10013) g}),
	'... into an average column made numeric(10,2), rounded as the statement rounds');
# room for the next versions where windows are updated, full pages where they are only added
is(sql(q{SELECT string_agg(relname || ':' || coalesce(array_to_string(reloptions, ','), 'default'), ' ' ORDER BY relname)
           FROM pg_class WHERE relname IN ('nullg', 'emit_cls', 'emit_cls_open', 'alt')}),
	'alt:fillfactor=50 emit_cls:default emit_cls_open:fillfactor=50 nullg:fillfactor=50',
	"results tables at fillfactor 50 with emit 'update', the default with 'close', the state table at 50");

# --- avg of a real adds up in double precision across batches, as avg(real) does
# (in real, 16777216 + 1 + 1 stays 16777216); in C (fr_avg) and in the statement (first() takes it)
sql(q{CREATE TABLE fr (id int PRIMARY KEY, ts timestamptz, r real);
      SELECT pipeline.create_consumer('fr', 'local', 'fr', 'fr');
      SELECT pipeline.create_aggregate('fr_avg', 'fr', '1 day', 'ts', ARRAY['avg(r)', 'sum(r)'], lateness => '1 day');
      SELECT pipeline.create_aggregate('fr_sql', 'fr', '1 day', 'ts', ARRAY['avg(r)', 'first(r)'], lateness => '1 day')});
for my $e ([1, 16777216], [2, 1], [3, 1])
{
	sql(qq{SELECT pipeline.produce('local', 'fr', '{"id": $e->[0], "ts": "2026-03-02 00:00:0$e->[0]+00", "r": $e->[1]}', '$e->[0]')});
	wait_for(q{SELECT count(*) FROM fr}, $e->[0], "real event $e->[0] applied, in a batch of its own");
}
wait_for(q{SELECT (SELECT sum(avg_r__count) FROM fr_avg) + (SELECT sum(avg_r__count) FROM fr_sql)}, '6', '... and counted');
is(sql(q{SELECT (SELECT avg_r || '|' || sum_r FROM fr_avg) || '/' || (SELECT avg_r FROM fr_sql)}),
	sql(q{SELECT avg(r) || '|' || sum(r) || '/' || avg(r) FROM fr}),
	'avg(real) merged batch by batch equals avg(real) over the table, in C and in the statement (sum(real) stays real)');
# an event whose value overflows its window's sum(real) in a later batch: kept aside with the error as
# its reason, not counted; the consumer goes on (it stopped, every batch failing, before)
for my $e ([4, '3e38'], [5, '3e38'], [6, '1'])
{
	sql(qq{SELECT pipeline.produce('local', 'fr', '{"id": $e->[0], "ts": "2026-03-02 00:00:0$e->[0]+00", "r": $e->[1]}', '$e->[0]')});
	wait_for(q{SELECT count(*) FROM fr}, $e->[0], "real event $e->[0] applied, in a batch of its own");
}
wait_for(q{SELECT sum(avg_r__count) FROM fr_sql}, '6', '... and counted where it can be');
is(sql(q{SELECT (SELECT avg_r__count FROM fr_avg) || '/' || string_agg(convert_from(value, 'UTF8')::jsonb->>'id' || ': ' || reason, ', ')
           FROM pipeline.late_events WHERE aggregate = 'fr_avg'}),
	'5/5: its value could not be counted: value out of range: overflow (SQLSTATE 22003)',
	'an event whose value overflows its window\'s sum is kept aside, with the reason; the others count');
is(sql(q{SELECT coalesce(last_error, 'none') || '/' || enabled FROM pipeline.consumers WHERE name = 'fr'}), 'none/true',
	'... and the consumer goes on, without an error');
# an output named AS "a quoted name": the name inside, as SQL reads it
sql(q{SELECT pipeline.create_aggregate('fr_named', 'fr', '1 day', 'ts', ARRAY['count(*) AS "Events ""all"""'])});
is(sql(q{SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'fr_named'::regclass AND attname LIKE 'Events%'}),
	'Events "all"', 'an output named with a quoted name takes the name inside the quotes');
refused(q{'a1', 'fr', '1 day', 'ts', ARRAY['count(*) AS "half']}, qr/does not parse/, 'a quoted name not closed');
# a data exception no event causes (a trigger of the results that always raises 22023): the batch
# fails with its error, and no event is moved aside; once the cause is gone, the batch goes in
sql(q{CREATE FUNCTION fr_refuse() RETURNS trigger LANGUAGE plpgsql
        AS $$BEGIN RAISE EXCEPTION 'results refused' USING ERRCODE = '22023'; END$$;
      CREATE TRIGGER fr_refuse BEFORE INSERT OR UPDATE ON fr_named FOR EACH ROW EXECUTE FUNCTION fr_refuse()});
sql(q{SELECT pipeline.produce('local', 'fr', '{"id": 7, "ts": "2026-03-02 00:00:07+00", "r": 1}', '7')});
wait_for(q{SELECT last_error LIKE '%results refused%' FROM pipeline.consumers WHERE name = 'fr'}, 't',
	'a data exception of the results table, not of an event, fails the batch with its error');
is(sql(q{SELECT count(*) || '/' || (SELECT count(*) FROM fr) FROM pipeline.late_events WHERE aggregate = 'fr_named'}), '0/6',
	'... and moves no event aside');
sql(q{DROP TRIGGER fr_refuse ON fr_named});
wait_for(q{SELECT count(*) FROM fr}, '7', '... and once the cause is gone, the batch goes in');
sql(q{SELECT pipeline.drop_consumer('fr')});

# --- session windows: an event is late or not by the session it would join ---
# (one partition: the watermark is its newest event time; no lateness)
sql(q{CREATE TABLE sj (id int PRIMARY KEY, g text, ts timestamptz);
      SELECT pipeline.create_consumer('sj', 'local', 'sess1', 'sj');
      SELECT pipeline.create_aggregate('sj_agg', 'sj', '10 seconds', 'ts', ARRAY['count(*)', 'max(id)'], ARRAY['g'],
        kind => 'session')});
my $sj_seen = q{SELECT (SELECT coalesce(sum(count), 0) FROM sj_agg)
                     + (SELECT count(*) FROM pipeline.late_events WHERE aggregate = 'sj_agg')};
my $sj_n = 0;
for my $e ([1, 'A', '00:00:00'], [2, 'B', '00:00:12'], [3, 'A', '00:00:09'], [4, 'A', '00:01:00'], [5, 'A', '00:01:08'],
	[6, 'A', '00:01:16'], [7, 'A', '00:01:24'], [8, 'A', '00:01:03'])
{
	my ($id, $g, $ts) = @$e;
	sql(qq{SELECT pipeline.produce('local', 'sess1', '{"id": $id, "g": "$g", "ts": "2026-03-01 $ts+00"}', '$id')});
	$sj_n++;
	wait_for($sj_seen, $sj_n, "session event $id ($g at $ts) counted or kept, in a batch of its own");
}
is(sql(q{SELECT string_agg(g || ' ' || to_char(window_start, 'HH24:MI:SS') || '-' || to_char(window_end, 'HH24:MI:SS')
                           || ' ' || count || ' ' || max_id || CASE WHEN closed THEN ' closed' ELSE '' END, ', '
                           ORDER BY g, window_start) FROM sj_agg}),
	'A 00:00:00-00:00:10 1 1 closed, A 00:01:00-00:01:34 5 8, B 00:00:12-00:00:22 1 2 closed',
	'an event that would join an open session counts there, though its own session would have closed; sessions never overlap');
is(sql(q{SELECT string_agg(convert_from(value, 'UTF8')::jsonb->>'id', ',') FROM pipeline.late_events WHERE aggregate = 'sj_agg'}), '3',
	'an event that would join a closed session is late, though its own session would end after the watermark');
# a connection an aggregate emits through is not dropped from under it
sql(qq{SELECT pipeline.create_connection('emitc', '$bs');
       SELECT pipeline.create_aggregate('sj_emit', 'sj', '10 seconds', 'ts', ARRAY['count(*)'], emit_topic => 'sj_out',
         emit_connection => 'emitc')});
my (undef, undef, $drop_err) = $node->psql('postgres', q{SELECT pipeline.drop_connection('emitc')});
like($drop_err, qr/connection "emitc" is used by aggregates.*Aggregates emitting through it: sj_emit.*HINT:.*alter_aggregate/s,
	'drop_connection refuses a connection an aggregate emits through');
sql(q{SELECT pipeline.alter_aggregate('sj_emit', emit_connection => 'local'); SELECT pipeline.drop_connection('emitc')});
is(sql(q{SELECT count(*) FROM pipeline.connections WHERE name = 'emitc'}), '0', '... and drops it once none does');
sql(q{SELECT pipeline.drop_consumer('sj')});

# a backlog, appended: a batch's transaction takes in the next batches
# (up to 4) before its aggregates, which write each window once for all
# of them;
# the windows still equal plain SQL, and the events of each transaction
# count once (the groups: two long names and two short ones whose hashes
# collide, hashtext() being the hash aggregate_pre.c groups by, so each
# pair is told apart by its bytes: by the 16 a cell keeps, or, for the
# long ones, by those of the cell's first event)
sql(q{CREATE TABLE bl (id int PRIMARY KEY, device text, ts timestamptz, temp float8);
      SELECT pipeline.create_consumer('bl', 'local', 'backlog', 'bl', mode => 'append', batch_size => 500, start => false);
      SELECT pipeline.create_aggregate('bl_min', 'bl', '1 minute', 'ts', ARRAY['count(*)', 'sum(temp)', 'max(temp)'],
                                       ARRAY['device'])});
sql(q{SELECT count(pipeline.produce_async('local', 'backlog',
         json_build_object('id', g, 'device', (ARRAY['device-with-a-long-name-128035', 'device-with-a-long-name-375607',
                                                      'k223038', 'k233474', 'd1', 'd2', 'another-long-device-name'])[g % 7 + 1],
                           'ts', timestamptz '2026-01-01 00:00:00+00' + g * interval '50 milliseconds', 'temp', g % 41)::text,
         g::text))
       FROM generate_series(1, 8000) g});
sql(q{SELECT pipeline.start_consumer('bl')});
wait_for(q{SELECT count(*) FROM bl}, '8000', 'the backlog is applied');
wait_for(q{SELECT sum(count) FROM bl_min}, '8000', '... and counted once');
ok(sql(q{SELECT sum(messages) / sum(batches) FROM pipeline._slots() WHERE consumer = 'bl'}) > 500,
	'a transaction took in more than one batch of 500 (messages per transaction: '
	  . sql(q{SELECT round(sum(messages) / sum(batches)) FROM pipeline._slots() WHERE consumer = 'bl'}) . ')');
is(sql(q{SELECT string_agg(concat_ws('|', window_start, device, count, sum_temp, max_temp), ',' ORDER BY window_start, device) FROM bl_min}),
	sql(q{SELECT string_agg(concat_ws('|', s, device, n, t, m), ',' ORDER BY s, device)
	        FROM (SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS s, device, count(*) AS n,
	                     sum(temp) AS t, max(temp) AS m FROM bl GROUP BY 1, 2) x}),
	'... and its windows equal plain SQL over the table');
sql(q{SELECT pipeline.drop_consumer('bl')});

# an aggregate made while the consumer's batches run (each slowed down by a
# trigger, so that one is running): it counts the rest of the stream with
# no hole, its counted offsets one range per partition up to the stored
# ones (a batch that read the aggregates before it existed used to commit
# past its start, uncounted: a hole of a whole transaction)
sql(q{CREATE TABLE slow (id int PRIMARY KEY, device text, ts timestamptz, temp float8);
      CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END$$;
      CREATE TRIGGER slow_down AFTER INSERT ON slow FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
      SELECT pipeline.create_consumer('slow', 'local', 'backlog', 'slow', mode => 'append', batch_size => 100);});
wait_for(q{SELECT count(*) > 0 FROM slow}, 't', 'the slowed consumer applies its first batches');
sql(q{SELECT pipeline.create_aggregate('slow_agg', 'slow', '1 minute', 'ts', ARRAY['count(*)'])});
sql(q{SELECT pg_sleep(0.3); SELECT pipeline.create_aggregate('slow_agg2', 'slow', '1 minute', 'ts', ARRAY['count(*)'])});
# one dropped and another made in one transaction while batches run: the
# batches wait for it (drop_aggregate locks the consumer's set of
# aggregates before the row, in a batch's order), and nothing deadlocks
my $log_at = -s $node->logfile;
sql(q{BEGIN;
      SELECT pipeline.drop_aggregate('slow_agg2', drop_results => true);
      SELECT pg_sleep(2);
      SELECT pipeline.create_aggregate('slow_agg3', 'slow', '1 minute', 'ts', ARRAY['count(*)']);
      COMMIT;});
wait_for(q{SELECT count(*) FROM slow}, '8000', '... and all of the topic');
ok(!$node->log_contains('deadlock detected', $log_at), 'an aggregate dropped and another made in one transaction: no deadlock');
is(sql(q{SELECT count(*) FROM pipeline.aggregate_offset a JOIN pipeline.offsets o ON o."partition" = a."partition"
          WHERE o.consumer = 'slow' AND a.aggregate IN ('slow_agg', 'slow_agg3')
            AND a.counted = pg_catalog.int8multirange(pg_catalog.int8range(0, o.next_offset))}), '4',
	'aggregates made while batches ran counted the rest of each partition with no hole');
sql(q{SELECT pipeline.drop_consumer('slow')});

# emitting to a fresh topic with no crash while it is written: a thousand
# events in batches of 50 over 17 windows of 5 groups, each update of a
# window a message, then one event late within the lateness (its window
# ended before the watermark, not 2 minutes before) and one beyond it;
# read back, the last message of each window is its row in the results
# table (the update the first late one made was emitted), and every outbox
# id is there once (no round published twice, none aborted and lost: the
# test broker hides no aborted round, so one would show as a repeat)
sql(q{CREATE TABLE fresh (id int PRIMARY KEY, g int, ts timestamptz);
      SELECT pipeline.create_consumer('fresh', 'local', 'fresh_in', 'fresh', mode => 'append', batch_size => 50);
      SELECT pipeline.create_aggregate('fresh_agg', 'fresh', '1 minute', 'ts', ARRAY['count(*)', 'sum(id)'], ARRAY['g'],
                                       emit_topic => 'fresh_out', lateness => '2 minutes');
      SELECT count(pipeline.produce_async('local', 'fresh_in',
               json_build_object('id', i, 'g', i % 5, 'ts', timestamptz '2026-03-01 00:00:00+00' + i * interval '1 second')::text,
               i::text))
        FROM generate_series(1, 1000) i});
wait_for(q{SELECT count(*) FROM fresh}, '1000', 'the fresh topic\'s events are applied');
my $fresh_before = sql(q{SELECT count || '/' || closed FROM fresh_agg WHERE window_start = '2026-03-01 00:15:00+00' AND g = 1});
sql(q{SELECT pipeline.produce('local', 'fresh_in', '{"id": 1001, "g": 1, "ts": "2026-03-01 00:15:50+00"}', '1001');
      SELECT pipeline.produce('local', 'fresh_in', '{"id": 1002, "g": 2, "ts": "2026-03-01 00:01:40+00"}', '1002')});
wait_for(q{SELECT count(*) FROM fresh}, '1002', '... and two late ones');
is($fresh_before . ' ' . sql(q{SELECT count || '/' || closed FROM fresh_agg WHERE window_start = '2026-03-01 00:15:00+00' AND g = 1})
	. ' ' . sql(q{SELECT count(*) FROM pipeline.late_events WHERE aggregate = 'fresh_agg'}),
	'12/false 13/false 1', 'the one within the lateness updated its open window, the other is kept as late');
wait_for(q{SELECT coalesce(sum(backlog), 0) FROM pipeline.outbox_status}, '0', '... and their windows published');
cmp_ok(load_topic('fresh_out'), '>', sql(q{SELECT count(*) FROM fresh_agg}), 'emit update: a message per change of a window');
is(sql(q{SET TimeZone = 'UTC';
         SELECT count(*) || ' windows, ' || count(*) FILTER (WHERE g.v IS DISTINCT FROM r.v) || ' differ'
           FROM (SELECT DISTINCT ON (k) k, v FROM got_fresh_out ORDER BY k, id DESC) g
           FULL JOIN (SELECT jsonb_build_object('window_start', window_start, 'window_end', window_end, 'g', g) AS k,
                             to_jsonb(e) AS v FROM fresh_agg e) r ON r.k = g.k}),
	'85 windows, 0 differ', '... the last message of each window is its row in the results table');
check_copies('fresh_out', 0);
sql(q{SELECT pipeline.drop_consumer('fresh')});

# upsert: each message counts once as an event, one its key's newer
# message replaced too (in its batch or after); a tombstone deletes the
# row and is no event
sql(q{CREATE TABLE upk (id int PRIMARY KEY, device text, ts timestamptz, temp float8);
      SELECT pipeline.create_consumer('upk', 'local', 'upk', 'upk', delete_on_tombstone => true, start => false);
      SELECT pipeline.create_aggregate('upk_agg', 'upk', '1 minute', 'ts', ARRAY['count(*)', 'sum(temp)']);
      SELECT pipeline.produce('local', 'upk', '{"id": 1, "device": "a", "ts": "2026-01-01T00:00:01Z", "temp": 1}', '1');
      SELECT pipeline.produce('local', 'upk', '{"id": 1, "device": "a", "ts": "2026-01-01T00:00:02Z", "temp": 2}', '1');
      SELECT pipeline.produce('local', 'upk', '{"id": 2, "device": "b", "ts": "2026-01-01T00:00:03Z", "temp": 10}', '2');
      SELECT pipeline.produce('local', 'upk', '{"id": 1, "device": "a", "ts": "2026-01-01T00:00:04Z", "temp": 3}', '1');
      SELECT pipeline.produce('local', 'upk', NULL::text, '2');
      SELECT pipeline.start_consumer('upk')});
wait_for(q{SELECT string_agg(id || '/' || temp, ',' ORDER BY id) FROM upk}, '1/3', 'upsert: the table keeps the last value of each key, a tombstone deleted one');
wait_for(q{SELECT count || '/' || sum_temp FROM upk_agg}, '4/16', '... and the aggregate counted each of the 4 messages once, not the tombstone');
sql(q{SELECT pipeline.drop_consumer('upk')});

# another role neither sees nor drops it
sql(q{CREATE ROLE agg_other LOGIN});
is(sql(q{SET ROLE agg_other; SELECT count(*) FROM pipeline.aggregates}), '0', 'another role does not see the aggregates');
my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE agg_other; SELECT pipeline.drop_aggregate('hop')});
like($err, qr/must be owner of aggregate "hop"/, 'nor drops one');
sql(q{SELECT pipeline.drop_aggregate('hop', drop_results => true)});
is(sql(q{SELECT count(*) FROM pipeline.aggregates WHERE name = 'hop'}) . sql(q{SELECT to_regclass('hop') IS NULL}), '0t',
	'drop_aggregate removes it and, asked to, its table');

# a results table dropped under a running consumer: a clear error, the
# server keeps running
sql(q{DROP TABLE per_min});
produce(50001, 50001);
wait_for(q{SELECT last_error LIKE '%the results table of aggregate "per_min" was dropped%' FROM pipeline.consumers WHERE name = 'rd'},
	't', 'a dropped results table stops the batches with an error that says so');
is(sql(q{SELECT 1}), '1', 'the server is up');

# a dropped consumer takes its aggregates and their state tables along; the
# results tables stay
sql(q{SELECT pipeline.drop_consumer('rd')});
is(sql(q{SELECT count(*) FROM pipeline.aggregates WHERE consumer = 'rd'}) . '/' . sql(q{SELECT to_regclass('emit_cls_open') IS NULL})
	. '/' . sql(q{SELECT to_regclass('emit_cls') IS NOT NULL}), '0/t/t', 'drop_consumer drops its aggregates and their state tables');

$node->stop;
done_testing();

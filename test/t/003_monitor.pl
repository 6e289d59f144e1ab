# Monitoring end to end against the test broker: consumer_lag's lag in
# messages and in time and its Burrow-style statuses (OK, STOP, STALL,
# WARN) from the history kept in shared memory, fresh figures for a stopped
# consumer, end-to-end latency against the broker's round-trip time,
# counters that outlive a terminated worker, health, and DROP / RENAME
# DATABASE while consumers run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use PipelineExt::Broker;

my $broker = PipelineExt::Broker->start(
	brokers => 3,
	topics => { mon => 4, lat => 1, stall => 3, grow => 1, dropme => 1 });
my $bs = $broker->bootstrap;
# partition leaders of 'stall': one per broker, so that one can fail alone;
# every other partition is led by broker 1
$broker->ctl("leader stall $_ " . ($_ + 1)) for 0 .. 2;
for my $t (['mon', 4], ['lat', 1], ['grow', 1], ['dropme', 1])
{
	$broker->ctl("leader $t->[0] $_ 1") for 0 .. $t->[1] - 1;
}

my $node = PostgreSQL::Test::Cluster->new('monitor');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 24
pipeline_ext.lag_window = '10s'
log_min_messages = info
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");
my $script_start = time;

sub sql { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

# For a health check about something else: a latency threshold that no
# message of this script can reach, however slow the machine, since none has
# waited longer than the script has run (and p95 is never above the largest
# latency seen).
sub latency_out_of_the_way
{
	return sprintf(q{SET pipeline_ext.health_latency = '%ds';}, int(time - $script_start) + 2);
}

sub wait_for
{
	my ($query, $expected, $what, $db) = @_;
	my $ok = $node->poll_query_until($db // 'postgres', $query, $expected);
	ok($ok, $what) or diag("last result: " . $node->safe_psql($db // 'postgres', $query)
		. "\npartitions: " . $node->safe_psql($db // 'postgres', 'SELECT * FROM pipeline._partitions()'));
	return $ok;
}

# $n JSON messages {"id": .., "v": ..} from $from on, keyed by id
sub produce
{
	my ($topic, $from, $n, $partition) = @_;
	my $p = defined $partition ? $partition : 'NULL';
	sql("SELECT count(pipeline.produce_async('local', '$topic', json_build_object('id', g, 'v', g)::text, g::text, NULL, $p))
	       FROM generate_series($from, $from + $n - 1) g");
}

sub lag_summary
{
	my ($consumer) = @_;
	return sql(qq{SELECT count(*) || '|' || sum(lag_messages) || '|' || string_agg(DISTINCT status, ',')
	                FROM pipeline.consumer_lag WHERE consumer = '$consumer'});
}

# --- caught up: lag 0 in messages and in time, status OK ---------------------
sql(q{CREATE TABLE mon (id int, v int);
      SELECT pipeline.create_consumer('mon', 'local', 'mon', 'mon', mode => 'append')});
produce('mon', 1, 1000);
wait_for(q{SELECT count(*) FROM mon}, '1000', 'consumer applies 1,000 messages');
# A partition whose high watermark its slot has not learnt yet (just
# started) has a NULL lag, which sum() and bool_and() skip: every partition's
# lag must be known, and 0.
wait_for(q{SELECT count(*) || '|' || count(lag_messages) || '|' || sum(lag_messages) || '|' || bool_and(status = 'OK')
                  || '|' || bool_and(lag_time = '0')
             FROM pipeline.consumer_lag WHERE consumer = 'mon'},
	'4|4|0|true|true', 'consumer_lag: caught up on all 4 partitions: lag 0 messages, lag time 0, status OK');
is(sql(q{SELECT messages FROM pipeline.consumer_stats WHERE consumer = 'mon'}), '1000', 'consumer_stats: messages = N');

# --- stopped: fresh lag from the manager, lag in time, STOP after the window --
sql(q{SELECT pipeline.stop_consumer('mon')});
wait_for(q{SELECT bool_and(state = 'stopped' AND worker_pid IS NULL) FROM pipeline.consumer_status WHERE consumer = 'mon'},
	't', 'the consumer stops');
my $t_stop = time;
my $t_produce = time;
produce('mon', 1001, 500);
my $t_produced = time;
# A partition's window starts when the manager first sees it behind: after
# the last look that saw no lag at all (and never before $t_produce), however
# long the manager took to ask.  So poll here rather than with wait_for, and
# time the status read from that look, not from producing.
my ($lag, $window_from) = ('', $t_produce);
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	my $t = time;
	$lag = sql(q{SELECT COALESCE(sum(lag_messages), 0) FROM pipeline.consumer_lag WHERE consumer = 'mon'});
	last if $lag eq '500';
	$window_from = $t if $lag eq '0';
	usleep(100_000);
}
my $seen_after = time - $t_produced;
is($lag, '500', 'consumer_lag: a stopped consumer shows lag = M, from high watermarks its manager asks for')
	or diag("partitions: " . sql('SELECT * FROM pipeline._partitions()'));
# the manager asks every 2 s, and 10 s after a round the brokers did not
# answer (probe.c): the fresh lag comes within one such retry and a round
cmp_ok($seen_after, '<', 2 + 10 + 2, sprintf('... seen %.1f s after producing: within the manager\'s rounds', $seen_after));
my $early = sql(q{SELECT string_agg(DISTINCT status, ',') FROM pipeline.consumer_lag WHERE consumer = 'mon' AND lag_messages > 0});
my $early_at = time - $window_from;
ok($early_at < 10, sprintf('fresh lag seen %.1f s after producing; status read %.1f s after the last look without lag, inside the 10 s window',
		time - $t_produce, $early_at))
	and is($early, 'OK', 'status is still OK inside the window (behind, but not for longer than the window yet)');
is(sql(q{SELECT bool_and(high_watermark_age < interval '5 s') FROM pipeline.consumer_lag WHERE consumer = 'mon'}), 't',
	'consumer_lag: the stopped consumer\'s figures are seconds old');
# the oldest unapplied message of each partition was produced in [t_produce, t_produced]
wait_for(sprintf(q{SELECT bool_and(now() - lag_time BETWEEN to_timestamp(%.3f) - interval '50 ms' AND to_timestamp(%.3f) + interval '50 ms')
                     FROM pipeline.consumer_lag WHERE consumer = 'mon' AND lag_messages > 0}, $t_produce, $t_produced),
	't', 'consumer_lag: lag_time is the age of an unapplied message produced in this interval');
# ... and exactly the Kafka timestamp of the partition's first unapplied message
{
	my $off = sql(q{SELECT committed_offset FROM pipeline.consumer_lag WHERE consumer = 'mon' AND "partition" = 0});
	my $kafka_ts = `kcat -C -b $bs -t mon -p 0 -o $off -c 1 -e -q -f '%T'`;
	chomp $kafka_ts;
	wait_for(q{SELECT round(extract(epoch FROM now() - lag_time) * 1000) FROM pipeline.consumer_lag WHERE consumer = 'mon' AND "partition" = 0},
		$kafka_ts, "consumer_lag: now() - lag_time is the Kafka timestamp ($kafka_ts) of the message at the committed offset $off");
}
wait_for(q{SELECT string_agg(DISTINCT status, ',') FROM pipeline.consumer_lag WHERE consumer = 'mon' AND lag_messages > 0},
	'STOP', 'consumer_lag: STOP once the lag has stood for the window with no batch');
ok(time - $t_produce >= 10, sprintf('STOP came after the window (%.1f s)', time - $t_produce));
note "consumer_lag of the stopped consumer:\n" . $node->safe_psql('postgres',
	q{SELECT "partition", lag_messages, lag_time, status, high_watermark_age FROM pipeline.consumer_lag WHERE consumer = 'mon' ORDER BY 1},
	extra_params => ['-P', 'format=aligned', '-P', 'footer=off']);
# (its latency, which depends on the machine, is judged in its own section)
is(sql(latency_out_of_the_way() . q{ SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'mon'}), 'warning: stopped',
	'health: a stopped consumer is a warning');

sql(q{SELECT pipeline.start_consumer('mon')});
wait_for(q{SELECT count(*) || '|' || count(lag_messages) || '|' || sum(lag_messages) || '|' || bool_and(status = 'OK')
                  || '|' || bool_and(lag_time = '0')
             FROM pipeline.consumer_lag WHERE consumer = 'mon'},
	'4|4|0|true|true', 'started again: lag 0 and OK on every partition');
is(sql(q{SELECT count(*) || '/' || count(DISTINCT id) FROM mon}), '1500/1500', 'all N + M messages applied once');
is(sql(q{SELECT messages FROM pipeline.consumer_stats WHERE consumer = 'mon'}), '1500', 'consumer_stats: messages = N + M');

# --- a terminated worker: restart counted, error kept, counters kept ---------
{
	my $pid = sql(q{SELECT worker_pid FROM pipeline.consumer_status WHERE consumer = 'mon'});
	sql("SELECT pg_terminate_backend($pid)");
	wait_for(qq{SELECT restarts || ':' || state || ':' || (worker_pid <> $pid) FROM pipeline.consumer_status WHERE consumer = 'mon'},
		'1:running:true', 'pg_terminate_backend of a worker: it is restarted, and the restart counted');
	like(sql(q{SELECT last_error FROM pipeline.consumer_status WHERE consumer = 'mon'}),
		qr/^terminating background worker .* due to administrator command/, 'consumer_status shows why it ended');
	is(sql(q{SELECT messages || '/' || errors FROM pipeline.consumer_stats WHERE consumer = 'mon'}), '1500/0',
		'consumer_stats: the counters outlive the worker (and a termination is not a failed batch)');
	produce('mon', 1501, 100);
	wait_for(q{SELECT messages FROM pipeline.consumer_stats WHERE consumer = 'mon'}, '1600',
		'the new worker counts on from there');
}

# --- end-to-end latency follows the broker's round-trip time -----------------
sql(q{CREATE TABLE lat (id int, v int);
      SELECT pipeline.create_consumer('lat', 'local', 'lat', 'lat', mode => 'append')});
# Messages produced before the new worker fetches would also wait for it to
# start and connect, which takes as long as the machine takes: measure both
# latencies with the worker already fetching.
produce('lat', 1, 1);
wait_for(q{SELECT count(*) FROM lat}, '1', 'latency consumer is up and applies a first message');
sql(q{SELECT pipeline.reset_stats('lat')});
my $t_lat = time;
produce('lat', 2, 200);
wait_for(q{SELECT count(*) FROM lat}, '201', 'latency consumer applies 200 messages');
my ($p50a, $p95a, $p99a, $maxa) = split /\|/,
	sql(q{SELECT latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_max_ms FROM pipeline.consumer_stats WHERE consumer = 'lat'});
my $wall_a = (time - $t_lat) * 1000;
ok($p50a > 0 && $p50a <= $p95a && $p95a <= $p99a && $p99a <= $maxa && $maxa <= $wall_a,
	"latency without delay: 0 < p50 $p50a <= p95 $p95a <= p99 $p99a <= max $maxa ms <= the test's $wall_a ms");
sql(q{SELECT pipeline.reset_stats('lat')});
$broker->ctl('rtt all 600');
$t_lat = time;
produce('lat', 202, 200);
wait_for(q{SELECT count(*) FROM lat}, '401', 'latency consumer applies 200 more with a 600 ms round trip');
$broker->ctl('rtt all 0');
my ($p50b, $maxb) = split /\|/, sql(q{SELECT latency_p50_ms, latency_max_ms FROM pipeline.consumer_stats WHERE consumer = 'lat'});
my $wall_b = (time - $t_lat) * 1000;
ok($p50b >= 500 && $p50b > $p50a + 300 && $maxb <= $wall_b,
	"latency moves with the broker's round trip: p50 $p50a ms -> $p50b ms (max $maxb ms <= the test's $wall_b ms)");

# --- WARN: lag growing across the window -------------------------------------
sql(q{CREATE TABLE grow (id int, v int);
      CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
      CREATE TRIGGER slow BEFORE INSERT ON grow FOR EACH ROW EXECUTE FUNCTION slow_row();
      SELECT pipeline.create_consumer('grow', 'local', 'grow', 'grow', mode => 'append', batch_size => 20)});
{
	my ($seen, $health, $next) = ('', '', 1);
	my $start = time;
	# 100 messages every half second and a bit, for a consumer that applies
	# at most 50 a second (20 ms a row): lag samples are at least 1 s apart,
	# so while one round of producing and polling takes under half a second
	# there is a 100-message step between any two samples, and the lag
	# grows at every sample however slow the machine.  (With one step a
	# second, two samples could fall between the same two steps.)  Health
	# is read in the same statement as the status, with the lag and latency
	# thresholds out of the way: how big the lag and how old its messages
	# are when WARN comes depends on the machine, the reason to check here
	# is the growing lag.
	while (time - $start < 30)
	{
		produce('grow', $next, 100);
		$next += 100;
		($seen, $health) = split /\|/, sql(latency_out_of_the_way() . " SET pipeline_ext.health_lag_messages = $next;"
			. q{ SELECT l.status || '|' || h.status || ': ' || h.reason
			       FROM pipeline.consumer_lag l JOIN pipeline.health h USING (consumer) WHERE consumer = 'grow'}), 2;
		last if $seen eq 'WARN';
		usleep(500_000);
	}
	is($seen, 'WARN', sprintf('consumer_lag: WARN when the lag grows at every sample across the window (after %.1f s)', time - $start));
	is($health, 'warning: lag growing on 1 of 1 partitions over 10s', 'health: a growing lag is a warning, and says so');
	sql(q{DROP TRIGGER slow ON grow});
	wait_for(q{SELECT lag_messages || ':' || status FROM pipeline.consumer_lag WHERE consumer = 'grow'}, '0:OK',
		'consumer_lag: back to OK once it caught up');
}

# --- one query, one look at the slots ----------------------------------------
# pipeline.health reads consumer_lag, consumer_status and consumer_stats,
# and a query may read it beside them: every read of the slots' shared
# memory in one query sees the same copy, taken at its first, so that the
# views agree (above, consumer_lag said WARN while health, read in the
# same statement from a copy taken after the next sample, said "within
# thresholds").  Here, in one statement: the slots read (a), messages
# produced, a function whose own queries poll the slots until the worker
# has applied them (each of its queries a fresh look: w > a), then the
# slots read again (b): still a.
sql(q{CREATE FUNCTION wait_applied(c text, above numeric) RETURNS numeric LANGUAGE plpgsql AS $$
      DECLARE m numeric;
      BEGIN
        LOOP
          SELECT sum(messages) INTO m FROM pipeline._slots() WHERE consumer = c;
          EXIT WHEN m > above;
          PERFORM pg_catalog.pg_sleep(0.05);
        END LOOP;
        RETURN m;
      END $$});
{
	my ($a, $p, $w, $b, $lag_a, $lag_b) = split /\|/, sql(q{
		SELECT (SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'lat') || '|'
		    || (SELECT count(*) FROM generate_series(1001, 1010) g,
		               LATERAL pipeline.produce('local', 'lat', json_build_object('id', g, 'v', g)::text, g::text) r) || '|'
		    || wait_applied('lat', (SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'lat')) || '|'
		    || (SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'lat') || '|'
		    || (SELECT string_agg(applied_offset::text, ',') FROM pipeline._partitions() WHERE consumer = 'lat') || '|'
		    || (SELECT string_agg(applied_offset::text, ',') FROM pipeline._partitions() WHERE consumer = 'lat')});
	ok($p == 10 && $w > $a && $b == $a && $lag_a eq $lag_b,
		"one statement reads the slots once: $a messages before, $w seen by the function's own queries, $b after");
	my $next = sql(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'lat'});
	ok($next >= $w, "... and the next statement sees them ($next)");
}

# --- DROP and RENAME DATABASE while consumers run ----------------------------
$node->safe_psql('postgres', 'CREATE DATABASE dropme');
sql("CREATE EXTENSION pipeline_ext; SELECT pipeline.create_connection('local', '$bs');
     CREATE TABLE t (v text);
     SELECT pipeline.create_consumer('d', 'local', 'dropme', 't', format => 'text', mode => 'append');
     SELECT count(pipeline.produce_async('local', 'dropme', 'm' || g)) FROM generate_series(1, 5) g", 'dropme');
wait_for(q{SELECT count(*) FROM t}, '5', 'a consumer runs in a second database', 'dropme');
{
	my $pid = sql(q{SELECT worker_pid FROM pipeline.consumer_status WHERE consumer = 'd'}, 'dropme');
	sql(q{CREATE ROLE stranger LOGIN});
	my ($r0, $o0, $e0) = $node->psql('postgres', 'DROP DATABASE dropme', extra_params => ['-U', 'stranger']);
	like($e0, qr/must be owner of database dropme/, 'DROP DATABASE by a role that does not own it fails as usual ...');
	is(sql(q{SELECT worker_pid FROM pipeline.consumer_status WHERE consumer = 'd'}, 'dropme'), $pid,
		'... and leaves the consumers alone');
	($r0, $o0, $e0) = $node->psql('postgres', 'DROP DATABASE IF EXISTS no_such_db');
	is($r0, 0, 'DROP DATABASE IF EXISTS of a missing database still works');
}
{
	my ($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE dropme RENAME TO dropped');
	is($ret, 0, 'ALTER DATABASE ... RENAME succeeds while it has a running consumer') or diag($err);
	wait_for(q{SELECT state FROM pipeline.consumer_status WHERE consumer = 'd'}, 'running',
		'its consumer comes back after the rename', 'dropped');
	($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dropped');
	is($ret, 0, 'DROP DATABASE succeeds while it has a running consumer') or diag($err);
	is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE datname IN ('dropme', 'dropped')}), '0',
		'no pipeline_ext worker is left in the dropped database');
}

# --- STALL: one partition cannot be fetched while the others move ------------
sql(q{CREATE TABLE stall (id int, v int);
      SELECT pipeline.create_consumer('stall', 'local', 'stall', 'stall', mode => 'append')});
produce('stall', 1, 10, $_) for 0 .. 2;
wait_for(q{SELECT count(*) FROM stall}, '30', 'stall consumer applies its first 30 messages');
wait_for(q{SELECT sum(lag_messages) || ':' || string_agg(DISTINCT status, ',') FROM pipeline.consumer_lag WHERE consumer = 'stall'},
	'0:OK', 'stall consumer caught up');
# every fetch from broker 3 (leader of partition 2) fails from now on
$broker->ctl('broker_error 3 Fetch KAFKA_STORAGE_ERROR 5000');
produce('stall', 11, 10, 2);
{
	my ($st, $next) = ('', 100);
	my $start = time;
	while (time - $start < 40)
	{
		produce('stall', $next++, 1, 0);	# partition 0 keeps moving
		$st = sql(q{SELECT string_agg("partition" || ':' || COALESCE(lag_messages::text, '?') || ':' || COALESCE(status, '?'), ',' ORDER BY "partition")
		              FROM pipeline.consumer_lag WHERE consumer = 'stall'});
		last if $st =~ /2:10:STALL/;
		usleep(1_000_000);
	}
	like($st, qr/^0:0:OK,1:0:OK,2:10:STALL$/,
		sprintf('consumer_lag: the partition that cannot be fetched is STALL, the others OK (after %.1f s)', time - $start));
	like(sql(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'stall'}),
		qr/^critical: 1 of 3 partitions stalled: behind and not moving for 10s/, 'health: a stalled partition is critical');
}

# --- a server restart resets the counters (they live in shared memory) -------
$node->restart;
wait_for(q{SELECT state FROM pipeline.consumer_status WHERE consumer = 'mon'}, 'running', 'consumers come back after a restart');
is(sql(q{SELECT messages || '/' || batches FROM pipeline.consumer_stats WHERE consumer = 'mon'}), '0/0',
	'consumer_stats: a server restart resets the counters');
is(sql(q{SELECT count(*) FROM mon}), '1600', '... and nothing was applied twice');

# --- a consumer that starts at 'latest' is not behind by the log before it ---
sql(q{CREATE TABLE late (id int, v int);
      SELECT pipeline.create_consumer('late', 'local', 'mon', 'late', mode => 'append', start_offset => 'latest')});
wait_for(q{SELECT count(*) || '|' || sum(lag_messages) || '|' || string_agg(DISTINCT status, ',') FROM pipeline.consumer_lag WHERE consumer = 'late'},
	'4|0|OK', "consumer_lag: a consumer that starts at 'latest' shows no lag before its first message");
is(sql(q{SELECT status FROM pipeline.health WHERE consumer = 'late'}), 'ok', 'health: ... and it is ok');
produce('mon', 2001, 20);
wait_for(q{SELECT count(*) FROM late}, '20', '... and it applies only what comes after');
wait_for(q{SELECT sum(lag_messages) || '|' || count(*) FILTER (WHERE committed_offset IS NOT NULL) FROM pipeline.consumer_lag WHERE consumer = 'late'},
	'0|' . sql(q{SELECT count(DISTINCT "partition") FROM pipeline.offsets WHERE consumer = 'late'}),
	'... with lag 0 once committed');

$node->stop;
$broker->stop;
done_testing();

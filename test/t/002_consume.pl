# End-to-end consumers against the test broker: background workers apply
# Kafka partitions to tables exactly once, through crashes, restarts and
# broker outages; bad messages become dead letters and can be replayed;
# formats, metadata, tombstones, offsets resets, group mode and privileges.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IPC::Run qw(run start timeout);
use PipelineExt::Broker;
use PipelineExt::Exporter;
use PipelineExt::Crash;

my $broker = PipelineExt::Broker->start(
	brokers => 1,
	topics => {
		big => 6, faults => 4, bad => 2, csv => 1, text => 1, bytes => 1,
		tomb => 2, grp => 4, priv => 1, stopstart => 1, alo => 2, amo => 2,
		stoponerr => 1, stoponerr2 => 1, nested => 1, tombv => 1, droptgt => 1, deferred => 1, wide => 1024, nat => 2,
		multi => 2, iso => 1, multi_ts => 1, multi_bytes => 1
	});
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('consume');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 40
restart_after_crash = on
log_min_messages = info
shared_buffers = 128MB    # room for the whole of ring_t, which the ring test needs
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");

my $test_start = time;
sub sql { return $node->safe_psql('postgres', $_[0]); }

# For a health check about something else: a latency threshold that no
# message of this script can reach, however slow the machine, since none has
# waited longer than the script has run (and p95 is never above the largest
# latency seen).
sub latency_out_of_the_way
{
	return sprintf(q{SET pipeline_ext.health_latency = '%ds';}, int(time - $test_start) + 2);
}

sub wait_for
{
	my ($query, $expected, $what) = @_;
	my $ok = $node->poll_query_until('postgres', $query, $expected);
	ok($ok, $what) or diag("last result: " . $node->safe_psql('postgres', $query)
		. "\nslots: " . $node->safe_psql('postgres', 'SELECT * FROM pipeline._slots()'));
	return $ok;
}

# produce rows from SQL: $sql yields (value text, key text)
sub produce
{
	my ($topic, $select) = @_;
	sql("SELECT count(pipeline.produce_async('local', '$topic', v, k)) FROM ($select) s(v, k)");
}

# --- 100,000 JSON messages, 6 partitions, 10,000 keys, 2 slots -------------
sql(q{
CREATE TABLE big_up (id int PRIMARY KEY, v int NOT NULL, note text);
CREATE TABLE big_app (id int, v int, p int, o bigint, ts timestamptz);
SELECT pipeline.create_consumer('big_up', 'local', 'big', 'big_up', parallelism => 2);
SELECT pipeline.create_consumer('big_app', 'local', 'big', 'big_app', mode => 'append', parallelism => 2,
    column_map => '{"p": "$partition", "o": "$offset", "ts": "$timestamp"}');
});
my $t0 = time;
produce('big', q{SELECT json_build_object('id', g % 10000, 'v', g, 'note', 'n' || g)::text, (g % 10000)::text
                 FROM generate_series(1, 100000) g});
wait_for('SELECT count(*) FROM big_app', '100000', 'append table receives all 100,000 messages');
wait_for(q{SELECT count(*) FILTER (WHERE v = CASE WHEN id = 0 THEN 100000 ELSE 90000 + id END) FROM big_up},
	'10000', 'upsert table holds the last message of each of the 10,000 keys');
note sprintf('100,000 messages applied by both consumers in %.1f s', time - $t0);
my $t_done = time;
is(sql('SELECT count(*) FROM big_up'), '10000', 'upsert table has exactly one row per key');
is(sql('SELECT count(DISTINCT (p, o)) FROM big_app'), '100000', 'no (partition, offset) is applied twice');
is(sql('SELECT count(DISTINCT v) FROM big_app'), '100000', 'every message is in the append table');
is(sql(q{SELECT string_agg(DISTINCT array_length(partitions, 1)::text, ',') FROM pipeline._slots() WHERE consumer = 'big_app'}),
	'3', 'two slots split six partitions three and three');
is(sql(q{SELECT count(*) FROM pipeline.offsets WHERE consumer = 'big_up'}), '6', 'offsets stored for all 6 partitions');
{
	my ($m, $d, $rate, $r1, $r5, $r15, $p50, $p99, $max, $trend) = split /\|/, sql(q{SELECT messages, dead_letters, error_rate,
		msgs_per_sec_1m, msgs_per_sec_5m, msgs_per_sec_15m,
		latency_p50_ms, latency_p99_ms, latency_max_ms, throughput_trend FROM pipeline.consumer_stats WHERE consumer = 'big_app'});
	my $wall_ms = (time - $test_start) * 1000;
	my $load_age = time - $t0;
	is("$m/$d/$rate", '100000/0/0', 'consumer_stats: 100,000 messages, no dead letters, error rate 0');
	# msgs_per_sec_Nm counts the messages applied in the current 10 s period
	# and the ones before it, N minutes' worth, over N minutes: a window that
	# reaches back to $t0 (it surely covers the last N minutes less 10 s)
	# holds every message of the load, however long this machine took to
	# apply them; a window that does not cannot hold more.
	for my $w ([ 'minute', $r1, 60 ], [ '5 minutes', $r5, 300 ], [ '15 minutes', $r15, 900 ])
	{
		my ($name, $r, $secs) = @$w;
		my $all = sprintf('%.1f', 100000 / $secs);
		if ($load_age < $secs - 10)
		{
			is($r, $all, "consumer_stats: $r messages per second over the last $name: the whole load (100,000 / $secs s)");
		}
		elsif (time - $t_done < $secs - 10)
		{
			# the window holds the end of the load but maybe not its start
			ok($r > 0 && $r <= $all, sprintf("consumer_stats: $r messages per second over the last $name: some of the load, at most all of it (100,000 / $secs s), which began %.0f s ago", $load_age));
		}
		else
		{
			ok($r <= $all, sprintf("consumer_stats: $r messages per second over the last $name: at most the load (100,000 / $secs s), which ended %.0f s ago", time - $t_done));
		}
	}
	ok($p50 >= 0 && $p50 <= $p99 && $p99 <= $max && $max <= $wall_ms,
		"consumer_stats: end-to-end latency p50 $p50, p99 $p99, max $max ms, within the test's $wall_ms ms");
	like($trend, qr/^[ \x{2581}-\x{2588}]{30}$|^(?:[ ]|\xe2\x96[\x81-\x88]){30}$/, "consumer_stats: a 30-point throughput chart ($trend)");
}
wait_for(q{SELECT count(*) || ':' || sum(lag_messages) || ':' || sum(high_watermark) || ':' || sum(committed_offset)
           || ':' || bool_and(high_watermark_age < interval '1 minute') FROM pipeline.consumer_lag WHERE consumer = 'big_up'},
	'6:0:100000:100000:true', 'consumer_lag: caught up, lag 0 on all 6 partitions, watermarks from the workers');
# (the bulk load's messages waited behind each other for as long as this
# machine took to apply them: latency is judged separately below)
is(sql(latency_out_of_the_way() . q{ SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'big_up'}),
	'ok: within thresholds', 'health: a caught-up consumer is ok');
like(sql(q{SET pipeline_ext.health_latency = '1ms'; SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'big_up'}),
	qr/^critical: p95 latency [0-9.]+ ms is over 10 x 1 ms$/, 'health: latency over ten times its threshold is critical');
is(sql(q{SELECT string_agg(slot || ':' || state || ':' || (worker_pid > 0) || ':' || cardinality(partitions) || ':' || (last_batch_at IS NOT NULL), ',' ORDER BY slot)
          FROM pipeline.consumer_status WHERE consumer = 'big_up'}),
	'0:running:true:3:true,1:running:true:3:true', 'consumer_status: one row per slot with pid, state, partitions and last batch');
like(sql(q{SELECT backend_type FROM pg_stat_activity WHERE application_name = 'pipeline_ext consumer big_up/1'}),
	qr/pipeline_ext consumer/, 'slot workers show up in pg_stat_activity');

# --- reset_offsets to earliest replays into the upsert table idempotently ---
my $digest = q{SELECT md5(string_agg(id || ':' || v || ':' || note, ',' ORDER BY id)) FROM big_up};
my $before = sql($digest);
my $msgs_before = sql(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'big_up'});
my $stored = sql(q{SELECT string_agg("partition" || ':' || next_offset, ',' ORDER BY "partition") FROM pipeline.offsets
                   WHERE consumer = 'big_up'});
is(sql(q{SELECT count(*) FILTER (WHERE new_offset = 0) || '/' || string_agg("partition" || ':' || old_offset, ',' ORDER BY "partition")
           FROM pipeline.reset_offsets('big_up', 'earliest')}),
	"6/$stored", 'reset_offsets to earliest rewinds every partition, and returns the offsets it replaced');
wait_for(qq{SELECT sum(messages) >= $msgs_before + 100000 FROM pipeline._slots() WHERE consumer = 'big_up'},
	't', 'the consumer reads the topic again after the reset');
is(sql($digest), $before,
	'replaying the topic into the upsert table changes nothing');
# two consumers reset in one transaction: both running slots are told, even
# when no new message comes to make them find out by themselves
sql(q{CREATE TABLE big_up2 (LIKE big_up INCLUDING ALL);
      SELECT pipeline.create_consumer('big_up2', 'local', 'big', 'big_up2')});
wait_for(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'big_up2'}, '100000', 'a second upsert consumer applies the topic');
$msgs_before = sql(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'big_up'});
sql(q{BEGIN;
      SELECT count(*) FROM pipeline.reset_offsets('big_up', 'earliest');
      SELECT count(*) FROM pipeline.reset_offsets('big_up2', 'earliest');
      COMMIT;});
wait_for(qq{SELECT (SELECT sum(messages) >= $msgs_before + 100000 FROM pipeline._slots() WHERE consumer = 'big_up')
               || '|' || (SELECT sum(messages) >= 200000 FROM pipeline._slots() WHERE consumer = 'big_up2')},
	'true|true', 'reset_offsets of two consumers in one transaction: both read the topic again');
sql(q{SELECT pipeline.drop_consumer('big_up2'); DROP TABLE big_up2});

# --- exactly once under faults ----------------------------------------------
# A trigger slows the apply down so that each fault lands mid-stream.
sql(q{
CREATE TABLE faults (seq int, p int, o bigint);
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.0003); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON faults FOR EACH ROW EXECUTE FUNCTION slow();
SELECT pipeline.create_consumer('faults', 'local', 'faults', 'faults', mode => 'append', parallelism => 2,
    batch_size => 500, column_map => '{"p": "$partition", "o": "$offset"}');
});
my $total = 0;
sub produce_faults
{
	my $n = shift;
	produce('faults', "SELECT json_build_object('seq', g)::text, g::text FROM generate_series($total + 1, $total + $n) g");
	$total += $n;
}

produce_faults(15000);
wait_for('SELECT count(*) > 3000 FROM faults', 't', 'fault 1: the stream is under way');
my $victim = sql(q{SELECT pid FROM pipeline._slots() WHERE consumer = 'faults' AND slot = 0});
ok($victim > 0, "fault 1: kill -9 the worker of slot 0 (pid $victim)");
kill_and_wait_restart($node, $victim);
wait_for("SELECT count(*) FROM faults", "$total", 'fault 1: after kill -9 every message arrives');
is(sql('SELECT count(DISTINCT seq) FROM faults'), $total, '... exactly once');

produce_faults(15000);
wait_for("SELECT count(*) > $total - 12000 FROM faults", 't', 'fault 2: the stream is under way');
$node->stop('immediate');
$node->start;
wait_for("SELECT count(*) FROM faults", "$total", 'fault 2: after an immediate restart every message arrives');
is(sql('SELECT count(DISTINCT seq) FROM faults'), $total, '... exactly once');

produce_faults(15000);
wait_for("SELECT count(*) > $total - 12000 FROM faults", 't', 'fault 3: the stream is under way');
$broker->ctl('down all');
sleep 5;
my $during = sql('SELECT count(*) FROM faults');
$broker->ctl('up all');
wait_for("SELECT count(*) FROM faults", "$total", "fault 3: after 5 s without broker every message arrives ($during before it came back)");
is(sql('SELECT count(DISTINCT seq) FROM faults'), $total, '... exactly once');
produce_faults(15000);
wait_for("SELECT count(*) > $total - 12000 FROM faults", 't', 'fault 4: the stream is under way');
is(sql(q{SELECT count(*) FROM (SELECT pg_cancel_backend(pid) FROM pipeline._slots() WHERE consumer = 'faults') c}), '2',
	'fault 4: cancel the statements of both slots');
wait_for("SELECT count(*) FROM faults", "$total", 'fault 4: after a cancel every message arrives');
is(sql('SELECT count(DISTINCT seq) FROM faults'), $total, '... exactly once');
is(sql(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'faults' AND restarts = 0}), '2',
	'... and a cancelled batch is retried in place, without a restart');
is(sql('SELECT count(*) FROM pipeline.dead_letters WHERE consumer = \'faults\''), '0', 'no dead letters from faults');

# --- bad input: each bad message one dead letter, the rest applied ----------
sql(q{
CREATE TABLE bad_t (id int NOT NULL UNIQUE, qty int, code varchar(8));
SELECT pipeline.create_consumer('bad', 'local', 'bad', 'bad_t', mode => 'append');
});
sql(<<'SQL');
BEGIN;
SELECT count(pipeline.produce_async('local', 'bad', json_build_object('id', g, 'qty', g, 'code', 'c' || g)::text, g::text))
  FROM generate_series(1, 500) g;
SELECT pipeline.produce_async('local', 'bad', '{"id": 1001, "qty": 1', 'malformed');
SELECT pipeline.produce_async('local', 'bad', '{"id": 1002, "qty": "many"}', 'wrongtype');
SELECT pipeline.produce_async('local', 'bad', '{"id": null, "qty": 3}', 'nullid');
SELECT pipeline.produce_async('local', 'bad', '{"id": 7, "qty": 7}', 'duplicate');
SELECT pipeline.produce_async('local', 'bad', '{"id": 1003, "code": "much-too-long-code"}', 'oversized');
SELECT count(pipeline.produce_async('local', 'bad', json_build_object('id', g, 'qty', g)::text, g::text))
  FROM generate_series(501, 1000) g;
COMMIT;
SQL
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'bad'}, '5', 'five bad messages, five dead letters');
is(sql('SELECT count(*) FROM bad_t'), '1000', 'every good message of the same batches is applied');
# The worker publishes its counters, then its offsets, just after its
# commit: until it has, health could still see the batch as lag (over 1,000
# messages behind is a reason of its own) or miss its dead letters.  Once
# the lag reads 0 both are there, however slow the machine.
wait_for(q{SELECT sum(lag_messages) FROM pipeline.consumer_lag WHERE consumer = 'bad'}, '0',
	'consumer_lag: the consumer with bad messages has caught up');
is(sql(latency_out_of_the_way() . q{ SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'bad'}),
	'warning: error rate 0.498 % is over 0.100 %', 'health: five dead letters in 1,005 messages is a warning, and says why');
is(sql(latency_out_of_the_way() . q{ SET pipeline_ext.health_error_rate = 0.01;
          SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'bad'}),
	'ok: within thresholds', 'health: the thresholds are settings');
is(sql(q{SELECT dead_letters || '/' || messages || '/' || round(error_rate::numeric, 6) FROM pipeline.consumer_stats WHERE consumer = 'bad'}),
	'5/1005/' . sprintf('%.6f', 5 / 1005), 'consumer_stats: dead letters = 5 and error rate = 5 / (1000 + 5)');
my %dl = map { my ($k, $s, $e) = split /\|/, $_, 3; ($k => [ $s, $e ]) }
  split /\n/, sql(q{SELECT convert_from(key, 'UTF8'), sqlstate, error FROM pipeline.dead_letters WHERE consumer = 'bad'});
like($dl{malformed}[1], qr/not valid JSON/, 'malformed JSON: ' . ($dl{malformed}[1] // 'missing'));
like($dl{wrongtype}[1], qr/invalid input syntax for type integer: "many"/, 'wrong type: ' . ($dl{wrongtype}[1] // 'missing'));
is($dl{wrongtype}[0], '22P02', '... with its SQLSTATE');
like($dl{nullid}[1], qr/null value in column "id"/, 'null in a NOT NULL column: ' . ($dl{nullid}[1] // 'missing'));
is($dl{nullid}[0], '23502', '... with its SQLSTATE');
like($dl{duplicate}[1], qr/duplicate key value violates unique constraint/, 'unique violation: ' . ($dl{duplicate}[1] // 'missing'));
like($dl{oversized}[1], qr/value too long for type character varying\(8\)/, 'oversized field: ' . ($dl{oversized}[1] // 'missing'));
is(sql(q{SELECT convert_from(value, 'UTF8') FROM pipeline.dead_letters WHERE key = 'malformed'}),
	'{"id": 1001, "qty": 1', 'the dead letter keeps the raw bytes');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'bad' AND "partition" IS NOT NULL AND "offset" >= 0 AND topic = 'bad'}),
	'5', 'dead letters record topic, partition and offset');

sql(q{
ALTER TABLE bad_t ALTER COLUMN qty TYPE text, ALTER COLUMN code TYPE text, ALTER COLUMN id DROP NOT NULL;
ALTER TABLE bad_t DROP CONSTRAINT bad_t_id_key;
});
is(sql(q{SELECT replayed || '/' || failed FROM pipeline.replay_dead_letters('bad')}), '4/1',
	'replay after fixing the table applies four and keeps the malformed one');
is(sql('SELECT count(*) FROM bad_t'), '1004', 'the replayed messages are in the table');
is(sql(q{SELECT convert_from(key, 'UTF8') FROM pipeline.dead_letters WHERE consumer = 'bad'}), 'malformed',
	'only the malformed message is still a dead letter');
sql(q{SELECT pipeline.produce('local', 'bad', '{"id": 2000, "qty": "lots", "code": "now-long-enough"}', 'after')});
wait_for(q{SELECT count(*) FROM bad_t WHERE id = 2000}, '1', 'the worker applies new messages with the altered table');

# --- appends go into the heap as COPY does, where the table allows ----------
# multi_t is a plain table: its rows go in with heap multi-inserts
# (apply_append.c), which the WAL shows; multi_trig has a row trigger, so
# its rows take the INSERT statement, and the trigger runs for each.  Both
# give defaults, identities, constraints and dead letters as a statement.
sql(q{
CREATE EXTENSION pg_walinspect;
CREATE SEQUENCE multi_seq;
CREATE TABLE multi_t (id int NOT NULL CHECK (id > 0), note text DEFAULT 'dflt',
                      seq bigint GENERATED ALWAYS AS IDENTITY, n bigint DEFAULT nextval('multi_seq'));
ALTER TABLE multi_t ADD CONSTRAINT multi_t_here CHECK (tableoid = 'multi_t'::regclass);
CREATE TABLE multi_trig (id int NOT NULL, note text DEFAULT 'dflt');
CREATE FUNCTION multi_trig_f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.id := NEW.id * 10; RETURN NEW; END$$;
CREATE TRIGGER multi_trig BEFORE INSERT ON multi_trig FOR EACH ROW EXECUTE FUNCTION multi_trig_f();
});
my $multi_lsn = sql('SELECT pg_current_wal_insert_lsn()');
sql(q{
SELECT pipeline.create_consumer('multi', 'local', 'multi', 'multi_t', mode => 'append');
SELECT pipeline.create_consumer('multi_trig', 'local', 'multi', 'multi_trig', mode => 'append');
});
produce('multi', q{SELECT json_build_object('id', g)::text, g::text FROM generate_series(1, 300) g
                   UNION ALL SELECT '{"id": -1}', 'negative' UNION ALL SELECT '{"id": null}', 'null'});
wait_for(q{SELECT (SELECT count(*) FROM multi_t) || '/' || (SELECT count(*) FROM multi_trig) || '/'
                  || (SELECT count(*) FROM pipeline.dead_letters WHERE consumer IN ('multi', 'multi_trig'))},
	'300/301/3', 'append straight into the heap: 300 rows, two dead letters; through the statement: 301 rows, one');
is(sql(q{SELECT count(*) || '/' || count(DISTINCT seq) || '/' || count(DISTINCT n) || '/' || min(note) || '/' || max(note) FROM multi_t}),
	'300/300/300/dflt/dflt', 'defaults and the identity are evaluated for each row');
is(sql(q{SELECT string_agg(sqlstate, ',' ORDER BY sqlstate) FROM pipeline.dead_letters WHERE consumer = 'multi'}),
	'23502,23514', 'the NOT NULL and CHECK violations are dead letters with their SQLSTATEs');
is(sql(q{SELECT sum(id) FROM multi_trig}), 10 * (150 * 301 - 1), 'the row trigger ran for each row of the other table');
my $multi_wal = sql(qq{
SELECT string_agg(r || ':' || n, ',' ORDER BY r) FROM (
  SELECT CASE WHEN block_ref LIKE '%/' || pg_relation_filenode('multi_t') || ' %' THEN 'multi_t' ELSE 'multi_trig' END AS r,
         count(*) FILTER (WHERE record_type = 'MULTI_INSERT') AS n
    FROM pg_get_wal_records_info('$multi_lsn', pg_current_wal_flush_lsn())
   WHERE block_ref LIKE '%/' || pg_relation_filenode('multi_t') || ' %'
      OR block_ref LIKE '%/' || pg_relation_filenode('multi_trig') || ' %'
   GROUP BY 1) s});
like($multi_wal, qr/^multi_t:[1-9]\d*,multi_trig:0$/, "multi-inserts for the plain table only ($multi_wal)");

# What else makes a table take the statement, or the statement's checks:
# a rule (the direct path would skip it), a column left out whose NOT NULL
# domain refuses the null the statement would give it, and a timestamptz(0)
# that $timestamp's milliseconds are rounded to.
sql(q{
CREATE TABLE multi_rule (id int);
CREATE TABLE multi_audit (id int);
CREATE RULE multi_rule_audit AS ON INSERT TO multi_rule DO ALSO INSERT INTO multi_audit VALUES (NEW.id);
CREATE DOMAIN multi_nn AS int NOT NULL;
CREATE TABLE multi_dom (id int, extra multi_nn);
CREATE TABLE multi_ts (k text, ts timestamptz(0));
CREATE DOMAIN multi_short AS bytea CHECK (length(VALUE) <= 4);
CREATE TABLE multi_bytes (v multi_short);
SELECT pipeline.create_consumer('multi_bytes', 'local', 'multi_bytes', 'multi_bytes', mode => 'append', format => 'bytea');
SELECT pipeline.create_consumer('multi_rule', 'local', 'multi', 'multi_rule', mode => 'append');
SELECT pipeline.create_consumer('multi_dom', 'local', 'multi', 'multi_dom', mode => 'append',
                                column_map => '{"extra": null}');
SELECT pipeline.create_consumer('multi_ts', 'local', 'multi_ts', 'multi_ts', mode => 'append', format => 'text',
                                column_map => '{"k": "$value", "ts": "$timestamp"}');
});
{
	my ($out, $err);
	run([ '/usr/bin/python3', '-c', q{
import sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1]})
p.produce("multi_ts", value=b"ms", timestamp=1700000000123)
if p.flush(30) != 0:
    sys.exit("not delivered")
}, $bs ], '>', \$out, '2>', \$err, timeout(60)) or diag($err);
}
wait_for(q{SELECT (SELECT count(*) FROM multi_audit) || '/' || (SELECT count(*) FROM multi_rule)},
	'302/302', 'a rule on the target runs for each appended row');
wait_for(q{SELECT count(*) FILTER (WHERE sqlstate = '23502') || '/' || count(*) FROM pipeline.dead_letters WHERE consumer = 'multi_dom'},
	'302/302', 'a column left out whose NOT NULL domain refuses null: each message a dead letter, as the INSERT makes it');
is(sql('SELECT count(*) FROM multi_dom'), '0', '... and no null is stored in it');
sql(q{SELECT pipeline.produce('local', 'multi_bytes', '\x616263'::bytea); SELECT pipeline.produce('local', 'multi_bytes', '\x6162636465'::bytea)});
wait_for(q{SELECT (SELECT string_agg(encode(v, 'hex'), ',') FROM multi_bytes) || '|'
                  || (SELECT string_agg(sqlstate || ':' || encode(value, 'hex'), ',') FROM pipeline.dead_letters WHERE consumer = 'multi_bytes')},
	'616263|23514:6162636465', 'a domain over bytea checks its constraint on a raw value: the long one is a dead letter');
wait_for(q{SELECT ts = '2023-11-14 22:13:20+00' FROM multi_ts}, 't', '$timestamp into timestamptz(0) is rounded to the column\'s precision');

# A direct append goes round one ring of buffers for all its batches, as
# one COPY does (16 MB, 2,048 buffers): the 100,000 rows of big, widened by
# a default to about 540 bytes (over 7,000 pages), leave at most the ring's
# worth of the table in shared_buffers.  A ring per batch would leave the
# whole table there, each batch taking fresh buffers.
sql(q{
CREATE EXTENSION pg_buffercache;
CREATE TABLE ring_t (id int, v int, pad text DEFAULT repeat('x', 500));
SELECT pipeline.create_consumer('ring', 'local', 'big', 'ring_t', mode => 'append', parallelism => 1,
                                column_map => '{"id": "id", "v": "v"}', batch_size => 5000);
});
wait_for(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'ring'}, '100000', 'the ring consumer applied all of big');
my $ring = sql(q{SELECT current_setting('shared_buffers', true)::text || ' '
                 || (SELECT count(*) FROM pg_buffercache WHERE relfilenode = pg_relation_filenode('ring_t')
                        AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND relforknumber = 0) || ' ' || pg_relation_size('ring_t') / 8192});
my ($ring_sb, $ring_bufs, $ring_pages) = split ' ', $ring;
note "ring_t: $ring_bufs of its $ring_pages pages in shared_buffers ($ring_sb)";
cmp_ok($ring_pages, '>', 6000, 'the ring test\'s table is well over the ring (16 MB)');
cmp_ok($ring_bufs, '<=', 2048 + 16, 'a direct append keeps to one ring of buffers across its batches');
is(sql('SELECT count(*) FROM ring_t'), '100000', '... and every row is there');


# --- ISO 8601 timestamps read without timestamptz_in (decode_time.c) -------
# Each is also kept as text: the value must be what ::timestamptz gives,
# for the forms read directly and for those left to timestamptz_in.
sql(q{
CREATE TABLE iso_t (k int, raw text, ts timestamptz);
SELECT pipeline.create_consumer('iso', 'local', 'iso', 'iso_t', mode => 'append');
});
my @iso = ('2026-11-24T00:00:01Z', '2026-11-24 00:00:01.25+02:00', '2026-11-24T23:59:59.123456-05:30',
	'1999-12-31T00:00:00+0100', '2024-02-29T12:00:00-03', '0001-01-01T00:00:00Z', '9999-12-31T23:59:59.999999+14:00',
	'2026-11-24T00:00:00.5Z', '2026-11-24T24:00:00Z', '2026-11-24T00:00:01.1234567Z', '2026-11-24t00:00:01z',
	'2026-11-24T00:00:01+15:00', '2026-11-24T00:00:01 +02:00', '1970-01-01T00:00:00Z');
my $iso_values = join(' UNION ALL ', map {
	my $v = $iso[$_];
	sprintf(q{SELECT json_build_object('k', %d, 'raw', '%s', 'ts', '%s')::text, '%d'}, $_, $v, $v, $_)
} 0 .. $#iso);
produce('iso', $iso_values . q{ UNION ALL SELECT '{"k": 99, "raw": "bad", "ts": "2026-02-30T00:00:00Z"}', '99'});
wait_for(q{SELECT (SELECT count(*) FROM iso_t) || '/' || (SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'iso')},
	scalar(@iso) . '/1', 'every ISO timestamp is applied, and an invalid date is a dead letter');
is(sql(q{SELECT string_agg(raw, ', ' ORDER BY k) FROM iso_t WHERE ts IS DISTINCT FROM raw::timestamptz}), '',
	'each timestamptz equals its text cast, read directly or by timestamptz_in');
is(sql(q{SELECT sqlstate FROM pipeline.dead_letters WHERE consumer = 'iso'}), '22008',
	'February 30th: date/time field value out of range');

# --- formats and metadata ---------------------------------------------------
sql(q{
CREATE TABLE csv_t (a int, b text, c numeric);
SELECT pipeline.create_consumer('csv', 'local', 'csv', 'csv_t', format => 'csv', mode => 'append');
CREATE TABLE text_t (line text, k text, at timestamptz DEFAULT now());
SELECT pipeline.create_consumer('text', 'local', 'text', 'text_t', format => 'text', mode => 'append',
    column_map => '{"k": "$key"}');
CREATE TABLE bytes_t (raw bytea, topic text, part int, off bigint, ts timestamptz, hdrs jsonb, src text, k bytea);
SELECT pipeline.create_consumer('bytes', 'local', 'bytes', 'bytes_t', format => 'bytea', mode => 'append',
    column_map => '{"raw": "$value", "topic": "$topic", "part": "$partition", "off": "$offset", "ts": "$timestamp",
                    "hdrs": "$headers", "src": "$header.src", "k": "$key"}');
});
my $t_meta = time;
sql(q{
SELECT pipeline.produce('local', 'csv', '1,hello,2.5');
SELECT pipeline.produce('local', 'csv', '2,"quoted, ""comma""",');
SELECT pipeline.produce('local', 'csv', '3,x');
SELECT pipeline.produce('local', 'text', 'a line of text', 'k1');
SELECT pipeline.produce('local', 'bytes', '\x00ff10'::bytea, 'kb', '{"src": "tap", "n": null}');
});
wait_for('SELECT count(*) FROM csv_t', '2', 'csv: two good records applied');
is(sql(q{SELECT a || '|' || b || '|' || coalesce(c::text, 'NULL') FROM csv_t ORDER BY a}),
	"1|hello|2.5\n2|quoted, \"comma\"|NULL", 'csv: fields, quoting and the null string');
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'csv'}, '1', 'csv: a short record is a dead letter');
like(sql(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'csv'}), qr/CSV record has 2 fields, expected 3/,
	'... saying how many fields it has');
wait_for('SELECT count(*) FROM text_t', '1', 'text: the message arrives');
is(sql(q{SELECT line || '|' || k || '|' || (at IS NOT NULL) FROM text_t}), 'a line of text|k1|true',
	'text: whole value, key, and a defaulted column');
wait_for('SELECT count(*) FROM bytes_t', '1', 'bytea: the message arrives');
# $timestamp: the message's Kafka timestamp, taken when it was produced (to
# the millisecond) and so between $t_meta and now
is(sql(sprintf(q{SELECT encode(raw, 'hex') || '|' || topic || '|' || part || '|' || off || '|' || src || '|' || convert_from(k, 'UTF8')
       || '|' || hdrs::text || '|' || (ts BETWEEN to_timestamp(%.6f) - interval '1 ms' AND now()) FROM bytes_t}, $t_meta)),
	'00ff10|bytes|0|0|tap|kb|{"n": null, "src": "tap"}|true', 'bytea: raw bytes and every metadata column');
# a producer's timestamp past what a timestamptz holds (the largest a Kafka
# timestamp can be, whose microseconds overflow an int64): the message is a
# dead letter saying so, its own timestamp left NULL there, and the next
# message is applied
{
	my ($out, $err);
	run([ '/usr/bin/python3', '-c', q{
import sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1]})
p.produce("bytes", value=b"\x01", key=b"far", timestamp=9223372036854775807)
p.produce("bytes", value=b"\x02", key=b"near")
if p.flush(30) != 0:
    sys.exit("not delivered")
}, $bs ], '>', \$out, '2>', \$err, timeout(60)) or diag($err);
	wait_for('SELECT count(*) FROM bytes_t', '2', '$timestamp: the message after one with an impossible timestamp is applied');
	is(sql(q{SELECT sqlstate || '|' || ("timestamp" IS NULL) || '|' || encode(value, 'hex') || '|' || convert_from(key, 'UTF8')
	           || '|' || error FROM pipeline.dead_letters WHERE consumer = 'bytes'}),
		'22008|true|01|far|message timestamp 9223372036854775807 ms is out of range for type timestamp with time zone',
		'$timestamp: a timestamp out of range is a dead letter with its raw bytes and the reason');
	is(sql(q{SELECT string_agg(encode(raw, 'hex'), ',' ORDER BY off) FROM bytes_t}), '00ff10,02', '... and nothing wrong was applied');
}

# --- tombstones ---------------------------------------------------------------
sql(q{
CREATE TABLE tomb_t (id int PRIMARY KEY, v text);
SELECT pipeline.create_consumer('tomb', 'local', 'tomb', 'tomb_t', delete_on_tombstone => true);
});
produce('tomb', q{SELECT json_build_object('id', g, 'v', 'v' || g)::text, g::text FROM generate_series(1, 10) g});
wait_for('SELECT count(*) FROM tomb_t', '10', 'tombstones: ten rows first');
sql(q{SELECT pipeline.produce('local', 'tomb', NULL::text, '2'); SELECT pipeline.produce('local', 'tomb', NULL::text, '{"id": 4}');});
wait_for('SELECT string_agg(id::text, \',\' ORDER BY id) FROM tomb_t', '1,3,5,6,7,8,9,10',
	'a tombstone deletes its key (plain key and JSON key)');

# --- deferred constraints are checked per statement, so bad rows are isolated -
# A deferred foreign key (and a deferred constraint trigger) would fire at
# COMMIT, where no row can be blamed and the whole batch fails again at every
# retry.  The message without a parent becomes a dead letter; the others commit.
sql(q{
CREATE TABLE def_parent (id int PRIMARY KEY);
INSERT INTO def_parent SELECT generate_series(1, 10);
CREATE TABLE def_child (id int PRIMARY KEY, parent int REFERENCES def_parent DEFERRABLE INITIALLY DEFERRED);
CREATE FUNCTION def_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.id = 13 THEN RAISE EXCEPTION 'id 13 is refused by a deferred trigger'; END IF; RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER def_check AFTER INSERT ON def_child DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION def_check();
SELECT pipeline.create_consumer('deferred', 'local', 'deferred', 'def_child', batch_size => 100);
});
produce('deferred', q{SELECT json_build_object('id', g, 'parent', CASE WHEN g = 7 THEN 99 ELSE g % 10 + 1 END)::text, g::text
                        FROM generate_series(1, 20) g});
wait_for(q{SELECT count(*) FROM def_child}, '18', 'deferred constraints: the good rows of the batch commit');
is(sql(q{SELECT string_agg(convert_from(key, 'UTF8') || ':' || sqlstate, ',' ORDER BY "offset") FROM pipeline.dead_letters WHERE consumer = 'deferred'}),
	'7:23503,13:P0001', '... and the row without a parent and the one the deferred trigger refuses are dead letters');
sql(q{SELECT pipeline.drop_consumer('deferred')});

# --- a dropped target stops its consumer, saying why --------------------------
sql(q{
CREATE TABLE droptgt_t (id int PRIMARY KEY, v int);
SELECT pipeline.create_consumer('droptgt', 'local', 'droptgt', 'droptgt_t');
});
produce('droptgt', q{SELECT json_build_object('id', 1, 'v', 1)::text, '1'});
wait_for(q{SELECT count(*) FROM droptgt_t}, '1', 'dropped target: the consumer applies a first message');
sql(q{DROP TABLE droptgt_t});
produce('droptgt', q{SELECT json_build_object('id', 2, 'v', 2)::text, '2'});
wait_for(q{SELECT enabled || '|' || last_error FROM pipeline.consumers WHERE name = 'droptgt'},
	'false|the target table public.droptgt_t was dropped',
	'dropped target: the consumer stops, and says why, instead of restarting forever');
wait_for(q{SELECT state || '|' || (worker_pid IS NULL) FROM pipeline.consumer_status WHERE consumer = 'droptgt'},
	'stopped|true', '... and its worker is gone');
sql(q{SELECT pipeline.drop_consumer('droptgt')});

# --- the worker's statements do not depend on a search_path ------------------
# A role that may create objects in public (on the default search_path)
# plants an = for varchar that records who calls it.  The tombstone DELETE
# of a varchar key must not run it as the consumer's owner: the worker uses
# the key type's own operator, named with its schema, under an empty
# search_path.
sql(q{
CREATE ROLE regress_mallory;
GRANT CREATE ON SCHEMA public TO regress_mallory;
CREATE TABLE public.stolen (who text);
GRANT INSERT ON public.stolen TO PUBLIC;
SET ROLE regress_mallory;
CREATE FUNCTION public.evil_eq(varchar, varchar) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.stolen VALUES (current_user); RETURN $1::text OPERATOR(pg_catalog.=) $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.evil_eq);
RESET ROLE;
CREATE TABLE tombv_t (k varchar(20) PRIMARY KEY, v text, seen timestamptz DEFAULT now());
SELECT pipeline.create_consumer('tombv', 'local', 'tombv', 'tombv_t', delete_on_tombstone => true);
});
produce('tombv', q{SELECT json_build_object('k', k, 'v', 'v-' || k)::text, k FROM (VALUES ('a'), ('b'), ('c')) s(k)});
wait_for(q{SELECT count(*) FROM tombv_t}, '3', 'search_path: three rows with varchar keys');
sql(q{SELECT pipeline.produce('local', 'tombv', NULL::text, 'b')});
wait_for(q{SELECT string_agg(k::text, ',' ORDER BY k::text) FROM tombv_t}, 'a,c', 'search_path: a tombstone deletes its varchar key');
is(sql(q{SELECT count(*) FROM public.stolen}), '0',
	'search_path: an = planted in public is never called by the worker, as the consumer\'s owner');
is(sql(q{SELECT count(*) FROM tombv_t WHERE seen IS NULL}), '0', '... and the column default still applies');
sql(q{DROP OPERATOR public.= (varchar, varchar); DROP FUNCTION public.evil_eq(varchar, varchar);
      SELECT pipeline.drop_consumer('tombv'); DROP TABLE public.stolen; REVOKE CREATE ON SCHEMA public FROM regress_mallory;});

# --- one slot, 1,024 partitions (Event Hubs Dedicated's most) --------------
# Every partition gets two messages; one slot applies them all, and keeps
# correct offsets and lag figures for each partition.
sql(q{
CREATE TABLE wide_t (p int, o bigint, v int);
SELECT pipeline.create_consumer('wide', 'local', 'wide', 'wide_t', mode => 'append',
    column_map => '{"p": "$partition", "o": "$offset"}');
});
sql(q{SELECT count(pipeline.produce_async('local', 'wide', json_build_object('v', g)::text, NULL, NULL, g % 1024))
        FROM generate_series(0, 2047) g});
wait_for(q{SELECT count(*) || '|' || count(DISTINCT p) || '|' || count(DISTINCT (p, o)) FROM wide_t}, '2048|1024|2048',
	'1,024 partitions: one slot applies both messages of every partition, once');
wait_for(q{SELECT count(*) || '|' || count(*) FILTER (WHERE committed_offset = 2 AND high_watermark = 2 AND lag_messages = 0 AND status = 'OK')
             FROM pipeline.consumer_lag WHERE consumer = 'wide'},
	'1024|1024', '... and consumer_lag shows every partition caught up at offset 2');
is(sql(q{SELECT count(*) || '|' || sum(next_offset) FROM pipeline.offsets WHERE consumer = 'wide'}), '1024|2048',
	'... with the next offset of every partition stored');
sql(q{SELECT pipeline.drop_consumer('wide')});

# --- stop, start, drop, restart -------------------------------------------
sql(q{
CREATE TABLE ss_t (id int PRIMARY KEY, v int);
SELECT pipeline.create_consumer('ss', 'local', 'stopstart', 'ss_t');
SELECT pipeline.produce('local', 'stopstart', '{"id": 1, "v": 1}', '1');
});
wait_for('SELECT count(*) FROM ss_t', '1', 'stop/start: running consumer applies');
sql(q{SELECT pipeline.stop_consumer('ss')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'ss' AND pid IS NOT NULL}, '0',
	'stop_consumer stops its worker');
sql(q{SELECT pipeline.produce('local', 'stopstart', '{"id": 2, "v": 2}', '2')});
is(sql(q{SELECT state || ':' || (worker_pid IS NULL) FROM pipeline.consumer_status WHERE consumer = 'ss'}), 'stopped:true',
	'consumer_status: a stopped consumer shows as stopped, without a worker');
sleep 2;
is(sql('SELECT count(*) FROM ss_t'), '1', 'a stopped consumer applies nothing');
$node->restart;
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'tomb' AND state = 'running'}, '1',
	'after a clean restart the consumers come back');
sleep 2;
is(sql('SELECT count(*) FROM ss_t'), '1', 'a stopped consumer stays stopped after a restart');
sql(q{SELECT pipeline.produce('local', 'tomb', '{"id": 42, "v": "after restart"}', '42')});
wait_for('SELECT count(*) FROM tomb_t WHERE id = 42', '1', 'the restarted consumer applies new messages');
sql(q{SELECT pipeline.start_consumer('ss')});
wait_for('SELECT count(*) FROM ss_t', '2', 'start_consumer resumes where it stopped');
sql(q{SELECT pipeline.drop_consumer('ss')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'ss'}, '0', 'drop_consumer ends its slots');
is(sql(q{SELECT count(*) FROM pipeline.offsets WHERE consumer = 'ss'}) . sql(q{SELECT count(*) FROM pipeline.consumers WHERE name = 'ss'}),
	'00', '... and removes its definition and offsets');

# --- a worker waiting on brokers that do not answer still stops at once ------
# With a 12 s round trip to every broker (a broker that takes requests and
# does not answer; one that is down refuses the connection, and the look-up
# fails at once), a new consumer's worker waits up to 10 s for the topic's
# partitions.  stop_consumer must end it within a slice of that wait (200 ms)
# and the manager's wake-up, not when the look-up gives up: the bound is
# half the look-up's 10 s.
sql(q{CREATE TABLE blocked_t (id int PRIMARY KEY, v int)});
$broker->ctl('rtt all 12000');
sql(q{SELECT pipeline.create_consumer('blocked', 'local', 'stopstart', 'blocked_t')});
wait_for(q{SELECT state || ':' || (worker_pid IS NOT NULL) FROM pipeline.consumer_status WHERE consumer = 'blocked'},
	'running:true', 'brokers not answering: a new consumer\'s worker runs, waiting for them');
usleep(1_000_000);
is(sql(q{SELECT state FROM pipeline.consumer_status WHERE consumer = 'blocked'}), 'running', '... still waiting a second later');
my $t_blocked = time;
sql(q{SELECT pipeline.stop_consumer('blocked')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'blocked' AND pid IS NOT NULL}, '0',
	'... and stop_consumer ends it');
my $stop_took = time - $t_blocked;
$broker->ctl('rtt all 0');
cmp_ok($stop_took, '<', 5, sprintf('... at once (%.2f s), not when the 10 s look-up gives up', $stop_took));
sql(q{SELECT pipeline.drop_consumer('blocked'); DROP TABLE blocked_t});
# ... while a broker that answers more slowly than one slice (500 ms) is
# still heard: the slices grow
sql(q{CREATE TABLE slowb_t (id int PRIMARY KEY, v int)});
$broker->ctl('rtt all 500');
sql(q{SELECT pipeline.create_consumer('slowb', 'local', 'stopstart', 'slowb_t')});
wait_for(q{SELECT count(*) FROM slowb_t}, '2', 'a broker slower than a slice: the new consumer starts and applies the topic');
$broker->ctl('rtt all 0');
sql(q{SELECT pipeline.drop_consumer('slowb'); DROP TABLE slowb_t});

# --- group mode: two slots share a Kafka consumer group ----------------------
sql(q{
CREATE TABLE grp_t (seq int, p int, o bigint);
SELECT pipeline.create_consumer('grp', 'local', 'grp', 'grp_t', mode => 'append', parallelism => 2,
    group_id => 'pipeline-tap-group', column_map => '{"p": "$partition", "o": "$offset"}');
});
produce('grp', q{SELECT json_build_object('seq', g)::text, g::text FROM generate_series(1, 4000) g});
wait_for('SELECT count(*) FROM grp_t', '4000', 'group mode: all 4,000 messages arrive');
is(sql('SELECT count(DISTINCT (p, o)) FROM grp_t'), '4000', 'group mode: exactly once');
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'grp' AND cardinality(partitions) = 2}, '2',
	'group mode: the coordinator gave each slot two of the four partitions');
# reset_offsets in group mode goes backwards too, although the group has
# committed further: the slots read the topic again from the start
# (a slot commits each batch to the group after its own commit, so the group
# is ahead of earliest; the mock may refuse the very last commit during a
# rebalance, so the figure itself is not fixed)
cmp_ok($broker->group_committed('pipeline-tap-group', 'grp', 4), '>', 0,
	'group mode: the group committed offsets past the start');
is(sql(q{SELECT sum(new_offset) FROM pipeline.reset_offsets('grp', 'earliest')}), '0', 'group mode: reset_offsets to earliest');
wait_for('SELECT count(*) || \'/\' || count(DISTINCT (p, o)) FROM grp_t', '8000/4000',
	'group mode: the slots read the topic again after the reset, not from where the group committed');
# ... and so does a reset made while the consumer is stopped: when it
# starts, its slots resume at the reset offsets, not where the group committed
is($broker->wait_group_committed('pipeline-tap-group', 'grp', 4, '4000'), '4000',
	'group mode: the group committed the whole topic again');
sql(q{SELECT pipeline.stop_consumer('grp')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'grp' AND pid IS NOT NULL}, '0',
	'group mode: the consumer is stopped');
is(sql(q{SELECT sum(new_offset) FROM pipeline.reset_offsets('grp', 'earliest')}), '0',
	'group mode: reset_offsets of the stopped consumer');
sql(q{SELECT pipeline.start_consumer('grp')});
wait_for('SELECT count(*) || \'/\' || count(DISTINCT (p, o)) FROM grp_t', '12000/4000',
	'group mode: started again, the slots read the topic from the reset, not from where the group committed');

# --- at-least-once and at-most-once keep offsets in the Kafka group ---------
sql(q{
CREATE TABLE alo_t (seq int, p int, o bigint);
CREATE TABLE amo_t (seq int, p int, o bigint);
SELECT pipeline.create_consumer('alo', 'local', 'alo', 'alo_t', mode => 'append', delivery => 'at_least_once',
    column_map => '{"p": "$partition", "o": "$offset"}');
SELECT pipeline.create_consumer('amo', 'local', 'amo', 'amo_t', mode => 'append', delivery => 'at_most_once',
    column_map => '{"p": "$partition", "o": "$offset"}');
});
produce('alo', q{SELECT json_build_object('seq', g)::text, g::text FROM generate_series(1, 2000) g});
produce('amo', q{SELECT json_build_object('seq', g)::text, g::text FROM generate_series(1, 2000) g});
wait_for('SELECT count(DISTINCT (p, o)) FROM alo_t', '2000', 'at_least_once: every message arrives');
wait_for('SELECT count(DISTINCT (p, o)) FROM amo_t', '2000', 'at_most_once: every message arrives');

sub group_committed { return $broker->group_committed(@_); }
my $ok = 0;
for (1 .. 50) { $ok = 1, last if group_committed('pipeline_ext.postgres.alo', 'alo', 2) eq '2000'; usleep(200_000); }
ok($ok, 'at_least_once: the Kafka group holds the committed offsets (2,000 messages)');
$ok = 0;
for (1 .. 50) { $ok = 1, last if group_committed('pipeline_ext.postgres.amo', 'amo', 2) eq '2000'; usleep(200_000); }
ok($ok, 'at_most_once: the Kafka group holds the committed offsets');
$ok = 0;
for (1 .. 50) { $ok = 1, last if group_committed('pipeline_ext.postgres.big_app', 'big', 6) eq '100000'; usleep(200_000); }
ok($ok, 'exactly_once: offsets are also committed to the Kafka group, for external lag tools');

# at_least_once resumes from the group's offsets: stop, produce, start
sql(q{SELECT pipeline.stop_consumer('alo')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'alo' AND pid IS NOT NULL}, '0', 'at_least_once: stopped');
produce('alo', q{SELECT json_build_object('seq', g)::text, g::text FROM generate_series(2001, 2500) g});
sql(q{SELECT pipeline.start_consumer('alo')});
wait_for('SELECT count(DISTINCT (p, o)) FROM alo_t', '2500', 'at_least_once: resumes from the committed offsets');
is(sql('SELECT count(*) FROM alo_t'), '2500', '... without duplicates after a clean stop');

# --- on_error => 'stop' ------------------------------------------------------
sql(q{
CREATE TABLE soe_t (id int PRIMARY KEY, n int);
SELECT pipeline.create_consumer('soe', 'local', 'stoponerr', 'soe_t', on_error => 'stop');
SELECT pipeline.produce('local', 'stoponerr', '{"id": 1, "n": 1}', '1');
});
wait_for('SELECT count(*) FROM soe_t', '1', 'on_error stop: good messages are applied');
sql(q{SELECT pipeline.produce('local', 'stoponerr', '{"id": 2, "n": "two"}', '2'); SELECT pipeline.produce('local', 'stoponerr', '{"id": 3, "n": 3}', '3');});
wait_for(q{SELECT enabled FROM pipeline.consumers WHERE name = 'soe'}, 'f', 'on_error stop: a bad message stops the consumer');
like(sql(q{SELECT last_error FROM pipeline.consumers WHERE name = 'soe'}), qr/invalid input syntax for type integer: "two"/,
	'... with the error recorded');
is(sql('SELECT count(*) FROM soe_t'), '1', '... and nothing of its batch applied');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'soe'}), '0', '... and no dead letter');
# the first bad message of a batch is named, though the apply finds it
# after decoding has found a later one
sql(q{
CREATE TABLE soe2_t (id int PRIMARY KEY, n int CHECK (n > 0));
SELECT pipeline.create_consumer('soe2', 'local', 'stoponerr2', 'soe2_t', on_error => 'stop', start => false);
SELECT pipeline.produce('local', 'stoponerr2', '{"id": 1, "n": 1}', '1');
SELECT pipeline.produce('local', 'stoponerr2', '{"id": 2, "n": -2}', '2');
SELECT pipeline.produce('local', 'stoponerr2', 'not json', '3');
SELECT pipeline.start_consumer('soe2');
});
wait_for(q{SELECT enabled FROM pipeline.consumers WHERE name = 'soe2'}, 'f', 'on_error stop: two bad messages in a batch stop the consumer');
like(sql(q{SELECT last_error FROM pipeline.consumers WHERE name = 'soe2'}), qr/offset 1: .*violates check constraint/,
	'... naming the first of them (offset 1), not the one decoding found');

# --- nested JSON: field paths and nested values --------------------------------
sql(q{
CREATE TABLE nested_t (id int PRIMARY KEY, city text, tags jsonb, raw json, note text);
SELECT pipeline.create_consumer('nested', 'local', 'nested', 'nested_t',
    column_map => '{"id": "device.id", "city": "device.location.city", "tags": "tags", "raw": "device", "note": "note"}');
SELECT pipeline.produce('local', 'nested',
    '{"device": {"id": 7, "location": {"city": "Oslo \u00e6", "zip": "0150"}}, "tags": ["a", {"b": null}], "note": "line\nbreak \"quoted\""}', 'n7');
});
wait_for('SELECT count(*) FROM nested_t', '1', 'nested JSON: the message arrives');
is(sql(q{SELECT id || '|' || city || '|' || tags::text || '|' || (raw::jsonb -> 'location' ->> 'zip') || '|' || note FROM nested_t}),
	qq{7|Oslo \xc3\xa6|["a", {"b": null}]|0150|line\nbreak "quoted"}, 'nested JSON: paths, nested objects and arrays, escapes');

# --- privileges -------------------------------------------------------------
sql(q{
CREATE ROLE writer LOGIN;
CREATE TABLE priv_t (id int PRIMARY KEY, v text);
GRANT SELECT ON priv_t TO writer;
GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb) TO writer;
});
my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{
SET ROLE writer;
SELECT pipeline.create_connection('writers', '$bs');
SELECT pipeline.create_consumer('priv', 'writers', 'priv', 'priv_t', mode => 'append');
});
like($stderr, qr/permission denied for table priv_t/, 'a role without INSERT on the target cannot create a consumer on it');
sql(q{GRANT INSERT ON priv_t TO writer});
($ret, $stdout, $stderr) = $node->psql('postgres', q{
SET ROLE writer;
SELECT pipeline.create_consumer('priv', 'writers', 'priv', 'priv_t', mode => 'append');
});
is($stderr, '', 'with INSERT it can');
sql(q{REVOKE INSERT ON priv_t FROM writer; SELECT pipeline.produce('local', 'priv', '{"id": 1, "v": "x"}')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'priv' AND last_error LIKE 'permission denied for table priv_t%'},
	'1', 'the worker writes with its owner\'s privileges: revoked INSERT stops it');
wait_for(q{SELECT status || ': ' || reason FROM pipeline.health WHERE consumer = 'priv'},
	'critical: worker failing: permission denied for table priv_t', 'health: a failing worker is critical, with its error');
is(sql('SELECT count(*) FROM priv_t'), '0', '... and nothing is written');
is(sql(q{SELECT messages || '/' || batches FROM pipeline.consumer_stats WHERE consumer = 'priv'}), '0/0',
	'consumer_stats: the rolled-back batches are not counted as applied');
wait_for(q{SELECT last_error LIKE 'permission denied%' FROM pipeline.consumers WHERE name = 'priv'}, 't',
	'the last error is kept in pipeline.consumers');
sql(q{GRANT INSERT ON priv_t TO writer});
wait_for('SELECT count(*) FROM priv_t', '1', 'after the grant the restarted worker applies the message');
wait_for(q{SELECT messages || '/' || batches FROM pipeline.consumer_stats WHERE consumer = 'priv'}, '1/1',
	'consumer_stats: counted once committed');
ok(sql(q{SELECT restarts FROM pipeline._slots() WHERE consumer = 'priv'}) >= 1, 'restarts are counted');
ok(sql(q{SELECT errors FROM pipeline.consumer_stats WHERE consumer = 'priv'}) >= 1, 'consumer_stats counts the failed batches');
like(sql(q{SELECT restarts || '|' || last_error FROM pipeline.consumer_status WHERE consumer = 'priv'}),
	qr/^[1-9]\d*\|permission denied for table priv_t/, 'consumer_status shows the restarts and the last error');
sql(q{SELECT pipeline.reset_stats('priv')});
is(sql(q{SELECT messages || '/' || errors FROM pipeline.consumer_stats WHERE consumer = 'priv'}), '0/0',
	'reset_stats(consumer) zeroes that consumer\'s counters');

# --- prometheus-postgres-exporter reads the views as metrics ------------------
{
	my ($body, $log) = PipelineExt::Exporter::scrape($node, qr/^pipeline_consumer_stats_messages\{/m);
	my $alo = sql(q{SELECT messages FROM pipeline.consumer_stats WHERE consumer = 'alo'});
	like($body, qr/^pipeline_consumer_stats_messages\{consumer="alo",server="[^"]*"\} $alo$/m,
		"exporter: consumer_stats as metrics (alo's $alo messages, as the view says)")
	  or diag("exporter said:\n$log\n" . substr($body, 0, 2000));
	like($body, qr/^pipeline_consumer_lag_lag_messages\{consumer="big_up",partition="0",server="[^"]*",status="OK"\} 0$/m,
		'exporter: consumer_lag per partition, with its status');
	like($body, qr/^pipeline_consumer_lag_lag_seconds\{consumer="big_up",partition="0",server="[^"]*",status="OK"\} 0$/m,
		'exporter: lag in time per partition');
	like($body, qr/^pipeline_health_level\{consumer="priv",server="[^"]*",status="(ok|warning|critical)"\} [012]$/m,
		'exporter: health level with its status');
	like($body, qr/^pipeline_consumer_status_running\{consumer="tomb",server="[^"]*",slot="0",state="running"\} 1$/m,
		'exporter: consumer_status per slot');
	like($body, qr/^pipeline_producer_messages\{server="[^"]*"\} \d+/m, 'exporter: producer_stats');
}

# --- natural batching -------------------------------------------------------
# batch_size and batch_timeout are upper bounds.  Messages waiting when a
# slot starts go in batches of what has arrived; a message that comes alone
# is applied at once, not when a batch_timeout of an hour has passed.
sql(q{
CREATE TABLE nat_t (id int PRIMARY KEY, v int);
SELECT pipeline.create_consumer('nat', 'local', 'nat', 'nat_t', batch_size => 100000, batch_timeout => '1 hour',
    start => false);
});
produce('nat', q{SELECT json_build_object('id', g, 'v', g)::text, g::text FROM generate_series(1, 5000) g});
sql(q{SELECT pipeline.start_consumer('nat')});
wait_for('SELECT count(*) FROM nat_t', '5000', 'natural batching: the 5,000 waiting messages are applied');
cmp_ok(sql(q{SELECT sum(batches) FROM pipeline._slots() WHERE consumer = 'nat'}), '<', 100,
	'... in batches of what had arrived, not one by one');
sql(q{SELECT pipeline.produce('local', 'nat', '{"id": 5001, "v": 1}', '5001')});
wait_for('SELECT count(*) FROM nat_t', '5001', '... and a message that comes alone is applied at once, not after batch_timeout (1 hour)');
sql(q{ALTER SYSTEM SET pipeline_ext.batch_linger = 0; SELECT pg_reload_conf()});
sql(q{SELECT pipeline.produce('local', 'nat', '{"id": 5002, "v": 1}', '5002')});
wait_for('SELECT count(*) FROM nat_t', '5002', '... with no linger too');
sql(q{ALTER SYSTEM RESET pipeline_ext.batch_linger; SELECT pg_reload_conf(); SELECT pipeline.drop_consumer('nat')});

# --- parallelism 'auto' ----------------------------------------------------
# A consumer created without a parallelism gets one slot per core, at most
# 4 (pipeline_ext.default_parallelism 0; the test nodes set 1).
{
	chomp(my $cores = `getconf _NPROCESSORS_ONLN`);
	my $want = $cores < 1 ? 1 : ($cores > 4 ? 4 : $cores);
	sql(q{SET pipeline_ext.default_parallelism = 0;
	      SELECT pipeline.create_consumer('autop', 'local', 'nat', 'nat_t', start => false)});
	is(sql(q{SELECT parallelism FROM pipeline.consumers WHERE name = 'autop'}), $want,
		"parallelism auto: one slot per core, at most 4 ($cores cores)");
	sql(q{SELECT pipeline.drop_consumer('autop')});
}

# --- SIGHUP and postmaster death -------------------------------------------
sql(q{SELECT pg_reload_conf()});
sql(q{SELECT pipeline.produce('local', 'tomb', '{"id": 43, "v": "after reload"}', '43')});
wait_for('SELECT count(*) FROM tomb_t WHERE id = 43', '1', 'after a configuration reload (SIGHUP) the workers go on');
my @workers = split /\n/, sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'pipeline_ext%'});
ok(scalar(@workers) >= 3, 'launcher, manager and slot workers are running (' . scalar(@workers) . ')');
kill 'KILL', $node->{_pid};
my $left = scalar @workers;
for (1 .. 100)
{
	$left = grep { kill(0, $_) } @workers;
	last if $left == 0;
	usleep(100_000);
}
is($left, 0, 'when the postmaster dies, every pipeline_ext worker exits');
# (as an administrator would: the old postmaster is gone, start a new one)
unlink($node->data_dir . '/postmaster.pid');
$node->{_pid} = undef;
$node->start;
sql(q{SELECT pipeline.produce('local', 'tomb', '{"id": 44, "v": "after postmaster death"}', '44')});
wait_for('SELECT count(*) FROM tomb_t WHERE id = 44', '1', '... and they come back with the next postmaster');

# nothing in the server log crashed
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal (?!9)/, 'no worker crashed (other than the kill -9)');

$node->stop;
$broker->stop;
done_testing();

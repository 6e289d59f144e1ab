#!/usr/bin/env bash
# The demo: set-up (packages, build, install), then a scratch PostgreSQL
# instance preloading pipeline_ext and the project's test broker (no Kafka
# needed).  It produces a few hundred events from SQL, reads them back with
# kcat, an independent Kafka client, and has background consumers apply them
# to tables (upsert and append) with a dead letter for a bad message.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

pe_setup

DEMO=${PE_DEMO_DIR:-/tmp/pipeline_ext-demo}
pe_workdir "$DEMO"
PORT=${PE_DEMO_PORT:-55432}
echo "== starting the test broker (librdkafka mock cluster, 3 brokers) and a scratch PostgreSQL 15 instance on port $PORT"
pe_scratch "$DEMO" "$PORT" --brokers 3 --topic readings:6 --topic alerts:1
echo "   bootstrap.servers = $BOOTSTRAP"

psql_demo() { pe_as_user psql -X -v ON_ERROR_STOP=1 -h "$DEMO" -p "$PORT" -U postgres -d postgres "$@"; }

psql_demo -e <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('demo', '$BOOTSTRAP', '{"linger.ms": 10, "compression.type": "lz4"}');
SELECT name, kind, bootstrap_servers, options FROM pipeline.connections;

-- one event, waiting for the broker's acknowledgement
SELECT * FROM pipeline.produce('demo', 'alerts', '{"device": "d-7", "alert": "overheat"}'::jsonb,
                               key => 'd-7', headers => '{"source": "demo"}');

-- 300 sensor readings from 20 devices, sent in the background and all
-- confirmed before the transaction commits
BEGIN;
SELECT count(pipeline.produce_async('demo', 'readings',
         jsonb_build_object('device', 'd-' || (g % 20), 'seq', g,
                            'temperature', round((20 + 5 * sin(g / 10.0))::numeric, 2)),
         key => 'd-' || (g % 20),
         headers => jsonb_build_object('source', 'demo', 'schema', 'reading.v1')))
  FROM generate_series(1, 300) g;
COMMIT;
SQL

echo "== reading the events back with kcat (an independent Kafka client)"
kcat -C -b "$BOOTSTRAP" -t alerts -e -q -f 'alerts [%p] @%o key=%k headers=%h value=%s\n'
kcat -C -b "$BOOTSTRAP" -t readings -e -q -f '%p %k\n' >"$DEMO/readings.txt"
echo "   readings per partition (partition: messages, devices) - each device stays on one partition:"
awk '{n[$1]++; if (!seen[$1" "$2]++) d[$1]++} END {for (p in n) printf "     %s: %d messages, %d devices\n", p, n[p], d[p]}' \
	"$DEMO/readings.txt" | sort
echo "   first three readings:"
kcat -C -b "$BOOTSTRAP" -t readings -p 0 -c 3 -e -q -f '     [%p] @%o key=%k headers=%h value=%s\n'
total=$(wc -l <"$DEMO/readings.txt")
echo "   $total of 300 readings read back by kcat"

echo "== consuming: a background worker applies the topic to tables, exactly once"
psql_demo -e <<SQL
-- the latest reading per device (upsert), and every reading (append)
CREATE TABLE device_latest (device text PRIMARY KEY, seq int, temperature numeric, seen timestamptz);
CREATE TABLE reading_log (device text, seq int, temperature numeric, "partition" int, "offset" bigint);
SELECT pipeline.create_consumer('latest', 'demo', 'readings', 'device_latest',
         column_map => '{"seen": "\$timestamp"}');
SELECT pipeline.create_consumer('log', 'demo', 'readings', 'reading_log', mode => 'append', parallelism => 2,
         column_map => '{"partition": "\$partition", "offset": "\$offset"}');
-- and one bad message, which becomes a dead letter (of each consumer) instead of stopping anything
SELECT * FROM pipeline.produce('demo', 'readings', '{"device": "d-99", "seq": "not a number"}', key => 'd-99');
SQL
for _ in $(seq 100); do
	n=$(psql_demo -At -c "SELECT (SELECT count(*) FROM reading_log) + (SELECT count(*) FROM pipeline.dead_letters)")
	# 300 readings in the log, and the bad message once per consumer
	[ "$n" -ge 302 ] && [ "$(psql_demo -At -c "SELECT count(*) FROM device_latest")" -ge 20 ] && break
	sleep 0.2
done
psql_demo -e <<SQL
SELECT device, seq, temperature FROM device_latest ORDER BY seq DESC LIMIT 5;
SELECT count(*) AS rows, count(DISTINCT ("partition", "offset")) AS distinct_messages FROM reading_log;
SELECT consumer, "partition", "offset", convert_from(value, 'UTF8') AS value, error FROM pipeline.dead_letters;
SQL
echo "== monitoring, in plain SQL"
psql_demo -e <<SQL
SELECT consumer, slot, state, partitions, restarts, last_batch_at IS NOT NULL AS applied FROM pipeline.consumer_status;
SELECT consumer, "partition", committed_offset, high_watermark, lag_messages, lag_time, status
  FROM pipeline.consumer_lag WHERE consumer = 'log' ORDER BY "partition";
SELECT consumer, messages, dead_letters, round(error_rate::numeric, 4) AS error_rate,
       latency_p50_ms AS p50_ms, latency_p99_ms AS p99_ms, throughput_trend
  FROM pipeline.consumer_stats ORDER BY consumer;
SELECT * FROM pipeline.health ORDER BY consumer;
SQL
latest=$(psql_demo -At -c "SELECT count(*) FROM device_latest")
logged=$(psql_demo -At -c "SELECT count(*) FROM reading_log")
dead=$(psql_demo -At -c "SELECT count(*) FROM pipeline.dead_letters")
echo "== demo done: $total of 300 readings and 1 alert read back; consumers applied $logged readings,"
echo "   $latest devices' latest reading, and the bad message as a dead letter of each consumer ($dead)"
[ "$total" -eq 300 ] && [ "$logged" -eq 300 ] && [ "$latest" -eq 20 ] && [ "$dead" -eq 2 ]

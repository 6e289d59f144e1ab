#!/usr/bin/env bash
# End-to-end latency benchmark (not a test): a producer (confluent-kafka,
# linger.ms 5) sends at a steady rate for DURATION seconds to a 6-partition
# topic of the test broker; a consumer with the defaults appends the
# messages.  For each rate it prints p50/p99 of
#   - pipeline.consumer_stats (message timestamp to the batch's commit), and
#   - an independent measure: a trigger stamps clock_timestamp() on each row,
#     against the message's own timestamp (to the row's insert, before the
#     commit).
#
#   sudo bash bench/latency.sh                 rates 1000 and 10000, 20 s each
#   RATES="10000" DURATION=30 sudo -E bash bench/latency.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

RATES=${RATES:-1000 10000}
DURATION=${DURATION:-20}
CONN_OPTIONS=${CONN_OPTIONS:-"{}"}   # the connection's librdkafka options

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-latency}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55434}
PE_EXTRA_CONF="max_worker_processes = 16"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic lat:6
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }

psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP', '$CONN_OPTIONS');
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN NEW.applied := clock_timestamp(); RETURN NEW; END \$\$;
SQL

cat > "$BENCH/producer.py" <<'PY'
import sys, time
from confluent_kafka import Producer
bootstrap, rate, duration, first = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
# connected, with the topic's metadata, before the first timed message
p.list_topics("lat", timeout=10)
n = int(rate * duration)
t0 = time.perf_counter()
for i in range(n):
    # steady: message i leaves at t0 + i / rate
    delay = t0 + i / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    p.produce("lat", ('{"id": %d}' % (first + i)).encode(), str(first + i).encode())
    p.poll(0)
p.flush(30)
PY

first=1
results=()
for rate in $RATES; do
	n=$((rate * DURATION))
	t="lat_$rate"
	psql_b <<SQL
CREATE TABLE $t (id bigint, ts timestamptz, applied timestamptz);
CREATE TRIGGER stamp BEFORE INSERT ON $t FOR EACH ROW EXECUTE FUNCTION stamp();
SELECT pipeline.create_consumer('$t', 'bench', 'lat', '$t', mode => 'append', start_offset => 'latest',
    column_map => '{"ts": "\$timestamp"}');
SQL
	# the slot is running and positioned before the first message
	until [ "$(psql_b -At -c "SELECT count(*) FROM pipeline._slots() WHERE consumer = '$t' AND pid IS NOT NULL AND cardinality(partitions) > 0")" -ge 1 ]; do sleep 0.2; done
	sleep 2
	echo "== $rate msgs/s for $DURATION s"
	pe_as_user /usr/bin/python3 "$BENCH/producer.py" "$BOOTSTRAP" "$rate" "$DURATION" "$first"
	until [ "$(psql_b -At -c "SELECT count(*) FROM $t")" -ge "$n" ]; do sleep 0.2; done
	sleep 1.5
	line=$(psql_b -At -F ' ' -c "
SELECT s.latency_p50_ms, s.latency_p99_ms, t.p50, t.p99, t.n
  FROM pipeline.consumer_stats s,
       (SELECT round((1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied - ts)))::numeric, 1) AS p50,
               round((1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied - ts)))::numeric, 1) AS p99,
               count(*) AS n
          FROM $t) t
 WHERE s.consumer = '$t'")
	results+=("$rate $line")
	echo "   the seconds with the highest latency (second, rows, p99 ms, max ms):"
	psql_b -At -F ' ' -c "
SELECT date_trunc('second', ts), count(*),
       round((1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied - ts)))::numeric, 1),
       round((1000 * max(extract(epoch FROM applied - ts)))::numeric, 1)
  FROM $t GROUP BY 1 ORDER BY 4 DESC LIMIT 5" | sed 's/^/     /'
	psql_b -c "SELECT pipeline.drop_consumer('$t')" >/dev/null
	first=$((first + n))
done

echo
echo "== end-to-end latency, defaults, producer linger.ms 5, $DURATION s per rate"
printf '%-10s %22s %22s %30s\n' "msgs/s" "consumer_stats p50/p99" "" "trigger (insert) p50/p99 ms"
for r in "${results[@]}"; do
	read -r rate s50 s99 t50 t99 cnt <<<"$r"
	printf '%-10s %14s / %-8s ms %30s   (%s rows)\n' "$rate" "$s50" "$s99" "$t50 / $t99" "$cnt"
done
echo "targets: at 10,000 msgs/s p50 < 20 ms and p99 < 50 ms; at 1,000 msgs/s p99 < 20 ms"

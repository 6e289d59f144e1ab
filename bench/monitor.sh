#!/usr/bin/env bash
# Monitoring overhead benchmark (not a test).  Two consumers (one upsert, one
# append) ingest N JSON messages at full speed, first alone (the baseline),
# then while a reader queries every monitoring view (consumer_status,
# consumer_lag, consumer_stats, producer_stats, health) R times a second;
# the two alternate, twice, and the script prints the throughput of each run
# and the ratio with readers / without.  Then it takes every broker down and
# reads the views again: reading must not wait on a broker, so the read
# latency must stay what it was.
#
#   sudo bash bench/monitor.sh              N = 500,000, R = 10 reads/s
#   N=200000 R=50 sudo -E bash bench/monitor.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

N=${N:-500000}
R=${R:-10}
PARTS=${PARTS:-24}          # ~21k messages (~3 MB) per partition: inside the mock's retention

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-monitor}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55434}
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
max_worker_processes = 16"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic mbench:$PARTS
ctl() { "$BENCH/test/broker/pe_broker" ctl "$CONTROL" "$@" >/dev/null; }
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }
now() { date +%s.%N; }

psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP', '{"linger.ms": 20}');
SELECT count(pipeline.produce_async('bench', 'mbench',
         json_build_object('id', g % 10000, 'device', 'd-' || (g % 10000), 'temp', round((20 + 10 * sin(g))::numeric, 2),
                           'ts', now(), 'seq', g, 'status', 'ok', 'note', left(md5(g::text), 5))::text,
         (g % 10000)::text))
  FROM generate_series(1, $N) g;
SQL

# every monitoring view, as one reader would
cat >"$BENCH/views.sql" <<'SQL'
SELECT * FROM pipeline.consumer_status;
SELECT * FROM pipeline.consumer_lag;
SELECT * FROM pipeline.consumer_stats;
SELECT * FROM pipeline.producer_stats;
SELECT * FROM pipeline.health;
SQL
chmod 644 "$BENCH/views.sql"

# ingest RUN READER_SECONDS: both consumers from the start of the topic to
# all N applied, with a reader for that many seconds (0: none, else at least
# as long as the ingestion); prints the seconds
ingest() {
	local run=$1 readers=$2 start end pg=""
	psql_b <<SQL
CREATE TABLE up_$run (id int PRIMARY KEY, device text, temp float8, ts timestamptz, seq bigint, status text, note text);
CREATE TABLE app_$run (id int, device text, temp float8, ts timestamptz, seq bigint, status text, note text);
SQL
	if [ "$readers" -gt 0 ]; then
		(cd "$BENCH" && pe_as_user pgbench -n -h "$BENCH" -p "$PORT" -U postgres -f views.sql -R "$R" -T "$readers" \
			-l --log-prefix="$BENCH/reads_$run" postgres >"$BENCH/pgbench_$run.log" 2>&1) &
		pg=$!
		sleep 0.5
	fi
	start=$(now)
	psql_b -c "SELECT pipeline.create_consumer('up_$run', 'bench', 'mbench', 'up_$run');
	           SELECT pipeline.create_consumer('app_$run', 'bench', 'mbench', 'app_$run', mode => 'append')" >/dev/null
	while :; do
		done_n=$(psql_b -At -c "SELECT coalesce(min(messages), 0) FROM pipeline.consumer_stats WHERE consumer IN ('up_$run', 'app_$run')
		                         HAVING count(*) = 2")
		[ "${done_n:-0}" -ge "$N" ] && break
		sleep 0.05
	done
	end=$(now)
	[ -n "$pg" ] && { wait "$pg" 2>/dev/null || true; }
	psql_b -c "SELECT pipeline.drop_consumer('up_$run'); SELECT pipeline.drop_consumer('app_$run')" >/dev/null
	echo "$end - $start" | bc
}

# reads_summary RUN: reads, mean and max latency (ms) of one read of every view
reads_summary() {
	cat "$BENCH"/reads_"$1"* 2>/dev/null | awk '{n++; s+=$3; if ($3 > m) m = $3} END {if (n) printf "%d reads, mean %.2f ms, max %.2f ms", n, s/n/1000, m/1000; else printf "no reads logged"}'
}

echo "== $N messages in $PARTS partitions; two consumers (upsert + append) ingest them in each run"
declare -a base with
for i in 1 2; do
	echo "== run $i: without readers"
	base[$i]=$(ingest "b$i" 0)
	echo "   $(echo "scale=0; 2 * $N / ${base[$i]}" | bc) msg/s (both consumers together), ${base[$i]} s"
	echo "== run $i: with a reader of every view, $R times a second"
	with[$i]=$(ingest "r$i" "$(echo "${base[$i]} * 1.5 + 2" | bc | cut -d. -f1)")
	echo "   $(echo "scale=0; 2 * $N / ${with[$i]}" | bc) msg/s, ${with[$i]} s; reader: $(reads_summary "r$i")"
done

echo "== every broker down: reading the views (one stopped consumer, one running)"
psql_b -c "CREATE TABLE down_t (v text);
           SELECT pipeline.create_consumer('down_run', 'bench', 'mbench', 'down_t', format => 'text', mode => 'append');
           SELECT pipeline.create_consumer('down_stopped', 'bench', 'mbench', 'down_t', format => 'text', mode => 'append');
           SELECT pipeline.stop_consumer('down_stopped')" >/dev/null
sleep 3
ctl down all
sleep 2
(cd "$BENCH" && pe_as_user pgbench -n -h "$BENCH" -p "$PORT" -U postgres -f views.sql -R "$R" -T 10 \
	-l --log-prefix="$BENCH/reads_down" postgres >"$BENCH/pgbench_down.log" 2>&1) || true
ctl up all

b=$(echo "scale=3; (${base[1]} + ${base[2]}) / 2" | bc)
w=$(echo "scale=3; (${with[1]} + ${with[2]}) / 2" | bc)
echo
echo "== results: $N messages x 2 consumers, $PARTS partitions, reader at $R/s"
printf '%-40s %10s msg/s\n' "without readers (mean of 2 runs)" "$(echo "scale=0; 2 * $N / $b" | bc)"
printf '%-40s %10s msg/s\n' "with a reader of every view" "$(echo "scale=0; 2 * $N / $w" | bc)"
echo "throughput with readers / without: $(echo "scale=3; $b / $w" | bc)   (runs: ${base[1]} ${with[1]} ${base[2]} ${with[2]} s)"
echo "one read of every view, while ingesting: $(reads_summary r1); $(reads_summary r2)"
echo "one read of every view, every broker down: $(reads_summary down)"

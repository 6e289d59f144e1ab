#!/usr/bin/env bash
# A slot worker's memory with a large backlog (not a test).  The reference
# data (../shared/bench/gen_events.py, 10,000 devices) in two topics of the
# test broker: "small" with 100,000 events (two batches' worth), "big" with
# N (10,000,000) waiting before the consumer starts.  One upsert slot (parallelism 1: one worker
# holds the whole backlog) consumes each; the worker's private memory
# (RssAnon) is sampled every 0.1 s from /proc until all are committed.
# Prints the peak for each, and the ratio big / small: the backlog must not
# show in a worker's memory (librdkafka's prefetch queue and a batch are
# bounded), and the target is under 100 MB.
#
#   sudo bash bench/memory.sh                 N = 10,000,000 over 400 partitions
#   N=2000000 PARTS=80 sudo -E bash bench/memory.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=${N:-10000000}
PARTS=${PARTS:-400}         # the test broker keeps about 5 MB per partition
REF=${REF:-$PE_ROOT/../shared/bench}
[ -x "$REF/gen_events.py" ] || { echo "the reference inputs are not in $REF (set REF)" >&2; exit 1; }

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-memory}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55436}
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 8GB"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic big:$PARTS --topic small:4
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }

echo "== generating and loading $N events (gen_events.py) into big, 100,000 into small"
cp "$REF/gen_events.py" "$BENCH/"
pe_as_user /usr/bin/python3 "$BENCH/gen_events.py" "$N" 10000 "$BENCH/big.txt"
pe_as_user /usr/bin/python3 "$BENCH/gen_events.py" 100000 10000 "$BENCH/small.txt"
bench_load "$BENCH/big.txt" big "$PARTS" "$N"
bench_load "$BENCH/small.txt" small 4 100000
rm -f "$BENCH/big.txt"

COLS="device text PRIMARY KEY, id bigint NOT NULL, ts timestamptz NOT NULL, temp double precision, note text"
psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP');
CREATE TABLE dev_small ($COLS);
CREATE TABLE dev_big ($COLS);
SQL

# run NAME TOPIC TABLE COUNT: peak RssAnon (kB) of the slot worker, seconds
run() {
	local name=$1 topic=$2 table=$3 count=$4 peak=0 rss pid done_n t0 i=0
	t0=$(date +%s.%N)
	psql_b -c "SELECT pipeline.create_consumer('$name', 'bench', '$topic', '$table', parallelism => 1)" >/dev/null
	while :; do
		for pid in $(pgrep -f "pipeline_ext consumer $name/" || true); do
			rss=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
			[ "${rss:-0}" -gt "$peak" ] && peak=$rss
		done
		# /proc every 0.1 s, a psql every second
		if [ $((i++ % 10)) -eq 0 ]; then
			done_n=$(psql_b -At -c "SELECT coalesce(sum(messages), 0) FROM pipeline._slots() WHERE consumer = '$name'")
			[ "$done_n" -ge "$count" ] && break
		fi
		sleep 0.1
	done
	echo "$peak $(echo "$(date +%s.%N) - $t0" | bc)"
}

echo "== one upsert slot, 100,000 waiting (the baseline)"
read -r small_kb small_s < <(run c_small small dev_small 100000)
echo "== one upsert slot, $N waiting"
read -r big_kb big_s < <(run c_big big dev_big "$N")

echo
echo "== results: one upsert slot worker, peak private memory (RssAnon), test broker"
printf '%-34s %12s %10s\n' "backlog when it starts" "peak MB" "seconds"
printf '%-34s %12s %10s\n' "100,000 messages (4 partitions)" "$((small_kb / 1024))" "$small_s"
printf '%-34s %12s %10s\n' "$N messages ($PARTS partitions)" "$((big_kb / 1024))" "$big_s"
echo "ratio $N / 100,000 waiting: $(echo "scale=2; $big_kb / $small_kb" | bc)x; target: under 100 MB with 10,000,000 waiting ($((big_kb / 1024)) MB)"

#!/usr/bin/env bash
# Consumer throughput benchmark (not a test): loads N JSON messages (about
# 130 bytes, 10,000 keys) into the test broker and measures messages per
# second, from the start to all committed, for
#   1. pipeline_ext upsert (one slot)
#   2. pipeline_ext append (one slot)
#   3. a Python consumer of the kind users write today (bench/python_consumer.py)
#   4. INSERT ... SELECT ... ON CONFLICT from a staging table, in batches of
#      the same size (PostgreSQL's own ceiling for this upsert)
# and prints each rate and the ratios, plus the slot worker's peak private
# memory while a million messages wait.
#
#   sudo bash bench/consume.sh            N = 1,000,000
#   N=200000 sudo -E bash bench/consume.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

N=${N:-1000000}
PARTS=${PARTS:-48}          # ~21k messages (~3 MB) per partition: inside the mock's retention
BATCH=5000

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55433}
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
max_worker_processes = 16"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic bench:$PARTS
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }
now() { date +%s.%N; }

COLS="id int PRIMARY KEY, device text, temp float8, ts timestamptz, seq bigint, status text, note text"
psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP', '{"linger.ms": 20}');
CREATE TABLE bench_up ($COLS);
CREATE TABLE bench_app (id int, device text, temp float8, ts timestamptz, seq bigint, status text, note text);
CREATE TABLE bench_py ($COLS);
CREATE TABLE bench_up2 ($COLS);
CREATE TABLE bench_stage_up ($COLS);
CREATE UNLOGGED TABLE stage AS
SELECT g AS seq, g % 10000 AS id, 'd-' || (g % 10000) AS device, round((20 + 10 * sin(g))::numeric, 2)::float8 AS temp,
       timestamptz '2026-11-24 10:00:00+00' + g * interval '1 ms' AS ts, CASE WHEN g % 97 = 0 THEN 'alarm' ELSE 'ok' END AS status,
       left(md5(g::text), 5) AS note
  FROM generate_series(1, $N) g;
CREATE INDEX ON stage (seq);
SQL

echo "== loading $N messages into $PARTS partitions"
t0=$(now)
psql_b -c "SELECT count(pipeline.produce_async('bench', 'bench', json_build_object('id', id, 'device', device, 'temp', temp,
             'ts', ts, 'seq', seq, 'status', status, 'note', note)::text, id::text)) FROM stage"
t1=$(now)
avg=$(kcat -C -b "$BOOTSTRAP" -t bench -p 0 -c 100 -e -q -f '%S\n' | awk '{s+=$1} END {printf "%d", s/NR}')
echo "   loaded in $(echo "$t1 - $t0" | bc) s; average message $avg bytes"
held=$(/usr/bin/python3 - "$BOOTSTRAP" "$PARTS" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "bench-check"})
print(sum(h - l for l, h in (c.get_watermark_offsets(TopicPartition("bench", p), timeout=10)
                             for p in range(int(sys.argv[2])))))
PY
)
if [ "$held" -ne "$N" ]; then
	echo "the broker holds $held of $N messages (the mock's retention is ~5 MiB per partition): raise PARTS" >&2
	exit 1
fi

# run_consumer NAME MODE TABLE SLOTS: seconds from create_consumer to all N
# committed, and the peak private memory (RssAnon) of one slot worker
run_consumer() {
	local name=$1 mode=$2 table=$3 slots=$4 start end pid peak=0 rss
	start=$(now)
	psql_b -c "SELECT pipeline.create_consumer('$name', 'bench', 'bench', '$table', mode => '$mode', parallelism => $slots)" >/dev/null
	while :; do
		done_n=$(psql_b -At -c "SELECT coalesce(sum(messages), 0) FROM pipeline._slots() WHERE consumer = '$name'")
		for pid in $(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = '$name' AND pid IS NOT NULL"); do
			[ -r /proc/$pid/status ] || continue
			rss=$(awk '/^RssAnon:/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
			[ "${rss:-0}" -gt "$peak" ] && peak=$rss
		done
		[ "$done_n" -ge "$N" ] && break
		sleep 0.05
	done
	end=$(now)
	psql_b -c "SELECT pipeline.stop_consumer('$name')" >/dev/null
	echo "$(echo "$end - $start" | bc) $peak"
}

echo "== pipeline_ext upsert, 1 slot"
read -r up_s up_mem < <(run_consumer b_up upsert bench_up 1)
echo "== pipeline_ext append, 1 slot"
read -r app_s app_mem < <(run_consumer b_app append bench_app 1)
echo "== pipeline_ext upsert, 2 slots"
read -r up2_s up2_mem < <(run_consumer b_up2 upsert bench_up2 2)

echo "== Python consumer (confluent-kafka + psycopg2, batches of $BATCH)"
py_s=$(pe_as_user /usr/bin/python3 "$BENCH/bench/python_consumer.py" "$BOOTSTRAP" bench \
	"host=$BENCH port=$PORT user=postgres dbname=postgres" "$N")

echo "== INSERT ... SELECT ... ON CONFLICT from a staging table, batches of $BATCH"
psql_b <<SQL
CREATE PROCEDURE stage_load(n bigint, b int) LANGUAGE plpgsql AS \$\$
DECLARE lo bigint := 1;
BEGIN
  WHILE lo <= n LOOP
    INSERT INTO bench_stage_up
    SELECT DISTINCT ON (id) id, device, temp, ts, seq, status, note FROM stage
     WHERE seq >= lo AND seq < lo + b ORDER BY id, seq DESC
    ON CONFLICT (id) DO UPDATE SET device = EXCLUDED.device, temp = EXCLUDED.temp, ts = EXCLUDED.ts,
        seq = EXCLUDED.seq, status = EXCLUDED.status, note = EXCLUDED.note;
    COMMIT;
    lo := lo + b;
  END LOOP;
END \$\$;
SQL
t0=$(now)
psql_b -c "CALL stage_load($N, $BATCH)"
st_s=$(echo "$(now) - $t0" | bc)

same=$(psql_b -At -c "SELECT (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_up)
                           = (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_stage_up)
                       AND (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_py)
                           = (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_stage_up)
                       AND (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_up2)
                           = (SELECT md5(string_agg(id||':'||seq, ',' ORDER BY id)) FROM bench_stage_up)
                       AND (SELECT count(*) FROM bench_app) = $N")

rate() { echo "scale=0; $N / $1" | bc; }
up_r=$(rate "$up_s"); app_r=$(rate "$app_s"); py_r=$(rate "$py_s"); st_r=$(rate "$st_s"); up2_r=$(rate "$up2_s")
echo
echo "== results: $N messages of ~$avg bytes, 10,000 keys, $PARTS partitions"
printf '%-46s %10s msg/s  (%6.2f s)\n' "pipeline_ext upsert (1 slot)" "$up_r" "$up_s"
printf '%-46s %10s msg/s  (%6.2f s)\n' "pipeline_ext append (1 slot)" "$app_r" "$app_s"
printf '%-46s %10s msg/s  (%6.2f s)\n' "pipeline_ext upsert (2 slots)" "$up2_r" "$up2_s"
printf '%-46s %10s msg/s  (%6.2f s)\n' "Python consumer (confluent-kafka + psycopg2)" "$py_r" "$py_s"
printf '%-46s %10s msg/s  (%6.2f s)\n' "staging table INSERT ... ON CONFLICT" "$st_r" "$st_s"
echo "upsert / Python consumer:  1 slot $(echo "scale=2; $up_r / $py_r" | bc)x, 2 slots $(echo "scale=2; $up2_r / $py_r" | bc)x   (target >= 4x)"
echo "upsert / staging table:    1 slot $(echo "scale=0; 100 * $up_r / $st_r" | bc)%, 2 slots $(echo "scale=0; 100 * $up2_r / $st_r" | bc)%   (target >= 60%)"
echo "append / staging table:    1 slot $(echo "scale=0; 100 * $app_r / $st_r" | bc)%"
echo "slot worker peak private memory (RssAnon), $N messages waiting: upsert $((up_mem / 1024)) MB, append $((app_mem / 1024)) MB, 2-slot upsert $((up2_mem / 1024)) MB per worker (target < 100 MB)"
echo "all four results agree: $same"

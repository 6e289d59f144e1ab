#!/usr/bin/env bash
# Consumer throughput benchmark (not a test).  The data is the reference
# benchmark's (../shared/bench/gen_events.py: N keyed JSON events of about
# 130 bytes, 10,000 devices), loaded once into a topic of the test broker;
# then, in the same run, on the same scratch instance and data, each case
# from its start to all N committed:
#   1. pipeline_ext upsert into devices, defaults (parallelism 'auto')
#   2. pipeline_ext upsert, 1 slot
#   3. pipeline_ext upsert, 2 slots
#   4. pipeline_ext append (defaults)
#   5. the reference peer (../shared/bench/reference_peer.py: the consumer
#      users write, confluent-kafka + psycopg2), from its first message
#   6. server-side COPY of the same rows into a table without keys (the
#      append ceiling)
#   7. INSERT ... SELECT DISTINCT ON ... ON CONFLICT from a staging table, in
#      batches of the peer's shape (5,000; the upsert ceiling)
# pipeline_ext is timed from create_consumer, its slot's start-up included,
# and also after its first commit (the messages after it, over the time after
# it), since the peer times itself from its first message.
# For each: msgs/s, and CPU-seconds per million messages of the whole system
# (every process of the PostgreSQL instance, plus the peer's own process).
# Then the ratios against the peer and the ceilings, whether every upsert
# table equals the data's last event per device, and one slot worker's peak
# private memory.
#
#   sudo bash bench/consume.sh               N = 200,000 over 6 partitions
#   N=400000 PARTS=12 sudo -E bash bench/consume.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

N=${N:-200000}
PARTS=${PARTS:-6}           # the test broker keeps about 5 MB per partition
REF=${REF:-$PE_ROOT/../shared/bench}
[ -x "$REF/reference_peer.py" ] && [ -x "$REF/gen_events.py" ] ||
	{ echo "the reference inputs are not in $REF (set REF)" >&2; exit 1; }

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55433}
# the reference peer connects through /tmp
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
max_worker_processes = 16
unix_socket_directories = '$BENCH,/tmp'"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic events:$PARTS
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d bench "$@"; }
now() { date +%s.%N; }
pe_as_user psql -X -q -h "$BENCH" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE bench"

echo "== generating $N events (gen_events.py) and loading them"
cp "$REF/gen_events.py" "$REF/reference_peer.py" "$BENCH/"
pe_as_user /usr/bin/python3 "$BENCH/gen_events.py" "$N" 10000 "$BENCH/events.txt"
kcat -P -b "$BOOTSTRAP" -t events -K$'\t' -l "$BENCH/events.txt"
held=$(/usr/bin/python3 - "$BOOTSTRAP" "$PARTS" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "bench-check"})
print(sum(h - l for l, h in (c.get_watermark_offsets(TopicPartition("events", p), timeout=10)
                             for p in range(int(sys.argv[2])))))
PY
)
if [ "$held" -ne "$N" ]; then
	echo "the broker holds $held of $N messages (the test broker keeps about 5 MB per partition): raise PARTS" >&2
	exit 1
fi
avg=$(awk -F'\t' '{s += length($2)} END {printf "%d", s / NR}' "$BENCH/events.txt")

COLS="device text PRIMARY KEY, id bigint NOT NULL, ts timestamptz NOT NULL, temp double precision, note text"
psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP');
CREATE TABLE devices ($COLS);                 -- the reference peer's
CREATE TABLE dev_auto ($COLS);
CREATE TABLE dev_1 ($COLS);
CREATE TABLE dev_2 ($COLS);
CREATE TABLE dev_stage ($COLS);
CREATE TABLE ev_app (device text, id bigint, ts timestamptz, temp double precision, note text);
CREATE TABLE ev_copy (device text, id bigint, ts timestamptz, temp double precision, note text);
CREATE TABLE expected (device text PRIMARY KEY, id bigint);
CREATE UNLOGGED TABLE raw (seq bigserial, line text);
SQL
# (untimed) the same rows as a file for COPY, and a staging table in order
awk -F'\t' '{print $2}' "$BENCH/events.txt" > "$BENCH/events.json"
chown "$(pe_run_user)" "$BENCH/events.json" 2>/dev/null || true
psql_b <<SQL
\copy raw (line) FROM '$BENCH/events.json' WITH (FORMAT text)
\copy expected FROM '$BENCH/events.txt.expected'
CREATE UNLOGGED TABLE stage AS
SELECT seq, r.* FROM raw, jsonb_populate_record(NULL::ev_app, line::jsonb) r;
CREATE INDEX ON stage (seq);
COPY (SELECT device, id, ts, temp, note FROM stage ORDER BY seq) TO '$BENCH/events.copy';
SQL

# CPU-seconds so far of every process of the instance (the postmaster
# collects those of exited children)
instance_cpu() {
	local pm hz=$(getconf CLK_TCK)
	pm=$(head -1 "$PE_SCRATCH_DATA/postmaster.pid")
	{ awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
	  for c in $(pgrep -P "$pm"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
	} | awk -v hz="$hz" '{s += $1} END {printf "%.2f", s / hz}'
}

# run_consumer NAME MODE TABLE PARALLELISM: seconds from create_consumer to
# all N committed, CPU-seconds, and one slot worker's peak RssAnon (kB)
run_consumer() {
	local name=$1 mode=$2 table=$3 par=$4 start end cpu0 cpu1 pid peak=0 rss done_n first= first_n=0
	cpu0=$(instance_cpu)
	start=$(now)
	psql_b -c "SELECT pipeline.create_consumer('$name', 'bench', 'events', '$table', mode => '$mode' $par)" >/dev/null
	while :; do
		done_n=$(psql_b -At -c "SELECT coalesce(sum(messages), 0) FROM pipeline._slots() WHERE consumer = '$name'")
		for pid in $(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = '$name' AND pid IS NOT NULL"); do
			rss=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
			[ "${rss:-0}" -gt "$peak" ] && peak=$rss
		done
		[ -z "$first" ] && [ "$done_n" -gt 0 ] && { first=$(now); first_n=$done_n; }
		[ "$done_n" -ge "$N" ] && break
		sleep 0.02
	done
	end=$(now)
	psql_b -At -c "SELECT '   slots ' || count(*) || ', batches ' || sum(batches) || ', average batch '
	                      || round(sum(messages)::numeric / nullif(sum(batches), 0)) || ', first commit after '
	                      || round($first - $start, 2) || ' s'
	                 FROM pipeline._slots() WHERE consumer = '$name'" >&2
	cpu1=$(instance_cpu)
	slots=$(psql_b -At -c "SELECT count(*) FROM pipeline._slots() WHERE consumer = '$name'")
	psql_b -c "SELECT pipeline.stop_consumer('$name')" >/dev/null
	# steady: the messages after the first commit seen, over the time after it
	echo "$(echo "$end - $start" | bc) $(echo "$cpu1 - $cpu0" | bc) $peak $slots $(echo "scale=0; ($N - $first_n) / ($end - $first)" | bc)"
}

echo "== pipeline_ext upsert, defaults"
read -r auto_s auto_cpu auto_mem auto_slots auto_ss < <(run_consumer c_auto upsert dev_auto "")
echo "   $auto_slots slots"
echo "== pipeline_ext upsert, 1 slot"
read -r one_s one_cpu one_mem _ one_ss < <(run_consumer c_1 upsert dev_1 ", parallelism => 1")
echo "== pipeline_ext upsert, 2 slots"
read -r two_s two_cpu two_mem _ two_ss < <(run_consumer c_2 upsert dev_2 ", parallelism => 2")
echo "== pipeline_ext append, defaults"
read -r app_s app_cpu app_mem _ app_ss < <(run_consumer c_app append ev_app "")

echo "== the reference peer (confluent-kafka + psycopg2)"
cpu0=$(instance_cpu)
peer=$(cd "$BENCH" && pe_as_user env P1_TOPIC=events P1_PGPORT="$PORT" P1_DB=bench \
	/usr/bin/python3 "$BENCH/reference_peer.py" "$BOOTSTRAP" "$N" bench-peer)
cpu1=$(instance_cpu)
peer_s=$(echo "$peer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["t_from_first"])')
peer_client=$(echo "$peer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_cpu"])')
peer_cpu=$(echo "$cpu1 - $cpu0 + $peer_client" | bc)
echo "   $peer"

echo "== COPY of the same rows (append ceiling)"
cpu0=$(instance_cpu)
t0=$(now)
psql_b -c "COPY ev_copy FROM '$BENCH/events.copy'"
copy_s=$(echo "$(now) - $t0" | bc)
copy_cpu=$(echo "$(instance_cpu) - $cpu0" | bc)

echo "== INSERT ... SELECT ... ON CONFLICT from the staging table, batches of 5,000 (upsert ceiling)"
psql_b <<'SQL'
CREATE PROCEDURE stage_load(n bigint, b int) LANGUAGE plpgsql AS $$
DECLARE lo bigint := 1;
BEGIN
  WHILE lo <= n LOOP
    INSERT INTO dev_stage
    SELECT DISTINCT ON (device) device, id, ts, temp, note FROM stage
     WHERE seq >= lo AND seq < lo + b AND id IS NOT NULL ORDER BY device, seq DESC
    ON CONFLICT (device) DO UPDATE SET id = EXCLUDED.id, ts = EXCLUDED.ts, temp = EXCLUDED.temp, note = EXCLUDED.note;
    COMMIT;
    lo := lo + b;
  END LOOP;
END $$;
SQL
cpu0=$(instance_cpu)
t0=$(now)
psql_b -c "CALL stage_load($N, 5000)"
st_s=$(echo "$(now) - $t0" | bc)
st_cpu=$(echo "$(instance_cpu) - $cpu0" | bc)

check() { psql_b -At -c "SELECT count(*) = (SELECT count(*) FROM expected)
                               AND NOT EXISTS (SELECT FROM expected e LEFT JOIN $1 t USING (device)
                                               WHERE t.id IS DISTINCT FROM e.id) FROM $1"; }

rate() { echo "scale=0; $N / $1" | bc; }
cpm() { echo "scale=1; $1 * 1000000 / $N" | bc; }
r_auto=$(rate "$auto_s"); r_one=$(rate "$one_s"); r_two=$(rate "$two_s"); r_app=$(rate "$app_s")
r_peer=$(rate "$peer_s"); r_copy=$(rate "$copy_s"); r_st=$(rate "$st_s")
echo
echo "== results: $N events of ~$avg bytes (gen_events.py), 10,000 devices, $PARTS partitions, test broker"
printf '%-52s %10s %12s %16s %18s\n' "case" "msgs/s" "seconds" "CPU s / M msgs" "after 1st commit"
printf '%-52s %10s %12s %16s %18s\n' "pipeline_ext upsert, defaults ($auto_slots slots)" "$r_auto" "$auto_s" "$(cpm "$auto_cpu")" "$auto_ss"
printf '%-52s %10s %12s %16s %18s\n' "pipeline_ext upsert, 1 slot" "$r_one" "$one_s" "$(cpm "$one_cpu")" "$one_ss"
printf '%-52s %10s %12s %16s %18s\n' "pipeline_ext upsert, 2 slots" "$r_two" "$two_s" "$(cpm "$two_cpu")" "$two_ss"
printf '%-52s %10s %12s %16s %18s\n' "pipeline_ext append, defaults" "$r_app" "$app_s" "$(cpm "$app_cpu")" "$app_ss"
printf '%-52s %10s %12s %16s\n' "reference peer (from its first message)" "$r_peer" "$peer_s" "$(cpm "$peer_cpu")"
printf '%-52s %10s %12s %16s\n' "COPY of the same rows" "$r_copy" "$copy_s" "$(cpm "$copy_cpu")"
printf '%-52s %10s %12s %16s\n' "staging INSERT ... ON CONFLICT, batches of 5,000" "$r_st" "$st_s" "$(cpm "$st_cpu")"
echo
echo "upsert / reference peer: defaults $(echo "scale=2; $r_auto / $r_peer" | bc)x (target >= 4x), 1 slot $(echo "scale=2; $r_one / $r_peer" | bc)x, 2 slots $(echo "scale=2; $r_two / $r_peer" | bc)x (target >= 5x)"
echo "   after pipeline_ext's first commit (its start-up left out, as the peer's is): defaults $(echo "scale=2; $auto_ss / $r_peer" | bc)x, 1 slot $(echo "scale=2; $one_ss / $r_peer" | bc)x, 2 slots $(echo "scale=2; $two_ss / $r_peer" | bc)x; append / COPY $(echo "scale=0; 100 * $app_ss / $r_copy" | bc)%"
echo "CPU per message, reference peer / pipeline_ext upsert defaults: $(echo "scale=2; $peer_cpu / $auto_cpu" | bc)x (target >= 4x)"
echo "append / COPY: $(echo "scale=0; 100 * $r_app / $r_copy" | bc)% (target >= 70%)"
echo "upsert defaults / staging upsert: $(echo "scale=0; 100 * $r_auto / $r_st" | bc)%"
echo "slot worker peak private memory (RssAnon): defaults $((auto_mem / 1024)) MB, 1 slot $((one_mem / 1024)) MB, append $((app_mem / 1024)) MB"
echo "tables equal the last event per device: defaults $(check dev_auto), 1 slot $(check dev_1), 2 slots $(check dev_2), peer $(check devices), staging $(check dev_stage); append rows $(psql_b -At -c 'SELECT count(*) FROM ev_app') of $N"

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
# Every case is timed as the peer times itself: from its first message (for
# pipeline_ext, the start of its first batch, when that batch's messages are
# in hand) to all N committed; pipeline_ext also from create_consumer, its
# slot's start-up included.
# For each: msgs/s, and CPU-seconds per million messages of the whole system
# (every process of the PostgreSQL instance, plus the peer's own process).
# The cases run in rounds (ROUNDS, 3 by default), each round on fresh tables
# after a CHECKPOINT, and the median of each case is printed with every
# round's figures: single runs on a shared VM vary by up to a factor of two.
# Then the ratios against the peer and the ceilings, whether every upsert
# table equals the data's last event per device, and one slot worker's peak
# private memory.
#
#   sudo bash bench/consume.sh               N = 1,000,000 over 40 partitions
#   N=200000 PARTS=6 sudo -E bash bench/consume.sh
#   BATCH_SIZE=200000 sudo -E bash bench/consume.sh   pipeline_ext's cases with another batch_size
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=${N:-1000000}
PARTS=${PARTS:-40}          # the test broker keeps about 5 MB per partition
ROUNDS=${ROUNDS:-3}          # each case this many times, the median printed
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
bench_load "$BENCH/events.txt" events "$PARTS" "$N"
avg=$(awk -F'\t' '{s += length($2)} END {printf "%d", s / NR}' "$BENCH/events.txt")

COLS="device text PRIMARY KEY, id bigint NOT NULL, ts timestamptz NOT NULL, temp double precision, note text"
# No autovacuum on the tables written: a million rows make a table due for
# it, and a VACUUM of one case's table would run during a later case and
# count in that case's time and CPU.
NOVAC="WITH (autovacuum_enabled = off)"
EVCOLS="device text, id bigint, ts timestamptz, temp double precision, note text"
psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP');
CREATE TABLE devices ($COLS) $NOVAC;         -- the reference peer's
CREATE TABLE ev_app ($EVCOLS);
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
# collects those of exited children, once it has reaped them: a backend
# whose psql just ended may not be yet, hence the pause)

# Waits in one backend (a psql per poll would fork a backend each time and
# count in the instance's CPU) until consumer C committed N messages.  The
# start is the first batch's start, when its messages are in hand, which
# is where the peer starts its own clock (its first message); the poller's
# own CPU is left out of the instance's.
bench_wait_function

# run_consumer NAME MODE TABLE PARALLELISM: seconds from the first batch to
# all N committed, CPU-seconds of the instance from create_consumer on,
# one slot worker's peak RssAnon (kB), the number of slots, and seconds
# from create_consumer
run_consumer() {
	local name=$1 mode=$2 table=$3 par=$4 start end cpu0 cpu1 peak out
	cpu0=$(instance_cpu)
	start=$(now)
	psql_b -c "SELECT pipeline.create_consumer('$name', 'bench', 'events', '$table', mode => '$mode' $par${BATCH_SIZE:+, batch_size => $BATCH_SIZE})" >/dev/null
	out=$(psql_b -At -F' ' -c "CALL bench_wait('$name', $N, NULL, NULL, NULL, NULL)")
	read -r first end poller peak _ <<<"$out"
	psql_b -At -c "SELECT '   slots ' || count(*) || ', batches ' || sum(batches) || ', average batch '
	                      || round(sum(messages)::numeric / nullif(sum(batches), 0)) || ', first batch after '
	                      || round($first - $start, 2) || ' s'
	                 FROM pipeline._slots() WHERE consumer = '$name'" >&2
	cpu1=$(instance_cpu)
	slots=$(psql_b -At -c "SELECT count(*) FROM pipeline._slots() WHERE consumer = '$name'")
	psql_b -c "SELECT pipeline.stop_consumer('$name')" >/dev/null
	echo "$(echo "$end - $first" | bc) $(echo "$cpu1 - $cpu0 - $poller" | bc) $peak $slots $(echo "$end - $start" | bc)"
}

check() { psql_b -At -c "SELECT count(*) = (SELECT count(*) FROM expected)
                               AND NOT EXISTS (SELECT FROM expected e LEFT JOIN $1 t USING (device)
                                               WHERE t.id IS DISTINCT FROM e.id) FROM $1"; }

cat >"$BENCH/stage_load.sql" <<'SQL'
CREATE PROCEDURE stage_load(tab text, n bigint, b int) LANGUAGE plpgsql AS $$
DECLARE lo bigint := 1;
BEGIN
  WHILE lo <= n LOOP
    EXECUTE format('INSERT INTO %I
    SELECT DISTINCT ON (device) device, id, ts, temp, note FROM stage
     WHERE seq >= $1 AND seq < $1 + $2 AND id IS NOT NULL ORDER BY device, seq DESC
    ON CONFLICT (device) DO UPDATE SET id = EXCLUDED.id, ts = EXCLUDED.ts, temp = EXCLUDED.temp, note = EXCLUDED.note', tab)
    USING lo, b;
    COMMIT;
    lo := lo + b;
  END LOOP;
END $$;
SQL
psql_b -f "$BENCH/stage_load.sql"

# One line per case and round in $BENCH/results: case msgs/s CPU-s peak-kB
# slots msgs/s-from-create_consumer
: >"$BENCH/results"
record() { echo "$1 $(echo "scale=0; $N / $2" | bc) $(printf %.2f "$3") ${4:-0} ${5:-0} ${6:+$(echo "scale=0; $N / $6" | bc)}" >>"$BENCH/results"; }
# consumer_case KEY TITLE NAME MODE TABLE PARALLELISM: one pipeline_ext case, recorded
consumer_case() {
	local s cpu mem slots cs
	echo "   $2"
	read -r s cpu mem slots cs < <(run_consumer "$3" "$4" "$5" "$6")
	record "$1" "$s" "$cpu" "$mem" "$slots" "$cs"
}
for r in $(seq "$ROUNDS"); do
	echo "== round $r of $ROUNDS"
	psql_b -c "CREATE TABLE dev_auto_$r ($COLS) $NOVAC; CREATE TABLE dev_1_$r ($COLS) $NOVAC; CREATE TABLE dev_2_$r ($COLS) $NOVAC;
	           CREATE TABLE dev_stage_$r ($COLS) $NOVAC; CREATE TABLE ev_app_$r ($EVCOLS) $NOVAC;
	           CREATE TABLE ev_copy_$r ($EVCOLS) $NOVAC; TRUNCATE devices; CHECKPOINT"
	consumer_case auto "pipeline_ext upsert, defaults" "c_auto_$r" upsert "dev_auto_$r" ""
	consumer_case one "pipeline_ext upsert, 1 slot" "c_1_$r" upsert "dev_1_$r" ", parallelism => 1"
	consumer_case two "pipeline_ext upsert, 2 slots" "c_2_$r" upsert "dev_2_$r" ", parallelism => 2"
	consumer_case app "pipeline_ext append, defaults" "c_app_$r" append "ev_app_$r" ""

	echo "   the reference peer (confluent-kafka + psycopg2)"
	cpu0=$(instance_cpu)
	peer=$(cd "$BENCH" && pe_as_user env P1_TOPIC=events P1_PGPORT="$PORT" P1_DB=bench \
		/usr/bin/python3 "$BENCH/reference_peer.py" "$BOOTSTRAP" "$N" "bench-peer-$r")
	cpu1=$(instance_cpu)
	echo "   $peer"
	peer_s=$(echo "$peer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["t_from_first"])')
	peer_client=$(echo "$peer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_cpu"])')
	record peer "$peer_s" "$(echo "$cpu1 - $cpu0 + $peer_client" | bc)"
	peer_ok=$(check devices)

	echo "   COPY of the same rows (append ceiling)"
	cpu0=$(instance_cpu)
	t0=$(now)
	psql_b -c "COPY ev_copy_$r FROM '$BENCH/events.copy'"
	record copy "$(echo "$(now) - $t0" | bc)" "$(echo "$(instance_cpu) - $cpu0" | bc)"

	echo "   INSERT ... SELECT ... ON CONFLICT from the staging table, batches of 5,000 (upsert ceiling)"
	cpu0=$(instance_cpu)
	t0=$(now)
	psql_b -c "CALL stage_load('dev_stage_$r', $N, 5000)"
	record stage "$(echo "$(now) - $t0" | bc)" "$(echo "$(instance_cpu) - $cpu0" | bc)"
done

# the median over the rounds of column K (2 msgs/s, 3 CPU-s, 4 peak kB,
# 5 slots, 6 msgs/s from create_consumer) of case C
med() { awk -v c="$1" -v k="$2" '$1 == c {print $k}' "$BENCH/results" | sort -g |
	awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
cpm() { echo "scale=1; $(med "$1" 3) * 1000000 / $N" | bc; }
ratio() { echo "scale=2; $1 / $2" | bc; }
row() { printf '%-52s %10s %16s %22s\n' "$1" "$(med "$2" 2)" "$(cpm "$2")" "${3:-}"; }
echo
echo "== results: $N events of ~$avg bytes (gen_events.py), 10,000 devices, $PARTS partitions, test broker,"
echo "   the median of $ROUNDS rounds; each case from its first message (pipeline_ext: the start of"
echo "   its first batch) to all N committed"
printf '%-52s %10s %16s %22s\n' "case" "msgs/s" "CPU s / M msgs" "from create_consumer"
row "pipeline_ext upsert, defaults ($(med auto 5) slots)" auto "$(med auto 6) msgs/s"
row "pipeline_ext upsert, 1 slot" one "$(med one 6) msgs/s"
row "pipeline_ext upsert, 2 slots" two "$(med two 6) msgs/s"
row "pipeline_ext append, defaults" app "$(med app 6) msgs/s"
row "reference peer" peer
row "COPY of the same rows" copy
row "staging INSERT ... ON CONFLICT, batches of 5,000" stage
echo
echo "every round (case msgs/s CPU-s peak-kB slots msgs/s-from-create_consumer):"
sed 's/^/   /' "$BENCH/results"
echo
echo "upsert / reference peer: defaults $(ratio "$(med auto 2)" "$(med peer 2)")x (target >= 4x), 1 slot $(ratio "$(med one 2)" "$(med peer 2)")x, 2 slots $(ratio "$(med two 2)" "$(med peer 2)")x (target >= 5x)"
echo "CPU per message, reference peer / pipeline_ext upsert defaults: $(ratio "$(med peer 3)" "$(med auto 3)")x (target >= 4x)"
echo "append / COPY: $(echo "scale=0; 100 * $(med app 2) / $(med copy 2)" | bc)% (target >= 70%)"
echo "upsert defaults / staging upsert: $(echo "scale=0; 100 * $(med auto 2) / $(med stage 2)" | bc)%"
echo "slot worker peak private memory (RssAnon): defaults $(( $(med auto 4 | cut -d. -f1) / 1024 )) MB, 1 slot $(( $(med one 4 | cut -d. -f1) / 1024 )) MB, append $(( $(med app 4 | cut -d. -f1) / 1024 )) MB"
ok=t
for r in $(seq "$ROUNDS"); do
	for tab in dev_auto_$r dev_1_$r dev_2_$r dev_stage_$r; do [ "$(check "$tab")" = t ] || { ok=f; echo "$tab differs from the data's last event per device"; }; done
	[ "$(psql_b -At -c "SELECT count(*) FROM ev_app_$r")" -eq "$N" ] || { ok=f; echo "ev_app_$r does not hold $N rows"; }
done
echo "every upsert table equals the last event per device, every append table holds N rows, the peer's too: $ok${peer_ok:+ (peer $peer_ok)}"

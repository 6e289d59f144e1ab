#!/usr/bin/env bash
# Hardening benchmark (not a test), issue 9 points 13 and 14:
#
#   1. memory: one upsert slot applies ROUNDS x ROUND messages (10 x 1,000,000
#      by default) while autovacuum vacuums its table every few seconds (each
#      vacuum sends the relcache invalidation that makes the worker describe
#      its target again).  The worker's private memory (RssAnon) is sampled
#      after every round; the baseline is the first round of the same run,
#      and the ratio last / first must stay near 1 (flat).
#   2. bad messages: the same BAD_N messages applied by two consumers in the
#      same run, into a table that accepts all of them (the baseline) and into
#      one whose CHECK constraint refuses 1 % of them (each a dead letter,
#      isolated by trials that are rolled back, the good rows applied in one
#      statement per batch); prints both rates and their ratio.
#
#   sudo bash bench/hardening.sh
#   ROUNDS=3 ROUND=500000 BAD_N=200000 sudo -E bash bench/hardening.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

ROUNDS=${ROUNDS:-10}
ROUND=${ROUND:-1000000}
BAD_N=${BAD_N:-500000}
PARTS=${PARTS:-48}          # ~21k messages (~3 MB) per partition per round: inside the mock's retention

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-hardening}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55434}
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
max_worker_processes = 16
autovacuum = on
autovacuum_naptime = 1s
autovacuum_vacuum_threshold = 1000
autovacuum_vacuum_scale_factor = 0
autovacuum_analyze_threshold = 1000
autovacuum_analyze_scale_factor = 0
log_autovacuum_min_duration = 0"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic mem:$PARTS --topic bad:$PARTS
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }
now() { date +%s.%N; }

psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP', '{"linger.ms": 20}');
CREATE TABLE devices (id int PRIMARY KEY, device text, temp float8, ts timestamptz, seq bigint, status text, note text);
CREATE TABLE bad_ok (id int, device text, temp float8, ts timestamptz, seq bigint, status text, note text);
CREATE TABLE bad_check (id int, device text, temp float8 CHECK (temp < 1000), ts timestamptz,
                        seq bigint, status text, note text);
SQL

# produce N messages of seq from..from+N-1 to topic T, 10,000 keys; every
# 100th has temp 5000 when BAD is set
produce() {
	local topic=$1 from=$2 n=$3 bad=${4:-0}
	psql_b -At -c "SELECT count(pipeline.produce_async('bench', '$topic',
	    json_build_object('id', g % 10000, 'device', 'd-' || (g % 10000),
	                      'temp', CASE WHEN $bad = 1 AND g % 100 = 42 THEN 5000 ELSE round((20 + 10 * sin(g))::numeric, 2) END,
	                      'ts', timestamptz '2026-11-24 10:00:00+00' + g * interval '1 ms', 'seq', g,
	                      'status', CASE WHEN g % 97 = 0 THEN 'alarm' ELSE 'ok' END, 'note', left(md5(g::text), 5))::text,
	    (g % 10000)::text)) FROM generate_series($from, $from + $n - 1) g" >/dev/null
}
applied() { psql_b -At -c "SELECT coalesce(sum(messages), 0) FROM pipeline._slots() WHERE consumer = '$1'"; }
# the worker's PostgreSQL memory (all its memory contexts), from
# pg_log_backend_memory_contexts(): what a leak of ours would grow
pg_mem_bytes() {
	local pid before
	pid=$(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = '$1' AND pid IS NOT NULL LIMIT 1")
	before=$(wc -l < "$BENCH/postgres.log")
	psql_b -At -c "SELECT pg_log_backend_memory_contexts($pid)" >/dev/null
	for _ in $(seq 50); do
		tail -n +"$((before + 1))" "$BENCH/postgres.log" | grep -q "\[$pid\] LOG:  Grand total" && break
		sleep 0.1
	done
	tail -n +"$((before + 1))" "$BENCH/postgres.log" | sed -n "s/.*\[$pid\] LOG:  Grand total: \([0-9]*\) bytes.*/\1/p" | tail -1
}
rss_kb() {
	local pid
	pid=$(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = '$1' AND pid IS NOT NULL LIMIT 1")
	awk '/^RssAnon:/ {print $2}' "/proc/$pid/status"
}

echo "== 1. memory: $ROUNDS rounds of $ROUND messages into one upsert slot, autovacuum every ~1 s"
psql_b -c "SELECT pipeline.create_consumer('mem', 'bench', 'mem', 'devices')" >/dev/null
declare -a RSS PGM
for r in $(seq 1 "$ROUNDS"); do
	produce mem $(( (r - 1) * ROUND + 1 )) "$ROUND"
	while [ "$(applied mem)" -lt $(( r * ROUND )) ]; do sleep 0.2; done
	RSS[$r]=$(rss_kb mem)
	PGM[$r]=$(pg_mem_bytes mem)
	vac=$(grep -cE 'automatic (aggressive )?(vacuum|analyze) of table "postgres.public.devices"' "$BENCH/postgres.log" || true)
	printf '   round %2d: %9d messages applied, worker RssAnon %6d kB, memory contexts %7d B, autovacuum/analyze runs on the table so far %d\n' \
		"$r" $(( r * ROUND )) "${RSS[$r]}" "${PGM[$r]}" "$vac"
done
psql_b -c "SELECT pipeline.stop_consumer('mem')" >/dev/null

echo "== 2. bad messages: $BAD_N messages, 1 % refused by a CHECK constraint"
produce bad 1 "$BAD_N" 1
run_consumer() {
	local name=$1 table=$2 start end
	start=$(now)
	psql_b -c "SELECT pipeline.create_consumer('$name', 'bench', 'bad', '$table', mode => 'append')" >/dev/null
	while [ "$(applied "$name")" -lt "$BAD_N" ]; do sleep 0.05; done
	end=$(now)
	psql_b -c "SELECT pipeline.stop_consumer('$name')" >/dev/null
	echo "$end - $start" | bc
}
ok_s=$(run_consumer b_ok bad_ok)
bad_s=$(run_consumer b_check bad_check)
dead=$(psql_b -At -c "SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'b_check'")
rows=$(psql_b -At -c "SELECT (SELECT count(*) FROM bad_ok) || ' / ' || (SELECT count(*) FROM bad_check)")
xmins=$(psql_b -At -c "SELECT count(DISTINCT xmin::text) || ' row versions from ' || (SELECT sum(batches) FROM pipeline._slots() WHERE consumer = 'b_check') || ' batches' FROM bad_check")

echo
echo "== results"
# the baseline: round 2 (round 1 also holds what librdkafka prefetched and
# the first allocations of everything); the figure: the largest after it
base_r=$(( ROUNDS >= 3 ? 2 : 1 )); base=${RSS[$base_r]}; top=0
for r in $(seq "$base_r" "$ROUNDS"); do [ "${RSS[$r]}" -gt "$top" ] && top=${RSS[$r]}; done
printf 'memory: worker RssAnon after round %d %d kB, largest after it %d kB (round %d: %d kB): ratio %s (flat: <= 1.10)\n' \
	"$base_r" "$base" "$top" "$ROUNDS" "${RSS[$ROUNDS]}" "$(echo "scale=3; $top / $base" | bc)"
printf 'memory: the worker'"'"'s memory contexts after round %d %d B, after round %d %d B: ratio %s (flat: <= 1.10)\n' \
	"$base_r" "${PGM[$base_r]}" "$ROUNDS" "${PGM[$ROUNDS]}" "$(echo "scale=3; ${PGM[$ROUNDS]} / ${PGM[$base_r]}" | bc)"
printf 'bad messages: all accepted %.2f s (%d msg/s), 1 %% refused %.2f s (%d msg/s): ratio %s\n' \
	"$ok_s" "$(echo "$BAD_N / $ok_s" | bc)" "$bad_s" "$(echo "$BAD_N / $bad_s" | bc)" "$(echo "scale=2; $ok_s / $bad_s" | bc)"
echo "   dead letters $dead (expected $((BAD_N / 100))); rows (10,000 keys, append) accepted / checked: $rows"
echo "   subtransactions kept in the checked table: $xmins"

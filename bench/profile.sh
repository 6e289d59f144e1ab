#!/usr/bin/env bash
# Where one slot's time goes (not a test): loads N events of the reference
# data (../shared/bench/gen_events.py) into the test broker, starts one
# upsert slot and records it with perf (Debian's linux-perf) until all N
# are committed; prints the top of the profile, by symbol and by library.
#
#   sudo bash bench/profile.sh               N = 200,000
#   MODE=append N=400000 PARTS=12 sudo -E bash bench/profile.sh
#   AGG='1 day' MODE=append sudo -E bash bench/profile.sh   with an aggregate
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

N=${N:-200000}
PARTS=${PARTS:-6}
MODE=${MODE:-upsert}
REF=${REF:-$PE_ROOT/../shared/bench}
command -v perf >/dev/null || pe_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null

pe_setup
BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-profile}
pe_workdir "$BENCH"
PORT=${PE_BENCH_PORT:-55435}
PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
${PROFILE_CONF:-}"
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic events:$PARTS
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d postgres "$@"; }

cp "$REF/gen_events.py" "$BENCH/"
pe_as_user /usr/bin/python3 "$BENCH/gen_events.py" "$N" 10000 "$BENCH/events.txt"
kcat -P -b "$BOOTSTRAP" -t events -K$'\t' -l "$BENCH/events.txt"
psql_b <<SQL
CREATE EXTENSION pipeline_ext;
SELECT pipeline.create_connection('bench', '$BOOTSTRAP');
CREATE TABLE devices (device text $( [ "$MODE" = upsert ] && echo PRIMARY KEY ), id bigint NOT NULL,
                      ts timestamptz NOT NULL, temp double precision, note text);
SELECT pipeline.create_consumer('prof', 'bench', 'events', 'devices', mode => '$MODE', parallelism => 1, start => false);
SQL
# AGG='1 day': with one aggregate of five functions of temp per device and window
[ -n "${AGG:-}" ] && psql_b -c "SELECT pipeline.create_aggregate('prof_agg', 'prof', '$AGG', 'ts',
    ARRAY['count(*)', 'sum(temp)', 'avg(temp)', 'min(temp)', 'max(temp)'], ARRAY['device'], lateness => '1 day')" >/dev/null
psql_b -c "SELECT pipeline.start_consumer('prof')" >/dev/null
pid=
until [ -n "$pid" ]; do pid=$(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = 'prof' AND pid IS NOT NULL"); sleep 0.05; done
perf record -F "${FREQ:-999}" -g -p "$pid" -o "$BENCH/perf.data" 2>/dev/null &
rec=$!
until [ "$(psql_b -At -c "SELECT coalesce(sum(messages), 0) FROM pipeline._slots() WHERE consumer = 'prof'")" -ge "$N" ]; do sleep 0.05; done
kill -INT "$rec"; wait "$rec" 2>/dev/null || true
if [ -n "${AGG:-}" ]; then
	echo "== the aggregate's results table"
	psql_b -c "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, pg_size_pretty(pg_relation_size(relid)) AS heap,
	                  pg_size_pretty(pg_indexes_size(relid)) AS indexes, (SELECT batch_ms FROM pipeline.aggregates) AS last_batch_ms
	             FROM pg_stat_user_tables WHERE relname = 'prof_agg'"
fi
echo "== top symbols (self), one $MODE slot, $N events"
perf report -i "$BENCH/perf.data" --stdio --no-children --sort symbol -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
echo "== by library"
perf report -i "$BENCH/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12

#!/usr/bin/env bash
# Avro benchmark (not a test), on a scratch instance, the test broker and
# the test registry: the reference data (../shared/bench/gen_events.py: N
# keyed events over 10,000 devices) as JSON, and the same records as Avro
# in the registry's wire format (written by python3-avro), consumed into
# the same kind of `devices` table (upsert by device) one after the other,
# ROUNDS interleaved rounds (each format first in every other one), each timed from its first batch to all N
# applied.  Prints both rates (medians), Avro's over JSON's (target: at
# least 1), and how many times the registry was asked for a schema by id
# (target: once per schema id and slot start, not per message).
#
#   sudo bash bench/avro.sh                  N = 300,000, 3 rounds
#   N=1000000 PARTS=40 sudo -E bash bench/avro.sh
#   PERF=1 sudo -E bash bench/avro.sh        and record each format's first slot with perf
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=${N:-300000}
PARTS=${PARTS:-20}          # the test broker keeps about 5 MB per partition
ROUNDS=${ROUNDS:-3}

bench_throughput_scratch avro 55438
pe_scratch "$BENCH" "$PORT" --brokers 1 --topic events_json:$PARTS --topic events_avro:$PARTS
pe_as_user /usr/bin/python3 "$BENCH/test/registry/pe_registry.py" --info-file "$BENCH/registry.info" >"$BENCH/registry.log" 2>&1 &
REGISTRY_PID=$!
trap 'kill $REGISTRY_PID 2>/dev/null; pe_scratch_stop' EXIT
for _ in $(seq 50); do [ -s "$BENCH/registry.info" ] && break; sleep 0.1; done
REGISTRY=$(sed -n 's/^url=//p' "$BENCH/registry.info")
REGISTRY_CONTROL=$(sed -n 's/^control=//p' "$BENCH/registry.info")
registry_ctl() { /usr/bin/python3 -c 'import socket, sys
h, p = sys.argv[1].split(":"); s = socket.create_connection((h, int(p))); s.sendall((sys.argv[2] + "\n").encode())
print(s.makefile().readline().strip())' "$REGISTRY_CONTROL" "$1"; }
psql_b() { pe_as_user psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH" -p "$PORT" -U postgres -d bench "$@"; }
pe_as_user psql -X -q -h "$BENCH" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE bench"

echo "== generating $N events (gen_events.py), loading them as JSON and as Avro"
cp "$REF/gen_events.py" "$BENCH/"
pe_as_user /usr/bin/python3 "$BENCH/gen_events.py" "$N" 10000 "$BENCH/events.txt"
# both topics by the same producer, so that the broker holds them alike
pe_as_user /usr/bin/python3 - "$REGISTRY" "$BOOTSTRAP" "$BENCH/events.txt" <<'PY'
import datetime, io, json, struct, sys
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, bootstrap, path = sys.argv[1:4]
text = json.dumps({"type": "record", "name": "Event", "fields": [
    {"name": "id", "type": "long"}, {"name": "device", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "temp", "type": "double"}, {"name": "note", "type": "string"}]})
sid = SchemaRegistryClient({"url": url}).register_schema("events_avro-value", Schema(text, "AVRO"))
writer = avro.io.DatumWriter(avro.schema.parse(text))
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "queue.buffering.max.messages": 1000000})
for line in open(path):
    key, value = line.rstrip("\n").split("\t", 1)
    r = json.loads(value)
    r["ts"] = datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    writer.write(r, avro.io.BinaryEncoder(buf))
    for topic, v in (("events_json", value.encode()), ("events_avro", buf.getvalue())):
        while True:
            try:
                p.produce(topic, key=key.encode(), value=v)
                break
            except BufferError:
                p.poll(0.1)
    p.poll(0)
p.flush(120)
PY
bench_held events_json "$PARTS" "$N"
bench_held events_avro "$PARTS" "$N"
psql_b -c "CREATE EXTENSION pipeline_ext; SELECT pipeline.create_connection('bench', '$BOOTSTRAP',
           '{\"schema.registry.url\": \"$REGISTRY\"}')" >/dev/null
bench_wait_function
registry_ctl "count /schemas/ids/" >/dev/null

COLS="device text PRIMARY KEY, id bigint NOT NULL, ts timestamptz NOT NULL, temp double precision, note text"
: >"$BENCH/results"
starts=0
run_case() {
	local fmt=$1 r=$2 t=${1}_$2 out first end
	psql_b -c "CREATE TABLE $t ($COLS) WITH (autovacuum_enabled = off)"
	psql_b -c "SELECT pipeline.create_consumer('$t', 'bench', 'events_$fmt', '$t', format => '$fmt')" >/dev/null
	if [ -n "${PERF:-}" ] && [ "$r" = 1 ]; then
		# PERF=1: record the slot of each format's first round with perf (perf-json.data, perf-avro.data)
		local pid=
		until [ -n "$pid" ]; do pid=$(psql_b -At -c "SELECT pid FROM pipeline._slots() WHERE consumer = '$t' AND pid IS NOT NULL"); done
		perf record -F 999 -g -p "$pid" -o "$BENCH/perf-$fmt.data" 2>/dev/null &
		PERF_PID=$!
	fi
	out=$(psql_b -At -F' ' -c "CALL bench_wait('$t', $N, NULL, NULL, NULL, NULL)")
	if [ -n "${PERF:-}" ] && [ "$r" = 1 ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
	read -r first end _ <<<"$out"
	[ -n "${VERBOSE:-}" ] && psql_b -At -c "SELECT '   $t: ' || sum(batches) || ' batches' FROM pipeline._slots() WHERE consumer = '$t'"
	psql_b -c "SELECT pipeline.stop_consumer('$t')" >/dev/null
	echo "$fmt $(echo "scale=0; $N / ($end - $first)" | bc)" >>"$BENCH/results"
	[ "$(psql_b -At -c "SELECT count(*) FROM $t")" = 10000 ] || { echo "$t does not have the 10,000 devices" >&2; exit 1; }
}
for r in $(seq "$ROUNDS"); do
	echo "== round $r of $ROUNDS"
	# (each format goes first in every other round: the second of a pair runs while the first's writes are flushed)
	if [ $((r % 2)) = 1 ]; then run_case json "$r"; run_case avro "$r"; else run_case avro "$r"; run_case json "$r"; fi
	starts=$((starts + 1))
done
# every Avro row equals the JSON row of its device
diff=$(psql_b -At -c "SELECT count(*) FROM json_1 j FULL JOIN avro_1 a USING (device)
                      WHERE (j.id, j.ts, j.temp, j.note) IS DISTINCT FROM (a.id, a.ts, a.temp, a.note)")
[ "$diff" = 0 ] || { echo "$diff devices differ between the JSON and the Avro table" >&2; exit 1; }

median() { awk -v k="$1" '$1 == k {print $2}' "$BENCH/results" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
asked=$(registry_ctl "count /schemas/ids/" | awk '{print $2}')
json=$(median json); avro=$(median avro)
echo
echo "== $N events, 10,000 devices, $PARTS partitions, 1 slot, upsert; medians of $ROUNDS rounds (msgs/s)"
printf 'json %8d | avro %8d | avro / json: %s (target >= 1)\n' "$json" "$avro" "$(echo "scale=2; $avro / $json" | bc)"
echo "schema registry asked for a schema by id $asked times, for 1 schema id and $starts Avro consumers of 1 slot each (target: $starts)"

#!/usr/bin/env bash
# Shared by the benchmarks (sourced, after test/setup.sh and pe_scratch).

# bench_load FILE TOPIC PARTS N: produce FILE's key<TAB>value lines to TOPIC
# of the test broker, then check that it holds all N (it keeps about 5 MB
# per partition and drops the oldest beyond that).
bench_load() {
	local file=$1 topic=$2 parts=$3 n=$4 held
	kcat -P -b "$BOOTSTRAP" -t "$topic" -K$'\t' -l "$file"
	held=$(/usr/bin/python3 - "$BOOTSTRAP" "$topic" "$parts" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "bench-check"})
print(sum(h - l for l, h in (c.get_watermark_offsets(TopicPartition(sys.argv[2], p), timeout=30)
                             for p in range(int(sys.argv[3])))))
PY
)
	if [ "$held" -ne "$n" ]; then
		echo "the broker holds $held of $n messages of $topic (the test broker keeps about 5 MB per partition): raise PARTS" >&2
		exit 1
	fi
}

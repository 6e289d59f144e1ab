#!/usr/bin/env bash
# Shared by the benchmarks (sourced, after test/setup.sh and pe_scratch).

# bench_throughput_scratch NAME PORT: the reference inputs (REF, checked),
# then a fresh copy of the tree in BENCH (/tmp/pipeline_ext-bench-NAME, or
# PE_BENCH_DIR) and the settings of a one-slot throughput run in
# PE_EXTRA_CONF, for pe_scratch; PORT is PE_BENCH_PORT's default.
bench_throughput_scratch() {
	REF=${REF:-$PE_ROOT/../shared/bench}
	[ -x "$REF/gen_events.py" ] || { echo "the reference inputs are not in $REF (set REF)" >&2; exit 1; }
	pe_setup
	BENCH=${PE_BENCH_DIR:-/tmp/pipeline_ext-bench-$1}
	pe_workdir "$BENCH"
	PORT=${PE_BENCH_PORT:-$2}
	PE_EXTRA_CONF="shared_buffers = 512MB
max_wal_size = 4GB
max_worker_processes = 16
pipeline_ext.default_parallelism = 1
unix_socket_directories = '$BENCH'"
}

# bench_load FILE TOPIC PARTS N: produce FILE's key<TAB>value lines to TOPIC
# of the test broker, then check that it holds all N (bench_held).
bench_load() {
	local file=$1 topic=$2 parts=$3 n=$4
	kcat -P -b "$BOOTSTRAP" -t "$topic" -K$'\t' -l "$file"
	bench_held "$topic" "$parts" "$n"
}

# bench_held TOPIC PARTS N: check that the test broker holds all N messages
# of TOPIC (it keeps about 5 MB per partition and drops the oldest beyond).
bench_held() {
	local topic=$1 parts=$2 n=$3 held
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

# The CPU seconds the scratch instance has used: the postmaster and its
# children (waits a moment, so that exited backends are reaped and counted).
instance_cpu() {
	local pm hz=$(getconf CLK_TCK)
	sleep 0.3
	pm=$(head -1 "$PE_SCRATCH_DATA/postmaster.pid")
	{ awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
	  for c in $(pgrep -P "$pm"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
	} | awk -v hz="$hz" '{s += $1} END {printf "%.2f", s / hz}'
}

# bench_wait(consumer, n) in the bench database (psql_b): waits in one
# backend until the consumer's slots have applied n messages; returns when
# the first batch started and when it was done (epoch seconds), the CPU the
# wait used, the largest private memory (RssAnon, kB) seen in one slot
# worker, and when (and at how many messages) the slots had first applied a
# quarter of n: the start of the warm part of the run (the slot's memory
# taken, its first transactions done; NULL when one commit took it from
# below a quarter to n).  The sampling is done here, in the backend that waits anyway,
# every tenth poll and at the end: a shell loop forking pgrep and awk every
# 50 ms took a third of a core, which on a 2-core machine was taken from
# the slots measured (and from none of the cases they are compared with).
# A procedure that commits after each poll: a function holds its
# statement's snapshot until it returns, and that xmin kept every row
# version the case made dead from being pruned, so upserts (and an
# aggregate's results) could not update in place (HOT) and bloated their
# indexes, which the cases without the poller (the peer, COPY) never paid.
#   CALL bench_wait('c', n, NULL, NULL, NULL, NULL)   (warm_at, warm_n: defaults)
bench_wait_function() {
	psql_b <<'SQL'
CREATE PROCEDURE bench_wait(c text, n bigint, INOUT first_batch_at float8, INOUT done_at float8,
                            INOUT poller_cpu numeric, INOUT peak_kb bigint,
                            INOUT warm_at float8 DEFAULT NULL, INOUT warm_n bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  m bigint;
  stat text[];
  polls bigint := 0;
  kb bigint;
BEGIN
  peak_kb := 0;
  LOOP
    IF first_batch_at IS NULL THEN
      SELECT extract(epoch FROM min(a.query_start)) INTO first_batch_at
        FROM pipeline._slots() s JOIN pg_catalog.pg_stat_activity a ON a.pid = s.pid
       WHERE s.consumer = c AND a.query = 'applying a batch';
    END IF;
    SELECT coalesce(sum(messages), 0) INTO m FROM pipeline._slots() WHERE consumer = c;
    IF m >= n THEN
      done_at := extract(epoch FROM clock_timestamp());
    ELSIF warm_at IS NULL AND m >= n / 4 THEN
      warm_at := extract(epoch FROM clock_timestamp());
      warm_n := m;
    END IF;
    IF polls % 10 = 0 OR m >= n THEN
      SELECT max(substring(pg_read_file('/proc/' || pid || '/status', 0, 65536, true) FROM 'RssAnon:\s*(\d+)')::bigint)
        INTO kb FROM pipeline._slots() WHERE consumer = c AND pid IS NOT NULL;
      peak_kb := greatest(peak_kb, coalesce(kb, 0));
    END IF;
    EXIT WHEN m >= n;
    polls := polls + 1;
    COMMIT;   -- no snapshot held while waiting (a new one, and fresh statistics, next poll)
    PERFORM pg_catalog.pg_sleep(0.005);
  END LOOP;
  stat := regexp_split_to_array(split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ') ', 2), ' ');
  poller_cpu := (stat[12]::numeric + stat[13]::numeric) / 100;   -- utime, stime (USER_HZ)
END $$;
SQL
}

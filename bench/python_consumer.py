#!/usr/bin/python3
"""The consumer users write today, as the baseline for bench/consume.sh:
confluent-kafka + psycopg2, batches of 5,000, the last message per key,
execute_values upsert, PostgreSQL commit then Kafka commit."""
import json
import sys
import time

import psycopg2
from psycopg2.extras import execute_values
from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, dsn, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "python-baseline",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
consumer.subscribe([topic])
db = psycopg2.connect(dsn)
cur = db.cursor()

SQL = """INSERT INTO bench_py (id, device, temp, ts, seq, status, note) VALUES %s
         ON CONFLICT (id) DO UPDATE SET device = EXCLUDED.device, temp = EXCLUDED.temp,
         ts = EXCLUDED.ts, seq = EXCLUDED.seq, status = EXCLUDED.status, note = EXCLUDED.note"""

done = 0
start = None
while done < total:
    msgs = consumer.consume(num_messages=5000, timeout=1.0)
    if not msgs:
        continue
    if start is None:
        start = time.time()
    latest = {}
    for m in msgs:
        if m.error():
            continue
        r = json.loads(m.value())
        latest[r["id"]] = (r["id"], r["device"], r["temp"], r["ts"], r["seq"], r["status"], r["note"])
    execute_values(cur, SQL, list(latest.values()), page_size=5000)
    db.commit()
    consumer.commit(asynchronous=False)
    done += len(msgs)

print(f"{time.time() - start:.3f}")
consumer.close()

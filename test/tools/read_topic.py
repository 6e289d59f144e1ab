#!/usr/bin/python3
"""Reads a whole topic with an independent client (confluent-kafka, not
pipeline_ext's code) and prints one tab-separated line per message, in each
partition's order: partition, offset, key, value, the outbox id header
(pipeline_ext.outbox_id) or "-", the value in hex, and the other headers
("name=value" joined by "," in their order) or "-".  A null key or value
prints as "\\N".

    read_topic.py BOOTSTRAP TOPIC [ISOLATION]   (read_committed by default)
"""
import sys

from confluent_kafka import Consumer, KafkaError, TopicPartition


def text(b):
    return "\\N" if b is None else b.decode("utf-8", "backslashreplace").replace("\t", " ").replace("\n", " ")


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    isolation = sys.argv[3] if len(sys.argv) > 3 else "read_committed"
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "read_topic",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
    })
    md = c.list_topics(topic, timeout=30)
    if topic not in md.topics or md.topics[topic].error is not None:
        sys.exit(f"no topic {topic}")
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    waiting = set(parts)
    for p in parts:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high <= low:
            waiting.discard(p)
    idle = 0
    while waiting and idle < 300:
        m = c.poll(0.1)
        if m is None:
            idle += 1
            continue
        idle = 0
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                waiting.discard(m.partition())
                continue
            sys.exit(str(m.error()))
        hid = "-"
        others = []
        for k, v in (m.headers() or []):
            if k == "pipeline_ext.outbox_id":
                hid = v.decode()
            else:
                others.append(f"{k}={text(v)}")
        hexed = "\\N" if m.value() is None else m.value().hex()
        print(f"{m.partition()}\t{m.offset()}\t{text(m.key())}\t{text(m.value())}\t{hid}\t{hexed}\t{','.join(others) or '-'}")
    c.close()
    if waiting:
        sys.exit(f"partitions {sorted(waiting)} did not reach their end")


main()

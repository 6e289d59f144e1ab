#!/usr/bin/python3
"""Where other clients put keys: reads keys (one per line) on stdin and prints
"key<TAB>java<TAB>librdkafka" for each, where
  java       = the Java client's default partitioner, computed here from the
               published murmur2 algorithm (toPositive(murmur2(key)) % n);
  librdkafka = the partition python3-confluent-kafka's producer, configured
               with partitioner=murmur2, actually delivered the key to on the
               broker (topic given with --topic, n partitions).
Used by the TAP tests to check pipeline.produce()'s partitioning independently.
"""
import argparse
import sys

from confluent_kafka import Producer


def murmur2(data: bytes) -> int:
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    base = n4 * 4
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    args = ap.parse_args()

    keys = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    delivered = {}

    def report(err, msg):
        if err is not None:
            raise SystemExit("delivery failed: %s" % err)
        delivered[msg.key().decode()] = msg.partition()

    p = Producer({"bootstrap.servers": args.bootstrap, "partitioner": "murmur2",
                  "linger.ms": 5})
    for k in keys:
        p.produce(args.topic, value=b"x", key=k.encode(), on_delivery=report)
        p.poll(0)
    if p.flush(30) != 0:
        raise SystemExit("not all keys were delivered")
    for k in keys:
        java = (murmur2(k.encode()) & 0x7FFFFFFF) % args.partitions
        print("%s\t%d\t%d" % (k, java, delivered[k]))


if __name__ == "__main__":
    main()

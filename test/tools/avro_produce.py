#!/usr/bin/python3
"""Write Avro messages the way a Java or Python producer with a schema
registry does, with independent code: Apache Avro's reference
implementation (python3-avro) encodes, python3-confluent-kafka's
SchemaRegistryClient registers, the Confluent wire format frames (0, the
schema id big-endian, the record).

    avro_produce.py REGISTRY_URL USER_INFO BOOTSTRAP TOPIC N EXPECTED_FILE [FIRST v4]

Three versions of the subject TOPIC-value, registered in order under the
registry's default compatibility (BACKWARD), each writing a third of the N
records: v1; v2 adds "note" with a default and removes "legacy"; v3 makes
"score" nullable.  Every logical type pipeline_ext reads, a nested record,
an array, a map, an enum, bytes.  EXPECTED_FILE gets one JSON object per
record: what a reader with the newest schema sees ("note" is "none" in v1's
records, its default), as text a test compares with the table.  With
FIRST and v4: a fourth version (v3 and "extra" with a default) writes all N
records, ids from FIRST on.
"""
import datetime
import decimal
import io
import json
import struct
import sys
import uuid

import avro.io
import avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

url, user, bootstrap, topic, n, expected_file = sys.argv[1:7]
n = int(n)
first = int(sys.argv[7]) if len(sys.argv) > 7 else 0
only_v4 = len(sys.argv) > 8 and sys.argv[8] == "v4"

ADDR = {"type": "record", "name": "Address", "fields": [
    {"name": "city", "type": "string"}, {"name": "zip", "type": "int"}]}
COMMON = [
    {"name": "id", "type": "int"},
    {"name": "name", "type": "string"},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
    {"name": "tmu", "type": {"type": "long", "logicalType": "time-micros"}},
    {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "lts", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "data", "type": "bytes"},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "addr", "type": ADDR},
    {"name": "big", "type": "long"},
    {"name": "ratio", "type": "float"},
]
V1 = COMMON + [{"name": "score", "type": "double"}, {"name": "legacy", "type": "string"}]
V2 = COMMON + [{"name": "score", "type": "double"}, {"name": "note", "type": "string", "default": "none"}]
V3 = COMMON + [{"name": "score", "type": ["null", "double"], "default": None},
               {"name": "note", "type": "string", "default": "none"}]
V4 = V3 + [{"name": "extra", "type": "int", "default": 0}]

client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user} if user else {"url": url})
versions = []
for fields in ((V1, V2, V3, V4) if only_v4 else (V1, V2, V3)):
    text = json.dumps({"type": "record", "name": "Reading", "namespace": "test", "fields": fields})
    sid = client.register_schema(topic + "-value", Schema(text, "AVRO"))
    versions.append((sid, avro.schema.parse(text)))

producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
utc = datetime.timezone.utc
base = datetime.datetime(2026, 3, 29, 0, 30, tzinfo=utc)
with open(expected_file, "w") as out:
    for i in range(first, first + n):
        v = 3 if only_v4 else (0 if i < n // 3 else (1 if i < 2 * n // 3 else 2))
        sid, schema = versions[v]
        ts = base + datetime.timedelta(seconds=37 * i, milliseconds=i % 1000)
        tsu = base + datetime.timedelta(microseconds=1234567 * i + 1)
        lts_us = 1774744200000000 + 999999 * i          # local wall time, in microseconds since 1970
        price = decimal.Decimal(i * 7 - 5000).scaleb(-2)
        rec = {
            "id": i, "name": "r\u00e9sum\u00e9 %d \"q\" \\" % i, "price": price, "ts": ts,
            "day": (base + datetime.timedelta(days=i % 400)).date(),
            "tm": datetime.time(i % 24, i % 60, i % 60, (i % 1000) * 1000),
            "tmu": (datetime.datetime.min + datetime.timedelta(microseconds=(i * 1000003) % 86400000000)).time(),
            "tsu": tsu, "lts": lts_us, "uid": str(uuid.UUID(int=i * 7919 + 1)),
            "color": ["RED", "GREEN", "BLUE"][i % 3], "data": bytes([i % 256, 0, 255, (i * 3) % 256]),
            "tags": ["t%d" % k for k in range(i % 4)], "attrs": {"a": i, "b": -i},
            "addr": {"city": "City %d" % (i % 17), "zip": 10000 + i % 900},
            "big": 2 ** 40 + i, "ratio": 0.5 + (i % 8), "score": i / 8.0,
        }
        if v == 0:
            rec["legacy"] = "old %d" % i
        else:
            rec["note"] = "note %d" % i
        if v >= 2 and i % 5 == 0:
            rec["score"] = None
        if v == 3:
            rec["extra"] = i
        buf = io.BytesIO()
        buf.write(struct.pack(">bI", 0, sid))
        avro.io.DatumWriter(schema).write(rec, avro.io.BinaryEncoder(buf))
        producer.produce(topic, key=str(i).encode(), value=buf.getvalue())
        producer.poll(0)
        lts = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=lts_us)
        out.write(json.dumps({
            "id": i, "name": rec["name"], "price": str(price), "ts": ts.isoformat(), "day": rec["day"].isoformat(),
            "tm": rec["tm"].isoformat(), "tmu": rec["tmu"].isoformat(),
            "tsu": tsu.isoformat(), "lts": lts.isoformat(), "uid": rec["uid"], "color": rec["color"],
            "data": "\\x" + rec["data"].hex(), "tags": rec["tags"], "attrs": rec["attrs"], "addr": rec["addr"],
            "city": rec["addr"]["city"], "big": rec["big"], "ratio": rec["ratio"], "score": rec["score"],
            "legacy": rec.get("legacy"), "note": rec.get("note", "none")}) + "\n")
producer.flush(60)
print(" ".join(str(sid) for sid, _ in versions))

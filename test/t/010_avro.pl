# Avro and the schema registry.  First the test registry itself
# (test/registry/pe_registry.py), checked by an independent client,
# python3-confluent-kafka's SchemaRegistryClient: registering, ids kept for
# identical schemas, look-ups, versions, compatibility levels judged by
# Apache Avro's rules, Confluent's error codes, basic auth, and its fault
# injection.  Then the registry on a connection: its options checked, its
# password masked for other roles and kept out of the server log.  Then
# consumers of format avro: 100,000 messages written by python3-avro
# (test/tools/avro_produce.py) over three versions of a subject, every
# logical type, nested records, arrays, maps, enums and bytes, into an
# upsert and an append consumer, equal to what was written; bad messages
# are dead letters with their reasons; a registry that is down makes the
# messages wait, not dead letters.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PipelineExt::Broker;
use PipelineExt::Registry;

my $registry = PipelineExt::Registry->start(user => 'ingest:reg-s3cret-pw');

# --- the test registry, as Confluent's client sees it
my $out = $registry->python(q{
import sys
from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
url, user = sys.argv[1], sys.argv[2]
c = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
def err(f):
    try:
        f()
        return "no error"
    except SchemaRegistryError as e:
        return "%d/%d" % (e.http_status_code, e.error_code)
v1 = '{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}'
v2 = '{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}]}'
v2_nodefault = '{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"c","type":"string"}]}'
bad_type = '{"type":"record","name":"r","fields":[{"name":"a","type":"string"}]}'
i1 = c.register_schema("t-value", Schema(v1, "AVRO"))
i2 = c.register_schema("t-value", Schema(v2, "AVRO"))
print("ids", i1, i2, c.register_schema("other-value", Schema(v1, "AVRO")))
print("subjects", ",".join(c.get_subjects()), "versions", c.get_versions("t-value"))
print("by id", c.get_schema(i2).schema_str == v2)
print("latest", c.get_latest_version("t-value").version, "lookup", c.lookup_schema("t-value", Schema(v1, "AVRO")).version)
print("backward", c.test_compatibility("t-value", Schema(v2_nodefault, "AVRO")), c.test_compatibility("t-value", Schema(bad_type, "AVRO")))
print("incompatible", err(lambda: c.register_schema("t-value", Schema(bad_type, "AVRO"))))
print("unknown id", err(lambda: c.get_schema(99)), "unknown subject", err(lambda: c.get_latest_version("nope")))
print("not in subject", err(lambda: c.lookup_schema("t-value", Schema(bad_type, "AVRO"))))
print("invalid", err(lambda: c.register_schema("t-value", Schema('{"type":"record"}', "AVRO"))))
c.set_compatibility("t-value", "FORWARD")
print("forward", c.get_compatibility("t-value"), c.test_compatibility("t-value", Schema(v2_nodefault, "AVRO")))
c.set_compatibility("t-value", "NONE")
print("none", c.register_schema("t-value", Schema(bad_type, "AVRO")))
print("wrong password", err(lambda: SchemaRegistryClient({"url": url, "basic.auth.user.info": "ingest:nope"}).get_subjects()))
f1 = '{"type":"record","name":"f","fields":[{"name":"a","type":"int"},{"name":"c","type":"string"}]}'
f_drop_c = '{"type":"record","name":"f","fields":[{"name":"a","type":"int"}]}'
f_add_d = '{"type":"record","name":"f","fields":[{"name":"a","type":"int"},{"name":"c","type":"string"},{"name":"d","type":"int","default":0}]}'
c.register_schema("f-value", Schema(f1, "AVRO"))
print("backward drop", c.test_compatibility("f-value", Schema(f_drop_c, "AVRO")))
c.set_compatibility("f-value", "FULL")
print("full", c.get_compatibility("f-value"), c.test_compatibility("f-value", Schema(f_drop_c, "AVRO")),
      c.test_compatibility("f-value", Schema(f_add_d, "AVRO")))
c.set_compatibility(level="FULL_TRANSITIVE")
print("global", c.get_compatibility())
c.set_compatibility(level="BACKWARD")
});
like($out, qr/^ids 1 2 1$/m, 'registering gives ids; an identical schema keeps its id in another subject');
like($out, qr/^subjects other-value,t-value versions \[1, 2\]$/m, 'subjects and versions');
like($out, qr/^by id True$/m, 'GET /schemas/ids/{id} returns the schema as registered');
like($out, qr/^latest 2 lookup 1$/m, 'latest version and look-up');
like($out, qr/^backward False False$/m, 'BACKWARD: a new field without a default and a changed type are incompatible');
like($out, qr/^incompatible 409\/409$/m, 'an incompatible schema is refused with 409');
like($out, qr/^unknown id 404\/40403 unknown subject 404\/40401$/m, 'unknown id and subject: 40403 and 40401');
like($out, qr/^not in subject 404\/40403$/m, 'a look-up of a schema not in the subject: 40403');
like($out, qr/^invalid 422\/42201$/m, 'an invalid schema: 42201');
like($out, qr/^forward FORWARD True$/m, 'FORWARD: the old schema reads data of the new one');
like($out, qr/^none 3$/m, 'NONE: anything goes');
like($out, qr/^wrong password 401\/401$/m, 'basic auth');
like($out, qr/^backward drop True$/m, 'BACKWARD: dropping a field without a default is compatible (new readers skip it)');
like($out, qr/^full FULL False True$/m,
	"FULL: ... but not both ways (old readers lack its value); a field added with a default is");
like($out, qr/^global FULL_TRANSITIVE$/m, 'the global level (PUT and GET /config)');

# fault injection: down refuses connections, then it is back
$registry->ctl('down 2');
$out = $registry->python(q{
import sys, time
from confluent_kafka.schema_registry import SchemaRegistryClient
c = SchemaRegistryClient({"url": sys.argv[1], "basic.auth.user.info": sys.argv[2]})
try:
    c.get_subjects()
    print("reachable")
except Exception:
    print("refused")
time.sleep(3)
print(len(c.get_subjects()))
});
is($out, "refused\n3\n", 'the registry can be made unreachable for a while');

# --- the registry on a connection
my $node = PostgreSQL::Test::Cluster->new('avro');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
# (log_statement = all would log every statement's text, secrets included,
# whoever wrote it: README, Security; the log is checked for what
# pipeline_ext itself writes)
log_statement = none
});
$node->start;
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $url = $registry->url;
sql(qq{CREATE EXTENSION pipeline_ext;
       CREATE ROLE owner_role LOGIN; CREATE ROLE other_role LOGIN;
       GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb) TO owner_role;});
$node->safe_psql('postgres', qq{SELECT pipeline.create_connection('reg', '127.0.0.1:9',
    '{"schema.registry.url": "$url", "schema.registry.basic.auth.user.info": "ingest:reg-s3cret-pw"}')},
	extra_params => [ '-U', 'owner_role' ]);
is($node->safe_psql('postgres', q{SELECT value FROM pipeline.connection_config('reg') WHERE property = 'schema.registry.basic.auth.user.info'},
		extra_params => [ '-U', 'owner_role' ]),
	'ingest:reg-s3cret-pw', "the connection's owner sees the registry's credentials");
is($node->safe_psql('postgres', q{SELECT value FROM pipeline.connection_config('reg') WHERE property = 'schema.registry.basic.auth.user.info'},
		extra_params => [ '-U', 'other_role' ]),
	'********', 'another role sees them masked');
unlike($node->safe_psql('postgres', q{SELECT options::text FROM pipeline.connections WHERE name = 'reg'},
		extra_params => [ '-U', 'other_role' ]),
	qr/s3cret/, 'and masked in pipeline.connections');

# --- consuming Avro: three versions of a subject written by python3-avro
my $broker = PipelineExt::Broker->start(brokers => 1, topics => { readings_avro => 8, bad_avro => 1, keyed_avro => 2, int_keyed_avro => 1, orders_out => 2, envelopes => 1, arrays_avro => 1, wide_avro => 1, evolve_avro => 1, hostile_avro => 1 });
my $bs = $broker->bootstrap;
my $user = 'ingest:reg-s3cret-pw';
sql(qq{SELECT pipeline.create_connection('local', '$bs',
    '{"schema.registry.url": "$url", "schema.registry.basic.auth.user.info": "$user", "schema.registry.request.timeout.ms": 2000}')});

my $N = 100_000;
my $dir = PostgreSQL::Test::Utils::tempdir();
my $tools = ($ENV{TESTDIR} // '.') . '/test/tools';
my $ids = $registry->python("exec(open('$tools/avro_produce.py').read())", $bs, 'readings_avro', $N, "$dir/expected.jsonl");
like($ids, qr/^\d+ \d+ \d+$/, 'three versions of readings_avro-value registered') or diag($ids);

my $cols = q{id int PRIMARY KEY, name text, price numeric(10,2), ts timestamptz, day date, tm time, tmu time,
             tsu timestamptz, lts timestamp, uid uuid, color text, data bytea, tags jsonb, attrs jsonb, addr jsonb,
             city text, big int8, ratio float4, score float8, legacy text, note note_text, tag_list text[]};
(my $acols = $cols) =~ s/ PRIMARY KEY//;
# (note is of a domain: its input function reads the catalogs, also for the default of a field)
sql(qq{CREATE DOMAIN note_text AS text;
       CREATE TABLE readings ($cols);
       CREATE TABLE readings_log ($acols);
       SELECT pipeline.create_consumer('avro_up', 'local', 'readings_avro', 'readings', format => 'avro',
                                       column_map => '{"city": "addr.city", "tag_list": "tags"}');
       SELECT pipeline.create_consumer('avro_log', 'local', 'readings_avro', 'readings_log', format => 'avro',
                                       mode => 'append', column_map => '{"city": "addr.city", "tag_list": "tags"}');
       -- only top-level fields of primitive types: read in one pass (decode_avro_flat.c), tags, attrs and addr skipped
       CREATE TABLE readings_flat (id int PRIMARY KEY, name text, price numeric(10,2), ts timestamptz, day date, tm time,
                                   tmu time, tsu timestamptz, lts timestamp, uid uuid, color text, data bytea, big int8,
                                   ratio float4, score float8, legacy text, note note_text);
       SELECT pipeline.create_consumer('avro_flat', 'local', 'readings_avro', 'readings_flat', format => 'avro');
       CREATE TABLE expected (j jsonb);
       COPY expected FROM '$dir/expected.jsonl' WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02');});

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($node->poll_query_until('postgres', $query, $expected), $what)
	  or diag("last result: " . sql($query) . "\nstatus: " . sql('SELECT * FROM pipeline.consumer_status')
		  . "\ndead letters: " . sql('SELECT consumer, error FROM pipeline.dead_letters LIMIT 5'));
}
wait_for('SELECT count(*) FROM readings', $N, 'the upsert consumer applied every Avro message');
wait_for('SELECT count(*) FROM readings_log', $N, 'so did the append consumer');
wait_for('SELECT count(*) FROM readings_flat', $N, 'and the consumer of top-level fields only');

my $equal = q{
  SELECT count(*) FROM expected e JOIN %s r ON r.id = (e.j->>'id')::int
   WHERE r.name = e.j->>'name' AND r.price = (e.j->>'price')::numeric AND r.ts = (e.j->>'ts')::timestamptz
     AND r.day = (e.j->>'day')::date AND r.tm = (e.j->>'tm')::time AND r.tmu = (e.j->>'tmu')::time
     AND r.tsu = (e.j->>'tsu')::timestamptz AND r.lts = (e.j->>'lts')::timestamp AND r.uid = (e.j->>'uid')::uuid
     AND r.color = e.j->>'color' AND r.data = (e.j->>'data')::bytea
     AND r.tags = e.j->'tags' AND r.attrs = e.j->'attrs'
     AND r.tag_list = ARRAY(SELECT jsonb_array_elements_text(e.j->'tags'))
     AND r.addr = e.j->'addr' AND r.city = e.j->>'city' AND r.big = (e.j->>'big')::int8
     AND r.ratio = (e.j->>'ratio')::float4 AND r.score IS NOT DISTINCT FROM (e.j->>'score')::float8
     AND r.legacy IS NOT DISTINCT FROM e.j->>'legacy' AND r.note = e.j->>'note'};
is(sql(sprintf($equal, 'readings')), $N, 'every upserted row equals what python3-avro wrote, through three schema versions');
is(sql(sprintf($equal, 'readings_log')), $N, 'every appended row too');
is(sql(q{SELECT count(*) FROM readings r JOIN readings_flat f USING (id)
          WHERE (r.name, r.price, r.ts, r.day, r.tm, r.tmu, r.tsu, r.lts, r.uid, r.color, r.data, r.big, r.ratio, r.score, r.legacy, r.note)
                IS NOT DISTINCT FROM
                (f.name, f.price, f.ts, f.day, f.tm, f.tmu, f.tsu, f.lts, f.uid, f.color, f.data, f.big, f.ratio, f.score, f.legacy, f.note)}),
	$N, 'read in one pass, every row equals the one read through avro-c (logical types, enums, bytes, nulls, defaults)');
# (avro_produce.py: v1 writes ids below N/3, v2 below 2N/3, v3 the rest, a null score where id % 5 = 0)
my ($v1_end, $v3_start) = (int($N / 3), int(2 * $N / 3));
is(sql(q{SELECT count(*) FROM readings WHERE score IS NULL}), scalar(grep { $_ % 5 == 0 } $v3_start .. $N - 1),
	'a field made nullable gives nulls');
is(sql(q{SELECT count(*) FROM readings WHERE legacy IS NOT NULL}), $v1_end, 'a removed field is null in later versions');
is(sql(q{SELECT count(*) FROM readings WHERE note = 'none'}), $v1_end,
	'a field added with a default: the messages written before it have the default (the latest version as reader)');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters}), 0, 'no dead letters');

# --- bad input: each bad message one dead letter with its reason, the rest applied
sql(q{CREATE TABLE bad_target (id int PRIMARY KEY, price numeric(10,2), label text);
      SELECT pipeline.create_consumer('avro_bad', 'local', 'bad_avro', 'bad_target', format => 'avro');
      -- the scale of a domain over numeric(10,2), and a negative scale, are as much the column's
      CREATE DOMAIN price_d AS numeric(10,2);
      CREATE TABLE bad_dom (id int PRIMARY KEY, price price_d, label text);
      SELECT pipeline.create_consumer('avro_bad_dom', 'local', 'bad_avro', 'bad_dom', format => 'avro');
      CREATE TABLE bad_neg (id int PRIMARY KEY, price numeric(12,-2), label text);
      SELECT pipeline.create_consumer('avro_bad_neg', 'local', 'bad_avro', 'bad_neg', format => 'avro');});
$registry->python(q{
import io, struct, sys, decimal, json
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
subjects = []
def schema(fields):
    text = json.dumps({"type": "record", "name": "Bad", "fields": fields})
    subjects.append("bad_avro-%d" % len(subjects))
    return client.register_schema(subjects[-1], Schema(text, "AVRO")), avro.schema.parse(text)
good_id, good = schema([{"name": "id", "type": "int"},
                        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 2}},
                        {"name": "label", "type": "string"}])
str_id, str_schema = schema([{"name": "id", "type": "string"}, {"name": "label", "type": "string"}])
dec3_id, dec3 = schema([{"name": "id", "type": "int"},
                       {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 3}},
                       {"name": "label", "type": "string"}])
odd_id, _ = schema([{"name": "u", "type": ["null", "string"]}, {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
                    {"name": "a", "type": {"type": "array", "items": "string"}}])
def wire(sid, sch, rec):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    avro.io.DatumWriter(sch).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()
def ok(i):
    return wire(good_id, good, {"id": i, "price": decimal.Decimal("12.34"), "label": "fine %d" % i})
msgs = [ok(1), b'{"id": 2}', ok(3), b"\x00\x00\x00\x03\xe7" + ok(4)[5:], ok(5), ok(6)[:9],
        wire(good_id, good, {"id": 7, "price": decimal.Decimal("123456789012.34"), "label": "too big"}),
        wire(str_id, str_schema, {"id": "eight", "label": "a string id"}), ok(9) + b"\x00", ok(10),
        struct.pack(">bI", 0, odd_id) + b"\x0a",                 # union branch 5 of 2
        struct.pack(">bI", 0, odd_id) + b"\x00\x0e",             # enum index 7 of 2
        struct.pack(">bI", 0, odd_id) + b"\x00\x00\xfe\xff\xff\xff\x0f",   # an array of 2^31 - 1 strings
        b"\x00\xff\xff\xff\xfe" + ok(13)[5:], ok(14),
        wire(dec3_id, dec3, {"id": 15, "price": decimal.Decimal("1.234"), "label": "three decimals"}), ok(16)]
p = Producer({"bootstrap.servers": bootstrap})
for m in msgs:
    p.produce("bad_avro", value=m)
p.flush(30)
}, $bs);
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_bad'}, 11, 'eleven bad messages are eleven dead letters');
wait_for(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM bad_target}, '1,3,5,10,14,16', 'the good ones around them are applied');
my $dead = sql(q{SELECT "offset" || ' ' || error || ' | ' || encode(value, 'hex') FROM pipeline.dead_letters
                 WHERE consumer = 'avro_bad' ORDER BY "offset"});
like($dead, qr/^1 message value is not Avro in the schema registry's wire format: Its first byte is 123/m, 'no magic byte');
like($dead, qr/^3 unknown Avro schema id 999: the schema registry has no schema with id 999/m, 'an unknown schema id');
like($dead, qr/^5 could not decode an Avro message value with schema \d+: a string or bytes longer than what is left of the message\. \| 00/m,
	'a truncated body, its raw bytes kept');
like($dead, qr/^6 column "price": numeric field overflow/m, 'a decimal that does not fit the column, naming it');
like($dead, qr/^7 column "id": invalid input syntax for type integer: "eight"/m, 'a field of an incompatible type');
like($dead, qr/^8 could not decode an Avro message value with schema \d+: bytes after the record/m, 'bytes after the record');
like($dead, qr/^10 could not decode an Avro message value with schema \d+: a union branch number out of the union's range/m,
	'a union branch out of range (avro-c would call through a wild pointer)');
like($dead, qr/^11 could not decode an Avro message value with schema \d+: an enum index out of its symbols' range/m,
	'an enum index out of range');
like($dead, qr/^12 could not decode an Avro message value with schema \d+: an array or map with more items than the message can hold/m,
	'an array claiming more items than the message holds');
like($dead, qr/^15 column "price": Avro decimal 1.234 has more digits after the point than the column's scale of 2/m,
	'a decimal of a greater scale than the column is not rounded away');
like($dead, qr/^13 message value is not Avro in the schema registry's wire format: Its schema id -2 is negative/m,
	'a negative schema id');
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_bad_dom'}, 11, 'the same into a domain over numeric(10,2)');
like(sql(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'avro_bad_dom' AND "offset" = 15}),
	qr/^column "price": Avro decimal 1.234 has more digits after the point than the column's scale of 2$/,
	"... where the domain's scale is the column's: not rounded either");
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_bad_neg' AND "offset" = 0}, 1,
	'into numeric(12,-2), 12.34 is a dead letter');
like(sql(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'avro_bad_neg' AND "offset" = 0}),
	qr/^column "price": Avro decimal 12.34 has more digits after the point than the column's scale of -2$/,
	'... saying the negative scale');

# replaying, after the cause is fixed: the decimal fits a wider column now
is(sql(q{ALTER TABLE bad_target ALTER price TYPE numeric(20,2);
         SELECT replayed || ' ' || failed FROM pipeline.replay_dead_letters('avro_bad')}), '1 10',
	'replay_dead_letters decodes Avro again: the fixed one is applied, the others stay');
is(sql(q{SELECT price FROM bad_target WHERE id = 7}), '123456789012.34', 'with its value');

# --- hostile messages and schemas: each one dead letter, none hangs or stops the slot
# Raw bytes, each after its schema id: counts of items that take no bytes
# (nulls, a record that holds itself) summing past 2^63, map keys that are
# not text, decimals whose schema breaks Avro's rules (a logical type to be
# ignored, as Java does: the bytes then do not go into a numeric) or that
# are wider than a numeric; a domain's check on bytes; floats into numeric,
# text and json with a float's digits, not a double's.
sql(q{CREATE DOMAIN bytes4 AS bytea CHECK (length(VALUE) <= 4);
      CREATE TABLE hostile (id int PRIMARY KEY, b bytes4, xs jsonb, rs jsonb, m jsonb, price numeric, f_num numeric,
                            f_text text, fm jsonb);
      SELECT pipeline.create_consumer('avro_hostile', 'local', 'hostile_avro', 'hostile', format => 'avro');});
$registry->python(q{
import io, struct, sys, json
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
n = [0]
def schema(fields):
    text = json.dumps({"type": "record", "name": "H", "fields": [{"name": "id", "type": "int"}] + fields})
    n[0] += 1
    return struct.pack(">bI", 0, client.register_schema("hostile_avro-%d" % n[0], Schema(text, "AVRO")))
def zz(i):
    u = (i << 1) ^ (i >> 63)
    out = b""
    while True:
        b = u & 0x7f
        u >>= 7
        if u:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def dec(scale, precision=10):
    return schema([{"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}}])
plain = schema([{"name": "b", "type": "bytes"}, {"name": "f_num", "type": "float"}, {"name": "f_text", "type": "float"},
                {"name": "fm", "type": {"type": "map", "values": "float"}}])
nulls = schema([{"name": "xs", "type": {"type": "array", "items": "null"}}])
selfish = schema([{"name": "rs", "type": {"type": "array", "items": {"type": "record", "name": "R",
                  "fields": [{"name": "a", "type": "R"}, {"name": "b", "type": "R"}]}}}])
strmap = schema([{"name": "m", "type": {"type": "map", "values": "string"}}])
def body(i, fields):
    return zz(i) + fields
f01 = struct.pack("<f", 0.1)
msgs = [
    plain + body(1, zz(2) + b"\x01\x02" + f01 + f01 + zz(1) + zz(1) + b"k" + f01 + b"\x00"),  # 0: good
    plain + body(2, zz(10) + b"0123456789" + f01 + f01 + b"\x00"),           # 1: 10 bytes into bytes4
    nulls + body(3, zz(1) + zz(2**63 - 1) + b"\x00"),                          # 2: 1 + (2^63 - 1) nulls
    nulls + body(4, zz(-(2**63 - 1)) + zz(0) + b"\x00"),                       # 3: the same as a negative count
    selfish + body(5, zz(2**40) + b"\x00"),                                   # 4: 2^40 records R {a: R, b: R}
    strmap + body(6, zz(1) + zz(3) + b"a\x00b" + zz(1) + b"x" + b"\x00"),      # 5: a key with a zero byte
    strmap + body(7, zz(1) + zz(1) + b"\xff" + zz(1) + b"x" + b"\x00"),        # 6: a key that is not UTF-8
    dec(-2) + body(8, zz(2) + b"\x04\xd2"),                                    # 7: scale -2
    dec(3000000000) + body(9, zz(2) + b"\x04\xd2"),                            # 8: scale past int32
    dec(2, 200000) + body(10, zz(70000) + b"\x01" * 70000),                    # 9: 70,000 bytes
    dec(2) + body(11, zz(2) + b"\x04\xd2"),                                    # 10: good: 12.34
]
p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1000000})
for m in msgs:
    p.produce("hostile_avro", value=m)
p.flush(30)
}, $bs);
wait_for(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM hostile}, '1,11', 'the good ones around them are applied');
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_hostile'}, 9, 'each bad one is a dead letter');
my $hostile = sql(q{SELECT "offset" || ' ' || error FROM pipeline.dead_letters WHERE consumer = 'avro_hostile' ORDER BY "offset"});
like($hostile, qr/^1 column "b": value for domain public.bytes4 violates check constraint "bytes4_check"/m,
	"a domain over bytea: its check holds for Avro's bytes");
like($hostile, qr/^2 could not decode an Avro message value with schema \d+: an array or map with more items than the message can hold/m,
	'counts of nulls that add up past 2^63');
like($hostile, qr/^3 could not decode .*: an array or map with more items than the message can hold/m, '... or a negative count');
like($hostile, qr/^4 could not decode .*: an array or map with more items than the message can hold/m,
	'a count of records that hold themselves');
like($hostile, qr/^5 could not decode .*: a map key that is not valid text/m, 'a map key with a zero byte');
like($hostile, qr/^6 could not decode .*: a map key that is not valid text/m, 'a map key that is not UTF-8');
like($hostile, qr/^7 column "price": message field is not valid UTF8 text/m, 'a decimal of scale -2 is no decimal (Avro: an invalid logical type is ignored): bytes do not go into numeric');
like($hostile, qr/^8 column "price": message field is not valid UTF8 text/m, '... nor one whose scale is past int32');
like($hostile, qr/^9 column "price": an Avro decimal of 70000 bytes is wider than a numeric holds/m, 'a decimal wider than a numeric');
is(sql(q{SELECT b::text || ' ' || f_num || ' ' || f_text || ' ' || fm::text || ' ' || (SELECT price FROM hostile WHERE id = 11) FROM hostile WHERE id = 1}),
	'\x0102 0.1 0.1 {"k": 0.1} 12.34', "a float's digits into numeric, text and json, not its double's");
is(sql(q{SELECT count(*) FROM pipeline.consumer_status WHERE consumer = 'avro_hostile' AND (last_error IS NOT NULL OR restarts > 0)}), 0,
	'the slot has no error and did not restart');

# --- Avro keys (format_options key_format 'avro'): upsert keys from a record key, or a plain one; tombstones
sql(q{CREATE TABLE accounts (id int PRIMARY KEY, name text, k jsonb);
      CREATE TABLE counters (id int PRIMARY KEY, name text);
      SELECT pipeline.create_consumer('avro_keys', 'local', 'keyed_avro', 'accounts', format => 'avro',
                                      format_options => '{"key_format": "avro"}', delete_on_tombstone => true,
                                      column_map => '{"k": "$key"}');
      SELECT pipeline.create_consumer('avro_int_keys', 'local', 'int_keyed_avro', 'counters', format => 'avro',
                                      format_options => '{"key_format": "avro"}', delete_on_tombstone => true);});
$registry->python(q{
import io, struct, sys, json
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
def reg(subject, sch):
    text = json.dumps(sch)
    return client.register_schema(subject, Schema(text, "AVRO")), avro.schema.parse(text)
def wire(sid_sch, rec):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid_sch[0]))
    avro.io.DatumWriter(sid_sch[1]).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()
key = reg("keyed_avro-key", {"type": "record", "name": "AccountKey", "fields": [{"name": "id", "type": "int"}]})
val = reg("keyed_avro-value", {"type": "record", "name": "Account", "fields": [{"name": "name", "type": "string"}]})
ikey = reg("int_keyed_avro-key", "int")
p = Producer({"bootstrap.servers": bootstrap})
for rnd in range(2):
    for i in range(1, 21):
        p.produce("keyed_avro", key=wire(key, {"id": i}), value=wire(val, {"name": "n%d.%d" % (i, rnd)}))
        p.produce("int_keyed_avro", key=wire(ikey, i), value=wire(val, {"name": "c%d.%d" % (i, rnd)}))
for i in range(1, 6):
    p.produce("keyed_avro", key=wire(key, {"id": i}), value=None)
p.produce("int_keyed_avro", key=wire(ikey, 20), value=None)
p.flush(30)
}, $bs);
wait_for(q{SELECT count(*) || ' ' || min(id) || ' ' || max(id) FROM accounts}, '15 6 20',
	'upsert keys from an Avro record key; Avro tombstones delete their rows');
is(sql(q{SELECT count(*) FROM accounts WHERE name = 'n' || id || '.1' AND k = jsonb_build_object('id', id)}), 15,
	'each row has its newest value, and $key gives the key as JSON');
wait_for(q{SELECT count(*) || ' ' || max(id) || ' ' || min(name) FROM counters}, '19 19 c1.1',
	'a plain Avro key for a single key column, its tombstone too');

# --- producing Avro from SQL, read back by python3-avro with the registered schema
sql(q{CREATE TABLE orders (id int NOT NULL, customer text, amount numeric(12,2), placed timestamptz, day date,
                           tags text[], paid boolean, uid uuid, ratio float8, big int8);
      INSERT INTO orders SELECT g, CASE WHEN g % 7 <> 0 THEN 'cust ' || g || ' ü "x"' END, (g * 13.07 - 500)::numeric(12,2),
                                timestamptz '2026-06-01 12:00:00+00' + g * interval '61.000123 seconds',
                                date '2026-01-01' + g, ARRAY['a' || g, 'b'], g % 2 = 0,
                                ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid, g / 3.0, 2^40 + g
                           FROM generate_series(1, 200) g;});
my $schema = sql(q{SELECT pipeline.avro_schema('orders')});
like($schema, qr/"name": "id", "type": "int"\}, \{"name": "customer", "type": \["null", "string"\], "default": null\}/,
	'avro_schema() derives a record from the row type: NOT NULL columns plain, the others nullable');
like($schema, qr/"logicalType": "decimal", "precision": 12, "scale": 2/, 'numeric(12,2) is a decimal of its precision and scale');
is(sql(q{SELECT count(*) FROM orders o,
           pipeline.produce('local', 'orders_out',
                            pipeline.avro_encode('local', 'orders_out', to_jsonb(o), pipeline.avro_schema('orders')), o.id::text)}),
	200, 'produce() takes avro_encode() of each row, registering the schema');
my $read = $registry->python(q{
import io, sys, json
import avro.io, avro.schema
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "avro-readback", "enable.auto.commit": False})
c.assign([TopicPartition("orders_out", p, 0) for p in range(2)])
rows, schemas, ids = [], {}, set()
while len(rows) < 200:
    m = c.poll(10)
    if m is None:
        break
    v = m.value()
    assert v[0] == 0
    sid = int.from_bytes(v[1:5], "big")
    ids.add(sid)
    if sid not in schemas:
        schemas[sid] = avro.schema.parse(client.get_schema(sid).schema_str)
    r = avro.io.DatumReader(schemas[sid]).read(avro.io.BinaryDecoder(io.BytesIO(v[5:])))
    rows.append("|".join(str(x) for x in [r["id"], r["customer"], r["amount"], r["placed"].isoformat(), r["day"].isoformat(),
                                          json.dumps(r["tags"]), r["paid"], r["uid"], repr(r["ratio"]).removesuffix(".0"), r["big"]]))
print(len(ids))
print("\n".join(sorted(rows)))
}, $bs);
my ($nids, @got) = split /\n/, $read;
is($nids, 1, 'one schema id for all of them');
my @want = split /\n/, sql(q{SELECT string_agg(l, e'\n' ORDER BY l) FROM (
    SELECT concat_ws('|', id, coalesce(customer, 'None'), amount, to_char(placed AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00', day,
                     '["a' || id || '", "b"]', CASE WHEN paid THEN 'True' ELSE 'False' END, uid, ratio, big) AS l FROM orders) x});
# (python prints floats with repr(), the shortest text that reads back, as PostgreSQL does, but keeps ".0")
is_deeply(\@got, \@want, 'python3-avro reads back every row as it is in the table');

my ($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'orders_out', '{"id": "seven"}')});
like($err, qr/value does not fit the Avro schema of subject "orders_out-value": field "id": expected a whole number, got a string/,
	'a value that does not fit is an error naming the field');
($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'orders_out', '{"id": 1, "customre": "x"}')});
like($err, qr/field "customre": the schema has no such field/, 'a misspelt field is not dropped silently');
($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'orders_out', '{"customer": "x"}')});
like($err, qr/field "id": missing, and the schema gives it no default/, 'a missing field without a default');
($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'orders_out', '{"id": 1, "amount": 1.234}')});
like($err, qr/field "amount": 1.234 has more than the decimal's scale/, 'a decimal with more digits than its scale');
($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'nothing_here', '{"id": 1}')});
like($err, qr/subject "nothing_here-value" is not in the schema registry/, 'no schema given and none registered');
# unions take the branch of the value's kind; a missing field its default in Avro's JSON; a type used again by name
my $uschema = '{"type": "record", "name": "U", "fields": [{"name": "a", "type": ["null", "long", "string"]},
  {"name": "b", "type": ["int", "double"]}, {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0},
  {"name": "raw", "type": "bytes", "default": "\u00ff"},
  {"name": "p1", "type": {"type": "record", "name": "Money", "fields": [{"name": "amt", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}}]}},
  {"name": "p2", "type": "Money"}]}';
my $uhex = sql(qq{SELECT encode(pipeline.avro_encode('local', 'unions', '{"a": "text", "b": 1.5, "p1": {"amt": 1.25}, "p2": {"amt": 2.5}}',
                                                     '$uschema'), 'hex')});
is($registry->python(q{
import io, sys
import avro.io, avro.schema
from confluent_kafka.schema_registry import SchemaRegistryClient
b = bytes.fromhex(sys.argv[3])
schema = avro.schema.parse(SchemaRegistryClient({"url": sys.argv[1], "basic.auth.user.info": sys.argv[2]}).get_schema(int.from_bytes(b[1:5], "big")).schema_str)
r = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(b[5:])))
print(repr(r["a"]), r["b"], r["t"].isoformat(), r["raw"], r["p1"]["amt"], r["p2"]["amt"])
}, $uhex), "'text' 1.5 1970-01-01T00:00:00+00:00 b'\\xff' 1.25 2.50\n",
	'unions by kind, defaults in Avro JSON (a timestamp number, bytes as code points), decimals under a named type');

($ok, $out_, $err) = $node->psql('postgres', q{SELECT pipeline.avro_encode('local', 'orders_out', '{"id": 1, "placed": "infinity"}')});
like($err, qr/field "placed": infinity: Avro has no infinite timestamps/, 'an infinite timestamp is refused, not wrapped around');
is(sql(q{SELECT length(pipeline.avro_encode('local', 'x', '{"x": 0.05}',
           '{"type": "record", "name": "D", "fields": [{"name": "x", "type": {"type": "bytes", "logicalType": "decimal", "precision": 2, "scale": 2}}]}',
           subject => 'decimals only:v1'))}), 7, 'decimal(2,2) takes 0.05 (leading zeros are not digits of its precision)');
like($registry->python(q{
import sys
from confluent_kafka.schema_registry import SchemaRegistryClient
print(SchemaRegistryClient({"url": sys.argv[1], "basic.auth.user.info": sys.argv[2]}).get_latest_version("decimals only:v1").version)
}), qr/^1$/, 'a subject with a space and a colon is registered under its name');

# --- a type defined once and used again by its name (Debezium's envelope: "after" is ["null", "Value"])
sql(q{CREATE TABLE envelope_rows (id int PRIMARY KEY, amount numeric(10,2), ts timestamptz, op text);
      SELECT pipeline.create_consumer('avro_envelopes', 'local', 'envelopes', 'envelope_rows', format => 'avro',
                                      column_map => '{"id": "after.id", "amount": "after.amount", "ts": "after.ts"}');});
$registry->python(q{
import io, struct, sys, json, decimal, datetime
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
value = {"type": "record", "name": "Value", "namespace": "shop.orders", "fields": [
    {"name": "id", "type": "int"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
text = json.dumps({"type": "record", "name": "Envelope", "namespace": "shop.orders", "fields": [
    {"name": "before", "type": ["null", value], "default": None},
    {"name": "after", "type": ["null", "Value"], "default": None},
    {"name": "op", "type": "string"}]})
sid = SchemaRegistryClient({"url": url, "basic.auth.user.info": user}).register_schema("envelopes-value", Schema(text, "AVRO"))
w = avro.io.DatumWriter(avro.schema.parse(text))
p = Producer({"bootstrap.servers": bootstrap})
t = datetime.datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
for i in range(1, 4):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    w.write({"before": None, "after": {"id": i, "amount": decimal.Decimal("10.05") * i, "ts": t}, "op": "c"},
            avro.io.BinaryEncoder(buf))
    p.produce("envelopes", value=buf.getvalue())
p.flush(30)
}, $bs);
wait_for(q{SELECT string_agg(id || ' ' || amount || ' ' || (ts AT TIME ZONE 'UTC'), ', ' ORDER BY id) FROM envelope_rows},
	'1 10.05 2026-05-01 12:00:00.25, 2 20.10 2026-05-01 12:00:00.25, 3 30.15 2026-05-01 12:00:00.25',
	'fields of a record type used again by its name keep their logical types (decimal, timestamp-millis)');

# --- Avro arrays into array columns, item by item: the items' logical types, null items, a null array,
# a domain over an array, an array field's default (for a message of the version without the field);
# an array of arrays is a dead letter (a column takes one dimension from Avro: jsonb takes any)
sql(q{CREATE DOMAIN short_longs AS int8[] CHECK (cardinality(VALUE) < 4);
      CREATE TABLE arrays_t (id int PRIMARY KEY, names text[], at timestamptz[], amounts numeric(8,2)[], maybe int8[],
                             small short_longs, defaults int[], grid int[]);
      SELECT pipeline.create_consumer('avro_arrays', 'local', 'arrays_avro', 'arrays_t', format => 'avro');});
$registry->python(q{
import io, struct, sys, json, decimal, datetime
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap = sys.argv[1:4]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
def arr(items):
    return {"type": "array", "items": items}
fields = [{"name": "id", "type": "int"}, {"name": "names", "type": arr("string")},
          {"name": "at", "type": arr({"type": "long", "logicalType": "timestamp-millis"})},
          {"name": "amounts", "type": arr({"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2})},
          {"name": "maybe", "type": ["null", arr(["null", "long"])]},
          {"name": "small", "type": arr("long")},
          {"name": "grid", "type": ["null", arr(arr("int"))], "default": None}]
versions = []
for fs in (fields, fields + [{"name": "defaults", "type": arr("int"), "default": [7, 8]}]):
    text = json.dumps({"type": "record", "name": "Arrays", "fields": fs})
    versions.append((client.register_schema("arrays_avro-value", Schema(text, "AVRO")), avro.schema.parse(text)))
def wire(v, rec):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, versions[v][0]))
    avro.io.DatumWriter(versions[v][1]).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()
t = datetime.datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
base = {"names": [], "at": [], "amounts": [], "maybe": None, "small": [], "grid": None, "defaults": []}
def rec(**kw):
    r = dict(base)
    r.update(kw)
    return r
p = Producer({"bootstrap.servers": bootstrap})
for m in [wire(1, rec(id=1, names=["a", "b \"q\"", "NULL", "{x}"], at=[t, t + datetime.timedelta(seconds=1)],
                      amounts=[decimal.Decimal("1.25"), decimal.Decimal("-3.50")], maybe=[1, None, 3], small=[1, 2],
                      defaults=[1])),
          wire(0, {k: v for k, v in rec(id=2).items() if k != "defaults"}),
          wire(1, rec(id=3, small=[1, 2, 3, 4])),
          wire(1, rec(id=4, grid=[[1, 2], [3]])),
          wire(1, rec(id=5))]:
    p.produce("arrays_avro", value=m)
p.flush(30)
}, $bs);
wait_for(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM arrays_t}, '1,2,5', 'Avro arrays into array columns');
is(sql(q{SELECT count(*) FROM arrays_t WHERE id = 1 AND names = ARRAY['a', 'b "q"', 'NULL', '{x}'] AND names[3] IS NOT NULL
           AND at = ARRAY['2026-05-01 12:00:00.25+00', '2026-05-01 12:00:01.25+00']::timestamptz[]
           AND amounts = '{1.25,-3.50}' AND maybe = '{1,NULL,3}' AND small = '{1,2}' AND defaults = '{1}' AND grid IS NULL}),
	1, "each item converted as a field of the items' type would be (timestamp-millis, decimal, nullable long)");
is(sql(q{SELECT count(*) FROM arrays_t WHERE id = 2 AND names = '{}' AND at = '{}' AND maybe IS NULL AND defaults = '{7,8}'}),
	1, 'empty arrays, a null array, and the default of an array field the writer did not have');
is(sql(q{SELECT string_agg("offset" || ' ' || error, e'\n' ORDER BY "offset") FROM pipeline.dead_letters WHERE consumer = 'avro_arrays'}),
	qq{2 column "small": value for domain public.short_longs violates check constraint "short_longs_check"\n}
	. q{3 column "grid": an Avro array does not go into column "grid" of type integer},
	"a domain's check, and an array of arrays into a column of one dimension: dead letters");

# --- decimals of any width (a DECIMAL(65,30) of MySQL through Debezium takes 28 bytes): decoded, and
# encoded by avro_encode() for python3-avro to read back; bytes and fixed, negative and positive
# (and in the same records, read in one pass: a local-timestamp-millis, which python3-avro writes as its
# long, a union with null second, a fixed that is not a decimal)
sql(q{CREATE TABLE wide_t (id int PRIMARY KEY, b numeric(65,30), f numeric(60,10), lt timestamp, opt text, raw bytea);
      SELECT pipeline.create_consumer('avro_wide', 'local', 'wide_avro', 'wide_t', format => 'avro');});
my $wide = $registry->python(q{
import io, struct, sys, json, decimal
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
decimal.getcontext().prec = 100
url, user, bootstrap = sys.argv[1:4]
text = json.dumps({"type": "record", "name": "Wide", "fields": [{"name": "id", "type": "int"},
    {"name": "b", "type": {"type": "bytes", "logicalType": "decimal", "precision": 65, "scale": 30}},
    {"name": "f", "type": {"type": "fixed", "name": "F", "size": 26, "logicalType": "decimal", "precision": 60, "scale": 10}},
    {"name": "lt", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
    {"name": "opt", "type": ["string", "null"]}, {"name": "raw", "type": {"type": "fixed", "name": "Raw", "size": 4}}]})
sid = SchemaRegistryClient({"url": url, "basic.auth.user.info": user}).register_schema("wide_avro-value", Schema(text, "AVRO"))
w = avro.io.DatumWriter(avro.schema.parse(text))
vals = [("12345678901234567890123456789012345.123456789012345678901234567890", "-98765432109876543210987654321098765432109876543210.0123456789"),
        ("-0.000000000000000000000000000001", "0.0000000001"), ("0", "-1"),
        ("-17014118346046923173168730371.5884105728", "170141183460469231731687303715884105728"),
        ("-128", "255")]
p = Producer({"bootstrap.servers": bootstrap})
for i, (b, f) in enumerate(vals):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    # (python3-avro writes a Decimal's digits as they are: it must have the scale's exponent)
    b, f = decimal.Decimal(b).quantize(decimal.Decimal(1).scaleb(-30)), decimal.Decimal(f).quantize(decimal.Decimal(1).scaleb(-10))
    w.write({"id": i, "b": b, "f": f, "lt": 1777636800250 + i, "opt": "s%d" % i if i % 2 else None, "raw": bytes([i, 1, 2, 3])},
            avro.io.BinaryEncoder(buf))
    p.produce("wide_avro", value=buf.getvalue())
    print(i, b, f)
p.flush(30)
}, $bs);
wait_for(q{SELECT count(*) FROM wide_t}, 5, 'wide decimals, bytes and fixed, are applied');
my $wide_got = sql(q{SELECT string_agg(id || ' ' || b || ' ' || f, e'\n' ORDER BY id) FROM wide_t});
my $wide_want = join("\n", map { my ($i, $b, $f) = split / /; "$i " . sql("SELECT ${b}::numeric(65,30) || ' ' || ${f}::numeric(60,10)") }
	split /\n/, $wide);
is($wide_got, $wide_want, 'each equal to what python3-avro wrote (beyond 38 digits, and 2^127)');
is(sql(q{SELECT string_agg(id || ' ' || lt || ' ' || coalesce(opt, 'NULL') || ' ' || encode(raw, 'hex'), ', ' ORDER BY id) FROM wide_t}),
	'0 2026-05-01 12:00:00.25 NULL 00010203, 1 2026-05-01 12:00:00.251 s1 01010203, 2 2026-05-01 12:00:00.252 NULL 02010203, '
	. '3 2026-05-01 12:00:00.253 s3 03010203, 4 2026-05-01 12:00:00.254 NULL 04010203',
	'a local-timestamp-millis, a union with null second, a plain fixed');
my $wide_hex = sql(q{SELECT string_agg(encode(pipeline.avro_encode('local', 'wide_avro', to_jsonb(w)), 'hex'), ',' ORDER BY id) FROM wide_t w});
is($registry->python(q{
import io, sys, decimal
import avro.io, avro.schema
from confluent_kafka.schema_registry import SchemaRegistryClient
c = SchemaRegistryClient({"url": sys.argv[1], "basic.auth.user.info": sys.argv[2]})
for h in sys.argv[3].split(","):
    b = bytes.fromhex(h)
    r = avro.io.DatumReader(avro.schema.parse(c.get_schema(int.from_bytes(b[1:5], "big")).schema_str)).read(avro.io.BinaryDecoder(io.BytesIO(b[5:])))
    print(r["id"], format(r["b"], "f"), format(r["f"], "f"))
}, $wide_hex), sql(q{SELECT string_agg(id || ' ' || b || ' ' || f, e'\n' ORDER BY id) FROM wide_t}) . "\n",
	'avro_encode() writes them back, python3-avro reads the same values');
# a decimal schema without a precision (which python3-avro reads as plain bytes): the unscaled value whole
is($registry->python(q{
import io, sys
import avro.io, avro.schema
from confluent_kafka.schema_registry import SchemaRegistryClient
c = SchemaRegistryClient({"url": sys.argv[1], "basic.auth.user.info": sys.argv[2]})
for h in sys.argv[3].split(","):
    b = bytes.fromhex(h)
    x = avro.io.DatumReader(avro.schema.parse(c.get_schema(int.from_bytes(b[1:5], "big")).schema_str)).read(avro.io.BinaryDecoder(io.BytesIO(b[5:])))["x"]
    print(int.from_bytes(x, "big", signed=True) if isinstance(x, bytes) else x.scaleb(2))
}, sql(q{SELECT string_agg(encode(pipeline.avro_encode('local', 'x', jsonb_build_object('x', v),
           '{"type": "record", "name": "N", "fields": [{"name": "x", "type": {"type": "bytes", "logicalType": "decimal", "scale": 2}}]}',
           subject => 'no precision'), 'hex'), ',' ORDER BY o)
         FROM unnest(ARRAY[100.05, -10, 0.5, 1000000]) WITH ORDINALITY u(v, o)})),
	"10005\n-1000\n50\n100000000\n", 'a decimal without a precision keeps every digit (zeros too)');

# --- a field's default comes from the newest version seen, for the messages of every older version,
# also of a version whose schema the slot had already resolved before the newer one came
sql(q{CREATE TABLE evolve_t (id int PRIMARY KEY, label text, extra int);
      SELECT pipeline.create_consumer('avro_evolve', 'local', 'evolve_avro', 'evolve_t', format => 'avro');});
my $evolve = q{
import io, struct, sys, json
import avro.io, avro.schema
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
url, user, bootstrap, step = sys.argv[1:5]
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user})
fields = [{"name": "id", "type": "int"}, {"name": "label", "type": "string"}]
def reg(fs):
    text = json.dumps({"type": "record", "name": "Evolve", "fields": fs})
    return client.register_schema("evolve_avro-value", Schema(text, "AVRO")), avro.schema.parse(text)
def wire(v, rec):
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, v[0]))
    avro.io.DatumWriter(v[1]).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()
p = Producer({"bootstrap.servers": bootstrap})
v1 = reg(fields)
if step == "1":
    p.produce("evolve_avro", value=wire(v1, {"id": 1, "label": "v1 first"}))
else:
    v2 = reg(fields + [{"name": "extra", "type": "int", "default": 7}])
    p.produce("evolve_avro", value=wire(v2, {"id": 2, "label": "v2", "extra": 5}))
    p.produce("evolve_avro", value=wire(v1, {"id": 3, "label": "v1 again"}))
p.flush(30)
};
$registry->python($evolve, $bs, 1);
wait_for(q{SELECT count(*) FROM evolve_t}, 1, 'a message of the first version');
$registry->python($evolve, $bs, 2);
wait_for(q{SELECT string_agg(id || ' ' || coalesce(extra::text, 'NULL'), ', ' ORDER BY id) FROM evolve_t}, '1 NULL, 2 5, 3 7',
	"after a newer version adds a field with a default, an older version's message takes that default");

# --- the registry down: the messages wait, none is a dead letter, and all come when it is back
my $before = sql('SELECT count(*) FROM readings');
sql(q{SELECT pipeline.stop_consumer('avro_up')});
$ids = $registry->python("exec(open('$tools/avro_produce.py').read())", $bs, 'readings_avro', 300, "$dir/expected4.jsonl", $N, 'v4');
like($ids, qr/^\d+ \d+ \d+ \d+$/, 'a fourth version registered, and messages of it written');
$registry->ctl('down 8');
sql(q{SELECT pipeline.start_consumer('avro_up')});
wait_for(q{SELECT bool_or(last_error LIKE '%schema registry%') FROM pipeline.consumer_status WHERE consumer = 'avro_up'}, 't',
	'consumer_status says the registry cannot be reached');
is(sql('SELECT count(*) FROM readings'), $before, 'nothing is applied while the registry is down');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_up'}), 0, 'and nothing is a dead letter');
wait_for('SELECT count(*) FROM readings', $N + 300, 'when the registry is back, every message is applied');
sql(qq{TRUNCATE expected; COPY expected FROM '$dir/expected4.jsonl' WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02');});
is(sql(sprintf($equal, 'readings')), 300, 'and equals what was written');

# slower than the connection's schema.registry.request.timeout.ms (2 s): the same wait, the timeout as the reason
sql(q{SELECT pipeline.stop_consumer('avro_up')});
$registry->python("exec(open('$tools/avro_produce.py').read())", $bs, 'readings_avro', 100, "$dir/expected5.jsonl", $N + 300, 'v4');
$registry->ctl('slow 3000');
sql(q{SELECT pipeline.start_consumer('avro_up')});
wait_for(q{SELECT bool_or(last_error ~ 'schema registry.*timed out') FROM pipeline.consumer_status WHERE consumer = 'avro_up'}, 't',
	'a registry slower than the timeout: the request gives up, and the reason says so');
is(sql('SELECT count(*) FROM readings'), $N + 300, 'nothing is applied meanwhile');
$registry->ctl('slow 0');
wait_for('SELECT count(*) FROM readings', $N + 400, 'and everything once it answers in time');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_up'}), 0, 'no dead letter from either');

# the registry answering HTTP 500 for a while, then the schemas: the slot waits through it
sql(q{SELECT pipeline.stop_consumer('avro_up')});
$registry->python("exec(open('$tools/avro_produce.py').read())", $bs, 'readings_avro', 20, "$dir/expected6.jsonl", $N + 400, 'v4');
$registry->ctl('fail 3');
sql(q{SELECT pipeline.start_consumer('avro_up')});
wait_for('SELECT count(*) FROM readings', $N + 420, 'a registry answering errors (HTTP 500) three times: the messages come after');
like(sql(q{SELECT last_error FROM pipeline.consumer_status WHERE consumer = 'avro_up'}), qr/schema registry answered HTTP 500/,
	'and the status said why meanwhile');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'avro_up'}), 0, 'no dead letter from it');

# a target described again (ALTER TABLE) keeps the schemas it had: no request to a registry that is down
$registry->ctl('down 100000');
my $log_before = sql('SELECT count(*) FROM readings_log');
sql('ALTER TABLE readings_log ADD COLUMN probe int');
$registry->python(q{
import sys
from confluent_kafka import Consumer, Producer, TopicPartition
bootstrap = sys.argv[3]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "avro-copy", "enable.auto.commit": False})
lo, hi = c.get_watermark_offsets(TopicPartition("readings_avro", 0), timeout=10)
c.assign([TopicPartition("readings_avro", 0, hi - 50)])
p = Producer({"bootstrap.servers": bootstrap})
n = 0
while n < 50:
    m = c.poll(10)
    if m is None:
        break
    p.produce("readings_avro", key=m.key(), value=m.value(), partition=0)
    n += 1
p.flush(30)
}, $bs);
wait_for('SELECT count(*) FROM readings_log', $log_before + 50,
	'after ALTER TABLE the append consumer applies messages of the schemas it had, the registry down');
$registry->ctl('up');

# (the server log is read at the end: nothing may show the password)
my $log = slurp_file($node->logfile);
unlike($log, qr/reg-s3cret-pw/, 'the registry password is in no line of the server log');

done_testing();

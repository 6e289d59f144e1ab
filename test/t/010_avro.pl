# Avro and the schema registry.  First the test registry itself
# (test/registry/pe_registry.py), checked by an independent client,
# python3-confluent-kafka's SchemaRegistryClient: registering, ids kept for
# identical schemas, look-ups, versions, compatibility levels judged by
# Apache Avro's rules, Confluent's error codes, basic auth, and its fault
# injection.  Then the registry on a connection: its options checked, its
# password masked for other roles and kept out of the server log.
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
is($out, "refused\n2\n", 'the registry can be made unreachable for a while');

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

# (the server log is read at the end: nothing may show the password)
my $log = slurp_file($node->logfile);
unlike($log, qr/reg-s3cret-pw/, 'the registry password is in no line of the server log');

done_testing();

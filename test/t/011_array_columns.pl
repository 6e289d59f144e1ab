# Array columns in a consumer's target (int8[], text[], timestamptz[],
# jsonb[], varchar(3)[], a domain over an array), against the test broker.
# A JSON array becomes a PostgreSQL array element by element: nested arrays
# its dimensions, null NULL, a string always a string (even "NULL" or
# "{x}"), an object its JSON text; a JSON string or a CSV field is read as an
# array literal.  Upserts, appends straight into the heap and appends
# through the statement give the same rows.  An array column can be an
# upsert key, a tombstone's key and an aggregate's group.  An element that
# does not fit its type is a dead letter with the reason; the rest of the
# batch is applied.  (Avro arrays: 010_avro.pl.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PipelineExt::Broker;

my $broker = PipelineExt::Broker->start(brokers => 1, topics => { arr_json => 2, arr_csv => 1, arr_keyed => 1 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('arrays');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
});
$node->start;

sub sql { return $node->safe_psql('postgres', "SET TimeZone = 'UTC';\n" . $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($node->poll_query_until('postgres', $query, $expected), $what)
	  or diag("last result: " . sql($query) . "\nstatus: " . sql('SELECT * FROM pipeline.consumer_status')
		  . "\ndead letters: " . sql('SELECT consumer, error FROM pipeline.dead_letters'));
}

my $cols = q{id int, tags text[], nums int8[], grid int[], at timestamptz[], docs jsonb[], small few_ints,
             codes varchar(3)[], inner_tags text[]};
sql(qq{CREATE EXTENSION pipeline_ext;
       SELECT pipeline.create_connection('local', '$bs');
       CREATE DOMAIN few_ints AS int[] CHECK (cardinality(VALUE) <= 3);
       CREATE TABLE docs ($cols, PRIMARY KEY (id));
       CREATE TABLE docs_log ($cols);
       CREATE TABLE docs_trig ($cols);
       CREATE FUNCTION pass() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN RETURN NEW; END\$\$;
       CREATE TRIGGER pass BEFORE INSERT ON docs_trig FOR EACH ROW EXECUTE FUNCTION pass();
       SELECT pipeline.create_consumer('docs', 'local', 'arr_json', 'docs', column_map => '{"inner_tags": "meta.tags"}');
       SELECT pipeline.create_consumer('docs_log', 'local', 'arr_json', 'docs_log', mode => 'append',
                                       column_map => '{"inner_tags": "meta.tags"}');
       SELECT pipeline.create_consumer('docs_trig', 'local', 'arr_json', 'docs_trig', mode => 'append',
                                       column_map => '{"inner_tags": "meta.tags"}');});

my @messages = (
	# every element kind; "meta.tags" takes the full parser
	q{{"id": 1, "tags": ["a", "b \"q\"", "NULL", "{x}", "c,d", "back\\\\slash"], "nums": [1, null, 3],
	   "grid": [[1, 2], [3, 4]], "at": ["2026-05-01T12:00:00Z", "2026-05-01T12:00:01.5+02:00"],
	   "docs": [{"k": [1, 2]}, "s", 3, null, [5], true], "small": [1, 2], "codes": ["abc", null], "meta": {"tags": ["x"]}}},
	# empty arrays, array literals in strings, a null array; a flat object: the fast scanner
	q{{"id": 2, "tags": [], "nums": "{4,5}", "grid": null, "small": "{}", "codes": []}},
	q{{"id": 3, "nums": [1, "two"]}},
	q{{"id": 4, "grid": [[1, 2], [3]]}},
	q{{"id": 5, "small": [1, 2, 3, 4]}},
	q{{"id": 6, "codes": ["abcd"]}},
	q{{"id": 7, "tags": {"a": 1}}},
	q{{"id": 8, "tags": ["ok"]}});
my $values = join(', ', map { "\$j\$$_\$j\$" } @messages);
sql(qq{SELECT count(*) FROM unnest(ARRAY[$values]) WITH ORDINALITY m(v, k), pipeline.produce('local', 'arr_json', v, k::text)});

foreach my $t ('docs', 'docs_log', 'docs_trig')
{
	wait_for(qq{SELECT string_agg(id::text, ',' ORDER BY id) FROM $t}, '1,2,8', "$t: the good messages are applied");
	wait_for(qq{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = '$t'}, 5, "$t: each bad one is a dead letter");
	is(sql(qq{SELECT count(*) FROM $t WHERE id = 1
	             AND tags = ARRAY['a', 'b "q"', 'NULL', '{x}', 'c,d', 'back\\slash'] AND tags[3] IS NOT NULL
	             AND nums = ARRAY[1, NULL, 3]::int8[] AND grid = '{{1,2},{3,4}}' AND array_ndims(grid) = 2
	             AND at = ARRAY['2026-05-01 12:00:00+00', '2026-05-01 10:00:01.5+00']::timestamptz[]
	             AND docs::text = '{"{\\"k\\": [1, 2]}","\\"s\\"",3,NULL,[5],true}'
	             AND small = '{1,2}' AND codes = ARRAY['abc', NULL]::varchar[] AND inner_tags = '{x}'}), 1,
		"$t: JSON arrays are arrays of the column's elements: strings stay strings, nested arrays are dimensions, "
		. 'null is NULL, json elements keep their JSON');
	is(sql(qq{SELECT count(*) FROM $t WHERE id = 2 AND tags = '{}' AND nums = '{4,5}' AND grid IS NULL AND small = '{}'
	            AND codes = '{}' AND inner_tags IS NULL}), 1, "$t: empty arrays, array literals, a null array");
	my $dead = sql(qq{SELECT string_agg(convert_from(key, 'UTF8') || ' ' || error, e'\\n' ORDER BY key) FROM pipeline.dead_letters
	                  WHERE consumer = '$t'});
	like($dead, qr/^3 invalid input syntax for type bigint: "two"$/m, "$t: an element of the wrong type");
	like($dead, qr/^4 malformed array literal: .*Multidimensional arrays must have sub-arrays with matching dimensions/m, "$t: sub-arrays of different lengths");
	like($dead, qr/^5 value for domain public.few_ints violates check constraint "few_ints_check"$/m, "$t: the domain's check");
	like($dead, qr/^6 value too long for type character varying\(3\)$/m, "$t: the element type's typmod");
	like($dead, qr/^7 malformed array literal: "\{"a": 1\}"/m, "$t: an object is not an array");
}
is(sql(q{SELECT count(*) FROM (SELECT * FROM docs EXCEPT SELECT * FROM docs_log) a})
	. sql(q{SELECT count(*) FROM (SELECT * FROM docs_log EXCEPT SELECT * FROM docs_trig) a}), '00',
	'upsert, direct append and statement append give the same rows');

# --- CSV: array literals
sql(q{CREATE TABLE csv_arr (id int, tags text[], nums int[]);
      SELECT pipeline.create_consumer('csv_arr', 'local', 'arr_csv', 'csv_arr', format => 'csv', mode => 'append');
      SELECT pipeline.produce('local', 'arr_csv', '1,"{a,""b c""}","{1,2}"');
      SELECT pipeline.produce('local', 'arr_csv', '2,{x},"{1,y}"');
      SELECT pipeline.produce('local', 'arr_csv', '3,{},');});
wait_for(q{SELECT string_agg(id || ' ' || tags::text || ' ' || coalesce(nums::text, 'NULL'), ', ' ORDER BY id) FROM csv_arr},
	'1 {a,"b c"} {1,2}, 3 {} NULL', 'csv: fields are array literals');
wait_for(q{SELECT error FROM pipeline.dead_letters WHERE consumer = 'csv_arr'}, 'invalid input syntax for type integer: "y"',
	'csv: a bad element is a dead letter');

# --- an array as the upsert key: de-duplicated in the batch, updated, deleted by a tombstone; and a group
sql(q{CREATE TABLE by_tags (tags text[] PRIMARY KEY, n int, ts timestamptz);
      SELECT pipeline.create_consumer('by_tags', 'local', 'arr_keyed', 'by_tags', delete_on_tombstone => true);
      SELECT pipeline.create_aggregate('tag_counts', 'by_tags', '1 hour', 'ts', ARRAY['count(*)', 'max(n)'], ARRAY['tags']);
      SELECT pipeline.produce('local', 'arr_keyed', json_build_object('tags', t, 'n', n, 'ts', '2026-01-01T00:10:00Z')::text,
                              json_build_object('tags', t)::text)
        FROM (VALUES (ARRAY['a', 'b'], 1), (ARRAY['c'], 1), (ARRAY['a', 'b'], 2), (ARRAY['a', 'b', NULL], 3)) v(t, n);});
wait_for(q{SELECT string_agg(tags::text || ' ' || n, ', ' ORDER BY tags) FROM by_tags}, '{a,b} 2, {a,b,NULL} 3, {c} 1',
	'an array key: the last value per key');
sql(q{SELECT pipeline.produce('local', 'arr_keyed', NULL::text, '{"tags": ["c"]}')});
wait_for(q{SELECT string_agg(tags::text, ', ' ORDER BY tags) FROM by_tags}, '{a,b}, {a,b,NULL}', 'a tombstone deletes its array key');
is(sql(q{SELECT string_agg(tags::text || ' ' || count || ' ' || max_n, ', ' ORDER BY tags) FROM tag_counts}),
	'{a,b} 2 2, {a,b,NULL} 1 3, {c} 1 1', 'an aggregate grouped by an array column counts every message');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'by_tags'}), 0, 'no dead letters');

done_testing();

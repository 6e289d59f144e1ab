# Change events from tables, end to end: a table's INSERTs, UPDATEs (key
# changes too) and DELETEs from 4 concurrent pgbench sessions go through the
# outbox into a topic, and a pipeline_ext upsert consumer with
# delete_on_tombstone applies them to a second table, which ends equal to
# the first.  Also the Debezium-style envelope, chosen key columns, a
# rolled-back statement, uncapture, and who may capture what.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use PipelineExt::Broker;

my $broker = PipelineExt::Broker->start(brokers => 1, topics => { cdc => 4, cdz => 1, cdk => 1, cdp => 1, cdd => 1 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('capture');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 16
log_min_messages = info
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	my $ok = $node->poll_query_until('postgres', $query, $expected);
	ok($ok, $what) or diag("last result: " . $node->safe_psql('postgres', $query)
		. "\noutbox: " . $node->safe_psql('postgres', 'SELECT * FROM pipeline.outbox_status')
		. "\nconsumer: " . $node->safe_psql('postgres', 'SELECT * FROM pipeline.consumer_status'));
	return $ok;
}

sub read_topic { return $broker->read_topic($_[0]); }

# --- a table followed by a consumer, under concurrent changes ---------------
sql(q{
CREATE TABLE cap_src (id int PRIMARY KEY, v int NOT NULL, note text);
CREATE TABLE cap_dst (id int PRIMARY KEY, v int NOT NULL, note text);
SELECT pipeline.capture_changes('cap_src', 'local', 'cdc');
SELECT pipeline.create_consumer('cdc_follow', 'local', 'cdc', 'cap_dst', delete_on_tombstone => true);
});
is(sql(q{SELECT "table" || ' ' || topic || ' ' || key_columns::text || ' ' || format FROM pipeline.captures}),
	'cap_src cdc {id} row', 'the capture is listed, keyed by the primary key');

my $script = $node->basedir . '/changes.sql';
open(my $fh, '>', $script) or die;
print $fh q{\set id random(1, 2000)
\set op random(1, 10)
\if :op <= 4
INSERT INTO cap_src VALUES (:id, :id, 'new') ON CONFLICT (id) DO UPDATE SET v = cap_src.v + 1, note = 'upserted';
\elif :op <= 6
UPDATE cap_src SET v = v + 1, note = 'updated' WHERE id = :id;
\elif :op <= 8
DELETE FROM cap_src WHERE id = :id;
\elif :op = 9
UPDATE cap_src SET v = v + 10 WHERE id BETWEEN :id AND :id + 20;
\else
UPDATE cap_src SET id = id + 3000 WHERE id = :id AND NOT EXISTS (SELECT FROM cap_src WHERE id = :id + 3000);
\endif
};
close($fh);
$node->command_ok([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '2500', '--max-tries', '10', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'postgres' ], '4 sessions insert, update (keys too) and delete');
wait_for(q{SELECT NOT EXISTS (SELECT FROM pipeline.outbox)}, 't', 'the relay publishes every change');
wait_for(q{SELECT count(lag_messages) = 4 AND sum(lag_messages) = 0 FROM pipeline.consumer_lag WHERE consumer = 'cdc_follow'},
	't', 'the consumer applies every change');
is(sql(q{SELECT (SELECT count(*) FROM (TABLE cap_src EXCEPT TABLE cap_dst) a)
                + (SELECT count(*) FROM (TABLE cap_dst EXCEPT TABLE cap_src) b)}),
	'0', 'the consumer\'s table ends equal to the captured one');
cmp_ok(sql('SELECT count(*) FROM cap_src'), '>', 100, 'with rows in it');
cmp_ok(sql(q{SELECT count(*) FROM cap_src WHERE id > 3000}), '>', 0, '... some of them under a changed key');

# a rolled-back statement publishes nothing
my $before = scalar(@{ read_topic('cdc') });
sql(q{BEGIN; INSERT INTO cap_src VALUES (99999, 1, 'rolled back'); ROLLBACK;});
sql(q{SELECT pipeline.send('local', 'cdc', '{"id": 99998, "v": 0, "note": "marker"}', '{"id": 99998}')});
wait_for(q{SELECT count(*) FROM cap_dst WHERE id = 99998}, '1', 'a marker sent afterwards arrives');
my $after = read_topic('cdc');
is(scalar(@$after) - $before, 1, 'the rolled-back INSERT published nothing');

# --- the Debezium-style envelope, tombstones, chosen key columns -------------
sql(q{
CREATE TABLE cap_dbz (a int NOT NULL, b text NOT NULL, payload jsonb, PRIMARY KEY (a, b));
SELECT pipeline.capture_changes('cap_dbz', 'local', 'cdz', format => 'debezium');
INSERT INTO cap_dbz VALUES (1, 'x', '{"k": [1, 2]}');
UPDATE cap_dbz SET payload = '{}';
DELETE FROM cap_dbz;
});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'the envelopes are published');
{
	my $m = read_topic('cdz');
	is(scalar(@$m), 4, 'c, u, d and a tombstone');
	my @v = map { $_->[3] eq '\N' ? undef : decode_json($_->[3]) } @$m;
	is(join(',', map { $_ ? $_->{op} : 'tombstone' } @v), 'c,u,d,tombstone', 'in that order');
	is_deeply(decode_json($m->[0][2]), { a => 1, b => 'x' }, 'the key is the primary key as JSON');
	is_deeply($v[1]{before}, { a => 1, b => 'x', payload => { k => [ 1, 2 ] } }, 'update: before');
	is_deeply($v[1]{after}, { a => 1, b => 'x', payload => {} }, 'update: after');
	ok(!defined $v[2]{after} && $v[2]{before}{a} == 1, 'delete: before, no after');
	is($v[0]{source}{table} . '/' . $v[0]{source}{schema} . '/' . $v[0]{source}{connector} . '/' . $v[0]{source}{version},
		'cap_dbz/public/pipeline_ext/' . sql(q{SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext'}),
		'source names the table, and the extension\'s version');
	ok($v[0]{source}{txId} > 0 && $v[0]{source}{txId} != $v[1]{source}{txId} && $v[0]{source}{lsn} > 0,
		'source has the transaction id and an LSN');
	is($m->[3][3], '\N', 'the tombstone has a null value');
}

# the envelope names the table as it is now: renamed, or moved to another
# schema, in a session that had already made an envelope of it
sql(q{
CREATE SCHEMA cap_elsewhere;
INSERT INTO cap_dbz VALUES (2, 'y', NULL);
ALTER TABLE cap_dbz RENAME TO cap_dbz_renamed;
INSERT INTO cap_dbz_renamed VALUES (3, 'y', NULL);
ALTER TABLE cap_dbz_renamed SET SCHEMA cap_elsewhere;
INSERT INTO cap_elsewhere.cap_dbz_renamed VALUES (4, 'y', NULL);
ALTER SCHEMA cap_elsewhere RENAME TO cap_moved;
INSERT INTO cap_moved.cap_dbz_renamed VALUES (5, 'y', NULL);
ALTER TABLE cap_moved.cap_dbz_renamed SET SCHEMA public;
ALTER TABLE cap_dbz_renamed RENAME TO cap_dbz;
});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
{
	my $m = read_topic('cdz');
	is(join(' ', map { my $v = decode_json($_->[3]); "$v->{after}{a}:$v->{source}{schema}.$v->{source}{table}" } @$m[ 4 .. 7 ]),
		'2:public.cap_dbz 3:public.cap_dbz_renamed 4:cap_elsewhere.cap_dbz_renamed 5:cap_moved.cap_dbz_renamed',
		'source.schema and source.table follow a rename and a change of schema');
}

sql(q{
CREATE TABLE cap_key (id serial PRIMARY KEY, code text NOT NULL UNIQUE, v int);
SELECT pipeline.capture_changes('cap_key', 'local', 'cdk', key_columns => '{code}', tombstones => false);
INSERT INTO cap_key (code, v) VALUES ('A', 1);
DELETE FROM cap_key;
});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
{
	my $m = read_topic('cdk');
	is(scalar(@$m) . ' ' . $m->[0][2], '1 {"code" : "A"}', 'chosen key columns; no tombstone when asked for none');
}

# --- an INSERT's messages and a DELETE's tombstones are made without a query --
# (capture_rows.c): their bytes equal what json_build_object() and
# row_to_json() make of the same rows, for values of many types (a dropped
# column, a domain, a composite, arrays, NaN, a quote in a column's name,
# text that JSON escapes, an enum cast to json by a function of its own),
# over more rows than one chunk, while other triggers read the same
# transition table before and after; and with the transition table
# spilled to disk (work_mem).  Compared in the writing transaction, rolled
# back: nothing is published.
sql(q{
CREATE TYPE cap_pair AS (x int, y text);
CREATE DOMAIN cap_dom AS text CHECK (VALUE <> '');
CREATE TYPE cap_mood AS ENUM ('low', 'high');
CREATE FUNCTION cap_mood_json(cap_mood) RETURNS json LANGUAGE sql AS $$SELECT json_build_object('mood', $1::text)$$;
CREATE CAST (cap_mood AS json) WITH FUNCTION cap_mood_json(cap_mood);
CREATE TABLE cap_types (k1 int NOT NULL, gone int, "k""2" text NOT NULL, n numeric, f float8, ts timestamptz,
    d date, b bool, j jsonb, arr int[], p cap_pair, dm cap_dom, by bytea, e cap_mood, PRIMARY KEY ("k""2", k1));
ALTER TABLE cap_types DROP COLUMN gone;
CREATE TABLE cap_types_seen (n bigint);
CREATE FUNCTION cap_types_count() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO cap_types_seen SELECT count(*) FROM new_rows; RETURN NULL; END$$;
CREATE TRIGGER cap_types_count AFTER INSERT ON cap_types REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cap_types_count();
CREATE TRIGGER zz_cap_types_count AFTER INSERT ON cap_types REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cap_types_count();
SELECT pipeline.capture_changes('cap_types', 'local', 'cdt');
});
{
	my $same = q{
SELECT count(*) || ' ' || count(*) FILTER (WHERE o.key = convert_to(json_build_object('k"2', t."k""2", 'k1', t.k1)::text, 'UTF8')
                                           AND o.value IS NOT DISTINCT FROM VALUE_EXPR)
  FROM pipeline.outbox o LEFT JOIN SOURCE t
    ON o.key = convert_to(json_build_object('k"2', t."k""2", 'k1', t.k1)::text, 'UTF8')
 WHERE o.topic = 'cdt'};
	(my $ins = $same) =~ s/VALUE_EXPR/convert_to(row_to_json(t.*)::text, 'UTF8')/;
	$ins =~ s/SOURCE/cap_types/;
	is(sql(qq{
SET timezone = 'Asia/Kolkata';
BEGIN;
INSERT INTO cap_types SELECT i, 'k "' || i || chr(92) || chr(233) || chr(10) || chr(9) || chr(1), CASE WHEN i % 7 = 0 THEN 'NaN' ELSE i / 3.0 END,
    CASE WHEN i % 11 = 0 THEN '-Infinity'::float8 ELSE i * 1.5e-300 END, '2026-12-04 10:00:00+00'::timestamptz + i * interval '1 second',
    DATE '2026-01-01' + i, i % 2 = 0, jsonb_build_object('i', i, 'a', ARRAY[i, NULL]), ARRAY[i, NULL, -i],
    ROW(i, 'p"' || i)::cap_pair, 'dom' || i, decode('00ff' || lpad(to_hex(i), 4, '0'), 'hex'),
    CASE WHEN i % 3 = 0 THEN 'high'::cap_mood WHEN i % 3 = 1 THEN 'low' END
  FROM generate_series(1, 2500) i;
INSERT INTO cap_types (k1, "k""2") VALUES (0, '');
SET LOCAL timezone = 'UTC';  -- the messages were made in UTC, whatever the writer's zone (below)
$ins;
SELECT string_agg(n::text, ',' ORDER BY n DESC) FROM cap_types_seen;
SELECT count(*) FROM pipeline.outbox WHERE topic = 'cdt' AND value LIKE '%"e":{"mood" : "high"}%';
ROLLBACK;
}), "2501 2501
2500,2500,1,1
833", "an INSERT's messages: the bytes json_build_object() and row_to_json() make, every row once; the triggers before and after see them all");
	(my $del = $same) =~ s/VALUE_EXPR/NULL/;
	$del =~ s/SOURCE/cap_types_gone/;
	is(sql(qq{
BEGIN;
SET LOCAL work_mem = '64kB';
INSERT INTO cap_types (k1, "k""2", j) SELECT i, 'd' || i, jsonb_build_object('pad', repeat('x', 200)) FROM generate_series(1, 5000) i;
$ins;
DELETE FROM pipeline.outbox WHERE topic = 'cdt';
UPDATE cap_types SET b = k1 % 2 = 0;
$ins;
DELETE FROM pipeline.outbox WHERE topic = 'cdt';
CREATE TEMP TABLE cap_types_gone AS TABLE cap_types;
DELETE FROM cap_types;
$del;
ROLLBACK;
}), "5000 5000\n5000 5000\n5000 5000",
		"an INSERT's messages, an UPDATE's (its query read by a cursor, a chunk at a time) and a DELETE's tombstones (a null value) from transition tables spilled to disk");
}
# the messages do not depend on the writing session's settings: one row has
# one key whatever the session's time zone, bytea_output, extra_float_digits,
# IntervalStyle and DateStyle (else its tombstone would miss it, and the
# UPDATE below would pair 0.3 with 0.30000000000000004, which print alike
# at extra_float_digits 0); the values too.  Each statement in another
# session's settings, through both ways messages are made (the UPDATE's
# query, the INSERT's and DELETE's transition tables), rolled back.
is(sql(q{
BEGIN;
CREATE TABLE cap_set (f float8 PRIMARY KEY, at timestamptz NOT NULL, iv interval, b bytea, r tstzrange);
SELECT pipeline.capture_changes('cap_set', 'local', 'cds') > 0;
SET LOCAL timezone = 'Asia/Tokyo';
INSERT INTO cap_set VALUES (0.3, '2024-01-01 00:00+00', '1 day 2 hours', '\x00ff',
    tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00'));
SET LOCAL bytea_output = 'escape';
SET LOCAL extra_float_digits = 0;
SET LOCAL IntervalStyle = 'sql_standard';
SET LOCAL DateStyle = 'German';
INSERT INTO cap_set VALUES (0.1::float8 + 0.2::float8, '2024-01-01 00:00+00', '1 day 2 hours', '\x00ff',
    tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00'));
SET LOCAL timezone = 'America/New_York';
UPDATE cap_set SET b = '\x01';
DELETE FROM cap_set WHERE f = 0.3;
SHOW timezone; SHOW bytea_output; SHOW extra_float_digits;
SELECT string_agg(convert_from(key, 'UTF8') || ' ' || coalesce(convert_from(value, 'UTF8'), '-'), E'\n' ORDER BY id)
  FROM pipeline.outbox WHERE topic = 'cds';
ROLLBACK;
}), q{t
America/New_York
escape
0
{"f" : 0.3} {"f":0.3,"at":"2024-01-01T00:00:00+00:00","iv":"1 day 02:00:00","b":"\\\\x00ff","r":"[\"2024-01-01 00:00:00+00\",\"2024-01-02 00:00:00+00\")"}
{"f" : 0.30000000000000004} {"f":0.30000000000000004,"at":"2024-01-01T00:00:00+00:00","iv":"1 day 02:00:00","b":"\\\\x00ff","r":"[\"2024-01-01 00:00:00+00\",\"2024-01-02 00:00:00+00\")"}
{"f" : 0.3} {"f":0.3,"at":"2024-01-01T00:00:00+00:00","iv":"1 day 02:00:00","b":"\\\\x01","r":"[\"2024-01-01 00:00:00+00\",\"2024-01-02 00:00:00+00\")"}
{"f" : 0.30000000000000004} {"f":0.30000000000000004,"at":"2024-01-01T00:00:00+00:00","iv":"1 day 02:00:00","b":"\\\\x01","r":"[\"2024-01-01 00:00:00+00\",\"2024-01-02 00:00:00+00\")"}
{"f" : 0.3} -}, "a row's key and value are the same in any session's settings, which stay the session's");
# a trigger made by hand without a transition table is refused, not followed
{
	my $tid = sql(q{SELECT id FROM pipeline.capture WHERE relid = 'cap_types'::regclass});
	sql(qq{CREATE TRIGGER cap_bare AFTER DELETE ON cap_types FOR EACH STATEMENT EXECUTE FUNCTION pipeline._capture_trigger('$tid')});
	my ($rc, $out, $err) = $node->psql('postgres', q{DELETE FROM cap_types});
	like($err, qr/trigger "cap_bare" on table "cap_types" has no transition table/, 'a capture trigger without a transition table is an error');
	sql(q{DROP TRIGGER cap_bare ON cap_types});
}
is(sql(q{SELECT count(*) FROM pipeline.outbox WHERE topic = 'cdt'}), '0', 'rolled back: nothing waits');

# a key column renamed: the table's writes go on, keyed by the new name
sql(q{ALTER TABLE cap_key RENAME COLUMN code TO sku});
{
	my ($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO cap_key (sku, v) VALUES ('B', 2); UPDATE cap_key SET v = 3});
	is($rc . $err, '0', 'writes to a table whose key column was renamed succeed');
	wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
	my $m = read_topic('cdk');
	is(join(' | ', map { $_->[2] . ' ' . $_->[3] } @$m[ 1 .. $#$m ]),
		'{"sku" : "B"} {"id":2,"sku":"B","v":2} | {"sku" : "B"} {"id":2,"sku":"B","v":3}',
		'... and their changes are published, keyed by the renamed column');
	is(sql(q{SELECT key_columns FROM pipeline.captures WHERE "table" = 'cap_key'::regclass}), '{sku}',
		'the capture lists the key column by its new name');
}
# renamed away, and another column given the old name: the key stays the renamed column
sql(q{ALTER TABLE cap_key RENAME COLUMN sku TO old_sku; ALTER TABLE cap_key ADD COLUMN sku text});
sql(q{INSERT INTO cap_key (old_sku, v, sku) VALUES ('C', 4, 'not the key')});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
is(read_topic('cdk')->[-1][2], '{"old_sku" : "C"}', 'a new column with the old name does not become the key');
# the key stays a key: ALTER TABLE that would leave a key column nullable or
# gone is refused while the table is captured
sql(q{CREATE TABLE cap_guard (id int PRIMARY KEY, code text NOT NULL, v int);
      CREATE UNIQUE INDEX cap_guard_code ON cap_guard (code);
      CREATE TABLE cap_guard_pk (id int PRIMARY KEY, v int);
      SELECT pipeline.capture_changes('cap_guard', 'local', 'cdk', key_columns => '{code}');
      SELECT pipeline.capture_changes('cap_guard_pk', 'local', 'cdk');});
foreach my $case (
	[ q{ALTER TABLE cap_guard ALTER COLUMN code DROP NOT NULL}, qr/key column "code" of captured table "cap_guard" must stay NOT NULL/ ],
	[ q{ALTER TABLE cap_guard DROP COLUMN code}, qr/cannot drop key column "code" of captured table "cap_guard"/ ],
	[ q{ALTER TABLE cap_guard_pk DROP CONSTRAINT cap_guard_pk_pkey, ALTER COLUMN id DROP NOT NULL},
	  qr/key column "id" of captured table "cap_guard_pk" must stay NOT NULL/ ],
	[ q{ALTER TABLE cap_guard_pk DROP COLUMN id CASCADE}, qr/cannot drop key column "id" of captured table "cap_guard_pk"/ ])
{
	my ($rc, $out, $err) = $node->psql('postgres', $case->[0]);
	like($err, qr/$case->[1].*\n(.*\n)*HINT:  Uncapture the table first/, "refused while captured: $case->[0]");
}
{
	my ($rc, $out, $err) = $node->psql('postgres', q{ALTER TABLE cap_guard DROP CONSTRAINT cap_guard_pkey});
	is($rc . $err, '0', 'a primary key the capture\'s key does not rely on may go');
}
{
	my ($rc, $out, $err) = $node->psql('postgres',
		q{SELECT pipeline.uncapture('cap_guard'); DROP INDEX cap_guard_code; ALTER TABLE cap_guard ALTER COLUMN code DROP NOT NULL});
	is($rc . $err, '0', '... and after uncapture, all of it may go');
}

# a key column dropped past the guard (event triggers do not fire under
# session_replication_role = replica): each kind of statement says so
sql(q{CREATE TABLE cap_kdrop (id int PRIMARY KEY, v int);
      SELECT pipeline.capture_changes('cap_kdrop', 'local', 'cdk', format => 'debezium');
      INSERT INTO cap_kdrop VALUES (1, 1);
      SET session_replication_role = replica;
      ALTER TABLE cap_kdrop DROP COLUMN id;
      RESET session_replication_role;});
foreach my $stmt (q{INSERT INTO cap_kdrop VALUES (3)}, q{UPDATE cap_kdrop SET v = 2}, q{DELETE FROM cap_kdrop})
{
	my ($rc, $out, $err) = $node->psql('postgres', $stmt);
	like($err, qr/key column "id" of captured table "cap_kdrop" does not exist\n.*HINT:.*pipeline.capture_changes/,
		"a key column dropped: $stmt");
}
sql(q{SELECT pipeline.uncapture('cap_kdrop')});

# --- a partitioned table: writes through it and straight into its partitions --
# A statement on a partition fires the partition's statement triggers, not
# its parent's: the capture covers partitions there are, made or attached
# later (an event trigger), and lets go of one detached.
sub changes_of
{
	return join(' ', map {
		my $k = decode_json($_->[2]);
		$k->{id} . ':' . ($_->[3] eq '\N' ? '-' : decode_json($_->[3])->{v})
	} @{ read_topic($_[0]) });
}
sql(q{
CREATE TABLE cap_part (id int NOT NULL, region text NOT NULL, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE cap_part_eu PARTITION OF cap_part FOR VALUES IN ('eu');
SELECT pipeline.capture_changes('cap_part', 'local', 'cdp');
CREATE TABLE cap_part_us PARTITION OF cap_part FOR VALUES IN ('us');
CREATE TABLE cap_part_ap (v int, region text NOT NULL, id int NOT NULL);
ALTER TABLE cap_part ATTACH PARTITION cap_part_ap FOR VALUES IN ('ap');
});
sql(q{INSERT INTO cap_part VALUES (1, 'eu', 1), (2, 'us', 1), (3, 'ap', 1)});
sql(q{INSERT INTO cap_part_eu VALUES (4, 'eu', 1)});
sql(q{INSERT INTO cap_part_us VALUES (5, 'us', 1)});
sql(q{INSERT INTO cap_part_ap (id, region, v) VALUES (6, 'ap', 1)});
sql(q{UPDATE cap_part_us SET v = 2 WHERE id = 5});
sql(q{DELETE FROM cap_part_ap WHERE id = 6});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
is(changes_of('cdp'), '1:1 2:1 3:1 4:1 5:1 6:1 5:2 6:-',
	'changes through the partitioned table and straight into its partitions (there before, made after, attached), each once');
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_part_eu', 'local', 'cdp')});
like($err, qr/changes of table "cap_part_eu" are already captured, as a partition of "cap_part"/,
	'a partition of a captured table is captured with it');
sql(q{ALTER TABLE cap_part DETACH PARTITION cap_part_us});
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO cap_part_us VALUES (7, 'us', 1)});
is($rc . $err, '0', 'a partition detached takes writes');
is(sql(q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 'cap_part_us'::regclass}), '0', '... without the capture\'s triggers');
sql(q{INSERT INTO cap_part VALUES (8, 'eu', 1)});
wait_for(q{SELECT count(*) FROM pipeline.outbox}, '0', 'published');
is(changes_of('cdp'), '1:1 2:1 3:1 4:1 5:1 6:1 5:2 6:- 8:1', '... and its writes are not published');
# a table captured on its own is not attached under another capture
sql(q{CREATE TABLE cap_part_sa (id int NOT NULL, region text NOT NULL, v int, PRIMARY KEY (id, region));
      SELECT pipeline.capture_changes('cap_part_sa', 'local', 'cdp')});
($rc, $out, $err) = $node->psql('postgres', q{ALTER TABLE cap_part ATTACH PARTITION cap_part_sa FOR VALUES IN ('sa')});
like($err, qr/table "cap_part_sa" is captured on its own.*\n.*HINT:.*uncapture/,
	'a table captured on its own is not attached to a captured table');
# a child by inheritance is not a partition: not captured, and its writes go on
sql(q{CREATE TABLE cap_inh (id int PRIMARY KEY, v int);
      SELECT pipeline.capture_changes('cap_inh', 'local', 'cdp');
      CREATE TABLE cap_inh_child () INHERITS (cap_inh);});
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO cap_inh_child VALUES (1, 1)});
is($rc . $err, '0', 'a child by inheritance of a captured table takes writes');
sql(q{SELECT pipeline.uncapture('cap_inh')});
sql(q{SELECT pipeline.uncapture('cap_part')});
is(sql(q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pipeline_capture%'
          AND tgrelid IN ('cap_part'::regclass, 'cap_part_eu'::regclass, 'cap_part_ap'::regclass)}), '0',
	'uncapture drops the triggers of the partitions too');
# a captured table dropped: its capture goes with it
sql(q{DROP TABLE cap_part_sa});
is(sql(q{SELECT count(*) FROM pipeline.capture WHERE relid::oid NOT IN (SELECT oid FROM pg_class)}), '0',
	'dropping a captured table drops its capture');

# --- a dump and restore keeps the capture on the restored table -------------
# The restored table has another OID; the capture names it by name.
{
	$node->safe_psql('postgres', 'CREATE DATABASE dump_src');
	$node->safe_psql('dump_src', qq{CREATE EXTENSION pipeline_ext;
		SELECT pipeline.create_connection('local', '$bs');
		CREATE TABLE cap_dump (id int PRIMARY KEY, v int);
		SELECT pipeline.capture_changes('cap_dump', 'local', 'cdd');});
	my $file = $node->basedir . '/dump_src.sql';
	$node->command_ok([ 'pg_dump', '-f', $file, '-d', $node->connstr('dump_src') ], 'pg_dump of a database with a capture');
	$node->safe_psql('postgres', 'CREATE DATABASE dump_dst');
	$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $file, '-d', $node->connstr('dump_dst') ],
		'... restored into another database');
	my ($rc2, $out2, $err2) = $node->psql('dump_dst', q{INSERT INTO cap_dump VALUES (1, 1)});
	is($rc2 . $err2, '0', 'the restored table takes writes');
	is($node->safe_psql('dump_dst', q{SELECT "table" FROM pipeline.captures}), 'cap_dump', '... and is the one captured');
	ok($node->poll_query_until('dump_dst', q{SELECT count(*) FROM pipeline.outbox}, '0'), '... and its change is published');
	is(changes_of('cdd'), '1:1', '... from the restored database');
}

# --- errors and privileges ---------------------------------------------------
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_src', 'local', 'cdc')});
like($err, qr/changes of table "cap_src" are already captured/, 'one capture per table');
sql(q{CREATE TABLE cap_nokey (v int)});
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_nokey', 'local', 'cdc')});
like($err, qr/has no primary key.*\n.*HINT:.*key_columns/, 'a table without a primary key needs key_columns');
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_nokey', 'local', 'cdc', key_columns => '{v}')});
like($err, qr/key column "v" of table "cap_nokey" may be null/, 'a key column must be NOT NULL');
sql(q{CREATE TABLE cap_twice (a int NOT NULL, v int)});
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_twice', 'local', 'cdc', key_columns => '{a,a}')});
like($err, qr/key column "a" is named twice/, 'a key column named twice');
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_twice', 'local', 'cdc', key_columns => '{a}')});
like($err, qr/key_columns of table "cap_twice" do not identify a row: no unique index covers them/,
	'key columns that no unique index covers (an UPDATE pairs old and new rows by them)');
sql(q{CREATE UNIQUE INDEX cap_twice_partial ON cap_twice (a) WHERE v > 0});
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_twice', 'local', 'cdc', key_columns => '{a}')});
like($err, qr/do not identify a row/, '... nor a partial unique index');
($rc, $out, $err) = $node->psql('postgres', q{CREATE TEMP TABLE cap_tmp (id int PRIMARY KEY); SELECT pipeline.capture_changes('cap_tmp', 'local', 'cdc')});
like($err, qr/changes of temporary table "cap_tmp" cannot be captured/, 'a temporary table is not captured');
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_twice', 'local', 'pipeline_ext_outbox_checkpoints', key_columns => '{a}')});
like($err, qr/topic "pipeline_ext_outbox_checkpoints" is where the outbox relays keep their checkpoints/,
	'changes are not captured into the relays\' checkpoint topic');
# ... and a message for it that reached the outbox otherwise (a capture made
# before pipeline_ext.outbox_checkpoint_topic named its topic) is a dead letter
sql(q{INSERT INTO pipeline.outbox (connection, topic, value, sent_by)
      VALUES ('local', 'pipeline_ext_outbox_checkpoints', 'not a checkpoint', 'postgres'::regrole::oid)});
wait_for(q{SELECT count(*) FROM pipeline.outbox_dead_letter
            WHERE error LIKE 'topic "pipeline_ext_outbox_checkpoints" is where the outbox relays keep their checkpoints%'}, '1',
	'a message for the checkpoint topic is a dead letter, not sent');
sql(q{DELETE FROM pipeline.outbox_dead_letter});
($rc, $out, $err) = $node->psql('postgres', q{SELECT pipeline.capture_changes('cap_nokey', 'local', 'cdc', format => 'avro')});
like($err, qr/unknown format "avro"/, 'an unknown format');
sql(q{CREATE ROLE cap_other LOGIN; GRANT USAGE ON SCHEMA pipeline TO cap_other;
      CREATE TABLE cap_theirs (id int PRIMARY KEY); ALTER TABLE cap_theirs OWNER TO cap_other;});
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE cap_other; SELECT pipeline.capture_changes('cap_src', 'local', 'cdc')});
like($err, qr/must be owner of table cap_src/, 'only the table\'s owner captures it');
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE cap_other; SELECT pipeline.capture_changes('cap_theirs', 'local', 'cdc')});
like($err, qr/permission denied for connection "local"/, '... through a connection it may use');
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE cap_other; SELECT pipeline.uncapture('cap_src')});
like($err, qr/must be owner of table cap_src/, 'only the owner uncaptures');
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE cap_other; INSERT INTO pipeline.outbox (connection, topic, sent_by) VALUES ('local', 'x', 0)});
like($err, qr/permission denied for table outbox/, 'nobody writes into the outbox but the extension');

# a role that may change the table but not use the connection: its changes go out for the capture's owner
sql(q{GRANT INSERT ON cap_src TO cap_other});
sql(q{SET ROLE cap_other; INSERT INTO cap_src VALUES (77777, 1, 'by a role that may not use the connection')});
wait_for(q{SELECT count(*) FROM cap_dst WHERE id = 77777}, '1',
	'a change made by a role that may not use the connection is published, for the capture\'s owner');
is(sql(q{SELECT count(*) FROM pipeline.outbox_dead_letter}), '0', '... not a dead letter');

# a role dropped (nothing records its connections and captures as its): the
# changes its capture still makes are dead letters, not published for it
sql(q{CREATE ROLE cap_gone LOGIN; GRANT USAGE ON SCHEMA pipeline TO cap_gone; GRANT CREATE ON SCHEMA public TO cap_gone;
      GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb) TO cap_gone});
sql(qq{SET ROLE cap_gone; SELECT pipeline.create_connection('gone_conn', '$bs');
       CREATE TABLE cap_orphan (id int PRIMARY KEY); SELECT pipeline.capture_changes('cap_orphan', 'gone_conn', 'cdk');});
sql(q{ALTER TABLE cap_orphan OWNER TO CURRENT_USER; DROP OWNED BY cap_gone; DROP ROLE cap_gone});
sql(q{INSERT INTO cap_orphan VALUES (1)});
wait_for(q{SELECT count(*) FROM pipeline.outbox_dead_letter WHERE connection = 'gone_conn' AND error ~ '^role \d+, which sent it, no longer exists$'},
	'1', 'a change captured for a role dropped since is a dead letter');
sql(q{DELETE FROM pipeline.outbox_dead_letter; SELECT pipeline.uncapture('cap_orphan'); SELECT pipeline.drop_connection('gone_conn')});

# the trigger function names a capture: another table's is refused
my $cid = sql(q{SELECT id FROM pipeline.capture WHERE relid = 'cap_src'::regclass});
sql(qq{SET ROLE cap_other;
       CREATE TRIGGER steal AFTER INSERT ON cap_theirs REFERENCING NEW TABLE AS pe_new
       FOR EACH STATEMENT EXECUTE FUNCTION pipeline._capture_trigger('$cid');});
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE cap_other; INSERT INTO cap_theirs VALUES (1)});
like($err, qr/change capture \d+ is not of table "cap_theirs"/,
	'a trigger on another table cannot publish through someone else\'s capture');

# --- uncapture ---------------------------------------------------------------
sql(q{SELECT pipeline.uncapture('cap_src')});
is(sql(q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 'cap_src'::regclass}), '0', 'uncapture drops the triggers');
is(sql(q{SELECT count(*) FROM pipeline.captures WHERE "table" = 'cap_src'::regclass}), '0', '... and the capture');
sql(q{INSERT INTO cap_src VALUES (88888, 1, 'not captured')});
sql(q{SELECT pipeline.send('local', 'cdc', '{"id": 99997, "v": 0, "note": "marker 2"}', '{"id": 99997}')});
wait_for(q{SELECT count(*) FROM cap_dst WHERE id = 99997}, '1', 'a second marker arrives');
is(sql(q{SELECT count(*) FROM cap_dst WHERE id = 88888}), '0', 'a change after uncapture is not published');

$node->stop;
done_testing();

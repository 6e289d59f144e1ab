-- 0.1.0 installs and updates to the current version in place
\set orig :DBNAME
CREATE DATABASE regress_upgrade;
\c regress_upgrade
CREATE EXTENSION pipeline_ext VERSION '0.1.0';
SELECT pipeline.create_connection('kept', '127.0.0.1:9');
SELECT to_regclass('pipeline.consumer') IS NULL AS no_consumers_yet;
ALTER EXTENSION pipeline_ext UPDATE TO '0.2.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT name FROM pipeline.connections;
SELECT count(*) FROM pipeline.consumers;
SELECT to_regclass('pipeline.offsets') IS NOT NULL AS offsets, to_regclass('pipeline.dead_letters') IS NOT NULL AS dead_letters;
-- 0.2.0 -> 0.3.0: consumer_lag gains lag_time and status, health reads them
SELECT count(*) AS lag_columns_before FROM information_schema.columns
 WHERE table_schema = 'pipeline' AND table_name = 'consumer_lag' AND column_name IN ('lag_time', 'status');
ALTER EXTENSION pipeline_ext UPDATE TO '0.3.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) AS consumer_lag_columns
  FROM information_schema.columns WHERE table_schema = 'pipeline' AND table_name = 'consumer_lag';
SELECT count(*) FROM pipeline.health;
SELECT has_table_privilege('public', 'pipeline.consumer_lag', 'SELECT') AS lag_public,
       has_table_privilege('public', 'pipeline.health', 'SELECT') AS health_public;
SELECT name FROM pipeline.connections;
-- 0.3.0 -> 0.4.0: consumers get an identity; dead letters point at it.  A
-- 0.3.0 dead letter is the current consumer's when name and owner match
-- and it came after the consumer was created; older ones belong to none.
CREATE TABLE up_t (id int PRIMARY KEY);
INSERT INTO pipeline.consumer (name, owner, connection, topic, target, format, mode, delivery, parallelism,
    start_offset, batch_size, batch_timeout, on_error, delete_on_tombstone, enabled, created_at)
VALUES ('kept_c', 10, 'kept', 't', 'up_t', 'json', 'upsert', 'exactly_once', 1, 'earliest', 100, '100ms',
    'dead_letter', false, false, now() - interval '1 hour');
INSERT INTO pipeline.dead_letters (consumer, owner, topic, "partition", "offset", error, sqlstate, failed_at)
VALUES ('kept_c', 10, 't', 0, 1, 'now', '22P02', now()),
       ('kept_c', 10, 't', 0, 0, 'from an older consumer of that name', '22P02', now() - interval '2 hours'),
       ('kept_c', 16384, 't', 0, 2, 'another owner''s', '22P02', now());
ALTER EXTENSION pipeline_ext UPDATE TO '0.4.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT name, id IS NOT NULL AS has_id, target FROM pipeline.consumer;
SELECT "offset", consumer_id IS NOT DISTINCT FROM (SELECT id FROM pipeline.consumer WHERE name = 'kept_c') AS belongs
  FROM pipeline.dead_letters ORDER BY "offset";
SELECT evtname, evtevent, evtenabled FROM pg_event_trigger;
-- the event trigger: a dropped target is forgotten, and its consumer disabled
DROP TABLE up_t;
SELECT name, target, enabled, last_error FROM pipeline.consumer;
SELECT pipeline.drop_consumer('kept_c');
SELECT "offset", consumer_id FROM pipeline.dead_letters ORDER BY "offset";
-- 0.4.0 -> 0.5.0: the transactional outbox; its tables are the extension's
-- alone, its status view is readable by anyone
ALTER EXTENSION pipeline_ext UPDATE TO '0.5.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_reads
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pipeline' AND c.relname LIKE 'outbox%' AND c.relkind IN ('r', 'v') ORDER BY 1;
SELECT count(*) AS send_functions FROM pg_proc WHERE proname = 'send' AND pronamespace = 'pipeline'::regnamespace;
-- 0.5.0 -> 0.6.0: windowed aggregates; the catalog is the extension's, the
-- view readable by anyone
ALTER EXTENSION pipeline_ext UPDATE TO '0.6.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_reads
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pipeline' AND c.relname LIKE 'aggregate%' AND c.relkind IN ('r', 'v') ORDER BY 1;
-- 0.6.0 -> 0.7.0: a capture names its table as regclass (kept by a dump
-- and restore), and an event trigger makes it follow partitions
CREATE TABLE up_cap (id int PRIMARY KEY);
INSERT INTO pipeline.capture (relid, owner, connection, topic, key_columns, format, tombstones)
VALUES ('up_cap'::regclass, 10, 'kept', 'cdc', '{id}', 'row', true);
ALTER EXTENSION pipeline_ext UPDATE TO '0.7.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT format_type(atttypid, atttypmod) AS relid_type FROM pg_attribute
 WHERE attrelid = 'pipeline.capture'::regclass AND attname = 'relid';
SELECT "table", key_columns FROM pipeline.captures;
SELECT evtname, evtevent, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pipeline%' ORDER BY 1;
-- 0.7.0 -> 0.8.0: pipeline.health says the outbox's latency is from COMMIT
ALTER EXTENSION pipeline_ext UPDATE TO '0.8.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT pg_catalog.pg_get_viewdef('pipeline.health'::regclass) LIKE '%p95 commit-to-acknowledged latency%' AS from_commit,
       pg_catalog.pg_get_viewdef('pipeline.health'::regclass) LIKE '%send-to-acknowledged%' AS from_send;
-- 0.8.0 -> 0.9.0: create_aggregate() also takes its window, slide, lateness
-- and idle timeout as text: a spec that does not parse is refused with a
-- hint (alter_aggregate() keeps its interval signature)
ALTER EXTENSION pipeline_ext UPDATE TO '0.9.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'pipeline' AND p.proname IN ('create_aggregate', 'alter_aggregate') ORDER BY 1, 2;
SELECT pipeline.create_aggregate('a', 'c', 'fortnight', 'ts', ARRAY['count(*)']);
SELECT pipeline.create_aggregate('a', 'c', '1 hour', 'ts', ARRAY['count(*)'], slide => '1 minuet');
SELECT pipeline.create_aggregate('a', 'c', '1 hour', 'ts', ARRAY['count(*)'], idle_timeout => '');
-- 0.9.0 -> 0.10.0: the outbox's dead letters can be sent again, or deleted,
-- by their senders
SELECT has_table_privilege('public', 'pipeline.outbox_dead_letters', 'DELETE') AS delete_before,
       to_regprocedure('pipeline.resend_outbox_dead_letters(bigint[])') IS NOT NULL AS resend_before;
ALTER EXTENSION pipeline_ext UPDATE TO '0.10.0';
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT has_table_privilege('public', 'pipeline.outbox_dead_letters', 'DELETE') AS delete_after,
       to_regprocedure('pipeline.resend_outbox_dead_letters(bigint[])') IS NOT NULL AS resend_after;
SELECT pipeline.resend_outbox_dead_letters();
-- 0.10.0 -> 0.11.0: the relay's last error on its connection's row of
-- outbox_status (the view keeps its columns)
SELECT to_regprocedure('pipeline._relay_error_connection()') IS NOT NULL AS error_connection_before;
ALTER EXTENSION pipeline_ext UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT to_regprocedure('pipeline._relay_error_connection()') IS NOT NULL AS error_connection_after;
SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'pipeline.outbox_status'::regclass;
SELECT count(*) FROM pipeline.outbox_status;
\c :orig
DROP DATABASE regress_upgrade;

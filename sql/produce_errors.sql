-- produce()'s argument errors, all raised before any network round trip
-- (the connection 'local' points at a port where no broker listens).
SELECT * FROM pipeline.produce(NULL, 'topic', 'x');
SELECT * FROM pipeline.produce('local', NULL, 'x');
SELECT * FROM pipeline.produce('local', '', 'x');
SELECT * FROM pipeline.produce('nope', 'topic', 'x');
SELECT * FROM pipeline.produce('local', 'topic', 'x', 'k', '"not an object"');
SELECT * FROM pipeline.produce('local', 'topic', 'x', 'k', '{"n": 1}');
SELECT * FROM pipeline.produce('local', 'topic', 'x', 'k', '{"a": "ok", "b": {"nested": true}}');
SELECT * FROM pipeline.produce('local', 'topic', 'x', 'k', NULL, -1);
SELECT pipeline.produce_async(NULL, 'topic', 'x');
SELECT pipeline.produce_async('nope', 'topic', '\x00ff'::bytea);
SELECT pipeline.produce_async('local', 'topic', '{"a": 1}'::jsonb, 'k', '[]');
-- an untyped literal value resolves to the text variant
SELECT * FROM pipeline.produce('nope', 'topic', 'untyped');
-- the three value types
SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'pipeline' AND p.proname LIKE 'produce%' ORDER BY 1, 2;
-- an unreachable broker fails within pipeline_ext.produce_timeout
SET pipeline_ext.produce_timeout = 300;
\set VERBOSITY terse
SELECT * FROM pipeline.produce('local', 'topic', 'x');
\set VERBOSITY default
RESET pipeline_ext.produce_timeout;
-- send() writes pipeline.outbox directly: not in a read-only transaction,
-- and not into a table changed by hand (rather than around the change)
BEGIN READ ONLY;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ROLLBACK;
-- (each after a send() that went through: what the backend keeps of the
-- table's shape goes with the change)
BEGIN;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ALTER TABLE pipeline.outbox ADD COLUMN extra int NOT NULL DEFAULT 1;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ROLLBACK;
BEGIN;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ALTER TABLE pipeline.outbox ADD CONSTRAINT short_topic CHECK (length(topic) < 64);
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ROLLBACK;
BEGIN;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
CREATE FUNCTION pg_temp.nothing() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER nothing BEFORE INSERT ON pipeline.outbox FOR EACH ROW EXECUTE FUNCTION pg_temp.nothing();
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ROLLBACK;
BEGIN;
SELECT pipeline.send('local', 'topic', 'x') > 0 AS sent;
ROLLBACK;
SELECT pipeline.drop_connection('local');

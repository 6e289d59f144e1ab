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
ALTER EXTENSION pipeline_ext UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) AS consumer_lag_columns
  FROM information_schema.columns WHERE table_schema = 'pipeline' AND table_name = 'consumer_lag';
SELECT count(*) FROM pipeline.health;
SELECT has_table_privilege('public', 'pipeline.consumer_lag', 'SELECT') AS lag_public,
       has_table_privilege('public', 'pipeline.health', 'SELECT') AS health_public;
SELECT name FROM pipeline.connections;
\c :orig
DROP DATABASE regress_upgrade;

-- 0.1.0 installs and updates to the current version in place
\set orig :DBNAME
CREATE DATABASE regress_upgrade;
\c regress_upgrade
CREATE EXTENSION pipeline_ext VERSION '0.1.0';
SELECT pipeline.create_connection('kept', '127.0.0.1:9');
SELECT to_regclass('pipeline.consumer') IS NULL AS no_consumers_yet;
ALTER EXTENSION pipeline_ext UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT name FROM pipeline.connections;
SELECT count(*) FROM pipeline.consumers;
SELECT to_regclass('pipeline.offsets') IS NOT NULL AS offsets, to_regclass('pipeline.dead_letters') IS NOT NULL AS dead_letters;
\c :orig
DROP DATABASE regress_upgrade;

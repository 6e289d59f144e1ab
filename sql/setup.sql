-- pipeline_ext is preloaded by the temporary instance (test/pipeline_ext.conf)
CREATE EXTENSION pipeline_ext;
SHOW shared_preload_libraries;
SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'pipeline_ext';
SELECT nspname FROM pg_namespace WHERE nspname = 'pipeline';
-- the schema is fixed: the extension cannot move
ALTER EXTENSION pipeline_ext SET SCHEMA public;
-- the GUC prefix is reserved
SET pipeline_ext.no_such_setting = 1;
SHOW pipeline_ext.produce_timeout;

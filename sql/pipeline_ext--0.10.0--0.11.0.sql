/* pipeline_ext 0.10.0 -> 0.11.0: a captured table's key stays a key */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.11.0'" to load this file. \quit

-- Every capture's key columns still NOT NULL and covered by a unique
-- index, else an error (pipeline._capture_follow() checks the same after
-- ALTER TABLE ... DROP NOT NULL, DROP COLUMN and DROP CONSTRAINT).
CREATE FUNCTION @extschema@._capture_guard()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_capture_guard_sql';
REVOKE ALL ON FUNCTION @extschema@._capture_guard() FROM PUBLIC;

-- A captured table dropped: its capture goes with it.  An index dropped
-- (DROP INDEX, or with a constraint): the captures' keys are checked, and
-- a drop that leaves one without its unique index is refused.
CREATE OR REPLACE FUNCTION @extschema@._capture_dropped()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM @extschema@.capture c
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND c.relid::pg_catalog.oid OPERATOR(pg_catalog.=) d.objid;
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger_dropped_objects() d
                WHERE d.object_type OPERATOR(pg_catalog.=) 'index') THEN
        PERFORM @extschema@._capture_guard();
    END IF;
END
$$;

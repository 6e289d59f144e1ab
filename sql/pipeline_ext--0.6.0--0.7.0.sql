/* pipeline_ext 0.6.0 -> 0.7.0: change capture follows partitions, and dump and restore */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.7.0'" to load this file. \quit

-- The captured table as regclass: pg_dump writes its name, which a
-- restore resolves to the table's new OID (an oid column kept the old
-- cluster's, and every write to the restored table failed).
DROP VIEW @extschema@.captures;
ALTER TABLE @extschema@.capture ALTER COLUMN relid TYPE pg_catalog.regclass;
CREATE VIEW @extschema@.captures AS
SELECT c.id, c.relid AS "table", c.owner::regrole AS owner, c.connection, c.topic,
       c.key_columns, c.format, c.tombstones, c.created_at
  FROM @extschema@.capture c;
GRANT SELECT ON @extschema@.captures TO PUBLIC;

-- A statement on a partition fires the partition's statement triggers,
-- not its parent's: every partition of a captured table carries the
-- capture's triggers (capture_follow.c).  After DDL, the event trigger
-- puts them on a partition made or attached under a captured table, takes
-- them off one detached, and follows a key column renamed in the catalog.
-- It runs as the role whose command it is, with the command's
-- search_path, by which it finds the partition a command names (every
-- name below is qualified); a pg_ddl_command exists only during its
-- command, so nobody calls _capture_follow() for a command not theirs.
CREATE FUNCTION @extschema@._capture_follow(pg_catalog.pg_ddl_command)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_capture_follow';

CREATE FUNCTION @extschema@._capture_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT command FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass LOOP
        PERFORM @extschema@._capture_follow(c.command);
    END LOOP;
END
$$;

-- CREATE SCHEMA too: its elements may make partitions
CREATE EVENT TRIGGER pipeline_capture_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE SCHEMA')
    EXECUTE FUNCTION @extschema@._capture_ddl();

-- A captured table dropped: its capture goes with it (its OID may be
-- given to another table, which a stale row would then capture).
CREATE FUNCTION @extschema@._capture_dropped()
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
END
$$;
REVOKE ALL ON FUNCTION @extschema@._capture_dropped() FROM PUBLIC;
CREATE EVENT TRIGGER pipeline_capture_dropped ON sql_drop
    EXECUTE FUNCTION @extschema@._capture_dropped();

-- Captures made before: their partitions get the triggers now.
CREATE FUNCTION @extschema@._capture_cover(pg_catalog.regclass)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_capture_cover_sql';
REVOKE ALL ON FUNCTION @extschema@._capture_cover(pg_catalog.regclass) FROM PUBLIC;
SELECT @extschema@._capture_cover(relid) FROM @extschema@.capture;

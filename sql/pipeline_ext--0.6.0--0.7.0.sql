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
-- capture's triggers.  After each CREATE TABLE and ALTER TABLE, the
-- capture covering the table (its own or a partitioned ancestor's) is
-- made to cover exactly that table's tree when the command made, attached
-- or detached a partition: triggers on partitions made or attached, off
-- tables detached (capture_follow.c).
CREATE FUNCTION @extschema@._capture_follow(oid, pg_catalog.pg_ddl_command)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_capture_follow';

CREATE FUNCTION @extschema@._capture_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT objid, command FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass LOOP
        PERFORM @extschema@._capture_follow(c.objid, c.command);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER pipeline_capture_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION @extschema@._capture_ddl();

/* pipeline_ext 0.3.0 -> 0.4.0: consumers have an identity of their own */

\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.4.0'" to load this file. \quit

SET LOCAL search_path TO pg_catalog, pg_temp;

-- A consumer's identity.  Its name can be reused once it is dropped; its id
-- never is.  Dead letters, and the figures the slots keep in shared memory,
-- belong to the id, so a new consumer with an old one's name (perhaps
-- another role's) inherits neither.
ALTER TABLE @extschema@.consumer
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE @extschema@.consumer ADD CONSTRAINT consumer_id_key UNIQUE (id);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_id_seq', '');

-- The target is NULL once its table was dropped (see _target_dropped
-- below): a table number is never trusted after its table is gone, since
-- PostgreSQL may give it to another table.
ALTER TABLE @extschema@.consumer ALTER COLUMN target DROP NOT NULL;

-- Dead letters point at their consumer's id.  When the consumer is
-- dropped they stay, readable and deletable by their owner, but no longer
-- belong to a consumer: nothing replays them into another one.
ALTER TABLE @extschema@.dead_letters
    ADD COLUMN consumer_id bigint REFERENCES @extschema@.consumer (id) ON DELETE SET NULL;
CREATE INDEX ON @extschema@.dead_letters (consumer_id, id);
-- 0.3.0 kept only names: a row is the current consumer's when the name and
-- the owner match and it was recorded after that consumer was created.
UPDATE @extschema@.dead_letters d
   SET consumer_id = c.id
  FROM @extschema@.consumer c
 WHERE c.name OPERATOR(pg_catalog.=) d.consumer
   AND c.owner OPERATOR(pg_catalog.=) d.owner
   AND d.failed_at OPERATOR(pg_catalog.>=) c.created_at;

-- The headers exactly as they came, as an n x 2 array of bytea (name,
-- value; a null value stays null), in their order and with repeated names:
-- what a replay sends through the data path.  headers (jsonb) stays the
-- readable form, with names and values that are not text hex-encoded.
ALTER TABLE @extschema@.dead_letters ADD COLUMN headers_raw bytea[];

-- A dropped target stops its consumers for good: they are disabled, their
-- target is forgotten and the reason is kept as their last error.
CREATE FUNCTION @extschema@._target_dropped()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE @extschema@.consumer c
       SET target = NULL, enabled = false,
           last_error = pg_catalog.format('the target table %s was dropped', d.object_identity),
           last_error_at = pg_catalog.now()
      FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND c.target::pg_catalog.oid OPERATOR(pg_catalog.=) d.objid;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._target_dropped() FROM PUBLIC;

CREATE EVENT TRIGGER pipeline_ext_target_dropped ON sql_drop
    EXECUTE FUNCTION @extschema@._target_dropped();

-- parallelism's default is now NULL, 'auto': one slot per core, at most 4
-- (resolved when the consumer is created, and stored).  batch_size's is now
-- 50,000: an upper bound, which a caught-up slot never reaches (it applies
-- what has arrived), and which lets a slot that is behind commit less often.
-- Consumers created before keep their numbers.
CREATE OR REPLACE FUNCTION @extschema@.create_consumer(
    name text,
    connection text,
    topic text,
    target regclass,
    format text DEFAULT 'json',
    mode text DEFAULT 'upsert',
    key_columns text[] DEFAULT NULL,
    delivery text DEFAULT 'exactly_once',
    parallelism int DEFAULT NULL,
    start_offset text DEFAULT 'earliest',
    batch_size int DEFAULT 50000,
    batch_timeout interval DEFAULT '100ms',
    column_map jsonb DEFAULT NULL,
    group_id text DEFAULT NULL,
    on_error text DEFAULT 'dead_letter',
    delete_on_tombstone boolean DEFAULT false,
    format_options jsonb DEFAULT '{}',
    start boolean DEFAULT true)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_consumer';

-- A partition's offset set by reset_offsets() and not yet moved by a batch:
-- a slot that takes the partition from the group resumes there, not where
-- the group committed (which would undo a reset made while the consumer
-- was stopped).
ALTER TABLE @extschema@.offsets ADD COLUMN reset boolean NOT NULL DEFAULT false;

/* pipeline_ext 0.1.0: connections and producing from SQL */

\echo Use "CREATE EXTENSION pipeline_ext" to load this file. \quit

SET LOCAL search_path TO pg_catalog, pg_temp;

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Connections.  Only the extension owner reads or writes this table; the
-- functions below check the caller's rights and mask secrets for others.
CREATE TABLE @extschema@.connection (
    name              text PRIMARY KEY,
    owner             oid NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('kafka', 'eventhubs')),
    bootstrap_servers text NOT NULL,
    options           jsonb NOT NULL DEFAULT '{}',   -- the user's librdkafka properties
    derived           jsonb NOT NULL DEFAULT '{}',   -- derived by pipeline_ext (Event Hubs)
    eventhubs_entity  text,                          -- EntityPath of an Event Hubs string
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON @extschema@.connection FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.connection', '');

CREATE FUNCTION @extschema@._mask_options(options jsonb, owner oid)
RETURNS jsonb
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'pe_mask_options';

CREATE VIEW @extschema@.connections AS
SELECT c.name,
       c.owner::regrole AS owner,
       c.kind,
       c.bootstrap_servers,
       @extschema@._mask_options(c.derived OPERATOR(pg_catalog.||) c.options, c.owner) AS options,
       c.eventhubs_entity,
       c.created_at
  FROM @extschema@.connection c;
GRANT SELECT ON @extschema@.connections TO PUBLIC;

CREATE FUNCTION @extschema@.create_connection(
    name text,
    bootstrap_servers text,
    options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_connection';

CREATE FUNCTION @extschema@.create_eventhubs_connection(
    name text,
    connection_string text,
    options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_eventhubs_connection';

CREATE FUNCTION @extschema@.drop_connection(name text)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_drop_connection';

CREATE FUNCTION @extschema@.connection_config(
    name text,
    include_defaults boolean DEFAULT false,
    OUT property text,
    OUT value text,
    OUT source text)
RETURNS SETOF record
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'pe_connection_config';

-- Creating and dropping connections is for roles an administrator trusts
-- with it: GRANT EXECUTE on these to them.
REVOKE ALL ON FUNCTION @extschema@.create_connection(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.create_eventhubs_connection(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.drop_connection(text) FROM PUBLIC;

-- Producing.  value may be text, bytea or jsonb; NULL is a tombstone.
-- A connection is usable by its owner, members of that role and superusers.
CREATE FUNCTION @extschema@.produce(
    connection text, topic text, value text,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS TABLE("partition" int, "offset" bigint)
LANGUAGE C VOLATILE ROWS 1
AS 'MODULE_PATHNAME', 'pe_produce';

CREATE FUNCTION @extschema@.produce(
    connection text, topic text, value bytea,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS TABLE("partition" int, "offset" bigint)
LANGUAGE C VOLATILE ROWS 1
AS 'MODULE_PATHNAME', 'pe_produce';

CREATE FUNCTION @extschema@.produce(
    connection text, topic text, value jsonb,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS TABLE("partition" int, "offset" bigint)
LANGUAGE C VOLATILE ROWS 1
AS 'MODULE_PATHNAME', 'pe_produce';

CREATE FUNCTION @extschema@.produce_async(
    connection text, topic text, value text,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_produce_async';

CREATE FUNCTION @extschema@.produce_async(
    connection text, topic text, value bytea,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_produce_async';

CREATE FUNCTION @extschema@.produce_async(
    connection text, topic text, value jsonb,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_produce_async';

/* pipeline_ext 0.5.0 -> 0.6.0: continuous windowed aggregates */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.6.0'" to load this file. \quit

-- One continuous aggregate: a consumer's messages (each counts once, in
-- upsert mode too) grouped into time windows, updated in the transaction
-- of each batch, with the batch's rows and offsets.  Results go into a
-- table of the aggregate's owner (results).
CREATE TABLE @extschema@.aggregate (
    name          text PRIMARY KEY,
    owner         oid NOT NULL,
    consumer      text NOT NULL REFERENCES @extschema@.consumer (name) ON DELETE CASCADE,
    consumer_id   bigint NOT NULL,
    results       regclass NOT NULL,
    window_kind   text NOT NULL CHECK (window_kind IN ('tumbling', 'hopping')),
    size          interval NOT NULL,
    slide         interval NOT NULL,
    origin        timestamptz NOT NULL,
    time_column   text NOT NULL,
    group_by      text[] NOT NULL,
    -- normalized: each 'function(argument)' with its output column
    functions     text[] NOT NULL,
    arguments     text[] NOT NULL,
    outputs       text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON @extschema@.aggregate FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate', '');

-- What each aggregate has counted, per partition: the next offset it
-- counts.  A message below it (a replay, reset_offsets) is not counted
-- again.
CREATE TABLE @extschema@.aggregate_offset (
    aggregate     text NOT NULL REFERENCES @extschema@.aggregate (name) ON DELETE CASCADE,
    "partition"   int NOT NULL,
    next_offset   bigint NOT NULL,
    PRIMARY KEY (aggregate, "partition")
);
REVOKE ALL ON @extschema@.aggregate_offset FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_offset', '');

CREATE FUNCTION @extschema@.create_aggregate(
    name          text,
    consumer      text,
    "window"      interval,
    time_column   text,
    aggregates    text[],
    group_by      text[] DEFAULT '{}',
    slide         interval DEFAULT NULL,
    origin        timestamptz DEFAULT '2000-01-01 00:00:00+00',
    results       text DEFAULT NULL)
RETURNS regclass
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_aggregate';

CREATE FUNCTION @extschema@.drop_aggregate(name text, drop_results boolean DEFAULT false)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_drop_aggregate';

-- Everyone sees the aggregates of the consumers they may see.
CREATE VIEW @extschema@.aggregates WITH (security_barrier) AS
SELECT a.name, a.consumer, pg_catalog.pg_get_userbyid(a.owner) AS owner, a.results,
       a.window_kind, a.size, a.slide, a.origin, a.time_column, a.group_by,
       (SELECT pg_catalog.array_agg(f || '(' || g || ') AS ' || o ORDER BY n)
          FROM ROWS FROM (pg_catalog.unnest(a.functions), pg_catalog.unnest(a.arguments), pg_catalog.unnest(a.outputs))
               WITH ORDINALITY AS u(f, g, o, n)) AS aggregates,
       a.created_at
  FROM @extschema@.aggregate a
 WHERE pg_catalog.pg_has_role(a.owner, 'USAGE');
GRANT SELECT ON @extschema@.aggregates TO PUBLIC;

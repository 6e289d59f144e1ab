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
    -- a window closes once the watermark passes its end plus this
    lateness      interval NOT NULL,
    -- a partition without messages for this long does not hold the
    -- watermark back
    idle_timeout  interval NOT NULL,
    -- the event time up to which the aggregate has seen its partitions:
    -- the least of the active partitions' newest event times (of all
    -- partitions' when every one is idle); it never goes back
    watermark     timestamptz,
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
    max_time      timestamptz,          -- the partition's newest event time
    seen_at       timestamptz,          -- when it last had a message
    PRIMARY KEY (aggregate, "partition")
);
REVOKE ALL ON @extschema@.aggregate_offset FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_offset', '');

-- Events that came after their window closed (the watermark had passed
-- its end plus the lateness): kept, with the reason, never dropped.  The
-- event time of a timestamp (without time zone) column is kept as if UTC.
CREATE TABLE @extschema@.aggregate_late (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate     text NOT NULL REFERENCES @extschema@.aggregate (name) ON DELETE CASCADE,
    "partition"   int NOT NULL,
    "offset"      bigint NOT NULL,
    event_time    timestamptz NOT NULL,
    watermark     timestamptz NOT NULL,
    key           bytea,
    value         bytea,
    reason        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON @extschema@.aggregate_late (aggregate);
REVOKE ALL ON @extschema@.aggregate_late FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_late', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_late_id_seq', '');

CREATE FUNCTION @extschema@.create_aggregate(
    name          text,
    consumer      text,
    "window"      interval,
    time_column   text,
    aggregates    text[],
    group_by      text[] DEFAULT '{}',
    slide         interval DEFAULT NULL,
    origin        timestamptz DEFAULT '2000-01-01 00:00:00+00',
    results       text DEFAULT NULL,
    lateness      interval DEFAULT '0',
    idle_timeout  interval DEFAULT '1 minute')
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
       a.lateness, a.idle_timeout, a.watermark,
       (SELECT pg_catalog.count(*) FROM @extschema@.aggregate_late l WHERE l.aggregate = a.name) AS late_events,
       (SELECT pg_catalog.array_agg(f || '(' || g || ') AS ' || o ORDER BY n)
          FROM ROWS FROM (pg_catalog.unnest(a.functions), pg_catalog.unnest(a.arguments), pg_catalog.unnest(a.outputs))
               WITH ORDINALITY AS u(f, g, o, n)) AS aggregates,
       a.created_at
  FROM @extschema@.aggregate a
 WHERE pg_catalog.pg_has_role(a.owner, 'USAGE');
GRANT SELECT ON @extschema@.aggregates TO PUBLIC;

-- The late events of the aggregates each role may see.
CREATE VIEW @extschema@.late_events WITH (security_barrier) AS
SELECT l.id, l.aggregate, l."partition", l."offset", l.event_time, l.watermark, l.key, l.value, l.reason, l.created_at
  FROM @extschema@.aggregate_late l
  JOIN @extschema@.aggregate a ON a.name = l.aggregate
 WHERE pg_catalog.pg_has_role(a.owner, 'USAGE');
GRANT SELECT ON @extschema@.late_events TO PUBLIC;

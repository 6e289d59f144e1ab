/* pipeline_ext 0.5.0 -> 0.6.0: continuous windowed aggregates; the avro format */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.6.0'" to load this file. \quit

-- Consumers of Avro in the schema registry's wire format (format => 'avro')
ALTER TABLE @extschema@.consumer DROP CONSTRAINT consumer_format_check,
    ADD CONSTRAINT consumer_format_check CHECK (format IN ('json', 'csv', 'text', 'bytea', 'avro'));

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
    -- a session window's size is its gap (slide, origin unused)
    -- a cumulative window's slide is its step: windows of one start that
    -- end a step, two steps, ... up to its size after it
    window_kind   text NOT NULL CHECK (window_kind IN ('tumbling', 'hopping', 'session', 'cumulative')),
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
    -- the windows that end at or before it are closed: the highest
    -- watermark less lateness used to close (a lateness raised later does
    -- not reopen them)
    closed_through timestamptz,
    -- windows aligned in this zone's wall time (a day from local midnight
    -- to midnight, 23 or 25 hours across a change of clocks); null: UTC
    time_zone     text,
    -- figures, kept by the batches
    windows_closed bigint NOT NULL DEFAULT 0,
    open_windows  bigint NOT NULL DEFAULT 0,
    last_batch_at timestamptz,
    batch_ms      float8,               -- what updating it added to the last batch
    -- normalized: each 'function(argument)' with its output column
    functions     text[] NOT NULL,
    arguments     text[] NOT NULL,
    outputs       text[] NOT NULL,
    -- the fraction of each percentile (null for the other functions)
    fractions     float8[] NOT NULL,
    -- what it emits: 'update', every change of a window (the results
    -- table holds the open windows too); 'close', a window's final row
    -- once (the results table takes it when it closes; until then it is
    -- in the state table).  With emit_topic, each emitted row is also a
    -- message through the outbox, in the batch's transaction.
    emit          text NOT NULL CHECK (emit IN ('update', 'close')),
    state         regclass,
    emit_connection text,
    emit_topic    text,
    emitted       bigint NOT NULL DEFAULT 0,
    last_emit_at  timestamptz,
    -- of each function: the first window it is complete in, when it was
    -- added by alter_aggregate (earlier windows show null); null: all
    valid_from    timestamptz[],
    -- changed by each alter_aggregate: a batch that read an older one
    -- is retried
    revision      int NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON @extschema@.aggregate FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate', '');

-- What each aggregate has counted, per partition: the offsets, as
-- ranges.  A message in them (reset_offsets back, a batch redone after a
-- crash) is not counted again; one outside them (reset_offsets forward
-- then back) still is.
CREATE TABLE @extschema@.aggregate_offset (
    aggregate     text NOT NULL REFERENCES @extschema@.aggregate (name) ON DELETE CASCADE,
    "partition"   int NOT NULL,
    counted       int8multirange NOT NULL DEFAULT '{}',
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
    idle_timeout  interval DEFAULT '1 minute',
    emit          text DEFAULT 'update',
    emit_topic    text DEFAULT NULL,
    emit_connection text DEFAULT NULL,
    kind          text DEFAULT NULL,
    time_zone     text DEFAULT NULL)
RETURNS regclass
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_aggregate';

-- Changes that keep what the aggregate holds: lateness, idle_timeout,
-- emit (the open windows move between the results and the state table),
-- emit_topic ('' to stop sending), emit_connection, and aggregates added
-- (complete from the next window on; earlier ones show null).
CREATE FUNCTION @extschema@.alter_aggregate(
    name          text,
    lateness      interval DEFAULT NULL,
    idle_timeout  interval DEFAULT NULL,
    emit          text DEFAULT NULL,
    emit_topic    text DEFAULT NULL,
    emit_connection text DEFAULT NULL,
    add_aggregates text[] DEFAULT NULL)
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'pe_alter_aggregate';

CREATE FUNCTION @extschema@.drop_aggregate(name text, drop_results boolean DEFAULT false)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_drop_aggregate';

-- Everyone sees the aggregates of the consumers they may see.
CREATE VIEW @extschema@.aggregates WITH (security_barrier) AS
SELECT a.name, a.consumer, pg_catalog.pg_get_userbyid(a.owner) AS owner, a.results,
       a.window_kind, a.size, a.slide, a.origin, a.time_zone, a.time_column, a.group_by,
       a.lateness, a.idle_timeout, a.emit, a.state, a.emit_connection, a.emit_topic,
       a.watermark, a.open_windows, a.windows_closed, a.emitted, a.last_emit_at, a.last_batch_at, a.batch_ms,
       (SELECT pg_catalog.count(*) FROM @extschema@.aggregate_late l WHERE l.aggregate = a.name) AS late_events,
       (SELECT pg_catalog.array_agg(CASE f WHEN 'count_distinct' THEN 'exact_count_distinct' ELSE f END
                                    || '(' || g || CASE WHEN p IS NULL THEN '' ELSE ', ' || p END || ') AS ' || o
                                    || CASE WHEN v IS NULL THEN '' ELSE ' (from the window at ' || v || ')' END ORDER BY n)
          FROM ROWS FROM (pg_catalog.unnest(a.functions), pg_catalog.unnest(a.arguments), pg_catalog.unnest(a.outputs),
                          pg_catalog.unnest(a.fractions), pg_catalog.unnest(a.valid_from))
               WITH ORDINALITY AS u(f, g, o, p, v, n)) AS aggregates,
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

-- pipeline.health gains a row per aggregate
CREATE OR REPLACE VIEW @extschema@.health AS
WITH t AS (
    SELECT pg_catalog.current_setting('pipeline_ext.health_lag_messages')::bigint AS max_lag,
           (pg_catalog.date_part('epoch', pg_catalog.current_setting('pipeline_ext.health_latency')::interval)
                OPERATOR(pg_catalog.*) 1000)::int AS max_latency,
           pg_catalog.current_setting('pipeline_ext.health_error_rate')::float8 AS max_error_rate,
           pg_catalog.current_setting('pipeline_ext.lag_window') AS lag_window),
lag AS (
    SELECT consumer, pg_catalog.sum(lag_messages)::bigint AS lag,
           pg_catalog.count(*) AS n_partitions,
           pg_catalog.count(*) FILTER (WHERE status = 'WARN') AS n_warn,
           pg_catalog.count(*) FILTER (WHERE status = 'STALL') AS n_stall,
           pg_catalog.count(*) FILTER (WHERE status = 'STOP') AS n_stop
      FROM @extschema@.consumer_lag GROUP BY consumer),
st AS (
    SELECT consumer,
           pg_catalog.bool_or(state IN ('failed', 'restarting')) AS failing,
           pg_catalog.bool_and(state = 'stopped') AS stopped,
           pg_catalog.max(last_error) AS last_error
      FROM @extschema@.consumer_status GROUP BY consumer),
m AS (
    SELECT c.name AS consumer, l.lag, s.failing, s.stopped, s.last_error,
           x.latency_p95_ms, x.error_rate, t.*,
           pg_catalog.array_remove(ARRAY[
               CASE WHEN s.failing THEN 'worker failing: ' OPERATOR(pg_catalog.||) COALESCE(s.last_error, 'no error recorded') END,
               CASE WHEN l.n_stall > 0
                    THEN pg_catalog.format('%s of %s partitions stalled: behind and not moving for %s',
                                           l.n_stall, l.n_partitions, t.lag_window) END,
               CASE WHEN l.n_stop > 0 AND NOT s.stopped AND NOT s.failing
                    THEN pg_catalog.format('%s of %s partitions behind with no batch applied for %s',
                                           l.n_stop, l.n_partitions, t.lag_window) END,
               CASE WHEN l.lag > 10 OPERATOR(pg_catalog.*) t.max_lag
                    THEN pg_catalog.format('lag %s messages is over 10 x %s', l.lag, t.max_lag) END,
               CASE WHEN x.latency_p95_ms > 10 OPERATOR(pg_catalog.*) t.max_latency
                    THEN pg_catalog.format('p95 latency %s ms is over 10 x %s ms', x.latency_p95_ms, t.max_latency) END,
               CASE WHEN x.error_rate > 10 OPERATOR(pg_catalog.*) t.max_error_rate
                    THEN pg_catalog.format('error rate %s %% is over 10 x %s %%',
                                           pg_catalog.round((100 OPERATOR(pg_catalog.*) x.error_rate)::numeric, 3),
                                           pg_catalog.round((100 OPERATOR(pg_catalog.*) t.max_error_rate)::numeric, 3)) END
           ], NULL) AS critical,
           pg_catalog.array_remove(ARRAY[
               CASE WHEN s.stopped THEN 'stopped' END,
               CASE WHEN l.n_warn > 0
                    THEN pg_catalog.format('lag growing on %s of %s partitions over %s',
                                           l.n_warn, l.n_partitions, t.lag_window) END,
               CASE WHEN l.lag > t.max_lag AND l.lag <= 10 OPERATOR(pg_catalog.*) t.max_lag
                    THEN pg_catalog.format('lag %s messages is over %s', l.lag, t.max_lag) END,
               CASE WHEN x.latency_p95_ms > t.max_latency AND x.latency_p95_ms <= 10 OPERATOR(pg_catalog.*) t.max_latency
                    THEN pg_catalog.format('p95 latency %s ms is over %s ms', x.latency_p95_ms, t.max_latency) END,
               CASE WHEN x.error_rate > t.max_error_rate AND x.error_rate <= 10 OPERATOR(pg_catalog.*) t.max_error_rate
                    THEN pg_catalog.format('error rate %s %% is over %s %%',
                                           pg_catalog.round((100 OPERATOR(pg_catalog.*) x.error_rate)::numeric, 3),
                                           pg_catalog.round((100 OPERATOR(pg_catalog.*) t.max_error_rate)::numeric, 3)) END
           ], NULL) AS warning
      FROM @extschema@.consumer c
      CROSS JOIN t
      LEFT JOIN lag l ON l.consumer OPERATOR(pg_catalog.=) c.name
      LEFT JOIN st s ON s.consumer OPERATOR(pg_catalog.=) c.name
      LEFT JOIN @extschema@.consumer_stats x ON x.consumer OPERATOR(pg_catalog.=) c.name)
SELECT consumer,
       CASE WHEN pg_catalog.cardinality(critical) > 0 THEN 'critical'
            WHEN pg_catalog.cardinality(warning) > 0 THEN 'warning'
            ELSE 'ok' END AS status,
       CASE WHEN pg_catalog.cardinality(critical) OPERATOR(pg_catalog.+) pg_catalog.cardinality(warning) = 0
            THEN 'within thresholds'
            ELSE pg_catalog.array_to_string(critical OPERATOR(pg_catalog.||) warning, '; ') END AS reason,
       lag AS lag_messages, latency_p95_ms, error_rate
  FROM m
UNION ALL
-- the outbox, one row per connection it is used with, named outbox:<connection>
SELECT 'outbox:' OPERATOR(pg_catalog.||) o.connection,
       CASE WHEN pg_catalog.cardinality(o.critical) > 0 THEN 'critical'
            WHEN pg_catalog.cardinality(o.warning) > 0 THEN 'warning'
            ELSE 'ok' END,
       CASE WHEN pg_catalog.cardinality(o.critical) OPERATOR(pg_catalog.+) pg_catalog.cardinality(o.warning) = 0
            THEN 'within thresholds'
            ELSE pg_catalog.array_to_string(o.critical OPERATOR(pg_catalog.||) o.warning, '; ') END,
       o.backlog, o.latency_p95_ms, o.error_rate
  FROM (SELECT s.connection, s.backlog, s.latency_p95_ms,
               s.dead_letters::float8 OPERATOR(pg_catalog./)
                   NULLIF(s.published OPERATOR(pg_catalog.+) s.dead_letters, 0) AS error_rate,
               pg_catalog.array_remove(ARRAY[
                   CASE WHEN s.backlog > 0 AND NOT s.relay_running THEN 'messages waiting and no relay running' END,
                   CASE WHEN s.backlog > 10 OPERATOR(pg_catalog.*) t.max_lag
                        THEN pg_catalog.format('outbox backlog %s messages is over 10 x %s', s.backlog, t.max_lag) END,
                   CASE WHEN s.oldest_age > (10 OPERATOR(pg_catalog.*) t.max_latency) OPERATOR(pg_catalog.*) interval '1 ms'
                        THEN pg_catalog.format('oldest message waiting %s is over 10 x %s ms', s.oldest_age, t.max_latency) END
               ], NULL) AS critical,
               pg_catalog.array_remove(ARRAY[
                   CASE WHEN s.backlog > 0 AND s.last_error_at > pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 minute'
                        THEN 'relay failing: ' OPERATOR(pg_catalog.||) s.last_error END,
                   CASE WHEN s.backlog > t.max_lag AND s.backlog <= 10 OPERATOR(pg_catalog.*) t.max_lag
                        THEN pg_catalog.format('outbox backlog %s messages is over %s', s.backlog, t.max_lag) END,
                   CASE WHEN s.latency_p95_ms > t.max_latency
                        THEN pg_catalog.format('p95 send-to-acknowledged latency %s ms is over %s ms', s.latency_p95_ms, t.max_latency) END,
                   CASE WHEN s.dead_letters > 0
                              AND s.dead_letters::float8 OPERATOR(pg_catalog./) NULLIF(s.published OPERATOR(pg_catalog.+) s.dead_letters, 0) > t.max_error_rate
                        THEN pg_catalog.format('%s outbox messages refused (dead letters)', s.dead_letters) END
               ], NULL) AS warning
          FROM @extschema@.outbox_status s CROSS JOIN t) o
UNION ALL
-- each aggregate, named aggregate:<name>: late events kept within the lag
-- window are a warning (events came after their window closed: a lateness
-- too short, or a partition far behind the others)
SELECT 'aggregate:' OPERATOR(pg_catalog.||) a.name,
       CASE WHEN l.n > 0 THEN 'warning' ELSE 'ok' END,
       CASE WHEN l.n > 0
            THEN pg_catalog.format('%s late events kept in the last %s (pipeline.late_events)', l.n,
                                   pg_catalog.current_setting('pipeline_ext.lag_window'))
            ELSE 'within thresholds' END,
       NULL::bigint, NULL::int, NULL::float8
  FROM @extschema@.aggregate a
  CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS n FROM @extschema@.aggregate_late x
                       WHERE x.aggregate OPERATOR(pg_catalog.=) a.name
                         AND x.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-)
                             pg_catalog.current_setting('pipeline_ext.lag_window')::interval)) l
 WHERE pg_catalog.pg_has_role(a.owner, 'USAGE');

-- Producing Avro: a jsonb value (to_jsonb() of a row) in the schema
-- registry's wire format, with the subject's schema (TopicNameStrategy:
-- <topic>-value, or -key), registered when given, else its latest version;
-- pass the result to produce() or send() as a bytea value.
CREATE FUNCTION @extschema@.avro_encode(
    connection text, topic text, value jsonb,
    schema text DEFAULT NULL, subject text DEFAULT NULL, is_key boolean DEFAULT false)
RETURNS bytea
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_avro_encode';

-- An Avro record schema for a table's row type.
CREATE FUNCTION @extschema@.avro_schema(rel regclass, name text DEFAULT NULL)
RETURNS text
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'pe_avro_schema_of';

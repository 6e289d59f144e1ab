/* pipeline_ext 0.1.0 -> 0.2.0: consumers */

\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.2.0'" to load this file. \quit

SET LOCAL search_path TO pg_catalog, pg_temp;

-- One row per consumer.  Written only through the functions below, which
-- check what the caller may do; the background workers read it.
CREATE TABLE @extschema@.consumer (
    name                text PRIMARY KEY,
    owner               oid NOT NULL,
    connection          text NOT NULL REFERENCES @extschema@.connection (name),
    topic               text NOT NULL,
    target              regclass NOT NULL,
    format              text NOT NULL CHECK (format IN ('json', 'csv', 'text', 'bytea')),
    mode                text NOT NULL CHECK (mode IN ('upsert', 'append')),
    key_columns         text[],
    delivery            text NOT NULL CHECK (delivery IN ('exactly_once', 'at_least_once', 'at_most_once')),
    parallelism         int NOT NULL CHECK (parallelism BETWEEN 1 AND 64),
    start_offset        text NOT NULL,
    batch_size          int NOT NULL CHECK (batch_size > 0),
    batch_timeout       interval NOT NULL,
    column_map          jsonb,
    group_id            text,
    on_error            text NOT NULL CHECK (on_error IN ('dead_letter', 'stop')),
    delete_on_tombstone boolean NOT NULL,
    format_options      jsonb NOT NULL DEFAULT '{}',
    enabled             boolean NOT NULL DEFAULT true,
    last_error          text,
    last_error_at       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON @extschema@.consumer FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer', '');

-- The next offset to read of each partition, committed in the same
-- transaction as the rows it covers (exactly-once).
CREATE TABLE @extschema@.offsets (
    consumer    text NOT NULL REFERENCES @extschema@.consumer (name) ON DELETE CASCADE,
    "partition" int NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (consumer, "partition")
);
REVOKE ALL ON @extschema@.offsets FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.offsets', '');

-- Messages that could not be decoded or applied, with their raw bytes.
-- Each role sees (and may delete) the rows of the consumers it owns.
CREATE TABLE @extschema@.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text NOT NULL,
    owner       oid NOT NULL,
    topic       text NOT NULL,
    "partition" int NOT NULL,
    "offset"    bigint NOT NULL,
    key         bytea,
    value       bytea,
    headers     jsonb,
    "timestamp" timestamptz,
    error       text NOT NULL,
    sqlstate    text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON @extschema@.dead_letters (consumer, "partition", "offset");
REVOKE ALL ON @extschema@.dead_letters FROM PUBLIC;
GRANT SELECT, DELETE ON @extschema@.dead_letters TO PUBLIC;
ALTER TABLE @extschema@.dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_owner ON @extschema@.dead_letters
    USING (pg_catalog.pg_has_role(owner, 'USAGE'));
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dead_letters', '');

CREATE VIEW @extschema@.consumers AS
SELECT c.name,
       c.owner::regrole AS owner,
       c.connection,
       c.topic,
       c.target,
       c.format,
       c.mode,
       c.key_columns,
       c.delivery,
       c.parallelism,
       c.start_offset,
       c.batch_size,
       c.batch_timeout,
       c.column_map,
       c.group_id,
       c.on_error,
       c.delete_on_tombstone,
       c.format_options,
       c.enabled,
       CASE WHEN pg_catalog.pg_has_role(c.owner, 'USAGE') THEN c.last_error END AS last_error,
       c.last_error_at,
       c.created_at
  FROM @extschema@.consumer c;
GRANT SELECT ON @extschema@.consumers TO PUBLIC;

CREATE FUNCTION @extschema@.create_consumer(
    name text,
    connection text,
    topic text,
    target regclass,
    format text DEFAULT 'json',
    mode text DEFAULT 'upsert',
    key_columns text[] DEFAULT NULL,
    delivery text DEFAULT 'exactly_once',
    parallelism int DEFAULT 1,
    start_offset text DEFAULT 'earliest',
    batch_size int DEFAULT 10000,
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

CREATE FUNCTION @extschema@.start_consumer(name text)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pe_start_consumer';

CREATE FUNCTION @extschema@.stop_consumer(name text)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pe_stop_consumer';

CREATE FUNCTION @extschema@.drop_consumer(name text)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pe_drop_consumer';

CREATE FUNCTION @extschema@.reset_offsets(
    name text,
    "to" text,
    OUT "partition" int,
    OUT old_offset bigint,
    OUT new_offset bigint)
RETURNS SETOF record
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pe_reset_offsets';

CREATE FUNCTION @extschema@.replay_dead_letters(
    consumer text,
    ids bigint[] DEFAULT NULL,
    OUT replayed bigint,
    OUT failed bigint)
RETURNS record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_replay_dead_letters';

-- What the workers of each consumer slot are doing, from shared memory.
CREATE FUNCTION @extschema@._slots(
    OUT consumer text,
    OUT slot int,
    OUT pid int,
    OUT state text,
    OUT restarts int,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT last_batch_at timestamptz,
    OUT partitions int[],
    OUT messages bigint,
    OUT batches bigint,
    OUT dead_letters bigint)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_slots';

-- One row per consumer slot: what its worker is doing now.  Slots of
-- consumers that have not run since the server started show as stopped
-- (or starting, when enabled).
CREATE VIEW @extschema@.consumer_status AS
SELECT c.name AS consumer,
       s.slot,
       st.pid AS worker_pid,
       CASE WHEN st.state IS NOT NULL AND (c.enabled OR st.pid IS NOT NULL) THEN st.state
            WHEN c.enabled THEN 'starting'
            ELSE 'stopped' END AS state,
       COALESCE(st.partitions, '{}') AS partitions,
       COALESCE(st.restarts, 0) AS restarts,
       COALESCE(st.last_error,
                CASE WHEN pg_catalog.pg_has_role(c.owner, 'USAGE') THEN c.last_error END) AS last_error,
       COALESCE(st.last_error_at, c.last_error_at) AS last_error_at,
       st.last_batch_at
  FROM @extschema@.consumer c
 CROSS JOIN LATERAL pg_catalog.generate_series(0, c.parallelism OPERATOR(pg_catalog.-) 1) AS s(slot)
  LEFT JOIN @extschema@._slots() st ON st.consumer OPERATOR(pg_catalog.=) c.name AND st.slot OPERATOR(pg_catalog.=) s.slot;
GRANT SELECT ON @extschema@.consumer_status TO PUBLIC;

-- Totals of every backend's producers, and the delivery latency (from the
-- produce call to the broker's acknowledgement) from a shared histogram.
CREATE FUNCTION @extschema@._producer_stats(
    OUT messages bigint,
    OUT bytes bigint,
    OUT delivery_failures bigint,
    OUT latency_p50_ms double precision,
    OUT latency_p95_ms double precision,
    OUT latency_p99_ms double precision,
    OUT latency_max_ms double precision,
    OUT stats_reset timestamptz)
RETURNS record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_producer_stats';

CREATE VIEW @extschema@.producer_stats AS SELECT * FROM @extschema@._producer_stats();
GRANT SELECT ON @extschema@.producer_stats TO PUBLIC;

CREATE FUNCTION @extschema@.reset_stats(consumer text DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_reset_stats';

-- Each slot's partitions as its worker last saw them: the next offset it
-- committed and the partition's high watermark (from the worker's fetches,
-- so reading this never waits on a broker).
CREATE FUNCTION @extschema@._partitions(
    OUT consumer text,
    OUT slot int,
    OUT "partition" int,
    OUT applied_offset bigint,
    OUT high_watermark bigint,
    OUT high_watermark_at timestamptz)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_partitions';

-- One row per consumer and partition: what is in the table (the committed
-- offset), the partition's end, and the lag between them.  For a stopped
-- consumer the high watermark is the last one its worker saw, and
-- high_watermark_age says how old it is.
CREATE VIEW @extschema@.consumer_lag AS
SELECT c.name AS consumer,
       COALESCE(o."partition", w."partition") AS "partition",
       o.next_offset AS committed_offset,
       w.high_watermark,
       CASE WHEN w.high_watermark IS NOT NULL
            THEN GREATEST(w.high_watermark OPERATOR(pg_catalog.-) COALESCE(o.next_offset, w.applied_offset, 0), 0)
       END AS lag_messages,
       pg_catalog.now() OPERATOR(pg_catalog.-) w.high_watermark_at AS high_watermark_age,
       w.slot
  FROM @extschema@.consumer c
  JOIN (@extschema@.offsets o
        FULL JOIN @extschema@._partitions() w
               ON w.consumer OPERATOR(pg_catalog.=) o.consumer AND w."partition" OPERATOR(pg_catalog.=) o."partition")
    ON c.name OPERATOR(pg_catalog.=) COALESCE(o.consumer, w.consumer);
GRANT SELECT ON @extschema@.consumer_lag TO PUBLIC;

-- Per consumer: counters since the server started or reset_stats(),
-- throughput over the last 1, 5 and 15 minutes, the error rate (dead letters
-- per message), end-to-end latency (commit time minus the Kafka timestamp)
-- over the last 5 to 10 minutes, and the last hour of throughput and lag as
-- one-line charts (30 points of two minutes, oldest first).
CREATE FUNCTION @extschema@._consumer_stats(
    OUT consumer text,
    OUT messages bigint,
    OUT bytes bigint,
    OUT batches bigint,
    OUT dead_letters bigint,
    OUT errors bigint,
    OUT msgs_per_sec_1m double precision,
    OUT msgs_per_sec_5m double precision,
    OUT msgs_per_sec_15m double precision,
    OUT error_rate double precision,
    OUT latency_p50_ms double precision,
    OUT latency_p95_ms double precision,
    OUT latency_p99_ms double precision,
    OUT latency_max_ms double precision,
    OUT throughput_trend text,
    OUT lag_trend text,
    OUT stats_reset timestamptz)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_consumer_stats';

CREATE VIEW @extschema@.consumer_stats AS SELECT * FROM @extschema@._consumer_stats();
GRANT SELECT ON @extschema@.consumer_stats TO PUBLIC;

-- One row per consumer: ok, warning or critical against the thresholds
-- pipeline_ext.health_lag_messages (1000), pipeline_ext.health_latency
-- (500 ms, compared with the p95 end-to-end latency) and
-- pipeline_ext.health_error_rate (0.001); ten times a threshold, or a
-- failing worker, is critical.  The reason says why, in words.
CREATE VIEW @extschema@.health AS
WITH t AS (
    SELECT pg_catalog.current_setting('pipeline_ext.health_lag_messages')::bigint AS max_lag,
           (pg_catalog.date_part('epoch', pg_catalog.current_setting('pipeline_ext.health_latency')::interval)
                OPERATOR(pg_catalog.*) 1000)::int AS max_latency,
           pg_catalog.current_setting('pipeline_ext.health_error_rate')::float8 AS max_error_rate),
lag AS (
    SELECT consumer, pg_catalog.sum(lag_messages)::bigint AS lag
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
  FROM m;
GRANT SELECT ON @extschema@.health TO PUBLIC;

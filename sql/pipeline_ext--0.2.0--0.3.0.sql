/* pipeline_ext 0.2.0 -> 0.3.0: lag in time and a Burrow-style status per partition */

\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.3.0'" to load this file. \quit

SET LOCAL search_path TO pg_catalog, pg_temp;

DROP VIEW @extschema@.health;
DROP VIEW @extschema@.consumer_lag;
DROP FUNCTION @extschema@._partitions();

-- Each slot entry's partitions as last seen: by its worker while it runs
-- (from its own fetches, so reading this never waits on a broker), and by
-- the database's manager while no worker runs (it asks the brokers every
-- few seconds in the background).  oldest_unapplied_at is the Kafka
-- timestamp of the oldest message not applied yet; status is judged over
-- pipeline_ext.lag_window from a lag history kept in shared memory.
CREATE FUNCTION @extschema@._partitions(
    OUT consumer text,
    OUT slot int,
    OUT "partition" int,
    OUT applied_offset bigint,
    OUT high_watermark bigint,
    OUT high_watermark_at timestamptz,
    OUT oldest_unapplied_at timestamptz,
    OUT status text)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_partitions';

-- One row per consumer and partition: what is in the table (the committed
-- offset), the partition's end, the lag between them in messages and in
-- time (the age of the oldest message not applied yet; zero when caught
-- up), and a status after Burrow's rules over pipeline_ext.lag_window:
--   OK     caught up, or behind and moving
--   WARN   the lag grew at every sample across the window
--   STALL  behind for the whole window without moving, while the consumer
--          applies batches for its other partitions
--   STOP   behind for the whole window with no batch applied (a stopped
--          or failing consumer)
-- high_watermark_age says how old the figures are.
CREATE VIEW @extschema@.consumer_lag AS
SELECT c.name AS consumer,
       COALESCE(o."partition", w."partition") AS "partition",
       o.next_offset AS committed_offset,
       w.high_watermark,
       l.lag_messages,
       CASE WHEN l.lag_messages = 0 THEN interval '0'
            ELSE GREATEST(pg_catalog.now() OPERATOR(pg_catalog.-) w.oldest_unapplied_at, interval '0')
       END AS lag_time,
       w.status,
       pg_catalog.now() OPERATOR(pg_catalog.-) w.high_watermark_at AS high_watermark_age,
       w.slot
  FROM @extschema@.consumer c
  JOIN (@extschema@.offsets o
        FULL JOIN @extschema@._partitions() w
               ON w.consumer OPERATOR(pg_catalog.=) o.consumer AND w."partition" OPERATOR(pg_catalog.=) o."partition")
    ON c.name OPERATOR(pg_catalog.=) COALESCE(o.consumer, w.consumer)
 CROSS JOIN LATERAL (
    SELECT CASE WHEN w.high_watermark IS NOT NULL
                THEN GREATEST(w.high_watermark OPERATOR(pg_catalog.-) COALESCE(o.next_offset, w.applied_offset, 0), 0)
           END AS lag_messages) l;
GRANT SELECT ON @extschema@.consumer_lag TO PUBLIC;

-- One row per consumer: ok, warning or critical against the thresholds
-- pipeline_ext.health_lag_messages (1000), pipeline_ext.health_latency
-- (500 ms, compared with the p95 end-to-end latency) and
-- pipeline_ext.health_error_rate (0.001), and the lag statuses: ten times a
-- threshold, a failing worker, a stalled partition, or a running consumer
-- that applies nothing while behind is critical; a growing lag is a
-- warning.  The reason says why, in words.
CREATE VIEW @extschema@.health AS
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
  FROM m;
GRANT SELECT ON @extschema@.health TO PUBLIC;

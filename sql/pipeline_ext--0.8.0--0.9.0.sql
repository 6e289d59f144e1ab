/* pipeline_ext 0.8.0 -> 0.9.0 */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.9.0'" to load this file. \quit

-- A window, slide, lateness or idle timeout of create_aggregate() that does
-- not parse ('fortnight') is refused with a hint: the function reads the
-- spec itself, where the interval type's input refused it with none.
--
-- create_aggregate() gets a signature that takes them as text.  A quoted
-- literal or an untyped parameter goes to it (a string's preferred type is
-- text); a value that is an interval (interval '1 hour', a column, a
-- PL/pgSQL variable) keeps the interval signature of 0.6.0.  Both run the
-- same C function.
CREATE FUNCTION @extschema@.create_aggregate(
    name          text,
    consumer      text,
    "window"      text,
    time_column   text,
    aggregates    text[],
    group_by      text[] DEFAULT '{}',
    slide         text DEFAULT NULL,
    origin        timestamptz DEFAULT '2000-01-01 00:00:00+00',
    results       text DEFAULT NULL,
    lateness      text DEFAULT '0',
    idle_timeout  text DEFAULT '1 minute',
    emit          text DEFAULT 'update',
    emit_topic    text DEFAULT NULL,
    emit_connection text DEFAULT NULL,
    kind          text DEFAULT NULL,
    time_zone     text DEFAULT NULL)
RETURNS regclass
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_aggregate';

-- alter_aggregate() keeps its interval signature: a text one beside it
-- would make a call that gives neither lateness nor idle_timeout match
-- both, and "any" would refuse an untyped parameter (a driver's) that
-- resolves to interval today.

-- pipeline.health: an aggregate's row shows what pipeline.aggregates shows
-- of it (watermark, open and closed windows, late events kept, last emit,
-- the time it added to the last batch), and warns of a watermark a
-- partition holds far back.  The view is otherwise as 0.8.0 made it.
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
                        THEN pg_catalog.format('p95 commit-to-acknowledged latency %s ms is over %s ms', s.latency_p95_ms, t.max_latency) END,
                   CASE WHEN s.dead_letters > 0
                              AND s.dead_letters::float8 OPERATOR(pg_catalog./) NULLIF(s.published OPERATOR(pg_catalog.+) s.dead_letters, 0) > t.max_error_rate
                        THEN pg_catalog.format('%s outbox messages refused (dead letters)', s.dead_letters) END
               ], NULL) AS warning
          FROM @extschema@.outbox_status s CROSS JOIN t) o
UNION ALL
-- each aggregate, named aggregate:<name>: what pipeline.aggregates shows
-- of it in the reason; a warning for late events kept within the lag
-- window (events came after their window closed: a lateness too short, or
-- a partition far behind the others), and for a watermark held more than
-- 10 windows (plus the lateness) behind the newest event time by a
-- partition that is behind yet not idle (its windows close that late)
SELECT 'aggregate:' OPERATOR(pg_catalog.||) a.name,
       CASE WHEN pg_catalog.cardinality(w.warning) > 0 THEN 'warning' ELSE 'ok' END,
       pg_catalog.format('%s (watermark %s, %s open windows, %s closed, %s late events kept, last emit %s, %s)',
                         CASE WHEN pg_catalog.cardinality(w.warning) > 0
                              THEN pg_catalog.array_to_string(w.warning, '; ') ELSE 'within thresholds' END,
                         COALESCE(a.watermark::text, 'none yet'), a.open_windows, a.windows_closed, k.n,
                         COALESCE(a.last_emit_at::text, 'none'),
                         COALESCE(pg_catalog.round(a.batch_ms::numeric, 1)::text OPERATOR(pg_catalog.||) ' ms added to the last batch',
                                  'no batch yet')),
       NULL::bigint, NULL::int, NULL::float8
  FROM @extschema@.aggregate a
  CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS n FROM @extschema@.aggregate_late x
                       WHERE x.aggregate OPERATOR(pg_catalog.=) a.name) k
  CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS n FROM @extschema@.aggregate_late x
                       WHERE x.aggregate OPERATOR(pg_catalog.=) a.name
                         AND x.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-)
                             pg_catalog.current_setting('pipeline_ext.lag_window')::interval)) l
  CROSS JOIN LATERAL (SELECT pg_catalog.max(o.max_time) AS newest FROM @extschema@.aggregate_offset o
                       WHERE o.aggregate OPERATOR(pg_catalog.=) a.name) nw
  LEFT JOIN LATERAL (SELECT o."partition" FROM @extschema@.aggregate_offset o
                      WHERE o.aggregate OPERATOR(pg_catalog.=) a.name AND o.max_time IS NOT NULL
                        AND o.seen_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) a.idle_timeout)
                      ORDER BY o.max_time LIMIT 1) h ON true
  CROSS JOIN LATERAL (SELECT pg_catalog.array_remove(ARRAY[
           CASE WHEN l.n > 0
                THEN pg_catalog.format('%s late events kept in the last %s (pipeline.late_events)', l.n,
                                       pg_catalog.current_setting('pipeline_ext.lag_window')) END,
           CASE WHEN nw.newest OPERATOR(pg_catalog.-) a.watermark >
                     a.size OPERATOR(pg_catalog.*) 10 OPERATOR(pg_catalog.+) a.lateness AND h."partition" IS NOT NULL
                THEN pg_catalog.format('the watermark is %s behind the newest event time: partition %s holds it back, behind the others and not idle for idle_timeout %s',
                                       nw.newest OPERATOR(pg_catalog.-) a.watermark, h."partition", a.idle_timeout) END
       ], NULL) AS warning) w
 WHERE pg_catalog.pg_has_role(a.owner, 'USAGE');

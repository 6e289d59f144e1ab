/* pipeline_ext 0.10.0 -> 0.11.0: the outbox relay's last error on its connection's row */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.11.0'" to load this file. \quit

-- The relay's last error is about one connection: outbox_status shows it
-- (and its time) on that connection's row only, so that pipeline.health
-- flags that connection, not every one the relay serves.  (The relay's
-- other figures, rate, failures and latency, stay its database's.)
CREATE FUNCTION @extschema@._relay_error_connection()
RETURNS text
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_relay_error_connection';

CREATE OR REPLACE VIEW @extschema@.outbox_status AS
SELECT b.connection, b.backlog, b.oldest_sent_at,
       pg_catalog.clock_timestamp() - b.oldest_sent_at AS oldest_age,
       coalesce(r.published, 0) AS published, coalesce(r.dead_letters, 0) AS dead_letters,
       s.running AS relay_running, s.msgs_per_sec, s.latency_p50_ms, s.latency_p95_ms, s.latency_p99_ms,
       s.failures,
       CASE WHEN b.connection OPERATOR(pg_catalog.=) e.connection THEN s.last_error END AS last_error,
       CASE WHEN b.connection OPERATOR(pg_catalog.=) e.connection THEN s.last_error_at END AS last_error_at,
       s.last_publish_at
  FROM (SELECT c.connection, count(o.id) AS backlog, min(o.sent_at) AS oldest_sent_at
          FROM (SELECT connection FROM @extschema@.outbox
                UNION SELECT connection FROM @extschema@.outbox_relay) c
          LEFT JOIN @extschema@.outbox o ON o.connection = c.connection
         GROUP BY c.connection) b
  LEFT JOIN @extschema@.outbox_relay r ON r.connection = b.connection
 CROSS JOIN @extschema@._relay_stats() s
 CROSS JOIN (SELECT @extschema@._relay_error_connection() AS connection) e;

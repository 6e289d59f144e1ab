/* pipeline_ext 0.4.0 -> 0.5.0: the transactional outbox */

\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.5.0'" to load this file. \quit

SET LOCAL search_path TO pg_catalog, pg_temp;

-- Messages sent with pipeline.send(), written in the sender's transaction:
-- the relay worker (relay.c) publishes those whose transaction committed,
-- and removes them once the broker holds them.  xid is the sender's
-- top-level transaction: the relay reads by snapshot (which transactions
-- it sees), never by "ids above the last one", so a transaction that
-- commits after a later one is not skipped.  Nobody but the extension's
-- functions reads or writes it: a row names a connection its sender was
-- allowed to use when it was written.
CREATE TABLE @extschema@.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY,
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    connection text NOT NULL,
    topic text NOT NULL,
    "partition" int,
    key bytea,
    value bytea,
    headers jsonb,
    sent_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    sent_by oid NOT NULL,
    -- the relay reads a connection's rows in id order, from where it is
    PRIMARY KEY (connection, id)
);
REVOKE ALL ON @extschema@.outbox FROM PUBLIC;
-- pg_dump keeps what waits (and the dead letters and captures below)
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');

-- The relay's progress, one row per connection it publishes through.
-- epoch: the snapshot whose committed rows are being published, in id
-- order, a round (one Kafka transaction) at a time; a row committed after
-- it waits for the next epoch.  epoch_after: the last id the epoch's
-- rounds took (the next round starts above it).  pending: the ids of the round begun and
-- not yet known to be in Kafka (NULL between rounds).  After a crash the
-- Kafka-side checkpoint of the last committed round (written in the same
-- Kafka transaction as the messages) tells whether the pending round went
-- out: then its rows are removed, else it is sent again.
CREATE TABLE @extschema@.outbox_relay (
    connection text PRIMARY KEY,
    epoch pg_snapshot,
    epoch_after bigint,
    round bigint NOT NULL DEFAULT 0,
    pending int8multirange,
    published bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0
);
REVOKE ALL ON @extschema@.outbox_relay FROM PUBLIC;

-- Messages the broker refused for good (too large, no such topic or
-- partition, not authorized) or whose connection is gone: kept with the
-- reason; the others go on.
CREATE TABLE @extschema@.outbox_dead_letter (
    id bigint PRIMARY KEY,
    connection text NOT NULL,
    topic text NOT NULL,
    "partition" int,
    key bytea,
    value bytea,
    headers jsonb,
    sent_at timestamptz NOT NULL,
    sent_by oid NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    error text NOT NULL
);
REVOKE ALL ON @extschema@.outbox_dead_letter FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_dead_letter', '');

-- A role sees the dead letters of what it sent (or of roles it belongs to).
CREATE VIEW @extschema@.outbox_dead_letters WITH (security_barrier) AS
SELECT d.id, d.connection, d.topic, d."partition", d.key, d.value, d.headers,
       d.sent_at, d.sent_by::regrole AS sent_by, d.failed_at, d.error
  FROM @extschema@.outbox_dead_letter d
 WHERE pg_catalog.pg_has_role(d.sent_by, 'MEMBER');
GRANT SELECT ON @extschema@.outbox_dead_letters TO PUBLIC;

CREATE FUNCTION @extschema@.send(
    connection text, topic text, value text,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_outbox_send';

CREATE FUNCTION @extschema@.send(
    connection text, topic text, value bytea,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_outbox_send';

CREATE FUNCTION @extschema@.send(
    connection text, topic text, value jsonb,
    key text DEFAULT NULL, headers jsonb DEFAULT NULL, "partition" int DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_outbox_send';

-- The relay's figures (shared memory) for its database.
CREATE FUNCTION @extschema@._relay_stats(
    OUT pid int, OUT running boolean, OUT published bigint, OUT rounds bigint,
    OUT failures bigint, OUT dead_letters bigint, OUT last_error text, OUT last_error_at timestamptz,
    OUT last_publish_at timestamptz, OUT msgs_per_sec double precision,
    OUT latency_p50_ms double precision, OUT latency_p95_ms double precision,
    OUT latency_p99_ms double precision)
RETURNS record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_relay_stats';

-- What waits, and how the relay does, per connection: readable by anyone
-- (no message content), like the consumers' views.  The relay's own
-- figures (rate, failures, commit-to-acknowledged latency) are its
-- database's, the same on each row.
CREATE VIEW @extschema@.outbox_status AS
SELECT b.connection, b.backlog, b.oldest_sent_at,
       pg_catalog.clock_timestamp() - b.oldest_sent_at AS oldest_age,
       coalesce(r.published, 0) AS published, coalesce(r.dead_letters, 0) AS dead_letters,
       s.running AS relay_running, s.msgs_per_sec, s.latency_p50_ms, s.latency_p95_ms, s.latency_p99_ms,
       s.failures, s.last_error, s.last_error_at, s.last_publish_at
  FROM (SELECT c.connection, count(o.id) AS backlog, min(o.sent_at) AS oldest_sent_at
          FROM (SELECT connection FROM @extschema@.outbox
                UNION SELECT connection FROM @extschema@.outbox_relay) c
          LEFT JOIN @extschema@.outbox o ON o.connection = c.connection
         GROUP BY c.connection) b
  LEFT JOIN @extschema@.outbox_relay r ON r.connection = b.connection
 CROSS JOIN @extschema@._relay_stats() s;
GRANT SELECT ON @extschema@.outbox_status TO PUBLIC;

-- pipeline.health gains a row per outbox connection (outbox:<connection>):
-- backlog against health_lag_messages, the oldest waiting message and the
-- p95 send-to-acknowledged latency against health_latency, refusals
-- against health_error_rate, a relay that fails or is not running.
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
          FROM @extschema@.outbox_status s CROSS JOIN t) o;
GRANT SELECT ON @extschema@.health TO PUBLIC;

-- Change capture: a table's committed INSERTs, UPDATEs and DELETEs as
-- outbox messages (capture.c), written by statement triggers with
-- transition tables, set-based.  One capture per table; owner: the role
-- that captured it, who owned the table and could use the connection.
CREATE TABLE @extschema@.capture (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid oid NOT NULL UNIQUE,
    owner oid NOT NULL,
    connection text NOT NULL,
    topic text NOT NULL,
    key_columns text[] NOT NULL,
    format text NOT NULL CHECK (format IN ('row', 'debezium')),
    tombstones boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON @extschema@.capture FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.capture', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.capture_id_seq', '');

CREATE VIEW @extschema@.captures AS
SELECT c.id, c.relid::regclass AS "table", c.owner::regrole AS owner, c.connection, c.topic,
       c.key_columns, c.format, c.tombstones, c.created_at
  FROM @extschema@.capture c;
GRANT SELECT ON @extschema@.captures TO PUBLIC;

CREATE FUNCTION @extschema@.capture_changes(
    "table" regclass, connection text, topic text,
    key_columns text[] DEFAULT NULL, format text DEFAULT 'row', tombstones boolean DEFAULT true)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pe_capture_changes';

CREATE FUNCTION @extschema@.uncapture("table" regclass)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pe_uncapture';

CREATE FUNCTION @extschema@._capture_trigger()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pe_capture_trigger';

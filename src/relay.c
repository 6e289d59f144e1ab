/*-------------------------------------------------------------------------
 *
 * relay.c
 *	  The outbox relay: one background worker per database (started by its
 *	  manager once the outbox has been used there) that publishes the committed
 *	  rows of pipeline.outbox exactly once, with a transactional producer
 *	  per connection.
 *
 *	  Reading.  Rows are read by snapshot, never "ids above the last one":
 *	  an epoch is a snapshot, and its rows (those whose transaction it sees
 *	  as committed) are published in id order, a round at a time; rows of
 *	  transactions that commit later wait for the next epoch.  So a
 *	  transaction that commits after a later-numbered one is never
 *	  skipped, and per key the order is the commit order wherever the
 *	  database orders the writers (a row lock, a key constraint).
 *
 *	  One round, one Kafka transaction:
 *	    1. PostgreSQL: the round's rows are chosen and recorded (the
 *	       round's number and its ids, outbox_relay.pending); commit.
 *	    2. Kafka: begin; the rows, each with its outbox id in a header;
 *	       then the checkpoint, a message (key: the transactional.id,
 *	       value: the round) in the checkpoint topic; commit.
 *	    3. PostgreSQL: the round's rows are removed, pending cleared.
 *	  Killed between 2 and 3, the relay finds the round pending when it
 *	  starts again, and reads the checkpoint topic (read_committed): the
 *	  round went out if its checkpoint did, in the same Kafka transaction.
 *	  Then its rows are removed; else the round is sent again.  A new
 *	  producer with the same transactional.id fences an old one and
 *	  aborts what it left open, so consumers in read_committed see each
 *	  message once.
 *
 *	  Refusals.  A message the client or the broker refuses for good (too
 *	  large, no such topic or partition, not authorized) is moved to
 *	  pipeline.outbox_dead_letter with the reason, in PostgreSQL, before
 *	  the Kafka transaction without it commits; the others go on.  Other
 *	  failures (broker down, timeouts) keep the rows and retry with
 *	  backoff.
 *
 * IDENTIFICATION
 *	  src/relay.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "kafka.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

#define PE_RELAY_NAP_MS 1000
#define PE_RELAY_BACKOFF_MAX_MS 30000
#define PE_RELAY_RATE_WINDOW_SECS 10

char	   *pe_outbox_checkpoint_topic = NULL;
char	   *pe_outbox_crash_at = NULL;
int			pe_outbox_round_max = 10000;

PG_FUNCTION_INFO_V1(pe_relay_stats);

/* A message of the round in hand. */
typedef struct PeOutMsg
{
	int64		id;
	char	   *topic;
	int32		partition;		/* RD_KAFKA_PARTITION_UA: by key */
	bytea	   *key;
	bytea	   *value;
	Jsonb	   *headers;
	TimestampTz sent_at;
	rd_kafka_resp_err_t err;	/* its delivery report's */
	bool		reported;
	char	   *dead;			/* refused for good: the reason */
} PeOutMsg;

/* A connection the relay publishes through, and its producer. */
typedef struct PeRelayConn
{
	char	   *name;
	char	   *txn_id;			/* transactional.id */
	rd_kafka_t *rk;
	List	   *secrets;
	bool		checked;		/* the pending round found at start was settled */
	int			backoff_ms;
	TimestampTz retry_at;
	char		error[PE_ERROR_LEN];	/* error callback's last */
	bool		fatal;
	bool		gone;			/* the connection was dropped */
} PeRelayConn;

static int	relay_db = -1;
static List *relay_conns = NIL;	/* PeRelayConn, TopMemoryContext */
static PeOutMsg *round_msgs = NULL; /* for the delivery callback */
static int	round_n = 0;

/* ---------------------------------------------------------------- shmem */

static PeRelay *
pe_relay_shared(void)
{
	return &pe_shared->dbs[relay_db].relay;
}

static void
pe_relay_exit(int code, Datum arg)
{
	PeRelay    *r;

	(void) arg;
	if (relay_db < 0)
		return;
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	if (r->pid == MyProcPid)
	{
		r->pid = 0;
		r->latch = NULL;
		if (code != 0)
		{
			int			f = Min(r->failures, 5);

			r->failures++;
			r->restart_at = GetCurrentTimestamp() + (int64) (1000 << f) * 1000;
		}
		else
			r->failures = 0;
	}
	LWLockRelease(pe_shared->lock);
}

static void
pe_relay_note_error(PeRelayConn *c, const char *fmt,...) pg_attribute_printf(2, 3);

static void
pe_relay_note_error(PeRelayConn *c, const char *fmt,...)
{
	va_list		ap;
	char		buf[PE_ERROR_LEN];
	char	   *text;
	PeRelay    *r;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	text = pe_redact(buf, c->secrets);
	ereport(LOG,
			(errmsg("pipeline_ext outbox relay, connection \"%s\": %s", c->name, text)));
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	r->round_failures++;
	snprintf(r->last_error, sizeof(r->last_error), "connection \"%s\": %s", c->name, text);
	r->last_error_at = GetCurrentTimestamp();
	LWLockRelease(pe_shared->lock);

	/* back off: 100 ms, doubling, at most PE_RELAY_BACKOFF_MAX_MS */
	c->backoff_ms = c->backoff_ms == 0 ? 100 : Min(c->backoff_ms * 2, PE_RELAY_BACKOFF_MAX_MS);
	c->retry_at = GetCurrentTimestamp() + (int64) c->backoff_ms * 1000;
}

/* After a round went out: counters, rate, send()-to-acknowledged latency. */
static void
pe_relay_note_published(PeOutMsg *msgs, int n, int ndead)
{
	TimestampTz now = GetCurrentTimestamp();
	PeRelay    *r;
	PeHistogram *h;
	int			ok = 0;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	if (r->window_start == 0)
		r->window_start = now;
	if (now - r->window_start >= (int64) PE_RELAY_RATE_WINDOW_SECS * USECS_PER_SEC)
	{
		r->rate = (double) r->window_msgs * USECS_PER_SEC / (now - r->window_start);
		r->window_start = now;
		r->window_msgs = 0;
	}
	if (r->latency_since == 0 || now - r->latency_since >= (int64) PE_LATENCY_WINDOW_SECS * USECS_PER_SEC)
	{
		r->latency_cur = 1 - r->latency_cur;
		pe_hist_init(&r->latency[r->latency_cur]);
		r->latency_since = now;
	}
	h = &r->latency[r->latency_cur];
	for (int i = 0; i < n; i++)
		if (msgs[i].dead == NULL)
		{
			pe_hist_add(h, Max(now - msgs[i].sent_at, 0));
			ok++;
		}
	r->published += ok;
	r->window_msgs += ok;
	r->dead_letters += ndead;
	r->rounds++;
	if (ok > 0)
		r->last_publish_at = now;
	LWLockRelease(pe_shared->lock);
}

/* ------------------------------------------------------------- producer */

static void
pe_relay_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	intptr_t	i = (intptr_t) m->_private;

	(void) rk;
	(void) opaque;
	if (i >= 0 && i < round_n)
	{
		round_msgs[i].err = m->err;
		round_msgs[i].reported = true;
	}
}

static void
pe_relay_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	PeRelayConn *c = (PeRelayConn *) opaque;

	(void) rk;
	strlcpy(c->error, reason, sizeof(c->error));
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		c->fatal = true;
}

static void
pe_relay_drop_producer(PeRelayConn *c)
{
	if (c->rk)
	{
		rd_kafka_purge(c->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
					   RD_KAFKA_PURGE_F_NON_BLOCKING);
		rd_kafka_destroy(c->rk);
	}
	c->rk = NULL;
	c->checked = false;
	c->fatal = false;
}

/* Serve callbacks, and write the client's queued log lines. */
static void
pe_relay_poll(PeRelayConn *c, int ms)
{
	rd_kafka_poll(c->rk, ms);
	if (pe_log_pending(c->rk))
		pe_log_drain(c->rk, psprintf("outbox relay for connection \"%s\"", c->name), c->secrets);
}

/* "what failed: librdkafka's reason" into the connection's error */
static bool
pe_relay_kafka_failed(PeRelayConn *c, const char *what, rd_kafka_error_t *error)
{
	pe_relay_note_error(c, "%s: %s%s%s", what, rd_kafka_error_string(error),
						c->error[0] ? "; last broker error: " : "", c->error);
	rd_kafka_error_destroy(error);
	return false;
}

/*
 * The checkpoint topic, created when missing: one partition, compacted
 * (only each relay's last checkpoint matters), the cluster's replication
 * factor.  A refusal (no CREATE on the cluster) is only logged: the
 * topic may exist, or the first round says what is wrong.
 */
static void
pe_relay_checkpoint_topic(PeRelayConn *c)
{
	rd_kafka_NewTopic_t *nt;
	rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
	rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(c->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_event_t *ev;
	char		errstr[256];
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->rk, pe_outbox_checkpoint_topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	bool		exists = false;

	/* there already (the usual case): nothing to ask the cluster */
	if (rkt && rd_kafka_metadata(c->rk, 0, rkt, &md, pe_produce_timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
		exists = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
			md->topics[0].partition_cnt > 0;
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	if (exists)
	{
		rd_kafka_AdminOptions_destroy(opts);
		rd_kafka_queue_destroy(q);
		return;
	}

	nt = rd_kafka_NewTopic_new(pe_outbox_checkpoint_topic, 1, -1, errstr, sizeof(errstr));
	if (nt == NULL)
	{
		ereport(LOG, (errmsg("pipeline_ext outbox relay: checkpoint topic: %s", errstr)));
		rd_kafka_AdminOptions_destroy(opts);
		rd_kafka_queue_destroy(q);
		return;
	}
	(void) rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
	(void) rd_kafka_AdminOptions_set_request_timeout(opts, pe_produce_timeout_ms, errstr, sizeof(errstr));
	rd_kafka_CreateTopics(c->rk, &nt, 1, opts, q);
	ev = rd_kafka_queue_poll(q, pe_produce_timeout_ms + 1000);
	if (ev)
	{
		const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
		size_t		n = 0;
		const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;
		rd_kafka_resp_err_t err = rd_kafka_event_error(ev);

		if (err == RD_KAFKA_RESP_ERR_NO_ERROR && n == 1)
			err = rd_kafka_topic_result_error(tr[0]);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": could not create checkpoint topic \"%s\": %s",
							c->name, pe_outbox_checkpoint_topic, rd_kafka_err2str(err)),
					 errhint("Create it (one partition, cleanup.policy=compact), or let the connection's role create topics.")));
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_NewTopic_destroy(nt);
	rd_kafka_AdminOptions_destroy(opts);
	rd_kafka_queue_destroy(q);
}

/*
 * The connection's transactional producer, made and initialised
 * (init_transactions fences an older producer of the same id and settles
 * what it left open).  In a transaction: reads the catalog.
 */
static bool
pe_relay_producer(PeRelayConn *c)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	char		errstr[512];
	rd_kafka_error_t *error;
	MemoryContext old;

	if (c->rk && !c->fatal)
		return true;
	pe_relay_drop_producer(c);

	pe_xact_begin();
	conn = pe_connection_lookup(c->name, true);
	c->gone = (conn == NULL);
	if (conn == NULL)
	{
		pe_xact_commit();
		return false;			/* the caller dead-letters the rows */
	}
	forced = lappend(forced, pe_property("transactional.id", c->txn_id, "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.idempotence", "true", "pipeline_ext"));
	forced = lappend(forced, pe_property("acks", "all", "pipeline_ext"));
	conf = pe_kafka_conf(conn, pe_producer_default_props(), forced);
	old = MemoryContextSwitchTo(TopMemoryContext);
	c->secrets = NIL;
	{
		ListCell   *lc;

		foreach(lc, pe_connection_secrets(conn))
			c->secrets = lappend(c->secrets, pstrdup(lfirst(lc)));
	}
	MemoryContextSwitchTo(old);
	pe_xact_commit();

	if (rd_kafka_conf_set(conf, "log.queue", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		elog(ERROR, "could not set log.queue: %s", errstr);
	rd_kafka_conf_set_opaque(conf, c);
	rd_kafka_conf_set_dr_msg_cb(conf, pe_relay_dr_cb);
	rd_kafka_conf_set_error_cb(conf, pe_relay_error_cb);
	rd_kafka_conf_set_log_cb(conf, pe_log_cb);
	c->error[0] = '\0';
	c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (c->rk == NULL)
	{
		pe_relay_note_error(c, "could not create a producer: %s", errstr);
		return false;
	}
	rd_kafka_set_log_queue(c->rk, NULL);
	error = rd_kafka_init_transactions(c->rk, pe_produce_timeout_ms);
	if (error)
	{
		pe_relay_kafka_failed(c, "could not initialise transactions", error);
		pe_relay_drop_producer(c);
		return false;
	}
	pe_relay_checkpoint_topic(c);
	return true;
}

/* ----------------------------------------------------------- checkpoint */

/*
 * The last round this relay committed through the connection, from the
 * checkpoint topic (read_committed: an aborted round's checkpoint is not
 * seen).  -1 if none; -2 if it could not be read.
 */
static int64
pe_relay_committed_round(PeRelayConn *c)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	rd_kafka_t *rk;
	char		errstr[512];
	int64		low,
				high,
				found = -1;
	int64		window = 1000;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_partition_list_t *parts;
	size_t		idlen = strlen(c->txn_id);

	pe_xact_begin();
	conn = pe_connection_lookup(c->name, false);
	forced = lappend(forced, pe_property("isolation.level", "read_committed", "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.auto.commit", "false", "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.partition.eof", "true", "pipeline_ext"));
	/* assign() needs a group; this one never joins nor commits */
	forced = lappend(forced, pe_property("group.id", psprintf("%s-checkpoint", c->txn_id), "pipeline_ext"));
	conf = pe_kafka_conf(conn, list_make1(pe_property("client.id", "pipeline_ext", "pipeline_ext")), forced);
	pe_xact_commit();
	rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		pe_relay_note_error(c, "could not create a consumer for the checkpoint topic: %s", errstr);
		return -2;
	}
	err = rd_kafka_query_watermark_offsets(rk, pe_outbox_checkpoint_topic, 0, &low, &high,
										   pe_produce_timeout_ms);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_destroy(rk);
		pe_relay_note_error(c, "could not read checkpoint topic \"%s\": %s",
							pe_outbox_checkpoint_topic, rd_kafka_err2str(err));
		return -2;
	}

	/* the newest first: windows back from the end until ours shows up */
	parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, pe_outbox_checkpoint_topic, 0);
	for (int64 end = high; found < 0 && end > low; window *= 10)
	{
		int64		start = Max(low, end - window);
		TimestampTz deadline = GetCurrentTimestamp() + (int64) pe_produce_timeout_ms * 1000;

		parts->elems[0].offset = start;
		if ((err = rd_kafka_assign(rk, parts)) != RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		for (;;)
		{
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);

			CHECK_FOR_INTERRUPTS();
			if (m == NULL)
			{
				if (GetCurrentTimestamp() > deadline)
				{
					err = RD_KAFKA_RESP_ERR__TIMED_OUT;
					break;
				}
				continue;
			}
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			{
				rd_kafka_message_destroy(m);
				break;
			}
			if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				err = m->err;
				rd_kafka_message_destroy(m);
				break;
			}
			if (m->offset < end && m->key_len == idlen && memcmp(m->key, c->txn_id, idlen) == 0 &&
				m->payload != NULL)
			{
				char	   *v = pnstrdup(m->payload, m->len);
				int64		round = strtoll(v, NULL, 10);

				found = Max(found, round);
			}
			if (m->offset >= end - 1)
			{
				rd_kafka_message_destroy(m);
				break;
			}
			rd_kafka_message_destroy(m);
		}
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		end = start;
	}
	rd_kafka_topic_partition_list_destroy(parts);
	rd_kafka_destroy(rk);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		pe_relay_note_error(c, "could not read checkpoint topic \"%s\": %s",
							pe_outbox_checkpoint_topic, rd_kafka_err2str(err));
		return -2;
	}
	return found;
}

/* ----------------------------------------------------------- PostgreSQL */

static void
pe_spi_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expect)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expect)
		elog(ERROR, "outbox relay: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * Step 1: the round to send, from the pending one or the epoch's next rows
 * (msgs palloc'd in the current context).  Returns its number, 0 if there
 * is nothing to send; *was_pending tells a round found pending.
 */
static int64
pe_relay_choose(PeRelayConn *c, PeOutMsg **msgs, int *n, bool *was_pending)
{
	Oid			t1[1] = {TEXTOID};
	Datum		v1[1];
	int64		round;
	bool		isnull;
	bool		pending;
	bool		have_epoch;
	MemoryContext cxt = CurrentMemoryContext;
	const char *cols = "SELECT id, topic, \"partition\", key, value, headers, sent_at FROM pipeline.outbox ";

	*n = 0;
	*msgs = NULL;
	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	v1[0] = CStringGetTextDatum(c->name);
	pe_spi_exec("INSERT INTO pipeline.outbox_relay (connection) VALUES ($1) ON CONFLICT DO NOTHING",
				1, t1, v1, NULL, SPI_OK_INSERT);
	pe_spi_exec("SELECT round, pending IS NOT NULL, epoch IS NOT NULL FROM pipeline.outbox_relay "
				"WHERE connection = $1 FOR UPDATE", 1, t1, v1, NULL, SPI_OK_SELECT);
	round = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pending = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	have_epoch = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	*was_pending = pending;

	if (pending)
		pe_spi_exec(psprintf("%s WHERE connection = $1 AND id <@ (SELECT pending FROM pipeline.outbox_relay "
							 "WHERE connection = $1) ORDER BY id", cols),
					1, t1, v1, NULL, SPI_OK_SELECT);
	else
	{
		char	   *next = psprintf("%s WHERE connection = $1 AND pg_catalog.pg_visible_in_snapshot(xid, "
									"(SELECT epoch FROM pipeline.outbox_relay WHERE connection = $1)) "
									"ORDER BY id LIMIT %d", cols, pe_outbox_round_max);

		if (have_epoch)
			pe_spi_exec(next, 1, t1, v1, NULL, SPI_OK_SELECT);
		if (!have_epoch || SPI_processed == 0)
		{
			/* a new epoch: what is committed as of now */
			pe_spi_exec("UPDATE pipeline.outbox_relay SET epoch = pg_catalog.pg_current_snapshot() "
						"WHERE connection = $1", 1, t1, v1, NULL, SPI_OK_UPDATE);
			pe_spi_exec(next, 1, t1, v1, NULL, SPI_OK_SELECT);
		}
	}

	if (SPI_processed > 0)
	{
		int			count = SPI_processed;
		SPITupleTable *tt = SPI_tuptable;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		PeOutMsg   *m = palloc0(sizeof(PeOutMsg) * count);
		Datum		ids;
		Datum	   *idd = palloc(sizeof(Datum) * count);

		for (int i = 0; i < count; i++)
		{
			HeapTuple	tup = tt->vals[i];
			TupleDesc	desc = tt->tupdesc;
			Datum		d;

			m[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			m[i].topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
			d = SPI_getbinval(tup, desc, 3, &isnull);
			m[i].partition = isnull ? RD_KAFKA_PARTITION_UA : DatumGetInt32(d);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			m[i].key = isnull ? NULL : DatumGetByteaPCopy(d);
			d = SPI_getbinval(tup, desc, 5, &isnull);
			m[i].value = isnull ? NULL : DatumGetByteaPCopy(d);
			d = SPI_getbinval(tup, desc, 6, &isnull);
			m[i].headers = isnull ? NULL : DatumGetJsonbPCopy(d);
			m[i].sent_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));
			idd[i] = Int64GetDatum(m[i].id);
		}
		MemoryContextSwitchTo(old);
		*msgs = m;
		*n = count;
		if (!pending)
		{
			Oid			t3[3] = {TEXTOID, INT8ARRAYOID, BOOLOID};
			Datum		v3[3];

			ids = PointerGetDatum(construct_array(idd, count, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			v3[0] = v1[0];
			v3[1] = ids;
			/* fewer than a round's worth: the epoch is drained */
			v3[2] = BoolGetDatum(count < pe_outbox_round_max);
			pe_spi_exec("UPDATE pipeline.outbox_relay SET round = round + 1, "
						"pending = (SELECT pg_catalog.range_agg(pg_catalog.int8range(i, i, '[]')) "
						"FROM pg_catalog.unnest($2) i), "
						"epoch = CASE WHEN $3 THEN NULL ELSE epoch END WHERE connection = $1",
						3, t3, v3, NULL, SPI_OK_UPDATE);
			round++;
		}
	}
	else if (pending)
	{
		/* its rows are gone (the extension's tables were changed by hand?) */
		pe_spi_exec("UPDATE pipeline.outbox_relay SET pending = NULL WHERE connection = $1",
					1, t1, v1, NULL, SPI_OK_UPDATE);
	}
	SPI_finish();
	pe_xact_commit();
	return *n > 0 ? round : 0;
}

/*
 * Move the round's refused messages to the dead letters, out of the
 * outbox and out of the pending round.  Committed before the Kafka
 * transaction without them is, so that a crash in between cannot count
 * them as sent.
 */
static void
pe_relay_bury(PeRelayConn *c, PeOutMsg *msgs, int n)
{
	Oid			types[3] = {TEXTOID, INT8ARRAYOID, TEXTARRAYOID};
	Datum		values[3];
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *why = palloc(sizeof(Datum) * n);
	int			k = 0;

	for (int i = 0; i < n; i++)
		if (msgs[i].dead)
		{
			ids[k] = Int64GetDatum(msgs[i].id);
			why[k] = CStringGetTextDatum(pe_redact(msgs[i].dead, c->secrets));
			k++;
		}
	if (k == 0)
		return;
	values[0] = CStringGetTextDatum(c->name);
	values[1] = PointerGetDatum(construct_array(ids, k, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(why, k, TEXTOID, -1, false, TYPALIGN_INT));

	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pe_spi_exec("WITH gone AS (DELETE FROM pipeline.outbox o "
				"USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS d(id, error) "
				"WHERE o.id = d.id AND o.connection = $1 "
				"RETURNING o.id, o.connection, o.topic, o.\"partition\", o.key, o.value, o.headers, "
				"o.sent_at, o.sent_by, d.error) "
				"INSERT INTO pipeline.outbox_dead_letter (id, connection, topic, \"partition\", key, value, "
				"headers, sent_at, sent_by, error) SELECT * FROM gone",
				3, types, values, NULL, SPI_OK_INSERT);
	pe_spi_exec("UPDATE pipeline.outbox_relay SET dead_letters = dead_letters + "
				"pg_catalog.cardinality($2::pg_catalog.int8[]), "
				"pending = pending - (SELECT pg_catalog.range_agg(pg_catalog.int8range(i, i, '[]')) "
				"FROM pg_catalog.unnest($2::pg_catalog.int8[]) i) WHERE connection = $1",
				2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	pe_xact_commit();
}

/* Step 3: the round is in Kafka; its rows go. */
static void
pe_relay_settle(PeRelayConn *c, int nsent)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(c->name);
	values[1] = Int64GetDatum(nsent);
	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pe_spi_exec("DELETE FROM pipeline.outbox WHERE connection = $1 AND id <@ "
				"(SELECT pending FROM pipeline.outbox_relay WHERE connection = $1)",
				1, types, values, NULL, SPI_OK_DELETE);
	pe_spi_exec("UPDATE pipeline.outbox_relay SET pending = NULL, published = published + $2 "
				"WHERE connection = $1", 2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	pe_xact_commit();
}

/* ---------------------------------------------------------------- Kafka */

/*
 * For the tests of recovery: pipeline_ext.outbox_crash_at = 'before_commit:N'
 * or 'after_commit:N' makes the relay crash (abort(), as a kill -9 would
 * stop it) around the Kafka commit of round N, on the round's first try.
 */
static void
pe_relay_crash_point(const char *where, int64 round, bool first_try)
{
	size_t		len = strlen(where);

	if (!first_try || pe_outbox_crash_at == NULL || strncmp(pe_outbox_crash_at, where, len) != 0 ||
		pe_outbox_crash_at[len] != ':' || strtoll(pe_outbox_crash_at + len + 1, NULL, 10) != round)
		return;
	ereport(LOG,
			(errmsg("pipeline_ext outbox relay: crashing %s of round " INT64_FORMAT " (pipeline_ext.outbox_crash_at)",
					where, round)));
	abort();
}

/* Is a delivery error a refusal for good, rather than a failure to retry? */
static bool
pe_relay_refusal(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_INVALID_MSG:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
			return true;
		default:
			return false;
	}
}

/* Did a message of the round (not refused) fail its delivery? */
static bool
pe_relay_delivery_failed(PeOutMsg *msgs, int n)
{
	for (int i = 0; i < n; i++)
		if (!msgs[i].dead && msgs[i].reported && msgs[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
			return true;
	return false;
}

static const char *
pe_relay_first_failure(PeOutMsg *msgs, int n)
{
	for (int i = 0; i < n; i++)
		if (!msgs[i].dead && msgs[i].reported && msgs[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
			return rd_kafka_err2str(msgs[i].err);
	return "unknown";
}

static rd_kafka_headers_t *
pe_relay_headers(PeOutMsg *m)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
	char		id[32];

	if (m->headers)
	{
		JsonbIterator *it = JsonbIteratorInit(&m->headers->root);
		JsonbValue	v;
		JsonbValue	key = {0};
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = v;
			else if (tok == WJB_VALUE)
				rd_kafka_header_add(hdrs, key.val.string.val, key.val.string.len,
									v.type == jbvString ? v.val.string.val : NULL,
									v.type == jbvString ? v.val.string.len : 0);
		}
	}
	snprintf(id, sizeof(id), INT64_FORMAT, m->id);
	rd_kafka_header_add(hdrs, PE_OUTBOX_ID_HEADER, -1, id, -1);
	return hdrs;
}

/*
 * Step 2: the round in one Kafka transaction, with its checkpoint.
 * Returns true when it committed; false after a failure (noted, rows
 * kept) or after refusals (buried: the caller sends the rest again).
 */
static bool
pe_relay_send(PeRelayConn *c, int64 round, PeOutMsg *msgs, int n, bool first_try, bool *refused)
{
	rd_kafka_error_t *error;
	rd_kafka_resp_err_t err;
	char		rv[32];
	int			queued = 0;

	*refused = false;
	round_msgs = msgs;
	round_n = n;
	if ((error = rd_kafka_begin_transaction(c->rk)) != NULL)
	{
		c->fatal = true;		/* a new producer, from a clean state */
		return pe_relay_kafka_failed(c, "could not begin a transaction", error);
	}

	for (int i = 0; i < n; i++)
	{
		PeOutMsg   *m = &msgs[i];
		rd_kafka_headers_t *hdrs;
		TimestampTz deadline = 0;

		if (m->dead)
			continue;
		hdrs = pe_relay_headers(m);
		for (;;)
		{
			err = rd_kafka_producev(c->rk,
									RD_KAFKA_V_TOPIC(m->topic),
									RD_KAFKA_V_PARTITION(m->partition),
									RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									RD_KAFKA_V_VALUE(m->value ? VARDATA_ANY(m->value) : NULL,
													 m->value ? VARSIZE_ANY_EXHDR(m->value) : 0),
									RD_KAFKA_V_KEY(m->key ? VARDATA_ANY(m->key) : NULL,
												   m->key ? VARSIZE_ANY_EXHDR(m->key) : 0),
									RD_KAFKA_V_HEADERS(hdrs),
									RD_KAFKA_V_OPAQUE((void *) (intptr_t) i),
									RD_KAFKA_V_END);
			if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
				break;
			if (deadline == 0)
				deadline = GetCurrentTimestamp() + (int64) pe_produce_timeout_ms * 1000;
			else if (GetCurrentTimestamp() > deadline)
				break;
			pe_relay_poll(c, 10);
			CHECK_FOR_INTERRUPTS();
		}
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			queued++;
			continue;
		}
		rd_kafka_headers_destroy(hdrs);
		if (pe_relay_refusal(err))
		{
			m->dead = psprintf("%s", rd_kafka_err2str(err));
			*refused = true;
			continue;
		}
		/* anything else: the whole round again, later */
		pe_relay_note_error(c, "could not queue a message for topic \"%s\": %s", m->topic, rd_kafka_err2str(err));
		error = rd_kafka_abort_transaction(c->rk, pe_produce_timeout_ms);
		if (error)
			rd_kafka_error_destroy(error);
		return false;
	}

	/*
	 * Every message acknowledged before the checkpoint is queued, so that
	 * the checkpoint is written last (a broker without transaction markers,
	 * as the test broker, then never shows a checkpoint without its round).
	 * A refusal by the broker fails the transaction: abort, bury, again.
	 */
	err = rd_kafka_flush(c->rk, pe_produce_timeout_ms);
	for (int i = 0; i < n; i++)
		if (!msgs[i].dead && msgs[i].reported && msgs[i].err != RD_KAFKA_RESP_ERR_NO_ERROR &&
			pe_relay_refusal(msgs[i].err))
		{
			msgs[i].dead = psprintf("%s", rd_kafka_err2str(msgs[i].err));
			*refused = true;
		}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR || rd_kafka_fatal_error(c->rk, NULL, 0) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		pe_relay_delivery_failed(msgs, n))
	{
		error = rd_kafka_abort_transaction(c->rk, pe_produce_timeout_ms);
		if (error)
		{
			c->fatal = true;
			rd_kafka_error_destroy(error);
		}
		if (*refused)
		{
			pe_relay_bury(c, msgs, n);
			return false;
		}
		pe_relay_note_error(c, "messages not acknowledged: %s%s%s",
							err != RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_err2str(err) : pe_relay_first_failure(msgs, n),
							c->error[0] ? "; last broker error: " : "", c->error);
		return false;
	}

	/* refused at once (too large, no such partition): out before the checkpoint */
	if (*refused)
		pe_relay_bury(c, msgs, n);

	/* the checkpoint: this round went out if, and only if, this did */
	snprintf(rv, sizeof(rv), INT64_FORMAT, round);
	err = rd_kafka_producev(c->rk,
							RD_KAFKA_V_TOPIC(pe_outbox_checkpoint_topic),
							RD_KAFKA_V_PARTITION(0),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_VALUE(rv, strlen(rv)),
							RD_KAFKA_V_KEY(c->txn_id, strlen(c->txn_id)),
							RD_KAFKA_V_OPAQUE((void *) (intptr_t) -1),
							RD_KAFKA_V_END);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		pe_relay_note_error(c, "could not queue the checkpoint for topic \"%s\": %s",
							pe_outbox_checkpoint_topic, rd_kafka_err2str(err));
		error = rd_kafka_abort_transaction(c->rk, pe_produce_timeout_ms);
		if (error)
			rd_kafka_error_destroy(error);
		return false;
	}

	pe_relay_crash_point("before_commit", round, first_try);
	error = rd_kafka_commit_transaction(c->rk, pe_produce_timeout_ms);
	pe_relay_poll(c, 0);
	if (error == NULL)
	{
		pe_relay_crash_point("after_commit", round, first_try);
		return true;
	}

	/* what the broker refused for good becomes a dead letter */
	for (int i = 0; i < n; i++)
		if (!msgs[i].dead && msgs[i].reported && pe_relay_refusal(msgs[i].err))
		{
			msgs[i].dead = psprintf("%s", rd_kafka_err2str(msgs[i].err));
			*refused = true;
		}
	if (rd_kafka_error_is_fatal(error))
		c->fatal = true;
	if (rd_kafka_error_txn_requires_abort(error) || *refused)
	{
		rd_kafka_error_t *e2 = rd_kafka_abort_transaction(c->rk, pe_produce_timeout_ms);

		if (e2)
		{
			if (rd_kafka_error_is_fatal(e2))
				c->fatal = true;
			rd_kafka_error_destroy(e2);
		}
	}
	if (*refused)
	{
		rd_kafka_error_destroy(error);
		pe_relay_bury(c, msgs, n);
		return false;
	}
	if (!rd_kafka_error_txn_requires_abort(error) && !c->fatal)
	{
		/*
		 * Retriable (the brokers did not answer in time): abort, which
		 * drops what is still queued, and send the round again later.  If
		 * even that fails, a new producer (its init_transactions) settles
		 * the transaction with the coordinator.
		 */
		rd_kafka_error_t *e2 = rd_kafka_abort_transaction(c->rk, pe_produce_timeout_ms);

		if (e2)
		{
			c->fatal = true;
			rd_kafka_error_destroy(e2);
		}
	}
	return pe_relay_kafka_failed(c, "could not commit the transaction", error);
}

/*
 * One round through a connection.  Returns the number of messages it
 * settled (sent or dead), 0 when there was nothing, -1 on a failure.
 */
static int
pe_relay_round(PeRelayConn *c, MemoryContext cxt)
{
	PeOutMsg   *msgs;
	int			n;
	bool		was_pending;
	int64		round;
	MemoryContext old = MemoryContextSwitchTo(cxt);
	int			result = -1;

	round = pe_relay_choose(c, &msgs, &n, &was_pending);
	if (round == 0)
	{
		MemoryContextSwitchTo(old);
		return 0;
	}
	if (!pe_relay_producer(c))
	{
		if (c->gone)
		{
			/* the connection is gone: its messages cannot go anywhere */
			for (int i = 0; i < n; i++)
				msgs[i].dead = psprintf("connection \"%s\" does not exist", c->name);
			pe_relay_bury(c, msgs, n);
			pe_relay_note_published(msgs, n, n);
			result = n;
		}
		MemoryContextSwitchTo(old);
		return result;
	}

	if (was_pending && !c->checked)
	{
		/* found pending at start: did it go out before the relay stopped? */
		int64		committed = pe_relay_committed_round(c);

		if (committed == -2)
		{
			MemoryContextSwitchTo(old);
			return -1;
		}
		c->checked = true;
		if (committed >= round)
		{
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": round " INT64_FORMAT " was committed to Kafka before the relay stopped; its %d messages are not sent again",
							c->name, round, n)));
			pe_relay_settle(c, n);
			pe_relay_note_published(msgs, n, 0);
			MemoryContextSwitchTo(old);
			return n;
		}
	}
	c->checked = true;

	for (;;)
	{
		bool		refused;
		int			ndead = 0;
		int			nsent = 0;

		pgstat_report_activity(STATE_RUNNING, "publishing outbox messages");
		if (pe_relay_send(c, round, msgs, n, !was_pending, &refused))
		{
			for (int i = 0; i < n; i++)
				if (msgs[i].dead)
					ndead++;
			nsent = n - ndead;
			pe_relay_settle(c, nsent);
			pe_relay_note_published(msgs, n, ndead);
			c->backoff_ms = 0;
			c->retry_at = 0;
			result = n;
			break;
		}
		if (!refused)
			break;				/* a failure: noted, backing off */
		/* some were refused and buried: the others again, at once */
		for (int i = 0; i < n; i++)
		{
			msgs[i].reported = false;
			msgs[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
		}
		if (c->fatal)
			break;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	round_msgs = NULL;
	round_n = 0;
	MemoryContextSwitchTo(old);
	return result;
}

static PeRelayConn *
pe_relay_conn(const char *name)
{
	ListCell   *lc;
	PeRelayConn *c;
	MemoryContext old;

	foreach(lc, relay_conns)
	{
		c = lfirst(lc);
		if (strcmp(c->name, name) == 0)
			return c;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc0(sizeof(PeRelayConn));
	c->name = pstrdup(name);
	c->txn_id = psprintf("pipeline_ext-outbox-" UINT64_FORMAT "-%u-%s",
						 GetSystemIdentifier(), MyDatabaseId, name);
	relay_conns = lappend(relay_conns, c);
	MemoryContextSwitchTo(old);
	return c;
}

/* The connections that have rows or a pending round. */
static List *
pe_relay_connections(void)
{
	List	   *names = NIL;

	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pe_spi_exec("SELECT DISTINCT connection FROM pipeline.outbox "
				"UNION SELECT connection FROM pipeline.outbox_relay WHERE pending IS NOT NULL",
				0, NULL, NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	pe_xact_commit();
	return names;
}

void
pe_relay_main(Datum arg)
{
	PeWorkerExtra extra;
	MemoryContext cxt;

	relay_db = DatumGetInt32(arg);
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (pe_shared->dbs[relay_db].dboid != extra.dboid || pe_shared->dbs[relay_db].relay.pid != 0)
	{
		LWLockRelease(pe_shared->lock);
		relay_db = -1;
		proc_exit(0);
	}
	pe_shared->dbs[relay_db].relay.pid = MyProcPid;
	pe_shared->dbs[relay_db].relay.latch = MyLatch;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_relay_exit, 0);

	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);
	pe_pin_search_path();
	pgstat_report_appname("pipeline_ext outbox relay");
	cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext relay round", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		List	   *names;
		ListCell   *lc;
		bool		busy = false;
		long		nap = PE_RELAY_NAP_MS;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		ResetLatch(MyLatch);
		names = pe_relay_connections();
		foreach(lc, names)
		{
			PeRelayConn *c = pe_relay_conn(lfirst(lc));
			int			done;

			if (c->retry_at != 0 && GetCurrentTimestamp() < c->retry_at)
			{
				nap = Min(nap, Max(1, (c->retry_at - GetCurrentTimestamp()) / 1000));
				continue;
			}
			MemoryContextReset(cxt);
			done = pe_relay_round(c, cxt);
			if (done > 0)
				busy = true;
			else if (done < 0)
				nap = Min(nap, c->backoff_ms);
		}
		list_free_deep(names);
		(void) pgstat_report_stat(false);

		if (busy)
			continue;
		/*
		 * Idle: a send() wakes it at its commit; a COMMIT PREPARED (in
		 * another session, perhaps after a restart) is seen within a nap.
		 */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
	}
}

/* pipeline._relay_stats(): the relay of the current database. */
Datum
pe_relay_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[13];
	bool		nulls[13];
	PeRelay		r;
	bool		found = false;
	uint64		total;
	double		p;

	pe_require_preload();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, true, sizeof(nulls));
	memset(&r, 0, sizeof(r));
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid == MyDatabaseId)
		{
			r = pe_shared->dbs[i].relay;
			found = true;
		}
	LWLockRelease(pe_shared->lock);

	if (found && r.pid != 0)
	{
		values[0] = Int32GetDatum(r.pid);
		nulls[0] = false;
	}
	values[1] = BoolGetDatum(found && r.pid != 0);
	nulls[1] = false;
	values[2] = Int64GetDatum(r.published);
	values[3] = Int64GetDatum(r.rounds);
	values[4] = Int64GetDatum(r.round_failures);
	values[5] = Int64GetDatum(r.dead_letters);
	nulls[2] = nulls[3] = nulls[4] = nulls[5] = false;
	if (r.last_error[0])
	{
		values[6] = CStringGetTextDatum(r.last_error);
		values[7] = TimestampTzGetDatum(r.last_error_at);
		nulls[6] = nulls[7] = false;
	}
	if (r.last_publish_at)
	{
		values[8] = TimestampTzGetDatum(r.last_publish_at);
		nulls[8] = false;
	}
	values[9] = Float8GetDatum(r.rate);
	nulls[9] = false;
	p = pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.5, &total);
	if (total > 0)
	{
		values[10] = Float8GetDatum(p);
		values[11] = Float8GetDatum(pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.95, &total));
		values[12] = Float8GetDatum(pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.99, &total));
		nulls[10] = nulls[11] = nulls[12] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

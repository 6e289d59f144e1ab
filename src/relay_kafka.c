/*-------------------------------------------------------------------------
 *
 * relay_kafka.c
 *	  The outbox relay's Kafka side (relay.c has the rest): each connection's
 *	  transactional producer, a round sent in one Kafka transaction with its
 *	  checkpoint, and refusals told apart from failures.  The checkpoint
 *	  topic, and reading back the last checkpoint after a restart, are in
 *	  relay_checkpoint.c.
 *
 * IDENTIFICATION
 *	  src/relay_kafka.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "kafka.h"
#include "producer.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

char	   *pe_outbox_crash_at = NULL;

static PeOutMsg *round_msgs = NULL; /* for the delivery callback */
static int	round_n = 0;

static uint32 round_try = 0;	/* each try of a round, in its messages' opaque */

/* A message's opaque: the try it was sent in, and its index in the round. */
#define PE_DR_OPAQUE(try, i)	((void *) (((uintptr_t) (try) << 32) | (uint32) (i)))

static void
pe_relay_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	uintptr_t	o = (uintptr_t) m->_private;
	int64		i = (int64) (o & 0xFFFFFFFF);

	(void) rk;
	(void) opaque;
	/* a report of an earlier, aborted try says nothing of this one */
	if ((uint32) (o >> 32) == round_try && i < round_n)
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
	pe_redact_into(c->error, sizeof(c->error), reason, c->secrets);
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
	c->txn_ready = false;
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
 * init_transactions() (which fences an older producer of the same id and
 * settles what it left open), PE_RELAY_INIT_SLICE_MS at a try.  The relay
 * serves every connection of its database in turn: a cluster that does
 * not answer must not hold the others for produce_timeout at each try.
 * librdkafka resumes the call where it was when it timed out, so the
 * producer is kept; until produce_timeout has gone by since it was made,
 * a try that times out is not a failure (a cluster that is slow to
 * answer), only a try again soon, and after, a failure with its backoff.
 */
#define PE_RELAY_INIT_SLICE_MS 500

static bool
pe_relay_init_transactions(PeRelayConn *c)
{
	rd_kafka_error_t *error = rd_kafka_init_transactions(c->rk, Min(pe_produce_timeout_ms, PE_RELAY_INIT_SLICE_MS));

	if (error == NULL)
	{
		c->txn_ready = true;
		pe_relay_checkpoint_topic(c);
		return true;
	}
	pe_relay_poll(c, 0);		/* (the client's log lines meanwhile) */
	if (rd_kafka_error_is_retriable(error) && !rd_kafka_error_is_fatal(error))
	{
		if (pe_ms_since(c->made_at) < pe_produce_timeout_ms)
		{
			rd_kafka_error_destroy(error);
			c->retry_at = GetCurrentTimestamp() + 100 * 1000;
			return false;
		}
		return pe_relay_kafka_failed(c, "could not initialise transactions", error);
	}
	pe_relay_kafka_failed(c, "could not initialise transactions", error);
	pe_relay_drop_producer(c);
	return false;
}

/*
 * The connection's transactional producer, made and initialised
 * (pe_relay_init_transactions).  In a transaction: reads the catalog.
 */
bool
pe_relay_producer(PeRelayConn *c)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	char		errstr[512];
	MemoryContext old;
	MemoryContext back;

	back = CurrentMemoryContext;
	pe_xact_begin();
	conn = pe_connection_lookup(c->name, true);
	c->gone = (conn == NULL);

	/*
	 * The producer stays while its connection does: one dropped since (or
	 * dropped and created again, with other brokers, credentials or owner)
	 * is looked up at each round, not used as it was.
	 */
	if (c->rk && !c->fatal && conn && c->fingerprint && strcmp(c->fingerprint, pe_fingerprint(conn)) == 0)
	{
		pe_xact_commit();
		MemoryContextSwitchTo(back);
		return c->txn_ready || pe_relay_init_transactions(c);
	}
	pe_relay_drop_producer(c);
	if (conn == NULL)
	{
		pe_xact_commit();
		MemoryContextSwitchTo(back);
		return false;			/* the caller dead-letters the rows */
	}
	forced = lappend(forced, pe_property("transactional.id", c->txn_id, "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.idempotence", "true", "pipeline_ext"));
	forced = lappend(forced, pe_property("acks", "all", "pipeline_ext"));
	conf = pe_kafka_conf(conn, pe_producer_default_props(), forced);
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (c->fingerprint)
		pfree(c->fingerprint);
	c->fingerprint = pe_fingerprint(conn);
	list_free_deep(c->secrets);
	c->secrets = NIL;
	{
		ListCell   *lc;

		foreach(lc, pe_connection_secrets(conn))
			c->secrets = lappend(c->secrets, pstrdup(lfirst(lc)));
	}
	MemoryContextSwitchTo(old);
	pe_xact_commit();
	MemoryContextSwitchTo(back);

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
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		pe_relay_note_error(c, "could not create a producer: %s", errstr);
		return false;
	}
	rd_kafka_set_log_queue(c->rk, NULL);
	c->txn_ready = false;
	c->made_at = GetCurrentTimestamp();
	return pe_relay_init_transactions(c);
}

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

/*
 * The refusals among the round's delivery reports.  A broker judges size
 * by the record batch: one over the topic's max.message.bytes (smaller
 * than the producer's message.max.bytes) fails every message in it,
 * however small each is.  So a message refused for its size is first sent
 * again alone; refused alone, it is too large for good.  Either way the
 * round goes again at once (*again).
 */
static void
pe_relay_judge_reports(PeOutMsg *msgs, int n, bool *again)
{
	for (int i = 0; i < n; i++)
	{
		PeOutMsg   *m = &msgs[i];

		if (m->dead || !m->reported || !pe_relay_refusal(m->err))
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && !m->alone)
			m->alone = true;
		else
			m->dead = psprintf("%s", rd_kafka_err2str(m->err));
		m->reported = false;	/* judged once: the next report is of a new try */
		*again = true;
	}
}

/*
 * Wait for what is queued to be acknowledged, and judge the refusals
 * among the reports.  False when the transaction cannot go on: nothing
 * acknowledged in time, or a refusal (which puts it in error).
 */
static bool
pe_relay_settle_queue(PeRelayConn *c, PeOutMsg *msgs, int n, bool *judged)
{
	if (rd_kafka_flush(c->rk, pe_produce_timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	pe_relay_judge_reports(msgs, n, judged);
	return !*judged;
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
	rd_kafka_headers_t *hdrs = m->headers ? pe_build_headers(m->headers) : rd_kafka_headers_new(1);
	char		id[32];

	snprintf(id, sizeof(id), INT64_FORMAT, m->id);
	rd_kafka_header_add(hdrs, PE_OUTBOX_ID_HEADER, -1, id, -1);
	return hdrs;
}

/*
 * Refusals known before sending: a topic the cluster does not have, or a
 * partition past its count, from the metadata (asked once a round for
 * each topic named with a partition, or unknown so far).  Caught here,
 * they cost no aborted transaction.  A failed look-up checks nothing: the
 * delivery reports still tell.
 */
static void
pe_relay_check_partitions(PeRelayConn *c, PeOutMsg *msgs, int n, bool *refused)
{
	List	   *seen = NIL;		/* topics looked up this round, and their counts */
	List	   *counts = NIL;

	for (int i = 0; i < n; i++)
	{
		PeOutMsg   *m = &msgs[i];
		int			count = -1;
		ListCell   *lc;
		bool		known = false;

		if (m->dead)
			continue;
		foreach(lc, seen)
			if (strcmp(lfirst(lc), m->topic) == 0)
			{
				count = list_nth_int(counts, foreach_current_index(lc));
				known = true;
			}
		if (!known)
		{
			rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->rk, m->topic, NULL);
			const struct rd_kafka_metadata *md = NULL;

			if (rkt && rd_kafka_metadata(c->rk, 0, rkt, &md, pe_produce_timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR &&
				md->topic_cnt == 1)
			{
				if (md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
					count = 0;
				else if (md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
					count = md->topics[0].partition_cnt;
			}
			if (md)
				rd_kafka_metadata_destroy(md);
			if (rkt)
				rd_kafka_topic_destroy(rkt);
			seen = lappend(seen, m->topic);
			counts = lappend_int(counts, count);
		}
		if (count == 0)
			m->dead = psprintf("topic \"%s\" does not exist", m->topic);
		else if (count > 0 && m->partition != RD_KAFKA_PARTITION_UA && m->partition >= count)
			m->dead = psprintf("partition %d does not exist in topic \"%s\" (%d partitions)",
							   m->partition, m->topic, count);
		if (m->dead)
			*refused = true;
	}
}

/*
 * Step 2: the round in one Kafka transaction, with its checkpoint.
 * Returns true when it committed; false after a failure (noted, rows
 * kept) or with *refused set after refusals (buried, or to be sent alone:
 * the caller sends the round again at once).
 */
bool
pe_relay_send(PeRelayConn *c, int64 round, PeOutMsg *msgs, int n, bool first_try, bool *refused)
{
	rd_kafka_error_t *error;
	rd_kafka_resp_err_t err;
	char		rv[64];		/* "round fingerprint" */
	int			queued = 0;
	bool		judged = false; /* refusals in delivery reports: the transaction failed */

	*refused = false;
	round_msgs = msgs;
	round_n = n;
	round_try++;
	pe_relay_check_partitions(c, msgs, n, refused);
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
		/* one refused with others for its size: in a batch of its own */
		if (m->alone && !pe_relay_settle_queue(c, msgs, n, &judged))
			break;				/* judged below */
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
									RD_KAFKA_V_OPAQUE(PE_DR_OPAQUE(round_try, i)),
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
			if (m->alone && !pe_relay_settle_queue(c, msgs, n, &judged))
				break;			/* judged below */
			continue;
		}
		rd_kafka_headers_destroy(hdrs);
		if (pe_relay_refusal(err))
		{
			m->dead = psprintf("%s", rd_kafka_err2str(err));
			*refused = true;
			continue;
		}

		/*
		 * A refusal reported meanwhile puts the transaction in error, and
		 * a message queued after it fails (_STATE): judge it, and go again
		 * at once without it.
		 */
		pe_relay_poll(c, 0);
		pe_relay_judge_reports(msgs, n, &judged);
		if (judged)
			break;
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
	pe_relay_judge_reports(msgs, n, &judged);
	if (judged)
		*refused = true;	/* again at once */
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR || rd_kafka_fatal_error(c->rk, NULL, 0) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		pe_relay_delivery_failed(msgs, n) || judged)
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

	/*
	 * (The tests' crash before the commit comes before the checkpoint is
	 * queued: the test broker writes no transaction markers, so a queued
	 * checkpoint that its broker thread sent before the crash would read
	 * as committed there, and not on a real broker.)
	 */
	pe_relay_crash_point("before_commit", round, first_try);

	/* the checkpoint: this round went out if, and only if, this did */
	snprintf(rv, sizeof(rv), INT64_FORMAT " %" INT64_MODIFIER "x", round, pe_relay_fingerprint(msgs, n));
	err = rd_kafka_producev(c->rk,
							RD_KAFKA_V_TOPIC(pe_outbox_checkpoint_topic),
							RD_KAFKA_V_PARTITION(0),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_VALUE(rv, strlen(rv)),
							RD_KAFKA_V_KEY(c->txn_id, strlen(c->txn_id)),
							RD_KAFKA_V_OPAQUE(PE_DR_OPAQUE(round_try, 0xFFFFFFFF)),
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

	error = rd_kafka_commit_transaction(c->rk, pe_produce_timeout_ms);
	pe_relay_poll(c, 0);
	if (error == NULL)
	{
		pe_relay_crash_point("after_commit", round, first_try);
		return true;
	}

	/* what the broker refused for good becomes a dead letter */
	pe_relay_judge_reports(msgs, n, refused);
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

/* The round is over: the delivery callback has nothing to write to. */
void
pe_relay_forget_round(void)
{
	round_msgs = NULL;
	round_n = 0;
}

/*-------------------------------------------------------------------------
 *
 * relay_kafka.c
 *	  The outbox relay's Kafka side (relay.c has the rest): each connection's
 *	  transactional producer, a round sent in one Kafka transaction with its
 *	  checkpoint, refusals told apart from failures, and reading back the
 *	  last committed checkpoint after a restart.
 *
 * IDENTIFICATION
 *	  src/relay_kafka.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
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

char	   *pe_outbox_checkpoint_topic = NULL;
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
bool
pe_relay_producer(PeRelayConn *c)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	char		errstr[512];
	rd_kafka_error_t *error;
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
		return true;
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
 * A consumer of the checkpoint topic at this isolation level; NULL (the
 * error noted) when it cannot be made.  assign() needs a group: this one
 * never joins nor commits.
 */
static rd_kafka_t *
pe_relay_checkpoint_reader(PeRelayConn *c, const char *isolation)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	rd_kafka_t *rk;
	char		errstr[512];
	MemoryContext back = CurrentMemoryContext;

	pe_xact_begin();
	conn = pe_connection_lookup(c->name, false);
	forced = lappend(forced, pe_property("isolation.level", isolation, "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.auto.commit", "false", "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.partition.eof", "true", "pipeline_ext"));
	forced = lappend(forced, pe_property("group.id", psprintf("%s-checkpoint", c->txn_id), "pipeline_ext"));
	conf = pe_kafka_conf(conn, list_make1(pe_property("client.id", "pipeline_ext", "pipeline_ext")), forced);
	pe_xact_commit();
	MemoryContextSwitchTo(back);
	rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		pe_relay_note_error(c, "could not create a consumer for the checkpoint topic: %s", errstr);
	}
	return rk;
}

/*
 * The round's fingerprint: a hash of its message ids (those still in it,
 * whatever their order), written with its checkpoint.  A round number alone can
 * come again (a restore to a point in time, an asynchronous failover:
 * the database's count goes back, the checkpoint topic's does not); the
 * same number with the same ids is the same round.
 */
uint64
pe_relay_fingerprint(const PeOutMsg *msgs, int n)
{
	uint64		fp = 0;

	/* a sum of the ids' hashes: the same whatever the order they are in */
	for (int i = 0; i < n; i++)
		if (msgs[i].dead == NULL)
			fp += hash_bytes_extended((const unsigned char *) &msgs[i].id, sizeof(int64), 0) + 1;
	return fp;
}

/*
 * The last checkpoint this relay committed through the connection (the
 * newest by offset), from the checkpoint topic (read_committed: an aborted
 * round's checkpoint is not seen): its round, and *fp its fingerprint
 * (*has_fp false for a checkpoint written before fingerprints).  -1 if
 * none; -2 if it could not be read.
 */
int64
pe_relay_committed_round(PeRelayConn *c, uint64 *fp, bool *has_fp)
{
	rd_kafka_t *rk;
	rd_kafka_t *plain;
	int64		low,
				high,
				stable,
				found = -1;
	int64		window = 1000;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_partition_list_t *parts;
	size_t		idlen = strlen(c->txn_id);
	TimestampTz wait_until;

	if ((rk = pe_relay_checkpoint_reader(c, "read_committed")) == NULL)
		return -2;
	if ((plain = pe_relay_checkpoint_reader(c, "read_uncommitted")) == NULL)
	{
		rd_kafka_destroy(rk);
		return -2;
	}

	/*
	 * Every checkpoint this relay committed lies below the log's end as it
	 * is now.  A read_committed reader stops at the last stable offset,
	 * which an open transaction of another database's relay (sharing the
	 * topic) holds back: wait until it has passed the end, or a checkpoint
	 * behind it would be missed and a committed round sent again.
	 */
	err = rd_kafka_query_watermark_offsets(plain, pe_outbox_checkpoint_topic, 0, &low, &high,
										   pe_produce_timeout_ms);
	rd_kafka_destroy(plain);
	wait_until = GetCurrentTimestamp() + (int64) pe_produce_timeout_ms * 1000;
	while (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		err = rd_kafka_query_watermark_offsets(rk, pe_outbox_checkpoint_topic, 0, &low, &stable,
											   pe_produce_timeout_ms);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR || stable >= high)
			break;
		if (GetCurrentTimestamp() > wait_until)
		{
			rd_kafka_destroy(rk);
			pe_relay_note_error(c, "checkpoint topic \"%s\" has a transaction open at offset " INT64_FORMAT
								" (its end is " INT64_FORMAT "): waiting for it to end before reading the checkpoint",
								pe_outbox_checkpoint_topic, stable, high);
			return -2;
		}
		CHECK_FOR_INTERRUPTS();
		pg_usleep(100 * 1000L);
	}
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
				char	   *rest;

				/* "round" or "round fingerprint"; offsets rise within a window */
				found = strtoll(v, &rest, 10);
				*has_fp = (*rest == ' ');
				*fp = *has_fp ? strtoull(rest + 1, NULL, 16) : 0;
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

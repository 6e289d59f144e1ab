/*-------------------------------------------------------------------------
 *
 * producer.c
 *	  Each backend's librdkafka producers: one per connection it used,
 *	  created on first use and reused until the connection's catalog row
 *	  changes (create/drop send a relcache invalidation for the catalog
 *	  table, which marks every cached producer for a re-check) or until
 *	  pipeline_ext.produce_timeout changes; their topics and partition
 *	  counts; and the callbacks.
 *
 *	  librdkafka callbacks (delivery reports, errors, logs) are served only
 *	  from rd_kafka_poll() on this backend's own thread (logs through
 *	  log.queue), so they run between our statements; they still neither
 *	  palloc nor ereport: they fill fixed fields and a small log ring that
 *	  the poll wrapper drains.
 *
 *	  Delivery reports are matched by message id, never by pointer: a report
 *	  for a message whose wait was cancelled, or whose transaction aborted,
 *	  arrives with an id nobody waits for any more and is only counted.
 *
 * IDENTIFICATION
 *	  src/producer.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "kafka.h"
#include "producer.h"
#include "shmem.h"

HTAB	   *pe_producers = NULL;

uint64		pe_next_msg_id = 1;

static bool callbacks_registered = false;

/*
 * Send times of this backend's messages, by message sequence number, for
 * the delivery latency histogram: a ring; a report whose entry was reused
 * by a newer message (more than PE_SENT_RING messages in flight) is not
 * timed.
 */
#define PE_SENT_RING 65536

typedef struct PeSent
{
	uint64		seq;
	TimestampTz at;
} PeSent;

static PeSent *sent_ring = NULL;

void
pe_note_sent(uint64 seq)
{
	if (sent_ring == NULL)
		sent_ring = MemoryContextAllocZero(TopMemoryContext, sizeof(PeSent) * PE_SENT_RING);
	sent_ring[seq % PE_SENT_RING].seq = seq;
	sent_ring[seq % PE_SENT_RING].at = GetCurrentTimestamp();
}

/* Microseconds from the produce call to the report, or -1 if unknown. */
static int64
pe_delivery_latency_us(uint64 id)
{
	uint64		seq = id >> 1;
	PeSent	   *e;

	if (sent_ring == NULL)
		return -1;
	e = &sent_ring[seq % PE_SENT_RING];
	if (e->seq != seq || e->at == 0)
		return -1;
	return GetCurrentTimestamp() - e->at;
}

static void
pe_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	PeProducer *p = (PeProducer *) opaque;
	uint64		id = (uint64) (uintptr_t) msg->_private;

	(void) rk;

	/* a broker took a message: whatever refused the credentials before is over */
	if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		p->auth_failed = false;

	if (pe_shared)
	{
		if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			int64		us = pe_delivery_latency_us(id);

			pg_atomic_fetch_add_u64(&pe_shared->produced_messages, 1);
			pg_atomic_fetch_add_u64(&pe_shared->produced_bytes, msg->len + msg->key_len);
			if (us >= 0)
				pe_hist_add(&pe_shared->produce_latency, us);
		}
		else if (!(MSG_IS_ASYNC(id) && id < p->failures_counted_below))
			pg_atomic_fetch_add_u64(&pe_shared->produce_failures, 1);
	}

	if (id == p->sync_wait_id && id != 0)
	{
		p->sync_done = true;
		p->sync_err = msg->err;
		p->sync_partition = msg->partition;
		p->sync_offset = msg->offset;
	}
	else if (MSG_IS_ASYNC(id) && id >= p->xact_first_id)
	{
		p->async_pending--;
		if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			if (p->async_failed == 0)
				p->async_first_err = msg->err;
			p->async_failed++;
		}
	}
}

static void
pe_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	PeProducer *p = (PeProducer *) opaque;

	(void) rk;
	pe_redact_into(p->last_error, sizeof(p->last_error), reason, p->secrets);
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		p->fatal = true;
	if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION)
		p->auth_failed = true;
}

/*
 * A broker refused the connection's credentials: that is the answer, and
 * waiting for the timeout would only hide it behind "could not reach".
 * Called by the waits after they served callbacks.
 */
void
pe_producer_check_auth(PeProducer *p)
{
	if (p->auth_failed)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("authentication failed for connection \"%s\"", p->name),
				 errdetail("The broker said: %s", pe_last_error(p)),
				 errhint("Check the connection's credentials (sasl.username and sasl.password, "
						 "or the Event Hubs connection string), then create the connection again.")));
}

/* Serve callbacks for up to timeout_ms, then write queued log lines. */
void
pe_poll(PeProducer *p, int timeout_ms)
{
	rd_kafka_poll(p->rk, timeout_ms);
	if (pe_log_pending(p->rk))
		pe_log_drain(p->rk, psprintf("producer for connection \"%s\"", p->name), p->secrets);
}

List *
pe_producer_default_props(void)
{
	static const char *const defaults[][2] = {
		{"client.id", "pipeline_ext"},
		{"acks", "all"},
		/* Java's default partitioner for keyed messages */
		{"partitioner", "murmur2_random"},
		/* a misspelt topic is an error, not a new topic */
		{"allow.auto.create.topics", "false"},
	};
	List	   *props = NIL;

	for (int i = 0; i < (int) lengthof(defaults); i++)
	{
		PeProperty *p = palloc(sizeof(PeProperty));

		p->name = (char *) defaults[i][0];
		p->value = (char *) defaults[i][1];
		p->source = "pipeline_ext";
		props = lappend(props, p);
	}
	{
		PeProperty *p = palloc(sizeof(PeProperty));

		p->name = "message.timeout.ms";
		p->value = psprintf("%d", pe_produce_timeout_ms);
		p->source = "pipeline_ext";
		props = lappend(props, p);
	}
	return props;
}

char *
pe_fingerprint(PeConnection *conn)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%u;", conn->owner);
	foreach(lc, conn->props)
	{
		PeProperty *prop = lfirst(lc);

		appendStringInfo(&buf, "%s=%s;", prop->name, prop->value);
	}
	return buf.data;
}

static void
pe_producer_destroy(PeProducer *p)
{
	ListCell   *lc;

	if (p->rk)
	{
		/* Nothing waits for these any more; do not block on them. */
		rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
					   RD_KAFKA_PURGE_F_NON_BLOCKING);
		foreach(lc, p->topics)
			rd_kafka_topic_destroy(((PeTopic *) lfirst(lc))->rkt);
		rd_kafka_destroy(p->rk);
	}
	p->rk = NULL;
	p->topics = NIL;
	p->secrets = NIL;
	p->fingerprint = NULL;
}

static void
pe_relcache_cb(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	PeProducer *p;

	(void) arg;
	(void) relid;
	if (pe_producers == NULL)
		return;
	/* Any relation: we do not keep the catalog's OID across DROP EXTENSION. */
	hash_seq_init(&seq, pe_producers);
	while ((p = hash_seq_search(&seq)) != NULL)
		p->stale = true;
}

static void
pe_producer_create(PeProducer *p, PeConnection *conn)
{
	rd_kafka_conf_t *conf = pe_kafka_conf(conn, pe_producer_default_props(), NIL);
	char		errstr[512];
	ListCell   *lc;
	MemoryContext old;

	if (rd_kafka_conf_set(conf, "log.queue", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		elog(ERROR, "could not set log.queue: %s", errstr);
	rd_kafka_conf_set_opaque(conf, p);
	rd_kafka_conf_set_dr_msg_cb(conf, pe_dr_cb);
	rd_kafka_conf_set_error_cb(conf, pe_error_cb);
	rd_kafka_conf_set_log_cb(conf, pe_log_cb);

	p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (p->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka producer for connection \"%s\"", conn->name),
				 errdetail("%s", pe_redact(errstr, pe_connection_secrets(conn))),
				 errhint("Check the connection's options with pipeline.connection_config().")));
	}
	rd_kafka_set_log_queue(p->rk, NULL);
	ereport(DEBUG1,
			(errmsg_internal("pipeline_ext: created producer for connection \"%s\"", conn->name)));

	old = MemoryContextSwitchTo(TopMemoryContext);
	p->fingerprint = pe_fingerprint(conn);
	p->secrets = NIL;
	foreach(lc, pe_connection_secrets(conn))
		p->secrets = lappend(p->secrets, pstrdup(lfirst(lc)));
	MemoryContextSwitchTo(old);

	p->owner = conn->owner;
	p->timeout_ms = pe_produce_timeout_ms;
	p->stale = false;
	p->fatal = false;
	p->auth_failed = false;
	p->topics = NIL;
	p->sync_wait_id = 0;
	p->xact_first_id = pe_next_msg_id << 1;
	p->async_sent = p->async_pending = p->async_failed = 0;
	p->last_error[0] = '\0';
}

/*
 * The cached producer for a connection, (re)made when needed, after
 * checking that the current role may use the connection.
 */
PeProducer *
pe_get_producer(const char *name)
{
	PeProducer *p;
	bool		found;

	if (!callbacks_registered)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(PeProducer);
		pe_producers = hash_create("pipeline_ext producers", 8, &ctl, HASH_ELEM | HASH_STRINGS);
		CacheRegisterRelcacheCallback(pe_relcache_cb, (Datum) 0);
		RegisterXactCallback(pe_xact_cb, NULL);
		callbacks_registered = true;
	}

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connection \"%s\" does not exist", name)));

	p = hash_search(pe_producers, name, HASH_ENTER, &found);
	if (!found)
	{
		memset(((char *) p) + NAMEDATALEN, 0, sizeof(PeProducer) - NAMEDATALEN);
		p->stale = true;
	}

	/* Re-check against the catalog; keep the producer if nothing changed. */
	if (p->stale || p->fatal || p->rk == NULL || p->timeout_ms != pe_produce_timeout_ms)
	{
		PeConnection *conn = pe_connection_lookup(name, true);

		if (conn == NULL)
		{
			if (p->async_pending == 0)
			{
				pe_producer_destroy(p);
				hash_search(pe_producers, name, HASH_REMOVE, NULL);
			}
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("connection \"%s\" does not exist", name),
					 errhint("Create it with pipeline.create_connection(); pipeline.connections lists the existing ones.")));
		}
		pe_check_connection_use(conn);

		if (p->rk != NULL && !p->fatal && p->timeout_ms == pe_produce_timeout_ms &&
			strcmp(p->fingerprint, pe_fingerprint(conn)) == 0)
			p->stale = false;
		else if (p->rk != NULL && p->async_pending > 0)
		{
			/* changed under an open transaction: switch after it ends */
		}
		else
		{
			pe_producer_destroy(p);
			pe_producer_create(p, conn);
		}
		return p;
	}

	if (!superuser() && !has_privs_of_role(GetUserId(), p->owner))
	{
		PeConnection *conn = pe_connection_lookup(name, false);

		pe_check_connection_use(conn);
	}
	return p;
}

TimestampTz
pe_deadline(int ms)
{
	return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
}

bool
pe_past(TimestampTz deadline)
{
	return GetCurrentTimestamp() >= deadline;
}

const char *
pe_last_error(PeProducer *p)
{
	if (p->last_error[0] == '\0')
		return "none";
	return pe_redact(p->last_error, p->secrets);
}

/* Topic handle and partition count, looked up once per producer. */
PeTopic *
pe_get_topic(PeProducer *p, const char *topic, bool refresh)
{
	ListCell   *lc;
	PeTopic    *t = NULL;
	TimestampTz deadline;
	int			slice = 200;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;

	foreach(lc, p->topics)
	{
		if (strcmp(((PeTopic *) lfirst(lc))->name, topic) == 0)
		{
			t = lfirst(lc);
			/* only a topic the cluster confirmed is taken from the cache */
			if (!refresh && t->partition_cnt > 0)
				return t;
			break;
		}
	}

	if (t == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		t = palloc0(sizeof(PeTopic));
		t->name = pstrdup(topic);
		t->rkt = rd_kafka_topic_new(p->rk, topic, NULL);
		if (t->rkt == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid topic name \"%s\"", topic),
					 errdetail("%s", rd_kafka_err2str(rd_kafka_last_error()))));
		p->topics = lappend(p->topics, t);
		MemoryContextSwitchTo(old);
	}

	/* Ask the cluster, in short slices so that a cancel is seen. */
	deadline = pe_deadline(p->timeout_ms);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		/*
		 * Slices grow from 200 ms to 2 s, so that a broker slower than a
		 * slice still answers one of them, and a cancel is seen within 2 s.
		 */
		err = rd_kafka_metadata(p->rk, 0, t->rkt, &md, slice);
		slice = Min(slice * 2, 2000);
		pe_poll(p, 0);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			p->auth_failed = false; /* a broker answered: the credentials passed */
		else
			pe_producer_check_auth(p);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR || pe_past(deadline))
			break;
		if (err != RD_KAFKA_RESP_ERR__TIMED_OUT && err != RD_KAFKA_RESP_ERR__TRANSPORT)
			break;
	}

	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		t->partition_cnt = 0;
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not reach the brokers of connection \"%s\" within %d ms",
						p->name, p->timeout_ms),
				 errdetail("librdkafka: %s; last broker error: %s",
						   rd_kafka_err2str(err), pe_last_error(p)),
				 errhint("Check that the brokers in bootstrap_servers are up and reachable; "
						 "pipeline_ext.produce_timeout sets how long to wait.")));
	}

	for (int i = 0; i < md->topic_cnt; i++)
	{
		const rd_kafka_metadata_topic_t *mt = &md->topics[i];

		if (strcmp(mt->topic, topic) != 0)
			continue;
		if (mt->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
			(mt->err == RD_KAFKA_RESP_ERR_NO_ERROR && mt->partition_cnt == 0))
		{
			rd_kafka_metadata_destroy(md);
			t->partition_cnt = 0;
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("topic \"%s\" does not exist on connection \"%s\"", topic, p->name),
					 errhint("Create the topic on the cluster first, or check its spelling.")));
		}
		if (mt->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_resp_err_t terr = mt->err;

			rd_kafka_metadata_destroy(md);
			t->partition_cnt = 0;
			ereport(ERROR,
					(errcode(terr == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ?
							 ERRCODE_INSUFFICIENT_PRIVILEGE : ERRCODE_CONNECTION_FAILURE),
					 errmsg("cannot produce to topic \"%s\" on connection \"%s\"", topic, p->name),
					 errdetail("The broker answered: %s.", rd_kafka_err2str(terr)),
					 errhint("Check the topic's state and the credentials' permissions on the cluster.")));
		}
		t->partition_cnt = mt->partition_cnt;
	}
	rd_kafka_metadata_destroy(md);
	return t;
}

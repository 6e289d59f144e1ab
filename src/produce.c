/*-------------------------------------------------------------------------
 *
 * produce.c
 *	  Producing from SQL: pipeline.produce() and pipeline.produce_async().
 *
 *	  Each backend keeps one librdkafka producer per connection it used,
 *	  created on first use and reused until the connection's catalog row
 *	  changes (create/drop send a relcache invalidation for the catalog
 *	  table, which marks every cached producer for a re-check) or until
 *	  pipeline_ext.produce_timeout changes.
 *
 *	  produce() waits for the broker's acknowledgement of its one message.
 *	  produce_async() only queues; the transaction's pre-commit callback
 *	  waits until every message queued by the transaction is acknowledged
 *	  and fails the commit if any was not.  All waits poll librdkafka in
 *	  slices of at most PE_POLL_SLICE_MS, checking for interrupts between
 *	  slices, and are bounded by pipeline_ext.produce_timeout.
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
 *	  src/produce.c
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

#include "pipeline_ext.h"

#define PE_POLL_SLICE_MS 50

/*
 * message.timeout.ms makes librdkafka fail a message with its reason, but it
 * scans for timed-out messages only about once a second: our own deadline
 * waits this much longer so that the report, with its reason, comes first.
 */
#define PE_DR_MARGIN_MS 3000
#define PE_LOG_RING 32
#define PE_LOG_LEN 512

typedef struct PeTopic
{
	char	   *name;
	rd_kafka_topic_t *rkt;
	int			partition_cnt;
} PeTopic;

typedef struct PeProducer
{
	char		name[NAMEDATALEN];	/* hash key: connection name */
	bool		stale;			/* catalog may have changed: re-check */
	bool		fatal;			/* librdkafka raised a fatal error */
	Oid			owner;
	int			timeout_ms;		/* pipeline_ext.produce_timeout when made */
	char	   *fingerprint;	/* effective properties, to spot changes */
	List	   *secrets;		/* values to redact from its messages */
	rd_kafka_t *rk;
	List	   *topics;			/* PeTopic, TopMemoryContext */

	/* the one synchronous produce() waiting, if any */
	uint64		sync_wait_id;
	bool		sync_done;
	rd_kafka_resp_err_t sync_err;
	int32		sync_partition;
	int64		sync_offset;

	/* produce_async() bookkeeping for the current transaction */
	uint64		xact_first_id;	/* reports for older ids are ignored */
	int64		async_sent;
	int64		async_pending;
	int64		async_failed;
	rd_kafka_resp_err_t async_first_err;
	uint64		failures_counted_below;	/* async ids whose failure is counted */

	char		last_error[256];	/* last error callback text */
} PeProducer;

static HTAB *producers = NULL;
static uint64 next_msg_id = 1;
static bool callbacks_registered = false;

/* log lines queued by the log callback, drained after each poll */
static char log_ring[PE_LOG_RING][PE_LOG_LEN];
static int	log_ring_level[PE_LOG_RING];
static int	log_ring_count = 0;
static int	log_ring_dropped = 0;

PG_FUNCTION_INFO_V1(pe_produce);
PG_FUNCTION_INFO_V1(pe_produce_async);

List	   *pe_producer_default_props(void);

/* Message ids carry "is async" in their low bit. */
#define MSG_ID(seq, async)	(((seq) << 1) | ((async) ? 1 : 0))
#define MSG_IS_ASYNC(id)	(((id) & 1) != 0)

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

static void
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
	strlcpy(p->last_error, reason, sizeof(p->last_error));
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		p->fatal = true;
}

static void
pe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void) rk;
	if (log_ring_count >= PE_LOG_RING)
	{
		log_ring_dropped++;
		return;
	}
	snprintf(log_ring[log_ring_count], PE_LOG_LEN, "%s: %s", fac, buf);
	log_ring_level[log_ring_count] = level;
	log_ring_count++;
}

/* Serve callbacks for up to timeout_ms, then write queued log lines. */
static void
pe_poll(PeProducer *p, int timeout_ms)
{
	rd_kafka_poll(p->rk, timeout_ms);

	for (int i = 0; i < log_ring_count; i++)
	{
		char	   *line = pe_redact(log_ring[i], p->secrets);

		/* librdkafka uses syslog levels: 0-4 are errors and warnings */
		ereport(log_ring_level[i] <= 4 ? LOG : DEBUG1,
				(errmsg_internal("pipeline_ext producer for connection \"%s\": %s", p->name, line),
				 errhidestmt(true)));
		pfree(line);
	}
	if (log_ring_dropped > 0)
		ereport(DEBUG1,
				(errmsg_internal("pipeline_ext producer for connection \"%s\": %d log lines dropped",
								 p->name, log_ring_dropped)));
	log_ring_count = 0;
	log_ring_dropped = 0;
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

static char *
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
	if (producers == NULL)
		return;
	/* Any relation: we do not keep the catalog's OID across DROP EXTENSION. */
	hash_seq_init(&seq, producers);
	while ((p = hash_seq_search(&seq)) != NULL)
		p->stale = true;
}

static void pe_xact_cb(XactEvent event, void *arg);

static void
pe_producer_create(PeProducer *p, PeConnection *conn)
{
	rd_kafka_conf_t *conf = pe_kafka_conf(conn, pe_producer_default_props());
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
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka producer for connection \"%s\"", conn->name),
				 errdetail("%s", pe_redact(errstr, pe_connection_secrets(conn))),
				 errhint("Check the connection's options with pipeline.connection_config().")));
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
	p->topics = NIL;
	p->sync_wait_id = 0;
	p->xact_first_id = next_msg_id << 1;
	p->async_sent = p->async_pending = p->async_failed = 0;
	p->last_error[0] = '\0';
}

/*
 * The cached producer for a connection, (re)made when needed, after
 * checking that the current role may use the connection.
 */
static PeProducer *
pe_get_producer(const char *name)
{
	PeProducer *p;
	bool		found;

	if (!callbacks_registered)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(PeProducer);
		producers = hash_create("pipeline_ext producers", 8, &ctl, HASH_ELEM | HASH_STRINGS);
		CacheRegisterRelcacheCallback(pe_relcache_cb, (Datum) 0);
		RegisterXactCallback(pe_xact_cb, NULL);
		callbacks_registered = true;
	}

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connection \"%s\" does not exist", name)));

	p = hash_search(producers, name, HASH_ENTER, &found);
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
				hash_search(producers, name, HASH_REMOVE, NULL);
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

static TimestampTz
pe_deadline(int ms)
{
	return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
}

static bool
pe_past(TimestampTz deadline)
{
	return GetCurrentTimestamp() >= deadline;
}

static const char *
pe_last_error(PeProducer *p)
{
	if (p->last_error[0] == '\0')
		return "none";
	return pe_redact(p->last_error, p->secrets);
}

/* Topic handle and partition count, looked up once per producer. */
static PeTopic *
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
			if (!refresh)
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

/* Headers must be a jsonb object of string (or null) values. */
static void
pe_check_headers(Jsonb *jb)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object"),
				 errhint("Pass headers as an object of string values, for example '{\"source\": \"billing\"}'.")));

	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && v.type != jbvString && v.type != jbvNull)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header \"%s\" must be a string or null", key),
					 errhint("Kafka header values are bytes; write numbers and objects as strings.")));
	}
}

/* librdkafka headers from an object that pe_check_headers() accepted. */
static rd_kafka_headers_t *
pe_build_headers(Jsonb *jb)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(JB_ROOT_COUNT(jb));
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbValue	key = {0};

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = v;
		else if (tok == WJB_VALUE)
			rd_kafka_header_add(hdrs, key.val.string.val, key.val.string.len,
								v.type == jbvString ? v.val.string.val : NULL,
								v.type == jbvString ? v.val.string.len : 0);
	}
	return hdrs;
}

static void
pe_raise_delivery_error(PeProducer *p, rd_kafka_resp_err_t err, const char *topic, size_t len)
{
	if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message of %zu bytes to topic \"%s\" is larger than the limit", len, topic),
				 errdetail("librdkafka: %s.", rd_kafka_err2str(err)),
				 errhint("Raise message.max.bytes in the connection's options and the topic's "
						 "max.message.bytes on the cluster, or send smaller messages.")));
	if (err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("no acknowledgement from the brokers of connection \"%s\" within %d ms",
						p->name, p->timeout_ms),
				 errdetail("librdkafka: %s; last broker error: %s", rd_kafka_err2str(err), pe_last_error(p)),
				 errhint("Check that the brokers are up and reachable; pipeline_ext.produce_timeout sets how long to wait.")));
	if (err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("topic \"%s\" does not exist on connection \"%s\"", topic, p->name),
				 errhint("Create the topic on the cluster first, or check its spelling.")));
	if (err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition does not exist in topic \"%s\"", topic),
				 errhint("Use a partition number below the topic's partition count, or pass NULL.")));
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not produce to topic \"%s\" on connection \"%s\"", topic, p->name),
			 errdetail("librdkafka: %s; last broker error: %s", rd_kafka_err2str(err), pe_last_error(p)),
			 errhint("See the server log for the client's messages.")));
}

/*
 * Common path of produce() and produce_async(): check arguments, queue one
 * message.  Returns the message id.
 */
static uint64
pe_send(FunctionCallInfo fcinfo, bool async, PeProducer **pp, size_t *lenp)
{
	char	   *connname;
	char	   *topic;
	PeProducer *p;
	PeTopic    *t;
	const char *value = NULL;
	size_t		vlen = 0;
	const char *key = NULL;
	size_t		klen = 0;
	rd_kafka_headers_t *hdrs = NULL;
	int32		partition = RD_KAFKA_PARTITION_UA;
	uint64		id;
	rd_kafka_resp_err_t err;
	TimestampTz deadline = 0;

	pe_require_preload();

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection must not be null"),
				 errhint("Pass the name of a connection from pipeline.connections.")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null"),
				 errhint("Pass the name of an existing topic.")));
	connname = text_to_cstring(PG_GETARG_TEXT_PP(0));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be empty"),
				 errhint("Pass the name of an existing topic.")));
	if (!PG_ARGISNULL(5))
	{
		partition = PG_GETARG_INT32(5);
		if (partition < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("partition must not be negative"),
					 errhint("Pass NULL to let the key choose the partition.")));
	}

	/* value: text, bytea or jsonb (NULL is a tombstone) */
	if (!PG_ARGISNULL(2))
	{
		Oid			vtype = get_fn_expr_argtype(fcinfo->flinfo, 2);

		if (vtype == JSONBOID)
		{
			Jsonb	   *jb = PG_GETARG_JSONB_P(2);

			value = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
			vlen = strlen(value);
		}
		else
		{
			struct varlena *v = PG_GETARG_VARLENA_PP(2);

			value = VARDATA_ANY(v);
			vlen = VARSIZE_ANY_EXHDR(v);
		}
	}
	if (!PG_ARGISNULL(3))
	{
		text	   *k = PG_GETARG_TEXT_PP(3);

		key = VARDATA_ANY(k);
		klen = VARSIZE_ANY_EXHDR(k);
	}

	/* Every argument is checked before the first network round trip. */
	if (!PG_ARGISNULL(4))
		pe_check_headers(PG_GETARG_JSONB_P(4));

	p = pe_get_producer(connname);
	t = pe_get_topic(p, topic, false);
	if (partition != RD_KAFKA_PARTITION_UA && partition >= t->partition_cnt)
	{
		t = pe_get_topic(p, topic, true);	/* it may have grown */
		if (partition >= t->partition_cnt)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("partition %d does not exist in topic \"%s\"", partition, topic),
					 errdetail("The topic has %d partitions, numbered from 0.", t->partition_cnt),
					 errhint("Pass NULL to let the key choose the partition.")));
	}

	/* cannot fail now: the headers were checked above */
	if (!PG_ARGISNULL(4))
		hdrs = pe_build_headers(PG_GETARG_JSONB_P(4));

	id = MSG_ID(next_msg_id, async);
	pe_note_sent(next_msg_id);
	next_msg_id++;
	for (;;)
	{
		err = rd_kafka_producev(p->rk,
								RD_KAFKA_V_RKT(t->rkt),
								RD_KAFKA_V_PARTITION(partition),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_VALUE((void *) value, vlen),
								RD_KAFKA_V_KEY(key, klen),
								RD_KAFKA_V_HEADERS(hdrs),
								RD_KAFKA_V_OPAQUE((void *) (uintptr_t) id),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		/* The local queue is full: let deliveries drain it, within bounds. */
		if (deadline == 0)
			deadline = pe_deadline(p->timeout_ms);
		else if (pe_past(deadline))
			break;
		pe_poll(p, PE_POLL_SLICE_MS);
		CHECK_FOR_INTERRUPTS();
	}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (hdrs)
			rd_kafka_headers_destroy(hdrs);
		if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the producer queue of connection \"%s\" stayed full for %d ms",
							p->name, p->timeout_ms),
					 errdetail("Last broker error: %s", pe_last_error(p)),
					 errhint("Check that the brokers are reachable, or raise queue.buffering.max.messages in the connection's options.")));
		pe_raise_delivery_error(p, err, topic, vlen + klen);
	}

	if (async)
	{
		p->async_sent++;
		p->async_pending++;
		/* serve delivery reports now and then without waiting */
		if ((p->async_sent & 1023) == 0)
			pe_poll(p, 0);
	}
	*pp = p;
	*lenp = vlen + klen;
	return id;
}

Datum
pe_produce(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeProducer *p;
	size_t		len;
	uint64		id;
	TimestampTz deadline;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	char	   *topic;

	InitMaterializedSRF(fcinfo, 0);
	id = pe_send(fcinfo, false, &p, &len);
	topic = text_to_cstring(PG_GETARG_TEXT_PP(1));	/* not null: checked */

	p->sync_wait_id = id;
	p->sync_done = false;
	deadline = pe_deadline(p->timeout_ms + PE_DR_MARGIN_MS);
	PG_TRY();
	{
		while (!p->sync_done)
		{
			CHECK_FOR_INTERRUPTS();
			if (pe_past(deadline))
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("no acknowledgement from the brokers of connection \"%s\" within %d ms",
								p->name, p->timeout_ms),
						 errdetail("Last broker error: %s", pe_last_error(p)),
						 errhint("Check that the brokers are up and reachable; pipeline_ext.produce_timeout sets how long to wait.")));
			pe_poll(p, PE_POLL_SLICE_MS);
		}
	}
	PG_CATCH();
	{
		/*
		 * Cancelled or timed out: nobody waits for this message any more.
		 * Drop what is still queued locally (the transaction is aborting, so
		 * its produce_async() messages would fail the commit anyway).
		 */
		p->sync_wait_id = 0;
		if (p->rk)
			rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING);
		PG_RE_THROW();
	}
	PG_END_TRY();
	p->sync_wait_id = 0;

	if (p->sync_err != RD_KAFKA_RESP_ERR_NO_ERROR)
		pe_raise_delivery_error(p, p->sync_err, topic, len);

	values[0] = Int32GetDatum(p->sync_partition);
	values[1] = Int64GetDatum(p->sync_offset);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

Datum
pe_produce_async(PG_FUNCTION_ARGS)
{
	PeProducer *p;
	size_t		len;

	(void) pe_send(fcinfo, true, &p, &len);
	PG_RETURN_VOID();
}

/* Wait until every produce_async() message of this transaction is acked. */
static void
pe_confirm_async(void)
{
	HASH_SEQ_STATUS seq;
	PeProducer *p;

	hash_seq_init(&seq, producers);
	while ((p = hash_seq_search(&seq)) != NULL)
	{
		TimestampTz deadline;
		int64		sent = p->async_sent;

		if (p->rk == NULL || p->async_sent == 0)
			continue;

		deadline = pe_deadline(p->timeout_ms + PE_DR_MARGIN_MS);
		rd_kafka_flush(p->rk, 0);	/* send what linger.ms still holds */
		while (p->async_pending > 0)
		{
			CHECK_FOR_INTERRUPTS();
			if (pe_past(deadline))
			{
				/* they failed the commit: count them now, not again later */
				if (pe_shared)
					pg_atomic_fetch_add_u64(&pe_shared->produce_failures, p->async_pending);
				p->failures_counted_below = next_msg_id << 1;
				hash_seq_term(&seq);
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("%lld of %lld messages produced in this transaction were not acknowledged within %d ms",
								(long long) p->async_pending, (long long) sent, p->timeout_ms),
						 errdetail("Connection \"%s\"; last broker error: %s", p->name, pe_last_error(p)),
						 errhint("The transaction was rolled back; the messages may still arrive. "
								 "Check that the brokers are reachable.")));
			}
			pe_poll(p, PE_POLL_SLICE_MS);
		}
		if (p->async_failed > 0)
		{
			int64		failed = p->async_failed;
			rd_kafka_resp_err_t first = p->async_first_err;

			hash_seq_term(&seq);
			ereport(ERROR,
					(errcode(first == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ?
							 ERRCODE_PROGRAM_LIMIT_EXCEEDED : ERRCODE_CONNECTION_FAILURE),
					 errmsg("%lld of %lld messages produced in this transaction could not be delivered",
							(long long) failed, (long long) sent),
					 errdetail("Connection \"%s\"; first failure: %s; last broker error: %s",
							   p->name, rd_kafka_err2str(first), pe_last_error(p)),
					 errhint("The transaction was rolled back; the messages that were delivered stay in the topic.")));
		}
		p->async_sent = 0;
		p->xact_first_id = next_msg_id << 1;
	}
}

static void
pe_xact_cb(XactEvent event, void *arg)
{
	HASH_SEQ_STATUS seq;
	PeProducer *p;

	(void) arg;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			pe_confirm_async();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* Forget this transaction's messages; unsent ones are dropped. */
			hash_seq_init(&seq, producers);
			while ((p = hash_seq_search(&seq)) != NULL)
			{
				if (p->rk && p->async_pending > 0)
					rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING);
				p->async_sent = p->async_pending = p->async_failed = 0;
				p->sync_wait_id = 0;
				p->xact_first_id = next_msg_id << 1;
			}
			break;
		default:
			break;
	}
}

void
pe_produce_init(void)
{
	/* callbacks are registered on first use, in the backend that uses them */
}

/*-------------------------------------------------------------------------
 *
 * produce.c
 *	  Producing from SQL: pipeline.produce() and pipeline.produce_async(),
 *	  through the backend's cached producers (producer.c).
 *
 *	  produce() waits for the broker's acknowledgement of its one message.
 *	  produce_async() only queues; the transaction's pre-commit callback
 *	  waits until every message queued by the transaction is acknowledged
 *	  and fails the commit if any was not.  All waits poll librdkafka in
 *	  slices of at most PE_POLL_SLICE_MS, checking for interrupts between
 *	  slices, and are bounded by pipeline_ext.produce_timeout.
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

#include "connection.h"
#include "kafka.h"
#include "producer.h"
#include "relay.h"
#include "shmem.h"

/*
 * message.timeout.ms makes librdkafka fail a message with its reason, but it
 * scans for timed-out messages only about once a second: our own deadline
 * waits this much longer so that the report, with its reason, comes first.
 */
#define PE_DR_MARGIN_MS 3000

PG_FUNCTION_INFO_V1(pe_produce);

PG_FUNCTION_INFO_V1(pe_produce_async);

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
rd_kafka_headers_t *
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
 * The outbox relays' own topic is refused: a message there could pass for
 * a relay's checkpoint, and a relay restarted after a crash would then
 * take a round that never went out for sent.
 */
void
pe_refuse_checkpoint_topic(const char *topic)
{
	if (pe_outbox_checkpoint_topic != NULL && strcmp(topic, pe_outbox_checkpoint_topic) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("topic \"%s\" is where the outbox relays keep their checkpoints", topic),
				 errhint("Send to another topic: only the relays write to pipeline_ext.outbox_checkpoint_topic.")));
}

/*
 * The arguments every function that sends a message takes: (connection,
 * topic, value text|bytea|jsonb, key, headers, partition), checked.  The
 * value and key point into the arguments; NULL value is a tombstone.
 */
void
pe_message_args(FunctionCallInfo fcinfo, PeMessageArgs *a)
{
	memset(a, 0, sizeof(*a));
	a->partition = RD_KAFKA_PARTITION_UA;
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
	a->connection = text_to_cstring(PG_GETARG_TEXT_PP(0));
	a->topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (a->topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be empty"),
				 errhint("Pass the name of an existing topic.")));
	pe_refuse_checkpoint_topic(a->topic);
	if (!PG_ARGISNULL(5))
	{
		a->partition = PG_GETARG_INT32(5);
		if (a->partition < 0)
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

			a->value = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
			a->value_len = strlen(a->value);
		}
		else
		{
			struct varlena *v = PG_GETARG_VARLENA_PP(2);

			a->value = VARDATA_ANY(v);
			a->value_len = VARSIZE_ANY_EXHDR(v);
		}
	}
	if (!PG_ARGISNULL(3))
	{
		text	   *k = PG_GETARG_TEXT_PP(3);

		a->key = VARDATA_ANY(k);
		a->key_len = VARSIZE_ANY_EXHDR(k);
	}
	if (!PG_ARGISNULL(4))
	{
		a->headers = PG_GETARG_JSONB_P(4);
		pe_check_headers(a->headers);
	}
}

/*
 * Common path of produce() and produce_async(): check arguments, queue one
 * message.  Returns the message id.
 */
static uint64
pe_send(FunctionCallInfo fcinfo, bool async, PeProducer **pp, size_t *lenp)
{
	PeMessageArgs a;
	const char *topic;
	const char *value;
	size_t		vlen;
	const char *key;
	size_t		klen;
	PeProducer *p;
	PeTopic    *t;
	rd_kafka_headers_t *hdrs = NULL;
	int32		partition;
	uint64		id;
	rd_kafka_resp_err_t err;
	TimestampTz deadline = 0;

	pe_require_preload();

	/* Every argument is checked before the first network round trip. */
	pe_message_args(fcinfo, &a);
	topic = a.topic;
	value = a.value;
	vlen = a.value_len;
	key = a.key;
	klen = a.key_len;
	partition = a.partition;

	p = pe_get_producer(a.connection);
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
	if (a.headers)
		hdrs = pe_build_headers(a.headers);

	id = MSG_ID(pe_next_msg_id, async);
	pe_note_sent(pe_next_msg_id);
	pe_next_msg_id++;
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
		pe_producer_check_auth(p);
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
			pe_producer_check_auth(p);
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

	hash_seq_init(&seq, pe_producers);
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
				p->failures_counted_below = pe_next_msg_id << 1;
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
			if (p->auth_failed)
			{
				hash_seq_term(&seq);
				pe_producer_check_auth(p);
			}
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
		p->xact_first_id = pe_next_msg_id << 1;
	}
}

void
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
			hash_seq_init(&seq, pe_producers);
			while ((p = hash_seq_search(&seq)) != NULL)
			{
				if (p->rk && p->async_pending > 0)
					rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING);
				p->async_sent = p->async_pending = p->async_failed = 0;
				p->sync_wait_id = 0;
				p->xact_first_id = pe_next_msg_id << 1;
			}
			break;
		default:
			break;
	}
}

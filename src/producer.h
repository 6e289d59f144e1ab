/*-------------------------------------------------------------------------
 *
 * producer.h
 *	  A backend's cached librdkafka producers (producer.c), as the SQL
 *	  functions that produce (produce.c) use them.
 *
 * IDENTIFICATION
 *	  src/producer.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_PRODUCER_H
#define PE_PRODUCER_H

#include "pipeline_ext.h"

#include "access/xact.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"

#include <librdkafka/rdkafka.h>

#define PE_POLL_SLICE_MS 50

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
	bool		auth_failed;	/* a broker refused the credentials */
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

/* Message ids carry "is async" in their low bit. */
#define MSG_ID(seq, async)	(((seq) << 1) | ((async) ? 1 : 0))
#define MSG_IS_ASYNC(id)	(((id) & 1) != 0)

/* producer.c */
extern HTAB *pe_producers;
extern uint64 pe_next_msg_id;

extern PeProducer *pe_get_producer(const char *name);
struct PeConnection;
extern char *pe_fingerprint(struct PeConnection *conn);
extern PeTopic *pe_get_topic(PeProducer *p, const char *topic, bool refresh);
extern void pe_poll(PeProducer *p, int timeout_ms);
extern void pe_note_sent(uint64 seq);
extern TimestampTz pe_deadline(int ms);
extern bool pe_past(TimestampTz deadline);
extern const char *pe_last_error(PeProducer *p);
extern void pe_producer_check_auth(PeProducer *p);
extern List *pe_producer_default_props(void);

/* A message's arguments as the SQL functions take them (produce.c). */
typedef struct PeMessageArgs
{
	char	   *connection;
	char	   *topic;
	const char *value;			/* NULL: a tombstone */
	size_t		value_len;
	const char *key;			/* NULL: none */
	size_t		key_len;
	Jsonb	   *headers;		/* checked: an object of strings, or NULL */
	int32		partition;		/* RD_KAFKA_PARTITION_UA: by key */
} PeMessageArgs;

/* produce.c */
extern void pe_xact_cb(XactEvent event, void *arg);
extern void pe_message_args(FunctionCallInfo fcinfo, PeMessageArgs *a);
extern void pe_refuse_checkpoint_topic(const char *topic);
extern rd_kafka_headers_t *pe_build_headers(Jsonb *jb);

#endif							/* PE_PRODUCER_H */

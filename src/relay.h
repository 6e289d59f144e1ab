/*-------------------------------------------------------------------------
 *
 * relay.h
 *	  The transactional outbox: pipeline.send() and the outbox rows it
 *	  writes (outbox.c) and their transactions' commit times
 *	  (outbox_commits.c), table changes written there (capture.c), and the
 *	  relay worker that publishes committed rows
 *	  exactly once with Kafka transactions (relay.c: its loop and rounds;
 *	  relay_choose.c: which rows make a round;
 *	  relay_kafka.c: the producer and transactions;
 *	  relay_checkpoint.c: the checkpoints;
 *	  relay_stats.c: its figures).
 *
 * IDENTIFICATION
 *	  src/relay.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_RELAY_H
#define PE_RELAY_H

#include "pipeline_ext.h"

#include "producer.h"
#include "shmem.h"
#include "access/transam.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include <librdkafka/rdkafka.h>

/* header that carries a message's outbox id, for consumers that dedupe */
#define PE_OUTBOX_ID_HEADER "pipeline_ext.outbox_id"

/* outbox.c */
extern int64 pe_outbox_write(const char *connection, const char *topic, Oid sender, int32 partition, Jsonb *headers,
							 int n, Datum *keys, bool *key_nulls, Datum *values, bool *value_nulls);
extern int64 pe_outbox_insert(const PeMessageArgs *a);
extern void pe_outbox_insert_many(const char *connection, const char *topic, Oid sender,
								  int n, Datum *keys, bool *key_nulls, Datum *values, bool *value_nulls);
extern void pe_outbox_note_sent(void);
extern void pe_relay_wake(Oid dboid);

/* outbox_commits.c */
extern Size pe_commits_shmem_size(void);
extern void pe_commits_shmem_init(LWLock *lock);
extern void pe_commits_begin(int64 max_id);
extern bool pe_commits_begin_prepared(const char *gid);
extern void pe_commits_committed(void);
extern void pe_commits_committed_at(TimestampTz at);
extern void pe_commits_forget(void);
extern int	pe_commits_before(TimestampTz before, int64 above, FullTransactionId *xids, int room, int64 *upto);

/* The relay's own (relay.c, relay_kafka.c, relay_stats.c). */
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
	FullTransactionId xid;		/* the sender's top-level transaction */
	Oid			sent_by;		/* the role it is sent for */
	TimestampTz committed_at;	/* its commit time, 0 if unknown */
	rd_kafka_resp_err_t err;	/* its delivery report's */
	bool		reported;
	char	   *dead;			/* refused for good: the reason */
	bool		buried;			/* moved to the dead letters */
	bool		alone;			/* refused for its batch's size: sent alone */
} PeOutMsg;

/* outbox_commits.c, for the relay */
extern void pe_commits_times(PeOutMsg *m, int from, int n);

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
	char	   *fingerprint;	/* the connection the producer was made from */
	bool		txn_ready;		/* rk's init_transactions() has succeeded */
	TimestampTz made_at;		/* when rk was made */
} PeRelayConn;

/* relay.c */
extern int	pe_outbox_round_max;
extern int	pe_outbox_round_kb;
extern int	pe_outbox_linger_ms;
extern int	pe_relay_db;
extern PGDLLEXPORT void pe_relay_main(Datum arg);
extern void pe_relay_bury(PeRelayConn *c, PeOutMsg *msgs, int n);
extern void pe_spi_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expect);

/* relay_choose.c */
extern int64 pe_relay_choose(PeRelayConn *c, PeOutMsg **msgs, int *n, bool *was_pending);

/* relay_kafka.c */
extern char *pe_outbox_crash_at;
extern bool pe_relay_producer(PeRelayConn *c);

/* relay_checkpoint.c */
extern char *pe_outbox_checkpoint_topic;
extern void pe_relay_checkpoint_topic(PeRelayConn *c);
extern uint64 pe_relay_fingerprint(const PeOutMsg *msgs, int n);
extern int64 pe_relay_committed_round(PeRelayConn *c, uint64 *fp, bool *has_fp);
extern bool pe_relay_send(PeRelayConn *c, int64 round, PeOutMsg *msgs, int n, bool first_try, bool *refused);
extern void pe_relay_forget_round(void);

/* relay_stats.c */
extern struct PeRelay *pe_relay_shared(void);
extern void pe_relay_exit(int code, Datum arg);
extern void pe_relay_note_error(PeRelayConn *c, const char *fmt,...) pg_attribute_printf(2, 3);
extern void pe_relay_note_published(PeOutMsg *msgs, int n, int ndead);

#endif							/* PE_RELAY_H */

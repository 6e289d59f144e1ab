/*-------------------------------------------------------------------------
 *
 * slot.h
 *	  A slot worker's own state, shared by the files of the slot worker:
 *	  slot.c (the loop), slot_batch.c (a batch's transaction),
 *	  slot_assign.c (partitions and where to start), slot_handoff.c (a
 *	  group shared between servers), slot_metrics.c (what it publishes to
 *	  shared memory) and offsets.c.
 *
 * IDENTIFICATION
 *	  src/slot.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_SLOT_H
#define PE_SLOT_H

#include "pipeline_ext.h"

#include "executor/spi.h"

#include "connection.h"
#include "consumer.h"
#include "datapath.h"
#include "kafka.h"

typedef struct PePartState
{
	int32		partition;
	bool		assigned;
	int64		stored;			/* next offset in pipeline.offsets; -1: none */
	bool		reset;			/* ... set by reset_offsets(), no batch since */
	int			shm;			/* index in the PeSlot's partitions[], -1: none */
	int64		start;			/* where it started without a stored offset (or a
								 * RD_KAFKA_OFFSET_ sentinel) */
	int64		asked_high;		/* high watermark the broker gave when asked; -1 */
	int64		floor;			/* the group resumed it here: anything below was
								 * applied (by this server or another); -1 */
	int64		catchup_end;	/* pe_slot_catch_up(): apply up to here; -1 */
	int64		claim_base;		/* stored offset the last batch started from */
	char	   *carried;		/* claims of previous owners, for the group's
								 * commits (slot_handoff.c); NULL: none */
	TimestampTz moved_at;		/* stored last moved (or the partition was assigned) */
} PePartState;

typedef struct PeSlotRun
{
	int			slot_index;		/* in pe_shared->slots */
	int			slot;			/* slot number within the consumer */
	PeConsumerDef *def;
	char	   *dbname;
	PeConnection *conn;
	List	   *secrets;
	PeTarget   *target;
	bool		exactly_once;
	bool		handoff;		/* exactly_once in a group: the group's offsets
								 * hand partitions over between servers */
	char	   *handoff_identity;	/* this server's database and consumer */
	bool		catching_up;	/* in pe_slot_catch_up() */
	bool		group_refused;	/* the group refused a batch's offsets */
	bool		group_took;		/* ... or took them, and the batch is not committed */
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	int			npart;			/* partitions known in the topic */
	int			npart_at_start;	/* ... when the slot started: later ones are new */
	PePartState *parts;			/* indexed by partition number */
	TimestampTz last_discover;
	TimestampTz last_watermarks;
	TimestampTz last_asked;		/* last ListOffsets for idle partitions */
	SPIPlanPtr	offset_plan;
	SPIPlanPtr	dead_plan;
	bool		need_reseek;	/* offsets moved under us: seek again */
	bool		reseek_from_group;	/* ... after a rebalance: the group's offsets count */
	uint32		reseeks;		/* last seen PeSlot.reseeks */
	rd_kafka_message_t **batch;	/* messages held, freed at exit too */
	int			batch_n;
	int			batch_room;		/* batch[]'s size */
	int			xact_batches;	/* batches in it: 1 as collected, more as its
								 * transaction takes them in (slot_batch.c) */
	bool		target_stale;	/* the target table changed: describe it again */
	bool		assignment_changed; /* a rebalance: publish the partitions */
	bool		stats_pending;	/* table statistics not sent since the last commit */
	TimestampTz last_commit_at;
	bool		heap_trimmed;	/* idle: freed batch memory given back */
	char		rebalance_error[256];	/* a rebalance failed: the loop raises it */
	char		auth_error[256];	/* a broker refused the credentials: raised */
	MemoryContext batch_cxt;	/* a batch's decoded rows; reset after each */
	MemoryContext loop_cxt;		/* anything else of one turn of the loop; reset at each */
	char	   *log_who;		/* "consumer NAME/SLOT", for its log lines */
} PeSlotRun;

/* this process's slot (slot.c) */
extern PeSlotRun *pe_run;

/* slot.c */
#define PE_WAIT_SLICE_MS 200
#define PE_WAIT_SLICE_MAX_MS 1000	/* SIGTERM is answered within a second */
extern void pe_slot_wait_tick(void);
extern int	pe_slot_keep(rd_kafka_message_t **batch, int n, ssize_t got, size_t *bytes);
/* a batch this large means a backlog: wake the fetchers (slot_metrics.c) */
#define PE_WAKE_MESSAGES 10000
#define PE_WAKE_BYTES (1024 * 1024)
/* a batch's most bytes of keys and values */
#define PE_BATCH_MAX_BYTES (32 * 1024 * 1024)
extern PeBatchOutcome pe_slot_apply_with_retries(rd_kafka_message_t **batch, int *n, size_t *bytes, int64 *ndead,
												 char **stop_error);
extern void pe_slot_stop_on_error(const char *stop_error) pg_attribute_noreturn();
extern void pe_slot_record_error(const char *msg);

/* slot_handoff.c */
extern void pe_slot_handoff_metadata(rd_kafka_topic_partition_t *tp, int64 from);
extern int64 pe_slot_handoff_assigned(const rd_kafka_topic_partition_t *tp);
extern void pe_slot_catch_up(void);

/* slot_batch.c */
extern void pe_slot_fetch_schemas(rd_kafka_message_t **batch, int n);
/* a batch's transaction takes in at most this many batches (pe_slot_may_extend) */
#define PE_XACT_MAX_BATCHES 4
extern bool pe_slot_try_batch(rd_kafka_message_t **batch, int *n, size_t *bytes, PeBatchOutcome *outcome,
							  int64 *ndead, char **stop_error);

/* slot_assign.c */
extern void pe_slot_read_committed(rd_kafka_topic_partition_list_t *l, bool each_partition);
extern rd_kafka_resp_err_t pe_slot_query_watermarks(int32 p, int64 *lo, int64 *hi, int timeout_ms);
extern void pe_slot_grow(int npart);
extern void pe_slot_discover(bool first);
extern void pe_slot_reseek(void);
extern void pe_slot_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
								 rd_kafka_topic_partition_list_t *partitions, void *opaque);

/* slot_metrics.c */
extern void pe_slot_record_batch(rd_kafka_message_t **batch, int n, size_t bytes, int64 ndead);
extern void pe_slot_note_oldest(rd_kafka_message_t **batch, int n, bool before_apply);
extern void pe_slot_publish_partitions(void);
extern void pe_slot_wake_fetchers(void);
extern bool pe_slot_publish_watermarks(void);
extern void pe_slot_idle_aggregates(void);

/* offsets.c */
extern void pe_slot_load_offsets(void);
extern rd_kafka_resp_err_t pe_slot_kafka_commit(rd_kafka_message_t **msgs, int n, bool sync);
extern bool pe_slot_store_offset(int32 p, int64 next);

#endif							/* PE_SLOT_H */

/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared memory: the slot table, the databases the launcher serves,
 *	  producer counters (shmem.c), latency histograms (histogram.c) and the
 *	  per-partition lag rules (lag.c).
 *
 * IDENTIFICATION
 *	  src/shmem.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_SHMEM_H
#define PE_SHMEM_H

#include "pipeline_ext.h"

#include "port/atomics.h"
#include "storage/lwlock.h"

#define PE_MAX_DBS 64
#define PE_ERROR_LEN 512
#define PE_SLOT_MAX_PARTITIONS 1024	/* figures kept per slot (Event Hubs Dedicated: 1,024) */
#define PE_PERIOD_SECS 10
#define PE_PERIODS 360				/* one hour */
#define PE_LATENCY_WINDOW_SECS 300
#define PE_LAG_SAMPLES 10			/* lag history: one sample per tenth of the window */

typedef enum PeSlotState
{
	PE_SLOT_FREE = 0,			/* entry unused */
	PE_SLOT_STARTING,			/* worker registered, not attached yet */
	PE_SLOT_RUNNING,			/* worker attached */
	PE_SLOT_STOPPED,			/* exited cleanly, or stopped by the user */
	PE_SLOT_FAILED,				/* exited with an error; manager will restart */
	PE_SLOT_RESTARTING			/* waiting out the backoff before a restart */
} PeSlotState;

/*
 * A latency histogram in shared memory, updated with atomics: log-linear
 * buckets, four per power of two of microseconds (within 19 % of the value).
 */
#define PE_HIST_SUB 4
#define PE_HIST_BUCKETS (40 * PE_HIST_SUB)

typedef struct PeHistogram
{
	pg_atomic_uint64 count[PE_HIST_BUCKETS];
	pg_atomic_uint64 max_us;
} PeHistogram;

/* histogram.c */
extern void pe_hist_init(PeHistogram *h);
extern void pe_hist_add(PeHistogram *h, int64 us);
extern double pe_hist_percentile_ms(PeHistogram *h, double q, uint64 *total);

/*
 * One consumer slot: the worker that applies a share of a consumer's
 * partitions.  Written by the slot's worker and by its database's manager
 * under pe_shared->lock; read by the status functions.
 */
typedef struct PeSlot
{
	PeSlotState state;
	Oid			dboid;
	int64		consumer_id;	/* the consumer's identity (pipeline.consumer.id) */
	char		consumer[NAMEDATALEN];	/* its name, for display */
	bool		dropped;		/* the consumer was dropped: shown nowhere */
	int			slot;
	uint32		incarnation;	/* bumped at every start */
	uint32		reseeks;		/* bumped when the stored offsets were reset */
	pid_t		pid;
	bool		error_exit;		/* the worker recorded an error */
	bool		terminated;		/* ... which was a termination (pg_terminate_backend) */
	bool		stop_requested; /* pipeline_ext itself told the worker to stop */
	int			restarts;		/* since server start */
	int			backoff;		/* consecutive quick failures */
	int			apply_failures; /* failed attempts to apply a batch since the last commit */
	TimestampTz started_at;
	TimestampTz restart_at;
	TimestampTz last_error_at;
	TimestampTz last_batch_at;
	char		last_error[PE_ERROR_LEN];
	int			npartitions;
	int32		partitions[PE_SLOT_MAX_PARTITIONS];
	/* per assigned partition, in the order of partitions[] */
	int64		applied[PE_SLOT_MAX_PARTITIONS];	/* next offset committed */
	int64		high[PE_SLOT_MAX_PARTITIONS];	/* high watermark, -1 unknown */
	TimestampTz high_at[PE_SLOT_MAX_PARTITIONS];	/* when it was seen */
	/* time of the oldest message not applied yet (0: none, or unknown) */
	TimestampTz oldest[PE_SLOT_MAX_PARTITIONS];
	TimestampTz progress_at[PE_SLOT_MAX_PARTITIONS];	/* applied last moved */
	/* lag history for consumer_lag's status, sampled with the watermarks */
	TimestampTz sample_at[PE_LAG_SAMPLES];
	int64		sample_lag[PE_LAG_SAMPLES][PE_SLOT_MAX_PARTITIONS];	/* -1: unknown */
	int			sample_next;
	TimestampTz created_at;		/* the entry, for "no batch for longer than" */
	uint64		messages;
	uint64		bytes;
	uint64		batches;
	uint64		dead_letters;
	TimestampTz stats_reset;
	uint64		errors;			/* batches that failed the worker */
	/* the last hour in 10-second periods: messages applied, total lag */
	uint32		period[PE_PERIODS];
	uint32		period_msgs[PE_PERIODS];
	int64		period_lag[PE_PERIODS];
	/* end-to-end latency (commit time - message timestamp), two 5-minute windows */
	PeHistogram latency[2];
	int			latency_cur;
	TimestampTz latency_since;
} PeSlot;

/* A consumer as the shared-memory entries know it: identity and name. */
typedef struct PeConsumerRef
{
	int64		id;
	char		name[NAMEDATALEN];
} PeConsumerRef;

/*
 * A database's outbox relay (relay.c), started by its manager.  Counters
 * are written by the relay under the shared lock's exclusive mode.
 */
typedef struct PeRelay
{
	pid_t		pid;			/* 0 if not running */
	struct Latch *latch;		/* set at the commit of a send() */
	int			failures;		/* consecutive error exits */
	TimestampTz restart_at;
	uint64		published;
	uint64		rounds;
	uint64		round_failures;
	uint64		dead_letters;
	char		last_error[PE_ERROR_LEN];
	char		last_error_conn[NAMEDATALEN];	/* the connection it is about */
	TimestampTz last_error_at;
	TimestampTz last_publish_at;
	TimestampTz window_start;	/* msgs_per_sec: the last full 10 s window */
	uint64		window_msgs;
	double		rate;
	int			latency_cur;	/* COMMIT to acknowledged, two windows */
	TimestampTz latency_since;
	PeHistogram latency[2];
} PeRelay;

/* One database the launcher keeps a manager running in. */
typedef struct PeDatabase
{
	Oid			dboid;			/* InvalidOid: entry unused */
	bool		wanted;			/* start (or keep) a manager there */
	pid_t		pid;			/* manager's pid, 0 if none */
	struct Latch *latch;		/* manager's latch, to wake it */
	int			failures;		/* consecutive error exits */
	uint64		wakeups;		/* bumped by every wake-up request */
	TimestampTz restart_at;
	TimestampTz hold_until;		/* no manager before: DROP DATABASE under way */
	PeRelay		relay;
} PeDatabase;

typedef struct PeSharedState
{
	LWLock	   *lock;			/* guards dbs[] and slots[] */
	pg_atomic_uint64 produced_messages;
	pg_atomic_uint64 produced_bytes;
	pg_atomic_uint64 produce_failures;
	PeHistogram produce_latency;	/* produce call to broker acknowledgement */
	TimestampTz producer_stats_reset;
	struct Latch *launcher_latch;
	PeDatabase	dbs[PE_MAX_DBS];
	int			max_slots;
	PeSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} PeSharedState;

/* shmem.c */
extern PeSharedState *pe_shared;

extern void pe_shmem_init_hooks(void);
extern void pe_require_preload(void);
extern PeSlot *pe_snapshot_slots(int *n);
extern PeSlot *pe_slot_entry(Oid dboid, const PeConsumerRef *consumer, int slot, bool create);
extern void pe_slots_forget_consumer(Oid dboid, int64 consumer_id);
extern int	pe_slot_period(PeSlot *s, TimestampTz t);

/* lag.c */
extern void pe_slot_reset_partitions(PeSlot *s, TimestampTz now);
extern void pe_slot_note_watermarks(PeSlot *s, TimestampTz now);
extern const char *pe_lag_status(const PeSlot *s, int k, TimestampTz now);

#endif							/* PE_SHMEM_H */

/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  pipeline_ext's shared memory.
 *
 *	  Locking rules: the struct is created once, under AddinShmemInitLock,
 *	  by the postmaster (or by each backend on EXEC_BACKEND builds).  The
 *	  counters are pg_atomic_uint64 and are read and written without a lock:
 *	  each is independent, and readers copy them out before building tuples.
 *	  pe_shared->lock (one LWLock of the "pipeline_ext" tranche) guards the
 *	  per-consumer slot tables: exclusive to add or remove a slot, shared to
 *	  read them.
 *
 * IDENTIFICATION
 *	  src/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include <math.h>

#include "port/pg_bitutils.h"
#include "utils/timestamp.h"

#include "pipeline_ext.h"

PeSharedState *pe_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
pe_shmem_size(void)
{
	return MAXALIGN(add_size(offsetof(PeSharedState, slots),
							 mul_size(sizeof(PeSlot), pe_max_consumer_slots)));
}

static void
pe_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(pe_shmem_size());
	RequestNamedLWLockTranche("pipeline_ext", 1);
}

static void
pe_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pe_shared = ShmemInitStruct("pipeline_ext", pe_shmem_size(), &found);
	if (!found)
	{
		pe_shared->lock = &(GetNamedLWLockTranche("pipeline_ext"))->lock;
		pg_atomic_init_u64(&pe_shared->produced_messages, 0);
		pg_atomic_init_u64(&pe_shared->produced_bytes, 0);
		pg_atomic_init_u64(&pe_shared->produce_failures, 0);
		pe_hist_init(&pe_shared->produce_latency);
		pe_shared->producer_stats_reset = GetCurrentTimestamp();
		pe_shared->launcher_latch = NULL;
		memset(pe_shared->dbs, 0, sizeof(pe_shared->dbs));
		pe_shared->max_slots = pe_max_consumer_slots;
		memset(pe_shared->slots, 0, sizeof(PeSlot) * pe_max_consumer_slots);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
pe_shmem_init_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pe_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pe_shmem_startup;
}

/*
 * Functions that need the workers or shared counters call this first.
 */
void
pe_require_preload(void)
{
	if (pe_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pipeline_ext must be loaded via shared_preload_libraries"),
				 errhint("Add pipeline_ext to shared_preload_libraries in postgresql.conf "
						 "(shared_preload_libraries = 'pipeline_ext') and restart the server.")));
}

/* ---------------------------------------------------------------------
 * Latency histograms
 * ---------------------------------------------------------------------
 */

void
pe_hist_init(PeHistogram *h)
{
	for (int i = 0; i < PE_HIST_BUCKETS; i++)
		pg_atomic_init_u64(&h->count[i], 0);
	pg_atomic_init_u64(&h->max_us, 0);
}

static int
pe_hist_bucket(uint64 us)
{
	int			octave;
	int			sub;

	if (us < PE_HIST_SUB)
		return (int) us;
	octave = pg_leftmost_one_pos64(us);		/* us >= 2^octave */
	sub = (int) ((us >> (octave - 2)) & (PE_HIST_SUB - 1));
	return Min(octave * PE_HIST_SUB + sub - 4, PE_HIST_BUCKETS - 1);
}

/* The middle of a bucket, in microseconds. */
static double
pe_hist_value(int b)
{
	int			octave;
	int			sub;
	double		lo,
				width;

	if (b < PE_HIST_SUB)
		return b;
	octave = (b + 4) / PE_HIST_SUB;
	sub = (b + 4) % PE_HIST_SUB;
	width = ldexp(1.0, octave - 2);
	lo = ldexp(1.0, octave) + sub * width;
	return lo + width / 2;
}

void
pe_hist_add(PeHistogram *h, int64 us)
{
	uint64		v = us < 0 ? 0 : (uint64) us;
	uint64		max = pg_atomic_read_u64(&h->max_us);

	pg_atomic_fetch_add_u64(&h->count[pe_hist_bucket(v)], 1);
	while (v > max && !pg_atomic_compare_exchange_u64(&h->max_us, &max, v))
		;
}

/*
 * The q-quantile in milliseconds (q = 1: the maximum), or -1 when empty.
 * Never above the largest value seen.
 */
double
pe_hist_percentile_ms(PeHistogram *h, double q, uint64 *total_out)
{
	uint64		counts[PE_HIST_BUCKETS];
	uint64		total = 0;
	uint64		rank;
	uint64		seen = 0;
	double		max_ms = pg_atomic_read_u64(&h->max_us) / 1000.0;

	for (int i = 0; i < PE_HIST_BUCKETS; i++)
	{
		counts[i] = pg_atomic_read_u64(&h->count[i]);
		total += counts[i];
	}
	if (total_out)
		*total_out = total;
	if (total == 0)
		return -1;
	if (q >= 1.0)
		return max_ms;
	rank = (uint64) ceil(q * total);
	if (rank == 0)
		rank = 1;
	for (int i = 0; i < PE_HIST_BUCKETS; i++)
	{
		seen += counts[i];
		if (seen >= rank)
			return Min(pe_hist_value(i) / 1000.0, max_ms);
	}
	return max_ms;
}

/*
 * A copy of this database's slot entries, taken under the lock, for the
 * status and statistics functions to read at leisure.
 */
PeSlot *
pe_snapshot_slots(int *n)
{
	PeSlot	   *copy;
	int			room = 0;

	/* count first: an entry is large, and most of the table is usually free */
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < pe_shared->max_slots; i++)
		if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == MyDatabaseId)
			room++;
	LWLockRelease(pe_shared->lock);

	/* entries added in between are left for the next read */
	copy = palloc(sizeof(PeSlot) * Max(room, 1));
	*n = 0;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < pe_shared->max_slots && *n < room; i++)
		if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == MyDatabaseId)
			copy[(*n)++] = pe_shared->slots[i];
	LWLockRelease(pe_shared->lock);
	return copy;
}

/*
 * This database's entry for a consumer's slot, or a new one (state
 * stopped) when create is set and one is free; lock held exclusively.
 */
PeSlot *
pe_slot_entry(Oid dboid, const char *consumer, int slot, bool create)
{
	PeSlot	   *free_s = NULL;

	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];

		if (s->state == PE_SLOT_FREE)
		{
			if (free_s == NULL)
				free_s = s;
			continue;
		}
		if (s->dboid == dboid && s->slot == slot && strcmp(s->consumer, consumer) == 0)
			return s;
	}
	if (!create || free_s == NULL)
		return NULL;
	memset(free_s, 0, sizeof(PeSlot));
	free_s->created_at = GetCurrentTimestamp();
	free_s->dboid = dboid;
	strlcpy(free_s->consumer, consumer, NAMEDATALEN);
	free_s->slot = slot;
	free_s->state = PE_SLOT_STOPPED;
	return free_s;
}

/* The 10-second period bucket for a time, cleared when it is reused. */
int
pe_slot_period(PeSlot *s, TimestampTz t)
{
	uint32		period = (uint32) (t / (PE_PERIOD_SECS * USECS_PER_SEC));
	int			b = period % PE_PERIODS;

	if (s->period[b] != period)
	{
		s->period[b] = period;
		s->period_msgs[b] = 0;
		s->period_lag[b] = -1;
	}
	return b;
}

/* ---------------------------------------------------------------------
 * Per-partition lag: the oldest unapplied message, progress, history
 *
 * Written by the slot's worker, or by its database's manager while no
 * worker runs (stopped consumers); pe_shared->lock held exclusively.
 * ---------------------------------------------------------------------
 */

/* A new set of partitions: their figures and lag history start afresh. */
void
pe_slot_reset_partitions(PeSlot *s, TimestampTz now)
{
	for (int k = 0; k < PE_SLOT_MAX_PARTITIONS; k++)
	{
		s->oldest[k] = 0;
		s->progress_at[k] = now;
	}
	memset(s->sample_at, 0, sizeof(s->sample_at));
	s->sample_next = 0;
}

static int64
pe_partition_lag(const PeSlot *s, int k)
{
	if (s->high[k] < 0)
		return -1;
	return Max(s->high[k] - Max(s->applied[k], 0), 0);
}

/*
 * applied[] or high[] were just updated.  A partition that is caught up
 * has nothing unapplied and counts as progressing; one first seen behind
 * gets "now" as the time of its oldest unapplied message (give or take one
 * refresh) until a fetched message says better, and starts its window
 * then.  Then a lag sample, once
 * per tenth of pipeline_ext.lag_window.
 */
void
pe_slot_note_watermarks(PeSlot *s, TimestampTz now)
{
	int64		every = (int64) pe_lag_window_ms * 1000 / PE_LAG_SAMPLES;
	int			last = (s->sample_next + PE_LAG_SAMPLES - 1) % PE_LAG_SAMPLES;
	int			n = Min(s->npartitions, PE_SLOT_MAX_PARTITIONS);

	for (int k = 0; k < n; k++)
	{
		int64		lag = pe_partition_lag(s, k);

		if (lag == 0)
		{
			s->oldest[k] = 0;
			s->progress_at[k] = now;
		}
		else if (lag > 0 && s->oldest[k] == 0)
		{
			/* first seen behind: the window starts now, never earlier */
			s->oldest[k] = now;
			s->progress_at[k] = now;
		}
	}
	if (s->sample_at[last] != 0 && now - s->sample_at[last] < every)
		return;
	s->sample_at[s->sample_next] = now;
	for (int k = 0; k < n; k++)
		s->sample_lag[s->sample_next][k] = pe_partition_lag(s, k);
	s->sample_next = (s->sample_next + 1) % PE_LAG_SAMPLES;
}

/*
 * A partition's status over the last pipeline_ext.lag_window, after
 * Burrow's rules, in the order Burrow applies them:
 *	 OK		caught up, or behind and moving
 *	 STOP	behind for the whole window, and the slot applied no batch in it
 *	 STALL	behind for the whole window without moving, while the slot
 *			applies batches for its other partitions
 *	 WARN	lag grew at every sample across the window
 * NULL when the partition's high watermark is unknown.
 */
const char *
pe_lag_status(const PeSlot *s, int k, TimestampTz now)
{
	int64		window = (int64) pe_lag_window_ms * 1000;
	int64		lag = pe_partition_lag(s, k);
	int64		prev = -1;
	int			nsamples = 0;
	TimestampTz first_at = 0;
	bool		growing = true;

	if (lag < 0)
		return NULL;
	if (lag == 0)
		return "OK";
	if (now - s->progress_at[k] > window)
	{
		TimestampTz last_batch = Max(s->last_batch_at, s->created_at);

		return now - last_batch > window ? "STOP" : "STALL";
	}
	for (int i = 0; i < PE_LAG_SAMPLES; i++)
	{
		int			b = (s->sample_next + i) % PE_LAG_SAMPLES;	/* oldest first */
		int64		v = s->sample_lag[b][k];

		if (s->sample_at[b] == 0 || now - s->sample_at[b] > window || v < 0)
			continue;
		if (nsamples == 0)
			first_at = s->sample_at[b];
		else if (v <= prev)
			growing = false;
		prev = v;
		nsamples++;
	}
	if (growing && nsamples >= 3 && now - first_at >= window / 2)
		return "WARN";
	return "OK";
}

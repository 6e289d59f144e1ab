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
 *	  read them.  The second LWLock of the tranche guards the outbox's
 *	  commit times (outbox_commits.c).
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

#include "utils/timestamp.h"

#include "relay.h"
#include "shmem.h"

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
	RequestAddinShmemSpace(add_size(pe_shmem_size(), pe_commits_shmem_size()));
	RequestNamedLWLockTranche("pipeline_ext", 2);
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
	pe_commits_shmem_init(&(GetNamedLWLockTranche("pipeline_ext"))[1].lock);
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
		if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == MyDatabaseId &&
			!pe_shared->slots[i].dropped)
			room++;
	LWLockRelease(pe_shared->lock);

	/* entries added in between are left for the next read */
	copy = palloc(sizeof(PeSlot) * Max(room, 1));
	*n = 0;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < pe_shared->max_slots && *n < room; i++)
		if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == MyDatabaseId &&
			!pe_shared->slots[i].dropped)
			copy[(*n)++] = pe_shared->slots[i];
	LWLockRelease(pe_shared->lock);
	return copy;
}

/*
 * This database's entry for a consumer's slot, or a new one (state
 * stopped) when create is set and one is free; lock held exclusively.
 */
PeSlot *
pe_slot_entry(Oid dboid, const PeConsumerRef *consumer, int slot, bool create)
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
		if (s->dboid == dboid && s->slot == slot && s->consumer_id == consumer->id && !s->dropped)
			return s;
	}
	if (!create || free_s == NULL)
		return NULL;
	memset(free_s, 0, sizeof(PeSlot));
	free_s->created_at = GetCurrentTimestamp();
	free_s->dboid = dboid;
	free_s->consumer_id = consumer->id;
	strlcpy(free_s->consumer, consumer->name, NAMEDATALEN);
	free_s->slot = slot;
	free_s->state = PE_SLOT_STOPPED;
	return free_s;
}

/*
 * A consumer was dropped: its entries are shown nowhere from now on, and
 * what they held (its last error, its figures) is cleared.  Entries whose
 * worker still runs stay, marked, until their database's manager has
 * stopped it; the others are free at once.
 */
void
pe_slots_forget_consumer(Oid dboid, int64 consumer_id)
{
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];
		PeSlotState state = s->state;
		pid_t		pid = s->pid;
		int			slot = s->slot;
		uint32		incarnation = s->incarnation;
		uint32		reseeks = s->reseeks;

		if (state == PE_SLOT_FREE || s->dboid != dboid || s->consumer_id != consumer_id)
			continue;
		memset(s, 0, sizeof(PeSlot));
		if (pid == 0 && state != PE_SLOT_STARTING)
			continue;			/* PE_SLOT_FREE */
		s->state = state;
		s->pid = pid;
		s->dboid = dboid;
		s->consumer_id = consumer_id;
		s->slot = slot;
		s->incarnation = incarnation;
		s->reseeks = reseeks;	/* (a change would make its worker seek) */
		s->dropped = true;
		s->stop_requested = true;
	}
	LWLockRelease(pe_shared->lock);
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

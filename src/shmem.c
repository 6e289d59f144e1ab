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

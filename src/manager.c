/*-------------------------------------------------------------------------
 *
 * manager.c
 *	  A database's manager: reads its database's consumers once a second (or
 *	  when woken) and keeps one worker per enabled slot running: it starts
 *	  missing ones, restarts failed ones with exponential backoff, and
 *	  terminates the slots of stopped or dropped consumers.  Slot state lives
 *	  in shared memory so that it survives the manager and the workers.  Each
 *	  round it also has probe.c refresh the lag of stopped consumers, and it
 *	  keeps the outbox relay (relay.c) running once the outbox is used.
 *
 * IDENTIFICATION
 *	  src/manager.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

#define PE_MANAGER_NAP_MS 1000
#define PE_BACKOFF_MAX_MS 60000

typedef struct PeManagedConsumer
{
	PeConsumerRef ref;
	int			parallelism;
	bool		enabled;
} PeManagedConsumer;

static int	manager_db = -1;

static bool said_outdated = false;

static BackgroundWorkerHandle **slot_handles = NULL;

static void
pe_manager_exit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (manager_db < 0)
		return;
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (pe_shared->dbs[manager_db].pid == MyProcPid)
	{
		pe_shared->dbs[manager_db].pid = 0;
		pe_shared->dbs[manager_db].latch = NULL;
	}
	LWLockRelease(pe_shared->lock);
}

/* Start the worker of a slot entry; lock held exclusively on entry and exit. */
static void
pe_start_slot(PeSlot *s)
{
	int			idx = s - pe_shared->slots;
	char		name[BGW_MAXLEN];
	Oid			dboid;
	uint32		incarnation;
	BackgroundWorkerHandle *h;
	bool		ok;

	s->incarnation++;
	s->state = PE_SLOT_STARTING;
	s->stop_requested = false;
	s->pid = 0;
	s->error_exit = false;
	s->terminated = false;
	s->started_at = GetCurrentTimestamp();

	/* what the worker is told, read while the lock is held */
	snprintf(name, sizeof(name), "pipeline_ext consumer %s/%d", s->consumer, s->slot);
	dboid = s->dboid;
	incarnation = s->incarnation;

	LWLockRelease(pe_shared->lock);
	ok = pe_start_worker("pe_slot_main", name, "pipeline_ext consumer", idx, dboid, incarnation, &h);
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (slot_handles[idx])
		pfree(slot_handles[idx]);
	slot_handles[idx] = ok ? h : NULL;
	if (!ok)
	{
		s->state = PE_SLOT_RESTARTING;
		s->restart_at = GetCurrentTimestamp() + 5 * USECS_PER_SEC;
		s->last_error_at = GetCurrentTimestamp();
		strlcpy(s->last_error, "no free background worker slot; raise max_worker_processes",
				sizeof(s->last_error));
	}
}

/*
 * Start the database's outbox relay (relay.c) if it is needed and not
 * running; after an error exit, not before its backoff ran out.
 */
static void
pe_start_relay(int idx)
{
	static BackgroundWorkerHandle *relay_handle = NULL;
	PeRelay    *r = &pe_shared->dbs[idx].relay;
	pid_t		pid;
	bool		start;

	if (relay_handle && GetBackgroundWorkerPid(relay_handle, &pid) != BGWH_STOPPED)
		return;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	start = r->pid == 0 && GetCurrentTimestamp() >= r->restart_at;
	LWLockRelease(pe_shared->lock);
	if (!start)
		return;

	if (relay_handle)
		pfree(relay_handle);
	relay_handle = NULL;
	if (!pe_start_worker("pe_relay_main", "pipeline_ext outbox relay", "pipeline_ext outbox relay",
						 idx, MyDatabaseId, 0, &relay_handle))
	{
		relay_handle = NULL;
		ereport(LOG,
				(errmsg("pipeline_ext: no free background worker slot for the outbox relay; will retry"),
				 errhint("Raise max_worker_processes.")));
	}
}

typedef struct PeErrorNote
{
	int64		consumer_id;
	char		error[PE_ERROR_LEN];
} PeErrorNote;

/*
 * The slot table is full: free an entry that only keeps the lag figures of
 * a stopped consumer (or of one gone), so that a running one gets a slot.
 * Lock held exclusively.
 */
static bool
pe_reclaim_entry(Oid dboid, PeManagedConsumer *cons, int ncons)
{
	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];
		bool		enabled = false;

		if (s->state != PE_SLOT_STOPPED || s->pid != 0 || s->dboid != dboid)
			continue;
		for (int c = 0; c < ncons; c++)
			if (cons[c].enabled && cons[c].ref.id == s->consumer_id && !s->dropped)
				enabled = true;
		if (!enabled)
		{
			s->state = PE_SLOT_FREE;
			return true;
		}
	}
	return false;
}

/*
 * Make the slots of this database match its consumers.  Returns the number
 * of slots that still have a live worker; fills notes with errors to keep
 * in the catalog.
 */
static int
pe_reconcile(Oid dboid, PeManagedConsumer *cons, int ncons, PeErrorNote *notes, int *nnotes)
{
	TimestampTz now = GetCurrentTimestamp();
	int			live = 0;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);

	/* slots of enabled consumers */
	for (int c = 0; c < ncons; c++)
	{
		if (!cons[c].enabled)
			continue;
		for (int k = 0; k < cons[c].parallelism; k++)
		{
			PeSlot	   *s = pe_slot_entry(dboid, &cons[c].ref, k, true);
			int			idx;

			if (s == NULL && pe_reclaim_entry(dboid, cons, ncons))
				s = pe_slot_entry(dboid, &cons[c].ref, k, true);
			if (s == NULL)
			{
				ereport(LOG,
						(errmsg("pipeline_ext: no free consumer slot for %s/%d", cons[c].ref.name, k),
						 errhint("Raise pipeline_ext.max_consumer_slots.")));
				continue;
			}
			idx = s - pe_shared->slots;

			if (s->state == PE_SLOT_STARTING && s->pid == 0 && slot_handles[idx])
			{
				pid_t		pid;

				if (GetBackgroundWorkerPid(slot_handles[idx], &pid) == BGWH_STOPPED)
				{
					s->state = PE_SLOT_FAILED;
					if (s->last_error[0] == '\0')
						strlcpy(s->last_error, "worker exited before it started", sizeof(s->last_error));
				}
			}

			switch (s->state)
			{
				case PE_SLOT_FREE:
				case PE_SLOT_STOPPED:
					s->backoff = 0;
					s->apply_failures = 0;
					pe_start_slot(s);
					break;
				case PE_SLOT_FAILED:
					{
						int64		delay;

						if (s->error_exit && *nnotes < 64)
						{
							notes[*nnotes].consumer_id = s->consumer_id;
							strlcpy(notes[*nnotes].error, s->last_error, PE_ERROR_LEN);
							(*nnotes)++;
						}
						if (now - s->started_at > (int64) PE_BACKOFF_MAX_MS * 1000)
							s->backoff = 0;
						delay = Min((int64) 1000 << Min(s->backoff, 6), PE_BACKOFF_MAX_MS);
						s->backoff++;
						s->restarts++;
						if (s->error_exit && !s->terminated)
							s->errors++;
						s->state = PE_SLOT_RESTARTING;
						s->restart_at = now + delay * 1000;
						ereport(LOG,
								(errmsg("pipeline_ext: consumer %s/%d failed; restarting in %lld ms",
										s->consumer, s->slot, (long long) delay)));
					}
					break;
				case PE_SLOT_RESTARTING:
					if (now >= s->restart_at)
						pe_start_slot(s);
					break;
				case PE_SLOT_STARTING:
				case PE_SLOT_RUNNING:
					break;
			}
		}
	}

	/* slots that should not run */
	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];
		bool		wanted = false;
		bool		exists = false;

		if (s->state == PE_SLOT_FREE || s->dboid != dboid)
			continue;
		for (int c = 0; c < ncons; c++)
			if (cons[c].ref.id == s->consumer_id && !s->dropped)
			{
				exists = true;
				wanted = cons[c].enabled && s->slot < cons[c].parallelism;
			}
		if (!wanted)
		{
			if (s->pid != 0)
			{
				s->stop_requested = true;
				kill(s->pid, SIGTERM);
			}
			else if (s->state == PE_SLOT_STARTING && slot_handles[i])
				TerminateBackgroundWorker(slot_handles[i]);
			else if (!exists)
				s->state = PE_SLOT_FREE;
			else
				s->state = PE_SLOT_STOPPED;
		}
		if (s->pid != 0 || s->state == PE_SLOT_STARTING)
			live++;
	}
	LWLockRelease(pe_shared->lock);
	return live;
}

void
pe_manager_main(Datum arg)
{
	PeWorkerExtra extra;
	int			idx = DatumGetInt32(arg);
	MemoryContext cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (pe_shared->dbs[idx].dboid != extra.dboid || pe_shared->dbs[idx].pid != 0)
	{
		LWLockRelease(pe_shared->lock);
		proc_exit(0);
	}
	pe_shared->dbs[idx].pid = MyProcPid;
	pe_shared->dbs[idx].latch = MyLatch;
	manager_db = idx;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_manager_exit, 0);

	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);
	pe_pin_search_path();
	pgstat_report_appname("pipeline_ext manager");
	slot_handles = MemoryContextAllocZero(TopMemoryContext,
										  sizeof(BackgroundWorkerHandle *) * pe_shared->max_slots);
	cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext manager", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		PeManagedConsumer *cons = NULL;
		int			ncons = 0;
		uint64		wakeups;
		PeErrorNote notes[64];
		int			nnotes = 0;
		int			live;
		bool		installed;
		bool		outdated;
		bool		relay_needed = false;
		bool		relay_running;
		bool		rc_null;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(cxt);

		LWLockAcquire(pe_shared->lock, LW_SHARED);
		wakeups = pe_shared->dbs[idx].wakeups;
		LWLockRelease(pe_shared->lock);

		pe_xact_begin();
		pgstat_report_activity(STATE_RUNNING, "reading consumers");
		installed = OidIsValid(get_extension_oid("pipeline_ext", true)) &&
			OidIsValid(get_namespace_oid(PE_SCHEMA, true)) &&
			OidIsValid(get_relname_relid("consumer", get_namespace_oid(PE_SCHEMA, true)));
		/* the library is newer than the catalog until ALTER EXTENSION UPDATE */
		outdated = installed &&
			get_attnum(get_relname_relid("consumer", get_namespace_oid(PE_SCHEMA, true)), "id") == InvalidAttrNumber;
		if (outdated && !said_outdated)
			ereport(WARNING,
					(errmsg("pipeline_ext: the extension in database \"%s\" is older than its library; its consumers do not run",
							get_database_name(MyDatabaseId)),
					 errhint("Run ALTER EXTENSION pipeline_ext UPDATE in that database.")));
		said_outdated = outdated;
		if (installed && !outdated)
		{
			int			rc;

			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			rc = SPI_execute("SELECT id, name, parallelism, enabled FROM pipeline.consumer", true, 0);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "could not read consumers: %s", SPI_result_code_string(rc));
			ncons = SPI_processed;
			cons = MemoryContextAllocZero(cxt, sizeof(PeManagedConsumer) * Max(ncons, 1));
			for (int i = 0; i < ncons; i++)
			{
				HeapTuple	tup = SPI_tuptable->vals[i];
				TupleDesc	desc = SPI_tuptable->tupdesc;
				bool		isnull;
				char	   *name = SPI_getvalue(tup, desc, 2);

				cons[i].ref.id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
				strlcpy(cons[i].ref.name, name, NAMEDATALEN);
				cons[i].parallelism = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
				cons[i].enabled = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
			}
			/* the outbox (0.5.0): in use here, so a relay runs (relay.c) */
			relay_needed = false;
			if (OidIsValid(get_relname_relid("outbox_relay", get_namespace_oid(PE_SCHEMA, true))))
			{
				rc = SPI_execute("SELECT EXISTS (SELECT FROM pipeline.outbox_relay) "
								 "OR EXISTS (SELECT FROM pipeline.outbox)",
								 true, 0);
				if (rc != SPI_OK_SELECT)
					elog(ERROR, "could not read the outbox: %s", SPI_result_code_string(rc));
				relay_needed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &rc_null));
			}
			SPI_finish();
		}
		pe_xact_commit();

		if (relay_needed)
			pe_start_relay(idx);
		LWLockAcquire(pe_shared->lock, LW_SHARED);
		relay_running = pe_shared->dbs[idx].relay.pid != 0;
		LWLockRelease(pe_shared->lock);

		live = pe_reconcile(MyDatabaseId, cons, ncons, notes, &nnotes);

		if (nnotes > 0)
		{
			/* keep the last error of each failed consumer in the catalog */
			pe_xact_begin();
			for (int i = 0; i < nnotes; i++)
				pe_consumer_record_error(notes[i].consumer_id, notes[i].error, false);
			pe_xact_commit();
		}
		/* lag figures of the consumers that have no running worker */
		if (ncons > 0)
		{
			PeConsumerRef *refs = MemoryContextAlloc(cxt, sizeof(PeConsumerRef) * ncons);

			for (int i = 0; i < ncons; i++)
				refs[i] = cons[i].ref;
			pgstat_report_activity(STATE_RUNNING, "watching the lag of stopped consumers");
			pe_probe_round(MyDatabaseId, refs, ncons);
		}
		pgstat_report_activity(STATE_IDLE, NULL);
		(void) pgstat_report_stat(false);	/* its catalog writes, for autovacuum */

		/* stay while the database has consumers, running or not, or an outbox to relay */
		if (ncons == 0 && live == 0 && !outdated && !relay_needed && !relay_running)
		{
			bool		done = false;

			LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
			if (pe_shared->dbs[idx].wakeups == wakeups)
			{
				pe_shared->dbs[idx].wanted = false;
				pe_shared->dbs[idx].failures = 0;
				done = true;
			}
			LWLockRelease(pe_shared->lock);
			if (done)
				proc_exit(0);
			continue;
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PE_MANAGER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

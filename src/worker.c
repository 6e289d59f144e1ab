/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background workers: one launcher, one manager per database that
 *	  has consumers, and one worker per consumer slot.
 *
 *	  The launcher (static, connected to no database) keeps a manager
 *	  running in each database that wants one: at server start every
 *	  database is asked once; a manager that finds no enabled consumer
 *	  leaves, and the consumer functions wake the launcher again.
 *
 *	  A manager reads its database's consumers once a second (or when woken)
 *	  and keeps one worker per enabled slot running: it starts missing ones,
 *	  restarts failed ones with exponential backoff, and terminates the
 *	  slots of stopped or dropped consumers.  Slot state lives in shared
 *	  memory so that it survives the manager and the workers.
 *
 *	  A slot worker owns a set of partitions (every partition p with
 *	  p % parallelism = slot, or what the Kafka group gives it), and loops:
 *	  collect a batch, then in one transaction decode and apply it, write
 *	  its dead letters, and write the next offsets of its partitions with a
 *	  fence (the stored offset must still be the one the slot started the
 *	  batch from; otherwise another slot, or reset_offsets(), moved it, and
 *	  the batch is rolled back and the slot seeks again).  Offsets are then
 *	  committed to the Kafka group, best effort, so external tools see
 *	  progress.
 *
 * IDENTIFICATION
 *	  src/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
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
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pipeline_ext.h"

#define PE_MANAGER_NAP_MS 1000
#define PE_LAUNCHER_NAP_MS 1000
#define PE_RESCAN_MS 60000
#define PE_BACKOFF_MAX_MS 60000
#define PE_DISCOVER_MS 5000
#define PE_BATCH_MAX_BYTES (32 * 1024 * 1024)
#define PE_SLICE_MS 100
#define PE_RELEASE_HOLD_MS 10000
#define PE_ASK_EVERY_MS 5000		/* ask for idle partitions' watermarks */
#define PE_ASK_TIMEOUT_MS 1000
#define PE_RELEASE_WAIT_MS 5000

typedef struct PeWorkerExtra
{
	Oid			dboid;
	uint32		incarnation;
} PeWorkerExtra;

/*
 * A background worker's transaction around catalog and SPI work: a
 * statement start time (for now() and the logs) and a snapshot.
 */
void
pe_xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
pe_xact_commit(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

static int64
pe_ms_since(TimestampTz t)
{
	return (GetCurrentTimestamp() - t) / 1000;
}

/* ---------------------------------------------------------------------
 * Launcher
 * ---------------------------------------------------------------------
 */

void
pe_register_launcher(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "pipeline_ext");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "pe_launcher_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "pipeline_ext launcher");
	snprintf(w.bgw_type, BGW_MAXLEN, "pipeline_ext launcher");
	RegisterBackgroundWorker(&w);
}

/* Ask the launcher for a manager in this database, and wake its manager. */
void
pe_wake_manager(Oid dboid)
{
	int			free_i = -1;
	int			i;
	struct Latch *latch = NULL;
	struct Latch *mlatch = NULL;

	if (pe_shared == NULL)
		return;
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < PE_MAX_DBS; i++)
	{
		if (pe_shared->dbs[i].dboid == dboid)
			break;
		if (free_i < 0 && pe_shared->dbs[i].dboid == InvalidOid)
			free_i = i;
	}
	if (i == PE_MAX_DBS && free_i >= 0)
	{
		i = free_i;
		memset(&pe_shared->dbs[i], 0, sizeof(PeDatabase));
		pe_shared->dbs[i].dboid = dboid;
	}
	if (i < PE_MAX_DBS)
	{
		pe_shared->dbs[i].wanted = true;
		pe_shared->dbs[i].wakeups++;
		pe_shared->dbs[i].restart_at = 0;
		mlatch = pe_shared->dbs[i].latch;
	}
	latch = pe_shared->launcher_latch;
	LWLockRelease(pe_shared->lock);
	if (mlatch)
		SetLatch(mlatch);
	if (latch)
		SetLatch(latch);
	if (i == PE_MAX_DBS)
		ereport(WARNING,
				(errmsg("pipeline_ext runs consumers in at most %d databases", PE_MAX_DBS)));
}

/*
 * DROP DATABASE (and renaming one) waits a few seconds for the other
 * sessions in it to leave, then fails.  A database with consumers keeps
 * its manager and slot workers connected, so they are asked to leave
 * first, and the launcher holds off a new manager for a while: if the
 * command fails, the consumers come back then.  TimescaleDB stops its
 * schedulers the same way.  Called by the command's backend, which owns
 * the database.
 */
void
pe_release_database(Oid dboid)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		any = false;

	if (pe_shared == NULL)
		return;
	for (;;)
	{
		pid_t		pids[PE_MAX_DBS + 1024];
		int			npids = 0;

		LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < PE_MAX_DBS; i++)
			if (pe_shared->dbs[i].dboid == dboid)
			{
				pe_shared->dbs[i].hold_until = GetCurrentTimestamp() + PE_RELEASE_HOLD_MS * 1000;
				if (pe_shared->dbs[i].pid != 0)
					pids[npids++] = pe_shared->dbs[i].pid;
			}
		for (int i = 0; i < pe_shared->max_slots && npids < (int) lengthof(pids); i++)
			if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == dboid &&
				pe_shared->slots[i].pid != 0)
			{
				pe_shared->slots[i].stop_requested = true;
				pids[npids++] = pe_shared->slots[i].pid;
			}
		LWLockRelease(pe_shared->lock);

		if (npids == 0 || pe_ms_since(start) > PE_RELEASE_WAIT_MS)
			break;
		if (!any)
			ereport(LOG,
					(errmsg("pipeline_ext: stopping the consumers' workers of database %u for %s",
							dboid, "DROP or RENAME DATABASE")));
		any = true;
		for (int i = 0; i < npids; i++)
			(void) kill(pids[i], SIGTERM);
		CHECK_FOR_INTERRUPTS();
		pg_usleep(20 * 1000L);
	}
}

static void
pe_launcher_scan(bool initial)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *present = NIL;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
			present = lappend_oid(present, db->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	/* forget databases that are gone */
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid != InvalidOid && pe_shared->dbs[i].pid == 0 &&
			!list_member_oid(present, pe_shared->dbs[i].dboid))
			memset(&pe_shared->dbs[i], 0, sizeof(PeDatabase));
	LWLockRelease(pe_shared->lock);

	if (initial)
	{
		ListCell   *lc;

		foreach(lc, present)
			pe_wake_manager(lfirst_oid(lc));
	}
}

static void
pe_launcher_exit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	pe_shared->launcher_latch = NULL;
	LWLockRelease(pe_shared->lock);
}

void
pe_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handles[PE_MAX_DBS];
	TimestampTz last_scan;

	(void) arg;
	memset(handles, 0, sizeof(handles));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("pipeline_ext launcher");

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	pe_shared->launcher_latch = MyLatch;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_launcher_exit, 0);

	pe_launcher_scan(true);
	last_scan = GetCurrentTimestamp();

	for (;;)
	{
		Oid			start[PE_MAX_DBS];
		int			nstart = 0;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		for (int i = 0; i < PE_MAX_DBS; i++)
		{
			pid_t		pid;

			if (handles[i] && GetBackgroundWorkerPid(handles[i], &pid) == BGWH_STOPPED)
			{
				pfree(handles[i]);
				handles[i] = NULL;
				LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
				if (pe_shared->dbs[i].wanted)
				{
					/* it died without saying it was done: retry with backoff */
					int			f = Min(pe_shared->dbs[i].failures, 6);

					pe_shared->dbs[i].failures++;
					pe_shared->dbs[i].restart_at = now + (int64) (1000 << f) * 1000;
				}
				pe_shared->dbs[i].pid = 0;
				pe_shared->dbs[i].latch = NULL;
				LWLockRelease(pe_shared->lock);
			}
		}

		LWLockAcquire(pe_shared->lock, LW_SHARED);
		for (int i = 0; i < PE_MAX_DBS; i++)
		{
			PeDatabase *db = &pe_shared->dbs[i];

			if (db->dboid != InvalidOid && db->wanted && handles[i] == NULL &&
				now >= db->restart_at && now >= db->hold_until)
				start[nstart++] = i;
		}
		LWLockRelease(pe_shared->lock);

		for (int k = 0; k < nstart; k++)
		{
			int			i = start[k];
			BackgroundWorker w;
			PeWorkerExtra extra;

			memset(&w, 0, sizeof(w));
			w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			w.bgw_start_time = BgWorkerStart_RecoveryFinished;
			w.bgw_restart_time = BGW_NEVER_RESTART;
			snprintf(w.bgw_library_name, BGW_MAXLEN, "pipeline_ext");
			snprintf(w.bgw_function_name, BGW_MAXLEN, "pe_manager_main");
			snprintf(w.bgw_name, BGW_MAXLEN, "pipeline_ext manager");
			snprintf(w.bgw_type, BGW_MAXLEN, "pipeline_ext manager");
			w.bgw_main_arg = Int32GetDatum(i);
			w.bgw_notify_pid = MyProcPid;
			extra.dboid = pe_shared->dbs[i].dboid;
			extra.incarnation = 0;
			memcpy(w.bgw_extra, &extra, sizeof(extra));
			if (!RegisterDynamicBackgroundWorker(&w, &handles[i]))
			{
				ereport(LOG,
						(errmsg("pipeline_ext: no free background worker slot for a manager; will retry"),
						 errhint("Raise max_worker_processes.")));
				LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
				pe_shared->dbs[i].restart_at = now + 5 * USECS_PER_SEC;
				LWLockRelease(pe_shared->lock);
				handles[i] = NULL;
			}
		}

		if (pe_ms_since(last_scan) >= PE_RESCAN_MS)
		{
			pe_launcher_scan(false);
			last_scan = GetCurrentTimestamp();
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PE_LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------------
 * Manager (one per database with consumers)
 * ---------------------------------------------------------------------
 */

typedef struct PeManagedConsumer
{
	char		name[NAMEDATALEN];
	int			parallelism;
	bool		enabled;
} PeManagedConsumer;

static int	manager_db = -1;
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
	BackgroundWorker w;
	PeWorkerExtra extra;
	BackgroundWorkerHandle *h;
	bool		ok;

	s->incarnation++;
	s->state = PE_SLOT_STARTING;
	s->stop_requested = false;
	s->pid = 0;
	s->error_exit = false;
	s->terminated = false;
	s->started_at = GetCurrentTimestamp();

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "pipeline_ext");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "pe_slot_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "pipeline_ext consumer %s/%d", s->consumer, s->slot);
	snprintf(w.bgw_type, BGW_MAXLEN, "pipeline_ext consumer");
	w.bgw_main_arg = Int32GetDatum(idx);
	w.bgw_notify_pid = MyProcPid;
	extra.dboid = s->dboid;
	extra.incarnation = s->incarnation;
	memcpy(w.bgw_extra, &extra, sizeof(extra));

	LWLockRelease(pe_shared->lock);
	ok = RegisterDynamicBackgroundWorker(&w, &h);
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

typedef struct PeErrorNote
{
	char		consumer[NAMEDATALEN];
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
			if (cons[c].enabled && strcmp(cons[c].name, s->consumer) == 0)
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
			PeSlot	   *s = pe_slot_entry(dboid, cons[c].name, k, true);
			int			idx;

			if (s == NULL && pe_reclaim_entry(dboid, cons, ncons))
				s = pe_slot_entry(dboid, cons[c].name, k, true);
			if (s == NULL)
			{
				ereport(LOG,
						(errmsg("pipeline_ext: no free consumer slot for %s/%d", cons[c].name, k),
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
					pe_start_slot(s);
					break;
				case PE_SLOT_FAILED:
					{
						int64		delay;

						if (s->error_exit && *nnotes < 64)
						{
							strlcpy(notes[*nnotes].consumer, s->consumer, NAMEDATALEN);
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
			if (strcmp(cons[c].name, s->consumer) == 0)
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
		if (installed)
		{
			int			rc;

			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			rc = SPI_execute("SELECT name, parallelism, enabled FROM pipeline.consumer", true, 0);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "could not read consumers: %s", SPI_result_code_string(rc));
			ncons = SPI_processed;
			cons = MemoryContextAllocZero(cxt, sizeof(PeManagedConsumer) * Max(ncons, 1));
			for (int i = 0; i < ncons; i++)
			{
				bool		isnull;
				char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

				strlcpy(cons[i].name, name, NAMEDATALEN);
				cons[i].parallelism = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
				cons[i].enabled = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
			}
			SPI_finish();
		}
		pe_xact_commit();

		live = pe_reconcile(MyDatabaseId, cons, ncons, notes, &nnotes);

		if (nnotes > 0)
		{
			/* keep the last error of each failed consumer in the catalog */
			pe_xact_begin();
			for (int i = 0; i < nnotes; i++)
				pe_consumer_record_error(notes[i].consumer, notes[i].error, false);
			pe_xact_commit();
		}
		/* lag figures of the consumers that have no running worker */
		if (ncons > 0)
		{
			char		(*names)[NAMEDATALEN] = MemoryContextAlloc(cxt, sizeof(*names) * ncons);

			for (int i = 0; i < ncons; i++)
				strlcpy(names[i], cons[i].name, NAMEDATALEN);
			pgstat_report_activity(STATE_RUNNING, "watching the lag of stopped consumers");
			pe_probe_round(MyDatabaseId, (const char (*)[NAMEDATALEN]) names, ncons);
		}
		pgstat_report_activity(STATE_IDLE, NULL);

		/* stay while the database has consumers, running or not */
		if (ncons == 0 && live == 0)
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

/* ---------------------------------------------------------------------
 * Slot worker
 * ---------------------------------------------------------------------
 */

#define PE_LOG_RING 32
#define PE_LOG_LEN 512

typedef struct PePartState
{
	int32		partition;
	bool		assigned;
	int64		stored;			/* next offset in pipeline.offsets; -1: none */
	int			shm;			/* index in the PeSlot's partitions[], -1: none */
	int64		start;			/* where it started without a stored offset (or a
								 * RD_KAFKA_OFFSET_ sentinel) */
	int64		asked_high;		/* high watermark the broker gave when asked; -1 */
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
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	int			npart;			/* partitions known in the topic */
	PePartState *parts;			/* indexed by partition number */
	TimestampTz last_discover;
	TimestampTz last_watermarks;
	TimestampTz last_asked;		/* last ListOffsets for idle partitions */
	SPIPlanPtr	offset_plan;
	SPIPlanPtr	dead_plan;
	bool		need_reseek;	/* offsets moved under us: seek again */
	uint32		reseeks;		/* last seen PeSlot.reseeks */
	rd_kafka_message_t **batch;	/* messages held, freed at exit too */
	int			batch_n;
	bool		target_stale;	/* the target table changed: describe it again */
	MemoryContext batch_cxt;
} PeSlotRun;

static PeSlotRun *run = NULL;
static char log_ring[PE_LOG_RING][PE_LOG_LEN];
static int	log_ring_level[PE_LOG_RING];
static volatile int log_ring_count = 0;

static void
pe_slot_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void) rk;
	if (log_ring_count >= PE_LOG_RING)
		return;
	snprintf(log_ring[log_ring_count], PE_LOG_LEN, "%s: %s", fac, buf);
	log_ring_level[log_ring_count] = level;
	log_ring_count++;
}

static void
pe_slot_drain_logs(void)
{
	rd_kafka_poll(run->rk, 0);
	for (int i = 0; i < log_ring_count; i++)
	{
		char	   *line = pe_redact(log_ring[i], run->secrets);

		ereport(log_ring_level[i] <= 4 ? LOG : DEBUG1,
				(errmsg_internal("pipeline_ext consumer %s/%d: %s", run->def->name, run->slot, line)));
		pfree(line);
	}
	log_ring_count = 0;
}

/*
 * After a commit: counters, the throughput of this period, and each
 * message's end-to-end latency (commit time minus its Kafka timestamp).
 */
static void
pe_slot_record_batch(rd_kafka_message_t **batch, int n, size_t bytes, int64 ndead)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	TimestampTz now = GetCurrentTimestamp();
	PeHistogram *h;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	s->messages += n;
	s->bytes += bytes;
	s->batches++;
	s->dead_letters += ndead;
	s->last_batch_at = now;
	s->period_msgs[pe_slot_period(s, now)] += n;
	if (s->latency_since == 0 || now - s->latency_since >= (int64) PE_LATENCY_WINDOW_SECS * USECS_PER_SEC)
	{
		/* a new window; the previous one stays readable */
		s->latency_cur = 1 - s->latency_cur;
		pe_hist_init(&s->latency[s->latency_cur]);
		s->latency_since = now;
	}
	h = &s->latency[s->latency_cur];
	LWLockRelease(pe_shared->lock);

	for (int i = 0; i < n; i++)
	{
		rd_kafka_timestamp_type_t type;
		int64		ts = rd_kafka_message_timestamp(batch[i], &type);

		if (ts > 0)
			pe_hist_add(h, now - pe_kafka_ms_to_timestamptz(ts));
	}
}

/*
 * The next offset to apply, as the views show it: the stored one, else
 * where the partition started (its log start for 'earliest'), so that a
 * consumer that starts at 'latest' is not shown behind by the whole log.
 * -1 when unknown.
 */
static int64
pe_slot_next_offset(int32 p, int64 low)
{
	PePartState *ps = &run->parts[p];

	if (ps->stored >= 0)
		return ps->stored;
	if (ps->start >= 0)
		return ps->start;
	if (ps->start == RD_KAFKA_OFFSET_BEGINNING && low >= 0)
		return low;
	return -1;
}

/*
 * The time of each batch partition's oldest unapplied message.  Before the
 * apply it is the partition's first message in the batch (everything
 * before it is applied).  After the commit the next message is not older
 * than the last one applied, which stands in until the next batch, or the
 * watermarks showing the partition caught up, say better.
 */
static void
pe_slot_note_oldest(rd_kafka_message_t **batch, int n, bool before_apply)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	TimestampTz ts[PE_SLOT_MAX_PARTITIONS];
	bool		seen[PE_SLOT_MAX_PARTITIONS];

	memset(seen, false, sizeof(seen));
	for (int j = 0; j < n; j++)
	{
		rd_kafka_message_t *m = batch[before_apply ? j : n - 1 - j];
		rd_kafka_timestamp_type_t type;
		int64		ms;
		int			k = m->partition < run->npart ? run->parts[m->partition].shm : -1;

		if (k < 0 || seen[k])
			continue;
		seen[k] = true;
		ms = rd_kafka_message_timestamp(m, &type);
		ts[k] = ms > 0 ? pe_kafka_ms_to_timestamptz(ms) : 0;
	}
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (int k = 0; k < s->npartitions; k++)
		if (seen[k] && ts[k] != 0)
			s->oldest[k] = ts[k];
	LWLockRelease(pe_shared->lock);
}

static void
pe_slot_publish_partitions(void)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	int			n = 0;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	pe_slot_reset_partitions(s, GetCurrentTimestamp());
	for (int p = 0; p < run->npart; p++)
	{
		run->parts[p].shm = -1;
		if (run->parts[p].assigned && n < PE_SLOT_MAX_PARTITIONS)
		{
			run->parts[p].shm = n;
			run->parts[p].moved_at = GetCurrentTimestamp();
			run->parts[p].asked_high = -1;
			s->partitions[n] = p;
			s->applied[n] = pe_slot_next_offset(p, -1);
			s->high[n] = -1;
			s->high_at[n] = 0;
			n++;
		}
	}
	s->npartitions = n;
	LWLockRelease(pe_shared->lock);
}

/*
 * librdkafka learns a partition's high watermark from fetch responses
 * only, so a partition that cannot be fetched (its leader unreachable,
 * fetches failing) would look caught up.  Every few seconds, the
 * partitions that have not moved for that long (idle, or stuck) are asked
 * for with one ListOffsets round, bounded in time; busy partitions never
 * are, so a healthy slot does not wait on this.
 */
static void
pe_slot_ask_watermarks(TimestampTz now)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);

	for (int p = 0; p < run->npart; p++)
		if (run->parts[p].assigned && now - run->parts[p].moved_at >= (int64) PE_ASK_EVERY_MS * 1000)
			rd_kafka_topic_partition_list_add(l, run->def->topic, p)->offset = RD_KAFKA_OFFSET_END;
	if (l->cnt > 0 &&
		rd_kafka_offsets_for_times(run->rk, l, PE_ASK_TIMEOUT_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		for (int i = 0; i < l->cnt; i++)
		{
			int32		p = l->elems[i].partition;

			if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && p < run->npart)
				run->parts[p].asked_high = Max(run->parts[p].asked_high, l->elems[i].offset);
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/*
 * Publish the committed offsets and the high watermarks of this slot's
 * partitions.  The watermarks come from librdkafka's cache, filled by the
 * fetch responses: no request to the broker, so readers never wait on it.
 */
static void
pe_slot_publish_watermarks(void)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	TimestampTz now = GetCurrentTimestamp();
	int64		lo[PE_SLOT_MAX_PARTITIONS];
	int64		hi[PE_SLOT_MAX_PARTITIONS];
	int			n = s->npartitions;	/* only this process writes it */

	if (now - run->last_asked >= (int64) PE_ASK_EVERY_MS * 1000)
	{
		pe_slot_ask_watermarks(now);
		run->last_asked = now;
	}
	for (int k = 0; k < n; k++)
	{
		int32		p = s->partitions[k];

		if (rd_kafka_get_watermark_offsets(run->rk, run->def->topic, p,
										   &lo[k], &hi[k]) != RD_KAFKA_RESP_ERR_NO_ERROR)
			hi[k] = -1;
		if (p < run->npart)
			hi[k] = Max(hi[k], run->parts[p].asked_high);
	}
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	{
		int64		lag = 0;
		bool		known = false;

		for (int k = 0; k < n && k < s->npartitions; k++)
		{
			int32		p = s->partitions[k];

			if (p < run->npart && s->applied[k] != pe_slot_next_offset(p, lo[k]))
			{
				s->applied[k] = pe_slot_next_offset(p, lo[k]);
				s->progress_at[k] = now;
				run->parts[p].moved_at = now;
			}
			if (hi[k] >= 0)
			{
				s->high[k] = hi[k];
				s->high_at[k] = now;
				lag += Max(hi[k] - Max(s->applied[k], 0), 0);
				known = true;
			}
		}
		if (known)
			s->period_lag[pe_slot_period(s, now)] = lag;
		pe_slot_note_watermarks(s, now);
	}
	LWLockRelease(pe_shared->lock);
}

static void
pe_slot_grow(int npart)
{
	if (npart <= run->npart)
		return;
	run->parts = run->parts
		? repalloc(run->parts, sizeof(PePartState) * npart)
		: palloc(sizeof(PePartState) * npart);
	for (int p = run->npart; p < npart; p++)
	{
		run->parts[p].partition = p;
		run->parts[p].assigned = false;
		run->parts[p].stored = -1;
		run->parts[p].shm = -1;
		run->parts[p].asked_high = -1;
		run->parts[p].moved_at = 0;
		run->parts[p].start = RD_KAFKA_OFFSET_INVALID;
	}
	run->npart = npart;
}

/* Read the stored offsets of this consumer's partitions. */
static void
pe_slot_load_offsets(void)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = CStringGetTextDatum(run->def->name);
	rc = SPI_execute_with_args("SELECT \"partition\", next_offset FROM pipeline.offsets "
							   "WHERE consumer OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read offsets: %s", SPI_result_code_string(rc));
	for (int p = 0; p < run->npart; p++)
		run->parts[p].stored = -1;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		o = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (p >= run->npart)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			pe_slot_grow(p + 1);
			MemoryContextSwitchTo(old);
		}
		run->parts[p].stored = o;
	}
	SPI_finish();
	pe_xact_commit();
}

static int64
pe_kafka_timestamp_ms(const char *iso)
{
	TimestampTz ts = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(iso),
															 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));

	return ts / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

/*
 * Where a partition with no stored offset starts: 'earliest' is the
 * beginning; 'latest' and timestamps are resolved now, so that a restart
 * before the first commit does not move the start.
 */
static int64
pe_slot_start_offset(int32 p, bool new_partition)
{
	const char *so = run->def->start_offset;
	int64		lo,
				hi;
	rd_kafka_resp_err_t err;

	if (new_partition || strcmp(so, "earliest") == 0)
		return RD_KAFKA_OFFSET_BEGINNING;
	if (strcmp(so, "latest") == 0)
	{
		err = rd_kafka_query_watermark_offsets(run->rk, run->def->topic, p, &lo, &hi, 10000);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not look up the end of partition %d of topic \"%s\"", p, run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
		return hi;
	}
	else
	{
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		int64		o;

		rd_kafka_topic_partition_list_add(l, run->def->topic, p)->offset = pe_kafka_timestamp_ms(so);
		err = rd_kafka_offsets_for_times(run->rk, l, 10000);
		o = l->elems[0].offset;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			err = l->elems[0].err;
		rd_kafka_topic_partition_list_destroy(l);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not look up offsets by time in topic \"%s\"", run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
		if (o < 0)
			return RD_KAFKA_OFFSET_END;
		return o;
	}
}

/* Partition count of the topic, or -1 if the broker did not answer in time. */
static int
pe_slot_partition_count(int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(run->rk, run->def->topic, NULL);
	rd_kafka_resp_err_t err;
	int			n = -1;

	err = rd_kafka_metadata(run->rk, 0, rkt, &md, timeout_ms);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1)
	{
		if (md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			n = md->topics[0].partition_cnt;
		else if (md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
			n = 0;
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return n;
}

/* Offset to resume a partition from, for an assignment. */
static int64
pe_slot_resume_offset(int32 p, bool new_partition)
{
	int64		o = RD_KAFKA_OFFSET_INVALID;	/* the group's committed offset */

	if (run->exactly_once || run->def->group_id == NULL)
	{
		if (run->parts[p].stored >= 0)
			return run->parts[p].stored;
		if (run->exactly_once)
			o = pe_slot_start_offset(p, new_partition);
	}
	run->parts[p].start = o;
	return o;
}


/*
 * Manual assignment: assign every partition p with p % parallelism = slot
 * not assigned yet (all of them when reassigning).
 */
static void
pe_slot_assign_manual(bool reassign, bool new_partitions)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(run->npart);
	rd_kafka_resp_err_t err;
	rd_kafka_error_t *error = NULL;

	for (int p = 0; p < run->npart; p++)
	{
		if (p % run->def->parallelism != run->slot)
			continue;
		if (run->parts[p].assigned && !reassign)
			continue;
		rd_kafka_topic_partition_list_add(l, run->def->topic, p)->offset =
			pe_slot_resume_offset(p, new_partitions);
		run->parts[p].assigned = true;
	}
	if (reassign)
		err = rd_kafka_assign(run->rk, l);
	else
	{
		err = RD_KAFKA_RESP_ERR_NO_ERROR;
		if (l->cnt > 0)
			error = rd_kafka_incremental_assign(run->rk, l);
		if (error)
		{
			err = rd_kafka_error_code(error);
			rd_kafka_error_destroy(error);
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not assign partitions of topic \"%s\"", run->def->topic),
				 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	pe_slot_publish_partitions();
}

static void
pe_slot_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
					 rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
	(void) opaque;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		for (int i = 0; i < partitions->cnt; i++)
		{
			int32		p = partitions->elems[i].partition;

			if (p < run->npart)
			{
				run->parts[p].assigned = true;
				/* exactly once: the offset stored in PostgreSQL */
				if (run->exactly_once)
					partitions->elems[i].offset = run->parts[p].stored >= 0
						? run->parts[p].stored
						: (strcmp(run->def->start_offset, "latest") == 0 ? RD_KAFKA_OFFSET_END
						   : RD_KAFKA_OFFSET_BEGINNING);
			}
		}
		rd_kafka_assign(rk, partitions);
		/* the stored offsets may be older than what another member applied */
		run->need_reseek = run->exactly_once;
	}
	else
	{
		for (int p = 0; p < run->npart; p++)
			run->parts[p].assigned = false;
		rd_kafka_assign(rk, NULL);
	}
}

static void
pe_slot_relcache_cb(Datum arg, Oid relid)
{
	(void) arg;
	if (run && run->target && (relid == InvalidOid || relid == run->def->target))
		run->target_stale = true;
}

/*
 * At exit: give back the messages we hold, and leave the group so that its
 * partitions move at once.  The handle itself is not destroyed: the process
 * is ending, and rd_kafka_destroy() can wait without bound for a broker.
 */
static void
pe_slot_close_kafka(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (run == NULL || run->rk == NULL)
		return;
	for (int i = 0; i < run->batch_n; i++)
		rd_kafka_message_destroy(run->batch[i]);
	run->batch_n = 0;
	if (run->def->group_id)
	{
		rd_kafka_queue_t *q = rd_kafka_queue_new(run->rk);
		rd_kafka_error_t *e = rd_kafka_consumer_close_queue(run->rk, q);
		TimestampTz start = GetCurrentTimestamp();

		if (e)
			rd_kafka_error_destroy(e);
		else
			while (!rd_kafka_consumer_closed(run->rk) && pe_ms_since(start) < 3000)
			{
				rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);

				if (ev)
				{
					if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
						rd_kafka_assign(run->rk, NULL);
					rd_kafka_event_destroy(ev);
				}
			}
	}
}

static void
pe_slot_connect(int npart_hint)
{
	List	   *defaults = pe_consumer_defaults(run->def, npart_hint, run->dbname);
	rd_kafka_conf_t *conf = pe_kafka_conf(run->conn, defaults);
	char		errstr[512];

	if (rd_kafka_conf_set(conf, "log.queue", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		elog(ERROR, "could not set log.queue: %s", errstr);
	rd_kafka_conf_set_log_cb(conf, pe_slot_log_cb);
	if (run->def->group_id)
		rd_kafka_conf_set_rebalance_cb(conf, pe_slot_rebalance_cb);
	run->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (run->rk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka consumer for connection \"%s\"", run->conn->name),
				 errdetail("%s", pe_redact(errstr, run->secrets))));
	rd_kafka_set_log_queue(run->rk, NULL);
	run->queue = rd_kafka_queue_get_consumer(run->rk);
}

/* Look for partitions added to the topic; assign this slot's share. */
static void
pe_slot_discover(bool first)
{
	int			n = pe_slot_partition_count(first ? 10000 : 1000);
	MemoryContext old;

	run->last_discover = GetCurrentTimestamp();
	if (n < 0)
	{
		if (first)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the partitions of topic \"%s\"", run->def->topic),
					 errhint("Check that the brokers of connection \"%s\" are reachable.", run->conn->name)));
		return;
	}
	if (n == 0)
	{
		if (first)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("topic \"%s\" does not exist on connection \"%s\"", run->def->topic, run->conn->name),
					 errhint("Create the topic, then start the consumer again.")));
		return;
	}
	if (n <= run->npart && !first)
		return;
	if (!first)
		ereport(LOG,
				(errmsg("pipeline_ext consumer %s/%d: topic \"%s\" now has %d partitions",
						run->def->name, run->slot, run->def->topic, n)));
	old = MemoryContextSwitchTo(TopMemoryContext);
	pe_slot_grow(n);
	MemoryContextSwitchTo(old);
	if (run->def->group_id == NULL)
		pe_slot_assign_manual(first, !first);
}

static void
pe_slot_prepare_catalog_plans(void)
{
	Oid			off_types[4] = {TEXTOID, INT4OID, INT8OID, INT8OID};
	Oid			dl_types[13] = {TEXTOID, OIDOID, TEXTOID, INT4OID, INT8OID, BYTEAOID, BYTEAOID,
	JSONBOID, INT8OID, TEXTOID, TEXTOID};

	/*
	 * The fence: the row is written only if it still holds what this slot
	 * expects ($4; NULL when it expects no row).
	 */
	run->offset_plan = SPI_prepare("INSERT INTO pipeline.offsets AS o (consumer, \"partition\", next_offset) "
								   "VALUES ($1, $2, $3) ON CONFLICT (consumer, \"partition\") DO UPDATE "
								   "SET next_offset = EXCLUDED.next_offset, updated_at = pg_catalog.now() "
								   "WHERE o.next_offset OPERATOR(pg_catalog.=) $4 OR $4 OPERATOR(pg_catalog.=) -2",
								   4, off_types);
	if (run->offset_plan == NULL)
		elog(ERROR, "could not prepare the offsets statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(run->offset_plan);

	run->dead_plan = SPI_prepare("INSERT INTO pipeline.dead_letters (consumer, owner, topic, \"partition\", \"offset\", "
								 "key, value, headers, \"timestamp\", error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
								 "CASE WHEN $9 OPERATOR(pg_catalog.>=) 0 THEN pg_catalog.to_timestamp($9 OPERATOR(pg_catalog./) 1000.0) END, "
								 "$10, $11)",
								 11, dl_types);
	if (run->dead_plan == NULL)
		elog(ERROR, "could not prepare the dead letter statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(run->dead_plan);
}

static void
pe_slot_init(void)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	char		name[NAMEDATALEN];
	MemoryContext old;

	LWLockAcquire(pe_shared->lock, LW_SHARED);
	strlcpy(name, s->consumer, NAMEDATALEN);
	run->slot = s->slot;
	LWLockRelease(pe_shared->lock);

	pe_xact_begin();
	old = MemoryContextSwitchTo(TopMemoryContext);
	run->def = pe_consumer_read(name, true);
	if (run->def == NULL || !run->def->enabled)
	{
		MemoryContextSwitchTo(old);
		pe_xact_commit();
		proc_exit(0);
	}
	run->exactly_once = strcmp(run->def->delivery, "exactly_once") == 0;
	run->dbname = get_database_name(MyDatabaseId);
	run->conn = pe_connection_lookup(run->def->connection, false);
	if (!superuser_arg(run->def->owner) && !has_privs_of_role(run->def->owner, run->conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner of consumer \"%s\" may no longer use connection \"%s\"", name, run->conn->name),
				 errhint("Grant the consumer's owner membership in the connection's owner role, or recreate the consumer.")));
	run->secrets = pe_connection_secrets(run->conn);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* SPI_connect switched to its own context, freed by SPI_finish */
	MemoryContextSwitchTo(TopMemoryContext);
	run->target = pe_target_open(run->def, false);
	pe_slot_prepare_catalog_plans();
	SPI_finish();
	MemoryContextSwitchTo(old);
	pe_xact_commit();

	old = MemoryContextSwitchTo(TopMemoryContext);
	pe_slot_load_offsets();

	pe_slot_connect(0);
	if (run->def->group_id)
	{
		rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
		rd_kafka_resp_err_t err;

		pe_slot_discover(true);
		rd_kafka_topic_partition_list_add(topics, run->def->topic, RD_KAFKA_PARTITION_UA);
		err = rd_kafka_subscribe(run->rk, topics);
		rd_kafka_topic_partition_list_destroy(topics);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not subscribe to topic \"%s\"", run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	}
	else
		pe_slot_discover(true);
	MemoryContextSwitchTo(old);
	before_shmem_exit(pe_slot_close_kafka, 0);

	/* a 4 MB block kept across resets: no page faults for every batch */
	run->batch_cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext batch",
										   4 * 1024 * 1024, 1024 * 1024, 16 * 1024 * 1024);
	CacheRegisterRelcacheCallback(pe_slot_relcache_cb, (Datum) 0);
}

/* After the stored offsets moved under us: read them again and seek. */
static void
pe_slot_reseek(void)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	pe_slot_load_offsets();
	if (run->def->group_id == NULL)
	{
		/* re-assign: librdkafka drops what it prefetched */
		pe_slot_assign_manual(true, false);
	}
	else
	{
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(run->npart);
		rd_kafka_error_t *e;

		for (int p = 0; p < run->npart; p++)
			if (run->parts[p].assigned)
				rd_kafka_topic_partition_list_add(l, run->def->topic, p)->offset =
					run->parts[p].stored >= 0 ? run->parts[p].stored : RD_KAFKA_OFFSET_BEGINNING;
		if (l->cnt > 0)
		{
			e = rd_kafka_seek_partitions(run->rk, l, 5000);
			if (e)
			{
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: seek failed: %s",
								run->def->name, run->slot, rd_kafka_error_string(e))));
				rd_kafka_error_destroy(e);
			}
		}
		rd_kafka_topic_partition_list_destroy(l);
		pe_slot_publish_partitions();
	}
	run->need_reseek = false;
	MemoryContextSwitchTo(old);
}

/* The FATAL message the worker ends with, for pe_slot_exit to keep. */
static char slot_fatal[PE_ERROR_LEN];
static bool slot_fatal_terminated = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
pe_slot_emit_log(ErrorData *edata)
{
	if (edata->elevel >= FATAL && slot_fatal[0] == '\0' && edata->message)
	{
		strlcpy(slot_fatal, edata->message, sizeof(slot_fatal));
		slot_fatal_terminated = (edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN);
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
pe_slot_exit(int code, Datum arg)
{
	int			idx = DatumGetInt32(arg);
	PeSlot	   *s = &pe_shared->slots[idx];

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
	{
		/*
		 * FATAL exits do not unwind to pe_slot_main's PG_CATCH: a
		 * termination nobody in pipeline_ext asked for (pg_terminate_backend)
		 * is kept as the last error here, and the slot restarts with backoff.
		 */
		if (code != 0 && !s->error_exit && !s->stop_requested)
		{
			strlcpy(s->last_error, slot_fatal[0] ? slot_fatal : "worker exited unexpectedly",
					sizeof(s->last_error));
			s->last_error_at = GetCurrentTimestamp();
			s->error_exit = true;
			s->terminated = slot_fatal_terminated;
		}
		s->pid = 0;
		s->state = s->error_exit ? PE_SLOT_FAILED : PE_SLOT_STOPPED;
		/* the partitions' figures stay, for the manager to keep fresh */
	}
	LWLockRelease(pe_shared->lock);
}

static void
pe_slot_record_error(const char *msg)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	strlcpy(s->last_error, msg, sizeof(s->last_error));
	s->last_error_at = GetCurrentTimestamp();
	LWLockRelease(pe_shared->lock);
}

/* Commit the next offsets to the Kafka group: sync, or best effort. */
static rd_kafka_resp_err_t
pe_slot_kafka_commit(rd_kafka_message_t **msgs, int n, bool sync)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
	rd_kafka_resp_err_t err;

	for (int i = 0; i < n; i++)
	{
		rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_find(l, run->def->topic, msgs[i]->partition);

		if (tp == NULL)
			tp = rd_kafka_topic_partition_list_add(l, run->def->topic, msgs[i]->partition);
		tp->offset = Max(tp->offset, msgs[i]->offset + 1);
	}
	err = rd_kafka_commit(run->rk, l, sync ? 0 : 1);
	rd_kafka_topic_partition_list_destroy(l);
	return err;
}

typedef enum PeBatchOutcome
{
	PE_BATCH_DONE,
	PE_BATCH_CONFLICT,			/* stored offsets moved: seek again */
	PE_BATCH_STOP				/* on_error = 'stop' hit a bad message */
} PeBatchOutcome;

static PeBatchOutcome
pe_slot_apply_batch(rd_kafka_message_t **rkm, int n, int64 *ndead, char **stop_error)
{
	PeMessage  *msgs = palloc0(sizeof(PeMessage) * n);
	PeBatchResult res;
	ListCell   *lc;
	int64		next[PE_SLOT_MAX_PARTITIONS];
	int32		pids[PE_SLOT_MAX_PARTITIONS];
	int			np = 0;
	bool		conflict = false;

	for (int i = 0; i < n; i++)
	{
		rd_kafka_message_t *m = rkm[i];
		rd_kafka_timestamp_type_t tstype;
		int			k;

		msgs[i].topic = run->def->topic;
		msgs[i].partition = m->partition;
		msgs[i].offset = m->offset;
		msgs[i].timestamp_ms = rd_kafka_message_timestamp(m, &tstype);
		msgs[i].key = m->key;
		msgs[i].key_len = m->key_len;
		msgs[i].value = m->payload;
		msgs[i].value_len = m->len;
		if (rd_kafka_message_headers(m, &msgs[i].hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
			msgs[i].hdrs = NULL;
		for (k = 0; k < np; k++)
			if (pids[k] == m->partition)
				break;
		if (k == np)
		{
			pids[np] = m->partition;
			next[np++] = m->offset + 1;
		}
		else
			next[k] = Max(next[k], m->offset + 1);
	}

	/* after ALTER TABLE: describe the target again (types, columns, keys) */
	AcceptInvalidationMessages();
	if (run->target_stale)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		run->target_stale = false;
		pe_target_close(run->target);
		run->target = pe_target_open(run->def, false);
		MemoryContextSwitchTo(old);
	}

	memset(&res, 0, sizeof(res));
	pe_target_apply(run->target, msgs, n, &res);

	if (res.dead != NIL && run->def->stop_on_error)
	{
		PeDeadLetter *dl = linitial(res.dead);

		*stop_error = psprintf("message at partition %d offset " INT64_FORMAT ": %s",
							   msgs[dl->msg_index].partition, msgs[dl->msg_index].offset, dl->error);
		return PE_BATCH_STOP;
	}

	foreach(lc, res.dead)
	{
		PeDeadLetter *dl = lfirst(lc);
		PeMessage  *m = &msgs[dl->msg_index];
		Datum		v[11];
		char		nl[11];
		Jsonb	   *h;

		memset(nl, ' ', sizeof(nl));
		v[0] = CStringGetTextDatum(run->def->name);
		v[1] = ObjectIdGetDatum(run->def->owner);
		v[2] = CStringGetTextDatum(m->topic);
		v[3] = Int32GetDatum(m->partition);
		v[4] = Int64GetDatum(m->offset);
		if (m->key)
			v[5] = pe_bytes_to_bytea(m->key, m->key_len);
		else
			nl[5] = 'n';
		if (m->value)
			v[6] = pe_bytes_to_bytea(m->value, m->value_len);
		else
			nl[6] = 'n';
		h = NULL;
		PG_TRY();
		{
			h = pe_message_headers(m);
		}
		PG_CATCH();
		{
			/* headers that are not text are kept hex-encoded; anything else: none */
			FlushErrorState();
			h = NULL;
		}
		PG_END_TRY();
		if (h)
			v[7] = JsonbPGetDatum(h);
		else
			nl[7] = 'n';
		v[8] = Int64GetDatum(m->timestamp_ms);
		v[9] = CStringGetTextDatum(dl->error);
		v[10] = CStringGetTextDatum(dl->sqlstate);
		if (SPI_execute_plan(run->dead_plan, v, nl, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record a dead letter");
	}
	*ndead = list_length(res.dead);

	for (int k = 0; k < np; k++)
	{
		Datum		v[4];
		char		nl[4] = {' ', ' ', ' ', ' '};
		int32		p = pids[k];
		int64		expected = (p < run->npart) ? run->parts[p].stored : -1;

		v[0] = CStringGetTextDatum(run->def->name);
		v[1] = Int32GetDatum(p);
		v[2] = Int64GetDatum(next[k]);
		if (!run->exactly_once)
			v[3] = Int64GetDatum(-2);	/* no fence: Kafka holds the offsets */
		else if (expected >= 0)
			v[3] = Int64GetDatum(expected);
		else
			nl[3] = 'n';
		if (SPI_execute_plan(run->offset_plan, v, nl, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write offsets");
		if (SPI_processed != 1)
			conflict = true;
	}
	if (conflict)
		return PE_BATCH_CONFLICT;

	for (int k = 0; k < np; k++)
		if (pids[k] < run->npart)
			run->parts[pids[k]].stored = next[k];
	return PE_BATCH_DONE;
}

static bool
pe_error_is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_QUERY_CANCELED ||
		sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * One attempt at applying a batch.  False after a transient error (cancel,
 * serialization failure, deadlock), which is logged and rolled back; other
 * errors propagate and end the worker.
 */
static bool
pe_slot_try_batch(rd_kafka_message_t **batch, int n, PeBatchOutcome *outcome,
				  int64 *ndead, char **stop_error)
{
	MemoryContext old = MemoryContextSwitchTo(run->batch_cxt);
	volatile bool ok = true;

	PG_TRY();
	{
		if (strcmp(run->def->delivery, "at_most_once") == 0)
		{
			rd_kafka_resp_err_t err = pe_slot_kafka_commit(batch, n, true);

			if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not commit offsets to the Kafka group before applying: %s",
								rd_kafka_err2str(err))));
		}
		pe_xact_begin();
		pgstat_report_activity(STATE_RUNNING, "applying a batch");
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* decoded rows go to the batch context, which keeps its memory */
		MemoryContextSwitchTo(run->batch_cxt);
		*outcome = pe_slot_apply_batch(batch, n, ndead, stop_error);
		SPI_finish();
		PopActiveSnapshot();
		if (*outcome == PE_BATCH_DONE)
			CommitTransactionCommand();
		else
			AbortCurrentTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		if (!pe_error_is_transient(edata->sqlerrcode) || ProcDiePending)
		{
			RESUME_INTERRUPTS();
			PG_RE_THROW();
		}
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	if (*stop_error)
		*stop_error = pstrdup(*stop_error);
	MemoryContextReset(run->batch_cxt);
	return ok;
}

/* The slot's main loop: collect a batch, apply it, commit, repeat. */
static void
pe_slot_loop(const char *activity)
{
	PeSlot	   *s = &pe_shared->slots[run->slot_index];
	rd_kafka_message_t **batch;
	int			batch_cap;

	(void) activity;
	batch_cap = run->def->batch_size;
	batch = MemoryContextAlloc(TopMemoryContext, sizeof(rd_kafka_message_t *) * batch_cap);
	run->batch = batch;

	for (;;)
	{
		int			n = 0;
		size_t		bytes = 0;
		TimestampTz first_at = 0;
		int64		ndead = 0;
		char	   *stop_error = NULL;
		PeBatchOutcome outcome = PE_BATCH_DONE;

		/* collect a batch */
		pgstat_report_activity(STATE_IDLE, NULL);
		while (n < batch_cap && bytes < PE_BATCH_MAX_BYTES)
		{
			int			slice = PE_SLICE_MS;
			ssize_t		got;

			/*
			 * A cancel aborts the batch being applied (which is then
			 * retried); while collecting there is nothing to cancel.
			 */
			if (QueryCancelPending)
			{
				QueryCancelPending = false;
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: no batch is being applied; cancel request ignored",
								run->def->name, run->slot)));
			}
			CHECK_FOR_INTERRUPTS();
			if (!PostmasterIsAlive())
				proc_exit(1);
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (n > 0)
			{
				int64		left = run->def->batch_timeout_ms - pe_ms_since(first_at);

				if (left <= 0)
					break;
				slice = Min(slice, (int) left);
			}
			got = rd_kafka_consume_batch_queue(run->queue, slice, batch + n, batch_cap - n);
			if (got < 0)
				got = 0;
			for (ssize_t i = 0; i < got; i++)
			{
				rd_kafka_message_t *m = batch[n + i];
				int32		p = m->partition;

				if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
				{
					if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
						ereport(LOG,
								(errmsg("pipeline_ext consumer %s/%d: %s", run->def->name, run->slot,
										pe_redact(rd_kafka_message_errstr(m), run->secrets))));
					rd_kafka_message_destroy(m);
					batch[n + i] = NULL;
					continue;
				}
				/* revoked meanwhile, or already applied (offset below the stored one) */
				if (p >= run->npart || !run->parts[p].assigned ||
					(run->parts[p].stored >= 0 && m->offset < run->parts[p].stored))
				{
					rd_kafka_message_destroy(m);
					batch[n + i] = NULL;
					continue;
				}
			}
			/* compact out the dropped ones */
			{
				int			w = n;

				for (ssize_t i = 0; i < got; i++)
					if (batch[n + i] != NULL)
					{
						batch[w] = batch[n + i];
						bytes += batch[w]->len + batch[w]->key_len;
						w++;
					}
				if (w > n && first_at == 0)
					first_at = GetCurrentTimestamp();
				n = w;
				run->batch_n = n;
			}
			pe_slot_drain_logs();
			if (s->reseeks != run->reseeks)
			{
				/* reset_offsets() moved the stored offsets */
				LWLockAcquire(pe_shared->lock, LW_SHARED);
				run->reseeks = s->reseeks;
				LWLockRelease(pe_shared->lock);
				run->need_reseek = true;
			}
			if (run->need_reseek)
			{
				for (int i = 0; i < n; i++)
					rd_kafka_message_destroy(batch[i]);
				n = 0;
				run->batch_n = 0;
				bytes = 0;
				first_at = 0;
				pe_slot_reseek();
			}
			if (n == 0 && pe_ms_since(run->last_watermarks) >= 1000)
			{
				pe_slot_publish_watermarks();
				run->last_watermarks = GetCurrentTimestamp();
			}
			if (pe_ms_since(run->last_discover) >= PE_DISCOVER_MS)
			{
				pe_slot_discover(false);
				if (n == 0)
					continue;
			}
		}
		if (n == 0)
			continue;

		/* apply it, in one transaction, retrying transient errors */
		pe_slot_note_oldest(batch, n, true);
		elog(DEBUG2, "pipeline_ext consumer %s/%d: batch of %d messages collected in %lld ms",
			 run->def->name, run->slot, n, (long long) pe_ms_since(first_at));
		while (!pe_slot_try_batch(batch, n, &outcome, &ndead, &stop_error))
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			QueryCancelPending = false; /* the retry answers it */
			CHECK_FOR_INTERRUPTS();
		}

		if (outcome == PE_BATCH_STOP)
		{
			char	   *msg = psprintf("stopped on error: %s", stop_error);

			ereport(LOG,
					(errmsg("pipeline_ext consumer %s/%d stopped: %s", run->def->name, run->slot, stop_error)));
			pe_xact_begin();
			pe_consumer_record_error(run->def->name, msg, true);
			pe_xact_commit();
			pe_slot_record_error(msg);
			pe_wake_manager(MyDatabaseId);
			proc_exit(0);
		}
		if (outcome == PE_BATCH_CONFLICT)
		{
			ereport(LOG,
					(errmsg("pipeline_ext consumer %s/%d: stored offsets moved (reset_offsets or another slot); seeking to them",
							run->def->name, run->slot)));
			for (int i = 0; i < n; i++)
				rd_kafka_message_destroy(batch[i]);
			run->batch_n = 0;
			pe_slot_reseek();
			continue;
		}

		/* committed: only now does the batch count */
		pe_slot_record_batch(batch, n, bytes, ndead);
		pe_slot_note_oldest(batch, n, false);
		pe_slot_publish_watermarks();
		run->last_watermarks = GetCurrentTimestamp();

		{
			rd_kafka_resp_err_t err = pe_slot_kafka_commit(batch, n,
														   strcmp(run->def->delivery, "at_least_once") == 0);

			if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET &&
				strcmp(run->def->delivery, "at_least_once") == 0)
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: could not commit offsets to the Kafka group: %s",
								run->def->name, run->slot, rd_kafka_err2str(err))));
		}
		for (int i = 0; i < n; i++)
			rd_kafka_message_destroy(batch[i]);
		run->batch_n = 0;
	}
}

void
pe_slot_main(Datum arg)
{
	int			idx = DatumGetInt32(arg);
	PeWorkerExtra extra;
	PeSlot	   *s = &pe_shared->slots[idx];
	char		activity[NAMEDATALEN + 32];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (s->dboid != extra.dboid || s->incarnation != extra.incarnation || s->state != PE_SLOT_STARTING)
	{
		LWLockRelease(pe_shared->lock);
		proc_exit(0);
	}
	s->pid = MyProcPid;
	s->state = PE_SLOT_RUNNING;
	s->error_exit = false;
	s->terminated = false;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_slot_exit, Int32GetDatum(idx));
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = pe_slot_emit_log;

	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);

	run = MemoryContextAllocZero(TopMemoryContext, sizeof(PeSlotRun));
	run->slot_index = idx;
	run->reseeks = s->reseeks;

	PG_TRY();
	{
		pe_slot_init();
		snprintf(activity, sizeof(activity), "pipeline_ext consumer %s/%d", run->def->name, run->slot);
		pgstat_report_appname(activity);
		pe_slot_loop(activity);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		edata = CopyErrorData();
		MemoryContextSwitchTo(old);
		if (edata->sqlerrcode != ERRCODE_ADMIN_SHUTDOWN)
		{
			LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
			strlcpy(s->last_error, edata->message, sizeof(s->last_error));
			s->last_error_at = GetCurrentTimestamp();
			s->error_exit = true;
			LWLockRelease(pe_shared->lock);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
}

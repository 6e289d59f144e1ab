/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: a static background worker, connected to no database,
 *	  that keeps one manager (manager.c) running in each database that wants
 *	  one.  At server start every database is asked once; a manager that finds
 *	  no consumer leaves, and the consumer functions wake the launcher again.
 *	  Also the DROP DATABASE release: the workers of a database leave before
 *	  the command needs it to itself.
 *
 * IDENTIFICATION
 *	  src/launcher.c
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
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "workers.h"

#define PE_LAUNCHER_NAP_MS 1000
#define PE_RESCAN_MS 60000
#define PE_RELEASE_HOLD_MS 10000
#define PE_RELEASE_WAIT_MS 5000

/*
 * Start a dynamic worker of ours (a manager, a slot, a relay) that
 * connects to dboid: the function, its name and type as
 * pg_stat_activity shows them, bgw_main_arg, and the incarnation it is
 * told in bgw_extra.  Never restarted by the postmaster (its starter
 * does, with backoff); its starter is notified when it stops.
 */
bool
pe_start_worker(const char *function, const char *name, const char *type, int arg,
				Oid dboid, uint32 incarnation, BackgroundWorkerHandle **handle)
{
	BackgroundWorker w;
	PeWorkerExtra extra;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "pipeline_ext");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(w.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(w.bgw_type, BGW_MAXLEN, "%s", type);
	w.bgw_main_arg = Int32GetDatum(arg);
	w.bgw_notify_pid = MyProcPid;
	extra.dboid = dboid;
	extra.incarnation = incarnation;
	memcpy(w.bgw_extra, &extra, sizeof(extra));
	return RegisterDynamicBackgroundWorker(&w, handle);
}

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
		pid_t		pids[2 * PE_MAX_DBS + 1024];
		int			npids = 0;

		LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < PE_MAX_DBS; i++)
			if (pe_shared->dbs[i].dboid == dboid)
			{
				pe_shared->dbs[i].hold_until = GetCurrentTimestamp() + PE_RELEASE_HOLD_MS * 1000;
				if (pe_shared->dbs[i].pid != 0)
					pids[npids++] = pe_shared->dbs[i].pid;
				if (pe_shared->dbs[i].relay.pid != 0)
					pids[npids++] = pe_shared->dbs[i].relay.pid;
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
			if (!pe_start_worker("pe_manager_main", "pipeline_ext manager", "pipeline_ext manager",
								 i, pe_shared->dbs[i].dboid, 0, &handles[i]))
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

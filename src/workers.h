/*-------------------------------------------------------------------------
 *
 * workers.h
 *	  The background workers: the launcher (launcher.c), one manager per
 *	  database with consumers (manager.c, with probe.c for the lag of
 *	  stopped consumers), and one worker per consumer slot (slot.c).
 *
 * IDENTIFICATION
 *	  src/workers.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_WORKERS_H
#define PE_WORKERS_H

#include "pipeline_ext.h"

#include "access/xact.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* What a dynamic worker is told in bgw_extra. */
typedef struct PeWorkerExtra
{
	Oid			dboid;
	uint32		incarnation;
} PeWorkerExtra;

/*
 * A background worker's transaction around catalog and SPI work: a
 * statement start time (for now() and the logs) and a snapshot.
 */
static inline void
pe_xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static inline void
pe_xact_commit(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * A worker's statements must not depend on anybody's search_path: like
 * logical replication's apply worker, ours run with an empty one (only
 * pg_catalog), so that nothing planted in a schema on a default path
 * (an operator, a function) stands in for what we mean, and column
 * defaults are deparsed with their schemas.
 */
static inline void
pe_pin_search_path(void)
{
	SetConfigOption("search_path", "", PGC_SUSET, PGC_S_OVERRIDE);
}

static inline int64
pe_ms_since(TimestampTz t)
{
	return (GetCurrentTimestamp() - t) / 1000;
}

/* launcher.c */
struct BackgroundWorkerHandle;
extern bool pe_start_worker(const char *function, const char *name, const char *type, int arg,
							Oid dboid, uint32 incarnation, struct BackgroundWorkerHandle **handle);
extern void pe_register_launcher(void);
extern void pe_wake_manager(Oid dboid);
extern void pe_release_database(Oid dboid);
extern PGDLLEXPORT void pe_launcher_main(Datum arg);

/* manager.c */
extern PGDLLEXPORT void pe_manager_main(Datum arg);

/* probe.c: fresh lag figures for consumers that have no running worker */
struct PeConsumerRef;
extern void pe_probe_round(Oid dboid, const struct PeConsumerRef *consumers, int n);

/* slot.c */
extern PGDLLEXPORT void pe_slot_main(Datum arg);

#endif							/* PE_WORKERS_H */

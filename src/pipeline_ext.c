/*-------------------------------------------------------------------------
 *
 * pipeline_ext.c
 *	  Module entry point: GUCs, shared memory hooks, and the utility hook
 *	  that lets DROP DATABASE through.
 *
 * IDENTIFICATION
 *	  src/pipeline_ext.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

PG_MODULE_MAGIC;

int			pe_produce_timeout_ms = 30000;
int			pe_max_consumer_slots = 64;
int			pe_lag_window_ms = 300000;
int			pe_max_apply_failures = 10;
int			pe_batch_linger_ms = 1;
int			pe_default_parallelism = 0;
int			pe_health_lag_messages = 1000;
int			pe_health_latency_ms = 500;
double		pe_health_error_rate = 0.001;

void		_PG_init(void);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static void
pe_standard_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * DROP DATABASE and ALTER DATABASE ... RENAME fail while other sessions
 * are connected, and a database with consumers has pipeline_ext's workers
 * connected: ask them to leave first, when the caller may run the command.
 * COMMIT PREPARED: see below.
 */
static void
pe_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	const char *dbname = NULL;

	if (IsA(stmt, DropdbStmt))
		dbname = ((DropdbStmt *) stmt)->dbname;
	else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
		dbname = ((RenameStmt *) stmt)->subname;
	if (dbname && pe_shared)
	{
		Oid			dboid = get_database_oid(dbname, true);

		/* a missing database, or a caller who may not: the command says so */
		if (OidIsValid(dboid) && dboid != MyDatabaseId &&
#if PG_VERSION_NUM >= 160000
			object_ownercheck(DatabaseRelationId, dboid, GetUserId())
#else
			pg_database_ownercheck(dboid, GetUserId())
#endif
			)
			pe_release_database(dboid);
	}

	/*
	 * COMMIT PREPARED where pipeline_ext is installed: the commit time of
	 * the prepared transaction, for the outbox relay's order
	 * (outbox_commits.c); and the relay woken, as at any COMMIT of a
	 * transaction that sent.
	 */
	if (IsA(stmt, TransactionStmt) && ((TransactionStmt *) stmt)->kind == TRANS_STMT_COMMIT_PREPARED && pe_shared &&
		pe_commits_begin_prepared(((TransactionStmt *) stmt)->gid))
	{
		TimestampTz began = GetCurrentTimestamp();

		PG_TRY();
		{
			pe_standard_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		}
		PG_CATCH();
		{
			pe_commits_forget();
			PG_RE_THROW();
		}
		PG_END_TRY();
		pe_commits_committed_at(began);
		pe_relay_wake(MyDatabaseId);
		return;
	}

	pe_standard_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

void
_PG_init(void)
{
	DefineCustomIntVariable("pipeline_ext.produce_timeout",
							"Longest wait for a broker to acknowledge a produced message.",
							"Bounds pipeline.produce(), the commit of a transaction that "
							"called pipeline.produce_async(), and the topic look-up before "
							"the first message to a topic. It is also the default for the "
							"producer's message.timeout.ms.",
							&pe_produce_timeout_ms,
							30000, 100, 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pipeline_ext.lag_window",
							"Window over which pipeline.consumer_lag judges each partition's status.",
							"A partition behind for longer than this without moving is STOP "
							"(no batch at all) or STALL (other partitions move); one whose lag "
							"grew at every sample across it is WARN.",
							&pe_lag_window_ms,
							300000, 1000, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.max_apply_failures",
							"Failed attempts in a row to apply a batch after which a consumer stops.",
							"For errors that are not about a row (those make dead letters) and "
							"not transient: a trigger that runs SET ROLE, a revoked privilege. "
							"The worker is restarted with backoff until then. 0 retries forever.",
							&pe_max_apply_failures,
							10, 0, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.default_parallelism",
							"Slots of a consumer created without a parallelism; 0 is auto.",
							"Auto is one slot per core of the server, at most 4. Read when "
							"the consumer is created; its number is stored.",
							&pe_default_parallelism,
							0, 0, 64,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.batch_linger",
							"How long a slot waits for more messages once its queue is empty, before applying.",
							"A slot applies what has arrived as soon as its local queue is "
							"empty; this short wait lets the rest of a fetch join the batch. "
							"batch_size and batch_timeout bound a batch in any case.",
							&pe_batch_linger_ms,
							1, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.health_lag_messages",
							"Lag, in messages, above which pipeline.health warns about a consumer.",
							"Ten times this is critical.",
							&pe_health_lag_messages,
							1000, 0, INT_MAX,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.health_latency",
							"End-to-end latency (p95) above which pipeline.health warns about a consumer.",
							"Ten times this is critical.",
							&pe_health_latency_ms,
							500, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomRealVariable("pipeline_ext.health_error_rate",
							 "Share of messages that became dead letters above which pipeline.health warns.",
							 "0.001 is 0.1 %. Ten times this is critical.",
							 &pe_health_error_rate,
							 0.001, 0.0, 1.0,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
	{
		/* a postmaster setting exists only when preloaded */
		DefineCustomIntVariable("pipeline_ext.max_consumer_slots",
								"Most consumer slots (workers) that can run at once, in all databases.",
								"Each slot is one background worker, counted against max_worker_processes "
								"together with the launcher and one manager per database with consumers.",
								&pe_max_consumer_slots,
								64, 1, 1024,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		pe_shmem_init_hooks();
		pe_register_launcher();
		prev_ProcessUtility = ProcessUtility_hook;
		ProcessUtility_hook = pe_process_utility;
	}

	/* after every definition, so that settings in postgresql.conf apply */
	DefineCustomStringVariable("pipeline_ext.outbox_checkpoint_topic",
							   "Topic where the outbox relay keeps its checkpoints.",
							   "One partition, compacted: the relay writes the number of each round "
							   "it publishes there in the round's Kafka transaction, keyed by its "
							   "transactional.id, and reads it back after a crash. The relay creates "
							   "it when it can.",
							   &pe_outbox_checkpoint_topic,
							   "pipeline_ext_outbox_checkpoints",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("pipeline_ext.outbox_crash_at",
							   "For tests: makes the outbox relay crash around a round's Kafka commit.",
							   "'before_commit:N' or 'after_commit:N' (round N, on its first try).",
							   &pe_outbox_crash_at,
							   "",
							   PGC_SIGHUP,
							   GUC_NOT_IN_SAMPLE | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.outbox_linger",
							"How long the outbox relay lets messages gather after a round that was not full.",
							"Under a stream of small transactions, each Kafka transaction then carries "
							"what committed in this time, rather than one commit's messages; it adds at "
							"most this much to their latency.",
							&pe_outbox_linger_ms,
							50, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.outbox_round_bytes",
							"Most bytes of keys and values the outbox relay takes in id order into one Kafka transaction.",
							"A message larger than this goes in a round of its own. A round can take as many "
							"again with the transactions it completes across its cut (see outbox_round_max).",
							&pe_outbox_round_kb,
							65536, 1, 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("pipeline_ext.outbox_round_max",
							"Most outbox messages the relay takes in id order into one Kafka transaction.",
							"A round also stops at pipeline_ext.outbox_round_bytes. It can take as many again "
							"(and as many bytes) of transactions that committed before its last one, to keep "
							"the commit order across its cut.",
							&pe_outbox_round_max,
							50000, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("pipeline_ext");
}

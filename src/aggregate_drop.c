/*-------------------------------------------------------------------------
 *
 * aggregate_drop.c
 *	  Dropping continuous aggregates: drop_aggregate() removes one (its
 *	  state table with it, its results table when asked); a consumer
 *	  dropped takes its aggregates and their state tables along.
 *
 * IDENTIFICATION
 *	  src/aggregate_drop.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "aggregate.h"
#include "connection.h"
#include "consumer.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_drop_aggregate);

/* Drop an aggregate's results or state table, if it is still there. */
static void
pe_agg_drop_table(Oid rel, const char *what)
{
	if (get_rel_name(rel) == NULL)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(psprintf("DROP TABLE %s", quote_qualified_identifier(get_namespace_name(get_rel_namespace(rel)),
																	  get_rel_name(rel))),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not drop the %s table of an aggregate", what);
	SPI_finish();
}

Datum
pe_drop_aggregate(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		drop_results = PG_GETARG_BOOL(1);
	PeCatalogAccess acc;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	Oid			owner = InvalidOid;
	Oid			results = InvalidOid;
	Oid			state = InvalidOid;
	bool		isnull;

	pe_require_preload();

	/*
	 * Read twice: first to check the caller and lock the consumer's set of
	 * aggregates as create_aggregate() does, then the row, locked.  A
	 * batch takes the two in that order (batch.c); the row first would
	 * deadlock with a batch that holds the set and waits for the row.
	 */
	for (int locked = 0; locked < 2; locked++)
	{
		int64		consumer_id = 0;

		owner = InvalidOid;
		pe_catalog_begin(&acc);
		if (SPI_execute_with_args(locked ? "SELECT owner, results, state, consumer_id FROM pipeline.aggregate "
								  "WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE"
								  : "SELECT owner, results, state, consumer_id FROM pipeline.aggregate "
								  "WHERE name OPERATOR(pg_catalog.=) $1",
								  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read pipeline.aggregate");
		if (SPI_processed == 1)
		{
			owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			results = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
			state = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
			if (isnull)
				state = InvalidOid;
			consumer_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		}
		pe_catalog_end(&acc);
		if (!OidIsValid(owner))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("aggregate \"%s\" does not exist", name),
					 errhint("See pipeline.aggregates for the aggregates you may see.")));
		if (!pe_may_see_secrets(owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of aggregate \"%s\" to drop it", name),
					 errhint("Only the owner of its consumer, its members, or a superuser can.")));
		if (!locked)
			pe_aggregates_lock(consumer_id, ExclusiveLock);
	}
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("DELETE FROM pipeline.aggregate WHERE name OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, false, 0)
		!= SPI_OK_DELETE)
		elog(ERROR, "could not delete the aggregate");
	pe_catalog_end(&acc);
	/* the state table goes with the aggregate (it holds nothing final); the results when asked */
	for (int i = 0; i < 2; i++)
	{
		Oid			rel = i == 0 ? state : results;

		if (OidIsValid(rel) && (rel != results || drop_results))
			pe_agg_drop_table(rel, i == 0 ? "state" : "results");
	}
	PG_RETURN_VOID();
}

/*
 * A consumer dropped: its aggregates go with it (ON DELETE CASCADE), and
 * their state tables, which hold no final row, with them; results tables
 * stay, the user's.
 */
void
pe_aggregates_drop_state(PeConsumerDef *def)
{
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(def->id)};
	bool		isnull;
	List	   *states = NIL;
	ListCell   *lc;
	MemoryContext outer = CurrentMemoryContext;

	pe_catalog_begin(&acc);
	/* (before 0.6.0 there are no aggregates) */
	if (SPI_execute("SELECT pg_catalog.to_regclass('pipeline.aggregate') IS NOT NULL", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for pipeline.aggregate");
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
	{
		if (SPI_execute_with_args("SELECT state FROM pipeline.aggregate WHERE consumer_id OPERATOR(pg_catalog.=) $1 "
								  "AND state IS NOT NULL",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read pipeline.aggregate");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			Oid			rel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
			MemoryContext spi = MemoryContextSwitchTo(outer);

			states = lappend_oid(states, rel);
			MemoryContextSwitchTo(spi);
		}
	}
	pe_catalog_end(&acc);
	foreach(lc, states)
	{
		Oid			rel = lfirst_oid(lc);

		pe_agg_drop_table(rel, "state");
	}
}

/*-------------------------------------------------------------------------
 *
 * aggregate_defs.c
 *	  A consumer's aggregates as a slot reads them from the catalog
 *	  (pipeline.aggregate) once per batch: their windows, functions,
 *	  groups and tables, and the names of the state columns each function
 *	  keeps beside its value.  aggregate.c counts the events with them.
 *	  And the lock that orders a consumer's batches with the aggregates
 *	  made for it meanwhile.
 *
 * IDENTIFICATION
 *	  src/aggregate_defs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "aggregate.h"
#include "connection.h"

static char **
pe_agg_strings(Datum d, int *n)
{
	Datum	   *elems;
	char	  **out;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, n);
	out = palloc(sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = TextDatumGetCString(elems[i]);
	return out;
}

static int64
pe_agg_interval_us(Datum d)
{
	Interval   *iv = DatumGetIntervalP(d);

	return iv->time + (int64) iv->day * USECS_PER_DAY;
}

/*
 * The columns of the results that keep an aggregate's state besides its
 * value, NAME__suffix: avg's sum and count, the event time of first and
 * last, the set of count(distinct), an hll, a t-digest.
 */
int
pe_agg_state_columns(const char *fn, const char **suffixes)
{
	if (strcmp(fn, "avg") == 0)
	{
		suffixes[0] = "sum";
		suffixes[1] = "count";
		return 2;
	}
	if (strcmp(fn, "first") == 0 || strcmp(fn, "last") == 0)
		suffixes[0] = "time";
	else if (strcmp(fn, "count_distinct") == 0)
		suffixes[0] = "set";
	else if (strcmp(fn, "approx_count_distinct") == 0)
		suffixes[0] = "hll";
	else if (strcmp(fn, "percentile") == 0)
		suffixes[0] = "digest";
	else
		return 0;
	return 1;
}

/* The schema of an extension of the database, quoted; NULL if it has none. */
const char *
pe_agg_extension_schema(const char *extname)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum(extname));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return OidIsValid(nsp) ? quote_identifier(get_namespace_name(nsp)) : NULL;
}

/* The consumer's aggregates (NIL: none); SPI connected. */
List *
pe_aggregates_of(PeConsumerDef *def)
{
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(def->id)};
	List	   *aggs = NIL;
	MemoryContext outer = CurrentMemoryContext;

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT name, results, size, slide, origin, time_column, group_by, functions, "
							  "arguments, outputs, lateness, watermark, fractions, emit, state, emit_connection, emit_topic, valid_from, "
							  "revision, window_kind, time_zone FROM pipeline.aggregate WHERE consumer_id OPERATOR(pg_catalog.=) $1 ORDER BY name",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.aggregate");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext spi = MemoryContextSwitchTo(outer);
		PeAggregate *a = palloc0(sizeof(PeAggregate));
		int			n;

		a->name = SPI_getvalue(tup, desc, 1);
		a->results = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		a->size_us = pe_agg_interval_us(SPI_getbinval(tup, desc, 3, &isnull));
		a->slide_us = pe_agg_interval_us(SPI_getbinval(tup, desc, 4, &isnull));
		a->origin = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
		a->time_column = SPI_getvalue(tup, desc, 6);
		a->groups = pe_agg_strings(SPI_getbinval(tup, desc, 7, &isnull), &a->ngroups);
		a->fns = pe_agg_strings(SPI_getbinval(tup, desc, 8, &isnull), &a->naggs);
		a->args = pe_agg_strings(SPI_getbinval(tup, desc, 9, &isnull), &n);
		a->outs = pe_agg_strings(SPI_getbinval(tup, desc, 10, &isnull), &n);
		a->lateness_us = pe_agg_interval_us(SPI_getbinval(tup, desc, 11, &isnull));
		a->wm = DatumGetTimestampTz(SPI_getbinval(tup, desc, 12, &isnull));
		a->has_wm = !isnull;
		{
			Datum	   *fd;
			bool	   *fn;

			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 13, &isnull)), FLOAT8OID, 8,
							  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &fd, &fn, &n);
			a->fractions = palloc0(sizeof(double) * a->naggs);
			for (int i = 0; i < n && i < a->naggs; i++)
				a->fractions[i] = fn[i] ? 0 : DatumGetFloat8(fd[i]);
		}
		a->emit_close = strcmp(SPI_getvalue(tup, desc, 14), "close") == 0;
		a->state = DatumGetObjectId(SPI_getbinval(tup, desc, 15, &isnull));
		if (isnull)
			a->state = InvalidOid;
		a->emit_connection = SPI_getvalue(tup, desc, 16);
		a->emit_topic = SPI_getvalue(tup, desc, 17);
		a->has_valid_from = palloc0(sizeof(bool) * a->naggs);
		a->valid_from = palloc0(sizeof(int64) * a->naggs);
		{
			Datum		vf = SPI_getbinval(tup, desc, 18, &isnull);

			if (!isnull)
			{
				Datum	   *vd;
				bool	   *vn;

				deconstruct_array(DatumGetArrayTypeP(vf), TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
								  &vd, &vn, &n);
				for (int i = 0; i < n && i < a->naggs; i++)
				{
					a->has_valid_from[i] = !vn[i];
					a->valid_from[i] = vn[i] ? 0 : DatumGetInt64(vd[i]);
				}
			}
		}
		a->revision = DatumGetInt32(SPI_getbinval(tup, desc, 19, &isnull));
		a->session = strcmp(SPI_getvalue(tup, desc, 20), "session") == 0;
		a->cumulative = strcmp(SPI_getvalue(tup, desc, 20), "cumulative") == 0;
		a->time_zone = SPI_getvalue(tup, desc, 21);
		if (a->time_zone)
			a->tz_text = CStringGetTextDatum(a->time_zone);	/* once, not per event */
		for (int i = 0; i < a->naggs; i++)
		{
			const char **schema = strcmp(a->fns[i], "approx_count_distinct") == 0 ? &a->hll_schema
				: strcmp(a->fns[i], "percentile") == 0 ? &a->tdigest_schema : NULL;

			if (schema == NULL || *schema != NULL)
				continue;
			*schema = pe_agg_extension_schema(schema == &a->hll_schema ? "hll" : "tdigest");
			if (*schema == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("aggregate \"%s\" needs extension \"%s\", which is not in this database", a->name,
								schema == &a->hll_schema ? "hll" : "tdigest"),
						 errhint("Create the extension again, or drop the aggregate.")));
		}
		aggs = lappend(aggs, a);
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);
	return aggs;
}

/* field 4 of the advisory lock tag of a consumer's set of aggregates (SQL's advisory locks use 1 and 2) */
#define PE_LOCK_AGGREGATE_SET 0x5045

/*
 * The lock that orders a consumer's batches with create_aggregate(): a
 * slot's batch takes it shared before its aggregates and offsets, then
 * checks that the consumer has the aggregates it read
 * (pe_aggregates_changed); create_aggregate() takes it exclusively
 * before it reads where the new aggregate starts (the consumer's stored
 * offsets).  So a batch either sees the new aggregate, and is tried again
 * with it, or has stored its offsets before the aggregate reads them:
 * none of its messages falls between, left out of the aggregate for
 * good.  (alter and drop are caught by each aggregate's revision,
 * pe_agg_lock.)  Held to the end of the transaction.
 */
void
pe_aggregates_lock(int64 consumer_id, LOCKMODE mode)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) ((uint64) consumer_id >> 32), (uint32) consumer_id,
						 PE_LOCK_AGGREGATE_SET);
	(void) LockAcquire(&tag, mode, false, false);
}

/*
 * Whether the consumer has another number of aggregates than the naggs a
 * batch read, as they are committed now (after pe_aggregates_lock(); a
 * snapshot of its own, whatever the transaction's isolation).
 */
bool
pe_aggregates_changed(int64 consumer_id, int naggs)
{
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(consumer_id)};
	bool		isnull;
	int64		now;

	PushActiveSnapshot(GetLatestSnapshot());
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM pipeline.aggregate WHERE consumer_id OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read pipeline.aggregate");
	now = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pe_catalog_end(&acc);
	PopActiveSnapshot();
	return now != naggs;
}

/*-------------------------------------------------------------------------
 *
 * aggregate.c
 *	  Step 5 of the data path (batch.c): the consumer's windowed aggregates
 *	  updated in the batch's transaction, so that rows, aggregates and
 *	  offsets commit together.  Each message counts once: an aggregate
 *	  keeps, per partition, the offsets it has counted (a multirange), and a
 *	  message in them (reset_offsets) is not counted again; a replayed dead letter, never
 *	  counted, counts when its row goes in.  The batch's events
 *	  are grouped into their windows in one statement that merges into the
 *	  results table (count and sum add, min and max compare, avg keeps its
 *	  sum and count).  Before the apply, a message whose time is missing is
 *	  a dead letter: it cannot be put in a window.
 *
 * IDENTIFICATION
 *	  src/aggregate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"

#include "aggregate.h"
#include "connection.h"

typedef struct PeAggregate
{
	char	   *name;
	Oid			results;
	int64		size_us;
	int64		slide_us;
	TimestampTz origin;
	int64		lateness_us;
	bool		has_wm;			/* a watermark yet (at the batch's start) */
	int64		wm;				/* it, in the time column's microseconds */
	char	   *time_column;
	int			ngroups;
	char	  **groups;
	int			naggs;
	char	  **fns;
	char	  **args;
	char	  **outs;
} PeAggregate;

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
							  "arguments, outputs, lateness, watermark FROM pipeline.aggregate WHERE consumer_id OPERATOR(pg_catalog.=) $1 ORDER BY name",
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
		aggs = lappend(aggs, a);
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);
	return aggs;
}

/* The index of a column among those the consumer decodes. */
static int
pe_agg_col(PeTarget *t, PeAggregate *a, const char *name)
{
	for (int c = 0; c < t->ncols; c++)
		if (strcmp(t->cols[c].name, name) == 0)
			return c;
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("aggregate \"%s\" reads column \"%s\", which consumer \"%s\" does not fill", a->name, name,
					t->def->name),
			 errhint("Map the column in the consumer's column_map, or drop the aggregate and define it on a column the consumer fills.")));
	return -1;					/* keep compiler quiet */
}

/*
 * Before the apply: a row without a time cannot go into a window; it is a
 * dead letter of the consumer, with the reason.  Returns the rows kept
 * (compacted in place).
 */
int
pe_aggregates_screen(List *aggs, PeTarget *t, PeRow *rows, int nrows, PeBatchResult *res)
{
	ListCell   *lc;

	foreach(lc, aggs)
	{
		PeAggregate *a = lfirst(lc);
		int			tc = pe_agg_col(t, a, a->time_column);
		int			kept = 0;

		for (int r = 0; r < nrows; r++)
		{
			if (!rows[r].tombstone &&
				(rows[r].nulls[tc] || TIMESTAMP_NOT_FINITE(DatumGetInt64(rows[r].values[tc]))))
			{
				PeDeadLetter *d = palloc0(sizeof(PeDeadLetter));

				d->msg_index = rows[r].msg_index;
				if (rows[r].nulls[tc])
				{
					d->error = psprintf("aggregate \"%s\": the event has no time (column \"%s\" is null)",
										a->name, a->time_column);
					memcpy(d->sqlstate, "22004", 6);
				}
				else
				{
					d->error = psprintf("aggregate \"%s\": the event's time (column \"%s\") is infinite: no window holds it",
										a->name, a->time_column);
					memcpy(d->sqlstate, "22008", 6);
				}
				res->dead = lappend(res->dead, d);
				continue;
			}
			rows[kept++] = rows[r];
		}
		nrows = kept;
	}
	return nrows;
}

/* The offsets it has counted: ranges [lo, hi) of a partition, n of them. */
static int
pe_agg_counted(PeAggregate *a, int32 **parts, int64 **lo, int64 **hi)
{
	PeCatalogAccess acc;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(a->name)};
	MemoryContext outer = CurrentMemoryContext;
	int			n;

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT o.\"partition\", pg_catalog.lower(r), pg_catalog.upper(r) "
							  "FROM pipeline.aggregate_offset o, pg_catalog.unnest(o.counted) AS r "
							  "WHERE o.aggregate OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.aggregate_offset");
	n = (int) SPI_processed;
	*parts = MemoryContextAlloc(outer, sizeof(int32) * Max(n, 1));
	*lo = MemoryContextAlloc(outer, sizeof(int64) * Max(n, 1));
	*hi = MemoryContextAlloc(outer, sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		(*parts)[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		(*lo)[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		(*hi)[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
	}
	pe_catalog_end(&acc);
	return n;
}

/* The results table, locked for the batch's writes, by its quoted name. */
static const char *
pe_agg_results(PeAggregate *a)
{
	char	   *relname;
	char	   *nspname;

	LockRelationOid(a->results, RowExclusiveLock);
	relname = get_rel_name(a->results);
	nspname = relname ? get_namespace_name(get_rel_namespace(a->results)) : NULL;
	if (relname == NULL || nspname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the results table of aggregate \"%s\" was dropped", a->name),
				 errhint("Drop the aggregate with pipeline.drop_aggregate() and create it again.")));
	return quote_qualified_identifier(nspname, relname);
}

/* The statement that merges a batch's events into the results. */
static char *
pe_agg_sql(PeAggregate *a, PeTarget *t, const int *cols, int ncols, Oid time_type)
{
	StringInfoData s;
	StringInfoData g;
	const char *res = pe_agg_results(a);
	const char *tt = format_type_be_qualified(time_type);
	const char *bin = psprintf("pg_catalog.date_bin($%d, m.c0, $%d::%s)", ncols + 2, ncols + 3, tt);
	initStringInfo(&s);
	initStringInfo(&g);
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&g, ", %s", quote_identifier(a->groups[i]));

	appendStringInfo(&s, "INSERT INTO %s AS r (window_start, window_end%s", res, g.data);
	for (int i = 0; i < a->naggs; i++)
	{
		appendStringInfo(&s, ", %s", quote_identifier(a->outs[i]));
		if (strcmp(a->fns[i], "avg") == 0)
			appendStringInfo(&s, ", %s, %s", quote_identifier(psprintf("%s__sum", a->outs[i])),
							 quote_identifier(psprintf("%s__count", a->outs[i])));
	}
	appendStringInfo(&s, ") SELECT w.s, w.s OPERATOR(pg_catalog.+) $%d", ncols + 1);
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", m.c%d", i + 1);
	for (int i = 0; i < a->naggs; i++)
	{
		int			ac = -1;

		for (int c = 0; c < ncols; c++)
			if (strcmp(a->args[i], "*") != 0 && strcmp(t->cols[cols[c]].name, a->args[i]) == 0)
				ac = c;
		if (ac < 0)
			appendStringInfoString(&s, ", pg_catalog.count(*)");
		else if (strcmp(a->fns[i], "avg") == 0)
			appendStringInfo(&s, ", pg_catalog.avg(m.c%d), pg_catalog.sum(m.c%d), pg_catalog.count(m.c%d)", ac, ac, ac);
		else
			appendStringInfo(&s, ", pg_catalog.%s(m.c%d)", a->fns[i], ac);
	}
	/* each column with its collation, as the table compares it (unnest gives the type's default) */
	appendStringInfoString(&s, " FROM (SELECT ");
	for (int c = 0; c < ncols; c++)
	{
		Oid			coll = t->cols[cols[c]].collation;

		if (OidIsValid(coll) && coll != DEFAULT_COLLATION_OID)
			appendStringInfo(&s, "%su.c%d COLLATE %s AS c%d", c ? ", " : "", c, generate_collation_name(coll), c);
		else
			appendStringInfo(&s, "%su.c%d", c ? ", " : "", c);
	}
	appendStringInfoString(&s, " FROM ROWS FROM (");
	for (int c = 0; c < ncols; c++)
		appendStringInfo(&s, "%spg_catalog.unnest($%d)", c ? ", " : "", c + 1);
	appendStringInfoString(&s, ") AS u(");
	for (int c = 0; c < ncols; c++)
		appendStringInfo(&s, "%sc%d", c ? ", " : "", c);
	appendStringInfoString(&s, ")) AS m");
	/* every window that holds the event: the last one to start, and those before it */
	appendStringInfo(&s, " CROSS JOIN LATERAL (SELECT x AS s FROM pg_catalog.generate_series(%s OPERATOR(pg_catalog.-) $%d, %s, $%d) AS x "
					 "WHERE x OPERATOR(pg_catalog.+) $%d OPERATOR(pg_catalog.>) m.c0 "
					 /* and is still open: a closed window stays as it closed */
					 "AND ($%d IS NULL OR x OPERATOR(pg_catalog.+) $%d OPERATOR(pg_catalog.+) $%d OPERATOR(pg_catalog.>) $%d)"
					 ") AS w GROUP BY w.s",
					 bin, ncols + 4, bin, ncols + 2, ncols + 1, ncols + 5, ncols + 1, ncols + 6, ncols + 5);
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", m.c%d", i + 1);
	/* rows in one order, so that two slots lock the same windows alike */
	appendStringInfoString(&s, " ORDER BY w.s");
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", m.c%d", i + 1);
	appendStringInfo(&s, " ON CONFLICT (window_start%s) DO UPDATE SET ", g.data);
	for (int i = 0; i < a->naggs; i++)
	{
		const char *o = quote_identifier(a->outs[i]);

		if (i > 0)
			appendStringInfoString(&s, ", ");
		if (strcmp(a->fns[i], "count") == 0)
			appendStringInfo(&s, "%s = r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s", o, o, o);
		else if (strcmp(a->fns[i], "sum") == 0)
			appendStringInfo(&s, "%s = COALESCE(r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s, r.%s, EXCLUDED.%s)",
							 o, o, o, o, o);
		else if (strcmp(a->fns[i], "min") == 0)
			appendStringInfo(&s, "%s = LEAST(r.%s, EXCLUDED.%s)", o, o, o);
		else if (strcmp(a->fns[i], "max") == 0)
			appendStringInfo(&s, "%s = GREATEST(r.%s, EXCLUDED.%s)", o, o, o);
		else
		{
			const char *sum = quote_identifier(psprintf("%s__sum", a->outs[i]));
			const char *cnt = quote_identifier(psprintf("%s__count", a->outs[i]));
			char	   *merged_sum = psprintf("COALESCE(r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s, r.%s, EXCLUDED.%s)",
											  sum, sum, sum, sum);
			char	   *merged_cnt = psprintf("r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s", cnt, cnt);
			Oid			avg_type = get_atttype(a->results, get_attnum(a->results, a->outs[i]));

			appendStringInfo(&s, "%s = %s, %s = %s, %s = CASE WHEN %s OPERATOR(pg_catalog.>) 0 THEN "
							 "((%s)::pg_catalog.numeric OPERATOR(pg_catalog./) (%s)::pg_catalog.numeric)::%s END",
							 sum, merged_sum, cnt, merged_cnt, o, merged_cnt, merged_sum, merged_cnt,
							 format_type_be_qualified(avg_type));
		}
	}
	return s.data;
}

static Datum
pe_agg_interval(int64 us)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = us;
	return IntervalPGetDatum(iv);
}

/* date_bin: the start of the stride holding t */
static int64
pe_agg_bin(int64 t, int64 stride, int64 origin)
{
	int64		d = t - origin;
	int64		q = d / stride;

	if (d % stride < 0)
		q--;
	return origin + q * stride;
}

/* The end of the first (earliest) window that holds time t. */
static int64
pe_agg_first_end(PeAggregate *a, int64 t)
{
	int64		s = pe_agg_bin(t, a->slide_us, a->origin);

	while (s - a->slide_us + a->size_us > t)
		s -= a->slide_us;
	return s + a->size_us;
}

/* Events after their window closed: into pipeline.aggregate_late, with why. */
static void
pe_agg_keep_late(PeAggregate *a, PeMessage *msgs, PeRow *rows, const int *late, int nlate, int time_col)
{
	PeCatalogAccess acc;
	Oid			types[8] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZOID,
	BYTEAARRAYOID, BYTEAARRAYOID, TEXTOID};
	Datum		values[8];
	Datum	   *pd = palloc(sizeof(Datum) * nlate);
	Datum	   *od = palloc(sizeof(Datum) * nlate);
	Datum	   *td = palloc(sizeof(Datum) * nlate);
	Datum	   *kd = palloc(sizeof(Datum) * nlate);
	Datum	   *vd = palloc(sizeof(Datum) * nlate);
	bool	   *kn = palloc(sizeof(bool) * nlate);
	bool	   *vn = palloc(sizeof(bool) * nlate);
	int			dims[1] = {nlate};
	int			lbs[1] = {1};

	for (int i = 0; i < nlate; i++)
	{
		PeMessage  *m = &msgs[rows[late[i]].msg_index];

		pd[i] = Int32GetDatum(m->partition);
		od[i] = Int64GetDatum(m->offset);
		td[i] = rows[late[i]].values[time_col];
		kn[i] = m->key == NULL;
		kd[i] = kn[i] ? (Datum) 0 : pe_bytes_to_bytea(m->key, m->key_len);
		vn[i] = m->value == NULL;
		vd[i] = vn[i] ? (Datum) 0 : pe_bytes_to_bytea(m->value, m->value_len);
	}
	values[0] = CStringGetTextDatum(a->name);
	values[1] = PointerGetDatum(construct_array(pd, nlate, INT4OID, 4, true, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(od, nlate, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = PointerGetDatum(construct_array(td, nlate, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = TimestampTzGetDatum(a->wm);
	values[5] = PointerGetDatum(construct_md_array(kd, kn, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_md_array(vd, vn, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT));
	values[7] = CStringGetTextDatum(a->size_us == a->slide_us
									? "its window had closed: the watermark had passed the window's end plus the lateness"
									: "some or all of its windows had closed: the watermark had passed their end plus the lateness; it counts in those still open");
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("INSERT INTO pipeline.aggregate_late (aggregate, \"partition\", \"offset\", event_time, watermark, key, value, reason) "
							  "SELECT $1, u.p, u.o, u.t, $5, u.k, u.v, $8 FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), "
							  "pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(p, o, t, k, v)",
							  8, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not keep the late events of aggregate \"%s\"", a->name);
	pe_catalog_end(&acc);
}

static void pe_agg_advance(PeAggregate *a, PeTarget *t, int32 *bp, int64 *bl, int64 *bo, Datum *bt, bool *bt_null,
						   int nbp, int npart, TimestampTz started);

/*
 * Step 5: merge the batch's events into each aggregate, then move its
 * counted offsets past the batch.  SPI connected, in the batch's
 * transaction; runs the merge as the consumer's owner.
 */
void
pe_aggregates_update(List *aggs, PeTarget *t, PeMessage *msgs, int n, PeRow *rows, int nrows, List *dead,
					 int npart, bool replay)
{
	bool	   *is_dead = palloc0(sizeof(bool) * Max(n, 1));
	ListCell   *lc;

	foreach(lc, dead)
		is_dead[((PeDeadLetter *) lfirst(lc))->msg_index] = true;

	foreach(lc, aggs)
	{
		PeAggregate *a = lfirst(lc);
		TimestampTz started = GetCurrentTimestamp();
		int32	   *parts;
		int64	   *clo;
		int64	   *chi;
		int			nparts = pe_agg_counted(a, &parts, &clo, &chi);
		int		   *cols = palloc(sizeof(int) * (1 + a->ngroups + a->naggs));
		int			ncols = 0;
		int		   *take = palloc(sizeof(int) * Max(nrows, 1));
		int			ntake = 0;
		int		   *late = palloc(sizeof(int) * Max(nrows, 1));
		int			nlate = 0;
		int			time_col;
		int32	   *bp = palloc(sizeof(int32) * Max(n, 1));
		int64	   *bo = palloc(sizeof(int64) * Max(n, 1));
		int64	   *bl = palloc(sizeof(int64) * Max(n, 1));
		Datum	   *bt = palloc0(sizeof(Datum) * Max(n, 1));
		bool	   *bt_null = palloc(sizeof(bool) * Max(n, 1));
		int			nbp = 0;

		/* the columns it reads: the time, the groups, the arguments (once each) */
		cols[ncols++] = time_col = pe_agg_col(t, a, a->time_column);
		for (int i = 0; i < a->ngroups; i++)
			cols[ncols++] = pe_agg_col(t, a, a->groups[i]);
		for (int i = 0; i < a->naggs; i++)
		{
			int			c;
			bool		seen = false;

			if (strcmp(a->args[i], "*") == 0)
				continue;
			c = pe_agg_col(t, a, a->args[i]);
			for (int j = 1 + a->ngroups; j < ncols; j++)
				seen |= cols[j] == c;
			if (!seen)
				cols[ncols++] = c;
		}

		/*
		 * The events it has not counted yet; those that come after their
		 * window closed are kept as late events instead (an event of a
		 * hopping window is also merged into those of its windows that are
		 * still open).
		 */
		for (int r = 0; r < nrows; r++)
		{
			PeMessage  *m = &msgs[rows[r].msg_index];
			bool		counted = false;

			if (rows[r].tombstone || is_dead[rows[r].msg_index])
				continue;

			/*
			 * A replayed dead letter was not counted when it failed (its
			 * offset is behind), and its row goes in this transaction: count
			 * it now.
			 */
			for (int p = 0; p < nparts && !replay; p++)
				if (parts[p] == m->partition && m->offset >= clo[p] && m->offset < chi[p])
					counted = true;
			if (counted)
				continue;
			if (a->has_wm)
			{
				int64		t = DatumGetInt64(rows[r].values[time_col]);
				int64		first_end = pe_agg_first_end(a, t);
				int64		last_end = pe_agg_bin(t, a->slide_us, a->origin) + a->size_us;

				if (first_end + a->lateness_us <= a->wm)
				{
					late[nlate++] = r;
					if (last_end + a->lateness_us <= a->wm)
						continue;	/* every window of it closed */
				}
			}
			take[ntake++] = r;
		}
		if (nlate > 0)
			pe_agg_keep_late(a, msgs, rows, late, nlate, time_col);

		if (ntake > 0)
		{
			int			nargs = ncols + 6;
			Oid		   *types = palloc(sizeof(Oid) * nargs);
			Datum	   *values = palloc(sizeof(Datum) * nargs);
			Datum	   *ev = palloc(sizeof(Datum) * ntake);
			bool	   *en = palloc(sizeof(bool) * ntake);
			int			dims[1] = {ntake};
			int			lbs[1] = {1};
			Oid			time_type = t->cols[cols[0]].typid;
			Oid			save_userid;
			int			save_sec;
			char	   *sql = pe_agg_sql(a, t, cols, ncols, time_type);

			for (int c = 0; c < ncols; c++)
			{
				PeColumn   *col = &t->cols[cols[c]];

				for (int i = 0; i < ntake; i++)
				{
					ev[i] = rows[take[i]].values[cols[c]];
					en[i] = rows[take[i]].nulls[cols[c]];
				}
				types[c] = col->arraytyp;
				values[c] = PointerGetDatum(construct_md_array(ev, en, 1, dims, lbs, col->typid, col->typlen,
															   col->typbyval, col->typalign));
			}
			types[ncols] = INTERVALOID;
			values[ncols] = pe_agg_interval(a->size_us);
			types[ncols + 1] = INTERVALOID;
			values[ncols + 1] = pe_agg_interval(a->slide_us);
			/* the origin as UTC wall time for a timestamp column: the same microseconds */
			types[ncols + 2] = time_type;
			values[ncols + 2] = TimestampTzGetDatum(a->origin);
			/* how far back the first window holding an event starts */
			types[ncols + 3] = INTERVALOID;
			values[ncols + 3] = pe_agg_interval(((a->size_us + a->slide_us - 1) / a->slide_us - 1) * a->slide_us);
			/* the watermark at the batch's start, and the lateness: which windows are open */
			types[ncols + 4] = time_type;
			values[ncols + 4] = Int64GetDatum(a->wm);
			types[ncols + 5] = INTERVALOID;
			values[ncols + 5] = pe_agg_interval(a->lateness_us);

			GetUserIdAndSecContext(&save_userid, &save_sec);
			SetUserIdAndSecContext(t->def->owner,
								   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
			{
				char	   *nulls = palloc(nargs + 1);

				memset(nulls, ' ', nargs);
				nulls[nargs] = '\0';
				if (!a->has_wm)
					nulls[ncols + 4] = 'n';
				if (SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "could not update aggregate \"%s\"", a->name);
			}
			SetUserIdAndSecContext(save_userid, save_sec);
		}

		/*
		 * What it has counted now: every message of the batch; each
		 * partition's newest event time, and that it was seen.
		 */
		for (int i = 0; i < n; i++)
		{
			int			p;

			for (p = 0; p < nbp && bp[p] != msgs[i].partition; p++)
				;
			if (p == nbp)
			{
				bp[nbp] = msgs[i].partition;
				bl[nbp] = msgs[i].offset;
				bo[nbp] = msgs[i].offset + 1;
				bt_null[nbp] = true;
				nbp++;
			}
			else
			{
				bl[p] = Min(bl[p], msgs[i].offset);
				bo[p] = Max(bo[p], msgs[i].offset + 1);
			}
		}
		for (int k = 0; k < ntake + nlate; k++)
		{
			int			r = k < ntake ? take[k] : late[k - ntake];
			int64		tm = DatumGetInt64(rows[r].values[time_col]);
			int			p;

			for (p = 0; bp[p] != msgs[rows[r].msg_index].partition; p++)
				;
			if (bt_null[p] || tm > DatumGetInt64(bt[p]))
				bt[p] = Int64GetDatum(tm);
			bt_null[p] = false;
		}
		/* old events replayed do not move the watermark nor what was counted */
		if (nbp > 0 && !replay)
			pe_agg_advance(a, t, bp, bl, bo, bt, bt_null, nbp, npart, started);
	}
}

/*
 * Record how far the aggregate has counted each partition of the batch,
 * move its watermark (the least newest event time of the partitions seen
 * within idle_timeout; of all of them when every one is idle; never back)
 * and close the windows it has passed, end plus lateness.
 */
static void
pe_agg_advance(PeAggregate *a, PeTarget *t, int32 *bp, int64 *bl, int64 *bo, Datum *bt, bool *bt_null, int nbp,
			   int npart, TimestampTz started)
{
	uint64		closed = 0;
	int64		open = 0;
	bool		isnull_open;
	PeCatalogAccess acc;
	Oid			otypes[5] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	Datum		ovalues[5];
	Datum	   *pd = palloc(sizeof(Datum) * nbp);
	Datum	   *od = palloc(sizeof(Datum) * nbp);
	Datum	   *ld = palloc(sizeof(Datum) * nbp);
	int			dims[1] = {nbp};
	int			lbs[1] = {1};
	bool		isnull;
	Datum		wm;
	Oid			save_userid;
	int			save_sec;

	for (int p = 0; p < nbp; p++)
	{
		pd[p] = Int32GetDatum(bp[p]);
		od[p] = Int64GetDatum(bo[p]);
		ld[p] = Int64GetDatum(bl[p]);
	}
	ovalues[0] = CStringGetTextDatum(a->name);
	ovalues[4] = PointerGetDatum(construct_array(ld, nbp, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ovalues[1] = PointerGetDatum(construct_array(pd, nbp, INT4OID, 4, true, TYPALIGN_INT));
	ovalues[2] = PointerGetDatum(construct_array(od, nbp, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ovalues[3] = PointerGetDatum(construct_md_array(bt, bt_null, 1, dims, lbs, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
													TYPALIGN_DOUBLE));
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("INSERT INTO pipeline.aggregate_offset AS o (aggregate, \"partition\", counted, max_time, seen_at) "
							  "SELECT $1, u.p, pg_catalog.int8multirange(pg_catalog.int8range(u.l, u.n)), u.t, pg_catalog.now() "
							  "FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($5), pg_catalog.unnest($3), "
							  "pg_catalog.unnest($4)) AS u(p, l, n, t) "
							  "ON CONFLICT (aggregate, \"partition\") DO UPDATE "
							  "SET counted = o.counted OPERATOR(pg_catalog.+) EXCLUDED.counted, "
							  "max_time = GREATEST(o.max_time, EXCLUDED.max_time), seen_at = EXCLUDED.seen_at",
							  5, otypes, ovalues, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record what aggregate \"%s\" counted", a->name);

	/*
	 * A partition of the topic without an event yet holds the watermark
	 * back too, until it has been idle for idle_timeout: otherwise the
	 * first batch, from one partition, would close windows that the
	 * others have events for.
	 */
	ovalues[1] = Int32GetDatum(npart);
	otypes[1] = INT4OID;
	if (SPI_execute_with_args("INSERT INTO pipeline.aggregate_offset (aggregate, \"partition\", seen_at) "
							  "SELECT $1, p, pg_catalog.now() FROM pg_catalog.generate_series(0, $2 OPERATOR(pg_catalog.-) 1) p "
							  "ON CONFLICT (aggregate, \"partition\") DO NOTHING",
							  2, otypes, ovalues, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the partitions of aggregate \"%s\"", a->name);
	if (SPI_execute_with_args("SELECT GREATEST(a.watermark, "
							  "(SELECT CASE WHEN pg_catalog.bool_or(o.max_time IS NULL) FILTER (WHERE o.active) THEN NULL "
							  "ELSE COALESCE(pg_catalog.min(o.max_time) FILTER (WHERE o.active), pg_catalog.max(o.max_time)) END "
							  "FROM (SELECT max_time, seen_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) a.idle_timeout) AS active "
							  "FROM pipeline.aggregate_offset WHERE aggregate OPERATOR(pg_catalog.=) a.name) o)) "
							  "FROM pipeline.aggregate a WHERE a.name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, otypes, ovalues, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not move the watermark of aggregate \"%s\"", a->name);
	wm = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	pe_catalog_end(&acc);

	/*
	 * The windows it passed: closed, as the consumer's owner (it owns
	 * them); and how many stay open (the partial index on them).
	 */
	{
		Oid			ctypes[2] = {TIMESTAMPTZOID, INTERVALOID};
		Datum		cvalues[2];
		Oid			rel = a->results;
		const char *res = pe_agg_results(a);

		ctypes[0] = get_atttype(rel, get_attnum(rel, "window_end"));	/* the same microseconds for a timestamp column */
		cvalues[0] = wm;
		cvalues[1] = pe_agg_interval(a->lateness_us);
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(t->def->owner,
							   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
		if (!isnull)
		{
			if (SPI_execute_with_args(psprintf("UPDATE %s SET closed = true WHERE NOT closed "
											   "AND window_end OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.<=) $1", res),
									  2, ctypes, cvalues, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not close the windows of aggregate \"%s\"", a->name);
			closed = SPI_processed;
		}
		if (SPI_execute(psprintf("SELECT pg_catalog.count(*) FROM %s WHERE NOT closed", res), true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not count the open windows of aggregate \"%s\"", a->name);
		open = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull_open));
		SetUserIdAndSecContext(save_userid, save_sec);
	}

	/* the watermark and the figures */
	{
		Oid			utypes[5] = {TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID, FLOAT8OID};
		Datum		uvalues[5];
		char		unulls[6] = "     ";

		uvalues[0] = ovalues[0];
		uvalues[1] = wm;
		if (isnull)
			unulls[1] = 'n';
		uvalues[2] = Int64GetDatum(closed);
		uvalues[3] = Int64GetDatum(open);
		uvalues[4] = Float8GetDatum((double) (GetCurrentTimestamp() - started) / 1000.0);
		pe_catalog_begin(&acc);
		if (SPI_execute_with_args("UPDATE pipeline.aggregate SET watermark = $2, "
								  "windows_closed = windows_closed OPERATOR(pg_catalog.+) $3, open_windows = $4, "
								  "last_batch_at = pg_catalog.now(), batch_ms = $5 WHERE name OPERATOR(pg_catalog.=) $1",
								  5, utypes, uvalues, unulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update aggregate \"%s\"", a->name);
		pe_catalog_end(&acc);
	}
}


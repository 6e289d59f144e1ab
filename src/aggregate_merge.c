/*-------------------------------------------------------------------------
 *
 * aggregate_merge.c
 *	  Step 5 of the data path, the merge: the events of a batch that an
 *	  aggregate counts go into their windows in one statement that merges
 *	  into the results table (count and sum add, min and max compare, avg
 *	  keeps its sum and count, ...), run as the consumer's owner: into the
 *	  results table, or with emit 'close' into the state table that holds
 *	  the open windows.  Which events count is aggregate.c's choice;
 *	  closing windows is aggregate_close.c's.
 *
 * IDENTIFICATION
 *	  src/aggregate_merge.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"

#include "catalog/pg_operator.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "aggregate.h"

/* A column of the results: NAME__suffix, quoted. */
static const char *
pe_agg_state(PeAggregate *a, int i, const char *suffix)
{
	return quote_identifier(psprintf("%s__%s", a->outs[i], suffix));
}

/*
 * An aggregate added by alter_aggregate() is complete in the windows that
 * start at its valid_from or later; before, it is null.  The literal of
 * that time, in the time column's type (the same microseconds for a
 * timestamp), or NULL when it is complete everywhere.
 */
static const char *
pe_agg_valid_from(PeAggregate *a, int i, Oid time_type)
{
	if (!a->has_valid_from[i])
		return NULL;
	/* its microseconds from 2000-01-01 (no DateStyle, no time zone, no abbreviations) */
	return psprintf("('2000-01-01 00:00:00%s'::%s OPERATOR(pg_catalog.+) '" INT64_FORMAT " microseconds'::pg_catalog.interval)",
					time_type == TIMESTAMPTZOID ? "+00" : "", format_type_be_qualified(time_type), a->valid_from[i]);
}

/* One item of the select list: expr, or null in windows before valid. */
static void
pe_agg_item(StringInfo s, const char *valid, const char *expr)
{
	if (valid)
		appendStringInfo(s, ", CASE WHEN w.s OPERATOR(pg_catalog.>=) %s THEN %s END", valid, expr);
	else
		appendStringInfo(s, ", %s", expr);
}

/* One assignment of ON CONFLICT ... SET: col = expr, the same way. */
static void
pe_agg_set(StringInfo s, const char *valid, const char *col, const char *expr)
{
	if (s->data[s->len - 1] != ' ')
		appendStringInfoString(s, ", ");
	if (valid)
		appendStringInfo(s, "%s = CASE WHEN r.window_start OPERATOR(pg_catalog.>=) %s THEN %s END", col, valid, expr);
	else
		appendStringInfo(s, "%s = %s", col, expr);
}

/* Aggregate i over the batch's events of one window (column m.c<ac>). */
static void
pe_agg_batch_expr(StringInfo s, PeAggregate *a, int i, int ac, Oid argtype, const char *valid)
{
	const char *fn = a->fns[i];
	char	   *not_null = psprintf("FILTER (WHERE m.c%d IS NOT NULL)", ac);

	if (ac < 0)
		pe_agg_item(s, valid, "pg_catalog.count(*)");
	else if (strcmp(fn, "avg") == 0)
	{
		pe_agg_item(s, valid, psprintf("pg_catalog.avg(m.c%d)", ac));
		pe_agg_item(s, valid, psprintf("pg_catalog.sum(%s)", pe_agg_avg_sum_argument(argtype, psprintf("m.c%d", ac))));
		pe_agg_item(s, valid, psprintf("pg_catalog.count(m.c%d)", ac));
	}
	else if (strcmp(fn, "first") == 0 || strcmp(fn, "last") == 0)
	{
		/* by event time, then as the messages came; nulls are not values */
		bool		first = strcmp(fn, "first") == 0;

		pe_agg_item(s, valid, psprintf("(pg_catalog.array_agg(m.c%d ORDER BY m.c0 %s, m.o %s) %s)[1]", ac,
									   first ? "" : "DESC", first ? "" : "DESC", not_null));
		pe_agg_item(s, valid, psprintf("pg_catalog.%s(m.c0) %s", first ? "min" : "max", not_null));
	}
	else if (strcmp(fn, "count_distinct") == 0)
	{
		pe_agg_item(s, valid, psprintf("pg_catalog.count(DISTINCT m.c%d)", ac));
		pe_agg_item(s, valid, psprintf("pg_catalog.array_agg(DISTINCT m.c%d) %s", ac, not_null));
	}
	else if (strcmp(fn, "approx_count_distinct") == 0)
	{
		/* the sketch's parameters given, not the session's hll_set_defaults(): every window's merge alike */
		char	   *h = psprintf("%s.hll_add_agg(%s.hll_hash_any(m.c%d, 0), %d, 5, -1, 1) %s", a->hll_schema,
								 a->hll_schema, ac, PE_AGG_HLL_LOG2M, not_null);

		pe_agg_item(s, valid, psprintf("COALESCE(pg_catalog.round(%s.hll_cardinality(%s))::pg_catalog.int8, 0)",
									   a->hll_schema, h));
		pe_agg_item(s, valid, h);
	}
	else if (strcmp(fn, "percentile") == 0)
	{
		pe_agg_item(s, valid, psprintf("%s.tdigest_percentile(m.c%d::pg_catalog.float8, %d, %.17g::pg_catalog.float8)",
									   a->tdigest_schema, ac, PE_AGG_TDIGEST_COMPRESSION, a->fractions[i]));
		pe_agg_item(s, valid, psprintf("%s.tdigest(m.c%d::pg_catalog.float8, %d)",
									   a->tdigest_schema, ac, PE_AGG_TDIGEST_COMPRESSION));
	}
	else
		pe_agg_item(s, valid, psprintf("pg_catalog.%s(m.c%d)", fn, ac));
}

/* Aggregate i of a window, its row r merged with the batch's (EXCLUDED). */
static void
pe_agg_merge_expr(StringInfo s, PeAggregate *a, int i, const char *valid)
{
	const char *fn = a->fns[i];
	const char *o = quote_identifier(a->outs[i]);

	if (strcmp(fn, "count") == 0)
		pe_agg_set(s, valid, o, psprintf("r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s", o, o));
	else if (strcmp(fn, "sum") == 0)
		pe_agg_set(s, valid, o, psprintf("COALESCE(r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s, r.%s, EXCLUDED.%s)",
										 o, o, o, o));
	else if (strcmp(fn, "min") == 0)
		pe_agg_set(s, valid, o, psprintf("LEAST(r.%s, EXCLUDED.%s)", o, o));
	else if (strcmp(fn, "max") == 0)
		pe_agg_set(s, valid, o, psprintf("GREATEST(r.%s, EXCLUDED.%s)", o, o));
	else if (strcmp(fn, "first") == 0 || strcmp(fn, "last") == 0)
	{
		const char *tm = pe_agg_state(a, i, "time");
		bool		first = strcmp(fn, "first") == 0;

		/* the earlier (first) or later (last) of the two; a tie keeps the first seen, or takes the last */
		pe_agg_set(s, valid, o, psprintf("CASE WHEN EXCLUDED.%s IS NOT NULL AND (r.%s IS NULL OR EXCLUDED.%s %s r.%s) "
										 "THEN EXCLUDED.%s ELSE r.%s END",
										 tm, tm, tm, first ? "OPERATOR(pg_catalog.<)" : "OPERATOR(pg_catalog.>=)", tm,
										 o, o));
		pe_agg_set(s, valid, tm, psprintf("%s(r.%s, EXCLUDED.%s)", first ? "LEAST" : "GREATEST", tm, tm));
	}
	else if (strcmp(fn, "count_distinct") == 0)
	{
		const char *set = pe_agg_state(a, i, "set");
		char	   *both = psprintf("pg_catalog.unnest(pg_catalog.array_cat(r.%s, EXCLUDED.%s))", set, set);

		pe_agg_set(s, valid, set, psprintf("(SELECT pg_catalog.array_agg(DISTINCT e) FROM %s AS e)", both));
		pe_agg_set(s, valid, o, psprintf("(SELECT pg_catalog.count(DISTINCT e) FROM %s AS e)", both));
	}
	else if (strcmp(fn, "approx_count_distinct") == 0)
	{
		const char *h = pe_agg_state(a, i, "hll");
		char	   *both = psprintf("COALESCE(%s.hll_union(r.%s, EXCLUDED.%s), r.%s, EXCLUDED.%s)",
									a->hll_schema, h, h, h, h);

		pe_agg_set(s, valid, h, both);
		pe_agg_set(s, valid, o, psprintf("COALESCE(pg_catalog.round(%s.hll_cardinality(%s))::pg_catalog.int8, 0)",
										 a->hll_schema, both));
	}
	else if (strcmp(fn, "percentile") == 0)
	{
		const char *d = pe_agg_state(a, i, "digest");
		char	   *both = psprintf("COALESCE(%s.tdigest_union(r.%s, EXCLUDED.%s), r.%s, EXCLUDED.%s)",
									a->tdigest_schema, d, d, d, d);

		pe_agg_set(s, valid, d, both);
		pe_agg_set(s, valid, o, psprintf("(SELECT %s.tdigest_percentile(x, %.17g::pg_catalog.float8) FROM (SELECT %s) AS v(x))",
										 a->tdigest_schema, a->fractions[i], both));
	}
	else
	{
		const char *sum = pe_agg_state(a, i, "sum");
		const char *cnt = pe_agg_state(a, i, "count");
		char	   *merged_sum = psprintf("COALESCE(r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s, r.%s, EXCLUDED.%s)",
										  sum, sum, sum, sum);
		char	   *merged_cnt = psprintf("r.%s OPERATOR(pg_catalog.+) EXCLUDED.%s", cnt, cnt);
		Oid			avg_type = get_atttype(a->results, get_attnum(a->results, a->outs[i]));

		/* as avg() divides: in double precision for floats (sum in it), in numeric otherwise */
		const char *div = avg_type == FLOAT8OID ? "pg_catalog.float8" : "pg_catalog.numeric";

		pe_agg_set(s, valid, sum, merged_sum);
		pe_agg_set(s, valid, cnt, merged_cnt);
		pe_agg_set(s, valid, o, psprintf("CASE WHEN %s OPERATOR(pg_catalog.>) 0 THEN "
										 "((%s)::%s OPERATOR(pg_catalog./) (%s)::%s)::%s END",
										 merged_cnt, merged_sum, div, merged_cnt, div, format_type_be_qualified(avg_type)));
	}
}

/*
 * The batch's events as rows: c0 the time, c1.. the groups, then the
 * arguments (the columns cols, values in the statement's parameters $1..),
 * each with its collation as the table compares it (unnest gives the
 * type's default), and with order, o the order the messages came in (for
 * first, last and sessions).  The arrays are unnested in the select list,
 * side by side: a ProjectSet streams the rows, where a function scan in
 * FROM (ROWS FROM ... WITH ORDINALITY) would first copy them all into a
 * tuplestore, which took half the time of the aggregation.
 */
static void
pe_agg_events(StringInfo s, PeTarget *t, const int *cols, int ncols, bool order)
{
	appendStringInfoString(s, "(SELECT ");
	for (int c = 0; c < ncols; c++)
	{
		Oid			coll = cols[c] >= 0 ? t->cols[cols[c]].collation : InvalidOid;

		appendStringInfo(s, "%spg_catalog.unnest($%d)%s", c ? ", " : "", c + 1,
						 cols[c] >= 0 ? t->cols[cols[c]].cast : "");
		if (OidIsValid(coll) && coll != DEFAULT_COLLATION_OID)
			appendStringInfo(s, " COLLATE %s", generate_collation_name(coll));
		appendStringInfo(s, " AS c%d", c);
	}
	if (order)
		appendStringInfoString(s, ", pg_catalog.generate_subscripts($1, 1) AS o");
	appendStringInfoChar(s, ')');
}

/* Whether an aggregate reads the order the messages came in (m.o). */
static bool
pe_agg_needs_order(PeAggregate *a)
{
	for (int i = 0; i < a->naggs; i++)
		if (strcmp(a->fns[i], "first") == 0 || strcmp(a->fns[i], "last") == 0)
			return true;
	return a->session;
}

/* Which of the event columns (c<n>) aggregate i reads; -1 for count(*). */
static int
pe_agg_arg(PeAggregate *a, int i, PeTarget *t, const int *cols, int ncols)
{
	for (int c = 0; c < ncols; c++)
		if (cols[c] >= 0 && strcmp(a->args[i], "*") != 0 && strcmp(t->cols[cols[c]].name, a->args[i]) == 0)
			return c;
	return -1;
}

/* The type of function i's argument (InvalidOid for *). */
static Oid
pe_agg_arg_type(PeAggregate *a, int i, PeTarget *t, const int *cols, int ncols)
{
	int			ac = pe_agg_arg(a, i, t, cols, ncols);

	return ac >= 0 ? t->cols[cols[ac]].typid : InvalidOid;
}

/*
 * What avg's sum adds up, expr of type argtype: a real in double
 * precision, as avg(real) accumulates it (a real sum loses 1 + 1 added to
 * 16777216); other types as they are.
 */
const char *
pe_agg_avg_sum_argument(Oid argtype, const char *expr)
{
	if (OidIsValid(argtype) && getBaseType(argtype) == FLOAT4OID)
		return psprintf("(%s)::pg_catalog.float8", expr);
	return expr;
}

/*
 * The end of the statement that merges a batch's windows into the results
 * (r, as the INSERT names it): a window and group already there takes the
 * merge of the two.
 */
void
pe_agg_on_conflict(StringInfo s, PeAggregate *a, Oid time_type)
{
	/* (no order needed: a batch holds the aggregate's row lock, pe_agg_lock()) */
	appendStringInfoString(s, " ON CONFLICT (window_start, window_end");
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(s, ", %s", quote_identifier(a->groups[i]));
	appendStringInfoString(s, ") DO UPDATE SET ");
	for (int i = 0; i < a->naggs; i++)
		pe_agg_merge_expr(s, a, i, pe_agg_valid_from(a, i, time_type));
}

/* The statement that merges a batch's events into the results. */
static char *
pe_agg_sql(PeAggregate *a, PeTarget *t, const int *cols, int ncols, Oid time_type)
{
	StringInfoData s;
	const char *res = pe_agg_table(a, a->emit_close ? a->state : a->results);
	/*
	 * Windows are aligned in wall time: the time zone's ($ncols+7), or
	 * UTC's (the same microseconds).  x is a window's start in it; s and e
	 * its start and end as the time column has them.  Whether a window
	 * holds an event is judged in wall time, as the late check does
	 * (aggregate.c); whether it is still open, in instants.
	 */
	const char *lt = format_type_be_qualified(a->time_zone ? TIMESTAMPOID : time_type);
	char	   *tz = psprintf("$%d", ncols + 7);
	const char *local_c0 = a->time_zone ? psprintf("pg_catalog.timezone(%s, m.c0)", tz) : "m.c0";
	const char *bin = psprintf("pg_catalog.date_bin($%d, %s, $%d::%s)", ncols + 2, local_c0, ncols + 3, lt);
	const char *x_end = psprintf("x OPERATOR(pg_catalog.+) $%d", ncols + 1);
	const char *s_of_x = a->time_zone ? psprintf("pg_catalog.timezone(%s, x)", tz) : "x";
	const char *e_of_x = a->time_zone ? psprintf("pg_catalog.timezone(%s, %s)", tz, x_end) : x_end;

	initStringInfo(&s);

	appendStringInfo(&s, "INSERT INTO %s AS r (%s) SELECT w.s, w.e", res, pe_agg_columns(a));
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", m.c%d", i + 1);
	for (int i = 0; i < a->naggs; i++)
		pe_agg_batch_expr(&s, a, i, pe_agg_arg(a, i, t, cols, ncols), pe_agg_arg_type(a, i, t, cols, ncols),
						  pe_agg_valid_from(a, i, time_type));
	appendStringInfoString(&s, " FROM ");
	pe_agg_events(&s, t, cols, ncols, pe_agg_needs_order(a));
	appendStringInfoString(&s, " AS m");
	if (a->cumulative)
	{
		/* cumulative: the windows of the event's start (binned by the size) that end after it, step by step */
		const char *b = psprintf("pg_catalog.date_bin($%d, %s, $%d::%s)", ncols + 1, local_c0, ncols + 3, lt);
		const char *e_of = a->time_zone ? psprintf("pg_catalog.timezone(%s, x)", tz) : "x";

		appendStringInfo(&s, " CROSS JOIN LATERAL (SELECT %s AS s, %s AS e FROM (SELECT %s AS b) AS y, "
						 "pg_catalog.generate_series(y.b OPERATOR(pg_catalog.+) $%d, y.b OPERATOR(pg_catalog.+) $%d, $%d) AS x "
						 "WHERE x OPERATOR(pg_catalog.>) %s AND ($%d IS NULL OR %s OPERATOR(pg_catalog.>) $%d)) AS w GROUP BY w.s, w.e",
						 a->time_zone ? psprintf("pg_catalog.timezone(%s, y.b)", tz) : "y.b", e_of, b,
						 ncols + 2, ncols + 1, ncols + 2, local_c0, ncols + 5, e_of, ncols + 5);
	}
	else if (a->size_us == a->slide_us)
		/* a tumbling window: the one that holds the event (open: aggregate.c kept the late ones out) */
		appendStringInfo(&s, " CROSS JOIN LATERAL (SELECT %s AS s, %s AS e FROM (SELECT %s AS x) AS y) AS w GROUP BY w.s, w.e",
						 s_of_x, e_of_x, bin);
	else
		/* every window that holds the event: the last one to start, and those before it */
		appendStringInfo(&s, " CROSS JOIN LATERAL (SELECT %s AS s, %s AS e FROM pg_catalog.generate_series(%s OPERATOR(pg_catalog.-) $%d, %s, $%d) AS x "
						 "WHERE %s OPERATOR(pg_catalog.>) %s "
						 /* and is still open: a closed window stays as it closed */
						 "AND ($%d IS NULL OR %s OPERATOR(pg_catalog.>) $%d)"
						 ") AS w GROUP BY w.s, w.e",
						 s_of_x, e_of_x, bin, ncols + 4, bin, ncols + 2, x_end, local_c0, ncols + 5, e_of_x, ncols + 5);
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", m.c%d", i + 1);
	pe_agg_on_conflict(&s, a, time_type);
	/* each change of a window is emitted, with emit 'update' */
	return pe_agg_emit_wrap(a, NULL, s.data, !a->emit_close, NULL, NULL);
}

/* The qualified name of a type's default equality operator, for OPERATOR(). */
static char *
pe_agg_equality(Oid typid)
{
	Oid			opr = lookup_type_cache(typid, TYPECACHE_EQ_OPR)->eq_opr;
	HeapTuple	tup;
	char	   *name;

	if (!OidIsValid(opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("could not identify an equality operator for type %s", format_type_be(typid)),
				 errhint("Group session windows by columns whose type has a default btree operator class.")));
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opr);
	name = psprintf("%s.%s", quote_identifier(get_namespace_name(((Form_pg_operator) GETSTRUCT(tup))->oprnamespace)),
					NameStr(((Form_pg_operator) GETSTRUCT(tup))->oprname));
	ReleaseSysCache(tup);
	return name;
}

/* The name of aggregate i's column k (0: its value, 1..: its state) in a session merge's rows. */
static char *
pe_agg_scol(PeAggregate *a, int i, int k)
{
	const char *suffixes[2];

	(void) pe_agg_state_columns(a->fns[i], suffixes);
	return k == 0 ? psprintf("a%d", i) : psprintf("a%d_%s", i, suffixes[k - 1]);
}

/* Aggregate i's value and state over the rows of one session (i.*). */
static void
pe_agg_session_combine(StringInfo s, PeAggregate *a, int i)
{
	const char *fn = a->fns[i];
	const char *v = pe_agg_scol(a, i, 0);
	const char *ty = format_type_be_qualified(get_atttype(a->results, get_attnum(a->results, a->outs[i])));

	if (strcmp(fn, "count") == 0)
		appendStringInfo(s, ", pg_catalog.sum(i.%s)::pg_catalog.int8", v);
	else if (strcmp(fn, "sum") == 0)
		appendStringInfo(s, ", pg_catalog.sum(i.%s)::%s", v, ty);
	else if (strcmp(fn, "min") == 0 || strcmp(fn, "max") == 0)
		appendStringInfo(s, ", pg_catalog.%s(i.%s)", fn, v);
	else if (strcmp(fn, "avg") == 0)
	{
		const char *sum = pe_agg_scol(a, i, 1);
		const char *cnt = pe_agg_scol(a, i, 2);
		const char *div = strcmp(ty, "double precision") == 0 ? "pg_catalog.float8" : "pg_catalog.numeric";
		const char *sty = format_type_be_qualified(get_atttype(a->results, get_attnum(a->results,
																				   psprintf("%s__sum", a->outs[i]))));

		appendStringInfo(s, ", CASE WHEN pg_catalog.sum(i.%s) OPERATOR(pg_catalog.>) 0 THEN "
						 "(pg_catalog.sum(i.%s)::%s OPERATOR(pg_catalog./) pg_catalog.sum(i.%s)::%s)::%s END, "
						 "pg_catalog.sum(i.%s)::%s, pg_catalog.sum(i.%s)::pg_catalog.int8",
						 cnt, sum, div, cnt, div, ty, sum, sty, cnt);
	}
	else if (strcmp(fn, "first") == 0 || strcmp(fn, "last") == 0)
	{
		const char *tm = pe_agg_scol(a, i, 1);
		bool		first = strcmp(fn, "first") == 0;

		appendStringInfo(s, ", (pg_catalog.array_agg(i.%s ORDER BY i.%s %s, i.o %s) FILTER (WHERE i.%s IS NOT NULL))[1], "
						 "pg_catalog.%s(i.%s)",
						 v, tm, first ? "" : "DESC", first ? "" : "DESC", tm, first ? "min" : "max", tm);
	}
	else if (strcmp(fn, "approx_count_distinct") == 0)
	{
		const char *h = pe_agg_scol(a, i, 1);

		appendStringInfo(s, ", COALESCE(pg_catalog.round(%s.hll_cardinality(%s.hll_union_agg(i.%s)))::pg_catalog.int8, 0), "
						 "%s.hll_union_agg(i.%s)", a->hll_schema, a->hll_schema, h, a->hll_schema, h);
	}
	else if (strcmp(fn, "percentile") == 0)
	{
		const char *d = pe_agg_scol(a, i, 1);

		appendStringInfo(s, ", %s.tdigest_percentile(i.%s, %.17g::pg_catalog.float8), %s.tdigest(i.%s)",
						 a->tdigest_schema, d, a->fractions[i], a->tdigest_schema, d);
	}
	else
		elog(ERROR, "aggregate \"%s\": %s is not supported in session windows", a->name, fn);
}

/*
 * " AND" each group of the events (prefix: "b.g" names them b.g1, b.g2, ...)
 * equal to the results row r's, a null equal to a null, with the type's
 * own equality (IS NOT DISTINCT FROM would look = up on the search_path).
 */
static void
pe_agg_group_match(StringInfo s, PeAggregate *a, PeTarget *t, const int *cols, const char *prefix)
{
	for (int k = 0; k < a->ngroups; k++)
	{
		const char *col = quote_identifier(a->groups[k]);

		appendStringInfo(s, " AND (%s%d OPERATOR(%s) r.%s OR (%s%d IS NULL AND r.%s IS NULL))",
						 prefix, k + 1, pe_agg_equality(t->cols[cols[k + 1]].typid), col, prefix, k + 1, col);
	}
}

/*
 * The statement that merges a batch's events into session windows: each
 * event is a session of its own, [time, time + gap); the open sessions of
 * its group that it overlaps are taken out of the table, and the events
 * and those sessions are merged where they overlap (gaps and islands, per
 * group, in time order), each island one session with its aggregates
 * combined, put back.  An event can so join two sessions into one.
 */
static char *
pe_agg_session_sql(PeAggregate *a, PeTarget *t, const int *cols, int ncols)
{
	StringInfoData c;
	StringInfoData s;
	StringInfoData g;			/* the groups, as b and u name them: g1, g2 */
	StringInfoData ig;			/* ... and as i.g1 */
	StringInfoData gm;			/* ... and as m.c1 */
	const char *res = pe_agg_table(a, a->emit_close ? a->state : a->results);

	initStringInfo(&c);
	initStringInfo(&s);
	initStringInfo(&g);
	initStringInfo(&ig);
	initStringInfo(&gm);
	for (int k = 0; k < a->ngroups; k++)
	{
		appendStringInfo(&g, "%sg%d", k ? ", " : "", k + 1);
		appendStringInfo(&ig, ", i.g%d", k + 1);
		appendStringInfo(&gm, ", m.c%d", k + 1);
	}

	/* ev: the events; b: each one as a session, with its aggregates' states */
	appendStringInfoString(&c, "ev AS ");
	pe_agg_events(&c, t, cols, ncols, true);
	appendStringInfo(&c, ", b(s, e%s%s, o", a->ngroups ? ", " : "", g.data);
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			n = pe_agg_state_columns(a->fns[i], suffixes);

		for (int k = 0; k <= n; k++)
			appendStringInfo(&c, ", %s", pe_agg_scol(a, i, k));
	}
	appendStringInfo(&c, ") AS (SELECT m.c0, m.c0 OPERATOR(pg_catalog.+) $%d%s, m.o", ncols + 1, gm.data);
	for (int i = 0; i < a->naggs; i++)
		pe_agg_batch_expr(&c, a, i, pe_agg_arg(a, i, t, cols, ncols), pe_agg_arg_type(a, i, t, cols, ncols), NULL);
	appendStringInfo(&c, " FROM ev AS m GROUP BY m.o, m.c0%s), ", gm.data);

	/* cand: the open sessions the events overlap, taken out */
	appendStringInfo(&c, "cand AS (DELETE FROM %s AS r WHERE NOT r.closed "
					 "AND r.window_end OPERATOR(pg_catalog.>) (SELECT pg_catalog.min(b.s) FROM b) "
					 "AND EXISTS (SELECT FROM b WHERE b.s OPERATOR(pg_catalog.<) r.window_end "
					 "AND b.e OPERATOR(pg_catalog.>) r.window_start", res);
	pe_agg_group_match(&c, a, t, cols, "b.g");
	appendStringInfoString(&c, ") RETURNING r.*), ");

	/* u: both, alike; f, i: the islands of overlapping sessions */
	appendStringInfoString(&c, "u AS (SELECT x.window_start AS s, x.window_end AS e");
	for (int k = 0; k < a->ngroups; k++)
		appendStringInfo(&c, ", x.%s AS g%d", quote_identifier(a->groups[k]), k + 1);
	/* (a total order for ties: the sessions taken out before the events, each its own) */
	appendStringInfoString(&c, ", OPERATOR(pg_catalog.-) pg_catalog.row_number() OVER () AS o");
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			n = pe_agg_state_columns(a->fns[i], suffixes);

		appendStringInfo(&c, ", x.%s AS %s", quote_identifier(a->outs[i]), pe_agg_scol(a, i, 0));
		for (int k = 0; k < n; k++)
			appendStringInfo(&c, ", x.%s AS %s", pe_agg_state(a, i, suffixes[k]), pe_agg_scol(a, i, k + 1));
	}
	appendStringInfo(&c, " FROM cand AS x UNION ALL SELECT * FROM b), "
					 "f AS (SELECT u.*, CASE WHEN u.s OPERATOR(pg_catalog.>=) pg_catalog.max(u.e) OVER "
					 "(%s%s ORDER BY u.s, u.e, u.o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) THEN 1 ELSE 0 END AS fresh FROM u), "
					 "i AS (SELECT f.*, pg_catalog.sum(f.fresh) OVER (%s%s ORDER BY f.s, f.e, f.o ROWS UNBOUNDED PRECEDING) AS island FROM f)",
					 a->ngroups ? "PARTITION BY " : "", g.data, a->ngroups ? "PARTITION BY " : "", g.data);

	/* each island a session */
	appendStringInfo(&s, "INSERT INTO %s AS r (%s) SELECT pg_catalog.min(i.s), pg_catalog.max(i.e)%s",
					 res, pe_agg_columns(a), ig.data);
	for (int i = 0; i < a->naggs; i++)
		pe_agg_session_combine(&s, a, i);
	appendStringInfo(&s, " FROM i GROUP BY i.island%s", ig.data);
	return pe_agg_emit_wrap(a, c.data, s.data, !a->emit_close, "(SELECT pg_catalog.count(*) FROM cand)", "cand");
}

/*
 * The statement's first ncols arguments: the events take[0..ntake) of
 * rows, column by column (cols, the time first: its values are times[]),
 * as arrays, and their types.
 */
static void
pe_agg_event_args(PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake, const int *cols,
				  int ncols, Oid time_type, Oid *types, Datum *values)
{
	Datum	   *ev = palloc(sizeof(Datum) * Max(ntake, 1));
	bool	   *en = palloc(sizeof(bool) * Max(ntake, 1));

	for (int i = 0; i < ntake; i++)
		ev[i] = times[take[i]];
	types[0] = time_type == TIMESTAMPTZOID ? TIMESTAMPTZARRAYOID : TIMESTAMPARRAYOID;
	values[0] = PointerGetDatum(construct_array(ev, ntake, time_type, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	for (int c = 1; c < ncols; c++)
	{
		PeColumn   *col = &t->cols[cols[c]];

		for (int i = 0; i < ntake; i++)
		{
			ev[i] = rows[take[i]].values[cols[c]];
			en[i] = rows[take[i]].nulls[cols[c]];
		}
		types[c] = col->arraytyp;
		values[c] = pe_column_array(col, ev, en, ntake);
	}
	pfree(ev);
	pfree(en);
}

/*
 * For a session aggregate, whether each of the events take[0..ntake)
 * (rows, their times) falls within the gap of a session of its group as
 * the results stand before the batch: in_closed[k] one that had closed,
 * in_open[k] one still open.  (cols: the time, then the groups.)  An
 * event is judged late against the session it would join, not against
 * the session it would open alone: one that joins an open session counts
 * there, however old; one that would join a closed session is late, even
 * if its own session would end after the watermark (a closed session is
 * final: extending it, or opening another over it, would make sessions
 * that plain SQL over the events counted would not).
 */
void
pe_agg_session_joins(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake,
					 const int *cols, bool *in_closed, bool *in_open)
{
	int			ncols = 1 + a->ngroups;
	int			nargs = ncols + 1;
	Oid		   *types = palloc(sizeof(Oid) * nargs);
	Datum	   *values = palloc(sizeof(Datum) * nargs);
	char	   *nulls = palloc(nargs + 1);
	Oid			time_type = cols[0] >= 0 ? t->cols[cols[0]].typid : TIMESTAMPTZOID;
	const char *results = pe_agg_table(a, a->results);
	const char *open_in = a->emit_close ? pe_agg_table(a, a->state) : results;
	StringInfoData match;
	StringInfoData sql;

	initStringInfo(&match);
	pe_agg_group_match(&match, a, t, cols, "e.c");
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT e.o, EXISTS (SELECT FROM %s AS r WHERE r.closed "
					 "AND r.window_start OPERATOR(pg_catalog.<) (e.c0 OPERATOR(pg_catalog.+) $%d) "
					 "AND r.window_end OPERATOR(pg_catalog.>) e.c0%s), "
					 "EXISTS (SELECT FROM %s AS r WHERE NOT r.closed "
					 "AND r.window_start OPERATOR(pg_catalog.<) (e.c0 OPERATOR(pg_catalog.+) $%d) "
					 "AND r.window_end OPERATOR(pg_catalog.>) e.c0%s) FROM ",
					 results, nargs, match.data, open_in, nargs, match.data);
	pe_agg_events(&sql, t, cols, ncols, true);
	appendStringInfoString(&sql, " AS e");

	pe_agg_event_args(t, rows, times, take, ntake, cols, ncols, time_type, types, values);
	types[ncols] = INTERVALOID;
	values[ncols] = pe_agg_interval(a->size_us);
	memset(nulls, ' ', nargs);
	nulls[nargs] = '\0';
	if (pe_agg_as_owner(t, sql.data, nargs, types, values, nulls) != SPI_OK_SELECT || SPI_processed != (uint64) ntake)
		elog(ERROR, "could not look up the sessions of aggregate \"%s\"", a->name);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int			k = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)) - 1;

		in_closed[k] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		in_open[k] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
	}
}

/*
 * Merge the events it takes (rows take[0..ntake-1]) into the results, as
 * the consumer's owner: one statement over the columns it reads (cols,
 * the time first: its values are times[], indexed like rows).
 */
void
pe_agg_merge(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake,
			 const int *cols, int ncols)
{
	int			nargs = ncols + 7;
	Oid		   *types = palloc(sizeof(Oid) * nargs);
	Datum	   *values = palloc(sizeof(Datum) * nargs);
	Oid			time_type = cols[0] >= 0 ? t->cols[cols[0]].typid : TIMESTAMPTZOID;
	char	   *sql;
	char	   *nulls = palloc(nargs + 1);
	int			rc;
	int64		inserted;

	/* the common aggregate: grouped in C first */
	if (!a->session && pe_agg_pre_merge(a, t, rows, times, take, ntake, cols, ncols))
		return;
	sql = a->session ? pe_agg_session_sql(a, t, cols, ncols) : pe_agg_sql(a, t, cols, ncols, time_type);

	/* the times (a column's, or the messages' timestamps), then the columns */
	pe_agg_event_args(t, rows, times, take, ntake, cols, ncols, time_type, types, values);
	types[ncols] = INTERVALOID;
	values[ncols] = pe_agg_interval(a->size_us);
	types[ncols + 1] = INTERVALOID;
	values[ncols + 1] = pe_agg_interval(a->slide_us);
	/* the origin as UTC wall time for a timestamp column: the same microseconds */
	types[ncols + 2] = a->time_zone ? TIMESTAMPOID : time_type;
	values[ncols + 2] = TimestampTzGetDatum(a->origin);
	/* how far back the first window holding an event starts */
	types[ncols + 3] = INTERVALOID;
	values[ncols + 3] = pe_agg_interval(((a->size_us + a->slide_us - 1) / a->slide_us - 1) * a->slide_us);
	/* which windows are open: those ending after where they are closed (the lateness is in it) */
	types[ncols + 4] = time_type;
	values[ncols + 4] = Int64GetDatum(a->cp);
	types[ncols + 5] = INTERVALOID;
	values[ncols + 5] = pe_agg_interval(0);
	/* the time zone the windows are aligned in (unused without one) */
	types[ncols + 6] = TEXTOID;
	values[ncols + 6] = CStringGetTextDatum(a->time_zone ? a->time_zone : "UTC");

	memset(nulls, ' ', nargs);
	nulls[nargs] = '\0';
	if (!a->has_cp)
		nulls[ncols + 4] = 'n';
	rc = pe_agg_as_owner(t, sql, nargs, types, values, nulls);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not update aggregate \"%s\"", a->name);
	(void) pe_agg_emitted(a, t, !a->emit_close, &inserted);
	a->opened += inserted;
}

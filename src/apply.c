/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying a batch of rows to the target with set-based statements
 *	  prepared once: one INSERT (append) or INSERT ... ON CONFLICT DO UPDATE
 *	  (upsert) over unnest() of one array per column, and one DELETE for
 *	  tombstones, run by deadletter.c, which isolates the rows that fail.
 *	  They run as the consumer's owner (batch.c switches to it), with
 *	  SECURITY_RESTRICTED_OPERATION as for REFRESH MATERIALIZED VIEW, so a
 *	  trigger on the target runs with the owner's privileges and no more.
 *
 * IDENTIFICATION
 *	  src/apply.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "datapath.h"

/* An operator as OPERATOR(schema.name), whatever the search_path. */
static char *
pe_qualified_operator(Oid opr)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opr));
	Form_pg_operator form;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opr);
	form = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(form->oprnamespace)),
					  NameStr(form->oprname));
	ReleaseSysCache(tup);
	return result;
}

void
pe_build_statements(PeTarget *t)
{
	StringInfoData sql;
	Oid		   *argtypes = palloc(sizeof(Oid) * t->ncols);
	bool		first;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS t (", t->relname);
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%s%s", c ? ", " : "", quote_identifier(t->cols[c].name));
	appendStringInfoString(&sql, ") SELECT ");
	for (int c = 0; c < t->ncols; c++)
	{
		if (t->cols[c].default_expr)
			appendStringInfo(&sql, "%sCOALESCE(u.a%d%s, %s)", c ? ", " : "", c, t->cols[c].cast,
							 t->cols[c].default_expr);
		else
			appendStringInfo(&sql, "%su.a%d%s", c ? ", " : "", c, t->cols[c].cast);
		argtypes[c] = t->cols[c].arraytyp;
	}
	appendStringInfoString(&sql, " FROM ROWS FROM (");
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%spg_catalog.unnest($%d)", c ? ", " : "", c + 1);
	appendStringInfoString(&sql, ") AS u(");
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%sa%d", c ? ", " : "", c);
	appendStringInfoChar(&sql, ')');

	if (t->def->upsert)
	{
		appendStringInfoString(&sql, " ON CONFLICT (");
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%s%s", k ? ", " : "", quote_identifier(t->cols[t->keycols[k]].name));
		appendStringInfoChar(&sql, ')');
		first = true;
		for (int c = 0; c < t->ncols; c++)
		{
			if (t->cols[c].is_key)
				continue;
			appendStringInfo(&sql, "%s%s = EXCLUDED.%s", first ? " DO UPDATE SET " : ", ",
							 quote_identifier(t->cols[c].name), quote_identifier(t->cols[c].name));
			first = false;
		}
		if (first)
			appendStringInfoString(&sql, " DO NOTHING");
	}

	t->apply_plan = SPI_prepare(sql.data, t->ncols, argtypes);
	if (t->apply_plan == NULL)
		elog(ERROR, "could not prepare the apply statement of consumer \"%s\": %s",
			 t->def->name, SPI_result_code_string(SPI_result));
	SPI_keepplan(t->apply_plan);

	if (t->def->delete_on_tombstone)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "DELETE FROM %s AS t USING ROWS FROM (", t->relname);
		for (int k = 0; k < t->nkeys; k++)
		{
			appendStringInfo(&sql, "%spg_catalog.unnest($%d)", k ? ", " : "", k + 1);
			argtypes[k] = t->cols[t->keycols[k]].arraytyp;
		}
		appendStringInfoString(&sql, ") AS u(");
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%sa%d", k ? ", " : "", k);
		appendStringInfoString(&sql, ") WHERE ");
		/*
		 * The key type's own equality operator (the one de-duplication
		 * uses), named with its schema: no operator of that name planted
		 * in a schema on some search_path can stand in for it.
		 */
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%st.%s %s u.a%d%s", k ? " AND " : "",
							 quote_identifier(t->cols[t->keycols[k]].name),
							 pe_qualified_operator(t->cols[t->keycols[k]].eq_opr), k,
							 t->cols[t->keycols[k]].cast);
		t->delete_plan = SPI_prepare(sql.data, t->nkeys, argtypes);
		if (t->delete_plan == NULL)
			elog(ERROR, "could not prepare the delete statement of consumer \"%s\": %s",
				 t->def->name, SPI_result_code_string(SPI_result));
		SPI_keepplan(t->delete_plan);
	}
}

/*
 * A column's values as one argument of a statement: an array of its type,
 * or, for a type without an array type (an array column), an array of the
 * values' text, which the statement casts back (col->cast).
 */
Datum
pe_column_array(PeColumn *col, Datum *values, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Datum	   *texts;
	Datum		result;

	if (!col->via_text)
		return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, col->typid,
												  col->typlen, col->typbyval, col->typalign));
	texts = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
		texts[i] = nulls[i] ? (Datum) 0 :
			PointerGetDatum(cstring_to_text(OutputFunctionCall(&col->outfunc, values[i])));
	result = PointerGetDatum(construct_md_array(texts, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
	pfree(texts);
	return result;
}

/* The statement's arguments for rows[0..n): an array per column (or key). */
static void
pe_statement_args(PeTarget *t, PeRow **rows, int n, bool is_delete, Datum *args)
{
	int			nargs = is_delete ? t->nkeys : t->ncols;
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *enulls = palloc(sizeof(bool) * Max(n, 1));

	for (int a = 0; a < nargs; a++)
	{
		int			c = is_delete ? t->keycols[a] : a;

		for (int i = 0; i < n; i++)
		{
			elems[i] = rows[i]->values[c];
			enulls[i] = rows[i]->nulls[c];
		}
		args[a] = pe_column_array(&t->cols[c], elems, enulls, n);
	}
	pfree(elems);
	pfree(enulls);
}

/*
 * Run fn(arg) in a subtransaction: kept when keep is set, else rolled back
 * even when it succeeds (a trial, which leaves nothing behind, not even a
 * subtransaction id in the cache).  NULL, or the error it raised (copied;
 * the subtransaction rolled back).
 */
ErrorData *
pe_try_subxact(void (*fn) (void *arg), void *arg, bool keep)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		if (keep)
			ReleaseCurrentSubTransaction();
		else
			RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return edata;
}

/* A statement's rows, for pe_try_subxact. */
typedef struct PeTryRows
{
	PeTarget   *t;
	PeRow	  **rows;
	int			n;
	bool		is_delete;
	Datum	   *args;
	int64	   *processed;
} PeTryRows;

static void
pe_try_rows(void *arg)
{
	PeTryRows  *x = arg;
	bool		direct = !x->is_delete && !x->t->def->upsert;

	if (!direct || !pe_append_rows(x->t, x->rows, x->n, x->processed))
	{
		int			rc;

		pe_statement_args(x->t, x->rows, x->n, x->is_delete, x->args);
		rc = SPI_execute_plan(x->is_delete ? x->t->delete_plan : x->t->apply_plan, x->args, NULL, false, 0);
		if (rc < 0)
			elog(ERROR, "could not apply a batch of consumer \"%s\": %s", x->t->def->name, SPI_result_code_string(rc));
		*x->processed = SPI_processed;
	}
}

/*
 * Execute the insert (or delete) for rows[0..n) in a subtransaction, kept
 * or a trial (pe_try_subxact).  Appends go straight into the heap where
 * the target allows it (apply_append.c), else through the statement.
 */
ErrorData *
pe_try_statement(PeTarget *t, PeRow **rows, int n, bool is_delete, bool keep, int64 *processed)
{
	int			nargs = is_delete ? t->nkeys : t->ncols;
	PeTryRows	x = {t, rows, n, is_delete, palloc0(sizeof(Datum) * nargs), processed};
	ErrorData  *edata = pe_try_subxact(pe_try_rows, &x, keep);

	for (int a = 0; a < nargs; a++)
		if (x.args[a] != (Datum) 0)
			pfree(DatumGetPointer(x.args[a]));
	pfree(x.args);
	return edata;
}

/*
 * Order rows by their keys, as the unique index does (NULL keys last);
 * bytewise text keys in byte order, which is a total order of the rows
 * left after de-duplication all the same, and close to the index's.
 */
static int
pe_row_key_cmp(const void *a, const void *b, void *arg)
{
	PeTarget   *t = arg;
	PeRow	   *ra = *(PeRow *const *) a;
	PeRow	   *rb = *(PeRow *const *) b;

	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];
		int32		r;

		if (ra->nulls[c] || rb->nulls[c])
		{
			if (ra->nulls[c] != rb->nulls[c])
				return ra->nulls[c] ? 1 : -1;
			continue;
		}
		if (t->cols[c].bytewise)
			r = pe_key_bytes_cmp(ra->values[c], rb->values[c]);
		else
			r = DatumGetInt32(FunctionCall2Coll(t->cols[c].cmp_fn, t->cols[c].collation,
												ra->values[c], rb->values[c]));
		if (r != 0)
			return r;
	}
	return 0;
}

static bool
pe_can_sort(PeTarget *t)
{
	for (int k = 0; k < t->nkeys; k++)
		if (t->cols[t->keycols[k]].cmp_fn == NULL && !t->cols[t->keycols[k]].bytewise)
			return false;
	return t->nkeys > 0;
}

/*
 * Apply the decoded rows[0..nrows) in the current transaction, as the
 * current user (the consumer's owner): upserts and appends in one
 * statement, tombstones in another, each isolating the rows that fail
 * (deadletter.c).  A row superseded by a newer one of its key counts as
 * applied.
 */
void
pe_apply(PeTarget *t, PeRow *rows, int nrows, PeBatchResult *res)
{
	PeRow	  **ins;
	PeRow	  **del;
	int			nins = 0;
	int			ndel = 0;

	ins = palloc(sizeof(PeRow *) * Max(nrows, 1));
	del = palloc(sizeof(PeRow *) * Max(nrows, 1));
	for (int r = 0; r < nrows; r++)
	{
		if (rows[r].superseded)
			res->applied++;		/* a newer message of its key wins */
		else if (rows[r].tombstone)
			del[ndel++] = &rows[r];
		else
			ins[nins++] = &rows[r];
	}

	/*
	 * Apply upserts in key order: the index and heap pages are then visited
	 * in order, as INSERT ... SELECT DISTINCT ON (key) ... ORDER BY would,
	 * and two slots touching the same keys lock them in the same order.
	 */
	if (t->def->upsert && pe_can_sort(t))
	{
		qsort_arg(ins, nins, sizeof(PeRow *), pe_row_key_cmp, t);
		qsort_arg(del, ndel, sizeof(PeRow *), pe_row_key_cmp, t);
	}

	pe_deadletter_isolate(t, ins, nins, false, res);
	pe_deadletter_isolate(t, del, ndel, true, res);
}

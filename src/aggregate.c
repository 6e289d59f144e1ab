/*-------------------------------------------------------------------------
 *
 * aggregate.c
 *	  Step 5 of the data path (batch.c): the consumer's windowed aggregates
 *	  updated in the batch's transaction, so that rows, aggregates and
 *	  offsets commit together.  With the definitions aggregate_defs.c
 *	  reads, this file picks the events each aggregate counts: each message once, since an
 *	  aggregate keeps per partition the offsets it has counted (a
 *	  multirange) and skips a message in them (reset_offsets); a replayed
 *	  dead letter, never counted, counts when its row goes in; an event
 *	  whose windows have closed is kept as a late event.  Then
 *	  aggregate_merge.c merges the events into the results and
 *	  aggregate_close.c moves the watermark.  Before the apply, a message
 *	  whose time is missing is a dead letter: it cannot be put in a window.
 *
 * IDENTIFICATION
 *	  src/aggregate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"

#include "aggregate.h"
#include "connection.h"

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

/* The time column's index among those decoded; -1 for '$timestamp'. */
static int
pe_agg_time_col(PeTarget *t, PeAggregate *a)
{
	return strcmp(a->time_column, PE_AGG_TIMESTAMP) == 0 ? -1 : pe_agg_col(t, a, a->time_column);
}

/*
 * The columns the aggregates read (need[c] for each decoded column c):
 * their times, groups and arguments.
 */
void
pe_aggregates_columns(List *aggs, PeTarget *t, bool *need)
{
	ListCell   *lc;

	memset(need, 0, sizeof(bool) * t->ncols);
	foreach(lc, aggs)
	{
		PeAggregate *a = lfirst(lc);
		int			tc = pe_agg_time_col(t, a);

		if (tc >= 0)
			need[tc] = true;
		for (int i = 0; i < a->ngroups; i++)
			need[pe_agg_col(t, a, a->groups[i])] = true;
		for (int i = 0; i < a->naggs; i++)
			if (strcmp(a->args[i], "*") != 0)
				need[pe_agg_col(t, a, a->args[i])] = true;
	}
}

/*
 * The event time of a row: its time column, or with '$timestamp' its
 * message's Kafka timestamp.  False when it has none.
 */
static bool
pe_agg_time(int tc, PeMessage *msgs, PeRow *row, Datum *time)
{
	int64		ms;

	if (tc >= 0)
	{
		*time = row->values[tc];
		return !row->nulls[tc];
	}
	ms = msgs[row->msg_index].timestamp_ms;
	if (ms < 0 || ms > PE_KAFKA_MS_MAX)
		return false;
	*time = TimestampTzGetDatum(pe_kafka_ms_to_timestamptz(ms));
	return true;
}

/*
 * The results table or the state table, locked for the batch's writes, by
 * its quoted name.
 */
const char *
pe_agg_table(PeAggregate *a, Oid rel)
{
	char	   *relname;
	char	   *nspname;

	LockRelationOid(rel, RowExclusiveLock);
	relname = get_rel_name(rel);
	nspname = relname ? get_namespace_name(get_rel_namespace(rel)) : NULL;
	if (relname == NULL || nspname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the %s table of aggregate \"%s\" was dropped", rel == a->state ? "state" : "results", a->name),
				 errhint("Drop the aggregate with pipeline.drop_aggregate() and create it again.")));
	return quote_qualified_identifier(nspname, relname);
}

/*
 * The columns of the results (and state) table but closed, quoted: the
 * window, the groups, each aggregate with its state columns.
 */
const char *
pe_agg_columns(PeAggregate *a)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "window_start, window_end");
	for (int i = 0; i < a->ngroups; i++)
		appendStringInfo(&s, ", %s", quote_identifier(a->groups[i]));
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			n = pe_agg_state_columns(a->fns[i], suffixes);

		appendStringInfo(&s, ", %s", quote_identifier(a->outs[i]));
		for (int k = 0; k < n; k++)
			appendStringInfo(&s, ", %s", quote_identifier(psprintf("%s__%s", a->outs[i], suffixes[k])));
	}
	return s.data;
}

/*
 * Run one statement as the consumer's owner, in a security-restricted
 * operation (as batch.c runs decode and apply): the results belong to the
 * owner, and its types' functions run with its rights.  SPI connected;
 * returns SPI's result code.
 */
int
pe_agg_as_owner(PeTarget *t, const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	Oid			save_userid;
	int			save_sec;
	int			rc;

	int			nest = NewGUCNestLevel();

	/*
	 * What it emits reads the same from any session (a replay runs in the
	 * caller's): times in UTC, floats exact.  (The windows' arithmetic
	 * does not depend on the time zone: its intervals have no days.)
	 */
	(void) set_config_option("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "1", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Planned afresh each batch, over arrays whose sizes the planner does
	 * not know: its estimates are high, and JIT compiling took longer than
	 * the statement (0.5 s of a 0.7 s merge of 50,000 events).  A batch's
	 * groups sort and hash in memory up to 16 MB.
	 */
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (work_mem < 16 * 1024)
		(void) set_config_option("work_mem", "16MB", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->def->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	SetUserIdAndSecContext(save_userid, save_sec);
	AtEOXact_GUC(true, nest);
	return rc;
}

/* An interval of us microseconds. */
Datum
pe_agg_interval(int64 us)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = us;
	return IntervalPGetDatum(iv);
}

/*
 * Before the apply: a row without a time cannot go into a window; it is a
 * dead letter of the consumer, with the reason.  Returns the rows kept
 * (compacted in place).
 */
int
pe_aggregates_screen(List *aggs, PeTarget *t, PeMessage *msgs, PeRow *rows, int nrows, PeBatchResult *res)
{
	ListCell   *lc;

	foreach(lc, aggs)
	{
		PeAggregate *a = lfirst(lc);
		int			tc = pe_agg_time_col(t, a);
		int			kept = 0;

		/* room for the arithmetic of its windows: back a window, on a window and the lateness */
		int64		lo = MIN_TIMESTAMP + a->size_us + a->slide_us + a->lateness_us;
		int64		hi = END_TIMESTAMP - a->size_us - a->slide_us - a->lateness_us;
		int		   *pct = palloc(sizeof(int) * Max(a->naggs, 1));
		int			npct = 0;

		for (int i = 0; i < a->naggs; i++)
			if (strcmp(a->fns[i], "percentile") == 0)
				pct[npct++] = pe_agg_col(t, a, a->args[i]);

		for (int r = 0; r < nrows; r++)
		{
			Datum		tm = (Datum) 0;
			bool		has = pe_agg_time(tc, msgs, &rows[r], &tm);
			char	   *why = NULL;
			const char *state = "22008";

			if (rows[r].tombstone)
			{
				rows[kept++] = rows[r];
				continue;
			}
			if (!has && tc < 0)
				why = "the event has no time (the message has no timestamp, or one out of range)";
			else if (!has)
				why = psprintf("the event has no time (column \"%s\" is null)", a->time_column);
			else if (TIMESTAMP_NOT_FINITE(DatumGetInt64(tm)))
				why = psprintf("the event's time (column \"%s\") is infinite: no window holds it", a->time_column);
			else if (DatumGetInt64(tm) < lo || DatumGetInt64(tm) >= hi)
				why = "the event's time is too near the limits of the timestamp range for its windows";
			if (!has)
				state = "22004";
			for (int k = 0; k < npct && why == NULL; k++)
			{
				PeColumn   *col = &t->cols[pct[k]];
				Datum		v = rows[r].values[pct[k]];
				double		d;

				if (rows[r].nulls[pct[k]])
					continue;
				d = col->typid == FLOAT8OID ? DatumGetFloat8(v)
					: col->typid == FLOAT4OID ? (double) DatumGetFloat4(v)
					: col->typid == NUMERICOID ? DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow, v))
					: 0;
				if (isnan(d) || isinf(d))
				{
					why = psprintf("column \"%s\" is not a finite double precision, which a percentile needs", col->name);
					state = "22003";
				}
			}
			if (why)
			{
				PeDeadLetter *d = palloc0(sizeof(PeDeadLetter));

				d->msg_index = rows[r].msg_index;
				d->error = psprintf("aggregate \"%s\": %s", a->name, why);
				memcpy(d->sqlstate, state, 6);
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


/*
 * An instant as the wall time of the aggregate's time zone, and back (at
 * a change of clocks, as PostgreSQL's AT TIME ZONE resolves it).  Without
 * a time zone, the same microseconds.
 */
int64
pe_agg_local(PeAggregate *a, int64 t)
{
	if (a->time_zone == NULL)
		return t;
	return DatumGetInt64(DirectFunctionCall2(timestamptz_zone, a->tz_text, Int64GetDatum(t)));
}

int64
pe_agg_utc(PeAggregate *a, int64 local)
{
	if (a->time_zone == NULL)
		return local;
	return DatumGetInt64(DirectFunctionCall2(timestamp_zone, a->tz_text, Int64GetDatum(local)));
}

/* date_bin: the start of the stride holding t */
int64
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
	int64		lt = pe_agg_local(a, t);	/* windows are aligned in wall time */
	int64		s = pe_agg_bin(lt, a->slide_us, a->origin);

	if (a->session)
		return t + a->size_us;	/* the session it would open */
	if (a->cumulative)
	{
		/* the windows from the start of its size: the first to end after it */
		int64		b = pe_agg_bin(lt, a->size_us, a->origin);

		return pe_agg_utc(a, b + ((lt - b) / a->slide_us + 1) * a->slide_us);
	}

	while (s - a->slide_us + a->size_us > lt)
		s -= a->slide_us;
	return pe_agg_utc(a, s + a->size_us);
}

/* Row indexes in order, for qsort. */
static int
pe_int_cmp(const void *x, const void *y)
{
	int			a = *(const int *) x;
	int			b = *(const int *) y;

	return (a > b) - (a < b);
}

/*
 * Events after their window closed (reason NULL), or that the aggregate
 * could not count (reason why): into pipeline.aggregate_late, with why.
 */
static void
pe_agg_keep_late(PeAggregate *a, PeMessage *msgs, PeRow *rows, const int *late, int nlate, const Datum *times,
				 const char *reason)
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
		td[i] = times[late[i]];
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
	values[7] = CStringGetTextDatum(reason ? reason : a->size_us == a->slide_us
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

/* A merge of some of a batch's events (take, ntake), for pe_try_subxact. */
typedef struct PeAggMerge
{
	PeAggregate *a;
	PeTarget   *t;
	PeMessage  *msgs;
	PeRow	   *rows;
	const Datum *times;
	const int  *take;
	int			ntake;
	const int  *cols;
	int			ncols;
} PeAggMerge;

static void
pe_agg_merge_try(void *arg)
{
	PeAggMerge *x = arg;

	pe_agg_merge(x->a, x->t, x->rows, x->times, x->take, x->ntake, x->cols, x->ncols);
}

/*
 * Merge the events take[0..ntake) into the results.  An event whose values
 * fail the aggregate's arithmetic (a data exception: a sum of floats that
 * overflows, a numeric beyond its range: 22003, 22012, 22P01) would fail
 * every batch that holds it, and stop the consumer: it is found by halving, each half in a
 * subtransaction kept when it merges, and kept aside with the error as its
 * reason (pipeline.late_events), counted as the aggregate's late events
 * are, and not merged; the others are.  Other errors are thrown.  (Only
 * then does more than the one subtransaction of the whole open.)
 */
static void
pe_agg_merge_isolating(PeAggMerge *x, const int *take, int ntake)
{
	ErrorData  *edata;

	x->take = take;
	x->ntake = ntake;
	edata = pe_try_subxact(pe_agg_merge_try, x, true);
	if (edata == NULL)
		return;
	/*
	 * Only what an event's value can cause: not every data exception is one
	 * (a time zone not recognised, window arithmetic past the timestamp
	 * range, an expression of the results table would fail for every event
	 * alone, and would move the whole batch aside instead of stopping).
	 */
	if (edata->sqlerrcode != ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE && edata->sqlerrcode != ERRCODE_DIVISION_BY_ZERO &&
		edata->sqlerrcode != ERRCODE_FLOATING_POINT_EXCEPTION)
		ReThrowError(edata);
	if (ntake == 1)
	{
		char	   *why = psprintf("its value could not be counted: %s (SQLSTATE %s)", edata->message,
								   unpack_sql_state(edata->sqlerrcode));

		ereport(LOG,
				(errmsg("pipeline_ext aggregate \"%s\": an event of partition %d at offset " INT64_FORMAT " is kept aside: %s",
						x->a->name, x->msgs[x->rows[take[0]].msg_index].partition,
						x->msgs[x->rows[take[0]].msg_index].offset, why)));
		pe_agg_keep_late(x->a, x->msgs, x->rows, take, 1, x->times, why);
		FreeErrorData(edata);
		return;
	}
	FreeErrorData(edata);
	pe_agg_merge_isolating(x, take, ntake / 2);
	pe_agg_merge_isolating(x, take + ntake / 2, ntake - ntake / 2);
}

/*
 * Lock the aggregate's tables for the batch's writes, then make sure its
 * definition is still the one the batch read: alter_aggregate() locks
 * them exclusively, and a batch that read the definition before it
 * committed is retried (a transient error) with the new one (the row
 * is locked first, then the tables, in alter_aggregate()'s order).  The
 * aggregate's row is locked until the batch commits, and its watermark
 * read again under the lock: two slots (or a replay) update one aggregate
 * in turn, each seeing the windows the other closed.
 */
void
pe_agg_lock(PeAggregate *a)
{
	PeCatalogAccess acc;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(a->name)};
	bool		isnull;
	bool		same;

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT revision, watermark, closed_through FROM pipeline.aggregate "
							  "WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.aggregate");
	same = SPI_processed == 1 &&
		DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) == a->revision;
	if (same)
	{
		Datum		through;
		bool		through_null;

		a->wm = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		a->has_wm = !isnull;
		through = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &through_null);

		/* closed: what the watermark less the lateness passed, or was closed before a lateness raised */
		a->has_cp = a->has_wm || !through_null;
		a->cp = a->has_wm ? a->wm - a->lateness_us : PG_INT64_MIN;
		if (!through_null)
			a->cp = Max(a->cp, DatumGetInt64(through));
	}
	pe_catalog_end(&acc);
	if (!same)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("aggregate \"%s\" was changed or dropped while a batch ran", a->name),
				 errhint("The batch is tried again with the aggregates as they are now.")));
	/* the row first, then the tables: as alter_aggregate() takes them */
	(void) pe_agg_table(a, a->results);
	if (a->emit_close)
		(void) pe_agg_table(a, a->state);
}

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
		int			nparts;
		int		   *cols = palloc(sizeof(int) * (1 + a->ngroups + a->naggs));
		int			ncols = 0;
		int		   *take = palloc(sizeof(int) * Max(nrows, 1));
		int			ntake = 0;
		int		   *late = palloc(sizeof(int) * Max(nrows, 1));
		int			nlate = 0;
		int		   *joins = palloc(sizeof(int) * Max(nrows, 1));
		int			njoins = 0;
		int			time_col;
		Datum	   *times = palloc0(sizeof(Datum) * Max(nrows, 1));
		int32	   *bp = palloc(sizeof(int32) * Max(n, 1));
		int64	   *bo = palloc(sizeof(int64) * Max(n, 1));
		int64	   *bl = palloc(sizeof(int64) * Max(n, 1));
		Datum	   *bt = palloc0(sizeof(Datum) * Max(n, 1));
		bool	   *bt_null = palloc(sizeof(bool) * Max(n, 1));
		int			nbp = 0;
		int			lastp = 0;
		bool		recount = false;

		pe_agg_lock(a);
		nparts = pe_agg_counted(a, &parts, &clo, &chi);

		/* the columns it reads: the time, the groups, the arguments (once each) */
		cols[ncols++] = time_col = pe_agg_time_col(t, a);
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
		 * The batch's partitions and each one's offsets, lowest and next
		 * (messages come in runs of a partition: the last one is tried
		 * first).
		 */
		for (int i = 0; i < n; i++)
		{
			int			p = lastp;

			if (nbp == 0 || bp[p] != msgs[i].partition)
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
			lastp = p;
		}
		/* whether any of it was counted before (a reset, a replay): else no event needs looking up */
		for (int k = 0; k < nparts && !replay && !recount; k++)
			for (int p = 0; p < nbp && !recount; p++)
				recount = parts[k] == bp[p] && clo[k] < bo[p] && chi[k] > bl[p];

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
			if (!pe_agg_time(time_col, msgs, &rows[r], &times[r]))
				continue;		/* (screened out before the apply) */

			/*
			 * A replayed dead letter was not counted when it failed (its
			 * offset is behind), and its row goes in this transaction: count
			 * it now.
			 */
			for (int p = 0; p < nparts && recount; p++)
				if (parts[p] == m->partition && m->offset >= clo[p] && m->offset < chi[p])
					counted = true;
			if (counted)
				continue;
			if (a->has_cp)
			{
				int64		t = DatumGetInt64(times[r]);

				if (a->session && t < a->cp)
				{
					/* (judged below against the session it would join: those that ended are before cp) */
					joins[njoins++] = r;
					continue;
				}
				if (!a->session && pe_agg_first_end(a, t) <= a->cp)
				{
					/* (its last window's end, only for the few that are late) */
					int64		last_end = pe_agg_utc(a, pe_agg_bin(pe_agg_local(a, t), a->cumulative ? a->size_us : a->slide_us,
															  a->origin) + a->size_us);

					late[nlate++] = r;
					if (last_end <= a->cp)
						continue;	/* every window of it closed */
				}
			}
			take[ntake++] = r;
		}
		if (njoins > 0)
		{
			/*
			 * A session aggregate's event before where sessions are closed:
			 * late if it would join a closed session, or if its own session
			 * would be closed and it joins no open one.  Taken and kept in
			 * the order the messages came (first and last go by it).
			 */
			bool	   *in_closed = palloc0(sizeof(bool) * njoins);
			bool	   *in_open = palloc0(sizeof(bool) * njoins);

			pe_agg_session_joins(a, t, rows, times, joins, njoins, cols, in_closed, in_open);
			for (int k = 0; k < njoins; k++)
			{
				int			r = joins[k];

				if (in_closed[k] || (DatumGetInt64(times[r]) + a->size_us <= a->cp && !in_open[k]))
					late[nlate++] = r;
				else
					take[ntake++] = r;
			}
			qsort(take, ntake, sizeof(int), pe_int_cmp);
			qsort(late, nlate, sizeof(int), pe_int_cmp);
		}
		if (nlate > 0)
			pe_agg_keep_late(a, msgs, rows, late, nlate, times, NULL);

		if (ntake > 0)
		{
			PeAggMerge	x = {a, t, msgs, rows, times, NULL, 0, cols, ncols};

			pe_agg_merge_isolating(&x, take, ntake);
		}

		/*
		 * What it has counted now: every message of the batch (above); each
		 * partition's newest event time, and that it was seen.
		 */
		lastp = 0;
		for (int k = 0; k < ntake + nlate; k++)
		{
			int			r = k < ntake ? take[k] : late[k - ntake];
			int64		tm = DatumGetInt64(times[r]);
			int			p = lastp;

			if (bp[p] != msgs[rows[r].msg_index].partition)
				for (p = 0; bp[p] != msgs[rows[r].msg_index].partition; p++)
					;
			lastp = p;
			if (bt_null[p] || tm > DatumGetInt64(bt[p]))
				bt[p] = Int64GetDatum(tm);
			bt_null[p] = false;
		}
		/* old events replayed do not move the watermark nor what was counted */
		if (nbp > 0 && !replay)
			pe_agg_advance(a, t, bp, bl, bo, bt, bt_null, nbp, npart, started);
		if (a->emitted > 0 || a->opened != 0)
			pe_agg_note_emitted(a);
	}
}

/*-------------------------------------------------------------------------
 *
 * aggregate_close.c
 *	  Step 5 of the data path, after the merge: what an aggregate has
 *	  counted per partition, its watermark (from the partitions' newest
 *	  event times, idle ones left out), the windows the watermark has
 *	  passed closed, and the aggregate's figures.  Also the watermark of a
 *	  quiet stream, moved on by an idle slot with the clock.
 *
 * IDENTIFICATION
 *	  src/aggregate_close.c
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

#include "aggregate.h"
#include "connection.h"

/*
 * Record how far the aggregate has counted each partition of the batch,
 * move its watermark (the least newest event time of the partitions seen
 * within idle_timeout; of all of them when every one is idle; never back)
 * and close the windows it has passed, end plus lateness.
 */
void
pe_agg_advance(PeAggregate *a, PeTarget *t, int32 *bp, int64 *bl, int64 *bo, Datum *bt, bool *bt_null, int nbp,
			   int npart, TimestampTz started)
{
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
	pe_agg_close_to(a, t, wm, isnull, started);
}

/*
 * Close the windows watermark wm (null: none yet) has passed, end plus
 * lateness, and record the watermark and the aggregate's figures.  The
 * aggregate's row is locked (pe_agg_lock).
 */
void
pe_agg_close_to(PeAggregate *a, PeTarget *t, Datum wm, bool isnull, TimestampTz started)
{
	uint64		closed = 0;
	PeCatalogAccess acc;

	/*
	 * The windows it passed: closed, as the consumer's owner (it owns
	 * them), and emitted; with emit 'close', moved from the state table
	 * into the results.
	 */
	{
		Oid			ctypes[2] = {TIMESTAMPTZOID, INTERVALOID};
		Datum		cvalues[2];
		Oid			rel = a->results;
		const char *res = pe_agg_table(a, a->results);
		const char *open_in = a->emit_close ? pe_agg_table(a, a->state) : res;
		int			rc;

		ctypes[0] = get_atttype(rel, get_attnum(rel, "window_end"));	/* the same microseconds for a timestamp column */
		cvalues[0] = wm;
		cvalues[1] = pe_agg_interval(a->lateness_us);
		if (!isnull)
		{
			/* (the open windows' partial index on window_end finds them) */
			const char *passed = "NOT closed AND window_end OPERATOR(pg_catalog.<=) ($1 OPERATOR(pg_catalog.-) $2)";
			char	   *sql;
			int64		inserted;

			if (a->emit_close)
			{
				const char *cols = pe_agg_columns(a);

				sql = pe_agg_emit_wrap(a, psprintf("c AS (DELETE FROM %s WHERE %s RETURNING *)", open_in, passed),
									   psprintf("INSERT INTO %s AS r (%s, closed) SELECT %s, true FROM c", res, cols, cols),
									   true, NULL, NULL);
			}
			else
				sql = pe_agg_emit_wrap(a, NULL, psprintf("UPDATE %s AS r SET closed = true WHERE %s", res, passed),
									   true, NULL, NULL);
			rc = pe_agg_as_owner(t, sql, 2, ctypes, cvalues, NULL);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "could not close the windows of aggregate \"%s\"", a->name);
			closed = pe_agg_emitted(a, t, true, &inserted);
		}
	}

	/* the watermark and the figures */
	{
		Oid			utypes[6] = {TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID, FLOAT8OID, TIMESTAMPTZOID};
		Datum		uvalues[6];
		char		unulls[7] = "      ";

		uvalues[0] = CStringGetTextDatum(a->name);
		uvalues[1] = wm;
		if (isnull)
			unulls[1] = 'n';
		uvalues[2] = Int64GetDatum(closed);
		uvalues[3] = Int64GetDatum(a->opened - (int64) closed);	/* the windows opened, less those closed */
		a->opened = 0;
		uvalues[4] = Float8GetDatum((double) (GetCurrentTimestamp() - started) / 1000.0);
		uvalues[5] = isnull ? (Datum) 0 : Int64GetDatum(DatumGetInt64(wm) - a->lateness_us);
		if (isnull)
			unulls[5] = 'n';
		pe_catalog_begin(&acc);
		if (SPI_execute_with_args("UPDATE pipeline.aggregate SET watermark = $2, "
								  "windows_closed = windows_closed OPERATOR(pg_catalog.+) $3, "
								  "open_windows = open_windows OPERATOR(pg_catalog.+) $4, "
								  "closed_through = GREATEST(closed_through, $6), "
								  "last_batch_at = pg_catalog.now(), batch_ms = $5 WHERE name OPERATOR(pg_catalog.=) $1",
								  6, utypes, uvalues, unulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update aggregate \"%s\"", a->name);
		pe_catalog_end(&acc);
	}
}

/* Whether a watermark would close an open window of the aggregate. */
static bool
pe_agg_would_close(PeAggregate *a, PeTarget *t, Datum wm)
{
	Oid			types[2] = {TIMESTAMPTZOID, INTERVALOID};
	Datum		values[2];
	const char *open_in = pe_agg_table(a, a->emit_close ? a->state : a->results);
	bool		isnull;

	types[0] = get_atttype(a->results, get_attnum(a->results, "window_end"));	/* the same microseconds */
	values[0] = wm;
	values[1] = pe_agg_interval(a->lateness_us);
	if (pe_agg_as_owner(t, psprintf("SELECT EXISTS (SELECT FROM %s WHERE NOT closed "
									"AND window_end OPERATOR(pg_catalog.<=) ($1 OPERATOR(pg_catalog.-) $2))", open_in),
						2, types, values, NULL) != SPI_OK_SELECT)
		elog(ERROR, "could not look at the open windows of aggregate \"%s\"", a->name);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The consumer has read all there is and no partition of its topic has
 * had a message for an aggregate's idle_timeout: the stream is quiet, and
 * its last windows would wait for events that do not come.  The watermark
 * then moves on with the clock, from the newest event time by the time
 * since the last message came, and closes (and emits) the windows it
 * passes.  A slot calls this, in a transaction of its own, when idle and
 * caught up, every slot of the consumer (slot_batch.c).  It writes only
 * when an open window would close.  SPI connected.
 */
void
pe_aggregates_idle(PeConsumerDef *def)
{
	List	   *aggs = pe_aggregates_of(def);
	PeTarget	t;
	ListCell   *lc;

	memset(&t, 0, sizeof(t));
	t.def = def;
	foreach(lc, aggs)
	{
		PeAggregate *a = lfirst(lc);
		PeCatalogAccess acc;
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(a->name)};
		TimestampTz started = GetCurrentTimestamp();
		bool		isnull = true;
		Datum		wm = (Datum) 0;

		/* first without a lock (most seconds nothing moves); again under it, which a batch may have taken */
		for (int locked = 0; locked < 2; locked++)
		{
			if (locked)
				pe_agg_lock(a);
			isnull = true;
			pe_catalog_begin(&acc);
			if (SPI_execute_with_args("SELECT pg_catalog.max(o.max_time) OPERATOR(pg_catalog.+) "
									  "(pg_catalog.statement_timestamp() OPERATOR(pg_catalog.-) pg_catalog.max(o.seen_at)) "
									  "FROM pipeline.aggregate_offset o JOIN pipeline.aggregate a "
									  "ON a.name OPERATOR(pg_catalog.=) o.aggregate "
									  "WHERE o.aggregate OPERATOR(pg_catalog.=) $1 GROUP BY a.idle_timeout "
									  "HAVING pg_catalog.bool_and(o.seen_at OPERATOR(pg_catalog.<) "
									  "(pg_catalog.statement_timestamp() OPERATOR(pg_catalog.-) a.idle_timeout))",
									  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read what aggregate \"%s\" counted", a->name);
			if (SPI_processed == 1)
				wm = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			pe_catalog_end(&acc);
			if (isnull || (a->has_wm && DatumGetTimestampTz(wm) <= a->wm))
				break;
			/* nothing to write (nor to lock) unless an open window would close */
			if (!locked && !pe_agg_would_close(a, &t, wm))
			{
				isnull = true;
				break;
			}
		}
		if (isnull || (a->has_wm && DatumGetTimestampTz(wm) <= a->wm))
			continue;
		pe_agg_close_to(a, &t, wm, false, started);
		if (a->emitted > 0 || a->opened != 0)
			pe_agg_note_emitted(a);
	}
}

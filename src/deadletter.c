/*-------------------------------------------------------------------------
 *
 * deadletter.c
 *	  Nothing is dropped: a statement that fails for reasons of its rows
 *	  (data errors, constraint violations, errors raised by triggers) is
 *	  tried again on halves of the batch, each trial rolled back, until the
 *	  bad rows are found, each becoming a dead letter with its error and
 *	  SQLSTATE; the good ones are then applied in one statement.  Errors
 *	  that are not about rows (privileges, a missing table, cancel)
 *	  propagate: the caller retries or stops the batch.
 *
 *	  A slot records its dead letters in pipeline.dead_letters, in the
 *	  batch's transaction; a replay deletes the rows that now apply and
 *	  keeps the new error of the others.
 *
 * IDENTIFICATION
 *	  src/deadletter.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "datapath.h"

/*
 * Errors that belong to the rows of a statement, and so are isolated into
 * dead letters: data exceptions, integrity violations, cardinality, program
 * limits (a value too large for an index), and errors raised by triggers.
 */
bool
pe_error_is_row_specific(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:
		case ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION:
		case ERRCODE_CARDINALITY_VIOLATION:
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:
		case ERRCODE_PLPGSQL_ERROR:
			return true;
		default:
			return false;
	}
}

void
pe_add_dead(PeBatchResult *res, int msg_index, ErrorData *edata)
{
	PeDeadLetter *dl = palloc(sizeof(PeDeadLetter));

	dl->msg_index = msg_index;
	if (edata->detail)
		dl->error = psprintf("%s: %s", edata->message, edata->detail);
	else
		dl->error = pstrdup(edata->message);
	strlcpy(dl->sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(dl->sqlstate));
	res->dead = lappend(res->dead, dl);
}

/*
 * rows[0..n) in one statement, kept: NULL when it applied them (counted),
 * else its error, which is about rows (any other is thrown).
 */
static ErrorData *
pe_deadletter_apply(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res)
{
	int64		processed = 0;
	ErrorData  *edata = pe_try_statement(t, rows, n, is_delete, true, &processed);

	if (edata == NULL)
	{
		if (is_delete)
			res->deleted += n;
		else
			res->applied += n;
		return NULL;
	}
	if (!pe_error_is_row_specific(edata->sqlerrcode))
		ReThrowError(edata);
	return edata;
}

/*
 * Find the rows of rows[0..n), known to fail together, that fail on their
 * own, by halving: every trial is rolled back, so however many there are,
 * none stays open in the transaction.  Marks them in bad[], adds their dead
 * letters; returns how many.
 */
static int
pe_deadletter_find(PeTarget *t, PeRow **rows, int n, bool *bad, bool is_delete,
				   ErrorData *edata, PeBatchResult *res)
{
	int			found = 0;

	if (n == 1)
	{
		pe_add_dead(res, rows[0]->msg_index, edata);
		bad[0] = true;
		return 1;
	}
	for (int half = 0; half < 2; half++)
	{
		int			from = half == 0 ? 0 : n / 2;
		int			m = half == 0 ? n / 2 : n - n / 2;
		int64		processed = 0;
		ErrorData  *e = pe_try_statement(t, rows + from, m, is_delete, false, &processed);

		if (e == NULL)
			continue;
		if (!pe_error_is_row_specific(e->sqlerrcode))
			ReThrowError(e);
		found += pe_deadletter_find(t, rows + from, m, bad + from, is_delete, e, res);
		FreeErrorData(e);
	}
	return found;
}

/*
 * The bisection of 0.3.0, for rows that fail together but each half alone
 * succeeds (two rows of an append batch with one unique key): the first
 * half is applied, then the second fails on its own.  Each applied half is
 * a subtransaction kept until the commit, so it runs only in that case.
 */
static void
pe_deadletter_bisect(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res)
{
	ErrorData  *edata;

	if (n == 0)
		return;
	edata = pe_deadletter_apply(t, rows, n, is_delete, res);
	if (edata == NULL)
		return;
	if (n == 1)
	{
		pe_add_dead(res, rows[0]->msg_index, edata);
		return;
	}
	FreeErrorData(edata);
	pe_deadletter_bisect(t, rows, n / 2, is_delete, res);
	pe_deadletter_bisect(t, rows + n / 2, n - n / 2, is_delete, res);
}

/*
 * Apply rows[0..n) (apply.c) in one statement; when it fails for reasons of
 * its rows, find the rows that fail with trials that are rolled back, then
 * apply all the others in one statement again.  With k bad rows that is
 * about 2k log n trials, as before, but only one or two subtransactions
 * are kept until the commit, where halving kept k log n of them: past 64,
 * PostgreSQL's cache of a transaction's subtransactions overflows, and
 * every snapshot in the cluster has to look into pg_subtrans until the
 * commit.
 */
void
pe_deadletter_isolate(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res)
{
	while (n > 0)
	{
		ErrorData  *edata = pe_deadletter_apply(t, rows, n, is_delete, res);
		bool	   *bad;
		int			nbad;
		int			ngood = 0;
		PeRow	  **good;

		if (edata == NULL)
			return;
		bad = palloc0(sizeof(bool) * n);
		nbad = pe_deadletter_find(t, rows, n, bad, is_delete, edata, res);
		FreeErrorData(edata);
		if (nbad == 0)
		{
			/* no row fails alone: they fail together */
			pfree(bad);
			pe_deadletter_bisect(t, rows, n, is_delete, res);
			return;
		}
		good = palloc(sizeof(PeRow *) * n);
		for (int i = 0; i < n; i++)
			if (!bad[i])
				good[ngood++] = rows[i];
		pfree(bad);
		/* the others, in one statement (again: they may fail together) */
		rows = good;
		n = ngood;
	}
}

/* The statement that records a slot's dead letters; kept by the caller. */
SPIPlanPtr
pe_deadletter_prepare(void)
{
	Oid			types[13] = {TEXTOID, OIDOID, TEXTOID, INT4OID, INT8OID, BYTEAOID, BYTEAOID,
	JSONBOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, INT8OID, BYTEAARRAYOID};
	SPIPlanPtr	plan;

	plan = SPI_prepare("INSERT INTO pipeline.dead_letters (consumer, owner, topic, \"partition\", \"offset\", "
					   "key, value, headers, \"timestamp\", error, sqlstate, consumer_id, headers_raw) "
					   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
					   13, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the dead letter statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Record a batch's dead letters, each with its raw bytes (headers
 * included, exactly as they came) and its error.
 */
void
pe_deadletter_record(SPIPlanPtr plan, PeConsumerDef *def, PeMessage *msgs, List *dead)
{
	ListCell   *lc;

	foreach(lc, dead)
	{
		PeDeadLetter *dl = lfirst(lc);
		PeMessage  *m = &msgs[dl->msg_index];
		Datum		v[13];
		char		nl[13];
		Jsonb	   *h;
		ArrayType  *raw;

		memset(nl, ' ', sizeof(nl));
		v[0] = CStringGetTextDatum(def->name);
		v[1] = ObjectIdGetDatum(def->owner);
		v[2] = CStringGetTextDatum(m->topic);
		v[3] = Int32GetDatum(m->partition);
		v[4] = Int64GetDatum(m->offset);
		if (m->key)
			v[5] = pe_bytes_to_bytea(m->key, m->key_len);
		else
			nl[5] = 'n';
		if (m->value)
			v[6] = pe_bytes_to_bytea(m->value, m->value_len);
		else
			nl[6] = 'n';
		h = pe_message_headers(m);
		if (h)
			v[7] = JsonbPGetDatum(h);
		else
			nl[7] = 'n';
		if (m->timestamp_ms >= 0 && m->timestamp_ms <= PE_KAFKA_MS_MAX)
			v[8] = TimestampTzGetDatum(pe_kafka_ms_to_timestamptz(m->timestamp_ms));
		else
			nl[8] = 'n';
		v[9] = CStringGetTextDatum(dl->error);
		v[10] = CStringGetTextDatum(dl->sqlstate);
		v[11] = Int64GetDatum(def->id);
		raw = pe_message_headers_raw(m);
		if (raw)
			v[12] = PointerGetDatum(raw);
		else
			nl[12] = 'n';
		if (SPI_execute_plan(plan, v, nl, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record a dead letter");
	}
}

/*
 * After a replay of the dead letters ids[0..n): delete the ones that
 * applied, and keep the new error of the others.  Runs as the catalog's
 * owner.
 */
void
pe_deadletter_replayed(int64 *ids, int n, List *dead)
{
	PeCatalogAccess acc;
	bool	   *failed = palloc0(sizeof(bool) * Max(n, 1));
	ListCell   *lc;
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	int			rc;

	pe_catalog_begin(&acc);
	foreach(lc, dead)
	{
		PeDeadLetter *dl = lfirst(lc);
		Datum		a[3];

		failed[dl->msg_index] = true;
		a[0] = Int64GetDatum(ids[dl->msg_index]);
		a[1] = CStringGetTextDatum(dl->error);
		a[2] = CStringGetTextDatum(dl->sqlstate);
		rc = SPI_execute_with_args("UPDATE pipeline.dead_letters SET error = $2, sqlstate = $3, "
								   "failed_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
								   3, types, a, NULL, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "could not update a dead letter: %s", SPI_result_code_string(rc));
	}
	for (int i = 0; i < n; i++)
	{
		Datum		a[1];

		if (failed[i])
			continue;
		a[0] = Int64GetDatum(ids[i]);
		rc = SPI_execute_with_args("DELETE FROM pipeline.dead_letters WHERE id OPERATOR(pg_catalog.=) $1",
								   1, types, a, NULL, false, 0);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "could not delete a dead letter: %s", SPI_result_code_string(rc));
	}
	pe_catalog_end(&acc);
}

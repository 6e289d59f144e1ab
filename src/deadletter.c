/*-------------------------------------------------------------------------
 *
 * deadletter.c
 *	  Nothing is dropped: a statement that fails for reasons of its rows
 *	  (data errors, constraint violations, errors raised by triggers) is
 *	  retried on halves of the batch until the bad rows are isolated, each
 *	  becoming a dead letter with its error and SQLSTATE, while the good ones
 *	  are applied.  Errors that are not about rows (privileges, a missing
 *	  table, cancel) propagate: the caller retries or stops the batch.
 *
 * IDENTIFICATION
 *	  src/deadletter.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/elog.h"

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

/* Apply rows[0..n); isolate the rows that fail by halving. */
void
pe_apply_rows(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res)
{
	int64		processed = 0;
	ErrorData  *edata;

	if (n == 0)
		return;
	edata = pe_try_statement(t, rows, n, is_delete, &processed);
	if (edata == NULL)
	{
		if (is_delete)
			res->deleted += n;
		else
			res->applied += n;
		return;
	}
	if (!pe_error_is_row_specific(edata->sqlerrcode))
		ReThrowError(edata);
	if (n == 1)
	{
		pe_add_dead(res, rows[0]->msg_index, edata);
		return;
	}
	FreeErrorData(edata);
	pe_apply_rows(t, rows, n / 2, is_delete, res);
	pe_apply_rows(t, rows + n / 2, n - n / 2, is_delete, res);
}

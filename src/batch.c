/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  The data path of one batch, in the caller's transaction, step by
 *	  step; a slot worker (slot.c) and replay_dead_letters()
 *	  (deadletter_api.c) both go through it:
 *
 *	    1. decode      every message into a row of the target (decode.c)
 *	    2. dedup       keep the newest message per key, in upsert mode
 *	                   (dedup.c)
 *	    3. apply       set-based statements prepared once (apply.c), the
 *	                   rows that fail isolated as dead letters
 *	                   (deadletter.c)
 *	    4. dead letters  recorded (a slot), or the replayed ones deleted
 *	                   or updated (a replay) (deadletter.c)
 *	    5. aggregates  the consumer's windowed aggregates merge the
 *	                   batch's events (aggregate.c)
 *	    6. offsets     the partitions' next offsets, behind their fence
 *	                   (offsets.c)
 *
 *	  Rows, dead letters, aggregates and offsets commit or roll back
 *	  together: that is what makes a consumer exactly once.
 *
 * IDENTIFICATION
 *	  src/batch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/datum.h"
#include "utils/memutils.h"

#include "aggregate.h"
#include "datapath.h"

/*
 * A slot's batch of an append consumer with aggregates: its transaction
 * may take in the next batches (slot_batch.c), and keeps each one's rows
 * for the aggregates until its end.
 */
static bool
pe_batch_keeps_rows(PeBatch *b)
{
	return b->own_transaction && b->replay_ids == NULL && b->aggs != NIL && !b->target->def->upsert;
}

/*
 * What the aggregates need of the rows just applied, rows[0..nrows),
 * copied after b->rows[0..b->nrows) in context outer: the events (not
 * tombstones, not dead letters) and only the columns the aggregates read
 * (the others null).  The decoded rows, the tuples and all the apply
 * made are then freed with the context they were made in: a transaction
 * of several batches held them all, about 30 MB a batch of 40,000 small
 * messages, where these take a few.  The new dead letters
 * (b->res.dead[ndead..]) are copied too, the list made again in outer.
 */
static void
pe_batch_keep_for_aggregates(PeBatch *b, PeRow *rows, int nrows, int ndead, MemoryContext outer)
{
	PeTarget   *t = b->target;
	int			ncols = t->ncols;
	bool	   *need = palloc(sizeof(bool) * Max(ncols, 1));
	bool	   *is_dead = palloc0(sizeof(bool) * Max(b->n, 1));
	List	   *dead = NIL;
	ListCell   *lc;
	MemoryContext scratch;
	Datum	   *values;
	bool	   *nulls;
	char	   *block;
	Size		bytes = 0;
	int			nkeep = 0;

	pe_aggregates_columns(b->aggs, t, need);
	for_each_from(lc, b->res.dead, ndead)
		is_dead[((PeDeadLetter *) lfirst(lc))->msg_index] = true;
	for (int r = 0; r < nrows; r++)
		nkeep += !rows[r].tombstone && !is_dead[rows[r].msg_index];

	/*
	 * The values passed by reference go into one block, each at a MAXALIGN
	 * boundary, instead of a palloc each (one per event and text column:
	 * datumCopy() and its palloc were most of the copy's samples in perf,
	 * and each chunk took a header).  An expanded object (none of the
	 * decoders makes one) is flattened by datumCopy() as before.
	 */
	for (int r = 0; r < nrows; r++)
	{
		if (rows[r].tombstone || is_dead[rows[r].msg_index])
			continue;
		for (int c = 0; c < ncols; c++)
			if (need[c] && !rows[r].nulls[c] && !t->cols[c].typbyval &&
				!(t->cols[c].typlen == -1 && VARATT_IS_EXTERNAL_EXPANDED(DatumGetPointer(rows[r].values[c]))))
				bytes += MAXALIGN(datumGetSize(rows[r].values[c], false, t->cols[c].typlen));
	}

	scratch = MemoryContextSwitchTo(outer);
	/* (as big as decode's arrays of the same rows: huge allocations) */
	values = MemoryContextAllocHuge(outer, sizeof(Datum) * Max((Size) nkeep * ncols, 1));
	nulls = MemoryContextAllocHuge(outer, sizeof(bool) * Max((Size) nkeep * ncols, 1));
	block = MemoryContextAllocHuge(outer, Max(bytes, 1));
	for (int r = 0; r < nrows; r++)
	{
		PeRow	   *dst;

		if (rows[r].tombstone || is_dead[rows[r].msg_index])
			continue;
		dst = &b->rows[b->nrows++];
		memset(dst, 0, sizeof(PeRow));
		dst->msg_index = rows[r].msg_index;
		dst->values = values;
		dst->nulls = nulls;
		values += ncols;
		nulls += ncols;
		for (int c = 0; c < ncols; c++)
		{
			Datum		v = rows[r].values[c];
			Size		len;

			dst->nulls[c] = !need[c] || rows[r].nulls[c];
			if (dst->nulls[c])
				dst->values[c] = (Datum) 0;
			else if (t->cols[c].typbyval)
				dst->values[c] = v;
			else if (t->cols[c].typlen == -1 && VARATT_IS_EXTERNAL_EXPANDED(DatumGetPointer(v)))
				dst->values[c] = datumCopy(v, false, -1);
			else
			{
				len = datumGetSize(v, false, t->cols[c].typlen);
				memcpy(block, DatumGetPointer(v), len);
				dst->values[c] = PointerGetDatum(block);
				block += MAXALIGN(len);
			}
		}
	}
	foreach(lc, b->res.dead)
	{
		PeDeadLetter *dl = lfirst(lc);

		if (foreach_current_index(lc) >= ndead)
		{
			PeDeadLetter *copy = palloc(sizeof(PeDeadLetter));

			*copy = *dl;
			copy->error = pstrdup(dl->error);
			dl = copy;
		}
		dead = lappend(dead, dl);
	}
	b->res.dead = dead;
	MemoryContextSwitchTo(scratch);
}

/*
 * Run the data path for b->msgs[0..b->n).  SPI must be connected and a
 * snapshot active.  Returns PE_BATCH_STOP when the consumer stops on its
 * first bad message (b->res.dead says which), PE_BATCH_CONFLICT when an
 * offset's fence did not hold; the caller then rolls the transaction
 * back.  Errors that are not about messages propagate.
 */
PeBatchOutcome
pe_batch_apply(PeBatch *b)
{
	PeBatchOutcome outcome = pe_batch_apply_rows(b);

	if (outcome != PE_BATCH_DONE)
		return outcome;
	return pe_batch_finish(b);
}

/*
 * Steps 1 to 4 for the messages not yet applied, b->msgs[b->napplied..b->n):
 * their rows are kept in b for the aggregates and offsets of
 * pe_batch_finish().  PE_BATCH_STOP as pe_batch_apply() says.
 */
PeBatchOutcome
pe_batch_apply_rows(PeBatch *b)
{
	PeTarget   *t = b->target;
	int			from = b->napplied;
	int			ndead = list_length(b->res.dead);
	PeRow	   *rows;
	int			nrows;
	List	   *dead;
	ListCell   *lc;
	Oid			save_userid;
	int			save_sec;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext scratch = NULL;

	if (from == 0)
	{
		/*
		 * A batch in a transaction of its own (a slot's) checks deferred
		 * constraints and fires deferred constraint triggers at the end of
		 * each statement, inside the subtransactions that isolate bad rows.
		 * It has to: the apply runs as a security-restricted operation,
		 * where PostgreSQL refuses to queue a deferred trigger event at all
		 * ("cannot fire deferred trigger within security-restricted
		 * operation"), and checked at COMMIT a failure would have no row to
		 * blame.  A replay runs in its caller's transaction, whose
		 * constraint modes are the caller's.
		 */
		if (b->own_transaction)
		{
			ConstraintsSetStmt *immediate = makeNode(ConstraintsSetStmt);

			immediate->constraints = NIL;
			immediate->deferred = false;
			AfterTriggerSetState(immediate);
		}

		/* the consumer's aggregates: a slot's batch feeds them, and a replay */
		b->aggs = pe_aggregates_of(t->def);
		b->rows = palloc0(sizeof(PeRow) * Max(b->n, 1));
		b->nrows = 0;
	}
	else
	{
		/* (the decoders fill a row's values, its flags start false) */
		b->rows = repalloc(b->rows, sizeof(PeRow) * Max(b->n, 1));
		memset(b->rows + b->nrows, 0, sizeof(PeRow) * (b->n - b->nrows));
	}
	if (pe_batch_keeps_rows(b))
	{
		/* (the rows, and all decoding and applying them makes, in a context freed after) */
		scratch = AllocSetContextCreate(outer, "pipeline_ext batch rows", ALLOCSET_DEFAULT_SIZES);
		MemoryContextSwitchTo(scratch);
		rows = palloc0(sizeof(PeRow) * Max(b->n - from, 1));
	}
	else
		rows = b->rows + b->nrows;

	/*
	 * Decoding and applying run as the consumer's owner, restricted as
	 * REFRESH MATERIALIZED VIEW is.  On an error the (sub)transaction abort
	 * restores the user id; on success we do.
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->def->owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);

	/* 1. decode (the rows and dead letters numbered among all of b->msgs) */
	nrows = pe_decode_batch(t, b->msgs + from, b->n - from, rows, &b->res);
	for (int r = 0; r < nrows; r++)
		rows[r].msg_index += from;
	for_each_from(lc, b->res.dead, ndead)
		((PeDeadLetter *) lfirst(lc))->msg_index += from;
	if (b->aggs != NIL)
		nrows = pe_aggregates_screen(b->aggs, t, b->msgs, rows, nrows, &b->res);

	/* 2. dedup */
	if (t->def->upsert && t->nkeys > 0)
		pe_dedup(t, b->msgs, rows, nrows);

	/* 3. apply, isolating the rows that fail */
	pe_apply(t, rows, nrows, &b->res);
	SetUserIdAndSecContext(save_userid, save_sec);
	b->napplied = b->n;

	/* 4. dead letters (these messages' own) */
	dead = list_copy_tail(b->res.dead, ndead);
	if (dead != NIL && t->def->stop_on_error && b->replay_ids == NULL)
	{
		/* (the caller names the first of them: left in scratch, freed with outer) */
		MemoryContextSwitchTo(outer);
		return PE_BATCH_STOP;
	}
	if (b->replay_ids)
		pe_deadletter_replayed(b->replay_ids, b->n, b->res.dead);
	else
		pe_deadletter_record(b->dead_plan, t->def, b->msgs, dead);
	if (scratch)
	{
		pe_batch_keep_for_aggregates(b, rows, nrows, ndead, outer);
		MemoryContextSwitchTo(outer);
		MemoryContextDelete(scratch);
	}
	else
		b->nrows += nrows;
	return PE_BATCH_DONE;
}

/*
 * Steps 5 and 6 for all of b->msgs, applied: the aggregates and the
 * offsets.  PE_BATCH_CONFLICT as pe_batch_apply() says.
 */
PeBatchOutcome
pe_batch_finish(PeBatch *b)
{
	/*
	 * A slot's batch: no aggregate made meanwhile misses its messages
	 * (aggregate_defs.c); it is tried again with the aggregates there are.
	 */
	if (b->offsets)
	{
		pe_aggregates_lock(b->target->def->id, ShareLock);
		if (pe_aggregates_changed(b->target->def->id, list_length(b->aggs)))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("the aggregates of consumer \"%s\" changed while a batch ran", b->target->def->name),
					 errhint("The batch is tried again with the aggregates as they are now.")));
	}

	/* 5. windowed aggregates (aggregate.c) */
	if (b->aggs != NIL)
		pe_aggregates_update(b->aggs, b->target, b->msgs, b->n, b->rows, b->nrows, b->res.dead, b->npart,
							 b->replay_ids != NULL);

	/* 6. offsets */
	if (b->offsets && !pe_offsets_store(b->offsets))
		return PE_BATCH_CONFLICT;
	return PE_BATCH_DONE;
}

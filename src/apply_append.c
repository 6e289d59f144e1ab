/*-------------------------------------------------------------------------
 *
 * apply_append.c
 *	  Appending a batch's rows straight into the target's heap, a group of
 *	  rows at a time with table_multi_insert, as COPY FROM does: one WAL
 *	  record and one buffer lock per page filled, where the INSERT statement
 *	  of apply.c costs an executor pass, a WAL record and a buffer lock per
 *	  row.  For append-mode consumers whose target is a plain table with no
 *	  triggers (so no foreign keys and no deferrable constraints either), no
 *	  row-level security that applies, no stored generated columns, and that
 *	  is not a partition; any other target takes the statement.  What the
 *	  statement would check is checked here too: the owner's INSERT
 *	  privilege on the columns written, NOT NULL and CHECK constraints,
 *	  unique and exclusion indexes; columns a message leaves empty take
 *	  their defaults, evaluated for each row.
 *
 * IDENTIFICATION
 *	  src/apply_append.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/hio.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "storage/bufmgr.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "datapath.h"

/* rows put into the heap together, as COPY FROM's buffer of tuples */
#define PE_APPEND_GROUP 1000

/*
 * The slot's ring of buffers for new pages, kept from batch to batch as
 * one COPY FROM keeps its own for all its rows: a ring made per batch
 * would take a batch's worth of fresh buffers from shared_buffers each
 * time (a 50,000-row batch fills about 1,000 pages), evicting what other
 * sessions use, where a kept one goes round the same 16 MB.
 */
static BufferAccessStrategy pe_append_ring = NULL;

/*
 * Can rows go straight into rel's heap, with what the INSERT would do?
 * colof maps each attribute to its column of the target, or -1.
 */
static bool
pe_append_direct_ok(PeTarget *t, Relation rel, const int *colof)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (XactReadOnly || IsInParallelMode() ||
		rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->trigdesc != NULL || rel->rd_rules != NULL ||
		(desc->constr && desc->constr->has_generated_stored) ||
		check_enable_rls(RelationGetRelid(rel), InvalidOid, true) != RLS_NONE)
		return false;
	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];
		Form_pg_attribute att;

		/*
		 * The rows were decoded for the columns as they were described: an
		 * ALTER TABLE committed since (the table is not locked while a batch
		 * is decoded) leaves it to the statement, which casts or fails.
		 */
		if (col->attnum < 1 || col->attnum > desc->natts)
			return false;
		att = TupleDescAttr(desc, col->attnum - 1);
		if (att->attisdropped || att->atttypid != col->typid || att->atttypmod != col->typmod ||
			att->attcollation != col->collation || strcmp(NameStr(att->attname), col->name) != 0)
			return false;
		/* the statement refuses a value for a GENERATED ALWAYS identity column */
		if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			return false;
	}
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		/*
		 * A column the statement leaves out and that has no default gets a
		 * null coerced to its type, which a NOT NULL domain refuses.
		 */
		if (!att->attisdropped && colof[a] < 0 && !att->atthasdef && !att->attidentity &&
			get_typtype(att->atttypid) == TYPTYPE_DOMAIN)
			return false;
	}
	return true;
}

/*
 * Append rows[0..n) to the target in the current transaction, as the
 * current user; *processed is the number of rows.  Returns false, having
 * done nothing, when the target is not one this path serves.  Errors
 * propagate, as the statement's would (the caller isolates bad rows).
 */
static bool
pe_append_rows_in(PeTarget *t, PeRow **rows, int n)
{
	Relation	rel = table_open(t->relid, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	int			natts = desc->natts;
	int		   *colof;			/* attribute number - 1 -> index into t->cols, or -1 */
	ExprState **defaults;		/* per attribute: its default, or NULL */
	RangeTblEntry *rte;
	EState	   *estate;
	ResultRelInfo *rri;
	ExprContext *econtext;
	TupleTableSlot **slots;
	BulkInsertStateData bistate;
	CommandId	cid;

	colof = palloc(sizeof(int) * natts);
	for (int a = 0; a < natts; a++)
		colof[a] = -1;
	for (int c = 0; c < t->ncols; c++)
		if (t->cols[c].attnum >= 1 && t->cols[c].attnum <= natts)
			colof[t->cols[c].attnum - 1] = c;
	if (!pe_append_direct_ok(t, rel, colof))
	{
		table_close(rel, NoLock);
		return false;
	}

	/* the privileges the INSERT of these columns needs, as it checks them */
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = t->relid;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = ACL_INSERT;
	for (int c = 0; c < t->ncols; c++)
		rte->insertedCols = bms_add_member(rte->insertedCols,
										   t->cols[c].attnum - FirstLowInvalidHeapAttributeNumber);
	ExecCheckRTPerms(list_make1(rte), true);

	/* a snapshot and a command id, as for a statement */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	cid = GetCurrentCommandId(true);

	estate = CreateExecutorState();
	ExecInitRangeTable(estate, list_make1(rte));
	rri = makeNode(ResultRelInfo);
	ExecInitResultRelation(estate, rri, 1);
	CheckValidResultRel(rri, CMD_INSERT);
	ExecOpenIndices(rri, false);
	econtext = GetPerTupleExprContext(estate);

	defaults = palloc0(sizeof(ExprState *) * natts);
	for (int a = 0; a < natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		/* a column the statement leaves out, or one that takes its default when empty */
		if (!att->attisdropped && (colof[a] < 0 || t->cols[colof[a]].default_expr != NULL))
		{
			Node	   *expr = build_column_default(rel, a + 1);

			if (expr != NULL)
				defaults[a] = ExecPrepareExpr((Expr *) expr, estate);	/* plans it too */
		}
	}

	slots = palloc(sizeof(TupleTableSlot *) * Min(n, PE_APPEND_GROUP));
	for (int i = 0; i < Min(n, PE_APPEND_GROUP); i++)
		slots[i] = table_slot_create(rel, NULL);
	if (pe_append_ring == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		pe_append_ring = GetAccessStrategy(BAS_BULKWRITE);
		MemoryContextSwitchTo(old);
	}
	bistate.strategy = pe_append_ring;
	bistate.current_buf = InvalidBuffer;	/* an error's abort drops the pin */

	for (int start = 0; start < n; start += PE_APPEND_GROUP)
	{
		int			count = Min(n - start, PE_APPEND_GROUP);

		CHECK_FOR_INTERRUPTS();

		for (int i = 0; i < count; i++)
		{
			PeRow	   *row = rows[start + i];
			TupleTableSlot *slot = slots[i];

			ExecClearTuple(slot);
			for (int a = 0; a < natts; a++)
			{
				int			c = colof[a];

				if (c >= 0 && !row->nulls[c])
				{
					slot->tts_values[a] = row->values[c];
					slot->tts_isnull[a] = false;
				}
				else if (defaults[a] != NULL)
					slot->tts_values[a] = ExecEvalExprSwitchContext(defaults[a], econtext,
																	&slot->tts_isnull[a]);
				else
				{
					slot->tts_values[a] = (Datum) 0;
					slot->tts_isnull[a] = true;
				}
			}
			ExecStoreVirtualTuple(slot);
			/* a CHECK constraint may read tableoid, as in ExecInsert */
			slot->tts_tableOid = RelationGetRelid(rel);
			if (rel->rd_att->constr)
				ExecConstraints(rri, slot, estate);
		}

		/* what the insert allocates goes with the group, as in COPY FROM */
		{
			MemoryContext old = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));

			table_multi_insert(rel, slots, count, cid, 0, &bistate);
			MemoryContextSwitchTo(old);
		}

		if (rri->ri_NumIndices > 0)
			for (int i = 0; i < count; i++)
			{
				List	   *recheck = ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);

				list_free(recheck);
			}
		ResetPerTupleExprContext(estate);
	}

	ReleaseBulkInsertStatePin(&bistate);
	table_finish_bulk_insert(rel, 0);
	for (int i = 0; i < Min(n, PE_APPEND_GROUP); i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
	PopActiveSnapshot();
	CommandCounterIncrement();
	table_close(rel, NoLock);
	return true;
}

bool
pe_append_rows(PeTarget *t, PeRow **rows, int n, int64 *processed)
{
	MemoryContext caller = CurrentMemoryContext;

	/*
	 * Everything it allocates (executor state, slots, bulk-insert state) in
	 * a context of its own, deleted on the way out, error or not: the
	 * caller's is the batch's, and bisecting bad rows makes many attempts.
	 */
	MemoryContext cxt = AllocSetContextCreate(caller, "pipeline_ext append", ALLOCSET_DEFAULT_SIZES);
	volatile bool done = false;

	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		done = pe_append_rows_in(t, rows, n);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(cxt);
	if (done)
		*processed = n;
	return done;
}

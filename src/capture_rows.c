/*-------------------------------------------------------------------------
 *
 * capture_rows.c
 *	  The messages of a captured statement in the 'row' format that need
 *	  no pairing of old and new rows (an INSERT's rows; a DELETE's
 *	  tombstones), made from the statement's transition table directly and
 *	  written into the outbox: the key as json_build_object() of the key
 *	  columns writes it, the value as row_to_json() (NULL for a
 *	  tombstone), both as UTF-8 bytes.  The same bytes as the query
 *	  capture.c prepares for the other events would make (007_capture.pl
 *	  compares them), without starting a query for each statement: for an
 *	  application's one-row INSERT, the query's set-up and run were most
 *	  of what the trigger cost.
 *
 * IDENTIFICATION
 *	  src/capture_rows.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "capture.h"
#include "relay.h"

/* The number of rel's key column name; a clear error when it has none (dropped since the capture). */
AttrNumber
pe_capture_key_attnum(Relation rel, const char *name)
{
	AttrNumber	att = get_attnum(RelationGetRelid(rel), name);

	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("key column \"%s\" of captured table \"%s\" does not exist", name,
						RelationGetRelationName(rel)),
				 errhint("Capture the table again with pipeline.capture_changes(), naming columns it has.")));
	return att;
}

/*
 * For the key columns of rel (names as the table has them now): their
 * numbers, their names as JSON strings, and to_json() set up for each
 * one's type, which formats a value as json_build_object() does (both
 * call the same datum_to_json()).  Allocated in cxt.
 */
PeCaptureKey *
pe_capture_key_prepare(Relation rel, List *keys, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	PeCaptureKey *k = palloc0(sizeof(PeCaptureKey));
	ListCell   *lc;

	k->n = list_length(keys);
	k->atts = palloc(sizeof(AttrNumber) * k->n);
	k->names = palloc(sizeof(char *) * k->n);
	k->to_json = palloc0(sizeof(FmgrInfo) * k->n);
	foreach(lc, keys)
	{
		int			i = foreach_current_index(lc);
		AttrNumber	att = pe_capture_key_attnum(rel, lfirst(lc));
		Form_pg_attribute a;
		StringInfoData name;

		a = TupleDescAttr(RelationGetDescr(rel), att - 1);
		k->atts[i] = att;
		initStringInfo(&name);
		escape_json(&name, lfirst(lc));
		k->names[i] = name.data;
		fmgr_info_cxt(F_TO_JSON, &k->to_json[i], cxt);
		fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSON, JSONOID,
												 list_make1(makeNullConst(a->atttypid, a->atttypmod, a->attcollation)),
												 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL),
						   &k->to_json[i]);
	}
	MemoryContextSwitchTo(old);
	return k;
}

/* json text as UTF-8 bytes, as convert_to(j::text, 'UTF8') */
static Datum
pe_capture_utf8(Datum json)
{
	NameData	utf8;

	namestrcpy(&utf8, "UTF8");
	return DirectFunctionCall2(pg_convert_to, json, NameGetDatum(&utf8));
}

/* the key of the row in slot, as json_build_object('k1', k1, ...) writes it */
static Datum
pe_capture_key_of(PeCaptureKey *k, TupleTableSlot *slot)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < k->n; i++)
	{
		bool		isnull;
		Datum		v = slot_getattr(slot, k->atts[i], &isnull);

		if (i > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, k->names[i]);
		appendStringInfoString(&buf, " : ");
		if (isnull)
			appendStringInfoString(&buf, "null");
		else
			appendStringInfoString(&buf, TextDatumGetCString(FunctionCall1(&k->to_json[i], v)));
	}
	appendStringInfoChar(&buf, '}');
	return pe_capture_utf8(PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len)));
}

/*
 * Each row of the transition table rows (of rel's shape) as a message into
 * the outbox, in the table's order: key and, when with_value, the row as
 * JSON (otherwise a tombstone).  Returns how many.
 */
uint64
pe_capture_rows_write(PeCaptureKey *k, Relation rel, Tuplestorestate *rows, bool with_value,
					  const char *connection, const char *topic, Oid owner)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "pipeline_ext captured rows", ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	Datum	   *keys = palloc(sizeof(Datum) * PE_CAPTURE_CHUNK);
	Datum	   *values = palloc(sizeof(Datum) * PE_CAPTURE_CHUNK);
	bool	   *key_nulls = palloc0(sizeof(bool) * PE_CAPTURE_CHUNK);
	bool	   *value_nulls = palloc(sizeof(bool) * PE_CAPTURE_CHUNK);
	int			ptr;
	int			n = 0;
	uint64		written = 0;
	bool		more = true;

	/* a read pointer of its own, as a query's scan of it takes: other triggers read it too */
	ptr = tuplestore_alloc_read_pointer(rows, EXEC_FLAG_REWIND);
	tuplestore_select_read_pointer(rows, ptr);
	tuplestore_rescan(rows);
	old = MemoryContextSwitchTo(cxt);
	while (more)
	{
		CHECK_FOR_INTERRUPTS();
		more = tuplestore_gettupleslot(rows, true, false, slot);
		if (more)
		{
			keys[n] = pe_capture_key_of(k, slot);
			value_nulls[n] = !with_value;
			values[n] = with_value ? pe_capture_utf8(DirectFunctionCall1(row_to_json, ExecFetchSlotHeapTupleDatum(slot)))
				: (Datum) 0;
			n++;
		}
		if (n == PE_CAPTURE_CHUNK || (!more && n > 0))
		{
			pe_outbox_insert_many(connection, topic, owner, n, keys, key_nulls, values, value_nulls);
			written += n;
			n = 0;
			/* (a table spilled to disk: the slot's tuple is in cxt, and the slot frees it) */
			ExecClearTuple(slot);
			MemoryContextReset(cxt);
		}
	}
	MemoryContextSwitchTo(old);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(cxt);
	return written;
}

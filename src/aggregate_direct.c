/*-------------------------------------------------------------------------
 *
 * aggregate_direct.c
 *	  Step 5 of the data path, the merge, straight into the heap: the
 *	  windows a batch pre-aggregated in C (aggregate_pre.c) are looked up
 *	  in the results' unique index and updated, or inserted, with the
 *	  table AM, as the INSERT ... ON CONFLICT DO UPDATE of aggregate_pre.c
 *	  would (the same values, the same privileges, constraints and index
 *	  entries), without the statement's per-row executor pass: its
 *	  arbiter probe, its unnest of the arrays, its RETURNING into a
 *	  tuplestore.  That statement cost about as much per window as a
 *	  device's whole upsert.  Only a results (or state) table this path
 *	  can write as the statement would: a plain table with exactly the
 *	  aggregate's columns and its unique index, no triggers, no rules, no
 *	  row-level security that applies; and only when the merged windows
 *	  are not emitted to a topic.  Anything else takes the statement.
 *
 * IDENTIFICATION
 *	  src/aggregate_direct.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "commands/defrem.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "aggregate.h"

/*
 * Where each window's row was last written by this process: (results,
 * window start, a hash of its groups' bytes) -> the row version's TID.
 * A hit is taken only when the row there is live and its keys are the
 * window's (a TID can be reused after VACUUM, another session may have
 * updated the row, a batch may have rolled back, two groups may share a
 * hash); anything else looks the window up in the index, as without it.
 * So it needs no invalidation, and saves the index probe, the largest
 * part of a merge, for the windows a slot keeps updating.
 */
typedef struct PeTidKey
{
	Oid			rel;
	Oid			relfilenode;	/* a rewritten table's TIDs are another's */
	uint32		ghash;
	int64		ws;
} PeTidKey;

typedef struct PeTidEntry
{
	PeTidKey	key;
	ItemPointerData tid;
	char		status;			/* simplehash's */
} PeTidEntry;

/*
 * An open-addressing table (lib/simplehash.h): one probe finds most
 * windows, where dynahash's buckets, segments and key compare took about
 * a sixth of the merge.  ghash already mixes the window's start and groups.
 */
#define SH_PREFIX pe_tids
#define SH_ELEMENT_TYPE PeTidEntry
#define SH_KEY_TYPE PeTidKey
#define SH_KEY key
#define SH_HASH_KEY(tb, k) ((k).ghash ^ murmurhash32((k).rel ^ (k).relfilenode ^ (uint32) (k).ws))
#define SH_EQUAL(tb, x, y) ((x).ghash == (y).ghash && (x).ws == (y).ws && (x).rel == (y).rel && \
							(x).relfilenode == (y).relfilenode)
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

#define PE_TID_CACHE_MAX 1000000	/* entries, 64 MB at most; then it starts again */

static pe_tids_hash *pe_tid_cache = NULL;

static pe_tids_hash *
pe_tid_cache_get(void)
{
	if (pe_tid_cache != NULL && pe_tid_cache->members >= PE_TID_CACHE_MAX)
	{
		pe_tids_destroy(pe_tid_cache);
		pe_tid_cache = NULL;
	}
	if (pe_tid_cache == NULL)
		pe_tid_cache = pe_tids_create(TopMemoryContext, 16384, NULL);
	return pe_tid_cache;
}

/*
 * The results' unique index on (window_start, window_end, groups...), as
 * create_aggregate makes it: its oid, or InvalidOid.  keyatt[] are the
 * table's attribute numbers of its keys; eqprocs[] gets their equality
 * procedures.
 */
static Oid
pe_direct_index(Relation rel, int nkeys, const AttrNumber *keyatt, PeColumn *const *gcols, RegProcedure *eqprocs)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		Relation	ix = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index f = ix->rd_index;
		bool		ok = f->indisunique && f->indimmediate && f->indisvalid && f->indisready &&
			f->indnullsnotdistinct && ix->rd_rel->relam == BTREE_AM_OID &&
			f->indnkeyatts == nkeys && RelationGetIndexExpressions(ix) == NIL &&
			RelationGetIndexPredicate(ix) == NIL;

		for (int k = 0; ok && k < nkeys; k++)
		{
			Oid			opcintype = ix->rd_opcintype[k];
			Oid			eqop = get_opfamily_member(ix->rd_opfamily[k], opcintype, opcintype, BTEqualStrategyNumber);

			Oid			defclass = GetDefaultOpClass(opcintype, BTREE_AM_OID);

			/*
			 * The type's own equality (the default operator class: the one
			 * the batch grouped by), each group in the collation it was
			 * grouped in.
			 */
			ok = f->indkey.values[k] == keyatt[k] && OidIsValid(eqop) && OidIsValid(defclass) &&
				get_opclass_family(defclass) == ix->rd_opfamily[k] &&
				(k < 2 || ix->rd_indcollation[k] == gcols[k - 2]->collation);
			if (ok)
				eqprocs[k] = get_opcode(eqop);
		}
		index_close(ix, AccessShareLock);
		if (ok)
		{
			found = lfirst_oid(lc);
			break;
		}
	}
	list_free(indexes);
	return found;
}

/* Whether the row in slot is of window ws .. we and groups gv[.][k] (the same bytes; nulls alike). */
static bool
pe_direct_same_keys(TupleTableSlot *slot, const AttrNumber *att, int nkeys, Datum ws, Datum we,
					Datum **gv, bool **gn, int k, const bool *gbyval, const int *glen)
{
	bool		isnull;

	if (DatumGetInt64(slot_getattr(slot, att[0], &isnull)) != DatumGetInt64(ws) || isnull ||
		DatumGetInt64(slot_getattr(slot, att[1], &isnull)) != DatumGetInt64(we) || isnull)
		return false;
	for (int g = 0; g < nkeys - 2; g++)
	{
		Datum		v = slot_getattr(slot, att[2 + g], &isnull);

		if (isnull != gn[g][k])
			return false;
		if (isnull)
			continue;
		if (glen[g] == -1)
		{
			/* the same bytes, whatever their headers (values here are not toasted) */
			struct varlena *x = PG_DETOAST_DATUM_PACKED(v);
			struct varlena *y = PG_DETOAST_DATUM_PACKED(gv[g][k]);

			if (VARSIZE_ANY_EXHDR(x) != VARSIZE_ANY_EXHDR(y) ||
				memcmp(VARDATA_ANY(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(x)) != 0)
				return false;
		}
		else if (!datumIsEqual(v, gv[g][k], gbyval[g], glen[g]))
			return false;
	}
	return true;
}

/* a + b in the type of a sum (int8, numeric, float4, float8), with the operator's overflow errors */
static Datum
pe_direct_add(Oid typid, Datum a, Datum b)
{
	switch (typid)
	{
		case INT8OID:
			{
				int64		r;

				if (pg_add_s64_overflow(DatumGetInt64(a), DatumGetInt64(b), &r))
					ereport(ERROR,
							(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
							 errmsg("bigint out of range")));
				return Int64GetDatum(r);
			}
		case FLOAT4OID:
			return Float4GetDatum(float4_pl(DatumGetFloat4(a), DatumGetFloat4(b)));
		case FLOAT8OID:
			return Float8GetDatum(float8_pl(DatumGetFloat8(a), DatumGetFloat8(b)));
		default:
			return DirectFunctionCall2(numeric_add, a, b);
	}
}

/*
 * The merged values of one window: old[] the row's items as stored (after
 * the row's other columns), new[] the batch's, out[] the merge, as
 * aggregate_merge.c's SET clause computes it.
 */
static void
pe_direct_merge_items(PeAggregate *a, const PeAggItem *items, int nitems, int64 ws,
					  const Datum *old, const bool *oldnull, const Datum *new, const bool *newnull,
					  Datum *out, bool *outnull)
{
	for (int k = 0; k < nitems; k++)
	{
		const PeAggItem *it = &items[k];

		outnull[k] = true;
		out[k] = (Datum) 0;
		/* before an added function was valid: null, as the CASE has it */
		if (a->has_valid_from[it->agg] && ws < a->valid_from[it->agg])
			continue;
		switch (it->kind)
		{
			case PE_ITEM_COUNT:
				/* r + EXCLUDED (strict) */
				if (!oldnull[k] && !newnull[k])
				{
					out[k] = pe_direct_add(INT8OID, old[k], new[k]);
					outnull[k] = false;
				}
				break;
			case PE_ITEM_SUM:
				/* COALESCE(r + EXCLUDED, r, EXCLUDED) */
				if (!oldnull[k] && !newnull[k])
					out[k] = pe_direct_add(it->typid, old[k], new[k]);
				else if (!oldnull[k])
					out[k] = old[k];
				else if (!newnull[k])
					out[k] = new[k];
				outnull[k] = oldnull[k] && newnull[k];
				break;
			case PE_ITEM_MIN:
			case PE_ITEM_MAX:
				/* LEAST / GREATEST: nulls skipped, a tie keeps the first (the row's) */
				if (oldnull[k] || newnull[k])
				{
					out[k] = oldnull[k] ? new[k] : old[k];
					outnull[k] = oldnull[k] && newnull[k];
				}
				else
				{
					int			c = pe_agg_compare(it->typid, it->cmp, it->collation, new[k], old[k]);

					out[k] = (it->kind == PE_ITEM_MIN ? c < 0 : c > 0) ? new[k] : old[k];
					outnull[k] = false;
				}
				break;
			case PE_ITEM_AVG:
				/* its sum and count follow (k + 1, k + 2): merged first, below */
				break;
		}
	}
	/* avg = merged sum / merged count, in double precision or numeric as avg() divides */
	for (int k = 0; k < nitems; k++)
	{
		const PeAggItem *it = &items[k];

		if (it->kind != PE_ITEM_AVG || (a->has_valid_from[it->agg] && ws < a->valid_from[it->agg]))
			continue;
		if (outnull[k + 2] || DatumGetInt64(out[k + 2]) <= 0)
			continue;			/* CASE WHEN count > 0: else null */
		if (outnull[k + 1])
			continue;			/* a null sum divided: null */
		if (it->typid == FLOAT8OID)
		{
			float8		sum = items[k + 1].typid == FLOAT4OID ? (float8) DatumGetFloat4(out[k + 1])
				: DatumGetFloat8(out[k + 1]);

			out[k] = Float8GetDatum(float8_div(sum, (float8) DatumGetInt64(out[k + 2])));
		}
		else
		{
			Datum		sum = items[k + 1].typid == INT8OID
				? NumericGetDatum(int64_to_numeric(DatumGetInt64(out[k + 1]))) : out[k + 1];

			out[k] = DirectFunctionCall2(numeric_div, sum, NumericGetDatum(int64_to_numeric(DatumGetInt64(out[k + 2]))));
		}
		outnull[k] = false;
	}
}

/*
 * The merge of cells windows into relation res, as the owner; returns
 * false, having done nothing, when res is not a table this path writes
 * as the statement would.  Cell k: its window ws[k] .. we[k] (time_type),
 * hashes[k] the hash of its start and groups (the same for the same values),
 * its groups gv[g][k] (gn: null; of the target's columns gcols), its items iv[i][k] (in: null) in the order of
 * pe_agg_columns().  *inserted: the windows that were new.
 */
static bool
pe_agg_direct_in(PeAggregate *a, Oid res, Oid time_type, int ncells, const uint32 *hashes, const Datum *ws, const Datum *we,
				 PeColumn *const *gcols, Datum **gv, bool **gn, const PeAggItem *items, int nitems, Datum **iv, bool **in,
				 int64 *inserted)
{
	Relation	rel = table_open(res, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	int			nkeys = 2 + a->ngroups;
	int			ncols = nkeys + nitems;
	AttrNumber *att = palloc(sizeof(AttrNumber) * (ncols + 1));	/* and closed */
	Oid			ixoid;
	Relation	ix;
	ScanKeyData *keys;
	RangeTblEntry *rte;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	IndexScanDesc scan;
	SnapshotData dirty;
	RegProcedure *eqprocs;
	pe_tids_hash *cache;
	PeTidKey	tkey;
	PeTidEntry *tent;
	bool		known;
	BlockNumber nblocks;
	bool	   *gbyval;
	int		   *glen;
	AclResult	aclresult;
	CommandId	cid;
	Datum	   *old = palloc(sizeof(Datum) * nitems);
	bool	   *oldnull = palloc(sizeof(bool) * nitems);
	Datum	   *new = palloc(sizeof(Datum) * nitems);
	bool	   *newnull = palloc(sizeof(bool) * nitems);
	Datum	   *out = palloc(sizeof(Datum) * nitems);
	bool	   *outnull = palloc(sizeof(bool) * nitems);
	int			nlive = 0;

	if (XactReadOnly || IsInParallelMode() ||
		rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
		rel->rd_rel->relispartition ||
		rel->trigdesc != NULL || rel->rd_rules != NULL ||
		(desc->constr && desc->constr->has_generated_stored) ||
		check_enable_rls(res, InvalidOid, true) != RLS_NONE)
	{
		table_close(rel, NoLock);
		return false;
	}

	/* the aggregate's columns, of the types computed, and closed: nothing else */
	for (int c = 0; c < ncols + 1; c++)
	{
		const char *name;
		Oid			want;
		Form_pg_attribute fa;

		if (c == 0)
			name = "window_start";
		else if (c == 1)
			name = "window_end";
		else if (c < nkeys)
			name = a->groups[c - 2];
		else if (c < ncols)
			name = items[c - nkeys].name;
		else
			name = "closed";
		att[c] = get_attnum(res, name);
		if (att[c] == InvalidAttrNumber)
		{
			table_close(rel, NoLock);
			return false;
		}
		/*
		 * Of the type computed, with no typmod the statement would coerce to
		 * (a group's: its column's), and a group or a min or max in the
		 * collation it was grouped or compared in here.
		 */
		fa = TupleDescAttr(desc, att[c] - 1);
		want = c < 2 ? time_type : c < nkeys ? gcols[c - 2]->typid : c < ncols ? items[c - nkeys].typid : BOOLOID;
		if (fa->atttypid != want || fa->attidentity ||
			fa->atttypmod != (c >= 2 && c < nkeys ? gcols[c - 2]->typmod : -1) ||
			(c >= 2 && c < nkeys && fa->attcollation != gcols[c - 2]->collation) ||
			(c >= nkeys && c < ncols && items[c - nkeys].cmp != NULL && fa->attcollation != items[c - nkeys].collation))
		{
			table_close(rel, NoLock);
			return false;
		}
	}
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			nlive++;
	eqprocs = palloc(sizeof(RegProcedure) * nkeys);
	ixoid = nlive == ncols + 1 ? pe_direct_index(rel, nkeys, att, gcols, eqprocs) : InvalidOid;
	if (!OidIsValid(ixoid))
	{
		table_close(rel, NoLock);
		return false;
	}

	/* what the INSERT ... ON CONFLICT DO UPDATE needs, as it checks it */
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = res;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = ACL_INSERT | ACL_UPDATE | ACL_SELECT;
	for (int c = 0; c < ncols; c++)
	{
		int			bit = att[c] - FirstLowInvalidHeapAttributeNumber;

		rte->insertedCols = bms_add_member(rte->insertedCols, bit);
		if (c >= nkeys)
		{
			rte->updatedCols = bms_add_member(rte->updatedCols, bit);
			/* what SET reads: every item but an average, which is divided from its sum and count */
			if (items[c - nkeys].kind != PE_ITEM_AVG)
				rte->selectedCols = bms_add_member(rte->selectedCols, bit);
		}
		else
			rte->selectedCols = bms_add_member(rte->selectedCols, bit);	/* the arbiter's */
	}
	/* the statement names the table in its schema */
	aclresult = pg_namespace_aclcheck(RelationGetNamespace(rel), GetUserId(), ACL_USAGE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_SCHEMA, get_namespace_name(RelationGetNamespace(rel)));
	ExecCheckRTPerms(list_make1(rte), true);

	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	cid = GetCurrentCommandId(true);

	estate = CreateExecutorState();
	ExecInitRangeTable(estate, list_make1(rte));
	rri = makeNode(ResultRelInfo);
	ExecInitResultRelation(estate, rri, 1);
	CheckValidResultRel(rri, CMD_INSERT);	/* (as INSERT ... ON CONFLICT DO UPDATE: the insert's) */
	ExecOpenIndices(rri, false);
	oldslot = table_slot_create(rel, NULL);
	newslot = table_slot_create(rel, NULL);

	/*
	 * The lookup: equality on each key, nulls as one value (NULLS NOT
	 * DISTINCT); with a dirty snapshot, as the statement's arbiter check
	 * probes, so that a row another session is inserting or changing is
	 * waited for, then found as it committed.
	 */
	ix = index_open(ixoid, AccessShareLock);
	keys = palloc0(sizeof(ScanKeyData) * nkeys);
	InitDirtySnapshot(dirty);
	scan = index_beginscan(rel, ix, &dirty, nkeys, 0);
	cache = pe_tid_cache_get();
	nblocks = RelationGetNumberOfBlocks(rel);
	gbyval = palloc(sizeof(bool) * Max(nkeys - 2, 1));
	glen = palloc(sizeof(int) * Max(nkeys - 2, 1));
	for (int g = 0; g < nkeys - 2; g++)
	{
		gbyval[g] = TupleDescAttr(desc, att[2 + g] - 1)->attbyval;
		glen[g] = TupleDescAttr(desc, att[2 + g] - 1)->attlen;
	}

	*inserted = 0;
	for (int k = 0; k < ncells; k++)
	{
		bool		found;
		MemoryContext percell;

		CHECK_FOR_INTERRUPTS();
		for (int c = 0; c < nkeys; c++)
		{
			Datum		v = c == 0 ? ws[k] : c == 1 ? we[k] : gv[c - 2][k];
			bool		isnull = c >= 2 && gn[c - 2][k];

			if (isnull)
				ScanKeyEntryInitialize(&keys[c], SK_ISNULL | SK_SEARCHNULL, c + 1, InvalidStrategy,
									   InvalidOid, ix->rd_indcollation[c], InvalidOid, (Datum) 0);
			else
				ScanKeyEntryInitialize(&keys[c], 0, c + 1, BTEqualStrategyNumber, ix->rd_opcintype[c],
									   ix->rd_indcollation[c], eqprocs[c], v);
		}
		/* the row where this process last wrote the window, if it is still that window's live row */
		memset(&tkey, 0, sizeof(tkey));
		tkey.rel = res;
		tkey.relfilenode = rel->rd_node.relNode;
		tkey.ws = DatumGetInt64(ws[k]);
		tkey.ghash = hashes[k];
		tent = pe_tids_insert(cache, tkey, &known);
		if (!known)
			ItemPointerSetInvalid(&tent->tid);	/* (set once the window is written) */
		if (ItemPointerIsValid(&tent->tid) && ItemPointerGetBlockNumber(&tent->tid) < nblocks)
		{
			/*
			 * The page is pruned first, as an index fetch prunes it: the
			 * versions the batches before left go, and this update finds
			 * room on the page (HOT).  (A live version keeps its TID.)
			 */
			Buffer		b;

			ExecClearTuple(oldslot);	/* (its pin would keep the page from being pruned) */
			b = ReadBuffer(rel, ItemPointerGetBlockNumber(&tent->tid));
			heap_page_prune_opt(rel, b);
			ReleaseBuffer(b);
		}
		if (ItemPointerIsValid(&tent->tid) && ItemPointerGetBlockNumber(&tent->tid) < nblocks &&
			table_tuple_fetch_row_version(rel, &tent->tid, &dirty, oldslot) &&
			!TransactionIdIsValid(dirty.xmin) && !TransactionIdIsValid(dirty.xmax) &&
			pe_direct_same_keys(oldslot, att, nkeys, ws[k], we[k], gv, gn, k, gbyval, glen))
		{
			found = true;
			goto merge;
		}
probe:
		index_rescan(scan, keys, nkeys, NULL, 0);
		found = index_getnext_slot(scan, ForwardScanDirection, oldslot);
		if (found && (TransactionIdIsValid(dirty.xmin) || TransactionIdIsValid(dirty.xmax)))
		{
			/* another session's, not committed yet: wait for it, then look again (as a unique check waits) */
			TransactionId xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
			ItemPointerData wtid = oldslot->tts_tid;

			ExecClearTuple(oldslot);
			if (dirty.speculativeToken != 0)
				SpeculativeInsertionWait(dirty.xmin, dirty.speculativeToken);
			else
				XactLockTableWait(xwait, rel, &wtid, XLTW_InsertIndex);
			goto probe;
		}

merge:
		/* what the cell computes and writes goes with it */
		percell = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));
		for (int i = 0; i < nitems; i++)
		{
			new[i] = iv[i][k];
			newnull[i] = in[i][k];
		}
		ExecClearTuple(newslot);
		if (found)
		{
			TM_Result	r;
			TM_FailureData tmfd;
			LockTupleMode lockmode;
			bool		update_indexes;

			slot_getallattrs(oldslot);
			for (int i = 0; i < nitems; i++)
			{
				old[i] = oldslot->tts_values[att[nkeys + i] - 1];
				oldnull[i] = oldslot->tts_isnull[att[nkeys + i] - 1];
			}
			pe_direct_merge_items(a, items, nitems, DatumGetInt64(ws[k]), old, oldnull, new, newnull, out, outnull);
			memcpy(newslot->tts_values, oldslot->tts_values, sizeof(Datum) * desc->natts);
			memcpy(newslot->tts_isnull, oldslot->tts_isnull, sizeof(bool) * desc->natts);
			for (int i = 0; i < nitems; i++)
			{
				newslot->tts_values[att[nkeys + i] - 1] = out[i];
				newslot->tts_isnull[att[nkeys + i] - 1] = outnull[i];
			}
			ExecStoreVirtualTuple(newslot);
			newslot->tts_tableOid = res;
			if (desc->constr)
				ExecConstraints(rri, newslot, estate);
			r = table_tuple_update(rel, &oldslot->tts_tid, newslot, cid, GetActiveSnapshot(), InvalidSnapshot,
								   true, &tmfd, &lockmode, &update_indexes);
			if ((r == TM_Updated || r == TM_Deleted) && IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent update")));
			if (r == TM_Updated || r == TM_Deleted)
			{
				/* changed since it was found: as the statement does, again with what is there now */
				MemoryContextSwitchTo(percell);
				ResetPerTupleExprContext(estate);
				goto probe;
			}
			if (r == TM_Invisible || r == TM_SelfModified)
				/* written by this very merge: two of its windows are one row of the results */
				ereport(ERROR,
						(errcode(ERRCODE_CARDINALITY_VIOLATION),
						 errmsg("aggregate \"%s\" merged two of a batch's windows into one row of its results", a->name),
						 errhint("The results' unique index treats two of the batch's groups as equal: give it the group columns' default operator classes.")));
			if (r != TM_Ok)
				elog(ERROR, "unexpected result %d updating a window of aggregate \"%s\"", (int) r, a->name);
			if (update_indexes && rri->ri_NumIndices > 0)
				list_free(ExecInsertIndexTuples(rri, newslot, estate, true, false, NULL, NIL));
		}
		else
		{
			for (int i = 0; i < desc->natts; i++)
				newslot->tts_isnull[i] = true;
			for (int c = 0; c < nkeys; c++)
			{
				newslot->tts_values[att[c] - 1] = c == 0 ? ws[k] : c == 1 ? we[k] : gv[c - 2][k];
				newslot->tts_isnull[att[c] - 1] = c >= 2 && gn[c - 2][k];
			}
			for (int i = 0; i < nitems; i++)
			{
				newslot->tts_values[att[nkeys + i] - 1] = new[i];
				newslot->tts_isnull[att[nkeys + i] - 1] = newnull[i];
			}
			newslot->tts_values[att[ncols] - 1] = BoolGetDatum(false);
			newslot->tts_isnull[att[ncols] - 1] = false;
			ExecStoreVirtualTuple(newslot);
			newslot->tts_tableOid = res;
			if (desc->constr)
				ExecConstraints(rri, newslot, estate);

			/*
			 * Inserted speculatively, as INSERT ... ON CONFLICT inserts: if
			 * another session committed the same window since the probe, the
			 * insertion is taken back and the window looked up again.
			 */
			{
				uint32		token = SpeculativeInsertionLockAcquire(GetCurrentTransactionId());
				bool		conflict = false;

				table_tuple_insert_speculative(rel, newslot, cid, 0, NULL, token);
				list_free(ExecInsertIndexTuples(rri, newslot, estate, false, true, &conflict, list_make1_oid(ixoid)));
				table_tuple_complete_speculative(rel, newslot, token, !conflict);
				SpeculativeInsertionLockRelease(GetCurrentTransactionId());
				if (conflict)
				{
					MemoryContextSwitchTo(percell);
					ResetPerTupleExprContext(estate);
					goto probe;
				}
			}
			(*inserted)++;
		}
		/* the version just written: where the window is next time (no insert since: tent has not moved) */
		tent->tid = newslot->tts_tid;
		MemoryContextSwitchTo(percell);
		ResetPerTupleExprContext(estate);
	}

	index_endscan(scan);
	index_close(ix, NoLock);
	ExecDropSingleTupleTableSlot(oldslot);
	ExecDropSingleTupleTableSlot(newslot);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
	PopActiveSnapshot();
	CommandCounterIncrement();
	table_close(rel, NoLock);
	return true;
}

/*
 * The merge straight into the heap, when it can be done that way (see
 * the header); false, having done nothing, when not.  As the owner, in a
 * security-restricted operation, as the statement runs (an index's or a
 * constraint's functions run with its rights).
 */
bool
pe_agg_direct_merge(PeAggregate *a, PeTarget *t, Oid res, Oid time_type, int ncells, const uint32 *hashes, const Datum *ws,
					const Datum *we, PeColumn *const *gcols, Datum **gv, bool **gn, const PeAggItem *items, int nitems, Datum **iv, bool **in,
					int64 *inserted)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext cxt;
	Oid			save_userid;
	int			save_sec;
	volatile bool done = false;

	/* windows emitted to a topic take the statement, which emits them */
	if (!a->emit_close && a->emit_topic != NULL)
		return false;
	cxt = AllocSetContextCreate(caller, "pipeline_ext aggregate merge", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->def->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		done = pe_agg_direct_in(a, res, time_type, ncells, hashes, ws, we, gcols, gv, gn, items, nitems, iv, in, inserted);
	}
	PG_CATCH();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(cxt);
	return done;
}

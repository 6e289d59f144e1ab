/*-------------------------------------------------------------------------
 *
 * capture_follow.c
 *	  Change capture follows a partitioned table's partitions.  A statement
 *	  on a partition fires the partition's own statement triggers, not its
 *	  parent's, so every partition of a captured table carries the
 *	  capture's triggers (capture.c puts them on those there are when it
 *	  captures).  pipeline._capture_follow(), called by an event trigger
 *	  at the end of each CREATE TABLE and ALTER TABLE, puts them on the
 *	  partitions made or attached since, and takes them off a table
 *	  detached, whose writes are no longer the captured table's.
 *
 * IDENTIFICATION
 *	  src/capture_follow.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/deparse_utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "connection.h"

PG_FUNCTION_INFO_V1(pe_capture_follow);

#define PE_CAPTURE_INSERT_TRIGGER "pipeline_capture_insert"

/* A capture trigger's arguments: the capture's id, then key column numbers. */
static char **
pe_trigger_args(HeapTuple tup, TupleDesc desc, int *nargs)
{
	Form_pg_trigger form = (Form_pg_trigger) GETSTRUCT(tup);
	bool		isnull;
	Datum		d = heap_getattr(tup, Anum_pg_trigger_tgargs, desc, &isnull);
	bytea	   *raw;
	char	   *p;
	char	  **args;

	*nargs = 0;
	if (isnull || form->tgnargs < 1)
		return NULL;
	raw = DatumGetByteaPP(d);
	p = VARDATA_ANY(raw);
	args = palloc(sizeof(char *) * form->tgnargs);
	for (int i = 0; i < form->tgnargs; i++)
	{
		if (p >= VARDATA_ANY(raw) + VARSIZE_ANY_EXHDR(raw))
			break;
		args[i] = pstrdup(p);
		p += strlen(p) + 1;
		(*nargs)++;
	}
	return args;
}

/*
 * The tables whose capture triggers name capture id, found in pg_trigger
 * (the insert trigger stands for the three).
 */
static List *
pe_capture_carriers(int64 id)
{
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	SysScanDesc scan = systable_beginscan(tgrel, InvalidOid, false, NULL, 0, NULL);
	HeapTuple	tup;
	List	   *carriers = NIL;

	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger form = (Form_pg_trigger) GETSTRUCT(tup);
		char	  **args;
		int			nargs;

		if (strcmp(NameStr(form->tgname), PE_CAPTURE_INSERT_TRIGGER) != 0)
			continue;
		args = pe_trigger_args(tup, RelationGetDescr(tgrel), &nargs);
		if (nargs >= 1 && strtoll(args[0], NULL, 10) == id)
			carriers = lappend_oid(carriers, form->tgrelid);
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return carriers;
}

/*
 * The key columns of capture id as its table names them now: the names
 * the catalog keeps, followed through a rename by the numbers its own
 * insert trigger carries.
 */
static List *
pe_capture_keys_now(Relation captured, int64 id)
{
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	List	   *keys = NIL;
	char	  **attnums = NULL;
	int			nattnums = 0;
	MemoryContext outer = CurrentMemoryContext;

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT key_columns FROM pipeline.capture WHERE id OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.capture");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum	   *elems;
		int			n;
		MemoryContext spi = MemoryContextSwitchTo(outer);

		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
		for (int i = 0; i < n; i++)
			keys = lappend(keys, TextDatumGetCString(elems[i]));
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);

	if (captured->trigdesc)
		for (int i = 0; i < captured->trigdesc->numtriggers; i++)
		{
			Trigger    *tg = &captured->trigdesc->triggers[i];

			if (strcmp(tg->tgname, PE_CAPTURE_INSERT_TRIGGER) == 0 && tg->tgnargs >= 1)
			{
				attnums = tg->tgargs + 1;
				nattnums = tg->tgnargs - 1;
			}
		}
	return pe_capture_current_keys(captured, keys, attnums, nattnums);
}

/*
 * Does a command change which tables are partitions: CREATE TABLE ...
 * PARTITION OF, ALTER TABLE ... ATTACH or DETACH PARTITION?  Other DDL is
 * left alone, so that a restore, whose ADD CONSTRAINT and the like come
 * after the capture's catalog row and before the triggers it restores,
 * makes no triggers of its own.
 */
static bool
pe_repartitions(CollectedCommand *cmd)
{
	ListCell   *lc;

	if (cmd->type == SCT_Simple)
		return IsA(cmd->parsetree, CreateStmt) && ((CreateStmt *) cmd->parsetree)->partbound != NULL;
	if (cmd->type != SCT_AlterTable)
		return false;
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = lfirst(lc);

		if (IsA(sub->parsetree, AlterTableCmd))
			switch (((AlterTableCmd *) sub->parsetree)->subtype)
			{
				case AT_AttachPartition:
				case AT_DetachPartition:
				case AT_DetachPartitionFinalize:
					return true;
				default:
					break;
			}
	}
	return false;
}

/*
 * pipeline._capture_follow(relid, command), from the event trigger: after
 * a command that made, attached or detached a partition, the capture of
 * relid or of a table it is a partition of (if any) covers exactly that
 * table and its partitions.  Runs as the role whose DDL it is.
 */
Datum
pe_capture_follow(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(1);
	char		relkind = get_rel_relkind(relid);
	List	   *chain;
	Oid			captured = InvalidOid;
	int64		id = 0;
	ListCell   *lc;
	Relation	rel;
	List	   *keys;
	List	   *covered;

	if (!pe_repartitions(cmd))
		PG_RETURN_VOID();
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		PG_RETURN_VOID();		/* dropped since, or not a table */
	chain = list_make1_oid(relid);
	if (get_rel_relispartition(relid))
		chain = list_concat(chain, get_partition_ancestors(relid));
	foreach(lc, chain)
		if ((id = pe_capture_lookup(lfirst_oid(lc))) != 0)
		{
			captured = lfirst_oid(lc);
			break;
		}
	if (id == 0)
		PG_RETURN_VOID();

	rel = table_open(captured, ShareRowExclusiveLock);
	keys = pe_capture_keys_now(rel, id);
	covered = find_all_inheritors(captured, ShareRowExclusiveLock, NULL);

	/* partitions made or attached: the capture's triggers */
	foreach(lc, covered)
		if (lfirst_oid(lc) != captured &&
			!OidIsValid(get_trigger_oid(lfirst_oid(lc), PE_CAPTURE_INSERT_TRIGGER, true)))
			pe_capture_make_triggers(lfirst_oid(lc), id, keys);

	/* tables detached: theirs off */
	foreach(lc, pe_capture_carriers(id))
		if (!list_member_oid(covered, lfirst_oid(lc)))
			pe_capture_drop_triggers(lfirst_oid(lc));
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

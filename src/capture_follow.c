/*-------------------------------------------------------------------------
 *
 * capture_follow.c
 *	  What a capture covers, kept true as the table changes.  A statement
 *	  on a partition fires the partition's own statement triggers, not its
 *	  parent's, so every partition of a captured table carries the
 *	  capture's triggers: capture.c puts them on those there are, and
 *	  pipeline._capture_follow(), called by an event trigger at the end of
 *	  DDL, puts them on a partition made or attached later and takes them
 *	  off one detached.  It also follows a key column renamed, in the
 *	  catalog, and refuses ALTER TABLE ... DROP NOT NULL or DROP COLUMN
 *	  that would leave a key column nullable or gone (every message is
 *	  keyed by it).  Dropping the unique index under the key is not
 *	  refused: checked from the sql_drop event, a DROP INDEX CONCURRENTLY
 *	  would be half done (its first transactions committed), and
 *	  pg_restore --clean drops a table's constraints before the table.
 *
 * IDENTIFICATION
 *	  src/capture_follow.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "tcop/deparse_utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "capture.h"
#include "connection.h"
#include "pipeline_ext.h"

PG_FUNCTION_INFO_V1(pe_capture_follow);
PG_FUNCTION_INFO_V1(pe_capture_cover_sql);

#define PE_CAPTURE_INSERT_TRIGGER "pipeline_capture_insert"

/*
 * relid and its partitions at every level, locked as CREATE TRIGGER
 * locks: the tables a capture of relid covers.  Children by inheritance
 * are not partitions (a statement on one is not the table's), and a
 * foreign table cannot have triggers with transition tables: neither is
 * covered.
 */
List *
pe_capture_tree(Oid relid)
{
	List	   *tree = NIL;
	ListCell   *lc;

	foreach(lc, find_all_inheritors(relid, ShareRowExclusiveLock, NULL))
	{
		Oid			t = lfirst_oid(lc);
		char		kind = get_rel_relkind(t);

		if (t == relid ||
			(get_rel_relispartition(t) && (kind == RELKIND_RELATION || kind == RELKIND_PARTITIONED_TABLE)))
			tree = lappend_oid(tree, t);
	}
	return tree;
}

/* pipeline._capture_trigger(): what a capture's triggers run. */
static Oid
pe_capture_trigger_fn(void)
{
	return LookupFuncName(list_make2(makeString(PE_SCHEMA), makeString("_capture_trigger")), 0, NULL, true);
}

/* rel's capture insert trigger (it stands for the three), or NULL. */
static Trigger *
pe_capture_insert_trigger(Relation rel)
{
	Oid			fn = pe_capture_trigger_fn();

	if (rel->trigdesc)
		for (int i = 0; i < rel->trigdesc->numtriggers; i++)
		{
			Trigger    *tg = &rel->trigdesc->triggers[i];

			if (tg->tgfoid == fn && strcmp(tg->tgname, PE_CAPTURE_INSERT_TRIGGER) == 0 && tg->tgnargs >= 1)
				return tg;
		}
	return NULL;
}

/* The id of the capture whose triggers relid carries, or 0. */
int64
pe_capture_trigger_id(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	Trigger    *tg = pe_capture_insert_trigger(rel);
	int64		id = tg ? strtoll(tg->tgargs[0], NULL, 10) : 0;

	table_close(rel, AccessShareLock);
	return id;
}

/*
 * The key columns of capture id of table captured as it names them now:
 * the catalog's names, followed through a rename by the column numbers
 * its own insert trigger carries (capture.c).
 */
static List *
pe_capture_keys_now(Oid captured, int64 id)
{
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	List	   *keys = NIL;
	char	  **attnums = NULL;
	int			nattnums = 0;
	MemoryContext outer = CurrentMemoryContext;
	Relation	rel;
	Trigger    *tg;
	List	   *now;

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

	rel = table_open(captured, AccessShareLock);
	tg = pe_capture_insert_trigger(rel);
	if (tg)
	{
		attnums = tg->tgargs + 1;
		nattnums = tg->tgnargs - 1;
	}
	now = pe_capture_current_keys(rel, keys, attnums, nattnums);
	table_close(rel, AccessShareLock);
	return now;
}

/*
 * Capture id of table captured covers table top and its partitions: the
 * capture's triggers on each that lacks them.  One captured on its own,
 * or covered by another capture, is refused: its changes would go to two
 * topics, or to the other one only.
 */
void
pe_capture_cover(Oid captured, int64 id, Oid top, bool strict)
{
	List	   *keys = pe_capture_keys_now(captured, id);
	ListCell   *lc;

	foreach(lc, pe_capture_tree(top))
	{
		Oid			t = lfirst_oid(lc);
		int64		other = pe_capture_trigger_id(t);

		if (other == id)
			continue;
		if (other != 0 || (t != captured && pe_capture_lookup(t) != 0))
			ereport(strict ? ERROR : WARNING,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" is captured on its own", get_rel_name(t)),
					 errhint("Call pipeline.uncapture() on it first: the capture of partitioned table \"%s\" covers its partitions.",
							 get_rel_name(captured))));
		else
			pe_capture_make_triggers(t, id, keys);
	}
}

/*
 * The capture covering relid (its own, or a partitioned ancestor's; only
 * an ancestor's without self): its id and table, or 0.
 */
static int64
pe_capture_covering(Oid relid, bool self, Oid *captured)
{
	List	   *chain = self ? list_make1_oid(relid) : NIL;
	ListCell   *lc;

	if (get_rel_relispartition(relid))
		chain = list_concat(chain, get_partition_ancestors(relid));
	foreach(lc, chain)
	{
		int64		id = pe_capture_lookup(lfirst_oid(lc));

		if (id != 0)
		{
			*captured = lfirst_oid(lc);
			return id;
		}
	}
	return 0;
}

/* A partition made or attached: covered by its new parent's capture, if any. */
static void
pe_capture_partition_added(Oid part)
{
	Oid			captured;
	int64		id;
	char		kind = get_rel_relkind(part);

	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		return;					/* a foreign table: see pe_capture_tree() */
	id = pe_capture_covering(part, false, &captured);
	if (id != 0)
		pe_capture_cover(captured, id, part, true);
}

/*
 * The tables carrying capture id's triggers that it no longer covers: the
 * partition a command detached and its own partitions, found in
 * pg_trigger by the trigger's function and argument.
 */
static List *
pe_capture_strays(Oid captured, int64 id)
{
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	SysScanDesc scan = systable_beginscan(tgrel, InvalidOid, false, NULL, 0, NULL);
	Oid			fn = pe_capture_trigger_fn();
	List	   *covered = pe_capture_tree(captured);
	List	   *strays = NIL;
	HeapTuple	tup;

	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger form = (Form_pg_trigger) GETSTRUCT(tup);
		bool		isnull;
		Datum		args;

		if (form->tgfoid != fn || form->tgnargs < 1 || strcmp(NameStr(form->tgname), PE_CAPTURE_INSERT_TRIGGER) != 0)
			continue;
		args = heap_getattr(tup, Anum_pg_trigger_tgargs, RelationGetDescr(tgrel), &isnull);
		/* the first argument, up to its terminating zero byte */
		if (!isnull && strtoll(VARDATA_ANY(DatumGetByteaPP(args)), NULL, 10) == id &&
			!list_member_oid(covered, form->tgrelid))
			strays = lappend_oid(strays, form->tgrelid);
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return strays;
}

/*
 * A partition detached from parent: no longer covered by parent's capture.
 * part is the table of the detached partition's name, as the session sees
 * it now; if that is not one carrying the capture's triggers (a table of
 * the same name made since in a schema earlier in the search_path), the
 * strays are looked for in pg_trigger instead.
 */
static void
pe_capture_partition_detached(Oid parent, Oid part)
{
	Oid			captured;
	int64		id = pe_capture_covering(parent, true, &captured);
	List	   *gone = NIL;
	ListCell   *lc;

	if (id == 0)
		return;
	if (OidIsValid(part) && get_rel_relkind(part) != '\0' && !get_rel_relispartition(part) &&
		pe_capture_trigger_id(part) == id)
		gone = find_all_inheritors(part, ShareRowExclusiveLock, NULL);
	else
		gone = pe_capture_strays(captured, id);
	foreach(lc, gone)
		if (pe_capture_trigger_id(lfirst_oid(lc)) == id)
			pe_capture_drop_triggers(lfirst_oid(lc));
}

/*
 * The key columns of the capture of table captured (if there is one) are
 * still there and NOT NULL, as capture_changes() checked.  Else the ALTER
 * TABLE that changed that is refused.
 */
static void
pe_capture_guard(Oid captured)
{
	int64		id = pe_capture_lookup(captured);
	List	   *keys;
	Relation	rel;
	ListCell   *lc;
	const char *hint = "Uncapture the table first (pipeline.uncapture()), and capture it again with key_columns that identify a row.";

	if (id == 0)
		return;
	rel = try_relation_open(captured, AccessShareLock);
	if (rel == NULL)
		return;					/* dropped with the command: its capture goes with it */
	keys = pe_capture_keys_now(captured, id);
	foreach(lc, keys)
	{
		AttrNumber	att = get_attnum(captured, lfirst(lc));

		if (att <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop key column \"%s\" of captured table \"%s\"", (char *) lfirst(lc),
							RelationGetRelationName(rel)),
					 errhint("%s", hint)));
		if (!TupleDescAttr(RelationGetDescr(rel), att - 1)->attnotnull)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("key column \"%s\" of captured table \"%s\" must stay NOT NULL", (char *) lfirst(lc),
							RelationGetRelationName(rel)),
					 errdetail("Every message of the capture is keyed by it."),
					 errhint("%s", hint)));
	}
	relation_close(rel, AccessShareLock);
}

/* A column of relid renamed: a capture of relid keys by the new name. */
static void
pe_capture_column_renamed(Oid relid, const char *from, const char *to)
{
	PeCatalogAccess acc;
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3] = {ObjectIdGetDatum(relid), CStringGetTextDatum(from), CStringGetTextDatum(to)};

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("UPDATE pipeline.capture SET key_columns = pg_catalog.array_replace(key_columns, $2, $3) "
							  "WHERE relid OPERATOR(pg_catalog.=) $1 AND $2 OPERATOR(pg_catalog.=) ANY (key_columns)",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update pipeline.capture");
	pe_catalog_end(&acc);
}

/*
 * pipeline._capture_follow(command): one command collected by the event
 * trigger, as the role whose command it is (a value of type
 * pg_ddl_command exists only during that command).  Only CREATE TABLE ...
 * PARTITION OF, ALTER TABLE ...
 * ATTACH or DETACH PARTITION and RENAME of a column act, on the tables the
 * command names, so that a restore's other DDL (ADD CONSTRAINT, ...,
 * which comes after the capture's catalog row and before the triggers the
 * dump restores) makes no triggers of its own.
 */
Datum
pe_capture_follow(PG_FUNCTION_ARGS)
{
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(0);
	ListCell   *lc;


	if (cmd->type == SCT_Simple)
	{
		Node	   *stmt = cmd->parsetree;

		if (cmd->d.simple.address.classId != RelationRelationId)
			PG_RETURN_VOID();
		if (IsA(stmt, CreateStmt) && ((CreateStmt *) stmt)->partbound != NULL)
			pe_capture_partition_added(cmd->d.simple.address.objectId);
		else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_COLUMN &&
				 ((RenameStmt *) stmt)->subname && ((RenameStmt *) stmt)->newname)
			pe_capture_column_renamed(cmd->d.simple.address.objectId,
									  ((RenameStmt *) stmt)->subname, ((RenameStmt *) stmt)->newname);
		PG_RETURN_VOID();
	}
	if (cmd->type != SCT_AlterTable)
		PG_RETURN_VOID();
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = lfirst(lc);

		AlterTableCmd *at = (AlterTableCmd *) sub->parsetree;
		Oid			part;

		/* what could take the key's NOT NULL or column (never in a restore, --clean too) */
		if (IsA(at, AlterTableCmd) &&
			(at->subtype == AT_DropNotNull || at->subtype == AT_DropColumn || at->subtype == AT_DropColumnRecurse))
			pe_capture_guard(cmd->d.alterTable.objectId);

		if (!IsA(at, AlterTableCmd) || !at->def || !IsA(at->def, PartitionCmd))
			continue;

		/*
		 * The partition, by the name the command gave: the command's
		 * search_path is still the session's (the event trigger runs as
		 * the invoker, without its own), and PostgreSQL collects no address
		 * for these subcommands.
		 */
		part = RangeVarGetRelid(((PartitionCmd *) at->def)->name, NoLock, true);
		switch (at->subtype)
		{
			case AT_AttachPartition:
				if (OidIsValid(part) && get_rel_relispartition(part) &&
					get_partition_parent(part, false) == cmd->d.alterTable.objectId)
					pe_capture_partition_added(part);
				else
				{
					/* another table of that name: each partition without the capture's triggers */
					ListCell   *c;

					foreach(c, find_inheritance_children(cmd->d.alterTable.objectId, NoLock))
						pe_capture_partition_added(lfirst_oid(c));
				}
				break;
			case AT_DetachPartition:
			case AT_DetachPartitionFinalize:
				pe_capture_partition_detached(cmd->d.alterTable.objectId, part);
				break;
			default:
				break;
		}
	}
	PG_RETURN_VOID();
}

/*
 * pipeline._capture_cover(table): the capture of table covers all its
 * partitions (the upgrade to 0.7.0 runs it for each capture; before, only
 * the table had triggers).
 */
Datum
pe_capture_cover_sql(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	int64		id = pe_capture_lookup(relid);

	if (id != 0)
		pe_capture_cover(relid, id, relid, false);	/* (one captured on its own stays so, with a warning) */
	PG_RETURN_VOID();
}

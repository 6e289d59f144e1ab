/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  Change events from tables: pipeline.capture_changes() puts three
 *	  statement triggers with transition tables on a table (AFTER INSERT,
 *	  UPDATE, DELETE); each writes the statement's changes into the outbox
 *	  from one query over the transition tables (capture_sql.c makes it;
 *	  or, for what needs no query, from the transition table directly:
 *	  capture_rows.c), so they
 *	  are published if and only if the transaction commits (relay.c).  Key: a
 *	  JSON object of the key columns (the primary key by default).  Value:
 *	  the row as JSON ('row'; a DELETE is a tombstone), or a Debezium-style
 *	  envelope ('debezium': op, before, after, source, ts_ms; a DELETE is
 *	  followed by a tombstone).  An UPDATE that changes a key is a delete
 *	  of the old key and a create of the new one.  uncapture() removes it.
 *
 * IDENTIFICATION
 *	  src/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "catalog/dependency.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "connection.h"
#include "datapath.h"
#include "producer.h"
#include "relay.h"

PG_FUNCTION_INFO_V1(pe_capture_changes);
PG_FUNCTION_INFO_V1(pe_uncapture);
PG_FUNCTION_INFO_V1(pe_capture_trigger);

static const char *const pe_capture_events[3] = {"insert", "update", "delete"};

/* A trigger's prepared statement, kept for the backend's life. */
typedef struct PeCapturePlan
{
	int64		id;				/* pipeline.capture.id */
	int			event;			/* index into pe_capture_events */
	Oid			relid;			/* the table whose trigger it is (a partition's own) */
	TupleDesc	desc;			/* the table's, when prepared */
	char	   *connection;
	char	   *topic;
	Oid			owner;			/* the capture's: the role its messages are sent for */
	char	   *sql;			/* the query that makes the messages, or NULL */
	SPIPlanPtr	plan;			/* sql prepared, once the transition tables are there */
	PeCaptureKey *key;			/* or: made without a query (capture_rows.c) */
	bool		with_value;		/* then: the row as the value, else a tombstone */
	MemoryContext keycxt;		/* where key is */
	Oid			captured;		/* the captured table (relid, or a partition's ancestor) */
	char	   *src_schema;		/* its names in sql (the Debezium source), or NULL */
	char	   *src_table;
} PeCapturePlan;

static List *pe_capture_plans = NIL;

static char *
pe_capture_qualified(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/* The key columns: the ones given (each NOT NULL, unique together), or the primary key's. */
static List *
pe_capture_key_columns(Relation rel, ArrayType *given)
{
	List	   *keys = NIL;
	Oid			relid = RelationGetRelid(rel);
	bool		unique;

	if (given == NULL)
	{
		Oid			pk;
		Relation	idx;

		(void) RelationGetIndexList(rel);
		pk = rel->rd_pkindex;
		if (!OidIsValid(pk))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
					 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
					 errhint("Pass key_columns: the columns whose values identify a row (the message key).")));
		idx = index_open(pk, AccessShareLock);
		for (int i = 0; i < idx->rd_index->indnkeyatts; i++)
			keys = lappend(keys, get_attname(relid, idx->rd_index->indkey.values[i], false));
		index_close(idx, AccessShareLock);
		return keys;
	}
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(given, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("key_columns must not be empty"),
					 errhint("Pass NULL for the primary key, or the key's column names.")));
		for (int i = 0; i < n; i++)
		{
			char	   *name;
			AttrNumber	att;

			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("key_columns must not contain null"),
						 errhint("Pass the key's column names.")));
			name = TextDatumGetCString(elems[i]);
			att = get_attnum(relid, name);
			if (att == InvalidAttrNumber || att < 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column \"%s\" of table \"%s\" does not exist", name, RelationGetRelationName(rel)),
						 errhint("key_columns names columns of the captured table.")));
			if (!TupleDescAttr(RelationGetDescr(rel), att - 1)->attnotnull)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("key column \"%s\" of table \"%s\" may be null", name, RelationGetRelationName(rel)),
						 errhint("Make it NOT NULL: a key identifies its row in every message, tombstones too.")));
			{
				ListCell   *lc;

				foreach(lc, keys)
					if (strcmp(lfirst(lc), name) == 0)
						ereport(ERROR,
								(errcode(ERRCODE_DUPLICATE_COLUMN),
								 errmsg("key column \"%s\" is named twice", name),
								 errhint("Name each key column once.")));
			}
			keys = lappend(keys, name);
		}
	}

	/*
	 * An UPDATE's old and new rows are paired by their key: rows that share
	 * one would be paired with each other's (and each change sent as many
	 * times as they are).
	 */
	{
		AttrNumber *atts = palloc(sizeof(AttrNumber) * list_length(keys));
		ListCell   *lc;
		int			n = 0;

		foreach(lc, keys)
			atts[n++] = get_attnum(relid, lfirst(lc));
		unique = pe_unique_index_on(rel, atts, n, false);
	}
	if (!unique)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key_columns of table \"%s\" do not identify a row: no unique index covers them",
						RelationGetRelationName(rel)),
				 errhint("Pass columns that include those of a unique index or the primary key (without a predicate or expressions, not deferrable).")));
	return keys;
}

/* The capture of relid, as the catalog's owner: its id, or 0. */
int64
pe_capture_lookup(Oid relid)
{
	PeCatalogAccess acc;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	int64		id = 0;
	bool		isnull;

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT id FROM pipeline.capture WHERE relid OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, true, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.capture");
	if (SPI_processed == 1)
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pe_catalog_end(&acc);
	return id;
}

/* Only the table's owner captures it, or stops capturing it. */
static Relation
pe_capture_open(Oid relid)
{
	Relation	rel = relation_open(relid, ShareRowExclusiveLock);

	if (rel->rd_rel->relkind != RELKIND_RELATION && rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errhint("Changes are captured from tables (partitioned ones too).")));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, RelationGetRelationName(rel));
	/* (a temporary table goes at the session's end without a sql_drop: its capture would stay) */
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("changes of temporary table \"%s\" cannot be captured", RelationGetRelationName(rel)),
				 errhint("Capture a permanent or unlogged table.")));
	return rel;
}

/*
 * The three triggers of capture id on relid: the captured table, or one of
 * its partitions (a statement on a partition fires its own statement
 * triggers, not its parent's).  Their arguments: the capture's id, then
 * the key columns' numbers in relid, which follow a column that is
 * renamed (the catalog keeps names, which a dump and restore keeps).
 * Made as the current role, who must own relid.
 */
void
pe_capture_make_triggers(Oid relid, int64 id, List *keys)
{
	char	   *table = pe_capture_qualified(relid);
	StringInfoData attnums;
	ListCell   *lc;

	initStringInfo(&attnums);
	foreach(lc, keys)
		appendStringInfo(&attnums, ", '%d'", (int) get_attnum(relid, lfirst(lc)));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (int e = 0; e < 3; e++)
	{
		const char *refs = e == 0 ? "NEW TABLE AS pe_new" : e == 1 ? "OLD TABLE AS pe_old NEW TABLE AS pe_new"
			: "OLD TABLE AS pe_old";
		char	   *sql = psprintf("CREATE TRIGGER pipeline_capture_%s AFTER %s ON %s REFERENCING %s "
								   "FOR EACH STATEMENT EXECUTE FUNCTION pipeline._capture_trigger('" INT64_FORMAT "'%s)",
								   pe_capture_events[e], e == 0 ? "INSERT" : e == 1 ? "UPDATE" : "DELETE",
								   table, refs, id, attnums.data);

		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not create the capture trigger");
	}
	SPI_finish();
}

/*
 * Drop the capture triggers of relid.  Internal, without a privilege
 * check: the callers have checked that the role may change the capture
 * (uncapture) or that the table is no longer one it covers (a partition
 * detached, possibly of another owner).
 */
void
pe_capture_drop_triggers(Oid relid)
{
	for (int e = 0; e < 3; e++)
	{
		ObjectAddress trigger;

		trigger.classId = TriggerRelationId;
		trigger.objectId = get_trigger_oid(relid, psprintf("pipeline_capture_%s", pe_capture_events[e]), true);
		trigger.objectSubId = 0;
		if (OidIsValid(trigger.objectId))
			performDeletion(&trigger, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
	}
	CommandCounterIncrement();
}

/*
 * pipeline.capture_changes(table, connection, topic, key_columns, format,
 * tombstones): the capture's id.
 */
Datum
pe_capture_changes(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *connname;
	char	   *topic;
	char	   *format;
	bool		tombstones;
	Relation	rel;
	List	   *keys;
	PeConnection *conn;
	int64		id;
	Datum	   *kd;
	ListCell   *lc;
	PeCatalogAccess acc;

	pe_require_preload();
	for (int i = 0; i < 6; i++)
		if (i != 3 && PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null",
							(const char *[]) {"table", "connection", "topic", "key_columns", "format", "tombstones"}[i]),
					 errhint("Only key_columns may be null (the primary key).")));
	relid = PG_GETARG_OID(0);
	connname = text_to_cstring(PG_GETARG_TEXT_PP(1));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(2));
	format = text_to_cstring(PG_GETARG_TEXT_PP(4));
	tombstones = PG_GETARG_BOOL(5);
	if (topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be empty"),
				 errhint("Pass the name of the topic the changes go to.")));
	pe_refuse_checkpoint_topic(topic);
	if (strcmp(format, "row") != 0 && strcmp(format, "debezium") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown format \"%s\"", format),
				 errhint("Use 'row' (the row as JSON, a tombstone for a delete) or 'debezium' (an envelope with op, before, after and source).")));

	rel = pe_capture_open(relid);
	conn = pe_connection_lookup(connname, false);
	pe_check_connection_use(conn);
	keys = pe_capture_key_columns(rel, PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3));
	if (pe_capture_lookup(relid) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("changes of table \"%s\" are already captured", RelationGetRelationName(rel)),
				 errhint("Call pipeline.uncapture() first to change how.")));
	/* one capture covers a partitioned table and its partitions */
	if (rel->rd_rel->relispartition)
		foreach(lc, get_partition_ancestors(relid))
			if (pe_capture_lookup(lfirst_oid(lc)) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_OBJECT),
						 errmsg("changes of table \"%s\" are already captured, as a partition of \"%s\"",
								RelationGetRelationName(rel), get_rel_name(lfirst_oid(lc))),
						 errhint("The capture of a partitioned table covers its partitions.")));
	foreach(lc, pe_capture_tree(relid))
		if (lfirst_oid(lc) != relid && pe_capture_lookup(lfirst_oid(lc)) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("partition \"%s\" of table \"%s\" is captured on its own",
							get_rel_name(lfirst_oid(lc)), RelationGetRelationName(rel)),
					 errhint("Call pipeline.uncapture() on the partition first: the capture of a partitioned table covers its partitions.")));

	/* the catalog row, as the catalog's owner */
	kd = palloc(sizeof(Datum) * list_length(keys));
	foreach(lc, keys)
		kd[foreach_current_index(lc)] = CStringGetTextDatum(lfirst(lc));
	{
		Oid			types[7] = {OIDOID, OIDOID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTOID, BOOLOID};
		Datum		values[7];
		bool		isnull;

		values[0] = ObjectIdGetDatum(relid);
		values[1] = ObjectIdGetDatum(GetUserId());
		values[2] = CStringGetTextDatum(connname);
		values[3] = CStringGetTextDatum(topic);
		values[4] = PointerGetDatum(construct_array(kd, list_length(keys), TEXTOID, -1, false, TYPALIGN_INT));
		values[5] = CStringGetTextDatum(format);
		values[6] = BoolGetDatum(tombstones);
		pe_catalog_begin(&acc);
		if (SPI_execute_with_args("INSERT INTO pipeline.capture (relid, owner, connection, topic, key_columns, format, tombstones) "
								  "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
								  7, types, values, NULL, false, 1) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not write pipeline.capture");
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		pe_catalog_end(&acc);
	}

	/* the triggers, as the table's owner (the caller), on its partitions too */
	pe_capture_cover(relid, id, relid, true);
	relation_close(rel, NoLock);
	PG_RETURN_INT64(id);
}

/* pipeline.uncapture(table) */
Datum
pe_uncapture(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel = pe_capture_open(relid);
	PeCatalogAccess acc;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	ListCell   *lc;

	pe_require_preload();
	if (pe_capture_lookup(relid) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("changes of table \"%s\" are not captured", RelationGetRelationName(rel)),
				 errhint("pipeline.captures lists the tables whose changes are.")));
	foreach(lc, pe_capture_tree(relid))
		pe_capture_drop_triggers(lfirst_oid(lc));
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("DELETE FROM pipeline.capture WHERE relid OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, false, 0)
		!= SPI_OK_DELETE)
		elog(ERROR, "could not delete from pipeline.capture");
	pe_catalog_end(&acc);
	relation_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * The key columns' names in the table as it is now.  The catalog keeps
 * the names given at capture time, and the triggers the columns' numbers
 * (triggers made before 0.7.0 have none).  A name the table still has is
 * taken as it is: a dump and restore keeps names, and may renumber
 * columns.  A name it no longer has was renamed: its column's number
 * gives the new name.
 */
List *
pe_capture_current_keys(Relation rel, List *keys, char **attnums, int nattnums)
{
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *current = NIL;
	ListCell   *lc;

	foreach(lc, keys)
	{
		char	   *name = lfirst(lc);
		int			i = foreach_current_index(lc);
		int			attnum = i < nattnums ? atoi(attnums[i]) : 0;

		if (get_attnum(RelationGetRelid(rel), name) == InvalidAttrNumber &&
			attnum > 0 && attnum <= desc->natts && !TupleDescAttr(desc, attnum - 1)->attisdropped)
			name = pstrdup(NameStr(TupleDescAttr(desc, attnum - 1)->attname));
		current = lappend(current, name);
	}
	return current;
}

/*
 * Whether the captured table still has the names sql was made with (the
 * Debezium envelope's source.schema and source.table): a table renamed,
 * moved to another schema, or whose schema was renamed, is not another
 * tuple descriptor, so equalTupleDescs() does not see it.
 */
static bool
pe_capture_source_same(PeCapturePlan *p)
{
	HeapTuple	tup;
	bool		same;
	Oid			nsp;
	char	   *nspname;

	if (p->src_table == NULL || p->src_schema == NULL)
		return true;
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(p->captured));
	if (!HeapTupleIsValid(tup))
		return false;
	same = strcmp(NameStr(((Form_pg_class) GETSTRUCT(tup))->relname), p->src_table) == 0;
	nsp = ((Form_pg_class) GETSTRUCT(tup))->relnamespace;
	ReleaseSysCache(tup);
	nspname = same ? get_namespace_name(nsp) : NULL;
	return nspname != NULL && strcmp(nspname, p->src_schema) == 0;
}

/* The trigger's statement for this capture and event, prepared once. */
static PeCapturePlan *
pe_capture_plan(int64 id, int event, Relation rel, char **attnums, int nattnums)
{
	ListCell   *lc;
	PeCapturePlan *p = NULL;
	PeCatalogAccess acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	bool		isnull;
	List	   *keys = NIL;
	bool		debezium;
	bool		tombstones;
	Oid			captured;
	MemoryContext old;
	char	   *sql;

	foreach(lc, pe_capture_plans)
	{
		PeCapturePlan *c = lfirst(lc);

		if (c->id == id && c->event == event && c->relid == RelationGetRelid(rel))
			p = c;
	}
	/* (an entry whose set-up failed has no desc: it is set up again) */
	if (p && p->desc && equalTupleDescs(p->desc, RelationGetDescr(rel)) && pe_capture_source_same(p))
		return p;
	if (p == NULL)
	{
		old = MemoryContextSwitchTo(TopMemoryContext);
		p = palloc0(sizeof(PeCapturePlan));
		p->id = id;
		p->event = event;
		p->relid = RelationGetRelid(rel);
		pe_capture_plans = lappend(pe_capture_plans, p);
		MemoryContextSwitchTo(old);
	}
	else
	{
		/* the table changed (its transition tables with it): prepare again */
		if (p->plan)
			SPI_freeplan(p->plan);
		p->plan = NULL;
		if (p->desc)
			FreeTupleDesc(p->desc);
		p->desc = NULL;
		if (p->keycxt)
			MemoryContextDelete(p->keycxt);
		p->keycxt = NULL;
		p->key = NULL;
		if (p->src_table)
		{
			pfree(p->src_schema);
			pfree(p->src_table);
		}
		p->src_schema = p->src_table = NULL;
	}

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT connection, topic, key_columns, format OPERATOR(pg_catalog.=) 'debezium', tombstones, relid, owner "
							  "FROM pipeline.capture WHERE id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.capture");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("change capture " INT64_FORMAT " of table \"%s\" does not exist", id, RelationGetRelationName(rel)),
				 errhint("Drop the table's pipeline_capture_* triggers, or capture it again with pipeline.capture_changes().")));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum	   *elems;
		int			n;

		if (p->connection)
			pfree(p->connection);
		if (p->topic)
			pfree(p->topic);
		old = MemoryContextSwitchTo(TopMemoryContext);
		p->connection = SPI_getvalue(tup, desc, 1);
		p->topic = SPI_getvalue(tup, desc, 2);
		MemoryContextSwitchTo(old);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 3, &isnull)), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, NULL, &n);
		for (int i = 0; i < n; i++)
			keys = lappend(keys, TextDatumGetCString(elems[i]));
		debezium = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		tombstones = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		captured = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
		p->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 7, &isnull));
		/* the trigger function takes a capture's id: only its own table's, or its partitions' */
		if (captured != RelationGetRelid(rel) &&
			!(rel->rd_rel->relispartition && list_member_oid(get_partition_ancestors(RelationGetRelid(rel)), captured)))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("change capture " INT64_FORMAT " is not of table \"%s\"", id, RelationGetRelationName(rel)),
					 errhint("pipeline._capture_trigger() runs only in the triggers pipeline.capture_changes() makes.")));
	}
	pe_catalog_end(&acc);

	keys = pe_capture_current_keys(rel, keys, attnums, nattnums);
	sql = NULL;
	if (!debezium && (event == 0 || (event == 2 && tombstones)))
	{
		p->keycxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext capture key", ALLOCSET_SMALL_SIZES);
		p->key = pe_capture_key_prepare(rel, keys, p->keycxt);
		p->with_value = event == 0;
	}
	else if (debezium || event == 1)
	{
		foreach(lc, keys)
			(void) pe_capture_key_attnum(rel, lfirst(lc));	/* one dropped since: said so */
		sql = pe_capture_sql(event, captured, keys, debezium, tombstones, p->connection);
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	p->captured = captured;
	if (sql && debezium)
	{
		/* the names pe_capture_envelope() wrote into sql */
		p->src_schema = get_namespace_name(get_rel_namespace(captured));
		p->src_table = get_rel_name(captured);
	}
	p->desc = CreateTupleDescCopyConstr(RelationGetDescr(rel));	/* as equalTupleDescs compares */
	if (p->sql)
		pfree(p->sql);
	p->sql = sql ? pstrdup(sql) : NULL;
	MemoryContextSwitchTo(old);
	return p;
}

/* The statement trigger: the statement's changes into the outbox. */
Datum
pe_capture_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	int			event;
	int64		id;
	PeCapturePlan *p;
	int			nest;
	Portal		portal;
	MemoryContext chunk;

	pe_require_preload();
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) || td->tg_trigger->tgnargs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pipeline._capture_trigger() is called by the triggers of pipeline.capture_changes() only")));
	event = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? 0 : TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? 1 : 2;
	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		return PointerGetDatum(NULL);
	id = strtoll(td->tg_trigger->tgargs[0], NULL, 10);

	p = pe_capture_plan(id, event, td->tg_relation, td->tg_trigger->tgargs + 1, td->tg_trigger->tgnargs - 1);
	if (p->key)
	{
		Tuplestorestate *rows = event == 0 ? td->tg_newtable : td->tg_oldtable;

		/* (a trigger made by hand, without REFERENCING) */
		if (rows == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("trigger \"%s\" on table \"%s\" has no transition table", td->tg_trigger->tgname,
							RelationGetRelationName(td->tg_relation)),
					 errhint("Drop it: pipeline.capture_changes() makes the triggers that call pipeline._capture_trigger().")));
		/* as the role whose statement it is, for the capture's owner, as below */
		nest = pe_capture_settings_pin();
		(void) pe_capture_rows_write(p->key, td->tg_relation, rows, p->with_value, p->connection, p->topic, p->owner);
		pe_capture_settings_restore(nest);
		return PointerGetDatum(NULL);
	}
	if (p->sql == NULL)
		return PointerGetDatum(NULL);	/* a DELETE, without tombstones */

	/*
	 * The messages, made as the role whose statement it is (a column's
	 * type may cast to json with that role's function), then written into
	 * the outbox by the extension (outbox.c), for the capture's owner: the
	 * role that was allowed to use the connection, which the relay checks
	 * again when it publishes them (the role whose statement changed the
	 * table need not be allowed to).
	 */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register the transition tables");
	if (p->plan == NULL)
	{
		/* one generic plan, kept */
		SPIPlanPtr	plan = SPI_prepare_cursor(p->sql, 0, NULL, CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "could not prepare the change capture query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		p->plan = plan;
	}
	/*
	 * Read through a cursor, PE_CAPTURE_CHUNK messages at a time, each
	 * chunk written before the next is read: an UPDATE of millions of rows
	 * in bounded memory.
	 */
	nest = pe_capture_settings_pin();
	portal = SPI_cursor_open(NULL, p->plan, NULL, NULL, true);
	chunk = AllocSetContextCreate(CurrentMemoryContext, "pipeline_ext captured chunk", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		Datum	   *k;
		Datum	   *v;
		bool	   *kn;
		bool	   *vn;
		int			n;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, PE_CAPTURE_CHUNK);
		n = (int) SPI_processed;
		if (n == 0)
			break;
		old = MemoryContextSwitchTo(chunk);
		k = palloc(sizeof(Datum) * n);
		v = palloc(sizeof(Datum) * n);
		kn = palloc(sizeof(bool) * n);
		vn = palloc(sizeof(bool) * n);
		for (int r = 0; r < n; r++)
		{
			k[r] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &kn[r]);
			v[r] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &vn[r]);
		}
		pe_outbox_insert_many(p->connection, p->topic, p->owner, n, k, kn, v, vn);
		MemoryContextSwitchTo(old);
		SPI_freetuptable(SPI_tuptable);
		MemoryContextReset(chunk);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(chunk);
	pe_capture_settings_restore(nest);
	SPI_finish();
	return PointerGetDatum(NULL);	/* (a statement trigger's result is not read, but must not be null) */
}

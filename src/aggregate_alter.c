/*-------------------------------------------------------------------------
 *
 * aggregate_alter.c
 *	  alter_aggregate(): changes to a continuous aggregate that keep what
 *	  it holds.  The lateness and idle timeout take effect from the next
 *	  batch; changing emit moves the open windows between the results table
 *	  and the state table; the topic and its connection change what the
 *	  next emitted rows are sent to; an aggregate added gets its columns in
 *	  both tables and is complete from the first window that starts after
 *	  every event counted so far (earlier windows show null), since the
 *	  events already counted are not kept.  Each change bumps the
 *	  definition's revision, so that a batch that read the old one is
 *	  retried (aggregate.c).
 *
 * IDENTIFICATION
 *	  src/aggregate_alter.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "aggregate.h"
#include "connection.h"
#include "consumer.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_alter_aggregate);

static void
pe_alter_sql(const char *sql)
{
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "could not alter the aggregate's tables: %s", sql);
}

/*
 * Run a statement as the tables' owner, restricted, as the batches write
 * them (pe_agg_as_owner): code the owner attached to its tables does not
 * run with the caller's rights.
 */
static void
pe_alter_as_owner(Oid owner, const char *sql)
{
	Oid			save_userid;
	int			save_sec;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	pe_alter_sql(sql);
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* A table's columns, quoted, in order. */
static char *
pe_alter_columns(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData s;

	initStringInfo(&s);
	for (int c = 0; c < desc->natts; c++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, c);

		if (!att->attisdropped)
			appendStringInfo(&s, "%s%s", s.len ? ", " : "", quote_identifier(NameStr(att->attname)));
	}
	table_close(rel, AccessShareLock);
	return s.data;
}

static char *
pe_alter_qualified(Oid rel)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(rel)), get_rel_name(rel));
}

/*
 * Add the aggregates of specs to the results (and state) table: their
 * value and state columns, typed as create_aggregate() types them.
 */
static void
pe_alter_add_columns(Relation target, Oid results, Oid state, Oid time_type, int n,
					 char **fns, char **args, char **outs)
{
	StringInfoData sql;
	Relation	tmp;
	Oid			tmp_oid;
	TupleDesc	desc;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "CREATE TEMP TABLE pe_alter_columns AS SELECT NULL::pg_catalog.int4 AS pe_none");
	for (int i = 0; i < n; i++)
		pe_agg_select_item(&sql, fns[i], args[i],
						   strcmp(args[i], "*") == 0 ? InvalidOid : get_atttype(RelationGetRelid(target), get_attnum(RelationGetRelid(target), args[i])),
						   outs[i], time_type);
	appendStringInfo(&sql, " FROM %s WITH NO DATA", pe_alter_qualified(RelationGetRelid(target)));
	pe_alter_sql(sql.data);
	tmp_oid = RelnameGetRelid("pe_alter_columns");
	tmp = table_open(tmp_oid, AccessShareLock);
	desc = RelationGetDescr(tmp);
	for (int k = 0; k < 2; k++)
	{
		Oid			rel = k == 0 ? results : state;

		if (!OidIsValid(rel))
			continue;
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s", pe_alter_qualified(rel));
		for (int c = 1; c < desc->natts; c++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, c);

			appendStringInfo(&sql, "%s ADD COLUMN %s %s", c > 1 ? "," : "", quote_identifier(NameStr(att->attname)),
							 format_type_extended(att->atttypid, att->atttypmod,
												  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
		}
		pe_alter_sql(sql.data);
	}
	table_close(tmp, AccessShareLock);
	pe_alter_sql("DROP TABLE pg_temp.pe_alter_columns");
}

Datum
pe_alter_aggregate(PG_FUNCTION_ARGS)
{
	char	   *name;
	PeCatalogAccess acc;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Oid			owner;
	char	   *consumer;
	Oid			results;
	Oid			state;
	char	   *emit;
	char	   *emit_topic;
	char	   *emit_connection;
	Interval   *slide;
	TimestampTz origin;
	char	  **outs;
	int			nouts;
	char	  **groups;
	int			ngroups;
	char	   *new_emit;
	char	   *time_zone;
	Interval   *lateness = PG_ARGISNULL(1) ? NULL : PG_GETARG_INTERVAL_P(1);
	Interval   *idle = PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2);
	PeConsumerDef *def;
	Oid			time_type;
	int			nadd = 0;
	char	  **fns = NULL;
	char	  **args = NULL;
	char	  **adds = NULL;
	double	   *fractions = NULL;
	bool		valid_null = true;
	TimestampTz valid = 0;
	MemoryContext outer = CurrentMemoryContext;

	pe_require_preload();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the aggregate's name cannot be null"),
				 errhint("Name the aggregate to change.")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	values[0] = CStringGetTextDatum(name);

	/* the definition, locked against another change */
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("SELECT owner, consumer, results, state, emit, emit_topic, emit_connection, time_column, "
							  "CASE WHEN window_kind OPERATOR(pg_catalog.=) 'cumulative' THEN size ELSE slide END, "
							  "origin, outputs, group_by, window_kind, COALESCE(time_zone, 'UTC') FROM pipeline.aggregate "
							  "WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pipeline.aggregate");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("aggregate \"%s\" does not exist", name),
				 errhint("See pipeline.aggregates for the aggregates you may see.")));
	tup = SPI_copytuple(SPI_tuptable->vals[0]);	/* (in the caller's context) */
	{
		MemoryContext spi = MemoryContextSwitchTo(outer);

		desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);
	owner = DatumGetObjectId(heap_getattr(tup, 1, desc, &isnull));
	consumer = TextDatumGetCString(heap_getattr(tup, 2, desc, &isnull));
	results = DatumGetObjectId(heap_getattr(tup, 3, desc, &isnull));
	state = DatumGetObjectId(heap_getattr(tup, 4, desc, &isnull));
	if (isnull)
		state = InvalidOid;
	emit = TextDatumGetCString(heap_getattr(tup, 5, desc, &isnull));
	time_zone = TextDatumGetCString(heap_getattr(tup, 14, desc, &isnull));
	{
		Datum		d = heap_getattr(tup, 6, desc, &isnull);

		emit_topic = isnull ? NULL : TextDatumGetCString(d);
		d = heap_getattr(tup, 7, desc, &isnull);
		emit_connection = isnull ? NULL : TextDatumGetCString(d);
	}
	slide = DatumGetIntervalP(heap_getattr(tup, 9, desc, &isnull));
	origin = DatumGetTimestampTz(heap_getattr(tup, 10, desc, &isnull));
	{
		Datum	   *elems;

		deconstruct_array(DatumGetArrayTypeP(heap_getattr(tup, 11, desc, &isnull)), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, NULL, &nouts);
		outs = palloc(sizeof(char *) * (nouts + 1));
		for (int i = 0; i < nouts; i++)
			outs[i] = TextDatumGetCString(elems[i]);
		deconstruct_array(DatumGetArrayTypeP(heap_getattr(tup, 12, desc, &isnull)), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, NULL, &ngroups);
		groups = palloc(sizeof(char *) * (ngroups + 1));
		for (int i = 0; i < ngroups; i++)
			groups[i] = TextDatumGetCString(elems[i]);
	}
	if (!PG_ARGISNULL(6) && strcmp(TextDatumGetCString(heap_getattr(tup, 13, desc, &isnull)), "session") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("aggregates cannot be added to session windows"),
				 errhint("Sessions merge as they grow, and one that started before the change would mix values; create another aggregate.")));
	if (!pe_may_see_secrets(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of aggregate \"%s\" to alter it", name),
				 errhint("Only the owner of its consumer, its members, or a superuser can.")));
	def = pe_consumer_for_owner(consumer, "alter its aggregates");

	/* what is asked */
	if (lateness)
		pe_agg_check_interval(lateness, "lateness", true);
	if (idle)
		pe_agg_check_interval(idle, "idle timeout", false);
	new_emit = PG_ARGISNULL(3) ? emit : text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (strcmp(new_emit, "update") != 0 && strcmp(new_emit, "close") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit must be 'update' or 'close', not \"%s\"", new_emit),
				 errhint("'update' emits every change of a window; 'close' emits its final row once, when the watermark closes it.")));
	if (!PG_ARGISNULL(4))
	{
		/* '' stops sending to a topic */
		emit_topic = text_to_cstring(PG_GETARG_TEXT_PP(4));
		if (emit_topic[0] == '\0')
			emit_topic = emit_connection = NULL;
		else if (PG_ARGISNULL(5) && emit_connection == NULL)
			emit_connection = pe_agg_emit_connection(def, NULL, emit_topic);
	}
	if (!PG_ARGISNULL(5))
	{
		if (emit_topic == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("emit_connection needs an emit_topic"),
					 errhint("Name the topic the aggregate's windows go to.")));
		emit_connection = text_to_cstring(PG_GETARG_TEXT_PP(5));
	}
	if (emit_topic != NULL && (!PG_ARGISNULL(4) || !PG_ARGISNULL(5)))
		emit_connection = pe_agg_emit_connection(def, emit_connection, emit_topic);

	/* no batch writes the tables until this commits (a batch that read the old definition is retried) */
	LockRelationOid(results, AccessExclusiveLock);
	if (OidIsValid(state))
		LockRelationOid(state, AccessExclusiveLock);
	if (get_rel_name(results) == NULL || (OidIsValid(state) && get_rel_name(state) == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("a table of aggregate \"%s\" was dropped", name),
				 errhint("Drop the aggregate with pipeline.drop_aggregate() and create it again.")));
	time_type = get_atttype(results, get_attnum(results, "window_start"));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* emit: the open windows move to the state table, or back */
	if (strcmp(new_emit, emit) != 0 && strcmp(new_emit, "close") == 0)
	{
		char	   *rname = get_rel_name(results);
		char	   *schema = get_namespace_name(get_rel_namespace(results));
		char	   *sname = psprintf("%s_open", rname);

		if (strlen(sname) >= NAMEDATALEN)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("the state table's name \"%s\" is longer than %d bytes", sname, NAMEDATALEN - 1),
					 errhint("Rename the results table to a shorter name first.")));
		pe_alter_sql(psprintf("CREATE TABLE %s.%s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES) "
							  "WITH (fillfactor = 50)",
							  quote_identifier(schema), quote_identifier(sname), pe_alter_qualified(results)));
		state = get_relname_relid(sname, get_rel_namespace(results));
		pe_alter_sql(psprintf("ALTER TABLE %s OWNER TO %s", pe_alter_qualified(state),
							  quote_identifier(GetUserNameFromId(def->owner, false))));
		/* the results now only take closed windows: full pages (create_aggregate's choice) */
		pe_alter_sql(psprintf("ALTER TABLE %s RESET (fillfactor)", pe_alter_qualified(results)));
		pe_alter_as_owner(def->owner, psprintf("WITH c AS (DELETE FROM %s WHERE NOT closed RETURNING *) "
											   "INSERT INTO %s (%s) SELECT %s FROM c",
											   pe_alter_qualified(results), pe_alter_qualified(state),
											   pe_alter_columns(results), pe_alter_columns(results)));
	}
	else if (strcmp(new_emit, emit) != 0)
	{
		pe_alter_as_owner(def->owner, psprintf("INSERT INTO %s (%s) SELECT %s FROM %s", pe_alter_qualified(results),
											   pe_alter_columns(results), pe_alter_columns(results),
											   pe_alter_qualified(state)));
		pe_alter_sql(psprintf("DROP TABLE %s", pe_alter_qualified(state)));
		state = InvalidOid;
		/* the open windows are updated in the results again: room for their next versions */
		pe_alter_sql(psprintf("ALTER TABLE %s SET (fillfactor = 50)", pe_alter_qualified(results)));
	}

	/* aggregates added: complete from the first window after every event counted */
	if (!PG_ARGISNULL(6))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(6);
		Datum	   *elems;
		bool	   *nulls;
		Relation	rel;
		PeTarget   *target;

		/*
		 * What is parsed here is used after SPI_finish(): in the caller's
		 * context (each SPI call leaves SPI's procedure context current).
		 */
		MemoryContextSwitchTo(outer);
		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nadd);
		fns = palloc(sizeof(char *) * Max(nadd, 1));
		args = palloc(sizeof(char *) * Max(nadd, 1));
		adds = palloc(sizeof(char *) * Max(nadd, 1));
		fractions = palloc(sizeof(double) * Max(nadd, 1));
		rel = table_open(def->target, AccessShareLock);
		target = pe_target_open(def, false);
		MemoryContextSwitchTo(outer);
		for (int i = 0; i < nadd; i++)
		{
			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("an aggregate to add cannot be null"),
						 errhint("Remove the null from the array.")));
			pe_agg_parse(TextDatumGetCString(elems[i]), rel, &fns[i], &args[i], &adds[i], &fractions[i]);
			if (strcmp(args[i], "*") != 0)
				pe_agg_require_decoded(target, args[i], "aggregated column");
			for (int j = 0; j < nouts + i; j++)
				if (strcmp(adds[i], j < nouts ? outs[j] : adds[j - nouts]) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_DUPLICATE_COLUMN),
							 errmsg("aggregate \"%s\" already has an output named \"%s\"", name, adds[i]),
							 errhint("Name the new one otherwise with AS.")));
			for (int g = 0; g < ngroups; g++)
				if (strcmp(adds[i], groups[g]) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_DUPLICATE_COLUMN),
							 errmsg("aggregate \"%s\" has the name of a group column", adds[i]),
							 errhint("Name it otherwise with AS.")));
		}
		pe_target_close(target);
		if (nadd > 0)
			pe_alter_add_columns(rel, results, state, time_type, nadd, fns, args, adds);
		table_close(rel, NoLock);
	}
	SPI_finish();

	/* the definition */
	pe_catalog_begin(&acc);
	if (nadd > 0)
	{
		Oid			vtypes[4] = {TEXTOID, INTERVALOID, TIMESTAMPOID, TEXTOID};
		/* the slide in microseconds: no day that the caller's time zone would stretch */
		Datum		vvalues[4] = {values[0], pe_agg_interval(slide->time + (int64) slide->day * USECS_PER_DAY),
		TimestampTzGetDatum(origin), CStringGetTextDatum(time_zone)};

		/*
		 * The next window start after the newest event time counted, if
		 * any, in the wall time the windows are aligned on (UTC's by
		 * default: the same microseconds; the origin's wall time is local).
		 */
		if (SPI_execute_with_args("SELECT pg_catalog.timezone($4, pg_catalog.date_bin($2, "
								  "pg_catalog.timezone($4, pg_catalog.max(max_time)), $3::pg_catalog.timestamp) "
								  "OPERATOR(pg_catalog.+) $2) "
								  "FROM pipeline.aggregate_offset WHERE aggregate OPERATOR(pg_catalog.=) $1",
								  4, vtypes, vvalues, NULL, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read what aggregate \"%s\" counted", name);
		valid = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &valid_null));
	}
	{
		Oid			utypes[13] = {TEXTOID, INTERVALOID, INTERVALOID, TEXTOID, OIDOID, TEXTOID, TEXTOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, TIMESTAMPTZOID, INT4OID};
		Datum		uvalues[13];
		char		unulls[14] = "             ";
		Datum	   *fd = palloc(sizeof(Datum) * Max(nadd, 1));
		Datum	   *ad = palloc(sizeof(Datum) * Max(nadd, 1));
		Datum	   *od = palloc(sizeof(Datum) * Max(nadd, 1));
		Datum	   *pd = palloc(sizeof(Datum) * Max(nadd, 1));
		bool	   *pn = palloc(sizeof(bool) * Max(nadd, 1));
		int			dims[1] = {nadd};
		int			lbs[1] = {1};

		for (int i = 0; i < nadd; i++)
		{
			fd[i] = CStringGetTextDatum(fns[i]);
			ad[i] = CStringGetTextDatum(args[i]);
			od[i] = CStringGetTextDatum(adds[i]);
			pd[i] = Float8GetDatum(fractions[i]);
			pn[i] = strcmp(fns[i], "percentile") != 0;
		}
		uvalues[0] = values[0];
		uvalues[1] = lateness ? IntervalPGetDatum(lateness) : (Datum) 0;
		unulls[1] = lateness ? ' ' : 'n';
		uvalues[2] = idle ? IntervalPGetDatum(idle) : (Datum) 0;
		unulls[2] = idle ? ' ' : 'n';
		uvalues[3] = CStringGetTextDatum(new_emit);
		uvalues[4] = ObjectIdGetDatum(state);
		unulls[4] = OidIsValid(state) ? ' ' : 'n';
		uvalues[5] = emit_topic ? CStringGetTextDatum(emit_topic) : (Datum) 0;
		unulls[5] = emit_topic ? ' ' : 'n';
		uvalues[6] = emit_connection ? CStringGetTextDatum(emit_connection) : (Datum) 0;
		unulls[6] = emit_connection ? ' ' : 'n';
		uvalues[7] = PointerGetDatum(construct_array(fd, nadd, TEXTOID, -1, false, TYPALIGN_INT));
		uvalues[8] = PointerGetDatum(construct_array(ad, nadd, TEXTOID, -1, false, TYPALIGN_INT));
		uvalues[9] = PointerGetDatum(construct_array(od, nadd, TEXTOID, -1, false, TYPALIGN_INT));
		uvalues[10] = PointerGetDatum(construct_md_array(pd, pn, 1, dims, lbs, FLOAT8OID, 8, FLOAT8PASSBYVAL,
														 TYPALIGN_DOUBLE));
		uvalues[11] = TimestampTzGetDatum(valid);
		unulls[11] = valid_null ? 'n' : ' ';
		uvalues[12] = Int32GetDatum(nadd);
		if (SPI_execute_with_args("UPDATE pipeline.aggregate SET lateness = COALESCE($2, lateness), "
								  "idle_timeout = COALESCE($3, idle_timeout), emit = $4, state = $5, emit_topic = $6, "
								  "emit_connection = $7, "
								  "valid_from = CASE WHEN $13 OPERATOR(pg_catalog.=) 0 THEN valid_from "
								  "ELSE pg_catalog.array_cat(COALESCE(valid_from, "
								  "pg_catalog.array_fill(NULL::pg_catalog.timestamptz, ARRAY[pg_catalog.cardinality(functions)])), "
								  "pg_catalog.array_fill($12, ARRAY[$13])) END, "
								  "functions = pg_catalog.array_cat(functions, $8), arguments = pg_catalog.array_cat(arguments, $9), "
								  "outputs = pg_catalog.array_cat(outputs, $10), fractions = pg_catalog.array_cat(fractions, $11), "
								  "revision = revision OPERATOR(pg_catalog.+) 1 "
								  "WHERE name OPERATOR(pg_catalog.=) $1",
								  13, utypes, uvalues, unulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not alter aggregate \"%s\"", name);
	}
	pe_catalog_end(&acc);
	PG_RETURN_VOID();
}

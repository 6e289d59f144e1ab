/*-------------------------------------------------------------------------
 *
 * aggregate_api.c
 *	  Defining continuous windowed aggregates: create_aggregate() checks the
 *	  definition against the consumer's target, makes the results table
 *	  (and with emit 'close' the state table of open windows, both owned by
 *	  the consumer's owner) and records the definition.  Changing it is
 *	  aggregate_alter.c's, dropping it aggregate_drop.c's; reading its
 *	  functions aggregate_parse.c's.  aggregate.c updates them per batch.
 *
 * IDENTIFICATION
 *	  src/aggregate_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgtime.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/scansup.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "aggregate.h"
#include "datapath.h"
#include "connection.h"
#include "consumer.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_create_aggregate);

/* Whether AT TIME ZONE would read a zone name as an abbreviation (a fixed offset). */
static bool
pe_agg_zone_is_abbreviation(const char *name)
{
	char	   *low = downcase_truncate_identifier(name, strlen(name), false);
	int			offset;
	pg_tz	   *tzp;

	/* (UTC, GMT and the like are an offset of 0 both ways) */
	return strlen(name) < TOKMAXLEN && DecodeTimezoneAbbrev(0, low, &offset, &tzp) != UNKNOWN_FIELD &&
		!(tzp == NULL && offset == 0);
}

/*
 * The connection an aggregate's windows are sent through: the consumer's
 * unless named; the caller and the consumer's owner (who sends) must be
 * allowed to use it.
 */
char *
pe_agg_emit_connection(PeConsumerDef *def, char *name, const char *topic)
{
	PeConnection *conn = pe_connection_lookup(name ? name : def->connection, false);

	if (strcmp(conn->name, def->connection) == 0 && strcmp(topic, def->topic) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate windows cannot go to topic \"%s\", which their consumer \"%s\" reads", topic, def->name),
				 errhint("Name another topic: the consumer would read the windows back as events.")));

	pe_check_connection_use(conn);
	if (!superuser_arg(def->owner) && !has_privs_of_role(def->owner, conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the owner of consumer \"%s\" may not use connection \"%s\"", def->name, conn->name),
				 errhint("The consumer's owner sends the aggregate's windows; grant it membership in the connection's owner.")));
	return conn->name;
}

void
pe_agg_check_interval(Interval *iv, const char *what, bool zero_ok)
{
	int64		us;

	if (iv->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a %s of months or years is not supported", what),
				 errhint("Give it in days, hours, minutes or seconds (date_bin's rule): '30 days', not '1 month'.")));
	/* (a day is 24 hours here; '1 day -1 hour' is 23) */
	if (iv->day > PE_AGG_MAX_DAYS || iv->day < -PE_AGG_MAX_DAYS ||
		pg_add_s64_overflow(iv->time, (int64) iv->day * USECS_PER_DAY, &us) ||
		us > (int64) PE_AGG_MAX_DAYS * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the %s must be at most %d days", what, PE_AGG_MAX_DAYS),
				 errhint("A century is the longest window, slide, gap, lateness or idle timeout an aggregate takes.")));
	if (zero_ok ? us < 0 : us <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 zero_ok ? errmsg("the %s must be zero or more", what) : errmsg("the %s must be longer than zero", what),
				 zero_ok ? errhint("For example '30 seconds': events up to that much behind the watermark still count.")
				 : errhint("Give a positive interval such as '1 minute'.")));
}

/*
 * A window, slide, lateness or idle timeout of create_aggregate(): an
 * interval, or (the text signature of 0.9.0) text read here, so that a
 * spec that does not parse is told with a hint rather than by the interval
 * type's input.  The steps are interval_in's, which return their errors.
 */
static Interval *
pe_agg_interval_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, argno);
	char	   *spec;
	char	   *shown;
	char		workbuf[256];	/* (interval_in's) */
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype = DTK_DELTA;
	struct pg_itm_in itm;
	Interval   *iv = palloc0(sizeof(Interval));
	int			dterr;

	if (!OidIsValid(type))
	{
		/* (called without an expression, as by the fast path: the signature says) */
		Oid		   *argtypes;
		int			nargs;

		get_func_signature(fcinfo->flinfo->fn_oid, &argtypes, &nargs);
		type = argtypes[argno];
	}
	type = getBaseType(type);
	if (type == INTERVALOID)
		return PG_GETARG_INTERVAL_P(argno);
	if (type != TEXTOID && type != VARCHAROID && type != BPCHAROID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the %s must be an interval or text, not %s", what, format_type_be(type)),
				 errhint("Give it as '5 minutes' or interval '5 minutes'.")));
	spec = TextDatumGetCString(PG_GETARG_DATUM(argno));
	/* (an error quotes the spec: at most its first 60 bytes, whole characters) */
	shown = spec;
	if (strlen(spec) > 60)
		shown = psprintf("%s...", pnstrdup(spec, pg_mbcliplen(spec, strlen(spec), 60)));
	dterr = ParseDateTime(spec, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm);
	if (dterr == DTERR_BAD_FORMAT)
		dterr = DecodeISO8601Interval(spec, &dtype, &itm);
	if (dterr == DTERR_FIELD_OVERFLOW || (dterr == 0 && dtype == DTK_DELTA && itmin2interval(&itm, iv) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the %s \"%s\" is out of the range of an interval", what, shown),
				 errhint("Give at most %d days, such as '1 day' or '90 minutes'.", PE_AGG_MAX_DAYS)));
	if (dterr != 0 || dtype != DTK_DELTA)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the %s \"%s\" does not parse as an interval", what, shown),
				 errhint("Give a number and a unit, such as '30 seconds', '5 minutes', '1 hour' or '1 day' (or ISO 8601, 'PT5M').")));
	return iv;
}

/*
 * The select-list item that gives an aggregate's value and state columns
 * their types, in the CREATE TABLE AS that makes the results table (or
 * that adds an aggregate to it).
 */
void
pe_agg_select_item(StringInfo sql, const char *fn, const char *argument, Oid argtype, const char *out, Oid time_type)
{
	const char *arg = strcmp(argument, "*") == 0 ? "*" : quote_identifier(argument);
	const char *o = quote_identifier(out);
	const char *tt = format_type_be_qualified(time_type);

	/* the value, and the state it is merged from (pe_agg_state_columns) */
	if (strcmp(fn, "first") == 0 || strcmp(fn, "last") == 0)
		appendStringInfo(sql, ", (pg_catalog.array_agg(%s))[1] AS %s, NULL::%s AS %s", arg, o, tt,
						 quote_identifier(psprintf("%s__time", out)));
	else if (strcmp(fn, "count_distinct") == 0)
		appendStringInfo(sql, ", pg_catalog.count(%s) AS %s, pg_catalog.array_agg(%s) AS %s", arg, o, arg,
						 quote_identifier(psprintf("%s__set", out)));
	else if (strcmp(fn, "approx_count_distinct") == 0)
		appendStringInfo(sql, ", pg_catalog.count(%s) AS %s, NULL::%s.hll AS %s", arg, o,
						 pe_agg_extension_schema("hll"), quote_identifier(psprintf("%s__hll", out)));
	else if (strcmp(fn, "percentile") == 0)
		appendStringInfo(sql, ", NULL::pg_catalog.float8 AS %s, NULL::%s.tdigest AS %s", o,
						 pe_agg_extension_schema("tdigest"), quote_identifier(psprintf("%s__digest", out)));
	else
	{
		appendStringInfo(sql, ", pg_catalog.%s(%s) AS %s", fn, arg, o);
		if (strcmp(fn, "avg") == 0)
			appendStringInfo(sql, ", pg_catalog.sum(%s) AS %s, pg_catalog.count(%s) AS %s", pe_agg_avg_sum_argument(argtype, arg),
							 quote_identifier(psprintf("%s__sum", out)), arg,
							 quote_identifier(psprintf("%s__count", out)));
	}
}

static int64
pe_agg_usecs(Interval *iv)
{
	return iv->time + (int64) iv->day * USECS_PER_DAY;
}

static text **
pe_agg_text_array(ArrayType *a, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	text	  **out;

	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	out = palloc(sizeof(text *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("an aggregate or group column cannot be null"),
					 errhint("Remove the null from the array.")));
		out[i] = DatumGetTextPP(elems[i]);
	}
	return out;
}

Datum
pe_create_aggregate(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *consumer;
	Interval   *size;
	Interval   *slide;
	Interval   *lateness;
	Interval   *idle;
	TimestampTz origin;
	char	   *time_column;
	char	   *emit;
	char	   *emit_topic;
	char	   *emit_connection;
	char	   *kind;
	char	   *time_zone;
	Oid			state_oid = InvalidOid;
	PeConsumerDef *def;
	PeTarget   *target;
	Relation	rel;
	Oid			time_type;
	text	  **aggs;
	text	  **groups;
	int			naggs;
	int			ngroups = 0;
	char	  **fns;
	char	  **args;
	char	  **outs;
	double	   *fractions;
	char	   *results;
	char	   *schema;
	StringInfoData sql;
	StringInfoData cols;
	Oid			results_oid;
	PeCatalogAccess acc;
	Datum		values[22];
	char		nulls[23] = "                      ";
	Oid			types[22] = {TEXTOID, OIDOID, TEXTOID, INT8OID, OIDOID, TEXTOID, INTERVALOID, INTERVALOID,
	TIMESTAMPTZOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INTERVALOID, INTERVALOID,
	FLOAT8ARRAYOID, TEXTOID, OIDOID, TEXTOID, TEXTOID, TEXTOID};
	Datum	   *pd;
	bool	   *pn;
	Datum	   *fd;
	Datum	   *ad;
	Datum	   *od;
	Datum	   *gd;
	MemoryContext outer = CurrentMemoryContext;

	pe_require_preload();
	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("name, consumer, window, time_column and aggregates cannot be null"),
					 errhint("Give all five; group_by, slide, origin and results are optional.")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	consumer = text_to_cstring(PG_GETARG_TEXT_PP(1));
	size = pe_agg_interval_arg(fcinfo, 2, "window");
	time_column = text_to_cstring(PG_GETARG_TEXT_PP(3));
	slide = PG_ARGISNULL(6) ? size : pe_agg_interval_arg(fcinfo, 6, "slide");
	origin = PG_ARGISNULL(7) ? 0 : PG_GETARG_TIMESTAMPTZ(7);	/* 2000-01-01 00:00 UTC */
	lateness = PG_ARGISNULL(9) ? palloc0(sizeof(Interval)) : pe_agg_interval_arg(fcinfo, 9, "lateness");
	idle = PG_ARGISNULL(10) ? NULL : pe_agg_interval_arg(fcinfo, 10, "idle timeout");
	emit = PG_ARGISNULL(11) ? "update" : text_to_cstring(PG_GETARG_TEXT_PP(11));
	emit_topic = PG_ARGISNULL(12) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(12));
	emit_connection = PG_ARGISNULL(13) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(13));
	kind = PG_ARGISNULL(14) ? (PG_ARGISNULL(6) ? "tumbling" : "hopping") : text_to_cstring(PG_GETARG_TEXT_PP(14));
	if (strcmp(kind, "tumbling") != 0 && strcmp(kind, "hopping") != 0 && strcmp(kind, "session") != 0 &&
		strcmp(kind, "cumulative") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("window kind \"%s\" is not supported", kind),
				 errhint("Use 'tumbling', 'hopping' (with a slide), 'cumulative' (with a slide, its step) or 'session' (the window is the gap that ends a session).")));
	if (strcmp(kind, "session") == 0 && !PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a session window has no slide"),
				 errhint("A session ends after a gap of window without events; leave slide out.")));
	time_zone = PG_ARGISNULL(15) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(15));
	if (time_zone && strcmp(kind, "session") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a session window has no time zone"),
				 errhint("Sessions are not aligned on the clock; leave time_zone out.")));
	if (time_zone && pe_agg_zone_is_abbreviation(time_zone))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" is also an abbreviation, which PostgreSQL reads as a fixed offset", time_zone),
				 errhint("Name the zone by its region, such as 'Europe/Paris' rather than 'CET'.")));
	if (time_zone && pg_tzset(time_zone) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" is not known", time_zone),
				 errhint("Name a time zone of pg_timezone_names, such as 'Europe/Paris'.")));
	if ((strcmp(kind, "hopping") == 0 || strcmp(kind, "cumulative") == 0) && PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a %s window needs a slide", kind),
				 errhint("Give slide => an interval shorter than the window (for a cumulative window, its step).")));
	if (strcmp(emit, "update") != 0 && strcmp(emit, "close") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit must be 'update' or 'close', not \"%s\"", emit),
				 errhint("'update' emits every change of a window; 'close' emits its final row once, when the watermark closes it.")));
	if (emit_topic != NULL && emit_topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit_topic cannot be empty"),
				 errhint("Name a topic, or leave emit_topic out to emit to the results table only.")));
	if (emit_connection != NULL && emit_topic == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit_connection needs an emit_topic"),
				 errhint("Name the topic the aggregate's windows go to.")));
	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an aggregate needs a name"),
				 errhint("Give it a name that is not empty.")));
	if (TIMESTAMP_NOT_FINITE(origin))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the origin of the windows must be finite"),
				 errhint("Leave origin out (2000-01-01 00:00 UTC), or give a time to align the windows on.")));
	if (strlen(PG_ARGISNULL(8) ? name : text_to_cstring(PG_GETARG_TEXT_PP(8))) +
		(strcmp(emit, "close") == 0 ? strlen("_open") : 0) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("the results table's name is longer than %d bytes", NAMEDATALEN - 1),
				 errhint("Give a shorter name, or a shorter results => name (with emit 'close', the state table adds \"_open\").")));
	pe_agg_check_interval(size, "window", false);
	pe_agg_check_interval(slide, "slide", false);
	pe_agg_check_interval(lateness, "lateness", true);
	if (idle == NULL)
		idle = DatumGetIntervalP(DirectFunctionCall3(interval_in, CStringGetDatum("1 minute"),
													 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
	pe_agg_check_interval(idle, "idle timeout", false);
	if (pe_agg_usecs(slide) > pe_agg_usecs(size))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the slide cannot be longer than the window"),
				 errhint("A hopping window slides by at most its size; leave slide out for a tumbling window.")));
	if (strcmp(kind, "cumulative") == 0 && pe_agg_usecs(size) % pe_agg_usecs(slide) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a cumulative window must be a whole number of steps"),
				 errhint("Give a slide (the step) that divides the window, such as window '1 day' and slide '1 hour'.")));
	/*
	 * On a zone's clock an hour repeats or is skipped when it changes:
	 * windows shorter than a day (or steps) would be binned by a wall time
	 * that two instants share, and could start after an event they hold.
	 */
	if (time_zone && (pe_agg_usecs(size) % USECS_PER_DAY != 0 || pe_agg_usecs(slide) % USECS_PER_DAY != 0))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("windows with a time zone must be whole days, and so must their slide"),
				 errhint("Leave time_zone out for shorter windows; to align them on a zone's offset, give an origin such as '2000-01-01 00:30+00'.")));
	if (pe_agg_usecs(size) / pe_agg_usecs(slide) > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a window of more than 1000 slides is not supported"),
				 errhint("Each event would update every window that holds it; choose a longer slide.")));

	def = pe_consumer_for_owner(consumer, "define aggregates on it");
	if (!OidIsValid(def->target))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of consumer \"%s\" was dropped", consumer),
				 errhint("Drop the consumer and create it again on an existing table.")));
	rel = table_open(def->target, AccessShareLock);
	if (emit_topic != NULL)
		emit_connection = pe_agg_emit_connection(def, emit_connection, emit_topic);

	/* '$timestamp': the message's Kafka timestamp, kept in no column */
	time_type = strcmp(time_column, PE_AGG_TIMESTAMP) == 0 ? TIMESTAMPTZOID
		: pe_agg_require_column(rel, time_column, "time column");
	if (time_zone && time_type != TIMESTAMPTZOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("a time zone needs a time column of type timestamp with time zone, and \"%s\" is %s", time_column,
						format_type_be(time_type)),
				 errhint("A timestamp without time zone is already wall time: leave time_zone out.")));
	if (time_type != TIMESTAMPTZOID && time_type != TIMESTAMPOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("time column \"%s\" is of type %s, not a time", time_column, format_type_be(time_type)),
				 errhint("Use a column of type timestamp with time zone or timestamp, or '$timestamp' for the messages' Kafka timestamps.")));
	if (!PG_ARGISNULL(5))
	{
		groups = pe_agg_text_array(PG_GETARG_ARRAYTYPE_P(5), &ngroups);
		for (int g = 0; g < ngroups; g++)
			(void) pe_agg_require_column(rel, text_to_cstring(groups[g]), "group column");
	}
	else
		groups = NULL;
	/* the group columns: each once, and not a name the results table uses itself */
	if (ngroups > PE_AGG_MAX_GROUPS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("an aggregate can have at most %d group columns", PE_AGG_MAX_GROUPS),
				 errhint("The results' unique index holds the window's start and end and the groups, and an index has at most 32 columns.")));
	for (int g = 0; g < ngroups; g++)
	{
		const char *gname = text_to_cstring(groups[g]);

		for (int h = 0; h < g; h++)
			if (strcmp(gname, text_to_cstring(groups[h])) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("group column \"%s\" is given twice", gname),
						 errhint("Name each group column once.")));
		if (strcmp(gname, "window_start") == 0 || strcmp(gname, "window_end") == 0 || strcmp(gname, "closed") == 0 ||
			strcmp(gname, "pe_inserted") == 0 || strstr(gname, "__") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("group column \"%s\" has a name the results table keeps for itself", gname),
					 errhint("The results have window_start, window_end, closed and NAME__state columns: group by a column of another name (a generated column of the target can copy it).")));
	}
	/* as the consumer's batches will see them (describing prepares its statements) */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	target = pe_target_open(def, false);

	/*
	 * What is parsed here is used after SPI_finish(): in the caller's
	 * context (each SPI call leaves SPI's procedure context current).
	 */
	MemoryContextSwitchTo(outer);
	if (strcmp(time_column, PE_AGG_TIMESTAMP) != 0)
		pe_agg_require_decoded(target, time_column, "time column");
	for (int g = 0; g < ngroups; g++)
		pe_agg_require_decoded(target, text_to_cstring(groups[g]), "group column");
	aggs = pe_agg_text_array(PG_GETARG_ARRAYTYPE_P(4), &naggs);
	if (naggs == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an aggregate needs at least one function"),
				 errhint("For example ARRAY['count(*)', 'avg(temp)'].")));
	fns = palloc(sizeof(char *) * naggs);
	args = palloc(sizeof(char *) * naggs);
	outs = palloc(sizeof(char *) * naggs);
	fractions = palloc(sizeof(double) * naggs);
	for (int i = 0; i < naggs; i++)
	{
		pe_agg_parse(text_to_cstring(aggs[i]), rel, &fns[i], &args[i], &outs[i], &fractions[i]);
		if (strcmp(kind, "session") == 0 && strcmp(fns[i], "count_distinct") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("an exact distinct count is not supported in session windows"),
					 errhint("Sessions merge as they grow; use approx_count_distinct() (the hll extension), whose sketches merge.")));
		if (strcmp(args[i], "*") != 0)
			pe_agg_require_decoded(target, args[i], "aggregated column");
		for (int j = 0; j < i; j++)
			if (strcmp(outs[i], outs[j]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("two aggregates are named \"%s\"", outs[i]),
						 errhint("Name one of them with AS.")));
		for (int g = 0; g < ngroups; g++)
			if (strcmp(outs[i], text_to_cstring(groups[g])) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("aggregate \"%s\" has the name of a group column", outs[i]),
						 errhint("Name it otherwise with AS.")));
	}

	/*
	 * The results table, in the target's schema, as the caller: CREATE
	 * TABLE AS over the target takes each output's type from PostgreSQL
	 * itself.  Then the consumer's owner owns it, since its batches write it.
	 */
	pe_target_close(target);
	SPI_finish();
	schema = get_namespace_name(RelationGetNamespace(rel));
	results = PG_ARGISNULL(8) ? name : text_to_cstring(PG_GETARG_TEXT_PP(8));
	for (int k = 0; k < (strcmp(emit, "close") == 0 ? 2 : 1); k++)
	{
		const char *tname = k == 0 ? results : psprintf("%s_open", results);

		if (OidIsValid(get_relname_relid(tname, RelationGetNamespace(rel))))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_TABLE),
					 errmsg("the %s table \"%s.%s\" of aggregate \"%s\" already exists", k == 0 ? "results" : "state",
							schema, tname, name),
					 errhint("Name the results otherwise with results => ..., or drop that table (drop_aggregate(name, drop_results => true) drops an aggregate's results with it).")));
	}
	initStringInfo(&sql);
	initStringInfo(&cols);
	appendStringInfo(&sql, "CREATE TABLE %s.%s AS SELECT NULL::%s AS window_start, NULL::%s AS window_end",
					 quote_identifier(schema), quote_identifier(results), format_type_be_qualified(time_type),
					 format_type_be_qualified(time_type));
	for (int g = 0; g < ngroups; g++)
	{
		const char *gq = quote_identifier(text_to_cstring(groups[g]));

		appendStringInfo(&sql, ", %s", gq);
		appendStringInfo(&cols, ", %s", gq);
	}
	for (int i = 0; i < naggs; i++)
		pe_agg_select_item(&sql, fns[i], args[i],
						   strcmp(args[i], "*") == 0 ? InvalidOid : get_atttype(RelationGetRelid(rel), get_attnum(RelationGetRelid(rel), args[i])),
						   outs[i], time_type);
	appendStringInfoString(&sql, ", false AS closed");
	appendStringInfo(&sql, " FROM %s.%s GROUP BY 1, 2%s WITH NO DATA", quote_identifier(schema),
					 quote_identifier(RelationGetRelationName(rel)), cols.data);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create the results table");
	resetStringInfo(&sql);
	/*
	 * Room on each page for the next version of every window on it: a batch
	 * updates each open window it touches once, and the versions the batch
	 * before left are pruned as the page fills, so the updates stay HOT (no
	 * index entries).  At 70 a page had room for fewer than half its rows'
	 * next versions: a quarter of the updates of a per-day aggregate went to
	 * other pages with new index entries, and the table ended half as big
	 * again as at 50.  With emit 'close' the results only take closed
	 * windows, never updated: full pages; the state table has the room.
	 */
	appendStringInfo(&sql, "ALTER TABLE %s.%s ALTER window_start SET NOT NULL, ALTER window_end SET NOT NULL, "
					 "ALTER closed SET NOT NULL, ALTER closed SET DEFAULT false%s",
					 quote_identifier(schema), quote_identifier(results),
					 strcmp(emit, "close") == 0 ? "" : ", SET (fillfactor = 50)");
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not alter the results table");
	/* one row per window and group (the end too: cumulative windows share their start); a null group is one group */
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE UNIQUE INDEX ON %s.%s (window_start, window_end%s) NULLS NOT DISTINCT",
					 quote_identifier(schema), quote_identifier(results), cols.data);
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not index the results table");
	/* the open windows, which each batch closes as the watermark passes them */
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE INDEX ON %s.%s (window_end) WHERE NOT closed",
					 quote_identifier(schema), quote_identifier(results));
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not index the results table");
	/* with emit 'close', the open windows wait in a table of the same shape */
	if (strcmp(emit, "close") == 0)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "CREATE TABLE %s.%s (LIKE %s.%s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES) "
						 "WITH (fillfactor = 50)",
						 quote_identifier(schema), quote_identifier(psprintf("%s_open", results)),
						 quote_identifier(schema), quote_identifier(results));
		if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not create the state table");
	}
	if (def->owner != GetUserId())
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s.%s OWNER TO %s", quote_identifier(schema), quote_identifier(results),
						 quote_identifier(GetUserNameFromId(def->owner, false)));
		if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not give the results table to the consumer's owner");
		if (strcmp(emit, "close") == 0)
		{
			resetStringInfo(&sql);
			appendStringInfo(&sql, "ALTER TABLE %s.%s OWNER TO %s", quote_identifier(schema),
							 quote_identifier(psprintf("%s_open", results)),
							 quote_identifier(GetUserNameFromId(def->owner, false)));
			if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "could not give the state table to the consumer's owner");
		}
	}
	SPI_finish();
	results_oid = get_relname_relid(results, RelationGetNamespace(rel));
	if (!OidIsValid(results_oid))
		elog(ERROR, "could not find the results table just made");
	if (strcmp(emit, "close") == 0)
		state_oid = get_relname_relid(psprintf("%s_open", results), RelationGetNamespace(rel));
	table_close(rel, NoLock);	/* locked until the end of the transaction */

	fd = palloc(sizeof(Datum) * naggs);
	ad = palloc(sizeof(Datum) * naggs);
	od = palloc(sizeof(Datum) * naggs);
	gd = palloc(sizeof(Datum) * Max(ngroups, 1));
	pd = palloc(sizeof(Datum) * naggs);
	pn = palloc(sizeof(bool) * naggs);
	for (int i = 0; i < naggs; i++)
	{
		pd[i] = Float8GetDatum(fractions[i]);
		pn[i] = strcmp(fns[i], "percentile") != 0;
		fd[i] = CStringGetTextDatum(fns[i]);
		ad[i] = CStringGetTextDatum(args[i]);
		od[i] = CStringGetTextDatum(outs[i]);
	}
	for (int g = 0; g < ngroups; g++)
		gd[g] = PointerGetDatum(groups[g]);
	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(def->owner);
	values[2] = CStringGetTextDatum(def->name);
	values[3] = Int64GetDatum(def->id);
	values[4] = ObjectIdGetDatum(results_oid);
	values[5] = CStringGetTextDatum(strcmp(kind, "session") == 0 || strcmp(kind, "cumulative") == 0 ? kind
									: pe_agg_usecs(slide) == pe_agg_usecs(size) ? "tumbling" : "hopping");
	values[6] = IntervalPGetDatum(size);
	values[7] = IntervalPGetDatum(slide);
	values[8] = TimestampTzGetDatum(origin);
	values[9] = CStringGetTextDatum(time_column);
	values[10] = PointerGetDatum(construct_array(gd, ngroups, TEXTOID, -1, false, TYPALIGN_INT));
	values[11] = PointerGetDatum(construct_array(fd, naggs, TEXTOID, -1, false, TYPALIGN_INT));
	values[12] = PointerGetDatum(construct_array(ad, naggs, TEXTOID, -1, false, TYPALIGN_INT));
	values[13] = PointerGetDatum(construct_array(od, naggs, TEXTOID, -1, false, TYPALIGN_INT));
	values[14] = IntervalPGetDatum(lateness);
	values[15] = IntervalPGetDatum(idle);
	{
		int			dims[1] = {naggs};
		int			lbs[1] = {1};

		values[16] = PointerGetDatum(construct_md_array(pd, pn, 1, dims, lbs, FLOAT8OID, 8, FLOAT8PASSBYVAL,
														TYPALIGN_DOUBLE));
	}
	values[17] = CStringGetTextDatum(emit);
	values[18] = ObjectIdGetDatum(state_oid);
	if (!OidIsValid(state_oid))
		nulls[18] = 'n';
	if (emit_topic != NULL)
	{
		values[19] = CStringGetTextDatum(emit_connection);
		values[20] = CStringGetTextDatum(emit_topic);
	}
	else
		nulls[19] = nulls[20] = 'n';
	values[21] = time_zone ? CStringGetTextDatum(time_zone) : (Datum) 0;
	if (time_zone == NULL)
		nulls[21] = 'n';

	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("INSERT INTO pipeline.aggregate (name, owner, consumer, consumer_id, results, window_kind, "
							  "size, slide, origin, time_column, group_by, functions, arguments, outputs, lateness, idle_timeout, fractions, "
							  "emit, state, emit_connection, emit_topic, time_zone) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) "
							  "ON CONFLICT (name) DO NOTHING",
							  22, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the aggregate");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("aggregate \"%s\" already exists", name),
				 errhint("Drop it with pipeline.drop_aggregate() first, or choose another name.")));

	/*
	 * It counts what the consumer applies from now on: what it has applied
	 * is behind the consumer's stored offsets, read once the batches that
	 * did not see it have committed (the lock: aggregate_defs.c).
	 */
	pe_aggregates_lock(def->id, ExclusiveLock);
	if (SPI_execute_with_args("INSERT INTO pipeline.aggregate_offset (aggregate, \"partition\", counted, seen_at) "
							  "SELECT $1, \"partition\", pg_catalog.int8multirange(pg_catalog.int8range(0, next_offset)), "
							  "pg_catalog.now() FROM pipeline.offsets "
							  "WHERE consumer OPERATOR(pg_catalog.=) $3",
							  22, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record where the aggregate starts");
	pe_catalog_end(&acc);
	PG_RETURN_OID(results_oid);
}

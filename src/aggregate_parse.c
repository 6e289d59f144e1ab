/*-------------------------------------------------------------------------
 *
 * aggregate_parse.c
 *	  Reading an aggregate definition's functions ("sum(temp) AS total",
 *	  "percentile(latency, 0.99)") against the consumer's target: the
 *	  function, its column and its output name, the optional packages they
 *	  need, and the column checks create_aggregate() and alter_aggregate()
 *	  share.
 *
 * IDENTIFICATION
 *	  src/aggregate_parse.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgtime.h"
#include "lib/stringinfo.h"
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

static const char *const pe_agg_functions[] = {"count", "sum", "avg", "min", "max", "first", "last", "count_distinct",
"approx_count_distinct", "percentile", NULL};

/* A column of the consumer's target, by name; InvalidAttrNumber if none. */
static AttrNumber
pe_agg_column(Relation rel, const char *name, Oid *typid)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
		{
			*typid = att->atttypid;
			return att->attnum;
		}
	}
	return InvalidAttrNumber;
}

Oid
pe_agg_require_column(Relation rel, const char *name, const char *what)
{
	Oid			typid;

	if (pe_agg_column(rel, name, &typid) == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s \"%s\" is not a column of the consumer's table \"%s\"", what, name,
						RelationGetRelationName(rel)),
				 errhint("An aggregate reads the columns the consumer writes; name one of them.")));
	return typid;
}

/*
 * The aggregate sees a message's values as the consumer decodes them: a
 * column the consumer does not fill from the message, or fills from its
 * default when the message lacks it, would be seen null.
 */
void
pe_agg_require_decoded(PeTarget *t, const char *name, const char *what)
{
	for (int c = 0; c < t->ncols; c++)
		if (strcmp(t->cols[c].name, name) == 0)
		{
			if (t->cols[c].default_expr != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("%s \"%s\" takes its default when a message lacks it, which an aggregate does not see",
								what, name),
						 errhint("Aggregate a column the messages carry, or drop the column's default.")));
			return;
		}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s \"%s\" is not filled from the messages by consumer \"%s\"", what, name, t->def->name),
			 errhint("An aggregate reads the columns the consumer fills from each message; map this one in the consumer's column_map, or name another.")));
}

/* Trim spaces at both ends, in place. */
static char *
pe_agg_trim(char *s)
{
	while (*s == ' ')
		s++;
	for (char *e = s + strlen(s); e > s && e[-1] == ' '; e--)
		e[-1] = '\0';
	return s;
}

/*
 * The schema of an optional extension that a function needs: an error
 * naming the Debian package when the database does not have it.
 */
static void
pe_agg_require_extension(const char *extname, const char *package, const char *fn)
{
	if (pe_agg_extension_schema(extname) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s needs extension \"%s\", which is not in this database", fn, extname),
				 errhint("Install the Debian package %s and run CREATE EXTENSION %s in this database%s.", package,
						 extname, strcmp(extname, "hll") == 0 ? ", or ask for exact_count_distinct()" : "")));
}

/*
 * One item of the aggregates argument: "function(argument)" or
 * "function(argument) AS name", spaces allowed around the parts.  The
 * function is recorded by what it keeps: count(distinct x) is
 * approx_count_distinct (an hll) when the database has the hll extension,
 * count_distinct (the exact set) otherwise; percentile(x, fraction) keeps a
 * t-digest.
 */
void
pe_agg_parse(const char *spec, Relation rel, char **fn, char **arg, char **out, double *fraction)
{
	char	   *s = pstrdup(spec);
	char	   *open = strchr(s, '(');
	char	   *close = strrchr(s, ')');
	char	   *rest;
	char	   *shown;
	Oid			typid;
	bool		known = false;

	*fraction = 0;
	if (open == NULL || close == NULL || close < open)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" does not parse", spec),
				 errhint("Write each aggregate as function(column), optionally followed by AS name: count(*), sum(amount), avg(temp) AS mean.")));
	*open = '\0';
	*close = '\0';
	for (char *c = s; *c; c++)
		*c = pg_tolower((unsigned char) *c);
	*fn = pe_agg_trim(s);
	*arg = pe_agg_trim(open + 1);
	rest = pe_agg_trim(close + 1);
	shown = *fn;

	if (strcmp(*fn, "count") == 0 && pg_strncasecmp(*arg, "distinct ", 9) == 0)
	{
		*arg = pe_agg_trim(*arg + 9);
		*fn = pe_agg_extension_schema("hll") != NULL ? "approx_count_distinct" : "count_distinct";
		shown = "count_distinct";
	}
	else if (strcmp(*fn, "exact_count_distinct") == 0)
		*fn = shown = "count_distinct";
	else if (strcmp(*fn, "approx_count_distinct") == 0)
		pe_agg_require_extension("hll", "postgresql-15-hll", "approx_count_distinct()");
	else if (strcmp(*fn, "percentile") == 0 || strcmp(*fn, "median") == 0)
	{
		char	   *comma = strrchr(*arg, ',');

		if (strcmp(*fn, "median") == 0)
			*fraction = 0.5;
		else if (comma == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("aggregate \"%s\" does not parse", spec),
					 errhint("Write percentile(column, fraction), the fraction between 0 and 1: percentile(latency, 0.99).")));
		else
		{
			char	   *end;

			*comma = '\0';
			*arg = pe_agg_trim(*arg);
			*fraction = strtod(pe_agg_trim(comma + 1), &end);
			if (*end != '\0' || end == comma + 1 || !(*fraction >= 0 && *fraction <= 1))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("the fraction of percentile \"%s\" is not a number between 0 and 1", spec),
						 errhint("For the 99th percentile write percentile(column, 0.99).")));
		}
		pe_agg_require_extension("tdigest", "postgresql-15-tdigest", psprintf("%s()", *fn));
		*fn = "percentile";
	}
	for (int i = 0; pe_agg_functions[i]; i++)
		if (strcmp(*fn, pe_agg_functions[i]) == 0)
			known = true;
	if (!known)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("aggregate function \"%s\" is not supported", *fn),
				 errhint("Supported: count, sum, avg, min, max, first, last, count(distinct x), exact_count_distinct, approx_count_distinct, percentile(x, fraction), median.")));

	if (*rest == '\0')
	{
		if (strcmp(*arg, "*") == 0)
			*out = pstrdup(*fn);
		else if (strcmp(*fn, "percentile") == 0)
		{
			/* p99_latency, p99_9_latency, median_latency */
			char	   *p = strcmp(shown, "median") == 0 ? pstrdup("median") : psprintf("p%g", *fraction * 100);

			for (char *c = p; *c; c++)
				if (*c == '.')
					*c = '_';
			*out = psprintf("%s_%s", p, *arg);
		}
		else
			*out = psprintf("%s_%s", shown, *arg);
	}
	else if (pg_strncasecmp(rest, "as ", 3) == 0)
	{
		*out = pe_agg_trim(rest + 3);
		/* "a quoted name": the name inside, "" a quote, as SQL reads it */
		if (**out == '"')
		{
			char	   *name = palloc(strlen(*out));
			char	   *w = name;
			const char *c = *out + 1;

			for (; *c; c++)
			{
				if (*c == '"' && c[1] == '"')
					*w++ = *c++;
				else if (*c == '"')
					break;
				else
					*w++ = *c;
			}
			*w = '\0';
			if (*c != '"' || c[1] != '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("aggregate \"%s\" does not parse", spec),
						 errhint("Quote the name after AS whole, with \"\" for a quote inside: AS \"my name\".")));
			*out = name;
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" does not parse", spec),
				 errhint("After function(column) only AS name may follow.")));
	if (**out == '\0' || strcmp(*out, "window_start") == 0 || strcmp(*out, "window_end") == 0 ||
		strcmp(*out, "closed") == 0 || strcmp(*out, "pe_inserted") == 0 || strstr(*out, "__") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" needs another output name", spec),
				 errhint("Add AS name with a name that is not window_start, window_end, closed or pe_inserted, and has no \"__\" (the results keep state in NAME__sum and the like).")));
	/* its state columns too must fit a name: NAME__digest, NAME__count */
	if (strlen(*out) + strlen("__digest") >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("the output name of aggregate \"%s\" is longer than %d bytes", spec,
						(int) (NAMEDATALEN - 1 - strlen("__digest"))),
				 errhint("Give it a shorter name with AS: the results table keeps state beside it in NAME__digest and the like.")));
	if (strcmp(*arg, "*") == 0)
	{
		if (strcmp(*fn, "count") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s(*) is not an aggregate", shown),
					 errhint("Only count takes *; name a column.")));
		return;
	}
	typid = pe_agg_require_column(rel, *arg, "aggregated column");
	if ((strcmp(*fn, "sum") == 0 || strcmp(*fn, "avg") == 0 || strcmp(*fn, "percentile") == 0) &&
		!(typid == INT2OID || typid == INT4OID || typid == INT8OID || typid == FLOAT4OID ||
		  typid == FLOAT8OID || typid == NUMERICOID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s(%s) needs a number, and column \"%s\" is of type %s", shown, *arg, *arg,
						format_type_be(typid)),
				 errhint("sum, avg and percentile take smallint, integer, bigint, real, double precision or numeric columns.")));
	if ((strcmp(*fn, "first") == 0 || strcmp(*fn, "last") == 0 || strcmp(*fn, "count_distinct") == 0) &&
		type_is_array(typid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s(%s) of an array column is not supported", shown, *arg),
				 errhint("Aggregate a column of another type; min and max take arrays.")));
	if ((strcmp(*fn, "count_distinct") == 0 || strcmp(*fn, "min") == 0 || strcmp(*fn, "max") == 0) &&
		!OidIsValid(lookup_type_cache(typid, TYPECACHE_LT_OPR)->lt_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s(%s) needs a type with an order, and column \"%s\" is of type %s", shown, *arg, *arg,
						format_type_be(typid)),
				 errhint("Aggregate a column whose type can be sorted, or use approx_count_distinct() with the hll extension.")));
}

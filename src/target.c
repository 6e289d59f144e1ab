/*-------------------------------------------------------------------------
 *
 * target.c
 *	  A consumer's target table: which column takes which part of a message,
 *	  decoding messages into rows in C, and applying a batch of rows with
 *	  set-based statements prepared once.
 *
 *	  A batch is applied as at most two statements: one INSERT (append) or
 *	  INSERT ... ON CONFLICT DO UPDATE (upsert) over unnest() of one array
 *	  per column, and one DELETE for tombstones.  In upsert mode only the
 *	  newest message per key is kept, since one INSERT ... ON CONFLICT cannot
 *	  touch a row twice.
 *
 *	  Nothing is dropped: a message that cannot be decoded becomes a dead
 *	  letter; a statement that fails for reasons of its rows (data errors,
 *	  constraint violations, errors raised by triggers) is retried on halves
 *	  of the batch until the bad rows are isolated, each becoming a dead
 *	  letter, while the good ones are applied.  Errors that are not about
 *	  rows (privileges, a missing table, cancel) propagate: the caller
 *	  retries or stops the batch as a whole.
 *
 *	  Decoding and applying run as the consumer's owner, with
 *	  SECURITY_RESTRICTED_OPERATION as for REFRESH MATERIALIZED VIEW, so a
 *	  trigger on the target runs with the owner's privileges and no more.
 *
 * IDENTIFICATION
 *	  src/target.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "parser/parse_relation.h"
#include "rewrite/rewriteHandler.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "pipeline_ext.h"

#define PE_JSON_MAX_DEPTH 16

typedef enum PeSource
{
	PE_SRC_FIELD,				/* JSON field path */
	PE_SRC_CSV,					/* CSV field by position */
	PE_SRC_VALUE,				/* the whole value */
	PE_SRC_KEY,
	PE_SRC_TOPIC,
	PE_SRC_PARTITION,
	PE_SRC_OFFSET,
	PE_SRC_TIMESTAMP,
	PE_SRC_HEADERS,
	PE_SRC_HEADER
} PeSource;

typedef struct PeColumn
{
	char	   *name;
	AttrNumber	attnum;
	Oid			typid;
	int32		typmod;
	Oid			collation;
	Oid			arraytyp;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	FmgrInfo	infunc;
	Oid			ioparam;
	bool		is_json;		/* json or jsonb: nested values as JSON text */
	bool		is_bytea;
	PeSource	source;
	char	  **path;			/* PE_SRC_FIELD */
	int			npath;
	size_t		path0len;		/* strlen(path[0]), for the fast JSON path */
	int			csv_index;		/* PE_SRC_CSV */
	char	   *header;			/* PE_SRC_HEADER */
	char	   *default_expr;	/* used when the value is NULL, or NULL */
	bool		is_key;
	FmgrInfo   *hash_fn;		/* key columns: for de-duplication */
	FmgrInfo   *eq_fn;
	FmgrInfo   *cmp_fn;			/* key columns: btree order, or NULL */
} PeColumn;

struct PeTarget
{
	PeConsumerDef *def;
	Oid			relid;
	char	   *relname;		/* schema-qualified, quoted */
	int			ncols;
	PeColumn   *cols;
	int			nkeys;
	int		   *keycols;		/* indexes into cols */
	int			ncsv;
	char		csv_delim;
	char		csv_quote;
	char	   *csv_null;
	bool		needs_headers;
	bool		flat_json;		/* every field column is a top-level field */
	SPIPlanPtr	apply_plan;
	SPIPlanPtr	delete_plan;
};

/* One decoded message. */
typedef struct PeRow
{
	int			msg_index;
	bool		tombstone;
	bool		superseded;		/* a newer message of the same key won */
	Datum	   *values;
	bool	   *nulls;
	uint32		hash;
} PeRow;

/* ---------------------------------------------------------------------
 * Loading the target's description
 * ---------------------------------------------------------------------
 */

PeFormat
pe_parse_format(const char *format)
{
	if (strcmp(format, "json") == 0)
		return PE_FORMAT_JSON;
	if (strcmp(format, "csv") == 0)
		return PE_FORMAT_CSV;
	if (strcmp(format, "text") == 0)
		return PE_FORMAT_TEXT;
	if (strcmp(format, "bytea") == 0)
		return PE_FORMAT_BYTEA;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown format \"%s\"", format),
			 errhint("Use 'json', 'csv', 'text' or 'bytea'.")));
	return PE_FORMAT_JSON;		/* keep compiler quiet */
}

static void
pe_set_source(PeColumn *col, const char *src, PeFormat format)
{
	if (src[0] == '$')
	{
		if (strcmp(src, "$key") == 0)
			col->source = PE_SRC_KEY;
		else if (strcmp(src, "$value") == 0)
			col->source = PE_SRC_VALUE;
		else if (strcmp(src, "$topic") == 0)
			col->source = PE_SRC_TOPIC;
		else if (strcmp(src, "$partition") == 0)
			col->source = PE_SRC_PARTITION;
		else if (strcmp(src, "$offset") == 0)
			col->source = PE_SRC_OFFSET;
		else if (strcmp(src, "$timestamp") == 0)
			col->source = PE_SRC_TIMESTAMP;
		else if (strcmp(src, "$headers") == 0)
			col->source = PE_SRC_HEADERS;
		else if (strncmp(src, "$header.", 8) == 0 && src[8] != '\0')
		{
			col->source = PE_SRC_HEADER;
			col->header = pstrdup(src + 8);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown message metadata \"%s\" in column_map for column \"%s\"", src, col->name),
					 errhint("Use $key, $value, $topic, $partition, $offset, $timestamp, $headers or $header.NAME.")));
		return;
	}

	if (format != PE_FORMAT_JSON)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("column_map maps column \"%s\" to the field \"%s\", but the format is not json", col->name, src),
				 errhint("Field paths apply to the json format; other formats take message metadata ($key, $value, ...).")));

	/* a dotted path of field names: payload.device.id */
	{
		char	   *copy = pstrdup(src);
		char	   *tok;
		char	   *save = NULL;

		col->source = PE_SRC_FIELD;
		col->path = palloc(sizeof(char *) * PE_JSON_MAX_DEPTH);
		col->npath = 0;
		for (tok = strtok_r(copy, ".", &save); tok; tok = strtok_r(NULL, ".", &save))
		{
			if (col->npath >= PE_JSON_MAX_DEPTH)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("field path \"%s\" for column \"%s\" is deeper than %d levels",
								src, col->name, PE_JSON_MAX_DEPTH)));
			col->path[col->npath++] = tok;
		}
		if (col->npath == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("empty field path for column \"%s\" in column_map", col->name)));
	}
}

/* column_map's entry for a column: true if present; *src NULL for JSON null */
static bool
pe_column_map_get(Jsonb *map, const char *column, char **src)
{
	JsonbValue	k;
	JsonbValue *v;

	if (map == NULL)
		return false;
	k.type = jbvString;
	k.val.string.val = (char *) column;
	k.val.string.len = strlen(column);
	v = findJsonbValueFromContainer(&map->root, JB_FOBJECT, &k);
	if (v == NULL)
		return false;
	if (v->type == jbvNull)
		*src = NULL;
	else if (v->type == jbvString)
		*src = pnstrdup(v->val.string.val, v->val.string.len);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("column_map entry for column \"%s\" must be a string or null", column)));
	return true;
}

static void
pe_check_column_map(Jsonb *map, Relation rel)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (map == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(map))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("column_map must be a JSON object"),
				 errhint("Map column names to sources, e.g. '{\"device\": \"payload.device_id\", \"ts\": \"$timestamp\"}'.")));
	it = JsonbIteratorInit(&map->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *name = pnstrdup(v.val.string.val, v.val.string.len);
			AttrNumber	att = attnameAttNum(rel, name, false);

			if (att == InvalidAttrNumber)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column \"%s\" named in column_map does not exist in table %s",
								name, RelationGetRelationName(rel))));
			if (TupleDescAttr(RelationGetDescr(rel), att - 1)->attgenerated)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("column \"%s\" named in column_map is a generated column", name)));
		}
	}
}

static char *
pe_format_option(Jsonb *opts, const char *name, const char *dflt)
{
	JsonbValue	k;
	JsonbValue *v;

	if (opts == NULL)
		return (char *) dflt;
	k.type = jbvString;
	k.val.string.val = (char *) name;
	k.val.string.len = strlen(name);
	v = findJsonbValueFromContainer(&opts->root, JB_FOBJECT, &k);
	if (v == NULL)
		return (char *) dflt;
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("format option \"%s\" must be a string", name)));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static void
pe_check_format_options(PeTarget *t)
{
	PeConsumerDef *def = t->def;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *delim;
	char	   *quote;

	if (def->format_options && !JB_ROOT_IS_OBJECT(def->format_options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("format_options must be a JSON object")));
	if (def->format_options)
	{
		it = JsonbIteratorInit(&def->format_options->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *name;

			if (tok != WJB_KEY)
				continue;
			name = pnstrdup(v.val.string.val, v.val.string.len);
			if (def->format != PE_FORMAT_CSV ||
				(strcmp(name, "delimiter") != 0 && strcmp(name, "quote") != 0 && strcmp(name, "null") != 0))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 def->format == PE_FORMAT_CSV
						 ? errmsg("unknown format option \"%s\"", name)
						 : errmsg("format option \"%s\" applies only to the csv format", name),
						 errhint("The csv format takes \"delimiter\", \"quote\" and \"null\"; other formats take none.")));
		}
	}

	delim = pe_format_option(def->format_options, "delimiter", ",");
	quote = pe_format_option(def->format_options, "quote", "\"");
	t->csv_null = pe_format_option(def->format_options, "null", "");
	if (strlen(delim) != 1 || strlen(quote) != 1 || delim[0] == quote[0] ||
		delim[0] == '\n' || delim[0] == '\r' || IS_HIGHBIT_SET(delim[0]) || IS_HIGHBIT_SET(quote[0]))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("csv delimiter and quote must be two different single one-byte characters"),
				 errhint("For example '{\"delimiter\": \";\", \"quote\": \"\\\"\"}'.")));
	t->csv_delim = delim[0];
	t->csv_quote = quote[0];
}

static char *
pe_column_default(Relation rel, AttrNumber attnum)
{
	Node	   *expr = build_column_default(rel, attnum);

	if (expr == NULL)
		return NULL;
	return deparse_expression(expr, NIL, false, false);
}

/* Does a usable (immediate, non-partial, plain) unique index cover exactly these columns? */
static bool
pe_has_unique_index(Relation rel, PeTarget *t)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = idx->rd_index;

		if (form->indisunique && form->indimmediate && form->indisvalid &&
			form->indnkeyatts == t->nkeys &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indexprs, NULL))
		{
			bool		all = true;

			for (int k = 0; k < t->nkeys && all; k++)
			{
				AttrNumber	a = t->cols[t->keycols[k]].attnum;
				bool		in = false;

				for (int j = 0; j < form->indnkeyatts; j++)
					if (form->indkey.values[j] == a)
						in = true;
				all = in;
			}
			found = all;
		}
		index_close(idx, AccessShareLock);
		if (found)
			break;
	}
	list_free(indexes);
	return found;
}

static void
pe_resolve_keys(PeTarget *t, Relation rel)
{
	PeConsumerDef *def = t->def;
	List	   *names = NIL;
	ListCell   *lc;

	if (def->key_columns != NULL)
	{
		Datum	   *elems;
		bool	   *enulls;
		int			n;

		deconstruct_array(def->key_columns, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
		for (int i = 0; i < n; i++)
		{
			if (enulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("key_columns must not contain nulls")));
			names = lappend(names, TextDatumGetCString(elems[i]));
		}
	}
	else if (def->upsert)
	{
		Oid			pk = RelationGetPrimaryKeyIndex(rel);
		Relation	idx;

		if (!OidIsValid(pk))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
					 errmsg("table %s has no primary key to upsert on", RelationGetRelationName(rel)),
					 errhint("Add a primary key, pass key_columns covered by a unique index, or use mode => 'append'.")));
		idx = index_open(pk, AccessShareLock);
		for (int j = 0; j < idx->rd_index->indnkeyatts; j++)
			names = lappend(names, get_attname(RelationGetRelid(rel), idx->rd_index->indkey.values[j], false));
		index_close(idx, AccessShareLock);
	}

	t->nkeys = list_length(names);
	t->keycols = palloc(sizeof(int) * Max(t->nkeys, 1));
	{
		int			k = 0;

		foreach(lc, names)
		{
			char	   *name = lfirst(lc);
			int			found = -1;

			for (int c = 0; c < t->ncols; c++)
				if (strcmp(t->cols[c].name, name) == 0)
					found = c;
			if (found < 0)
			{
				if (attnameAttNum(rel, name, false) == InvalidAttrNumber)
					ereport(ERROR,
							(errcode(ERRCODE_UNDEFINED_COLUMN),
							 errmsg("key column \"%s\" does not exist in table %s", name, RelationGetRelationName(rel))));
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("key column \"%s\" takes no value from the messages", name),
						 errhint("Key columns must be filled from each message; check column_map.")));
			}
			for (int j = 0; j < k; j++)
				if (t->keycols[j] == found)
					ereport(ERROR,
							(errcode(ERRCODE_DUPLICATE_COLUMN),
							 errmsg("key column \"%s\" is listed twice", name)));
			t->keycols[k++] = found;
			t->cols[found].is_key = true;
		}
	}

	if (def->upsert && !pe_has_unique_index(rel, t))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("key columns of consumer \"%s\" are not covered by a unique index or primary key of table %s",
						def->name, RelationGetRelationName(rel)),
				 errhint("Create a unique index on exactly the key columns; partial, expression and deferrable indexes cannot be used.")));

	/* de-duplication needs hash and equality for each key type */
	for (int k = 0; k < t->nkeys; k++)
	{
		PeColumn   *col = &t->cols[t->keycols[k]];
		TypeCacheEntry *tc = lookup_type_cache(col->typid, TYPECACHE_HASH_PROC_FINFO | TYPECACHE_EQ_OPR_FINFO |
											   TYPECACHE_CMP_PROC_FINFO);

		if (!OidIsValid(tc->hash_proc_finfo.fn_oid) || !OidIsValid(tc->eq_opr_finfo.fn_oid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column \"%s\" has type %s, which has no hash function", col->name,
							format_type_be(col->typid)),
					 errhint("Use key columns of hashable types.")));
		col->hash_fn = &tc->hash_proc_finfo;
		col->eq_fn = &tc->eq_opr_finfo;
		col->cmp_fn = OidIsValid(tc->cmp_proc_finfo.fn_oid) ? &tc->cmp_proc_finfo : NULL;
	}
}

static void
pe_build_statements(PeTarget *t)
{
	StringInfoData sql;
	Oid		   *argtypes = palloc(sizeof(Oid) * t->ncols);
	bool		first;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS t (", t->relname);
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%s%s", c ? ", " : "", quote_identifier(t->cols[c].name));
	appendStringInfoString(&sql, ") SELECT ");
	for (int c = 0; c < t->ncols; c++)
	{
		if (t->cols[c].default_expr)
			appendStringInfo(&sql, "%sCOALESCE(u.a%d, %s)", c ? ", " : "", c, t->cols[c].default_expr);
		else
			appendStringInfo(&sql, "%su.a%d", c ? ", " : "", c);
		argtypes[c] = t->cols[c].arraytyp;
	}
	appendStringInfoString(&sql, " FROM ROWS FROM (");
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%spg_catalog.unnest($%d)", c ? ", " : "", c + 1);
	appendStringInfoString(&sql, ") AS u(");
	for (int c = 0; c < t->ncols; c++)
		appendStringInfo(&sql, "%sa%d", c ? ", " : "", c);
	appendStringInfoChar(&sql, ')');

	if (t->def->upsert)
	{
		appendStringInfoString(&sql, " ON CONFLICT (");
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%s%s", k ? ", " : "", quote_identifier(t->cols[t->keycols[k]].name));
		appendStringInfoChar(&sql, ')');
		first = true;
		for (int c = 0; c < t->ncols; c++)
		{
			if (t->cols[c].is_key)
				continue;
			appendStringInfo(&sql, "%s%s = EXCLUDED.%s", first ? " DO UPDATE SET " : ", ",
							 quote_identifier(t->cols[c].name), quote_identifier(t->cols[c].name));
			first = false;
		}
		if (first)
			appendStringInfoString(&sql, " DO NOTHING");
	}

	t->apply_plan = SPI_prepare(sql.data, t->ncols, argtypes);
	if (t->apply_plan == NULL)
		elog(ERROR, "could not prepare the apply statement of consumer \"%s\": %s",
			 t->def->name, SPI_result_code_string(SPI_result));
	SPI_keepplan(t->apply_plan);

	if (t->def->delete_on_tombstone)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "DELETE FROM %s AS t USING ROWS FROM (", t->relname);
		for (int k = 0; k < t->nkeys; k++)
		{
			appendStringInfo(&sql, "%spg_catalog.unnest($%d)", k ? ", " : "", k + 1);
			argtypes[k] = t->cols[t->keycols[k]].arraytyp;
		}
		appendStringInfoString(&sql, ") AS u(");
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%sa%d", k ? ", " : "", k);
		appendStringInfoString(&sql, ") WHERE ");
		for (int k = 0; k < t->nkeys; k++)
			appendStringInfo(&sql, "%st.%s = u.a%d", k ? " AND " : "",
							 quote_identifier(t->cols[t->keycols[k]].name), k);
		t->delete_plan = SPI_prepare(sql.data, t->nkeys, argtypes);
		if (t->delete_plan == NULL)
			elog(ERROR, "could not prepare the delete statement of consumer \"%s\": %s",
				 t->def->name, SPI_result_code_string(SPI_result));
		SPI_keepplan(t->delete_plan);
	}
}

/*
 * Describe the target of a consumer, checking everything that can be checked
 * before a message arrives.  With check_privileges, the current role must be
 * allowed to do what the consumer will do.  Needs SPI and a transaction;
 * the result lives in CurrentMemoryContext, the plans are kept.
 */
PeTarget *
pe_target_open(PeConsumerDef *def, bool check_privileges)
{
	PeTarget   *t = palloc0(sizeof(PeTarget));
	Relation	rel;
	TupleDesc	desc;
	int			value_col = -1;

	t->def = def;
	rel = relation_open(def->target, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION && rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errhint("A consumer writes into a table or a partitioned table.")));
	t->relid = RelationGetRelid(rel);
	t->relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											RelationGetRelationName(rel));
	pe_check_column_map(def->column_map, rel);
	pe_check_format_options(t);

	if (check_privileges)
	{
		AclMode		need = ACL_INSERT;

		if (def->upsert)
			need |= ACL_UPDATE;
		if (def->delete_on_tombstone)
			need |= ACL_DELETE;
		if (pg_class_aclmask(t->relid, GetUserId(), need, ACLMASK_ALL) != need)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", RelationGetRelationName(rel)),
					 errdetail("A consumer in %s mode%s needs %s on its target.",
							   def->upsert ? "upsert" : "append",
							   def->delete_on_tombstone ? " with delete_on_tombstone" : "",
							   def->upsert ? (def->delete_on_tombstone ? "INSERT, UPDATE and DELETE" : "INSERT and UPDATE")
							   : "INSERT"),
					 errhint("Ask the table's owner to grant these privileges, or create the consumer as a role that has them.")));
	}

	desc = RelationGetDescr(rel);
	t->cols = palloc0(sizeof(PeColumn) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		PeColumn   *col = &t->cols[t->ncols];
		char	   *src = NULL;
		bool		mapped;
		Oid			infunc;

		if (att->attisdropped || att->attgenerated)
			continue;
		col->name = pstrdup(NameStr(att->attname));
		mapped = pe_column_map_get(def->column_map, col->name, &src);
		if (mapped && src == NULL)
			continue;			/* the user keeps this column out */
		if (!mapped && att->attidentity)
			continue;			/* identity columns number themselves */

		col->attnum = att->attnum;
		col->typid = att->atttypid;
		col->typmod = att->atttypmod;
		col->collation = att->attcollation;
		col->arraytyp = get_array_type(att->atttypid);
		if (!OidIsValid(col->arraytyp))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("column \"%s\" has type %s, which has no array type", col->name,
							format_type_be(att->atttypid))));
		get_typlenbyvalalign(col->typid, &col->typlen, &col->typbyval, &col->typalign);
		getTypeInputInfo(col->typid, &infunc, &col->ioparam);
		fmgr_info(infunc, &col->infunc);
		col->is_json = (getBaseType(col->typid) == JSONOID || getBaseType(col->typid) == JSONBOID);
		col->is_bytea = (getBaseType(col->typid) == BYTEAOID);
		if (att->atthasdef && !mapped)
			col->default_expr = pe_column_default(rel, att->attnum);

		if (mapped)
		{
			pe_set_source(col, src, def->format);
			if (col->source == PE_SRC_VALUE)
			{
				if (def->format == PE_FORMAT_JSON || def->format == PE_FORMAT_CSV)
				{
					/* the raw value next to decoded fields: fine */
				}
				value_col = t->ncols;
			}
		}
		else if (def->format == PE_FORMAT_JSON)
		{
			col->source = PE_SRC_FIELD;
			col->path = palloc(sizeof(char *));
			col->path[0] = col->name;
			col->npath = 1;
		}
		else if (def->format == PE_FORMAT_CSV)
		{
			col->source = PE_SRC_CSV;
			col->csv_index = t->ncsv++;
		}
		else
		{
			/* text and bytea: only the value column, chosen below */
			col->source = PE_SRC_VALUE;
			col->csv_index = -1;
		}
		if (col->source == PE_SRC_HEADERS || col->source == PE_SRC_HEADER)
			t->needs_headers = true;
		t->ncols++;
	}

	if (def->format == PE_FORMAT_TEXT || def->format == PE_FORMAT_BYTEA)
	{
		/*
		 * The whole value goes to the column mapped to $value, or else to the
		 * first unmapped column without a default; the other unmapped columns
		 * keep their defaults.
		 */
		int			keep = 0;

		if (value_col < 0)
		{
			for (int c = 0; c < t->ncols && value_col < 0; c++)
				if (t->cols[c].csv_index == -1 && t->cols[c].default_expr == NULL)
					value_col = c;
			for (int c = 0; c < t->ncols && value_col < 0; c++)
				if (t->cols[c].csv_index == -1)
					value_col = c;
		}
		for (int c = 0; c < t->ncols; c++)
		{
			if (t->cols[c].source == PE_SRC_VALUE && t->cols[c].csv_index == -1 && c != value_col)
				continue;		/* unmapped, not the value column: left out */
			if (c == value_col)
				t->cols[c].csv_index = 0;
			t->cols[keep++] = t->cols[c];
		}
		t->ncols = keep;
		if (value_col < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("no column of table %s takes the message value", RelationGetRelationName(rel)),
					 errhint("Map a column to \"$value\" in column_map.")));
	}

	if (t->ncols == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no column of table %s takes a value from the messages", RelationGetRelationName(rel))));

	if (!def->upsert && def->delete_on_tombstone)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delete_on_tombstone needs mode 'upsert'"),
				 errhint("In append mode every message is a new row; there is no row for a tombstone to delete.")));

	t->flat_json = (def->format == PE_FORMAT_JSON);
	for (int c = 0; c < t->ncols; c++)
	{
		if (t->cols[c].source != PE_SRC_FIELD)
			continue;
		t->cols[c].path0len = strlen(t->cols[c].path[0]);
		if (t->cols[c].npath != 1)
			t->flat_json = false;
	}

	pe_resolve_keys(t, rel);
	if (check_privileges && t->nkeys > 0)
	{
		for (int k = 0; k < t->nkeys; k++)
			if (def->upsert &&
				pg_class_aclcheck(t->relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK &&
				pg_attribute_aclcheck(t->relid, t->cols[t->keycols[k]].attnum, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied for column \"%s\" of table %s",
								t->cols[t->keycols[k]].name, RelationGetRelationName(rel)),
						 errdetail("An upsert reads its key columns; it needs SELECT on them."),
						 errhint("Ask the table's owner to grant SELECT on the key columns.")));
	}
	relation_close(rel, AccessShareLock);

	pe_build_statements(t);
	return t;
}

/* ---------------------------------------------------------------------
 * Decoding
 * ---------------------------------------------------------------------
 */

/* Found values of one message, per column, as text (or raw bytes). */
typedef struct PeFound
{
	bool		found;
	bool		isnull;
	char	   *text;
	size_t		len;
	bool		raw;			/* text holds raw bytes, not verified text */
	bool		json_string;	/* JSON string: a json column needs it quoted */
} PeFound;

typedef struct PeJsonState
{
	JsonLexContext *lex;
	PeTarget   *t;
	PeFound    *found;
	const char *path[PE_JSON_MAX_DEPTH];
	int			pending_col;	/* column whose field was just named */
	int			pending_level;
	int			ncaptures;		/* object/array values being captured */
	int			capture_col[PE_JSON_MAX_DEPTH];
	int			capture_level[PE_JSON_MAX_DEPTH];
	const char *capture_start[PE_JSON_MAX_DEPTH];
} PeJsonState;

static int
pe_json_match(PeJsonState *st, int level)
{
	for (int c = 0; c < st->t->ncols; c++)
	{
		PeColumn   *col = &st->t->cols[c];
		bool		ok;

		if (col->source != PE_SRC_FIELD || col->npath != level)
			continue;
		ok = true;
		for (int d = 0; d < level && ok; d++)
			ok = (strcmp(col->path[d], st->path[d]) == 0);
		if (ok)
			return c;
	}
	return -1;
}

static void
pe_json_ofield_start(void *state, char *fname, bool isnull)
{
	PeJsonState *st = state;
	int			level = st->lex->lex_level;	/* 1 for top-level fields */

	(void) isnull;
	st->pending_col = -1;
	if (level < 1 || level > PE_JSON_MAX_DEPTH)
		return;
	st->path[level - 1] = fname;
	st->pending_col = pe_json_match(st, level);
	st->pending_level = level;
}

static void
pe_json_ofield_end(void *state, char *fname, bool isnull)
{
	PeJsonState *st = state;

	(void) fname;
	(void) isnull;
	st->pending_col = -1;
}

static void
pe_json_struct_start(void *state)
{
	PeJsonState *st = state;

	if (st->pending_col >= 0 && st->lex->lex_level == st->pending_level &&
		st->ncaptures < PE_JSON_MAX_DEPTH)
	{
		st->capture_col[st->ncaptures] = st->pending_col;
		st->capture_level[st->ncaptures] = st->pending_level;
		st->capture_start[st->ncaptures] = st->lex->token_start;
		st->ncaptures++;
		st->pending_col = -1;
	}
}

static void
pe_json_struct_end(void *state)
{
	PeJsonState *st = state;
	int			k = st->ncaptures - 1;

	if (k >= 0 && st->lex->lex_level == st->capture_level[k])
	{
		PeFound    *f = &st->found[st->capture_col[k]];

		f->found = true;
		f->isnull = false;
		f->len = st->lex->prev_token_terminator - st->capture_start[k];
		f->text = pnstrdup(st->capture_start[k], f->len);
		f->json_string = false;
		st->ncaptures--;
	}
}

static void
pe_json_scalar(void *state, char *token, JsonTokenType type)
{
	PeJsonState *st = state;
	PeFound    *f;

	if (st->pending_col < 0 || st->lex->lex_level != st->pending_level)
		return;
	f = &st->found[st->pending_col];
	f->found = true;
	f->isnull = (type == JSON_TOKEN_NULL);
	f->text = token;
	f->len = token ? strlen(token) : 0;
	f->json_string = (type == JSON_TOKEN_STRING);
}

static void
pe_verify_text(const char *data, size_t len, const char *what)
{
	if (!pg_verifymbstr(data, len, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("message %s is not valid %s text", what, GetDatabaseEncodingName()),
				 errhint("Use the bytea format, or map the %s to a bytea column.", what)));
}

/*
 * The fast path for the common message: a flat JSON object whose strings
 * have no escapes, mapped to top-level columns.  It scans the object once
 * without copying what no column takes.  Returns false when the message
 * needs the full parser (escapes, or a column with a nested path); any
 * syntax error also returns false, so the full parser reports it.
 */
static bool
pe_json_is_number(const char *p, size_t n)
{
	size_t		i = 0;

	if (i < n && p[i] == '-')
		i++;
	if (i >= n || !isdigit((unsigned char) p[i]))
		return false;
	if (p[i] == '0')
		i++;
	else
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	if (i < n && p[i] == '.')
	{
		i++;
		if (i >= n || !isdigit((unsigned char) p[i]))
			return false;
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	}
	if (i < n && (p[i] == 'e' || p[i] == 'E'))
	{
		i++;
		if (i < n && (p[i] == '+' || p[i] == '-'))
			i++;
		if (i >= n || !isdigit((unsigned char) p[i]))
			return false;
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	}
	return i == n;
}

#define PE_WS(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')

static inline size_t
pe_json_skip_ws(const char *data, size_t len, size_t i)
{
	while (i < len && PE_WS(data[i]))
		i++;
	return i;
}

/* Scan a string starting after its opening quote; false if it has escapes. */
static bool
pe_json_scan_string(const char *data, size_t len, size_t *i, size_t *end)
{
	size_t		j = *i;

	while (j < len && data[j] != '"')
	{
		if (data[j] == '\\' || (unsigned char) data[j] < 0x20)
			return false;
		j++;
	}
	if (j >= len)
		return false;
	*end = j;
	*i = j + 1;
	return true;
}

static bool
pe_decode_json_fast(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	size_t		i = 0;

	if (!t->flat_json)
		return false;
	i = pe_json_skip_ws(data, len, i);
	if (i >= len || data[i] != '{')
		return false;
	i++;
	i = pe_json_skip_ws(data, len, i);
	if (i < len && data[i] == '}')
	{
		i++;
		goto tail;
	}
	for (;;)
	{
		size_t		kstart,
					kend,
					vstart,
					vend;
		int			col = -1;
		bool		is_string = false;

		/* key */
		i = pe_json_skip_ws(data, len, i);
		if (i >= len || data[i] != '"')
			return false;
		kstart = ++i;
		if (!pe_json_scan_string(data, len, &i, &kend))
			return false;
		i = pe_json_skip_ws(data, len, i);
		if (i >= len || data[i] != ':')
			return false;
		i++;
		i = pe_json_skip_ws(data, len, i);
		if (i >= len)
			return false;

		for (int c = 0; c < t->ncols; c++)
		{
			PeColumn   *pc = &t->cols[c];

			if (pc->source == PE_SRC_FIELD && pc->path0len == kend - kstart &&
				memcmp(pc->path[0], data + kstart, kend - kstart) == 0)
			{
				col = c;
				break;
			}
		}

		/* value */
		vstart = i;
		if (data[i] == '"')
		{
			vstart = ++i;
			if (!pe_json_scan_string(data, len, &i, &vend))
				return false;
			is_string = true;
		}
		else if (data[i] == '{' || data[i] == '[')
		{
			int			depth = 0;
			JsonLexContext *lex;
			JsonSemAction sem;

			for (; i < len; i++)
			{
				char		ch = data[i];

				if (ch == '"')
				{
					i++;
					while (i < len && data[i] != '"')
					{
						if (data[i] == '\\')
							i++;
						i++;
					}
					if (i >= len)
						return false;
				}
				else if (ch == '{' || ch == '[')
					depth++;
				else if (ch == '}' || ch == ']')
				{
					if (--depth == 0)
					{
						i++;
						break;
					}
				}
			}
			if (depth != 0)
				return false;
			vend = i;
			/* a nested value must be valid JSON whatever column takes it */
			lex = makeJsonLexContextCstringLen((char *) data + vstart, vend - vstart, GetDatabaseEncoding(), false);
			memset(&sem, 0, sizeof(sem));
			if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
				return false;
		}
		else
		{
			while (i < len && data[i] != ',' && data[i] != '}' && !PE_WS(data[i]))
				i++;
			vend = i;
			if (!((vend - vstart == 4 && memcmp(data + vstart, "true", 4) == 0) ||
				  (vend - vstart == 5 && memcmp(data + vstart, "false", 5) == 0) ||
				  (vend - vstart == 4 && memcmp(data + vstart, "null", 4) == 0) ||
				  pe_json_is_number(data + vstart, vend - vstart)))
				return false;
		}

		if (col >= 0)
		{
			PeFound    *f = &found[col];

			f->found = true;
			f->isnull = (!is_string && vend - vstart == 4 && memcmp(data + vstart, "null", 4) == 0);
			f->text = pnstrdup(data + vstart, vend - vstart);
			f->len = vend - vstart;
			f->json_string = is_string;
		}

		i = pe_json_skip_ws(data, len, i);
		if (i < len && data[i] == ',')
		{
			i++;
			continue;
		}
		if (i < len && data[i] == '}')
		{
			i++;
			break;
		}
		return false;
	}
tail:
	i = pe_json_skip_ws(data, len, i);
	return i == len;
}

static void
pe_decode_json(PeTarget *t, const char *data, size_t len, PeFound *found, const char *what)
{
	PeJsonState st;
	JsonSemAction sem;
	JsonParseErrorType rc;
	size_t		i = 0;

	while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
		i++;
	if (i == len || data[i] != '{')
	{
		/* still report malformed JSON as such */
		JsonLexContext *lex = makeJsonLexContextCstringLen((char *) data, len, GetDatabaseEncoding(), false);

		memset(&sem, 0, sizeof(sem));
		rc = pg_parse_json(lex, &sem);
		if (rc != JSON_SUCCESS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("message %s is not valid JSON: %s", what, json_errdetail(rc, lex))));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message %s is not a JSON object", what),
				 errhint("The json format maps the fields of a top-level object to columns.")));
	}

	memset(&st, 0, sizeof(st));
	st.lex = makeJsonLexContextCstringLen((char *) data, len, GetDatabaseEncoding(), true);
	st.t = t;
	st.found = found;
	st.pending_col = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_field_start = pe_json_ofield_start;
	sem.object_field_end = pe_json_ofield_end;
	sem.object_start = pe_json_struct_start;
	sem.object_end = pe_json_struct_end;
	sem.array_start = pe_json_struct_start;
	sem.array_end = pe_json_struct_end;
	sem.scalar = pe_json_scalar;
	rc = pg_parse_json(st.lex, &sem);
	if (rc != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("message %s is not valid JSON: %s", what, json_errdetail(rc, st.lex))));
}

static void
pe_decode_csv(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	StringInfoData field;
	size_t		i = 0;
	int			n = 0;
	char		d = t->csv_delim;
	char		q = t->csv_quote;

	/* one record; a trailing newline is not a field */
	while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
		len--;
	initStringInfo(&field);
	for (;;)
	{
		bool		quoted = false;
		int			c;

		resetStringInfo(&field);
		if (i < len && data[i] == q)
		{
			quoted = true;
			i++;
			for (;;)
			{
				if (i >= len)
					ereport(ERROR,
							(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
							 errmsg("unterminated quoted CSV field %d", n + 1)));
				if (data[i] == q)
				{
					if (i + 1 < len && data[i + 1] == q)
					{
						appendStringInfoChar(&field, q);
						i += 2;
						continue;
					}
					i++;
					break;
				}
				appendStringInfoChar(&field, data[i++]);
			}
			if (i < len && data[i] != d)
				ereport(ERROR,
						(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
						 errmsg("unexpected character after quoted CSV field %d", n + 1)));
		}
		else
		{
			while (i < len && data[i] != d)
			{
				if (data[i] == '\n' || data[i] == '\r')
					ereport(ERROR,
							(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
							 errmsg("CSV value holds more than one record"),
							 errhint("Each message must hold exactly one CSV record.")));
				appendStringInfoChar(&field, data[i++]);
			}
		}

		for (c = 0; c < t->ncols; c++)
			if (t->cols[c].source == PE_SRC_CSV && t->cols[c].csv_index == n)
				break;
		if (c == t->ncols)
			ereport(ERROR,
					(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
					 errmsg("CSV record has more than %d fields", t->ncsv),
					 errhint("The fields fill the target's columns in order; %d columns take CSV fields.", t->ncsv)));
		found[c].found = true;
		found[c].isnull = (!quoted && strcmp(field.data, t->csv_null) == 0);
		found[c].text = pnstrdup(field.data, field.len);
		found[c].len = field.len;
		n++;
		if (i >= len)
			break;
		i++;					/* the delimiter */
	}
	for (int c = 0; c < t->ncols; c++)
		if (t->cols[c].source == PE_SRC_CSV && !found[c].found && t->cols[c].default_expr == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
					 errmsg("CSV record has %d fields, expected %d", n, t->ncsv),
					 errhint("Missing trailing fields are allowed only for columns with a default.")));
}

static bool
pe_message_header(PeMessage *msg, const char *name, const char **val, size_t *len)
{
	if (msg->hdrs)
	{
		const void *v;

		if (rd_kafka_header_get_last(msg->hdrs, name, &v, len) != RD_KAFKA_RESP_ERR_NO_ERROR)
			return false;
		*val = v;
		return true;
	}
	if (msg->headers_jsonb)
	{
		JsonbValue	k;
		JsonbValue *v;

		k.type = jbvString;
		k.val.string.val = (char *) name;
		k.val.string.len = strlen(name);
		v = findJsonbValueFromContainer(&msg->headers_jsonb->root, JB_FOBJECT, &k);
		if (v == NULL)
			return false;
		if (v->type == jbvString)
		{
			*val = v->val.string.val;
			*len = v->val.string.len;
		}
		else
		{
			*val = NULL;
			*len = 0;
		}
		return true;
	}
	return false;
}

/* The message's headers as a jsonb object of strings (null for null values). */
Jsonb *
pe_message_headers(PeMessage *msg)
{
	StringInfoData buf;
	size_t		idx = 0;
	const char *name;
	const void *val;
	size_t		len;
	bool		first = true;

	if (msg->headers_jsonb)
		return msg->headers_jsonb;
	if (msg->hdrs == NULL)
		return NULL;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	while (rd_kafka_header_get_all(msg->hdrs, idx++, &name, &val, &len) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		char	   *n = pnstrdup(name, strlen(name));

		if (!first)
			appendStringInfoString(&buf, ", ");
		first = false;
		pe_verify_text(n, strlen(n), "header name");
		escape_json(&buf, n);
		appendStringInfoString(&buf, ": ");
		if (val == NULL)
			appendStringInfoString(&buf, "null");
		else
		{
			char	   *v = pnstrdup(val, len);

			if (strlen(v) != len || !pg_verifymbstr(v, len, true))
			{
				/* binary header: keep it, hex-encoded, rather than fail */
				StringInfoData hex;

				initStringInfo(&hex);
				appendStringInfoString(&hex, "\\x");
				for (size_t i = 0; i < len; i++)
					appendStringInfo(&hex, "%02x", ((const unsigned char *) val)[i]);
				escape_json(&buf, hex.data);
			}
			else
				escape_json(&buf, v);
		}
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

Datum
pe_bytes_to_bytea(const char *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

static Datum
pe_input(PeColumn *col, const char *text)
{
	return InputFunctionCall(&col->infunc, (char *) text, col->ioparam, col->typmod);
}

/* Convert raw bytes (key, value, header) for a column. */
static Datum
pe_raw_value(PeColumn *col, const char *data, size_t len, const char *what)
{
	char	   *s;

	if (col->is_bytea)
		return pe_bytes_to_bytea(data, len);
	pe_verify_text(data, len, what);
	s = pnstrdup(data, len);
	return pe_input(col, s);
}

static Datum
pe_found_value(PeColumn *col, PeFound *f)
{
	if (col->is_json && f->json_string)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		escape_json(&buf, f->text);
		return pe_input(col, buf.data);
	}
	return pe_input(col, f->text);
}

/*
 * Fill the key columns of a tombstone from the message key: a JSON object's
 * fields by column name (or column_map path), or the whole key for a
 * single key column.
 */
static void
pe_decode_tombstone_key(PeTarget *t, PeMessage *msg, PeRow *row)
{
	PeFound    *found = palloc0(sizeof(PeFound) * t->ncols);
	bool		json_key = false;

	if (msg->key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tombstone without a key"),
				 errhint("A tombstone (null value) deletes the row of its key; this one has no key.")));
	pe_verify_text(msg->key, msg->key_len, "key");
	for (size_t i = 0; i < msg->key_len; i++)
	{
		if (msg->key[i] == ' ' || msg->key[i] == '\t' || msg->key[i] == '\n' || msg->key[i] == '\r')
			continue;
		json_key = (msg->key[i] == '{');
		break;
	}
	if (json_key)
		pe_decode_json(t, msg->key, msg->key_len, found, "key");

	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];
		PeColumn   *col = &t->cols[c];

		if (col->source == PE_SRC_KEY || (!json_key && t->nkeys == 1))
		{
			row->values[c] = pe_raw_value(col, msg->key, msg->key_len, "key");
			row->nulls[c] = false;
		}
		else if (json_key && found[c].found && !found[c].isnull)
		{
			row->values[c] = pe_found_value(col, &found[c]);
			row->nulls[c] = false;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cannot find key column \"%s\" in the key of a tombstone", col->name),
					 errhint("Use a JSON object key with a field per key column, or a plain key for a single key column.")));
	}
}

static void
pe_decode_one(PeTarget *t, PeMessage *msg, PeRow *row)
{
	PeConsumerDef *def = t->def;
	PeFound    *found;

	row->values = palloc0(sizeof(Datum) * t->ncols);
	row->nulls = palloc(sizeof(bool) * t->ncols);
	memset(row->nulls, true, sizeof(bool) * t->ncols);

	if (msg->value == NULL)
	{
		if (!def->delete_on_tombstone)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message has a null value (a tombstone)"),
					 errhint("Create the consumer with delete_on_tombstone => true to delete the key's row on a tombstone.")));
		row->tombstone = true;
		pe_decode_tombstone_key(t, msg, row);
		return;
	}

	found = palloc0(sizeof(PeFound) * t->ncols);
	switch (def->format)
	{
		case PE_FORMAT_JSON:
			pe_verify_text(msg->value, msg->value_len, "value");
			if (!pe_decode_json_fast(t, msg->value, msg->value_len, found))
			{
				memset(found, 0, sizeof(PeFound) * t->ncols);
				pe_decode_json(t, msg->value, msg->value_len, found, "value");
			}
			break;
		case PE_FORMAT_CSV:
			pe_verify_text(msg->value, msg->value_len, "value");
			pe_decode_csv(t, msg->value, msg->value_len, found);
			break;
		case PE_FORMAT_TEXT:
		case PE_FORMAT_BYTEA:
			break;
	}

	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];

		switch (col->source)
		{
			case PE_SRC_FIELD:
			case PE_SRC_CSV:
				if (found[c].found && !found[c].isnull)
				{
					row->values[c] = pe_found_value(col, &found[c]);
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_VALUE:
				if (def->format == PE_FORMAT_BYTEA && !col->is_bytea)
				{
					/* bytea format into a non-bytea column: hex text */
					row->values[c] = pe_input(col, TextDatumGetCString(DirectFunctionCall1(byteaout,
																							 pe_bytes_to_bytea(msg->value, msg->value_len))));
				}
				else
					row->values[c] = pe_raw_value(col, msg->value, msg->value_len, "value");
				row->nulls[c] = false;
				break;
			case PE_SRC_KEY:
				if (msg->key)
				{
					row->values[c] = pe_raw_value(col, msg->key, msg->key_len, "key");
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_TOPIC:
				row->values[c] = pe_input(col, msg->topic);
				row->nulls[c] = false;
				break;
			case PE_SRC_PARTITION:
				if (col->typid == INT4OID)
					row->values[c] = Int32GetDatum(msg->partition);
				else
					row->values[c] = pe_input(col, psprintf("%d", msg->partition));
				row->nulls[c] = false;
				break;
			case PE_SRC_OFFSET:
				if (col->typid == INT8OID)
					row->values[c] = Int64GetDatum(msg->offset);
				else
					row->values[c] = pe_input(col, psprintf(INT64_FORMAT, msg->offset));
				row->nulls[c] = false;
				break;
			case PE_SRC_TIMESTAMP:
				if (msg->timestamp_ms >= 0)
				{
					TimestampTz ts = (TimestampTz) (msg->timestamp_ms -
													(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000) * 1000;

					if (col->typid == TIMESTAMPTZOID)
						row->values[c] = TimestampTzGetDatum(ts);
					else
						row->values[c] = pe_input(col, DatumGetCString(DirectFunctionCall1(timestamptz_out,
																							 TimestampTzGetDatum(ts))));
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_HEADERS:
				{
					Jsonb	   *h = pe_message_headers(msg);

					if (h)
					{
						if (col->typid == JSONBOID)
							row->values[c] = JsonbPGetDatum(h);
						else
							row->values[c] = pe_input(col, JsonbToCString(NULL, &h->root, VARSIZE(h)));
						row->nulls[c] = false;
					}
				}
				break;
			case PE_SRC_HEADER:
				{
					const char *v;
					size_t		len;

					if (pe_message_header(msg, col->header, &v, &len) && v != NULL)
					{
						row->values[c] = pe_raw_value(col, v, len, "header");
						row->nulls[c] = false;
					}
				}
				break;
		}
	}
}

/* ---------------------------------------------------------------------
 * Applying
 * ---------------------------------------------------------------------
 */

/*
 * Errors that belong to the rows of a statement, and so are isolated into
 * dead letters: data exceptions, integrity violations, cardinality, program
 * limits (a value too large for an index), and errors raised by triggers.
 */
bool
pe_error_is_row_specific(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:
		case ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION:
		case ERRCODE_CARDINALITY_VIOLATION:
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:
		case ERRCODE_PLPGSQL_ERROR:
			return true;
		default:
			return false;
	}
}

static void
pe_add_dead(PeBatchResult *res, int msg_index, ErrorData *edata)
{
	PeDeadLetter *dl = palloc(sizeof(PeDeadLetter));

	dl->msg_index = msg_index;
	if (edata->detail)
		dl->error = psprintf("%s: %s", edata->message, edata->detail);
	else
		dl->error = pstrdup(edata->message);
	strlcpy(dl->sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(dl->sqlstate));
	res->dead = lappend(res->dead, dl);
}

/* Execute the insert (or delete) for rows[0..n) in a subtransaction. */
static ErrorData *
pe_try_statement(PeTarget *t, PeRow **rows, int n, bool is_delete, int64 *processed)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int			nargs = is_delete ? t->nkeys : t->ncols;
	Datum	   *args = palloc(sizeof(Datum) * nargs);
	Datum	   *elems = palloc(sizeof(Datum) * n);
	bool	   *enulls = palloc(sizeof(bool) * n);
	ErrorData  *volatile edata = NULL;

	for (int a = 0; a < nargs; a++)
	{
		int			c = is_delete ? t->keycols[a] : a;
		PeColumn   *col = &t->cols[c];
		int			dims[1] = {n};
		int			lbs[1] = {1};

		for (int i = 0; i < n; i++)
		{
			elems[i] = rows[i]->values[c];
			enulls[i] = rows[i]->nulls[c];
		}
		args[a] = PointerGetDatum(construct_md_array(elems, enulls, 1, dims, lbs, col->typid,
													 col->typlen, col->typbyval, col->typalign));
	}

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		int			rc = SPI_execute_plan(is_delete ? t->delete_plan : t->apply_plan, args, NULL, false, 0);

		if (rc < 0)
			elog(ERROR, "could not apply a batch of consumer \"%s\": %s", t->def->name, SPI_result_code_string(rc));
		*processed = SPI_processed;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();

	for (int a = 0; a < nargs; a++)
		pfree(DatumGetPointer(args[a]));
	pfree(args);
	pfree(elems);
	pfree(enulls);
	return edata;
}

/* Apply rows[0..n); isolate the rows that fail by halving. */
static void
pe_apply_rows(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res)
{
	int64		processed = 0;
	ErrorData  *edata;

	if (n == 0)
		return;
	edata = pe_try_statement(t, rows, n, is_delete, &processed);
	if (edata == NULL)
	{
		if (is_delete)
			res->deleted += n;
		else
			res->applied += n;
		return;
	}
	if (!pe_error_is_row_specific(edata->sqlerrcode))
		ReThrowError(edata);
	if (n == 1)
	{
		pe_add_dead(res, rows[0]->msg_index, edata);
		return;
	}
	FreeErrorData(edata);
	pe_apply_rows(t, rows, n / 2, is_delete, res);
	pe_apply_rows(t, rows + n / 2, n - n / 2, is_delete, res);
}

static uint32
pe_row_hash(PeTarget *t, PeRow *row, bool *hasnull)
{
	uint32		h = 0;

	*hasnull = false;
	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];

		if (row->nulls[c])
		{
			*hasnull = true;
			return 0;
		}
		h = hash_combine(h, DatumGetUInt32(FunctionCall1Coll(t->cols[c].hash_fn, t->cols[c].collation,
															 row->values[c])));
	}
	return h;
}

static bool
pe_row_keys_equal(PeTarget *t, PeRow *a, PeRow *b)
{
	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];

		if (!DatumGetBool(FunctionCall2Coll(t->cols[c].eq_fn, t->cols[c].collation, a->values[c], b->values[c])))
			return false;
	}
	return true;
}

/* Is message b newer than message a (same key)? */
static bool
pe_newer(PeMessage *a, PeMessage *b)
{
	if (a->partition == b->partition)
		return b->offset > a->offset;
	return b->timestamp_ms >= a->timestamp_ms;
}

/* Order rows by their keys, as the unique index does (NULL keys last). */
static int
pe_row_key_cmp(const void *a, const void *b, void *arg)
{
	PeTarget   *t = arg;
	PeRow	   *ra = *(PeRow *const *) a;
	PeRow	   *rb = *(PeRow *const *) b;

	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];
		int32		r;

		if (ra->nulls[c] || rb->nulls[c])
		{
			if (ra->nulls[c] != rb->nulls[c])
				return ra->nulls[c] ? 1 : -1;
			continue;
		}
		r = DatumGetInt32(FunctionCall2Coll(t->cols[c].cmp_fn, t->cols[c].collation,
											ra->values[c], rb->values[c]));
		if (r != 0)
			return r;
	}
	return 0;
}

static bool
pe_can_sort(PeTarget *t)
{
	for (int k = 0; k < t->nkeys; k++)
		if (t->cols[t->keycols[k]].cmp_fn == NULL)
			return false;
	return t->nkeys > 0;
}

/* Keep only the newest row per key (upsert mode). */
static void
pe_dedup(PeTarget *t, PeMessage *msgs, PeRow *rows, int nrows)
{
	int			size = 16;
	int		   *table;

	while (size < nrows * 2)
		size <<= 1;
	table = palloc(sizeof(int) * size);
	memset(table, -1, sizeof(int) * size);
	for (int r = 0; r < nrows; r++)
	{
		bool		hasnull;
		uint32		h = pe_row_hash(t, &rows[r], &hasnull);
		int			pos;

		if (hasnull)
			continue;			/* cannot conflict; the statement judges it */
		rows[r].hash = h;
		pos = h & (size - 1);
		for (;;)
		{
			int			o = table[pos];

			if (o < 0)
			{
				table[pos] = r;
				break;
			}
			if (rows[o].hash == h && pe_row_keys_equal(t, &rows[o], &rows[r]))
			{
				if (pe_newer(&msgs[rows[o].msg_index], &msgs[rows[r].msg_index]))
				{
					rows[o].superseded = true;
					table[pos] = r;
				}
				else
					rows[r].superseded = true;
				break;
			}
			pos = (pos + 1) & (size - 1);
		}
	}
	pfree(table);
}

/*
 * Decode and apply msgs[0..n) in the current transaction.  SPI must be
 * connected and a snapshot active.  Messages that fail go to res->dead; an
 * error that is not about rows propagates.
 */
void
pe_target_apply(PeTarget *t, PeMessage *msgs, int n, PeBatchResult *res)
{
	PeRow	   *rows = palloc0(sizeof(PeRow) * Max(n, 1));
	volatile int nrows = 0;
	volatile int i = 0;
	PeRow	  **ins;
	PeRow	  **del;
	int			nins = 0;
	int			ndel = 0;
	Oid			save_userid;
	int			save_sec;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->def->owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);

	/*
	 * Decode in one subtransaction; a message whose decoding raises an error
	 * becomes a dead letter and decoding resumes after it in a new one.
	 */
	while (i < n)
	{
		MemoryContext cxt = CurrentMemoryContext;
		ResourceOwner owner = CurrentResourceOwner;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(cxt);
		PG_TRY();
		{
			for (; i < n; i++)
			{
				CHECK_FOR_INTERRUPTS();
				rows[nrows].msg_index = i;
				pe_decode_one(t, &msgs[i], &rows[nrows]);
				nrows++;
			}
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			if (!pe_error_is_row_specific(edata->sqlerrcode))
			{
				SetUserIdAndSecContext(save_userid, save_sec);
				ReThrowError(edata);
			}
			pe_add_dead(res, i, edata);
			memset(&rows[nrows], 0, sizeof(PeRow));
			i++;
		}
		PG_END_TRY();
	}

	if (t->def->upsert && t->nkeys > 0)
		pe_dedup(t, msgs, rows, nrows);

	ins = palloc(sizeof(PeRow *) * Max(nrows, 1));
	del = palloc(sizeof(PeRow *) * Max(nrows, 1));
	for (int r = 0; r < nrows; r++)
	{
		if (rows[r].superseded)
			res->applied++;		/* a newer message of its key wins */
		else if (rows[r].tombstone)
			del[ndel++] = &rows[r];
		else
			ins[nins++] = &rows[r];
	}

	/*
	 * Apply upserts in key order: the index and heap pages are then visited
	 * in order, as INSERT ... SELECT DISTINCT ON (key) ... ORDER BY would,
	 * and two slots touching the same keys lock them in the same order.
	 */
	if (t->def->upsert && pe_can_sort(t))
	{
		qsort_arg(ins, nins, sizeof(PeRow *), pe_row_key_cmp, t);
		qsort_arg(del, ndel, sizeof(PeRow *), pe_row_key_cmp, t);
	}

	/*
	 * On an error the (sub)transaction abort restores the user id; on
	 * success we do.
	 */
	pe_apply_rows(t, ins, nins, false, res);
	pe_apply_rows(t, del, ndel, true, res);
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* Release what pe_target_open() kept (its prepared statements). */
void
pe_target_close(PeTarget *t)
{
	if (t->apply_plan)
		SPI_freeplan(t->apply_plan);
	if (t->delete_plan)
		SPI_freeplan(t->delete_plan);
	t->apply_plan = NULL;
	t->delete_plan = NULL;
}

/*-------------------------------------------------------------------------
 *
 * target.c
 *	  A consumer's target table as the data path sees it: which column takes
 *	  which part of a message (column_map, the format's defaults, message
 *	  metadata), the format's options, the key columns and their hash and
 *	  order functions, and the checks that can be made before a message
 *	  arrives, including the caller's privileges at create_consumer().
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
#include "catalog/index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "parser/parse_relation.h"
#include "rewrite/rewriteHandler.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "datapath.h"

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

	if (format != PE_FORMAT_JSON && format != PE_FORMAT_AVRO)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("column_map maps column \"%s\" to the field \"%s\", but the format is neither json nor avro", col->name, src),
				 errhint("Field paths apply to the json and avro formats; other formats take message metadata ($key, $value, ...).")));

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
			if (strcmp(name, "key_format") == 0)
				continue;		/* any format's */
			if (def->format != PE_FORMAT_CSV ||
				(strcmp(name, "delimiter") != 0 && strcmp(name, "quote") != 0 && strcmp(name, "null") != 0))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 def->format == PE_FORMAT_CSV
						 ? errmsg("unknown format option \"%s\"", name)
						 : errmsg("format option \"%s\" applies only to the csv format", name),
						 errhint("The csv format takes \"delimiter\", \"quote\" and \"null\"; every format takes \"key_format\".")));
		}
	}

	/* how keys are read: text (a JSON object or a plain value), or Avro in the wire format */
	{
		char	   *kf = pe_format_option(def->format_options, "key_format", "text");

		if (strcmp(kf, "avro") == 0)
			t->key_avro = true;
		else if (strcmp(kf, "text") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown key_format \"%s\"", kf),
					 errhint("Use 'text' (a JSON object with a field per key column, or a plain value) or 'avro'.")));
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

/*
 * Whether a usable unique index (valid, immediate, without a predicate or
 * expressions) has all its columns among atts: rows are then unique on
 * them.  With exactly, its columns must be atts (distinct) themselves, as
 * ON CONFLICT's arbiter.  Also change capture's check of its key columns.
 */
bool
pe_unique_index_on(Relation rel, const AttrNumber *atts, int natts, bool exactly)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = idx->rd_index;

		if (form->indisunique && form->indimmediate && form->indisvalid &&
			(!exactly || form->indnkeyatts == natts) &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indexprs, NULL))
		{
			bool		all = true;

			for (int j = 0; j < form->indnkeyatts && all; j++)
			{
				bool		in = false;

				for (int k = 0; k < natts; k++)
					if (form->indkey.values[j] == atts[k])
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

/* The target's upsert keys are those of a usable unique index (ON CONFLICT's arbiter). */
static bool
pe_target_keys_unique(Relation rel, PeTarget *t)
{
	AttrNumber *atts = palloc(sizeof(AttrNumber) * Max(t->nkeys, 1));
	bool		unique;

	for (int k = 0; k < t->nkeys; k++)
		atts[k] = t->cols[t->keycols[k]].attnum;
	unique = pe_unique_index_on(rel, atts, t->nkeys, true);
	pfree(atts);
	return unique;
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

	if (def->upsert && !pe_target_keys_unique(rel, t))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("key columns of consumer \"%s\" are not covered by a unique index or primary key of table %s",
						def->name, RelationGetRelationName(rel)),
				 errhint("Create a unique index on exactly the key columns; partial, expression and deferrable indexes cannot be used.")));

	/* de-duplication needs hash and equality for each key type */
	for (int k = 0; k < t->nkeys; k++)
	{
		PeColumn   *col = &t->cols[t->keycols[k]];
		TypeCacheEntry *tc = lookup_type_cache(col->typid, TYPECACHE_HASH_PROC_FINFO | TYPECACHE_EQ_OPR | TYPECACHE_EQ_OPR_FINFO |
											   TYPECACHE_CMP_PROC_FINFO);

		if (!OidIsValid(tc->hash_proc_finfo.fn_oid) || !OidIsValid(tc->eq_opr_finfo.fn_oid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column \"%s\" has type %s, which has no hash function", col->name,
							format_type_be(col->typid)),
					 errhint("Use key columns of hashable types.")));
		col->hash_fn = &tc->hash_proc_finfo;
		col->eq_fn = &tc->eq_opr_finfo;
		col->eq_opr = tc->eq_opr;
		col->cmp_fn = OidIsValid(tc->cmp_proc_finfo.fn_oid) ? &tc->cmp_proc_finfo : NULL;

		/*
		 * text and varchar under a deterministic collation are equal only
		 * when their bytes are: de-duplication and the apply's lock order
		 * then need no collation (strcoll was a tenth of a busy slot).
		 */
		col->bytewise = (getBaseType(col->typid) == TEXTOID || getBaseType(col->typid) == VARCHAROID) &&
			OidIsValid(col->collation) && get_collation_isdeterministic(col->collation);
	}
}

/*
 * A column's type, and what the data path needs of it.  A type without an
 * array type (an array type: PostgreSQL 15 has no arrays of arrays) goes
 * into the statements as text and is cast back there; an array column also
 * knows its element, for decoders that build its values element by element.
 */
static void
pe_column_type(PeColumn *col, Oid typid, int32 typmod, Oid collation)
{
	Oid			infunc;
	int32		basemod = typmod;
	Oid			base = getBaseTypeAndTypmod(typid, &basemod);

	col->typid = typid;
	col->typmod = typmod;
	col->collation = collation;
	col->arraytyp = get_array_type(typid);
	col->cast = "";
	if (!OidIsValid(col->arraytyp))
	{
		col->arraytyp = TEXTARRAYOID;
		col->via_text = true;
		col->cast = psprintf("::%s", format_type_extended(typid, typmod,
														  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
	}
	get_typlenbyvalalign(typid, &col->typlen, &col->typbyval, &col->typalign);
	getTypeInputInfo(typid, &infunc, &col->ioparam);
	fmgr_info(infunc, &col->infunc);
	col->is_json = (base == JSONOID || base == JSONBOID);
	col->is_bytea = (base == BYTEAOID);
	col->is_domain = (base != typid);
	col->numeric_typmod = base == NUMERICOID ? basemod : -1;
	col->elemtyp = get_element_type(base);
	if (col->via_text || OidIsValid(col->elemtyp))
	{
		Oid			outfunc;
		bool		varlena;

		getTypeOutputInfo(base, &outfunc, &varlena);
		fmgr_info(outfunc, &col->outfunc);
	}
	if (OidIsValid(col->elemtyp))
	{
		col->elem = palloc0(sizeof(PeColumn));
		col->elem->name = col->name;
		/* a typmod of an array column is its elements' (varchar(10)[]) */
		pe_column_type(col->elem, col->elemtyp, base == typid ? typmod : -1, collation);
	}
}

/*
 * Describe the target of a consumer, checking everything that can be checked
 * before a message arrives.  With check_privileges, the current role must be
 * allowed to do what the consumer will do.  Needs SPI and a transaction;
 * the result lives in CurrentMemoryContext, the plans are kept.
 */
static PeTarget *
pe_target_describe(PeConsumerDef *def, bool check_privileges)
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
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a temporary table", RelationGetRelationName(rel)),
				 errdetail("A temporary table belongs to the session that created it; the consumer's workers cannot write into it."),
				 errhint("Use a permanent or an unlogged table.")));
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

		if (att->attisdropped || att->attgenerated)
			continue;
		col->name = pstrdup(NameStr(att->attname));
		mapped = pe_column_map_get(def->column_map, col->name, &src);
		if (mapped && src == NULL)
			continue;			/* the user keeps this column out */
		if (!mapped && att->attidentity)
			continue;			/* identity columns number themselves */

		col->attnum = att->attnum;
		pe_column_type(col, att->atttypid, att->atttypmod, att->attcollation);
		if (att->atthasdef && !mapped)
			col->default_expr = pe_column_default(rel, att->attnum);

		if (mapped)
		{
			pe_set_source(col, src, def->format);
			if (col->source == PE_SRC_VALUE)
			{
				if (def->format == PE_FORMAT_JSON || def->format == PE_FORMAT_CSV || def->format == PE_FORMAT_AVRO)
				{
					/* the raw value next to decoded fields: fine */
				}
				value_col = t->ncols;
			}
		}
		else if (def->format == PE_FORMAT_JSON || def->format == PE_FORMAT_AVRO)
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


/*
 * A target's description and prepared statements, in a memory context of
 * its own under the current one: a worker describes its target again after
 * every ALTER TABLE (and after the relcache invalidations autovacuum
 * sends), and pe_target_close() gives all of it back at once.
 */
PeTarget *
pe_target_open(PeConsumerDef *def, bool check_privileges)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "pipeline_ext target",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	PeTarget   *t = pe_target_describe(def, check_privileges);

	t->cxt = cxt;
	MemoryContextSwitchTo(old);
	return t;
}

/* Release what pe_target_open() kept: its statements and its memory. */
void
pe_target_close(PeTarget *t)
{
	if (t->apply_plan)
		SPI_freeplan(t->apply_plan);
	if (t->delete_plan)
		SPI_freeplan(t->delete_plan);
	pe_avro_close(t);
	MemoryContextDelete(t->cxt);
}

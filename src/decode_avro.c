/*-------------------------------------------------------------------------
 *
 * decode_avro.c
 *	  The Avro format: a message's value in Confluent's wire format (byte 0
 *	  is 0, bytes 1-4 the writer schema's id in the registry, big-endian,
 *	  then the record in Avro's binary encoding) decoded with its writer
 *	  schema (avro-c) straight into the values of the target's columns.
 *
 *	  Writer schemas are fetched from the connection's registry by id
 *	  (registry.c) once, and kept with what each column needs: the field
 *	  indexes of its path (a column's name, or a column_map path into
 *	  nested records) and the logical type of the field, which avro-c does
 *	  not read, so it is read here from the schema's JSON.  So messages of
 *	  every version of a subject go into the same table: a field a version
 *	  lacks leaves its column null (and so to its default).
 *
 *	  Values: ["null", T] is a nullable T, other unions their current
 *	  branch; logical types date, time-millis/-micros, timestamp-millis/
 *	  -micros (timestamptz), local-timestamp-millis/-micros (timestamp),
 *	  decimal (numeric, with the column's own precision checked) and uuid
 *	  (a string); enums their symbol; bytes and fixed bytea; records,
 *	  arrays and maps JSON for json and jsonb columns (a target cannot have
 *	  array columns: target.c).  Other columns take a value
 *	  through their type's input function (a numeric from an int, a text
 *	  from a long, an enum type from a symbol).
 *
 *	  A value that is not in the wire format, names an id the registry does
 *	  not have, does not decode with its schema, or does not fit its column
 *	  is an error about the message (a dead letter).  A registry that does
 *	  not answer is not: the batch fails, and is tried again.
 *
 * IDENTIFICATION
 *	  src/decode_avro.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <avro.h>

#include "catalog/pg_type.h"
#include "common/int.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "avro_logical.h"
#include "connection.h"
#include "datapath.h"
#include "registry.h"

/* schemas kept per target, at most; then they are all fetched again */
#define PE_AVRO_MAX_SCHEMAS 1000
/* how long a registry's "no such id" is believed before it is asked again */
#define PE_AVRO_MISSING_MS 10000

/* One column's way into the records of one writer schema. */
typedef struct PeAvroPath
{
	int			n;				/* fields to follow; -1: not in this schema */
	int		   *idx;			/* their indexes, record by record */
	PeAvroLogical logical;		/* the field's logical type */
	int			scale;			/* a decimal's */
	bool		has_default;	/* not in this schema: the reader's default ... */
	Datum		dflt;			/* ... for the column */
} PeAvroPath;

/* A writer schema, by its registry id. */
typedef struct PeAvroSchema
{
	int32		id;				/* hash key */
	bool		missing;		/* the registry said it has no such id ... */
	TimestampTz missing_at;		/* ... then */
	char	   *why;			/* ... or why it cannot be read */
	avro_schema_t schema;
	avro_value_iface_t *iface;
	avro_value_t value;			/* a record read into, again and again */
	Jsonb	   *doc;			/* its JSON, for resolving it for a target again */
	PeAvroPath *paths;			/* indexed like the target's columns; NULL: to resolve */
} PeAvroSchema;

typedef struct PeAvroCache
{
	MemoryContext cxt;			/* all of it, beside avro-c's own (outlives a target's description) */
	HTAB	   *schemas;
	PeAvroSchema *last;			/* the schema found last (a topic's messages mostly share one) */
	avro_reader_t reader;
	int32		reader_id;		/* the subject's latest version asked for (0: never) */
	Jsonb	   *reader_doc;		/* ... its JSON, or NULL: no such subject */
} PeAvroCache;

/* ---- the schema's JSON: logical types ---------------------------------- */

JsonbValue *
pe_avro_json_key(JsonbContainer *obj, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
}

static bool
pe_avro_json_is(JsonbValue *v, const char *s)
{
	return v && v->type == jbvString && v->val.string.len == (int) strlen(s) &&
		memcmp(v->val.string.val, s, v->val.string.len) == 0;
}

/*
 * The definition of a named type (a record, enum or fixed defined earlier
 * and referred to by its name) anywhere in a schema's JSON: by its full
 * name (namespace.name) or its short name.
 */
static JsonbContainer *
pe_avro_json_named(JsonbContainer *node, const char *name, const char *ns, int depth)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (depth > 64)
		return NULL;
	if (JsonContainerIsObject(node))
	{
		JsonbValue *n = pe_avro_json_key(node, "name");
		JsonbValue *space = pe_avro_json_key(node, "namespace");
		JsonbValue *type = pe_avro_json_key(node, "type");

		if (space && space->type == jbvString)
			ns = pnstrdup(space->val.string.val, space->val.string.len);
		if (n && n->type == jbvString &&
			(pe_avro_json_is(type, "record") || pe_avro_json_is(type, "enum") || pe_avro_json_is(type, "fixed") ||
			 pe_avro_json_is(type, "error")))
		{
			char	   *shortname = pnstrdup(n->val.string.val, n->val.string.len);
			char	   *full = (strchr(shortname, '.') || ns == NULL) ? shortname : psprintf("%s.%s", ns, shortname);
			const char *dot = strrchr(full, '.');

			if (strcmp(full, name) == 0 || strcmp(dot ? dot + 1 : full, name) == 0)
				return node;
		}
	}
	/* the definitions inside: fields, their types, items, values, branches */
	it = JsonbIteratorInit(node);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvBinary)
		{
			JsonbContainer *found = pe_avro_json_named(v.val.binary.data, name, ns, depth + 1);

			if (found)
				return found;
		}
	return NULL;
}

/* One type of a schema's JSON as an object: its definition when given by name; NULL for a primitive's name. */
JsonbContainer *
pe_avro_json_object(JsonbValue *t, Jsonb *doc)
{
	if (t && t->type == jbvString && doc)
	{
		char	   *name = pnstrdup(t->val.string.val, t->val.string.len);

		return JB_ROOT_IS_SCALAR(doc) ? NULL : pe_avro_json_named(&doc->root, name, NULL, 0);
	}
	if (t && t->type == jbvBinary && JsonContainerIsObject(t->val.binary.data))
		return t->val.binary.data;
	return NULL;
}

/*
 * A type in a schema's JSON (doc, for types given by name) with a nullable
 * union taken apart: the one branch that is not "null" of ["null", T], the
 * type itself otherwise.  NULL for a primitive's name, or a union of
 * several types.
 */
static JsonbContainer *
pe_avro_json_type(JsonbValue *t, Jsonb *doc)
{
	if (t == NULL)
		return NULL;
	if (t->type == jbvBinary && JsonContainerIsArray(t->val.binary.data))
	{
		JsonbValue *found = NULL;
		int			n = JsonContainerSize(t->val.binary.data);

		for (int i = 0; i < n; i++)
		{
			JsonbValue *b = getIthJsonbValueFromContainer(t->val.binary.data, i);

			if (pe_avro_json_is(b, "null"))
				continue;
			if (found)
				return NULL;
			found = b;
		}
		return pe_avro_json_object(found, doc);
	}
	return pe_avro_json_object(t, doc);
}

/* The logical type of a type object of a schema's JSON (a decimal's scale and precision too). */
PeAvroLogical
pe_avro_logical(JsonbContainer *type, int *scale, int *precision)
{
	JsonbValue *lt = pe_avro_json_key(type, "logicalType");
	static const struct
	{
		const char *name;
		PeAvroLogical logical;
	}			names[] = {
		{"date", PE_AVRO_DATE},
		{"time-millis", PE_AVRO_TIME_MILLIS},
		{"time-micros", PE_AVRO_TIME_MICROS},
		{"timestamp-millis", PE_AVRO_TIMESTAMP_MILLIS},
		{"timestamp-micros", PE_AVRO_TIMESTAMP_MICROS},
		{"local-timestamp-millis", PE_AVRO_LOCAL_TIMESTAMP_MILLIS},
		{"local-timestamp-micros", PE_AVRO_LOCAL_TIMESTAMP_MICROS},
		{"decimal", PE_AVRO_DECIMAL},
		{"uuid", PE_AVRO_UUID},
	};
	PeAvroLogical logical = PE_AVRO_PLAIN;

	*scale = 0;
	*precision = 0;
	if (lt == NULL)
		return PE_AVRO_PLAIN;
	for (size_t i = 0; i < lengthof(names); i++)
		if (pe_avro_json_is(lt, names[i].name))
			logical = names[i].logical;
	if (logical == PE_AVRO_DECIMAL)
	{
		JsonbValue *v = pe_avro_json_key(type, "scale");

		if (v && v->type == jbvNumeric)
			*scale = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric)));
		v = pe_avro_json_key(type, "precision");
		if (v && v->type == jbvNumeric)
			*precision = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric)));
	}
	return logical;
}

/* The field (its object: name, type, default) at path in a record schema's JSON, or NULL. */
static JsonbContainer *
pe_avro_json_field(Jsonb *doc, char **path, int npath)
{
	JsonbValue	root;
	JsonbContainer *node;

	root.type = jbvBinary;
	root.val.binary.data = &doc->root;
	root.val.binary.len = VARSIZE(doc);
	node = pe_avro_json_type(&root, doc);
	for (int k = 0; k < npath && node; k++)
	{
		JsonbValue *fields = pe_avro_json_key(node, "fields");
		JsonbContainer *field = NULL;

		if (fields == NULL || fields->type != jbvBinary || !JsonContainerIsArray(fields->val.binary.data))
			return NULL;
		for (uint32 i = 0; i < JsonContainerSize(fields->val.binary.data); i++)
		{
			JsonbValue *f = getIthJsonbValueFromContainer(fields->val.binary.data, i);

			if (f->type == jbvBinary && JsonContainerIsObject(f->val.binary.data) &&
				pe_avro_json_is(pe_avro_json_key(f->val.binary.data, "name"), path[k]))
			{
				field = f->val.binary.data;
				break;
			}
		}
		if (field == NULL || k == npath - 1)
			return field;
		node = pe_avro_json_type(pe_avro_json_key(field, "type"), doc);
	}
	return NULL;
}

/* The logical type (and a decimal's scale) of the field at path in the schema's JSON. */
static void
pe_avro_json_logical(Jsonb *doc, char **path, int npath, PeAvroPath *p)
{
	JsonbContainer *node;
	int			precision;

	p->logical = PE_AVRO_PLAIN;
	p->scale = 0;
	if (npath == 0)
	{
		JsonbValue	root;

		root.type = jbvBinary;
		root.val.binary.data = &doc->root;
		root.val.binary.len = VARSIZE(doc);
		node = pe_avro_json_type(&root, doc);
	}
	else
	{
		JsonbContainer *field = pe_avro_json_field(doc, path, npath);

		node = field ? pe_avro_json_type(pe_avro_json_key(field, "type"), doc) : NULL;
	}
	if (node)
		p->logical = pe_avro_logical(node, &p->scale, &precision);
}

/* ---- the schema: field indexes ------------------------------------------ */

/* A schema with ["null", T] taken apart, and named references followed. */
static avro_schema_t
pe_avro_unwrap(avro_schema_t s)
{
	if (is_avro_union(s))
	{
		avro_schema_t found = NULL;

		for (size_t i = 0; i < avro_schema_union_size(s); i++)
		{
			avro_schema_t b = avro_schema_union_branch(s, i);

			if (is_avro_null(b))
				continue;
			if (found)
				return NULL;
			found = b;
		}
		s = found;
	}
	if (is_avro_link(s))
		s = avro_schema_link_target(s);
	return s;
}

/*
 * Each column's path into the records of a schema: a value's columns that
 * take fields by their column_map path or name; a key's key columns by
 * name, or the whole key for a single key column when the key is not a
 * record.
 */
static void
pe_avro_resolve(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, Jsonb *doc, bool key)
{
	bool		whole_key = key && t->nkeys == 1 && !is_avro_record(pe_avro_unwrap(s->schema));

	s->paths = MemoryContextAllocZero(cache->cxt, sizeof(PeAvroPath) * t->ncols);
	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];
		PeAvroPath *p = &s->paths[c];
		avro_schema_t cur = s->schema;
		char	  **path = key ? &col->name : col->path;
		int			npath = key ? (whole_key ? 0 : 1) : col->npath;

		p->n = -1;
		if (key ? !col->is_key : col->source != PE_SRC_FIELD)
			continue;
		p->idx = MemoryContextAlloc(cache->cxt, sizeof(int) * Max(npath, 1));
		if (npath == 0)
			p->n = 0;
		for (int k = 0; k < npath; k++)
		{
			int			i;

			cur = pe_avro_unwrap(cur);
			if (cur == NULL || !is_avro_record(cur) ||
				(i = avro_schema_record_field_get_index(cur, path[k])) < 0)
				break;
			p->idx[k] = i;
			cur = avro_schema_record_field_get_by_index(cur, i);
			if (k == npath - 1)
				p->n = npath;
		}
		if (p->n >= 0)
			pe_avro_json_logical(doc, path, p->n, p);
	}
}

/* ---- the cache of writer schemas ---------------------------------------- */

static void
pe_avro_forget(PeAvroSchema *s)
{
	if (s->iface)
	{
		if (s->value.self)
			avro_value_decref(&s->value);
		avro_value_iface_decref(s->iface);
	}
	s->value.self = NULL;
	if (s->schema)
		avro_schema_decref(s->schema);
	s->iface = NULL;
	s->schema = NULL;
}

static void
pe_avro_close_cache(PeAvroCache **cachep)
{
	PeAvroCache *cache = *cachep;
	HASH_SEQ_STATUS seq;
	PeAvroSchema *s;

	if (cache == NULL)
		return;
	hash_seq_init(&seq, cache->schemas);
	while ((s = hash_seq_search(&seq)) != NULL)
		pe_avro_forget(s);
	avro_reader_free(cache->reader);
	*cachep = NULL;
	MemoryContextDelete(cache->cxt);
}

/*
 * A slot describes its target again after ALTER TABLE, and after any
 * invalidation of it (autovacuum's too): the writer schemas it has are
 * kept from the old description (pe_avro_keep, before it is closed) for
 * the new one (pe_avro_reuse), resolved for its columns again when next
 * used, so that the registry is not asked for them again inside a batch's
 * transaction.  At most one set is kept.
 */
static PeAvroCache *pe_avro_kept[2];

void
pe_avro_keep(PeTarget *t)
{
	pe_avro_close_cache(&pe_avro_kept[0]);
	pe_avro_close_cache(&pe_avro_kept[1]);
	pe_avro_kept[0] = t->avro;
	pe_avro_kept[1] = t->avro_key;
	t->avro = NULL;
	t->avro_key = NULL;
}

void
pe_avro_reuse(PeTarget *t)
{
	for (int k = 0; k < 2; k++)
	{
		PeAvroCache *cache = pe_avro_kept[k];
		HASH_SEQ_STATUS seq;
		PeAvroSchema *s;

		pe_avro_kept[k] = NULL;
		if (cache == NULL)
			continue;
		if ((k ? t->avro_key : t->avro) != NULL)
		{
			pe_avro_close_cache(&cache);
			continue;
		}
		hash_seq_init(&seq, cache->schemas);
		while ((s = hash_seq_search(&seq)) != NULL)
			s->paths = NULL;	/* (in the cache's memory: gone with it) */
		cache->last = NULL;
		if (k)
			t->avro_key = cache;
		else
			t->avro = cache;
	}
}

/* Give back what avro-c holds for a target (pe_target_close). */
void
pe_avro_close(PeTarget *t)
{
	pe_avro_close_cache(&t->avro);
	pe_avro_close_cache(&t->avro_key);
}

/* The writer schemas of values, or of keys: resolved differently. */
static PeAvroCache *
pe_avro_cache(PeTarget *t, bool key)
{
	PeAvroCache **cachep = key ? &t->avro_key : &t->avro;

	if (*cachep == NULL)
	{
		HASHCTL		ctl;
		MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext Avro schemas",
												  ALLOCSET_DEFAULT_SIZES);
		PeAvroCache *cache = MemoryContextAllocZero(cxt, sizeof(PeAvroCache));

		cache->cxt = cxt;
		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(PeAvroSchema);
		ctl.hcxt = cxt;
		cache->schemas = hash_create("pipeline_ext Avro schemas", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cache->reader = avro_reader_memory("", 0);
		if (cache->reader == NULL)
			elog(ERROR, "could not create an Avro reader: %s", avro_strerror());
		*cachep = cache;
	}
	return *cachep;
}

/*
 * Whether the writer schema of id is known (or known to be missing), so
 * that decoding a message of it asks nobody: a slot asks this before its
 * batch's transaction, and fetches what is not (pe_avro_fetch).
 */
bool
pe_avro_known(PeTarget *t, bool key, int32 id)
{
	PeAvroCache *cache = pe_avro_cache(t, key);
	PeAvroSchema *s;

	if (cache->last && cache->last->id == id)
		return true;
	s = hash_search(cache->schemas, &id, HASH_FIND, NULL);
	if (s && !s->missing)
		cache->last = s;
	return s && (!s->missing || !TimestampDifferenceExceeds(s->missing_at, GetCurrentTimestamp(), PE_AVRO_MISSING_MS));
}

static Datum pe_avro_int_datum(PeColumn *col, PeAvroLogical logical, int64 i, bool is_long);

/*
 * A field's default in a schema's JSON as a value of the column, as a
 * reader of that schema would see it; false when it has none (or null, or
 * one the column cannot take).  Avro's defaults are JSON of the field's
 * type (its first branch for a union): numbers for dates, times and
 * timestamps, strings of code points for bytes.
 */
static bool
pe_avro_default(PeColumn *col, Jsonb *doc, JsonbContainer *field, Datum *out)
{
	JsonbValue *dv = pe_avro_json_key(field, "default");
	JsonbValue *type = pe_avro_json_key(field, "type");
	JsonbContainer *tobj = pe_avro_json_type(type, doc);
	int			scale;
	int			precision;
	PeAvroLogical logical = tobj ? pe_avro_logical(tobj, &scale, &precision) : PE_AVRO_PLAIN;
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = false;

	if (dv == NULL || dv->type == jbvNull)
		return false;
	PG_TRY();
	{
		if (col->is_json)
		{
			if (dv->type == jbvBinary)
				*out = pe_input(col, JsonbToCString(NULL, dv->val.binary.data, dv->val.binary.len));
			else
			{
				JsonbValue	copy = *dv;
				Jsonb	   *j = JsonbValueToJsonb(&copy);

				*out = pe_input(col, JsonbToCString(NULL, &j->root, VARSIZE(j)));
			}
			ok = true;
		}
		else if (dv->type == jbvString && col->is_bytea)
		{
			/* bytes: each character one byte (code points 0..255) */
			char	   *text = pnstrdup(dv->val.string.val, dv->val.string.len);
			int			n = pg_mbstrlen(text);
			char	   *bytes = palloc(n + 1);
			const char *c = text;

			ok = GetDatabaseEncoding() == PG_UTF8;
			for (int i = 0; i < n && ok; i++)
			{
				pg_wchar	w = utf8_to_unicode((const unsigned char *) c);

				ok = w <= 255;
				bytes[i] = (char) w;
				c += pg_utf_mblen((const unsigned char *) c);
			}
			if (ok)
				*out = pe_bytes_to_bytea(bytes, n);
		}
		else if (dv->type == jbvString)
		{
			*out = pe_input(col, pnstrdup(dv->val.string.val, dv->val.string.len));
			ok = true;
		}
		else if (dv->type == jbvNumeric && logical != PE_AVRO_PLAIN && logical != PE_AVRO_DECIMAL &&
				 logical != PE_AVRO_UUID)
		{
			int64		i = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(dv->val.numeric)));
			bool		is_long = logical != PE_AVRO_DATE && logical != PE_AVRO_TIME_MILLIS;

			*out = pe_avro_int_datum(col, logical, i, is_long);
			ok = true;
		}
		else if (dv->type == jbvNumeric)
		{
			*out = pe_input(col, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(dv->val.numeric))));
			ok = true;
		}
		else if (dv->type == jbvBool)
		{
			*out = pe_input(col, dv->val.boolean ? "true" : "false");
			ok = true;
		}
	}
	PG_CATCH();
	{
		/* a default the column cannot take: none (the column's own default applies) */
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * The columns a writer schema lacks take the default that the subject's
 * latest version gives their field (TopicNameStrategy: TOPIC-value), as
 * Avro's schema resolution with the newest schema as the reader would: a
 * field added with a default is that default in the messages written
 * before it.  The latest version is asked for again when a writer schema
 * newer than it turns up.  False (with *why) when the registry did not
 * answer.
 */
static bool
pe_avro_defaults(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, PeConnection *conn, char **why)
{
	bool		lacking = false;

	for (int c = 0; c < t->ncols; c++)
		lacking |= t->cols[c].source == PE_SRC_FIELD && s->paths[c].n < 0;
	if (!lacking)
		return true;
	if (cache->reader_id < s->id)
	{
		int32		id = s->id;
		char	   *json;
		PeRegistryAnswer answer = pe_registry_latest(conn, psprintf("%s-value", t->def->topic), &id, &json, why);

		if (answer == PE_REGISTRY_UNAVAILABLE)
			return false;
		if (cache->reader_doc)
			pfree(cache->reader_doc);
		cache->reader_doc = NULL;
		cache->reader_id = Max(id, s->id);
		if (answer == PE_REGISTRY_FOUND)
		{
			Jsonb	   *doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));

			cache->reader_doc = MemoryContextAlloc(cache->cxt, VARSIZE(doc));
			memcpy(cache->reader_doc, doc, VARSIZE(doc));
		}
	}
	if (cache->reader_doc == NULL)
		return true;
	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];
		JsonbContainer *field;
		MemoryContext old;
		Datum		d;

		if (col->source != PE_SRC_FIELD || s->paths[c].n >= 0 ||
			(field = pe_avro_json_field(cache->reader_doc, col->path, col->npath)) == NULL)
			continue;
		old = MemoryContextSwitchTo(cache->cxt);
		if (pe_avro_default(col, cache->reader_doc, field, &d))
		{
			s->paths[c].has_default = true;
			s->paths[c].dflt = datumCopy(d, col->typbyval, col->typlen);
		}
		MemoryContextSwitchTo(old);
	}
	return true;
}

/*
 * Ask the registry of conn for the writer schema of id, and keep it: found,
 * or said to be missing.  PE_REGISTRY_UNAVAILABLE (with *why) when the
 * registry did not tell; nothing is kept then.  A schema avro-c cannot
 * read counts as missing (its messages cannot be decoded).
 */
PeRegistryAnswer
pe_avro_fetch(PeTarget *t, bool key, PeConnection *conn, int32 id, char **why)
{
	PeAvroCache *cache = pe_avro_cache(t, key);
	char	   *json;
	PeRegistryAnswer answer = pe_registry_fetch_schema(conn, id, &json, why);
	PeAvroSchema *s;
	bool		found;

	if (answer == PE_REGISTRY_UNAVAILABLE)
		return answer;
	if (hash_get_num_entries(cache->schemas) >= PE_AVRO_MAX_SCHEMAS)
	{
		/* bounded: forget them all, the ones in use come back one request each */
		pe_avro_close_cache(key ? &t->avro_key : &t->avro);
		cache = pe_avro_cache(t, key);
	}
	cache->last = NULL;
	s = hash_search(cache->schemas, &id, HASH_ENTER, &found);
	if (found)
	{
		pe_avro_forget(s);
		if (s->why)
			pfree(s->why);
	}
	s->id = id;
	s->missing = true;
	s->missing_at = GetCurrentTimestamp();
	s->schema = NULL;
	s->iface = NULL;
	s->value.self = NULL;
	s->paths = NULL;
	s->why = MemoryContextStrdup(cache->cxt, *why ? *why : "");
	s->doc = NULL;
	if (answer == PE_REGISTRY_FOUND)
	{
		if (avro_schema_from_json_length(json, strlen(json), &s->schema) != 0)
		{
			*why = psprintf("avro-c cannot read schema %d: %s", id, avro_strerror());
			s->why = MemoryContextStrdup(cache->cxt, *why);
			s->schema = NULL;
			return PE_REGISTRY_NOT_FOUND;
		}
		s->iface = avro_generic_class_from_schema(s->schema);
		if (s->iface == NULL || avro_generic_value_new(s->iface, &s->value) != 0)
		{
			s->value.self = NULL;
			*why = psprintf("avro-c cannot read schema %d: %s", id, avro_strerror());
			s->why = MemoryContextStrdup(cache->cxt, *why);
			pe_avro_forget(s);
			return PE_REGISTRY_NOT_FOUND;
		}
		{
			Jsonb	   *doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));

			s->doc = MemoryContextAlloc(cache->cxt, VARSIZE(doc));
			memcpy(s->doc, doc, VARSIZE(doc));
		}
		pe_avro_resolve(t, cache, s, s->doc, key);
		if (!key && !pe_avro_defaults(t, cache, s, conn, why))
		{
			/* not kept: asked for again, with the latest version */
			pe_avro_forget(s);
			pfree(s->why);
			(void) hash_search(cache->schemas, &id, HASH_REMOVE, NULL);
			return PE_REGISTRY_UNAVAILABLE;
		}
		s->missing = false;
	}
	return answer;
}

/* The schema of id, asked for now if need be (a replay, or a schema forgotten). */
static PeAvroSchema *
pe_avro_schema(PeTarget *t, bool key, int32 id)
{
	char	   *why = NULL;
	PeAvroSchema *s;

	if (!pe_avro_known(t, key, id))
	{
		PeConnection *conn = pe_connection_lookup(t->def->connection, false);

		if (pe_avro_fetch(t, key, conn, id, &why) == PE_REGISTRY_UNAVAILABLE)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not fetch Avro schema %d from the schema registry of connection \"%s\"",
							id, conn->name),
					 errdetail("%s", why),
					 errhint("Messages wait until the registry answers; none is skipped.")));
	}
	s = pe_avro_cache(t, key)->last;
	if (s == NULL || s->id != id)
		s = hash_search(pe_avro_cache(t, key)->schemas, &id, HASH_FIND, NULL);
	if (s == NULL || s->missing)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("unknown Avro schema id %d", id),
				 s && s->why[0] ? errdetail("%s.", s->why) : 0,
				 errhint("Register the writer's schema, or give the consumer's connection the registry "
						 "the producer uses; then replay the dead letter.")));
	return s;
}

/* The schema id of a value (or key) in the wire format; an error otherwise. */
static int32
pe_avro_id(const char *data, size_t len, const char *what)
{
	const unsigned char *u = (const unsigned char *) data;
	int32		id;

	if (len < 5 || u[0] != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("message %s is not Avro in the schema registry's wire format", what),
				 len < 5 ? errdetail("It has %zu bytes; the wire format starts with 5 (a zero byte and a 4-byte schema id).", len)
				 : errdetail("Its first byte is %d, not 0 (the wire format's magic byte).", (int) u[0]),
				 errhint("Produce with a schema-registry Avro serializer, or consume the topic with another format.")));
	id = (int32) (((uint32) u[1] << 24) | ((uint32) u[2] << 16) | ((uint32) u[3] << 8) | (uint32) u[4]);
	if (id < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("message %s is not Avro in the schema registry's wire format", what),
				 errdetail("Its schema id %d is negative.", id),
				 errhint("Produce with a schema-registry Avro serializer, or consume the topic with another format.")));
	return id;
}

/* ---- values -------------------------------------------------------------- */

static void pe_avro_json(StringInfo buf, avro_value_t *v, int depth);

/* a value's current branch, for a union; the value otherwise */
static avro_value_t *
pe_avro_branch(avro_value_t *v, avro_value_t *branch)
{
	if (avro_value_get_type(v) == AVRO_UNION)
	{
		if (avro_value_get_current_branch(v, branch) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("could not read an Avro union: %s", avro_strerror())));
		return branch;
	}
	return v;
}

static void
pe_avro_hex(StringInfo buf, const void *data, size_t len)
{
	appendStringInfoString(buf, "\\x");
	for (size_t i = 0; i < len; i++)
		appendStringInfo(buf, "%02x", ((const unsigned char *) data)[i]);
}

static const char *
pe_avro_string(avro_value_t *v, size_t *len)
{
	const char *s;
	size_t		size;

	(void) avro_value_get_string(v, &s, &size);
	/* avro-c counts the terminating zero */
	*len = size > 0 ? size - 1 : 0;
	/* (the check refuses a zero byte too, which text cannot hold) */
	if (!pg_verifymbstr(s, *len, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("an Avro string is not valid %s text", GetDatabaseEncodingName()),
				 errhint("Correct the producer, then replay the dead letter.")));
	return s;
}

/* Avro as JSON: records and maps objects, unions their branch, bytes "\x..". */
static void
pe_avro_json(StringInfo buf, avro_value_t *v, int depth)
{
	avro_value_t branch;
	size_t		n;
	const void *bytes;
	size_t		len;
	int32_t		i32;
	int64_t		i64;
	float		f;
	double		d;
	int			b;

	check_stack_depth();
	if (depth > PE_JSON_MAX_DEPTH * 4)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("Avro value nested deeper than %d levels", PE_JSON_MAX_DEPTH * 4)));
	v = pe_avro_branch(v, &branch);
	switch (avro_value_get_type(v))
	{
		case AVRO_NULL:
			appendStringInfoString(buf, "null");
			break;
		case AVRO_BOOLEAN:
			(void) avro_value_get_boolean(v, &b);
			appendStringInfoString(buf, b ? "true" : "false");
			break;
		case AVRO_INT32:
			(void) avro_value_get_int(v, &i32);
			appendStringInfo(buf, "%d", i32);
			break;
		case AVRO_INT64:
			(void) avro_value_get_long(v, &i64);
			appendStringInfo(buf, INT64_FORMAT, (int64) i64);
			break;
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
			if (avro_value_get_type(v) == AVRO_FLOAT)
			{
				(void) avro_value_get_float(v, &f);
				d = f;
			}
			else
				(void) avro_value_get_double(v, &d);
			if (isnan(d) || isinf(d))
				escape_json(buf, isnan(d) ? "NaN" : (d > 0 ? "Infinity" : "-Infinity"));
			else
				appendStringInfoString(buf, float8out_internal(d));
			break;
		case AVRO_STRING:
			{
				const char *s = pe_avro_string(v, &len);

				escape_json(buf, s);
			}
			break;
		case AVRO_BYTES:
		case AVRO_FIXED:
			{
				StringInfoData hex;

				if (avro_value_get_type(v) == AVRO_BYTES)
					(void) avro_value_get_bytes(v, &bytes, &len);
				else
					(void) avro_value_get_fixed(v, &bytes, &len);
				initStringInfo(&hex);
				pe_avro_hex(&hex, bytes, len);
				escape_json(buf, hex.data);
			}
			break;
		case AVRO_ENUM:
			(void) avro_value_get_enum(v, &b);
			escape_json(buf, avro_schema_enum_get(avro_value_get_schema(v), b));
			break;
		case AVRO_RECORD:
		case AVRO_MAP:
			(void) avro_value_get_size(v, &n);
			appendStringInfoChar(buf, '{');
			for (size_t i = 0; i < n; i++)
			{
				avro_value_t child;
				const char *name;

				(void) avro_value_get_by_index(v, i, &child, &name);
				if (i > 0)
					appendStringInfoString(buf, ", ");
				escape_json(buf, name);
				appendStringInfoString(buf, ": ");
				pe_avro_json(buf, &child, depth + 1);
			}
			appendStringInfoChar(buf, '}');
			break;
		case AVRO_ARRAY:
			(void) avro_value_get_size(v, &n);
			appendStringInfoChar(buf, '[');
			for (size_t i = 0; i < n; i++)
			{
				avro_value_t child;

				(void) avro_value_get_by_index(v, i, &child, NULL);
				if (i > 0)
					appendStringInfoString(buf, ", ");
				pe_avro_json(buf, &child, depth + 1);
			}
			appendStringInfoChar(buf, ']');
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("unexpected Avro type %d", (int) avro_value_get_type(v))));
	}
}

/* A value as text, for a type's input function: strings as they are, the rest as JSON. */
static void
pe_avro_text(StringInfo buf, avro_value_t *v, int depth)
{
	avro_value_t branch;
	size_t		len;

	v = pe_avro_branch(v, &branch);
	if (avro_value_get_type(v) == AVRO_STRING)
		appendStringInfoString(buf, pe_avro_string(v, &len));
	else if (avro_value_get_type(v) == AVRO_ENUM)
	{
		int			sym;

		(void) avro_value_get_enum(v, &sym);
		appendStringInfoString(buf, avro_schema_enum_get(avro_value_get_schema(v), sym));
	}
	else if (avro_value_get_type(v) == AVRO_BYTES || avro_value_get_type(v) == AVRO_FIXED)
	{
		const void *bytes;

		if (avro_value_get_type(v) == AVRO_BYTES)
			(void) avro_value_get_bytes(v, &bytes, &len);
		else
			(void) avro_value_get_fixed(v, &bytes, &len);
		pe_avro_hex(buf, bytes, len);
	}
	else
		pe_avro_json(buf, v, depth);
}

/* A decimal's unscaled two's complement, big-endian, as text with its scale. */
static char *
pe_avro_decimal_text(const unsigned char *b, size_t len, int scale)
{
	uint128		uu = 0;
	int128		u;
	bool		neg;
	StringInfoData digits;		/* least significant first */
	StringInfoData s;

	if (len == 0)
		return pstrdup("0");
	if (len > 16)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("Avro decimal of %zu bytes is too large", len),
				 errhint("pipeline_ext reads decimals of up to 16 bytes (38 digits).")));
	neg = (b[0] & 0x80) != 0;
	for (size_t i = 0; i < len; i++)
		uu = (uu << 8) | b[i];
	u = (int128) uu;
	if (neg && len < 16)
		u -= ((int128) 1) << (8 * len);
	initStringInfo(&s);
	if (neg)
		appendStringInfoChar(&s, '-');
	/* digits of |u|, least significant first (|INT128_MIN| fits in the unsigned) */
	initStringInfo(&digits);
	{
		uint128		m = neg ? (uint128) (-(u + 1)) + 1 : (uint128) u;

		do
		{
			appendStringInfoChar(&digits, '0' + (int) (m % 10));
			m /= 10;
		} while (m > 0);
	}
	while (digits.len <= scale)
		appendStringInfoChar(&digits, '0');
	for (int i = digits.len - 1; i >= 0; i--)
	{
		appendStringInfoChar(&s, digits.data[i]);
		if (i == scale && scale > 0)
			appendStringInfoChar(&s, '.');
	}
	return s.data;
}

/* An integer into a column. */
static Datum
pe_avro_integer(PeColumn *col, int64 i)
{
	if (col->typmod < 0)
		switch (col->typid)
		{
			case INT8OID:
				return Int64GetDatum(i);
			case INT4OID:
				if (i < PG_INT32_MIN || i > PG_INT32_MAX)
					break;
				return Int32GetDatum((int32) i);
			case INT2OID:
				if (i < PG_INT16_MIN || i > PG_INT16_MAX)
					break;
				return Int16GetDatum((int16) i);
			case FLOAT8OID:
				return Float8GetDatum((float8) i);
			case NUMERICOID:
				return NumericGetDatum(int64_to_numeric(i));
			default:
				break;
		}
	/* the input function says what does not fit */
	return pe_input(col, psprintf(INT64_FORMAT, i));
}

/*
 * An Avro int (or long) into a column, through its logical type: a date
 * (days since 1970), a time (of day, millis for an int, micros for a
 * long), a timestamp (an instant, or a local wall time), or a number.
 */
static Datum
pe_avro_int_datum(PeColumn *col, PeAvroLogical logical, int64 i, bool is_long)
{
	if (!is_long && logical == PE_AVRO_DATE)
	{
		int64		days = i - PE_AVRO_EPOCH_DAYS;

		if (!IS_VALID_DATE(days))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("Avro date " INT64_FORMAT " (days since 1970) is out of range for type date", i)));
		if (col->typid == DATEOID)
			return DateADTGetDatum((DateADT) days);
		return pe_input(col, DatumGetCString(DirectFunctionCall1(date_out, DateADTGetDatum((DateADT) days))));
	}
	if ((!is_long && logical == PE_AVRO_TIME_MILLIS) || (is_long && logical == PE_AVRO_TIME_MICROS))
	{
		TimeADT		tm = is_long ? i : i * 1000;

		if (tm < 0 || tm > USECS_PER_DAY)
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("Avro time " INT64_FORMAT " is not a time of day", i)));
		if (col->typid == TIMEOID && col->typmod < 0)
			return TimeADTGetDatum(tm);
		return pe_input(col, DatumGetCString(DirectFunctionCall1(time_out, TimeADTGetDatum(tm))));
	}
	if (is_long && (logical == PE_AVRO_TIMESTAMP_MILLIS || logical == PE_AVRO_TIMESTAMP_MICROS ||
					logical == PE_AVRO_LOCAL_TIMESTAMP_MILLIS || logical == PE_AVRO_LOCAL_TIMESTAMP_MICROS))
	{
		bool		millis = logical == PE_AVRO_TIMESTAMP_MILLIS || logical == PE_AVRO_LOCAL_TIMESTAMP_MILLIS;
		bool		local = logical == PE_AVRO_LOCAL_TIMESTAMP_MILLIS || logical == PE_AVRO_LOCAL_TIMESTAMP_MICROS;
		int64		us;

		if (pg_mul_s64_overflow(i, millis ? 1000 : 1, &us) ||
			pg_sub_s64_overflow(us, PE_AVRO_EPOCH_US, &us) ||
			!IS_VALID_TIMESTAMP(us))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("Avro %s " INT64_FORMAT " is out of range for a timestamp",
							millis ? "timestamp in milliseconds" : "timestamp in microseconds", i)));
		/*
		 * An instant into timestamptz, a wall time into timestamp: the same
		 * microseconds (UTC's wall time for an instant into timestamp),
		 * whatever the column's precision and the session's time zone.
		 */
		if ((col->typid == TIMESTAMPTZOID || col->typid == TIMESTAMPOID) && col->typmod < 0)
			return TimestampGetDatum(us);
		if (col->typid == TIMESTAMPOID || (col->typid != TIMESTAMPTZOID && local))
			return pe_input(col, DatumGetCString(DirectFunctionCall1(timestamp_out, TimestampGetDatum(us))));
		return pe_input(col, DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(us))));
	}
	return pe_avro_integer(col, i);
}

/* A value (the field of column col, by path p) into col. */
static Datum
pe_avro_datum(PeColumn *col, PeAvroPath *p, avro_value_t *v, bool *isnull)
{
	avro_value_t branch;
	int32_t		i32;
	int64_t		i64;
	const void *bytes;
	size_t		len;

	*isnull = false;
	v = pe_avro_branch(v, &branch);
	if (avro_value_get_type(v) == AVRO_NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	if (col->is_json)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		pe_avro_json(&buf, v, 0);
		return pe_input(col, buf.data);
	}
	switch (avro_value_get_type(v))
	{
		case AVRO_BOOLEAN:
			{
				int			b;

				(void) avro_value_get_boolean(v, &b);
				if (col->typid == BOOLOID)
					return BoolGetDatum(b != 0);
				return pe_input(col, b ? "true" : "false");
			}
		case AVRO_INT32:
			(void) avro_value_get_int(v, &i32);
			return pe_avro_int_datum(col, p->logical, i32, false);
		case AVRO_INT64:
			(void) avro_value_get_long(v, &i64);
			return pe_avro_int_datum(col, p->logical, i64, true);
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
			{
				double		d;

				if (avro_value_get_type(v) == AVRO_FLOAT)
				{
					float		f;

					(void) avro_value_get_float(v, &f);
					if (col->typid == FLOAT4OID && col->typmod < 0)
						return Float4GetDatum(f);
					d = f;
				}
				else
					(void) avro_value_get_double(v, &d);
				if (col->typid == FLOAT8OID && col->typmod < 0)
					return Float8GetDatum(d);
				if (col->typid == NUMERICOID && col->typmod < 0)
					return DirectFunctionCall1(float8_numeric, Float8GetDatum(d));
				return pe_input(col, float8out_internal(d));
			}
		case AVRO_BYTES:
		case AVRO_FIXED:
			if (avro_value_get_type(v) == AVRO_BYTES)
				(void) avro_value_get_bytes(v, &bytes, &len);
			else
				(void) avro_value_get_fixed(v, &bytes, &len);
			if (p->logical == PE_AVRO_DECIMAL)
			{
				char	   *text = pe_avro_decimal_text(bytes, len, p->scale);
				Datum		d = pe_input(col, text);

				/* a numeric of a smaller scale would round: an error, not a changed value */
				if (col->typid == NUMERICOID && col->typmod >= (int32) VARHDRSZ &&
					((col->typmod - VARHDRSZ) & 0xffff) < p->scale &&
					!DatumGetBool(DirectFunctionCall2(numeric_eq, d,
													  DirectFunctionCall3(numeric_in, CStringGetDatum(text),
																		  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)))))
					ereport(ERROR,
							(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
							 errmsg("Avro decimal %s has more digits after the point than the column's scale of %d",
									text, (col->typmod - VARHDRSZ) & 0xffff),
							 errhint("Give the column the decimal's scale (%d), then replay the dead letter.", p->scale)));
				return d;
			}
			if (col->is_bytea)
				return pe_bytes_to_bytea(bytes, len);
			return pe_raw_value(col, bytes, len, "field");
		case AVRO_STRING:
			{
				const char *s = pe_avro_string(v, &len);

				if ((col->typid == TEXTOID || col->typid == VARCHAROID) && col->typmod < 0)
					return PointerGetDatum(cstring_to_text_with_len(s, len));
				return pe_input(col, s);
			}
		case AVRO_ENUM:
			{
				StringInfoData buf;

				initStringInfo(&buf);
				pe_avro_text(&buf, v, 0);
				return pe_input(col, buf.data);
			}
		default:
			break;
	}
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("an Avro %s does not go into column \"%s\" of type %s",
					avro_schema_type_name(avro_value_get_schema(v)), col->name, format_type_be(col->typid)),
			 errhint("Use a json or jsonb column, or map the column to a field inside it with column_map.")));
	return (Datum) 0;			/* keep the compiler quiet */
}

/* ---- checking a message before avro-c reads it ---------------------------- */

/* items of an array or map whose items take no bytes (nulls, empty records), at most */
#define PE_AVRO_MAX_EMPTY_ITEMS 1000000

static bool
pe_avro_varint(const unsigned char **p, const unsigned char *end, int64 *out)
{
	uint64		u = 0;

	for (int shift = 0; *p < end && shift < 64; shift += 7)
	{
		unsigned char b = *(*p)++;

		u |= (uint64) (b & 0x7f) << shift;
		if (!(b & 0x80))
		{
			*out = (int64) ((u >> 1) ^ (~(u & 1) + 1));
			return true;
		}
	}
	return false;
}

/* The fewest bytes a value of the schema takes (0 for null, an empty record, fixed(0)). */
static int64
pe_avro_min_size(avro_schema_t s, int depth)
{
	int64		n = 0;

	if (depth > 64)
		return 1;
	if (is_avro_link(s))
		s = avro_schema_link_target(s);
	switch (avro_typeof(s))
	{
		case AVRO_NULL:
			return 0;
		case AVRO_FIXED:
			return avro_schema_fixed_size(s);
		case AVRO_RECORD:
			for (size_t i = 0; i < avro_schema_record_size(s); i++)
				n += pe_avro_min_size(avro_schema_record_field_get_by_index(s, i), depth + 1);
			return n;
		default:
			return 1;
	}
}

/* a string's or bytes' length, and them */
static bool
pe_avro_check_bytes(const unsigned char **p, const unsigned char *end, const char **why)
{
	int64		n;

	if (!pe_avro_varint(p, end, &n) || n < 0 || n > end - *p)
	{
		*why = "a string or bytes longer than what is left of the message";
		return false;
	}
	*p += n;
	return true;
}

/*
 * Whether the bytes from *p hold a value of schema s, without reading past
 * end: avro-c trusts a union's branch number and an enum's index (one out
 * of range calls through a wild pointer), and allocates a string's length
 * and loops over an array's count before it finds the message short.  On
 * false, *why says what is wrong.
 */
static bool
pe_avro_check(avro_schema_t s, const unsigned char **p, const unsigned char *end, int depth, const char **why)
{
	int64		n;

	if (depth > 64)
	{
		*why = "values nested deeper than 64 levels";
		return false;
	}
	if (is_avro_link(s))
		s = avro_schema_link_target(s);
	switch (avro_typeof(s))
	{
		case AVRO_NULL:
			return true;
		case AVRO_BOOLEAN:
			if (*p >= end || **p > 1)
			{
				*why = *p >= end ? "the message ends inside a boolean" : "a boolean that is neither 0 nor 1";
				return false;
			}
			(*p)++;
			return true;
		case AVRO_INT32:
		case AVRO_INT64:
			if (!pe_avro_varint(p, end, &n) ||
				(avro_typeof(s) == AVRO_INT32 && (n < PG_INT32_MIN || n > PG_INT32_MAX)))
			{
				*why = "a truncated or overlong integer";
				return false;
			}
			return true;
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
			n = avro_typeof(s) == AVRO_FLOAT ? 4 : 8;
			if (end - *p < n)
			{
				*why = "the message ends inside a number";
				return false;
			}
			*p += n;
			return true;
		case AVRO_STRING:
		case AVRO_BYTES:
			return pe_avro_check_bytes(p, end, why);
		case AVRO_FIXED:
			n = avro_schema_fixed_size(s);
			if (end - *p < n)
			{
				*why = "the message ends inside a fixed";
				return false;
			}
			*p += n;
			return true;
		case AVRO_ENUM:
			if (!pe_avro_varint(p, end, &n) || n < 0 || n >= avro_schema_enum_number_of_symbols(s))
			{
				*why = "an enum index out of its symbols' range";
				return false;
			}
			return true;
		case AVRO_UNION:
			if (!pe_avro_varint(p, end, &n) || n < 0 || n >= (int64) avro_schema_union_size(s))
			{
				*why = "a union branch number out of the union's range";
				return false;
			}
			return pe_avro_check(avro_schema_union_branch(s, (int) n), p, end, depth + 1, why);
		case AVRO_RECORD:
			for (size_t i = 0; i < avro_schema_record_size(s); i++)
				if (!pe_avro_check(avro_schema_record_field_get_by_index(s, i), p, end, depth + 1, why))
					return false;
			return true;
		case AVRO_ARRAY:
		case AVRO_MAP:
			{
				bool		map = avro_typeof(s) == AVRO_MAP;
				avro_schema_t item = map ? avro_schema_map_values(s) : avro_schema_array_items(s);
				int64		min = pe_avro_min_size(item, depth + 1) + (map ? 1 : 0);
				int64		total = 0;

				for (;;)
				{
					int64		size;

					if (!pe_avro_varint(p, end, &n))
					{
						*why = "the message ends inside an array or map";
						return false;
					}
					if (n == 0)
						return true;
					if (n < 0)
					{
						/* a negative count: its block's size in bytes follows */
						if (n == PG_INT64_MIN || !pe_avro_varint(p, end, &size) || size < 0 || size > end - *p)
						{
							*why = "an array or map block larger than what is left of the message";
							return false;
						}
						n = -n;
					}
					total += n;
					if ((min > 0 && n > (end - *p) / min) || (min == 0 && total > PE_AVRO_MAX_EMPTY_ITEMS))
					{
						*why = "an array or map with more items than the message can hold";
						return false;
					}
					for (int64 i = 0; i < n; i++)
					{
						CHECK_FOR_INTERRUPTS();
						if ((map && !pe_avro_check_bytes(p, end, why)) ||
							!pe_avro_check(item, p, end, depth + 1, why))
							return false;
					}
				}
			}
		default:
			*why = "a type pipeline_ext does not read";
			return false;
	}
}

/* Read a value (or key) in the wire format with its writer schema into that schema's record. */
static PeAvroSchema *
pe_avro_read(PeTarget *t, bool key, const char *data, size_t len)
{
	const char *what = key ? "key" : "value";
	int32		id = pe_avro_id(data, len, what);
	PeAvroSchema *s = pe_avro_schema(t, key, id);
	PeAvroCache *cache = pe_avro_cache(t, key);
	char		extra;
	const unsigned char *p = (const unsigned char *) data + 5;
	const char *why = NULL;

	/* kept from an older description of the target: resolved for this one */
	if (s->paths == NULL)
	{
		char	   *reason = NULL;

		pe_avro_resolve(t, cache, s, s->doc, key);
		if (!key && !pe_avro_defaults(t, cache, s, pe_connection_lookup(t->def->connection, false), &reason))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not fetch the latest Avro schema of topic \"%s\" from the schema registry", t->def->topic),
					 errdetail("%s", reason),
					 errhint("Messages wait until the registry answers; none is skipped.")));
	}

	if (!pe_avro_check(s->schema, &p, (const unsigned char *) data + len, 0, &why) ||
		(p != (const unsigned char *) data + len && (why = "bytes after the record")))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("could not decode an Avro message %s with schema %d", what, id),
				 errdetail("%s.", why),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	avro_value_reset(&s->value);
	avro_reader_memory_set_source(cache->reader, data + 5, len - 5);
	if (avro_value_read(cache->reader, &s->value) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("could not decode an Avro message %s with schema %d", what, id),
				 errdetail("avro-c: %s", avro_strerror()),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	/* (avro-c's memory reader does not say where it is: one more byte must not be there) */
	if (avro_read(cache->reader, &extra, 1) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("an Avro message %s with schema %d has bytes after its record", what, id),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	return s;
}

/*
 * Each column with a path in s (read) takes its field; only those still
 * null with only_nulls.  An error names the column.
 */
static void
pe_avro_fill(PeTarget *t, PeAvroSchema *s, PeRow *row, bool only_nulls)
{
	volatile int c = 0;
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		for (c = 0; c < t->ncols; c++)
		{
			PeAvroPath *p = &s->paths[c];
			avro_value_t v = s->value;
			bool		isnull = false;

			if (only_nulls && !row->nulls[c])
				continue;
			if (p->n < 0)
			{
				/* not in this version of the schema: the latest version's default, if any */
				if (p->has_default)
				{
					row->values[c] = p->dflt;
					row->nulls[c] = false;
				}
				continue;
			}
			for (int k = 0; k < p->n && !isnull; k++)
			{
				avro_value_t branch;
				avro_value_t *r = pe_avro_branch(&v, &branch);
				avro_value_t child;

				if (avro_value_get_type(r) == AVRO_NULL)
					isnull = true;
				else if (avro_value_get_by_index(r, p->idx[k], &child, NULL) != 0)
					isnull = true;	/* another branch of a union than a record */
				else
					v = child;
			}
			if (!isnull)
				row->values[c] = pe_avro_datum(&t->cols[c], p, &v, &isnull);
			row->nulls[c] = isnull;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* which column: the message alone would not say */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->message = psprintf("column \"%s\": %s", t->cols[c].name, edata->message);
		ReThrowError(edata);
	}
	PG_END_TRY();
}

/*
 * Decode one Avro value into the columns that take fields (the others are
 * the caller's): each column's field by its path in the writer schema, null
 * when that version of the schema has no such field.
 */
void
pe_decode_avro(PeTarget *t, const char *data, size_t len, PeRow *row)
{
	pe_avro_fill(t, pe_avro_read(t, false, data, len), row, false);
}

/*
 * key_format 'avro': the key columns from an Avro key, by name (a record),
 * or the whole key for one key column; with only_nulls, those the value
 * left null.
 */
void
pe_decode_avro_key(PeTarget *t, const char *data, size_t len, PeRow *row, bool only_nulls)
{
	pe_avro_fill(t, pe_avro_read(t, true, data, len), row, only_nulls);
}

/* key_format 'avro': the whole key for a column mapped to $key (JSON, or a type's input). */
Datum
pe_avro_key_value(PeTarget *t, PeColumn *col, const char *data, size_t len)
{
	PeAvroSchema *s = pe_avro_read(t, true, data, len);
	StringInfoData buf;

	initStringInfo(&buf);
	if (col->is_json)
		pe_avro_json(&buf, &s->value, 0);
	else
		pe_avro_text(&buf, &s->value, 0);
	return pe_input(col, buf.data);
}

/* The schema id of a value or key in the wire format, for a slot's look-ahead; -1 if none. */
int32
pe_avro_schema_id(const char *data, size_t len)
{
	const unsigned char *u = (const unsigned char *) data;

	if (data == NULL || len < 5 || u[0] != 0)
		return -1;
	return (int32) (((uint32) u[1] << 24) | ((uint32) u[2] << 16) | ((uint32) u[3] << 8) | (uint32) u[4]);
}

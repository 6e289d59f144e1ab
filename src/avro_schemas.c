/*-------------------------------------------------------------------------
 *
 * avro_schemas.c
 *	  The writer schemas a target decodes with, by their registry id:
 *	  fetched once (registry.c) and kept (at most 1,000; a registry's "no
 *	  such id" believed for a while), each with every column's way into its
 *	  records (field indexes, the field's logical type) and, for a field a
 *	  version lacks, the default the subject's latest version gives it.
 *	  Kept across a new description of the target.
 *
 * IDENTIFICATION
 *	  src/avro_schemas.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "avro_decode.h"
#include "registry.h"

/* schemas kept per target, at most; then they are all fetched again */
#define PE_AVRO_MAX_SCHEMAS 1000
/* how long a registry's "no such id" is believed before it is asked again */
#define PE_AVRO_MISSING_MS 10000

/* The logical type (and a decimal's scale) of the field at path in the schema's JSON. */
static void
pe_avro_json_logical(Jsonb *doc, char **path, int npath, PeAvroPath *p)
{
	JsonbContainer *node;
	int			precision;

	p->logical = PE_AVRO_PLAIN;
	p->scale = 0;
	p->item_logical = PE_AVRO_PLAIN;
	p->item_scale = 0;
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
	if (node && pe_avro_json_is(pe_avro_json_key(node, "type"), "array"))
	{
		JsonbContainer *items = pe_avro_json_type(pe_avro_json_key(node, "items"), doc);

		if (items)
			p->item_logical = pe_avro_logical(items, &p->item_scale, &precision);
	}
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

/* Forget how s was resolved for a target (its paths, plan and defaults), and free it. */
static void
pe_avro_unresolve(PeAvroSchema *s)
{
	if (s->rcxt)
		MemoryContextDelete(s->rcxt);
	s->rcxt = NULL;
	s->paths = NULL;
	s->flat = NULL;
}

/*
 * Each column's path into the records of a schema: a value's columns that
 * take fields by their column_map path or name; a key's key columns by
 * name, or the whole key for a single key column when the key is not a
 * record.
 */
void
pe_avro_resolve(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, Jsonb *doc, bool key)
{
	bool		whole_key = key && t->nkeys == 1 && !is_avro_record(pe_avro_unwrap(s->schema));

	pe_avro_unresolve(s);
	s->rcxt = AllocSetContextCreate(cache->cxt, "pipeline_ext Avro schema resolved", ALLOCSET_SMALL_SIZES);
	s->paths = MemoryContextAllocZero(s->rcxt, sizeof(PeAvroPath) * t->ncols);
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
		p->idx = MemoryContextAlloc(s->rcxt, sizeof(int) * Max(npath, 1));
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
	s->flat = key ? NULL : pe_avro_flat_plan(t, s, s->rcxt);
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
	pe_avro_unresolve(s);
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
			pe_avro_unresolve(s);
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
PeAvroCache *
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
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = false;

	if (dv == NULL || dv->type == jbvNull)
		return false;

	/*
	 * In a subtransaction: an input function that fails (a domain's check
	 * in PL/pgSQL, say) may leave locks, pins or an SPI connection behind,
	 * which only its rollback releases.
	 */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
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
		else if (dv->type == jbvBinary && col->elem && JsonContainerIsArray(dv->val.binary.data))
		{
			char	   *text = JsonbToCString(NULL, dv->val.binary.data, dv->val.binary.len);

			*out = pe_input(col, pe_json_array_literal(col, text, strlen(text)));
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
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		/* a default the column cannot take: none (the column's own default applies) */
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
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
bool
pe_avro_defaults(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, PeConnection *conn, char **why)
{
	bool		lacking = false;
	bool		own;
	bool		pushed;
	MemoryContext caller;

	for (int c = 0; c < t->ncols; c++)
		lacking |= t->cols[c].source == PE_SRC_FIELD && s->paths[c].n < 0;
	/* a writer newer than the newest version seen: the subject's latest is asked for, lacking or not */
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

		/*
		 * The defaults come from the newest version seen: the writer
		 * schemas resolved with an older one take them from this one when
		 * next used (as after a restart), not from whichever was newest
		 * when each was first seen.
		 */
		{
			HASH_SEQ_STATUS seq;
			PeAvroSchema *other;

			hash_seq_init(&seq, cache->schemas);
			while ((other = hash_seq_search(&seq)) != NULL)
				if (other != s && other->paths)
					pe_avro_unresolve(other);
			cache->last = NULL;
		}
	}
	if (!lacking || cache->reader_doc == NULL)
		return true;

	/*
	 * Schemas are fetched before a batch's transaction, but input functions
	 * may read the catalogs (those of arrays, enums and domains): convert
	 * the defaults in a transaction of their own.  It keeps nothing (the
	 * values are copied out), so it ends as an abort, which also drops what
	 * an input function that failed (caught below) left behind.
	 */
	caller = CurrentMemoryContext;
	own = !IsTransactionState();
	if (own)
		StartTransactionCommand();
	/* (a domain's check may run SQL, which needs a snapshot) */
	pushed = !ActiveSnapshotSet();
	if (pushed)
		PushActiveSnapshot(GetTransactionSnapshot());
	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];
		JsonbContainer *field;
		MemoryContext old;
		Datum		d;

		if (col->source != PE_SRC_FIELD || s->paths[c].n >= 0 ||
			(field = pe_avro_json_field(cache->reader_doc, col->path, col->npath)) == NULL)
			continue;
		old = MemoryContextSwitchTo(s->rcxt);
		if (pe_avro_default(col, cache->reader_doc, field, &d))
		{
			s->paths[c].has_default = true;
			s->paths[c].dflt = datumCopy(d, col->typbyval, col->typlen);
		}
		MemoryContextSwitchTo(old);
	}
	if (pushed)
		PopActiveSnapshot();
	if (own)
		AbortCurrentTransaction();
	MemoryContextSwitchTo(caller);
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
	if (!found)
		s->rcxt = NULL;
	pe_avro_unresolve(s);
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
PeAvroSchema *
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

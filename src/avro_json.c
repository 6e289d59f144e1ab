/*-------------------------------------------------------------------------
 *
 * avro_json.c
 *	  What an Avro schema's JSON says that avro-c does not read: logical
 *	  types (with a decimal's scale and precision), the definitions of
 *	  types used again by name, and a record's fields with their types and
 *	  defaults.  For decoding and encoding alike.
 *
 * IDENTIFICATION
 *	  src/avro_json.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "avro_json.h"

JsonbValue *
pe_avro_json_key(JsonbContainer *obj, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
}

bool
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
JsonbContainer *
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

/* A JSON number that is an integer of int32's range, into *out. */
static bool
pe_avro_json_int(JsonbValue *v, int *out)
{
	bool		have_error = false;
	int32		i;

	if (v == NULL || v->type != jbvNumeric ||
		DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(v->val.numeric))) > 0)
		return false;
	i = numeric_int4_opt_error(v->val.numeric, &have_error);
	if (have_error)
		return false;
	*out = i;
	return true;
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
		/*
		 * Avro's specification: precision a positive integer, scale (0
		 * when absent) from 0 to the precision.  A decimal that breaks it
		 * is an invalid logical type, which readers ignore: its values are
		 * the underlying bytes or fixed, as Java's are.  One exception, as
		 * before: a decimal without a precision is read with its scale
		 * (its digits are not counted).
		 */
		JsonbValue *sv = pe_avro_json_key(type, "scale");
		JsonbValue *pv = pe_avro_json_key(type, "precision");

		if ((sv && !pe_avro_json_int(sv, scale)) || (pv && !pe_avro_json_int(pv, precision)) ||
			(pv && *precision < 1) || *scale < 0 || (pv && *scale > *precision))
		{
			*scale = 0;
			*precision = 0;
			return PE_AVRO_PLAIN;
		}
	}
	return logical;
}

/* The field (its object: name, type, default) at path in a record schema's JSON, or NULL. */
JsonbContainer *
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

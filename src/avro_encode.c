/*-------------------------------------------------------------------------
 *
 * avro_encode.c
 *	  Producing Avro: pipeline.avro_encode() turns a jsonb value (a row's
 *	  to_jsonb()) into Avro in the schema registry's wire format, to pass
 *	  to produce() or send() as a bytea value (pipeline.avro_schema(),
 *	  in avro_row_schema.c, derives a schema from a table's row type).
 *
 *	  The schema is the subject's (TopicNameStrategy: <topic>-value, or
 *	  -key): registered when given (the registry returns the id of an
 *	  identical schema it has), else its latest version.  Ids and schemas
 *	  are kept per backend: a given schema for good, a latest version for
 *	  a minute.  A value that does not fit is an error naming the field.
 *
 * IDENTIFICATION
 *	  src/avro_encode.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <avro.h>

#include "catalog/pg_type.h"
#include "common/int.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "avro_json.h"
#include "connection.h"
#include "registry.h"

PG_FUNCTION_INFO_V1(pe_avro_encode);

#define PE_AVRO_KEPT_SCHEMAS 64
#define PE_AVRO_LATEST_MS 60000

/* A subject's schema, as this backend last had it. */
typedef struct PeAvroWriter
{
	char	   *key;			/* connection, URL, subject, and the schema given or "" */
	int32		id;
	TimestampTz at;
	bool		latest;			/* the latest version: asked for again after a minute */
	avro_schema_t schema;
	avro_value_iface_t *iface;
	Jsonb	   *json;			/* for logical types and defaults */
} PeAvroWriter;

static List *pe_writers = NIL;

static void
pe_writer_free(PeAvroWriter *w)
{
	avro_value_iface_decref(w->iface);
	avro_schema_decref(w->schema);
	pfree(w->key);
	pfree(w->json);
	pfree(w);
}

static pg_noinline PeAvroWriter *
pe_writer(PeConnection *conn, const char *subject, const char *schema_text)
{
	const char *url = pe_registry_option(conn, PE_REGISTRY_URL);
	char	   *key = psprintf("%s\x01%s\x01%s\x01%s", conn->name, url ? url : "", subject, schema_text ? schema_text : "");
	ListCell   *lc;
	PeAvroWriter *w;
	char	   *json = schema_text ? pstrdup(schema_text) : NULL;
	int32		id;
	avro_schema_t schema;
	MemoryContext old;

	foreach(lc, pe_writers)
	{
		w = lfirst(lc);
		if (strcmp(w->key, key) == 0)
		{
			if (!w->latest || !TimestampDifferenceExceeds(w->at, GetCurrentTimestamp(), PE_AVRO_LATEST_MS))
				return w;
			pe_writers = foreach_delete_current(pe_writers, lc);
			pe_writer_free(w);
			break;
		}
	}

	if (schema_text && avro_schema_from_json_length(schema_text, strlen(schema_text), &schema) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Avro schema"),
				 errdetail("avro-c: %s", avro_strerror()),
				 errhint("Give a schema in Avro's JSON form, or derive one from a table with pipeline.avro_schema().")));
	if (schema_text)
		avro_schema_decref(schema);
	id = pe_registry_subject_schema(conn, subject, &json);
	if (avro_schema_from_json_length(json, strlen(json), &schema) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("avro-c cannot read the schema of subject \"%s\"", subject),
				 errdetail("avro-c: %s", avro_strerror())));

	if (list_length(pe_writers) >= PE_AVRO_KEPT_SCHEMAS)
	{
		pe_writer_free(linitial(pe_writers));
		pe_writers = list_delete_first(pe_writers);
	}
	{
		avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
		Jsonb	   *doc;

		if (iface == NULL)
		{
			avro_schema_decref(schema);
			elog(ERROR, "avro-c: %s", avro_strerror());
		}
		doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
		old = MemoryContextSwitchTo(TopMemoryContext);
		w = palloc0(sizeof(PeAvroWriter));
		w->key = pstrdup(key);
		w->id = id;
		w->at = GetCurrentTimestamp();
		w->latest = schema_text == NULL;
		w->schema = schema;
		w->iface = iface;
		w->json = palloc(VARSIZE(doc));
		memcpy(w->json, doc, VARSIZE(doc));
		pe_writers = lappend(pe_writers, w);
		MemoryContextSwitchTo(old);
	}
	return w;
}

/* ---- a jsonb value into an Avro value ------------------------------------ */

typedef struct PeEncode
{
	const char *subject;
	Jsonb	   *doc;			/* the schema's JSON (types given by name) */
	bool		defaults;		/* writing a schema's default: Avro's JSON, not to_jsonb()'s */
	StringInfoData path;		/* the field being written, for errors */
} PeEncode;

static void
pe_encode_error(PeEncode *e, const char *fmt, const char *what) pg_attribute_noreturn();

static void
pe_encode_error(PeEncode *e, const char *fmt, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("value does not fit the Avro schema of subject \"%s\": %s: %s", e->subject,
					e->path.len ? psprintf("field \"%s\"", e->path.data) : "the value", psprintf(fmt, what)),
			 errhint("Correct the value, or register a schema that allows it.")));
}

static const char *
pe_json_kind(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "an array" : "an object";
		default:
			return "a value";
	}
}

/* A schema JSON node's object (for logical types, fields, items), or NULL. */
static JsonbContainer *
pe_sj_object(PeEncode *e, JsonbValue *node)
{
	return pe_avro_json_object(node, e->doc);
}

static JsonbValue *
pe_sj_child(PeEncode *e, JsonbValue *node, const char *key)
{
	JsonbContainer *o = pe_sj_object(e, node);

	return o ? pe_avro_json_key(o, key) : NULL;
}

static char *
pe_json_text(JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* A number's integer value; an error when it is not a whole number in range. */
static int64
pe_json_int(PeEncode *e, JsonbValue *v, int64 min, int64 max)
{
	Numeric		n;
	int64		i;

	if (v->type != jbvNumeric)
		pe_encode_error(e, "expected a whole number, got %s", pe_json_kind(v));
	n = v->val.numeric;
	if (numeric_is_nan(n) || numeric_is_inf(n) ||
		!DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(n),
										  DirectFunctionCall2(numeric_trunc, NumericGetDatum(n), Int32GetDatum(0)))))
		pe_encode_error(e, "expected a whole number, got %s", DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n))));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n), NumericGetDatum(int64_to_numeric(min)))) < 0 ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n), NumericGetDatum(int64_to_numeric(max)))) > 0)
		pe_encode_error(e, "%s is out of range", DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n))));
	/* (in range: PostgreSQL 15 has no numeric_int8_opt_error) */
	i = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(n)));
	return i;
}

/*
 * A decimal's unscaled value, two's complement big-endian, in as few bytes
 * as keep its sign (at most size, when size > 0: a fixed, which the caller
 * fills to its size, sign-extended).  Any number of digits: the magnitude
 * is built in base 256 a digit at a time, then negated in place.
 */
static bytea *
pe_decimal_bytes(PeEncode *e, JsonbValue *v, int scale, int precision, int size)
{
	Datum		scaled;
	Datum		n;
	char	   *digits;
	bool		neg;
	int			nd = 0;			/* digits of the unscaled value, leading zeros not counted */
	int			cap;
	unsigned char *mag;			/* the magnitude, big-endian, in mag[start .. cap) */
	int			start;
	int			len;
	bytea	   *out;

	if (v->type != jbvNumeric)
		pe_encode_error(e, "expected a number for a decimal, got %s", pe_json_kind(v));
	n = NumericGetDatum(v->val.numeric);
	if (numeric_is_nan(v->val.numeric) || numeric_is_inf(v->val.numeric))
		pe_encode_error(e, "a decimal cannot be %s", DatumGetCString(DirectFunctionCall1(numeric_out, n)));
	/* the value with its scale's digits, exactly: more would be rounded away */
	scaled = DirectFunctionCall2(numeric_round, n, Int32GetDatum(scale));
	if (!DatumGetBool(DirectFunctionCall2(numeric_eq, n, scaled)))
		pe_encode_error(e, "%s has more than the decimal's scale of digits after the point",
						DatumGetCString(DirectFunctionCall1(numeric_out, n)));
	/* (numeric_out writes exactly scale digits after the point) */
	digits = DatumGetCString(DirectFunctionCall1(numeric_out, scaled));
	neg = digits[0] == '-';

	/* a byte holds more than two decimal digits; one more for the sign */
	cap = (int) strlen(digits) / 2 + 2;
	mag = palloc0(cap);
	start = cap;
	for (char *c = digits + (neg ? 1 : 0); *c; c++)
	{
		unsigned int carry;

		if (*c == '.' || (nd == 0 && *c == '0'))
			continue;
		nd++;
		if (precision > 0 && nd > precision)
			pe_encode_error(e, "%s has more digits than the decimal's precision", digits);
		carry = (unsigned int) (*c - '0');
		for (int i = cap - 1; i >= start; i--)
		{
			unsigned int x = mag[i] * 10 + carry;

			mag[i] = (unsigned char) (x & 0xff);
			carry = x >> 8;
		}
		if (carry)
			mag[--start] = (unsigned char) carry;
	}
	if (neg)
	{
		unsigned int carry = 1;

		for (int i = cap - 1; i >= start; i--)
		{
			unsigned int x = (unsigned char) ~mag[i] + carry;

			mag[i] = (unsigned char) (x & 0xff);
			carry = x >> 8;
		}
	}
	/* a sign byte where the top bit says otherwise (and zero as one byte) */
	if (start == cap || ((mag[start] & 0x80) != 0) != neg)
		mag[--start] = neg ? 0xff : 0x00;
	len = cap - start;
	if (size > 0 && len > size)
		pe_encode_error(e, "%s does not fit the fixed size of the decimal", digits);
	out = palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), mag + start, len);
	pfree(mag);
	return out;
}

static void pe_encode(PeEncode *e, avro_value_t *dest, JsonbValue *node, JsonbValue *v);

/*
 * Which branch of a union takes the value: null for null; else the first
 * of the value's own kind (a string a string or enum, a whole number an
 * int or long, another number a float or double), else the first that can
 * take it (a string a date or bytes, a number a double or decimal).
 */
static int
pe_encode_branch(PeEncode *e, avro_schema_t u, JsonbValue *v)
{
	bool		whole = v->type == jbvNumeric && !numeric_is_nan(v->val.numeric) && !numeric_is_inf(v->val.numeric) &&
		DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(v->val.numeric),
										 DirectFunctionCall2(numeric_trunc, NumericGetDatum(v->val.numeric), Int32GetDatum(0))));

	for (size_t i = 0; i < avro_schema_union_size(u); i++)
	{
		avro_schema_t b = avro_schema_union_branch(u, i);
		avro_type_t t;

		if (is_avro_link(b))
			b = avro_schema_link_target(b);
		t = avro_typeof(b);
		if ((v->type == jbvString && (t == AVRO_STRING || t == AVRO_ENUM)) ||
			(v->type == jbvNumeric && whole && (t == AVRO_INT32 || t == AVRO_INT64)) ||
			(v->type == jbvNumeric && !whole && (t == AVRO_FLOAT || t == AVRO_DOUBLE)))
			return (int) i;
	}
	for (size_t i = 0; i < avro_schema_union_size(u); i++)
	{
		avro_schema_t b = avro_schema_union_branch(u, i);
		avro_type_t t;
		bool		fits;

		if (is_avro_link(b))
			b = avro_schema_link_target(b);
		t = avro_typeof(b);
		switch (v->type)
		{
			case jbvNull:
				fits = t == AVRO_NULL;
				break;
			case jbvBool:
				fits = t == AVRO_BOOLEAN;
				break;
			case jbvNumeric:
				fits = t == AVRO_INT32 || t == AVRO_INT64 || t == AVRO_FLOAT || t == AVRO_DOUBLE ||
					t == AVRO_BYTES || t == AVRO_FIXED;
				break;
			case jbvString:
				fits = t == AVRO_STRING || t == AVRO_ENUM || t == AVRO_BYTES || t == AVRO_FIXED ||
					t == AVRO_INT32 || t == AVRO_INT64;	/* dates, times */
				break;
			default:
				fits = JsonContainerIsArray(v->val.binary.data) ? t == AVRO_ARRAY : (t == AVRO_RECORD || t == AVRO_MAP);
				break;
		}
		if (fits)
			return (int) i;
	}
	pe_encode_error(e, "no branch of the union takes %s", pe_json_kind(v));
	return -1;
}

/* A record's fields from a JSON object: each by name, a missing one its default or null. */
static void
pe_encode_record(PeEncode *e, avro_value_t *dest, JsonbValue *node, JsonbValue *v)
{
	avro_schema_t schema = avro_value_get_schema(dest);
	JsonbValue *fields = pe_sj_child(e, node, "fields");
	size_t		n = avro_schema_record_size(schema);
	int			saved = e->path.len;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		pe_encode_error(e, "expected an object for a record, got %s", pe_json_kind(v));
	/* no key the record does not have: a misspelt name is not silently dropped */
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		if (tok == WJB_KEY)
		{
			char	   *name = pe_json_text(&k);

			if (avro_schema_record_field_get_index(schema, name) < 0)
			{
				if (e->path.len)
					appendStringInfoChar(&e->path, '.');
				appendStringInfoString(&e->path, name);
				pe_encode_error(e, "%s", "the schema has no such field");
			}
		}
	for (size_t i = 0; i < n; i++)
	{
		const char *name = avro_schema_record_field_name(schema, i);
		avro_value_t field;
		JsonbValue *fnode = NULL;
		JsonbValue *fv;
		JsonbValue	null_value;

		if (fields && fields->type == jbvBinary && i < JsonContainerSize(fields->val.binary.data))
			fnode = getIthJsonbValueFromContainer(fields->val.binary.data, i);
		if (e->path.len)
			appendStringInfoChar(&e->path, '.');
		appendStringInfoString(&e->path, name);
		fv = pe_avro_json_key(v->val.binary.data, name);
		if (fv == NULL && !e->defaults && (fv = pe_sj_child(e, fnode, "default")) != NULL)
		{
			/* the field's default, in Avro's JSON */
			avro_value_t field;

			(void) avro_value_get_by_index(dest, i, &field, NULL);
			e->defaults = true;
			pe_encode(e, &field, pe_sj_child(e, fnode, "type"), fv);
			e->defaults = false;
			e->path.len = saved;
			e->path.data[saved] = '\0';
			continue;
		}
		if (fv == NULL && e->defaults)
			fv = pe_sj_child(e, fnode, "default");
		if (fv == NULL)
		{
			avro_schema_t fs = avro_schema_record_field_get_by_index(schema, i);

			if (!is_avro_union(fs) && !is_avro_null(fs))
				pe_encode_error(e, "%s", "missing, and the schema gives it no default");
			null_value.type = jbvNull;
			fv = &null_value;
		}
		(void) avro_value_get_by_index(dest, i, &field, NULL);
		pe_encode(e, &field, pe_sj_child(e, fnode, "type"), fv);
		e->path.len = saved;
		e->path.data[saved] = '\0';
	}
}

static void
pe_encode(PeEncode *e, avro_value_t *dest, JsonbValue *node, JsonbValue *v)
{
	avro_schema_t schema = avro_value_get_schema(dest);
	JsonbContainer *obj = pe_sj_object(e, node);
	int			scale = 0;
	int			precision = 0;
	PeAvroLogical logical = obj ? pe_avro_logical(obj, &scale, &precision) : PE_AVRO_PLAIN;
	int			rc = 0;

	/* a default is Avro's JSON of the type itself: a timestamp's is its number (a decimal's its bytes) */
	if (e->defaults)
		logical = PE_AVRO_PLAIN;

	check_stack_depth();
	switch (avro_typeof(schema))
	{
		case AVRO_NULL:
			if (v->type != jbvNull)
				pe_encode_error(e, "expected null, got %s", pe_json_kind(v));
			rc = avro_value_set_null(dest);
			break;
		case AVRO_BOOLEAN:
			if (v->type != jbvBool)
				pe_encode_error(e, "expected a boolean, got %s", pe_json_kind(v));
			rc = avro_value_set_boolean(dest, v->val.boolean);
			break;
		case AVRO_INT32:
			if (logical == PE_AVRO_DATE || logical == PE_AVRO_TIME_MILLIS)
			{
				if (v->type != jbvString)
					pe_encode_error(e, "%s", psprintf("expected a string for a %s, got %s",
													   logical == PE_AVRO_DATE ? "date" : "time", pe_json_kind(v)));
				if (logical == PE_AVRO_DATE)
				{
					DateADT		d = DatumGetDateADT(DirectFunctionCall1(date_in, CStringGetDatum(pe_json_text(v))));

					if (DATE_NOT_FINITE(d))
						pe_encode_error(e, "%s: Avro has no infinite dates", pe_json_text(v));
					rc = avro_value_set_int(dest, d + PE_AVRO_EPOCH_DAYS);
				}
				else
					rc = avro_value_set_int(dest, (int32) (DatumGetTimeADT(DirectFunctionCall3(time_in, CStringGetDatum(pe_json_text(v)),
																								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1))) / 1000));
			}
			else
				rc = avro_value_set_int(dest, (int32) pe_json_int(e, v, PG_INT32_MIN, PG_INT32_MAX));
			break;
		case AVRO_INT64:
			if (logical == PE_AVRO_PLAIN || logical == PE_AVRO_DECIMAL || logical == PE_AVRO_UUID || logical == PE_AVRO_DATE)
				rc = avro_value_set_long(dest, pe_json_int(e, v, PG_INT64_MIN, PG_INT64_MAX));
			else
			{
				char	   *s;
				int64		us;

				if (v->type != jbvString)
					pe_encode_error(e, "expected a string for a time or timestamp, got %s", pe_json_kind(v));
				s = pe_json_text(v);
				if (logical == PE_AVRO_TIME_MICROS || logical == PE_AVRO_TIME_MILLIS)
					us = DatumGetTimeADT(DirectFunctionCall3(time_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
				else
				{
					if (logical == PE_AVRO_TIMESTAMP_MILLIS || logical == PE_AVRO_TIMESTAMP_MICROS)
						us = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
					else
						us = DatumGetTimestamp(DirectFunctionCall3(timestamp_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
					if (TIMESTAMP_NOT_FINITE(us))
						pe_encode_error(e, "%s: Avro has no infinite timestamps", s);
					us += PE_AVRO_EPOCH_US;
				}
				if (logical == PE_AVRO_TIMESTAMP_MILLIS || logical == PE_AVRO_LOCAL_TIMESTAMP_MILLIS)
				{
					if (us % 1000 != 0)
						pe_encode_error(e, "%s has more than milliseconds", s);
					us /= 1000;
				}
				rc = avro_value_set_long(dest, us);
			}
			break;
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
			{
				double		d;

				if (v->type != jbvNumeric)
					pe_encode_error(e, "expected a number, got %s", pe_json_kind(v));
				d = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
				rc = avro_typeof(schema) == AVRO_FLOAT ? avro_value_set_float(dest, (float) d) : avro_value_set_double(dest, d);
			}
			break;
		case AVRO_STRING:
			{
				char	   *s;

				if (v->type != jbvString)
					pe_encode_error(e, "expected a string, got %s", pe_json_kind(v));
				s = pe_json_text(v);
				if (logical == PE_AVRO_UUID)
					s = DatumGetCString(DirectFunctionCall1(uuid_out, DirectFunctionCall1(uuid_in, CStringGetDatum(s))));
				rc = avro_value_set_string_len(dest, s, strlen(s) + 1);
			}
			break;
		case AVRO_BYTES:
		case AVRO_FIXED:
			{
				bytea	   *b;
				int			size = is_avro_fixed(schema) ? (int) avro_schema_fixed_size(schema) : 0;

				if (logical == PE_AVRO_DECIMAL)
					b = pe_decimal_bytes(e, v, scale, precision, size);
				else if (e->defaults && v->type == jbvString)
				{
					/* Avro's JSON for bytes: a character per byte (code points 0..255) */
					char	   *text = pe_json_text(v);
					int			n = pg_mbstrlen(text);
					const char *c = text;

					b = palloc(VARHDRSZ + n);
					SET_VARSIZE(b, VARHDRSZ + n);
					for (int i = 0; i < n; i++)
					{
						pg_wchar	w = GetDatabaseEncoding() == PG_UTF8 ? utf8_to_unicode((const unsigned char *) c) : (unsigned char) *c;

						if (w > 255)
							pe_encode_error(e, "%s", "a bytes default with a character past \\u00ff");
						VARDATA(b)[i] = (char) w;
						c += pg_mblen(c);
					}
				}
				else
				{
					if (v->type != jbvString)
						pe_encode_error(e, "expected a string (\\x and hex digits, as bytea prints) for bytes, got %s", pe_json_kind(v));
					b = DatumGetByteaPP(DirectFunctionCall1(byteain, CStringGetDatum(pe_json_text(v))));
					if (size > 0 && VARSIZE_ANY_EXHDR(b) != (size_t) size)
						pe_encode_error(e, "%s bytes for a fixed of another size", psprintf("%zu", VARSIZE_ANY_EXHDR(b)));
				}
				if (size > 0)
				{
					unsigned char *copy = palloc(size);

					if (VARSIZE_ANY_EXHDR(b) > (size_t) size)
						pe_encode_error(e, "%s bytes for a fixed of another size", psprintf("%zu", VARSIZE_ANY_EXHDR(b)));

					/* a decimal narrower than the fixed: sign-extended */
					memset(copy, (VARSIZE_ANY_EXHDR(b) > 0 && (((unsigned char *) VARDATA_ANY(b))[0] & 0x80)) ? 0xff : 0, size);
					memcpy(copy + size - VARSIZE_ANY_EXHDR(b), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
					rc = avro_value_set_fixed(dest, copy, size);
				}
				else
					rc = avro_value_set_bytes(dest, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
			}
			break;
		case AVRO_ENUM:
			{
				int			sym;

				if (v->type != jbvString)
					pe_encode_error(e, "expected a string for an enum, got %s", pe_json_kind(v));
				sym = avro_schema_enum_get_by_name(schema, pe_json_text(v));
				if (sym < 0)
					pe_encode_error(e, "\"%s\" is not a symbol of the enum", pe_json_text(v));
				rc = avro_value_set_enum(dest, sym);
			}
			break;
		case AVRO_ARRAY:
			if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
				pe_encode_error(e, "expected an array, got %s", pe_json_kind(v));
			for (uint32 i = 0; i < JsonContainerSize(v->val.binary.data) && rc == 0; i++)
			{
				avro_value_t item;

				rc = avro_value_append(dest, &item, NULL);
				if (rc == 0)
					pe_encode(e, &item, pe_sj_child(e, node, "items"), getIthJsonbValueFromContainer(v->val.binary.data, i));
			}
			break;
		case AVRO_MAP:
			{
				JsonbIterator *it;
				JsonbValue	x;
				JsonbIteratorToken tok;
				char	   *name = NULL;

				if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
					pe_encode_error(e, "expected an object for a map, got %s", pe_json_kind(v));
				it = JsonbIteratorInit(v->val.binary.data);
				while (rc == 0 && (tok = JsonbIteratorNext(&it, &x, true)) != WJB_DONE)
				{
					if (tok == WJB_KEY)
						name = pe_json_text(&x);
					else if (tok == WJB_VALUE)
					{
						avro_value_t item;

						rc = avro_value_add(dest, name, &item, NULL, NULL);
						if (rc == 0)
							pe_encode(e, &item, pe_sj_child(e, node, "values"), &x);
					}
				}
			}
			break;
		case AVRO_RECORD:
			pe_encode_record(e, dest, node, v);
			break;
		case AVRO_UNION:
			{
				int			b = e->defaults ? 0 : pe_encode_branch(e, schema, v);
				avro_value_t branch;
				JsonbValue *bnode = NULL;

				if (node && node->type == jbvBinary && JsonContainerIsArray(node->val.binary.data))
					bnode = getIthJsonbValueFromContainer(node->val.binary.data, b);
				rc = avro_value_set_branch(dest, b, &branch);
				if (rc == 0)
					pe_encode(e, &branch, bnode, v);
			}
			break;
		default:
			pe_encode_error(e, "%s", "an Avro type pipeline_ext cannot write");
	}
	if (rc != 0)
		pe_encode_error(e, "avro-c: %s", avro_strerror());
}

/*
 * pipeline.avro_encode(connection, topic, value jsonb, schema text, subject
 * text, is_key boolean) returns bytea: the value in the wire format.
 */
Datum
pe_avro_encode(PG_FUNCTION_ARGS)
{
	char	   *conn_name;
	char	   *topic;
	Jsonb	   *value;
	char	   *schema_text = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	bool		is_key = !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);
	PeConnection *conn;
	PeAvroWriter *w;
	PeEncode	e;
	avro_value_t record;
	JsonbValue	root;
	JsonbValue	schema_root;
	JsonbValue *v;
	size_t		size;
	bytea	   *volatile out = NULL;
	avro_writer_t writer;
	int			rc;
	MemoryContext cxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection, topic and value must not be null"),
				 errhint("A null value is a tombstone: produce NULL itself, not its encoding.")));
	conn_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	value = PG_GETARG_JSONB_P(2);
	e.defaults = false;
	e.subject = PG_ARGISNULL(4) ? psprintf("%s-%s", topic, is_key ? "key" : "value")
		: text_to_cstring(PG_GETARG_TEXT_PP(4));
	conn = pe_connection_lookup(conn_name, false);
	pe_check_connection_use(conn);
	w = pe_writer(conn, e.subject, schema_text);
	e.doc = w->json;

	initStringInfo(&e.path);
	if (avro_generic_value_new(w->iface, &record) != 0)
		elog(ERROR, "avro-c: %s", avro_strerror());
	PG_TRY();
	{
		if (JB_ROOT_IS_SCALAR(value))
		{
			if (!JsonbExtractScalar(&value->root, &root))
				elog(ERROR, "could not read a jsonb scalar");
			v = &root;
		}
		else
		{
			root.type = jbvBinary;
			root.val.binary.data = &value->root;
			root.val.binary.len = VARSIZE(value);
			v = &root;
		}
		if (JB_ROOT_IS_SCALAR(w->json))
		{
			if (!JsonbExtractScalar(&w->json->root, &schema_root))
				elog(ERROR, "could not read a jsonb scalar");
		}
		else
		{
			schema_root.type = jbvBinary;
			schema_root.val.binary.data = &w->json->root;
			schema_root.val.binary.len = VARSIZE(w->json);
		}
		pe_encode(&e, &record, &schema_root, v);
		if (avro_value_sizeof(&record, &size) != 0)
			elog(ERROR, "avro-c: %s", avro_strerror());
		out = palloc(VARHDRSZ + 5 + size);
		SET_VARSIZE(out, VARHDRSZ + 5 + size);
		((unsigned char *) VARDATA(out))[0] = 0;
		((unsigned char *) VARDATA(out))[1] = (unsigned char) ((uint32) w->id >> 24);
		((unsigned char *) VARDATA(out))[2] = (unsigned char) ((uint32) w->id >> 16);
		((unsigned char *) VARDATA(out))[3] = (unsigned char) ((uint32) w->id >> 8);
		((unsigned char *) VARDATA(out))[4] = (unsigned char) (uint32) w->id;
		writer = avro_writer_memory(VARDATA(out) + 5, size);
		if (writer == NULL)
			elog(ERROR, "avro-c could not make a writer: %s", avro_strerror());
		rc = avro_value_write(writer, &record);
		avro_writer_free(writer);
		if (rc != 0)
			elog(ERROR, "avro-c could not write the value: %s", avro_strerror());
	}
	PG_FINALLY();
	{
		MemoryContextSwitchTo(cxt);
		avro_value_decref(&record);
	}
	PG_END_TRY();
	PG_RETURN_BYTEA_P(out);
}

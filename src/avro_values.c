/*-------------------------------------------------------------------------
 *
 * avro_values.c
 *	  An Avro value into a column: avro-c's values (decode_avro.c) and the
 *	  scalars read straight from the bytes (decode_avro_flat.c), with the
 *	  logical types that avro-c does not interpret (dates, times,
 *	  timestamps, decimals of any width, uuids), arrays into array columns
 *	  item by item, and anything into a json or jsonb column as JSON.
 *
 * IDENTIFICATION
 *	  src/avro_values.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "avro_decode.h"

/* a decimal's bytes at most: those of the 147,455 digits a numeric holds */
#define PE_AVRO_DECIMAL_MAX_BYTES 61232
/* the most digits after the point a numeric holds (numeric.c's PE_AVRO_DECIMAL_MAX_SCALE) */
#define PE_AVRO_DECIMAL_MAX_SCALE 0x3FFF

/* a float as text, its shortest digits (as real's output) */
static char *
pe_float4_text(float f)
{
	return DatumGetCString(DirectFunctionCall1(float4out, Float4GetDatum(f)));
}

/* a value's current branch, for a union; the value otherwise */
avro_value_t *
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

/* An Avro string must be text of the database's encoding (without a zero byte, which text cannot hold). */
void
pe_avro_verify_string(const char *s, size_t len)
{
	if (!pg_verifymbstr(s, len, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("an Avro string is not valid %s text", GetDatabaseEncodingName()),
				 errhint("Correct the producer, then replay the dead letter.")));
}

static const char *
pe_avro_string(avro_value_t *v, size_t *len)
{
	const char *s;
	size_t		size;

	(void) avro_value_get_string(v, &s, &size);
	/* avro-c counts the terminating zero */
	*len = size > 0 ? size - 1 : 0;
	pe_avro_verify_string(s, *len);
	return s;
}

/* Avro as JSON: records and maps objects, unions their branch, bytes "\x..". */
void
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
			else if (avro_value_get_type(v) == AVRO_FLOAT)
				appendStringInfoString(buf, pe_float4_text(f));	/* 0.1, not 0.10000000149011612 */
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
void
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

/*
 * A decimal's unscaled two's complement, big-endian, of any length, as
 * text with its scale: the magnitude's bytes into base-10^9 limbs (least
 * significant first), for a negative one the bytes inverted plus one.
 */
static char *
pe_avro_decimal_text(const unsigned char *b, size_t len, int scale)
{
	bool		neg = len > 0 && (b[0] & 0x80) != 0;
	uint32	   *limbs;
	int			nlimbs = 0;
	uint64		carry;
	StringInfoData digits;
	StringInfoData s;

	/* (the conversion takes time of the square of the length: bounded before it) */
	if (len > PE_AVRO_DECIMAL_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("an Avro decimal of %zu bytes is wider than a numeric holds (%d bytes)",
						len, PE_AVRO_DECIMAL_MAX_BYTES),
				 errhint("Correct the producer, then replay the dead letter.")));
	if (scale > PE_AVRO_DECIMAL_MAX_SCALE)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("an Avro decimal's scale of %d is more than a numeric holds (%d)", scale, PE_AVRO_DECIMAL_MAX_SCALE),
				 errhint("Give the field's schema a scale of at most %d.", PE_AVRO_DECIMAL_MAX_SCALE)));
	limbs = palloc(sizeof(uint32) * (len / 3 + 2));

	for (size_t i = 0; i < len; i++)
	{
		if ((i & 1023) == 1023)
			CHECK_FOR_INTERRUPTS();
		carry = neg ? (uint8) ~b[i] : b[i];
		for (int k = 0; k < nlimbs; k++)
		{
			uint64		v = (uint64) limbs[k] * 256 + carry;

			limbs[k] = (uint32) (v % 1000000000);
			carry = v / 1000000000;
		}
		if (carry)
			limbs[nlimbs++] = (uint32) carry;	/* below 256 */
	}
	if (neg)
	{
		carry = 1;
		for (int k = 0; k < nlimbs && carry; k++)
		{
			uint64		v = (uint64) limbs[k] + carry;

			limbs[k] = (uint32) (v % 1000000000);
			carry = v / 1000000000;
		}
		if (carry)
			limbs[nlimbs++] = (uint32) carry;
	}

	initStringInfo(&digits);
	if (nlimbs == 0)
		appendStringInfoChar(&digits, '0');
	else
	{
		appendStringInfo(&digits, "%u", limbs[nlimbs - 1]);
		for (int k = nlimbs - 2; k >= 0; k--)
			appendStringInfo(&digits, "%09u", limbs[k]);
	}
	pfree(limbs);

	initStringInfo(&s);
	if (neg)
		appendStringInfoChar(&s, '-');
	if (scale <= 0)
		appendBinaryStringInfo(&s, digits.data, digits.len);
	else if (digits.len <= scale)
	{
		appendStringInfoString(&s, "0.");
		for (int i = digits.len; i < scale; i++)
			appendStringInfoChar(&s, '0');
		appendBinaryStringInfo(&s, digits.data, digits.len);
	}
	else
	{
		appendBinaryStringInfo(&s, digits.data, digits.len - scale);
		appendStringInfoChar(&s, '.');
		appendBinaryStringInfo(&s, digits.data + digits.len - scale, scale);
	}
	pfree(digits.data);
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
Datum
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

/*
 * An Avro array into an array column: each item into the column's element
 * type as a field of the items' type would go (logical types too).
 */
static Datum
pe_avro_array(PeColumn *col, PeAvroPath *p, avro_value_t *v)
{
	PeColumn   *e = col->elem;
	PeAvroPath	item = {0};
	size_t		n;
	Datum	   *values;
	bool	   *nulls;
	int			dims[1];
	int			lbs[1] = {1};
	Datum		result;

	item.logical = p->item_logical;
	item.scale = p->item_scale;
	(void) avro_value_get_size(v, &n);
	values = palloc(sizeof(Datum) * Max(n, 1));
	nulls = palloc(sizeof(bool) * Max(n, 1));
	for (size_t i = 0; i < n; i++)
	{
		avro_value_t child;

		(void) avro_value_get_by_index(v, i, &child, NULL);
		values[i] = pe_avro_datum(e, &item, &child, &nulls[i]);
	}
	dims[0] = (int) n;
	result = PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, e->typid, e->typlen,
												e->typbyval, e->typalign));
	/* a domain over the array type: its constraints, through its input */
	if (col->is_domain)
		result = pe_input(col, OutputFunctionCall(&col->outfunc, result));
	return result;
}

/* A value (the field of column col, by path p) into col. */
Datum
pe_avro_datum(PeColumn *col, PeAvroPath *p, avro_value_t *v, bool *isnull)
{
	avro_value_t branch;
	PeAvroScalar x = {0};

	*isnull = false;
	v = pe_avro_branch(v, &branch);
	if (avro_value_get_type(v) == AVRO_NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	if (col->elem && avro_value_get_type(v) == AVRO_ARRAY)
		return pe_avro_array(col, p, v);
	if (col->is_json)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		pe_avro_json(&buf, v, 0);
		return pe_input(col, buf.data);
	}
	x.type = avro_value_get_type(v);
	switch (x.type)
	{
		case AVRO_BOOLEAN:
			{
				int			b;

				(void) avro_value_get_boolean(v, &b);
				x.i = b != 0;
			}
			break;
		case AVRO_INT32:
			{
				int32_t		i32;

				(void) avro_value_get_int(v, &i32);
				x.i = i32;
			}
			break;
		case AVRO_INT64:
			{
				int64_t		i64;

				(void) avro_value_get_long(v, &i64);
				x.i = i64;
			}
			break;
		case AVRO_FLOAT:
			(void) avro_value_get_float(v, &x.f);
			break;
		case AVRO_DOUBLE:
			(void) avro_value_get_double(v, &x.d);
			break;
		case AVRO_BYTES:
		case AVRO_FIXED:
			{
				const void *bytes;

				if (x.type == AVRO_BYTES)
					(void) avro_value_get_bytes(v, &bytes, &x.len);
				else
					(void) avro_value_get_fixed(v, &bytes, &x.len);
				x.bytes = bytes;
			}
			break;
		case AVRO_STRING:
			{
				size_t		size;

				(void) avro_value_get_string(v, &x.bytes, &size);
				/* avro-c counts the terminating zero */
				x.len = size > 0 ? size - 1 : 0;
			}
			break;
		case AVRO_ENUM:
			{
				int			sym;

				(void) avro_value_get_enum(v, &sym);
				x.i = sym;
				x.schema = avro_value_get_schema(v);
			}
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("an Avro %s does not go into column \"%s\" of type %s",
							avro_schema_type_name(avro_value_get_schema(v)), col->name, format_type_be(col->typid)),
					 errhint("Use a json or jsonb column, or map the column to a field inside it with column_map.")));
	}
	return pe_avro_scalar_datum(col, p, &x);
}

/*
 * A primitive value (read by avro-c, or straight from the bytes by
 * decode_avro_flat.c) into col: the field of path p, for its logical type.
 */
Datum
pe_avro_scalar_datum(PeColumn *col, PeAvroPath *p, PeAvroScalar *x)
{
	switch (x->type)
	{
		case AVRO_BOOLEAN:
			if (col->typid == BOOLOID)
				return BoolGetDatum(x->i != 0);
			return pe_input(col, x->i ? "true" : "false");
		case AVRO_INT32:
			return pe_avro_int_datum(col, p->logical, x->i, false);
		case AVRO_INT64:
			return pe_avro_int_datum(col, p->logical, x->i, true);
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
			{
				double		d = x->d;

				if (x->type == AVRO_FLOAT)
				{
					/*
					 * As PostgreSQL's casts from real: the shortest digits
					 * of the float, not those of its double (0.1, not
					 * 0.100000001490116), except into double precision.
					 */
					if (col->typid == FLOAT4OID && col->typmod < 0)
						return Float4GetDatum(x->f);
					if (col->typid == FLOAT8OID && col->typmod < 0)
						return Float8GetDatum((double) x->f);
					if (col->typid == NUMERICOID && col->typmod < 0)
						return DirectFunctionCall1(float4_numeric, Float4GetDatum(x->f));
					return pe_input(col, pe_float4_text(x->f));
				}
				if (col->typid == FLOAT8OID && col->typmod < 0)
					return Float8GetDatum(d);
				if (col->typid == NUMERICOID && col->typmod < 0)
					return DirectFunctionCall1(float8_numeric, Float8GetDatum(d));
				return pe_input(col, float8out_internal(d));
			}
		case AVRO_BYTES:
		case AVRO_FIXED:
			if (p->logical == PE_AVRO_DECIMAL)
			{
				char	   *text = pe_avro_decimal_text((const unsigned char *) x->bytes, x->len, p->scale);
				Datum		d = pe_input(col, text);

				/*
				 * A numeric of a smaller scale (its own typmod, or its
				 * domain's; PostgreSQL 15's scale may be negative) would
				 * round: an error, not a changed value.
				 */
				if (col->numeric_typmod >= (int32) VARHDRSZ)
				{
					int			scale = ((((col->numeric_typmod - VARHDRSZ) & 0x7ff) ^ 1024) - 1024);

					if (scale < p->scale &&
						!DatumGetBool(DirectFunctionCall2(numeric_eq, d,
														  DirectFunctionCall3(numeric_in, CStringGetDatum(text),
																			  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)))))
						ereport(ERROR,
								(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
								 errmsg("Avro decimal %s has more digits after the point than the column's scale of %d",
										text, scale),
								 errhint("Give the column the decimal's scale (%d), then replay the dead letter.", p->scale)));
				}
				return d;
			}
			/* (a domain over bytea: its constraints too) */
			return pe_raw_value(col, x->bytes, x->len, "field");
		case AVRO_STRING:
			pe_avro_verify_string(x->bytes, x->len);
			if ((col->typid == TEXTOID || col->typid == VARCHAROID) && col->typmod < 0)
				return PointerGetDatum(cstring_to_text_with_len(x->bytes, x->len));
			return pe_input(col, pnstrdup(x->bytes, x->len));
		case AVRO_ENUM:
			return pe_input(col, avro_schema_enum_get(x->schema, (int) x->i));
		default:
			elog(ERROR, "unexpected Avro type %d", (int) x->type);
	}
	return (Datum) 0;			/* keep the compiler quiet */
}

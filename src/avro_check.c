/*-------------------------------------------------------------------------
 *
 * avro_check.c
 *	  A message's bytes checked against its writer schema before avro-c
 *	  reads them: avro-c trusts a union's branch number and an enum's index
 *	  (one out of range calls through a wild pointer), and allocates a
 *	  string's length or loops over an array's count before it finds the
 *	  message short.  What does not fit is a dead letter, with the reason.
 *
 * IDENTIFICATION
 *	  src/avro_check.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"

#include "avro_decode.h"

/* items of an array or map whose items take no bytes (nulls, empty records), at most */
#define PE_AVRO_MAX_EMPTY_ITEMS 1000000

/* A zig-zag varint (Avro's int and long) of at most 10 bytes at *p, moved past it; false if it does not end in time. */
bool
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

/*
 * The fewest bytes a value of the schema takes (0 for null, an empty
 * record, fixed(0)), or fewer.  A named type used again (a link: a record
 * may hold itself, or hold another one twice) counts as 0, a lower bound,
 * so that the work is that of the schema's text: following links, a
 * record R {a: R, b: R} would take 2^64 calls.
 */
static int64
pe_avro_min_size(avro_schema_t s, int depth)
{
	int64		n = 0;

	if (depth > 64 || is_avro_link(s))
		return 0;
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
 * a map's key: avro-c keeps it as a C string, so a zero byte would cut it
 * (and two keys could become one), and it goes into JSON as it is
 */
static bool
pe_avro_check_key(const unsigned char **p, const unsigned char *end, const char **why)
{
	const unsigned char *start;
	int64		n;

	if (!pe_avro_varint(p, end, &n) || n < 0 || n > end - *p)
	{
		*why = "a map key longer than what is left of the message";
		return false;
	}
	start = *p;
	*p += n;
	if (!pg_verifymbstr((const char *) start, (int) n, true))
	{
		*why = "a map key that is not valid text (a zero byte, or not the database's encoding)";
		return false;
	}
	return true;
}

/*
 * Whether the bytes from *p hold a value of schema s, without reading past
 * end: avro-c trusts a union's branch number and an enum's index (one out
 * of range calls through a wild pointer), and allocates a string's length
 * and loops over an array's count before it finds the message short.  On
 * false, *why says what is wrong.
 */
bool
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
				int64		min = -1;	/* the fewest bytes of an item, when needed */
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

					/*
					 * The loop below is bounded by the message's length as
					 * long as items take bytes; items that take none (nulls,
					 * empty records) are allowed PE_AVRO_MAX_EMPTY_ITEMS in
					 * all.  (total never passes it, so the sums cannot wrap.)
					 */
					if (min < 0 && (n > end - *p || n > PE_AVRO_MAX_EMPTY_ITEMS - total))
						min = map ? 1 : pe_avro_min_size(item, depth + 1);
					if (min > 0 ? n > (end - *p) / min : (min == 0 && n > PE_AVRO_MAX_EMPTY_ITEMS - total))
					{
						*why = "an array or map with more items than the message can hold";
						return false;
					}
					if (n <= PE_AVRO_MAX_EMPTY_ITEMS - total)
						total += n;
					else
						total = PE_AVRO_MAX_EMPTY_ITEMS;
					for (int64 i = 0; i < n; i++)
					{
						CHECK_FOR_INTERRUPTS();
						if ((map && !pe_avro_check_key(p, end, why)) ||
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

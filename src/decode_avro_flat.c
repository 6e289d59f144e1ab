/*-------------------------------------------------------------------------
 *
 * decode_avro_flat.c
 *	  The common Avro record read in one pass over its bytes, without
 *	  avro-c.  When every column that takes a field of a writer schema
 *	  takes a top-level field of a primitive type, an enum or a fixed (or
 *	  ["null", T] of one), the record's fields are read in order straight
 *	  from the message: those no column takes are skipped (and checked, as
 *	  avro_check.c checks), the others kept as scalars that decode_avro.c
 *	  puts into their columns as it does avro-c's values.  Records with
 *	  nested paths, arrays or maps into columns go through avro-c, as does
 *	  a message that does not read cleanly here: the long way says what is
 *	  wrong with it.
 *
 *	  Avro's binary encoding: int and long zig-zag varints, float and
 *	  double little-endian IEEE 754, boolean one byte, string and bytes a
 *	  long length and the bytes, fixed its size in bytes, enum and union
 *	  branch an int index, null nothing.
 *
 * IDENTIFICATION
 *	  src/decode_avro_flat.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "avro_decode.h"

/* How a field of a flat record is read. */
typedef struct PeAvroFlatField
{
	avro_schema_t schema;		/* the field's type: a field no column takes is skipped by it */
	bool		taken;			/* some column takes it */
	avro_type_t type;			/* a taken field's type: its non-null branch for a union */
	avro_schema_t type_schema;	/* ... as a schema (an enum's symbols, a fixed's size) */
	int			null_branch;	/* a union: the null's branch (0 or 1); -1: not a union */
} PeAvroFlatField;

struct PeAvroFlat
{
	int			nfields;
	PeAvroFlatField *fields;
	PeAvroScalar *values;		/* the message's, field by field ... */
	bool	   *nulls;			/* ... and which are null */
};

static avro_schema_t
pe_avro_flat_deref(avro_schema_t s)
{
	return is_avro_link(s) ? avro_schema_link_target(s) : s;
}

static bool
pe_avro_flat_primitive(avro_schema_t s)
{
	switch (avro_typeof(s))
	{
		case AVRO_NULL:
		case AVRO_BOOLEAN:
		case AVRO_INT32:
		case AVRO_INT64:
		case AVRO_FLOAT:
		case AVRO_DOUBLE:
		case AVRO_STRING:
		case AVRO_BYTES:
		case AVRO_ENUM:
		case AVRO_FIXED:
			return true;
		default:
			return false;
	}
}

/*
 * The plan for reading the records of writer schema s (resolved for target
 * t: s->paths) in one pass, in memory of cxt; NULL when some column needs
 * more than a top-level primitive field, or takes one as JSON.
 */
PeAvroFlat *
pe_avro_flat_plan(PeTarget *t, PeAvroSchema *s, MemoryContext cxt)
{
	avro_schema_t rec = s->schema;
	PeAvroFlat *f;
	int			n;

	if (rec == NULL || !is_avro_record(rec))
		return NULL;
	n = (int) avro_schema_record_size(rec);
	for (int c = 0; c < t->ncols; c++)
		if (s->paths[c].n == 0 || s->paths[c].n > 1 || (s->paths[c].n == 1 && t->cols[c].is_json))
			return NULL;

	f = MemoryContextAllocZero(cxt, sizeof(PeAvroFlat));
	f->nfields = n;
	f->fields = MemoryContextAllocZero(cxt, sizeof(PeAvroFlatField) * Max(n, 1));
	f->values = MemoryContextAllocZero(cxt, sizeof(PeAvroScalar) * Max(n, 1));
	f->nulls = MemoryContextAllocZero(cxt, sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		f->fields[i].schema = avro_schema_record_field_get_by_index(rec, i);
		f->fields[i].null_branch = -1;
	}
	for (int c = 0; c < t->ncols; c++)
	{
		PeAvroFlatField *ff;
		avro_schema_t ft;

		if (s->paths[c].n != 1)
			continue;
		ff = &f->fields[s->paths[c].idx[0]];
		ft = pe_avro_flat_deref(ff->schema);
		if (is_avro_union(ft))
		{
			avro_schema_t b0;
			avro_schema_t b1;

			if (avro_schema_union_size(ft) != 2)
				goto not_flat;
			b0 = pe_avro_flat_deref(avro_schema_union_branch(ft, 0));
			b1 = pe_avro_flat_deref(avro_schema_union_branch(ft, 1));
			if (is_avro_null(b0) && !is_avro_null(b1))
			{
				ff->null_branch = 0;
				ft = b1;
			}
			else if (is_avro_null(b1) && !is_avro_null(b0))
			{
				ff->null_branch = 1;
				ft = b0;
			}
			else
				goto not_flat;
		}
		if (!pe_avro_flat_primitive(ft))
			goto not_flat;
		ff->taken = true;
		ff->type = avro_typeof(ft);
		ff->type_schema = ft;
	}
	return f;

not_flat:
	pfree(f->fields);
	pfree(f->values);
	pfree(f->nulls);
	pfree(f);
	return NULL;
}

/* n bytes, little-endian, as an unsigned integer */
static inline uint64
pe_avro_flat_le(const unsigned char *p, int n)
{
	uint64		u = 0;

	for (int i = n - 1; i >= 0; i--)
		u = (u << 8) | p[i];
	return u;
}

/*
 * Read the record at p .. end (the message after its 5-byte header) field
 * by field into f's values; false when it does not read cleanly to its
 * last byte (the caller then reads it the long way, which tells why).
 */
bool
pe_avro_flat_read(PeAvroFlat *f, const unsigned char *p, const unsigned char *end)
{
	for (int i = 0; i < f->nfields; i++)
	{
		PeAvroFlatField *ff = &f->fields[i];
		PeAvroScalar *x = &f->values[i];
		int64		n;

		if (!ff->taken)
		{
			const char *why;

			if (!pe_avro_check(ff->schema, &p, end, 1, &why))
				return false;
			continue;
		}
		f->nulls[i] = false;
		if (ff->null_branch >= 0)
		{
			if (!pe_avro_varint(&p, end, &n) || (n != 0 && n != 1))
				return false;
			if (n == ff->null_branch)
			{
				f->nulls[i] = true;
				continue;
			}
		}
		x->type = ff->type;
		switch (ff->type)
		{
			case AVRO_NULL:
				f->nulls[i] = true;
				break;
			case AVRO_BOOLEAN:
				if (p >= end || *p > 1)
					return false;
				x->i = *p++;
				break;
			case AVRO_INT32:
				if (!pe_avro_varint(&p, end, &x->i) || x->i < PG_INT32_MIN || x->i > PG_INT32_MAX)
					return false;
				break;
			case AVRO_INT64:
				if (!pe_avro_varint(&p, end, &x->i))
					return false;
				break;
			case AVRO_FLOAT:
				{
					uint32		u;

					if (end - p < 4)
						return false;
					u = (uint32) pe_avro_flat_le(p, 4);
					memcpy(&x->f, &u, 4);
					p += 4;
				}
				break;
			case AVRO_DOUBLE:
				{
					uint64		u;

					if (end - p < 8)
						return false;
					u = pe_avro_flat_le(p, 8);
					memcpy(&x->d, &u, 8);
					p += 8;
				}
				break;
			case AVRO_STRING:
			case AVRO_BYTES:
				if (!pe_avro_varint(&p, end, &n) || n < 0 || n > end - p)
					return false;
				x->bytes = (const char *) p;
				x->len = (size_t) n;
				p += n;
				break;
			case AVRO_FIXED:
				n = avro_schema_fixed_size(ff->type_schema);
				if (n > end - p)
					return false;
				x->bytes = (const char *) p;
				x->len = (size_t) n;
				p += n;
				break;
			case AVRO_ENUM:
				if (!pe_avro_varint(&p, end, &x->i) || x->i < 0 ||
					x->i >= avro_schema_enum_number_of_symbols(ff->type_schema))
					return false;
				x->schema = ff->type_schema;
				break;
			default:
				return false;
		}
	}
	return p == end;
}

/* Field i of the record read last: its value, or NULL when it is null. */
PeAvroScalar *
pe_avro_flat_value(PeAvroFlat *f, int i)
{
	return f->nulls[i] ? NULL : &f->values[i];
}

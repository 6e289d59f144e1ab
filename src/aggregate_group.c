/*-------------------------------------------------------------------------
 *
 * aggregate_group.c
 *	  An event's groups as aggregate_pre.c groups a batch by them: which
 *	  way each group column's values are hashed and compared (their
 *	  numbers, their bytes, or the type's functions), and an event's key
 *	  and hash.
 *
 * IDENTIFICATION
 *	  src/aggregate_group.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "utils/lsyscache.h"

#include "aggregate_group.h"

/* How values of a group column of type typid in collation coll are best hashed and compared. */
PeGroupCmp
pe_group_cmp_of(Oid typid, Oid coll)
{
	switch (typid)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case BOOLOID:
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return PE_GROUP_BITS;
		case TEXTOID:
		case VARCHAROID:
			if (OidIsValid(coll) && (coll == DEFAULT_COLLATION_OID || get_collation_isdeterministic(coll)))
				return PE_GROUP_BYTES;
			return PE_GROUP_FMGR;
		default:
			return PE_GROUP_FMGR;
	}
}

/* A PE_GROUP_BITS value of type typid as a number (the same for equal values, whatever the Datum's upper bits). */
static int64
pe_group_bits(Oid typid, Datum d)
{
	switch (typid)
	{
		case INT2OID:
			return DatumGetInt16(d);
		case INT4OID:
		case DATEOID:
			return DatumGetInt32(d);
		case OIDOID:
			return DatumGetObjectId(d);
		case BOOLOID:
			return DatumGetBool(d);
		default:
			return DatumGetInt64(d);
	}
}

/* Group g's value in row as its kind of comparison takes it (PE_GROUP_FMGR: only whether it is null). */
void
pe_group_key(PeAggGroupFns *gf, PeColumn *col, PeRow *row, int c, PeGroupKey *k)
{
	k->isnull = row->nulls[c];
	k->len = 0;
	k->bytes = NULL;
	k->bits = 0;
	if (k->isnull)
		return;
	if (gf->how == PE_GROUP_BITS)
		k->bits = pe_group_bits(col->typid, row->values[c]);
	else if (gf->how == PE_GROUP_BYTES)
	{
		/* (the decoder's values are not toasted: this is the value's own memory) */
		struct varlena *x = (struct varlena *) DatumGetPointer(row->values[c]);

		if (VARATT_IS_COMPRESSED(x) || VARATT_IS_EXTERNAL(x))
			x = pg_detoast_datum_packed(x);

		k->bytes = VARDATA_ANY(x);
		k->len = VARSIZE_ANY_EXHDR(x);
		if (k->len <= PE_GROUP_INLINE)
		{
			memset(k->inl, 0, sizeof(k->inl));
			memcpy(k->inl, k->bytes, k->len);
		}
	}
}

/*
 * An event's groups' hash: each value's (the type's own hash function in
 * the column's collation, or its number's or bytes'); *k0 gets its first
 * group's key.
 */
uint32
pe_group_hash(PeAggregate *a, PeTarget *t, const int *cols, PeAggGroupFns *gf, PeRow *row, PeGroupKey *k0)
{
	uint32		h = 0;

	for (int g = 0; g < a->ngroups; g++)
	{
		PeColumn   *col = &t->cols[cols[1 + g]];
		PeGroupKey	k;
		uint32		v = 0x9e3779b9;

		pe_group_key(&gf[g], col, row, cols[1 + g], &k);
		if (g == 0)
			*k0 = k;
		if (k.isnull)
			;
		else if (gf[g].how == PE_GROUP_BITS)
			v = hash_bytes_uint32((uint32) k.bits) ^ hash_bytes_uint32((uint32) ((uint64) k.bits >> 32));
		else if (gf[g].how == PE_GROUP_BYTES)
			v = hash_bytes((const unsigned char *) k.bytes, k.len);
		else
			v = DatumGetUInt32(FunctionCall1Coll(gf[g].hash, col->collation, row->values[cols[1 + g]]));
		h = (h << 5 | h >> 27) ^ v;
	}
	return h;
}

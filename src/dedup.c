/*-------------------------------------------------------------------------
 *
 * dedup.c
 *	  Keeping only the newest message per key within a batch (upsert mode):
 *	  one INSERT ... ON CONFLICT DO UPDATE cannot touch a row twice.  Newest
 *	  is the highest offset within a partition, the newer timestamp across
 *	  partitions.
 *
 * IDENTIFICATION
 *	  src/dedup.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "fmgr.h"

#include "datapath.h"

/* Two text values as bytes: memcmp order, the shorter first on a tie. */
int
pe_key_bytes_cmp(Datum a, Datum b)
{
	text	   *ta = DatumGetTextPP(a);
	text	   *tb = DatumGetTextPP(b);
	size_t		la = VARSIZE_ANY_EXHDR(ta);
	size_t		lb = VARSIZE_ANY_EXHDR(tb);
	int			r = memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), Min(la, lb));

	if (r != 0)
		return r;
	return (la > lb) - (la < lb);
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
		if (t->cols[c].bytewise)
		{
			text	   *v = DatumGetTextPP(row->values[c]);

			h = hash_combine(h, DatumGetUInt32(hash_any((unsigned char *) VARDATA_ANY(v),
														VARSIZE_ANY_EXHDR(v))));
		}
		else
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

		if (t->cols[c].bytewise)
		{
			if (pe_key_bytes_cmp(a->values[c], b->values[c]) != 0)
				return false;
		}
		else if (!DatumGetBool(FunctionCall2Coll(t->cols[c].eq_fn, t->cols[c].collation,
												 a->values[c], b->values[c])))
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

/* Keep only the newest row per key (upsert mode). */
void
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

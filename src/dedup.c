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

		if (!DatumGetBool(FunctionCall2Coll(t->cols[c].eq_fn, t->cols[c].collation, a->values[c], b->values[c])))
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

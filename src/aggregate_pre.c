/*-------------------------------------------------------------------------
 *
 * aggregate_pre.c
 *	  A batch's events grouped in C before they reach the results: for the
 *	  common aggregate (tumbling or hopping windows without a time zone;
 *	  count, sum, avg, min and max), each window and group's partial
 *	  aggregates of the batch are computed here, as PostgreSQL's own
 *	  aggregates compute them (the same types, the same arithmetic), and
 *	  the merge statement gets one row per window and group instead of one
 *	  per event: no unnesting, binning and hash-grouping of every event in
 *	  SQL.  The merge itself (ON CONFLICT, emitting) is aggregate_merge.c's.
 *	  Other aggregates go through aggregate_merge.c's statement whole.
 *
 * IDENTIFICATION
 *	  src/aggregate_pre.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/typcache.h"

#include "aggregate_group.h"

/* windows and groups of one batch, at most: more go through the SQL statement (which can spill) */
#define PE_PRE_MAX_CELLS 1000000

typedef enum PeAggFn
{
	PE_PRE_COUNT,
	PE_PRE_SUM,
	PE_PRE_AVG,
	PE_PRE_MIN,
	PE_PRE_MAX
} PeAggFn;

/* One window and group of the batch, and its partial aggregates. */
typedef struct PeAggCell
{
	int64		ws;				/* the window's start, in the time column's microseconds */
	int			row;			/* an event of it: its group's values */
	uint32		hash;
	int			next;			/* in its bucket's chain; -1: the last */
	PeGroupKey	g0;				/* its first group's value, compared without a trip to its event */
} PeAggCell;

/*
 * One function's partial state in a cell.  A function uses the fields of
 * its argument's type only: they share memory, so that the states of a
 * cell's functions take fewer cache lines (an event touches all of them).
 */
typedef struct PeAggAcc
{
	int64		count;			/* values counted (count, avg) */
	bool		any;			/* a value seen (sum, min, max) */
	union
	{
		int64		i;			/* sum of int2/int4 */
		int128		i128;		/* sum of int8 */
		Datum		d;			/* sum of numeric; min, max */
		struct
		{
			float8		f8;		/* sum of float8 (from its first value), of float4 in float8 */
			float8		avg8;	/* avg of floats: their sum from 0, in float8 */
			float4		f4;		/* sum of float4 */
		};
	};
} PeAggAcc;

/* What a function reads and how. */
typedef struct PeAggPlan
{
	PeAggFn		fn;
	PeColumn   *col;			/* its argument; NULL for count(*) */
	int			colidx;			/* ... its index into the target's columns */
	FmgrInfo   *cmp;			/* min, max: the type's btree comparison */
	Oid			collation;
} PeAggPlan;

/*
 * x compared with y as the btree comparison cmp of type typid compares
 * them (in collation): without a function call for the types whose
 * comparison is their numbers'.
 */
int
pe_agg_compare(Oid typid, FmgrInfo *cmp, Oid collation, Datum x, Datum y)
{
	switch (typid)
	{
		case INT2OID:
			return (DatumGetInt16(x) > DatumGetInt16(y)) - (DatumGetInt16(x) < DatumGetInt16(y));
		case INT4OID:
		case DATEOID:
			return (DatumGetInt32(x) > DatumGetInt32(y)) - (DatumGetInt32(x) < DatumGetInt32(y));
		case INT8OID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return (DatumGetInt64(x) > DatumGetInt64(y)) - (DatumGetInt64(x) < DatumGetInt64(y));
		case FLOAT8OID:
			return float8_cmp_internal(DatumGetFloat8(x), DatumGetFloat8(y));
		case FLOAT4OID:
			return float4_cmp_internal(DatumGetFloat4(x), DatumGetFloat4(y));
		default:
			return DatumGetInt32(FunctionCall2Coll(cmp, collation, x, y));
	}
}

static bool
pe_pre_summable(Oid typid)
{
	return typid == INT2OID || typid == INT4OID || typid == INT8OID || typid == FLOAT4OID ||
		typid == FLOAT8OID || typid == NUMERICOID;
}

/*
 * The functions of a as C can compute them, or false: a session, a
 * cumulative window or a time zone, a function other than count, sum,
 * avg, min and max, a sum or avg of a type other than the numbers', a
 * min or max of a type without an order, a group without hashing.
 */
static bool
pe_pre_plan(PeAggregate *a, PeTarget *t, const int *cols, int ncols, PeAggPlan *plan, PeAggGroupFns *gf)
{
	if (a->session || a->cumulative || a->time_zone)
		return false;
	for (int g = 0; g < a->ngroups; g++)
	{
		TypeCacheEntry *tc = lookup_type_cache(t->cols[cols[1 + g]].typid,
											   TYPECACHE_HASH_PROC_FINFO | TYPECACHE_EQ_OPR_FINFO);

		if (!OidIsValid(tc->hash_proc) || !OidIsValid(tc->eq_opr))
			return false;
		gf[g].hash = &tc->hash_proc_finfo;
		gf[g].eq = &tc->eq_opr_finfo;
		gf[g].how = pe_group_cmp_of(t->cols[cols[1 + g]].typid, t->cols[cols[1 + g]].collation);
	}
	for (int i = 0; i < a->naggs; i++)
	{
		const char *fn = a->fns[i];
		PeAggPlan  *p = &plan[i];

		memset(p, 0, sizeof(*p));
		if (strcmp(fn, "count") == 0)
			p->fn = PE_PRE_COUNT;
		else if (strcmp(fn, "sum") == 0)
			p->fn = PE_PRE_SUM;
		else if (strcmp(fn, "avg") == 0)
			p->fn = PE_PRE_AVG;
		else if (strcmp(fn, "min") == 0)
			p->fn = PE_PRE_MIN;
		else if (strcmp(fn, "max") == 0)
			p->fn = PE_PRE_MAX;
		else
			return false;
		if (strcmp(a->args[i], "*") == 0)
		{
			if (p->fn != PE_PRE_COUNT)
				return false;
			continue;
		}
		for (int c = 1; c < ncols && p->col == NULL; c++)
			if (strcmp(t->cols[cols[c]].name, a->args[i]) == 0)
			{
				p->colidx = cols[c];
				p->col = &t->cols[cols[c]];
			}
		if (p->col == NULL)
			return false;
		if ((p->fn == PE_PRE_SUM || p->fn == PE_PRE_AVG) && !pe_pre_summable(p->col->typid))
			return false;
		if (p->fn == PE_PRE_MIN || p->fn == PE_PRE_MAX)
		{
			TypeCacheEntry *tc = lookup_type_cache(p->col->typid, TYPECACHE_CMP_PROC_FINFO);

			/* (an array column's values travel as text: aggregate_merge.c's statement) */
			if (!OidIsValid(tc->cmp_proc) || p->col->via_text)
				return false;
			p->cmp = &tc->cmp_proc_finfo;
			p->collation = p->col->collation;
		}
	}
	return true;
}

/*
 * The type this path computes item k of function p in (0: its value; for
 * avg 1: the sum, 2: the count), as the SQL aggregate returns it.
 */
static Oid
pe_pre_item_type(PeAggPlan *p, int item)
{
	Oid			arg = p->col ? getBaseType(p->col->typid) : InvalidOid;

	if (p->fn == PE_PRE_COUNT || (p->fn == PE_PRE_AVG && item == 2))
		return INT8OID;
	if (p->fn == PE_PRE_MIN || p->fn == PE_PRE_MAX)
		return arg;
	if (p->fn == PE_PRE_AVG && item == 0)
		return (arg == FLOAT4OID || arg == FLOAT8OID) ? FLOAT8OID : NUMERICOID;
	if (p->fn == PE_PRE_AVG && item == 1 && arg == FLOAT4OID)
		return FLOAT8OID;		/* avg(real) sums in double precision */
	/* a sum */
	switch (arg)
	{
		case INT2OID:
		case INT4OID:
			return INT8OID;
		case FLOAT4OID:
		case FLOAT8OID:
			return arg;
		default:
			return NUMERICOID;
	}
}

/* A window and group's hash: its start's and its groups'. */
static inline uint32
pe_pre_cell_hash(int64 ws, uint32 group_hash)
{
	return hash_combine(hash_bytes_uint32((uint32) ws) ^ hash_bytes_uint32((uint32) (ws >> 32)), group_hash);
}

/*
 * Whether event y has the groups of cell x (whose event is rows[x->row]),
 * null equal to null, as GROUP BY has it; yk0: y's first group's key.
 */
static bool
pe_pre_same(PeAggregate *a, PeTarget *t, const int *cols, PeAggGroupFns *gf, PeAggCell *x, PeRow *rows,
			const PeGroupKey *yk0, PeRow *y)
{
	for (int g = 0; g < a->ngroups; g++)
	{
		int			c = cols[1 + g];
		PeColumn   *col = &t->cols[c];
		PeRow	   *xr = &rows[x->row];

		if (gf[g].how != PE_GROUP_FMGR)
		{
			PeGroupKey	xk;
			PeGroupKey	yk;

			if (g == 0)
			{
				if (!pe_group_key_same(gf[g].how, &x->g0, yk0))
					return false;
				continue;
			}
			pe_group_key(&gf[g], col, xr, c, &xk);
			pe_group_key(&gf[g], col, y, c, &yk);
			if (!pe_group_key_same(gf[g].how, &xk, &yk))
				return false;
			continue;
		}
		if (xr->nulls[c] || y->nulls[c])
		{
			if (xr->nulls[c] != y->nulls[c])
				return false;
			continue;
		}
		if (!DatumGetBool(FunctionCall2Coll(gf[g].eq, col->collation, xr->values[c], y->values[c])))
			return false;
	}
	return true;
}

/* One event's value into a function's partial state, as the SQL aggregate adds it. */
static void
pe_pre_add(PeAggPlan *p, PeAggAcc *acc, Datum v)
{
	switch (p->fn)
	{
		case PE_PRE_COUNT:
			acc->count++;
			break;
		case PE_PRE_SUM:
		case PE_PRE_AVG:
			acc->count++;
			acc->any = true;
			switch (p->col->typid)
			{
				case INT2OID:
				case INT4OID:
					{
						int64		x = p->col->typid == INT2OID ? DatumGetInt16(v) : DatumGetInt32(v);

						if (pg_add_s64_overflow(acc->i, x, &acc->i))
							ereport(ERROR,
									(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
									 errmsg("bigint out of range")));
					}
					break;
				case INT8OID:
					acc->i128 += DatumGetInt64(v);
					break;
				case FLOAT4OID:
					/* sum() starts from the first value (a lone -0 stays -0); avg() adds to 0 */
					acc->f4 = acc->count == 1 ? DatumGetFloat4(v) : float4_pl(acc->f4, DatumGetFloat4(v));
					acc->f8 = float8_pl(acc->f8, (float8) DatumGetFloat4(v));
					acc->avg8 = acc->f8;
					break;
				case FLOAT8OID:
					acc->avg8 = float8_pl(acc->avg8, DatumGetFloat8(v));
					acc->f8 = acc->count == 1 ? DatumGetFloat8(v) : float8_pl(acc->f8, DatumGetFloat8(v));
					break;
				case NUMERICOID:
					acc->d = acc->count == 1 ? v : DirectFunctionCall2(numeric_add, acc->d, v);
					break;
			}
			break;
		case PE_PRE_MIN:
		case PE_PRE_MAX:
			if (!acc->any)
				acc->d = v;
			else
			{
				int			c = pe_agg_compare(p->col->typid, p->cmp, p->collation, v, acc->d);

				/* a tie takes the later value, as min() and max() do (numeric 1.0, then 1.00) */
				if (p->fn == PE_PRE_MIN ? c <= 0 : c >= 0)
					acc->d = v;
			}
			acc->any = true;
			break;
	}
}

/* An int128 as a numeric: hi * 2^64 + lo, lo in two 32-bit halves. */
static Datum
pe_pre_int128_numeric(int128 x)
{
	Datum		two32;
	Datum		d;
	uint64		lo = (uint64) x;

	if (x >= PG_INT64_MIN && x <= PG_INT64_MAX)
		return NumericGetDatum(int64_to_numeric((int64) x));
	two32 = NumericGetDatum(int64_to_numeric((int64) 1 << 32));
	d = NumericGetDatum(int64_to_numeric((int64) (x >> 64)));
	d = DirectFunctionCall2(numeric_mul, d, two32);
	d = DirectFunctionCall2(numeric_add, d, NumericGetDatum(int64_to_numeric((int64) (lo >> 32))));
	d = DirectFunctionCall2(numeric_mul, d, two32);
	return DirectFunctionCall2(numeric_add, d, NumericGetDatum(int64_to_numeric((int64) (lo & 0xffffffff))));
}

/* A sum's value, in sum()'s type for its argument's: int8, numeric, float4, float8. */
static Datum
pe_pre_sum(PeAggPlan *p, PeAggAcc *acc)
{
	switch (p->col->typid)
	{
		case INT2OID:
		case INT4OID:
			return Int64GetDatum(acc->i);
		case INT8OID:
			return pe_pre_int128_numeric(acc->i128);
		case FLOAT4OID:
			return Float4GetDatum(acc->f4);
		case FLOAT8OID:
			return Float8GetDatum(acc->f8);
		default:
			return acc->d;
	}
}

/* An average's value, as avg() finishes it: numeric division, or double's for floats. */
static Datum
pe_pre_avg(PeAggPlan *p, PeAggAcc *acc)
{
	Datum		sum;

	if (p->col->typid == FLOAT4OID || p->col->typid == FLOAT8OID)
		return Float8GetDatum(acc->avg8 / (float8) acc->count);
	if (p->col->typid == NUMERICOID)
		sum = acc->d;
	else if (p->col->typid == INT8OID)
		sum = pe_pre_int128_numeric(acc->i128);
	else
		sum = NumericGetDatum(int64_to_numeric(acc->i));
	return DirectFunctionCall2(numeric_div, sum, NumericGetDatum(int64_to_numeric(acc->count)));
}

/* The type of a column of relation rel, and how its values are stored. */
static void
pe_pre_column_type(Oid rel, const char *name, Oid *typid, int16 *typlen, bool *typbyval, char *typalign)
{
	*typid = get_atttype(rel, get_attnum(rel, name));
	get_typlenbyvalalign(*typid, typlen, typbyval, typalign);
}

/*
 * Merge the batch's events take[0..ntake) (rows, their times) into the
 * results of a when its functions can be computed here (pe_pre_plan);
 * false, having done nothing, when they cannot.
 */
bool
pe_agg_pre_merge(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake,
				 const int *cols, int ncols)
{
	PeAggPlan  *plan = palloc(sizeof(PeAggPlan) * Max(a->naggs, 1));
	PeAggGroupFns *gf = palloc(sizeof(PeAggGroupFns) * Max(a->ngroups, 1));
	Oid			time_type = cols[0] >= 0 ? t->cols[cols[0]].typid : TIMESTAMPTZOID;
	Oid			res = a->emit_close ? a->state : a->results;
	int			nbuckets = 1024;
	int		   *buckets;
	PeAggCell  *cells;
	PeAggAcc   *accs;			/* cell by cell, a->naggs each */
	int			ncells = 0;
	int			maxcells = 1024;
	int			nitems = 0;
	int			nargs;
	Oid		   *types;
	Datum	   *values;
	char	   *nulls;
	StringInfoData sql;
	int			arg;
	int64		inserted;
	Datum	   *ws;
	Datum	   *we;
	uint32	   *hashes;
	PeColumn  **gcols;
	Datum	  **gv;
	bool	  **gn;
	PeAggItem  *items;
	Datum	  **iv;
	bool	  **in;

	if (!pe_pre_plan(a, t, cols, ncols, plan, gf))
		return false;
	/* the results' columns must be of the types computed here (ALTER TABLE may have changed either) */
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			nstate = pe_agg_state_columns(a->fns[i], suffixes);

		for (int item = 0; item <= nstate; item++)
		{
			const char *name = item == 0 ? a->outs[i] : psprintf("%s__%s", a->outs[i], suffixes[item - 1]);

			Oid			want = pe_pre_item_type(&plan[i], item);

			if (get_atttype(res, get_attnum(res, name)) != want || !OidIsValid(get_array_type(want)))
				return false;
		}
	}

	buckets = palloc(sizeof(int) * nbuckets);
	memset(buckets, -1, sizeof(int) * nbuckets);
	cells = palloc(sizeof(PeAggCell) * maxcells);
	accs = palloc0(sizeof(PeAggAcc) * maxcells * Max(a->naggs, 1));

	/* each event into each of its windows that is open (a tumbling window's is) */
	for (int k = 0; k < ntake; k++)
	{
		int			r = take[k];
		int64		tm = DatumGetInt64(times[r]);
		int64		last = pe_agg_bin(tm, a->slide_us, a->origin);
		int64		lookback = ((a->size_us + a->slide_us - 1) / a->slide_us - 1) * a->slide_us;
		PeGroupKey	k0 = {true, 0, NULL, 0, {0}};	/* (no group: never read) */
		uint32		gh = pe_group_hash(a, t, cols, gf, &rows[r], &k0);

		for (int64 ws = last - lookback; ws <= last; ws += a->slide_us)
		{
			uint32		h;
			int			cell;

			if (ws + a->size_us <= tm)
				continue;		/* ends before the event */
			if (a->slide_us != a->size_us && a->has_cp && ws + a->size_us <= a->cp)
				continue;		/* closed: stays as it closed */
			h = pe_pre_cell_hash(ws, gh);
			for (cell = buckets[h & (nbuckets - 1)]; cell >= 0; cell = cells[cell].next)
				if (cells[cell].hash == h && cells[cell].ws == ws && pe_pre_same(a, t, cols, gf, &cells[cell], rows, &k0, &rows[r]))
					break;
			if (cell < 0)
			{
				if (ncells == PE_PRE_MAX_CELLS)
					return false;	/* (nothing written yet: the SQL statement, which can spill) */
				if (ncells == nbuckets)
				{
					/* as many buckets as cells, at least: chained again */
					nbuckets *= 2;
					buckets = repalloc(buckets, sizeof(int) * nbuckets);
					memset(buckets, -1, sizeof(int) * nbuckets);
					for (int c = 0; c < ncells; c++)
					{
						cells[c].next = buckets[cells[c].hash & (nbuckets - 1)];
						buckets[cells[c].hash & (nbuckets - 1)] = c;
					}
				}
				if (ncells == maxcells)
				{
					/* (the states of many functions: past an allocation's limit, the statement too) */
					if (!AllocSizeIsValid(sizeof(PeAggAcc) * maxcells * 2 * Max(a->naggs, 1)))
						return false;
					cells = repalloc(cells, sizeof(PeAggCell) * maxcells * 2);
					accs = repalloc(accs, sizeof(PeAggAcc) * maxcells * 2 * Max(a->naggs, 1));
					memset(accs + maxcells * Max(a->naggs, 1), 0, sizeof(PeAggAcc) * maxcells * Max(a->naggs, 1));
					maxcells *= 2;
				}
				cell = ncells++;
				cells[cell].ws = ws;
				cells[cell].row = r;
				cells[cell].hash = h;
				cells[cell].g0 = k0;
				cells[cell].next = buckets[h & (nbuckets - 1)];
				buckets[h & (nbuckets - 1)] = cell;
			}
			for (int i = 0; i < a->naggs; i++)
			{
				PeAggPlan  *p = &plan[i];

				if (p->col && rows[r].nulls[p->colidx])
					continue;	/* (an aggregate skips nulls) */
				pe_pre_add(p, &accs[cell * a->naggs + i], p->col ? rows[r].values[p->colidx] : (Datum) 0);
			}
		}
	}

	/* each cell's window, groups and items, column by column */
	for (int i = 0; i < a->naggs; i++)
		nitems += plan[i].fn == PE_PRE_AVG ? 3 : 1;
	ws = palloc(sizeof(Datum) * Max(ncells, 1));
	we = palloc(sizeof(Datum) * Max(ncells, 1));
	for (int c = 0; c < ncells; c++)
	{
		ws[c] = Int64GetDatum(cells[c].ws);
		we[c] = Int64GetDatum(cells[c].ws + a->size_us);
	}
	gcols = palloc(sizeof(PeColumn *) * Max(a->ngroups, 1));
	gv = palloc(sizeof(Datum *) * Max(a->ngroups, 1));
	gn = palloc(sizeof(bool *) * Max(a->ngroups, 1));
	for (int g = 0; g < a->ngroups; g++)
	{
		int			c = cols[1 + g];

		gcols[g] = &t->cols[c];
		gv[g] = palloc(sizeof(Datum) * Max(ncells, 1));
		gn[g] = palloc(sizeof(bool) * Max(ncells, 1));
		for (int k = 0; k < ncells; k++)
		{
			gv[g][k] = rows[cells[k].row].values[c];
			gn[g][k] = rows[cells[k].row].nulls[c];
		}
	}
	items = palloc(sizeof(PeAggItem) * Max(nitems, 1));
	iv = palloc(sizeof(Datum *) * Max(nitems, 1));
	in = palloc(sizeof(bool *) * Max(nitems, 1));
	arg = 0;
	for (int i = 0; i < a->naggs; i++)
	{
		PeAggPlan  *p = &plan[i];
		const char *suffixes[2];
		int			nstate = pe_agg_state_columns(a->fns[i], suffixes);

		for (int item = 0; item <= nstate; item++, arg++)
		{
			PeAggItem  *it = &items[arg];
			Datum	   *v = iv[arg] = palloc(sizeof(Datum) * Max(ncells, 1));
			bool	   *n = in[arg] = palloc(sizeof(bool) * Max(ncells, 1));

			it->name = item == 0 ? a->outs[i] : psprintf("%s__%s", a->outs[i], suffixes[item - 1]);
			it->typid = pe_pre_item_type(p, item);
			it->agg = i;
			it->cmp = p->cmp;
			it->collation = p->collation;
			it->kind = p->fn == PE_PRE_COUNT || (p->fn == PE_PRE_AVG && item == 2) ? PE_ITEM_COUNT
				: p->fn == PE_PRE_AVG ? (item == 0 ? PE_ITEM_AVG : PE_ITEM_SUM)
				: p->fn == PE_PRE_SUM ? PE_ITEM_SUM
				: p->fn == PE_PRE_MIN ? PE_ITEM_MIN : PE_ITEM_MAX;
			for (int k = 0; k < ncells; k++)
			{
				PeAggAcc   *acc = &accs[k * a->naggs + i];

				n[k] = false;
				v[k] = (Datum) 0;
				if (a->has_valid_from[i] && cells[k].ws < a->valid_from[i])
					n[k] = true;	/* before it was added: null */
				else if (p->fn == PE_PRE_COUNT || (p->fn == PE_PRE_AVG && item == 2))
					v[k] = Int64GetDatum(acc->count);
				else if (!acc->any)
					n[k] = true;	/* of nulls only */
				else if (p->fn == PE_PRE_AVG && item == 1 && p->col->typid == FLOAT4OID)
					v[k] = Float8GetDatum(acc->f8); /* (its values' sum in double precision) */
				else if (p->fn == PE_PRE_SUM || (p->fn == PE_PRE_AVG && item == 1))
					v[k] = pe_pre_sum(p, acc);
				else if (p->fn == PE_PRE_AVG)
					v[k] = pe_pre_avg(p, acc);
				else
					v[k] = acc->d;
			}
		}
	}

	/* straight into the heap when the results table allows it */
	hashes = palloc(sizeof(uint32) * Max(ncells, 1));
	for (int c = 0; c < ncells; c++)
		hashes[c] = cells[c].hash;
	if (pe_agg_direct_merge(a, t, res, time_type, ncells, hashes, ws, we, gcols, gv, gn, items, nitems, iv, in,
							&inserted))
	{
		if (!a->emit_close)
			a->emitted += ncells;	/* (each window written is a change emitted, to the results only) */
		a->opened += inserted;
		return true;
	}

	/* else the statement's arguments: starts, ends, groups, then each function's items, as arrays */
	nargs = 2 + a->ngroups + nitems;
	types = palloc(sizeof(Oid) * nargs);
	values = palloc(sizeof(Datum) * nargs);
	nulls = palloc(nargs + 1);
	memset(nulls, ' ', nargs);
	nulls[nargs] = '\0';
	types[0] = types[1] = time_type == TIMESTAMPTZOID ? TIMESTAMPTZARRAYOID : TIMESTAMPARRAYOID;
	values[0] = PointerGetDatum(construct_array(ws, ncells, time_type, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(we, ncells, time_type, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	for (int g = 0; g < a->ngroups; g++)
	{
		int			c = cols[1 + g];

		types[2 + g] = t->cols[c].arraytyp;
		values[2 + g] = pe_column_array(&t->cols[c], gv[g], gn[g], ncells);
	}
	for (int k = 0; k < nitems; k++)
	{
		Oid			typid;
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			dims[1] = {ncells};
		int			lbs[1] = {1};

		pe_pre_column_type(res, items[k].name, &typid, &typlen, &typbyval, &typalign);
		types[2 + a->ngroups + k] = get_array_type(typid);
		values[2 + a->ngroups + k] = PointerGetDatum(construct_md_array(iv[k], in[k], 1, dims, lbs, typid, typlen,
																		typbyval, typalign));
	}

	/* one row per window and group, merged as aggregate_merge.c merges */
	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS r (%s) SELECT ", pe_agg_table(a, res), pe_agg_columns(a));
	for (int k = 0; k < nargs; k++)
	{
		const char *cast = (k >= 2 && k < 2 + a->ngroups) ? t->cols[cols[k - 1]].cast : "";

		appendStringInfo(&sql, "%spg_catalog.unnest($%d)%s", k ? ", " : "", k + 1, cast);
	}
	pe_agg_on_conflict(&sql, a, time_type);
	if (pe_agg_as_owner(t, pe_agg_emit_wrap(a, NULL, sql.data, !a->emit_close, NULL, NULL), nargs, types, values,
						nulls) != SPI_OK_SELECT)
		elog(ERROR, "could not update aggregate \"%s\"", a->name);
	(void) pe_agg_emitted(a, t, !a->emit_close, &inserted);
	a->opened += inserted;
	return true;
}

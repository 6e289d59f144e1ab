/*-------------------------------------------------------------------------
 *
 * histogram.c
 *	  Latency histograms in shared memory: log-linear buckets, four per power
 *	  of two of microseconds, updated with atomics; percentiles read from a
 *	  copy of the counts.
 *
 * IDENTIFICATION
 *	  src/histogram.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "port/pg_bitutils.h"

#include "shmem.h"

void
pe_hist_init(PeHistogram *h)
{
	for (int i = 0; i < PE_HIST_BUCKETS; i++)
		pg_atomic_init_u64(&h->count[i], 0);
	pg_atomic_init_u64(&h->max_us, 0);
}

static int
pe_hist_bucket(uint64 us)
{
	int			octave;
	int			sub;

	if (us < PE_HIST_SUB)
		return (int) us;
	octave = pg_leftmost_one_pos64(us);		/* us >= 2^octave */
	sub = (int) ((us >> (octave - 2)) & (PE_HIST_SUB - 1));
	return Min(octave * PE_HIST_SUB + sub - 4, PE_HIST_BUCKETS - 1);
}

/* The middle of a bucket, in microseconds. */
static double
pe_hist_value(int b)
{
	int			octave;
	int			sub;
	double		lo,
				width;

	if (b < PE_HIST_SUB)
		return b;
	octave = (b + 4) / PE_HIST_SUB;
	sub = (b + 4) % PE_HIST_SUB;
	width = ldexp(1.0, octave - 2);
	lo = ldexp(1.0, octave) + sub * width;
	return lo + width / 2;
}

void
pe_hist_add(PeHistogram *h, int64 us)
{
	uint64		v = us < 0 ? 0 : (uint64) us;
	uint64		max = pg_atomic_read_u64(&h->max_us);

	pg_atomic_fetch_add_u64(&h->count[pe_hist_bucket(v)], 1);
	while (v > max && !pg_atomic_compare_exchange_u64(&h->max_us, &max, v))
		;
}

/*
 * The q-quantile in milliseconds (q = 1: the maximum), or -1 when empty.
 * Never above the largest value seen.
 */
double
pe_hist_percentile_ms(PeHistogram *h, double q, uint64 *total_out)
{
	uint64		counts[PE_HIST_BUCKETS];
	uint64		total = 0;
	uint64		rank;
	uint64		seen = 0;
	double		max_ms = pg_atomic_read_u64(&h->max_us) / 1000.0;

	for (int i = 0; i < PE_HIST_BUCKETS; i++)
	{
		counts[i] = pg_atomic_read_u64(&h->count[i]);
		total += counts[i];
	}
	if (total_out)
		*total_out = total;
	if (total == 0)
		return -1;
	if (q >= 1.0)
		return max_ms;
	rank = (uint64) ceil(q * total);
	if (rank == 0)
		rank = 1;
	for (int i = 0; i < PE_HIST_BUCKETS; i++)
	{
		seen += counts[i];
		if (seen >= rank)
			return Min(pe_hist_value(i) / 1000.0, max_ms);
	}
	return max_ms;
}

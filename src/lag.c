/*-------------------------------------------------------------------------
 *
 * lag.c
 *	  Per-partition lag in a slot's shared-memory entry: the oldest
 *	  unapplied message, progress, the lag history, and the Burrow-style
 *	  status read from them.  Written by the slot's worker, or by its
 *	  database's manager while no worker runs (stopped consumers);
 *	  pe_shared->lock held exclusively.
 *
 * IDENTIFICATION
 *	  src/lag.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "shmem.h"

/* A new set of partitions: their figures and lag history start afresh. */
void
pe_slot_reset_partitions(PeSlot *s, TimestampTz now)
{
	for (int k = 0; k < PE_SLOT_MAX_PARTITIONS; k++)
	{
		s->oldest[k] = 0;
		s->progress_at[k] = now;
	}
	memset(s->sample_at, 0, sizeof(s->sample_at));
	s->sample_next = 0;
}

static int64
pe_partition_lag(const PeSlot *s, int k)
{
	if (s->high[k] < 0)
		return -1;
	return Max(s->high[k] - Max(s->applied[k], 0), 0);
}

/*
 * applied[] or high[] were just updated.  A partition that is caught up
 * has nothing unapplied and counts as progressing; one first seen behind
 * gets "now" as the time of its oldest unapplied message (give or take one
 * refresh) until a fetched message says better, and starts its window
 * then.  Then a lag sample, once
 * per tenth of pipeline_ext.lag_window.
 */
void
pe_slot_note_watermarks(PeSlot *s, TimestampTz now)
{
	int64		every = (int64) pe_lag_window_ms * 1000 / PE_LAG_SAMPLES;
	int			last = (s->sample_next + PE_LAG_SAMPLES - 1) % PE_LAG_SAMPLES;
	int			n = Min(s->npartitions, PE_SLOT_MAX_PARTITIONS);

	for (int k = 0; k < n; k++)
	{
		int64		lag = pe_partition_lag(s, k);

		if (lag == 0)
		{
			s->oldest[k] = 0;
			s->progress_at[k] = now;
		}
		else if (lag > 0 && s->oldest[k] == 0)
		{
			/* first seen behind: the window starts now, never earlier */
			s->oldest[k] = now;
			s->progress_at[k] = now;
		}
	}
	if (s->sample_at[last] != 0 && now - s->sample_at[last] < every)
		return;
	s->sample_at[s->sample_next] = now;
	for (int k = 0; k < n; k++)
		s->sample_lag[s->sample_next][k] = pe_partition_lag(s, k);
	s->sample_next = (s->sample_next + 1) % PE_LAG_SAMPLES;
}

/*
 * A partition's status over the last pipeline_ext.lag_window, after
 * Burrow's rules, in the order Burrow applies them:
 *	 OK		caught up, or behind and moving
 *	 STOP	behind for the whole window, and the slot applied no batch in it
 *	 STALL	behind for the whole window without moving, while the slot
 *			applies batches for its other partitions
 *	 WARN	lag grew at every sample across the window
 * NULL when the partition's high watermark is unknown.
 */
const char *
pe_lag_status(const PeSlot *s, int k, TimestampTz now)
{
	int64		window = (int64) pe_lag_window_ms * 1000;
	int64		lag = pe_partition_lag(s, k);
	int64		prev = -1;
	int			nsamples = 0;
	TimestampTz first_at = 0;
	bool		growing = true;

	if (lag < 0)
		return NULL;
	if (lag == 0)
		return "OK";
	if (now - s->progress_at[k] > window)
	{
		TimestampTz last_batch = Max(s->last_batch_at, s->created_at);

		return now - last_batch > window ? "STOP" : "STALL";
	}
	for (int i = 0; i < PE_LAG_SAMPLES; i++)
	{
		int			b = (s->sample_next + i) % PE_LAG_SAMPLES;	/* oldest first */
		int64		v = s->sample_lag[b][k];

		if (s->sample_at[b] == 0 || now - s->sample_at[b] > window || v < 0)
			continue;
		if (nsamples == 0)
			first_at = s->sample_at[b];
		else if (v <= prev)
			growing = false;
		prev = v;
		nsamples++;
	}
	if (growing && nsamples >= 3 && now - first_at >= window / 2)
		return "WARN";
	return "OK";
}

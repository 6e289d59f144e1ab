/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The monitoring functions over shared memory, behind the views: slot
 *	  status (_slots, for consumer_status), per-partition figures
 *	  (_partitions, for consumer_lag), consumer and producer statistics,
 *	  and resetting them.
 *
 *	  Counters live in shared memory, so they survive a worker's restart
 *	  and are reset by a server restart or pipeline.reset_stats().
 *
 * IDENTIFICATION
 *	  src/stats.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "nodes/execnodes.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "consumer.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_producer_stats);
PG_FUNCTION_INFO_V1(pe_reset_stats);
PG_FUNCTION_INFO_V1(pe_partitions);
PG_FUNCTION_INFO_V1(pe_consumer_stats);
PG_FUNCTION_INFO_V1(pe_slots);

/*
 * The slot entries a query reads, and the time it judges them at: taken at
 * its first call of one of these functions and kept, in the query's memory,
 * until it ends.  pipeline.health reads consumer_lag, consumer_status and
 * consumer_stats, and a query may read health beside those views: each
 * read once took its own copy, so that one statement could show a
 * partition's lag as growing (WARN) and health, from a copy taken after
 * the next sample, as within thresholds.  Each query has its own (a
 * function that runs queries of its own inside one does not disturb it),
 * and the next query takes a new one: a loop that polls a view sees it
 * move.
 */
typedef struct PeQuerySlots
{
	EState	   *estate;			/* the query's */
	PeSlot	   *slots;
	int			n;
	TimestampTz now;
	struct PeQuerySlots *next;
} PeQuerySlots;

static PeQuerySlots *pe_query_slots_list = NULL;

/* the query's memory is going: forget its copy (the copy goes with it) */
static void
pe_query_slots_forget(void *arg)
{
	PeQuerySlots **link = &pe_query_slots_list;

	while (*link && *link != arg)
		link = &(*link)->next;
	if (*link)
		*link = (*link)->next;
}

static PeSlot *
pe_query_slots(FunctionCallInfo fcinfo, int *n, TimestampTz *now)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EState	   *estate = rsinfo && rsinfo->econtext ? rsinfo->econtext->ecxt_estate : NULL;
	PeQuerySlots *q;
	MemoryContext old;
	MemoryContextCallback *cb;

	if (estate == NULL)
	{
		/* (not called from a query's executor: a copy of its own) */
		*now = GetCurrentTimestamp();
		return pe_snapshot_slots(n);
	}
	for (q = pe_query_slots_list; q; q = q->next)
		if (q->estate == estate)
			break;
	if (q == NULL)
	{
		old = MemoryContextSwitchTo(estate->es_query_cxt);
		q = palloc(sizeof(PeQuerySlots));
		q->estate = estate;
		q->slots = pe_snapshot_slots(&q->n);
		q->now = GetCurrentTimestamp();
		cb = palloc(sizeof(MemoryContextCallback));
		cb->func = pe_query_slots_forget;
		cb->arg = q;
		MemoryContextRegisterResetCallback(estate->es_query_cxt, cb);
		MemoryContextSwitchTo(old);
		q->next = pe_query_slots_list;
		pe_query_slots_list = q;
	}
	*n = q->n;
	*now = q->now;
	return q->slots;
}

/* pipeline.producer_stats: totals of every backend's producers */
Datum
pe_producer_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		v[8];
	bool		nl[8] = {false, false, false, false, false, false, false, false};
	static const double qs[4] = {0.50, 0.95, 0.99, 1.0};
	uint64		n;

	pe_require_preload();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	v[0] = Int64GetDatum((int64) pg_atomic_read_u64(&pe_shared->produced_messages));
	v[1] = Int64GetDatum((int64) pg_atomic_read_u64(&pe_shared->produced_bytes));
	v[2] = Int64GetDatum((int64) pg_atomic_read_u64(&pe_shared->produce_failures));
	for (int i = 0; i < 4; i++)
	{
		double		ms = pe_hist_percentile_ms(&pe_shared->produce_latency, qs[i], &n);

		if (ms < 0)
			nl[3 + i] = true;
		else
			v[3 + i] = Float8GetDatum(round(ms * 1000.0) / 1000.0);
	}
	v[7] = TimestampTzGetDatum(pe_shared->producer_stats_reset);
	tupdesc = BlessTupleDesc(tupdesc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, v, nl)));
}

/*
 * pipeline.reset_stats(consumer): zero one consumer's counters (its owner
 * may), or with NULL every counter in this database's consumers and the
 * producers' totals (superusers only, as for pg_stat_reset()).
 */
Datum
pe_reset_stats(PG_FUNCTION_ARGS)
{
	char	   *consumer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz now = GetCurrentTimestamp();

	pe_require_preload();
	if (consumer)
	{
		PeConsumerDef *def = pe_consumer_read(consumer, false);

		if (!pe_may_see_secrets(def->owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of consumer \"%s\" to reset its statistics", consumer),
					 errhint("Only the role that created the consumer, its members, or a superuser can do this.")));
	}
	else if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be superuser to reset all statistics"),
				 errhint("Pass a consumer's name to reset the statistics of a consumer you own.")));

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];

		if (s->state == PE_SLOT_FREE || s->dboid != MyDatabaseId)
			continue;
		if (consumer && strcmp(s->consumer, consumer) != 0)
			continue;
		s->messages = 0;
		s->bytes = 0;
		s->batches = 0;
		s->dead_letters = 0;
		s->restarts = 0;
		s->errors = 0;
		memset(s->period, 0, sizeof(s->period));
		pe_hist_init(&s->latency[0]);
		pe_hist_init(&s->latency[1]);
		s->stats_reset = now;
	}
	LWLockRelease(pe_shared->lock);

	if (consumer == NULL)
	{
		pg_atomic_write_u64(&pe_shared->produced_messages, 0);
		pg_atomic_write_u64(&pe_shared->produced_bytes, 0);
		pg_atomic_write_u64(&pe_shared->produce_failures, 0);
		pe_hist_init(&pe_shared->produce_latency);
		pe_shared->producer_stats_reset = now;
	}
	PG_RETURN_VOID();
}

/*
 * pipeline._partitions(): each slot entry's partitions, as its worker (or,
 * with no worker running, its database's manager) last saw them: applied
 * and high offsets, the time of the oldest unapplied message, and the
 * partition's status over pipeline_ext.lag_window.
 */
Datum
pe_partitions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeSlot	   *copy;
	int			n = 0;
	TimestampTz now;

	pe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copy = pe_query_slots(fcinfo, &n, &now);

	for (int i = 0; i < n; i++)
	{
		PeSlot	   *s = &copy[i];

		for (int k = 0; k < s->npartitions; k++)
		{
			Datum		v[8];
			bool		nl[8] = {false, false, false, false, false, false, false, false};
			const char *status = pe_lag_status(s, k, now);

			v[0] = CStringGetTextDatum(s->consumer);
			v[1] = Int32GetDatum(s->slot);
			v[2] = Int32GetDatum(s->partitions[k]);
			v[3] = Int64GetDatum(s->applied[k]);
			nl[3] = (s->applied[k] < 0);
			v[4] = Int64GetDatum(s->high[k]);
			nl[4] = (s->high[k] < 0);
			v[5] = TimestampTzGetDatum(s->high_at[k]);
			nl[5] = (s->high_at[k] == 0);
			v[6] = TimestampTzGetDatum(s->oldest[k]);
			nl[6] = (s->oldest[k] == 0);
			if (status)
				v[7] = CStringGetTextDatum(status);
			nl[7] = (status == NULL);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
		}
	}
	return (Datum) 0;
}

/* A one-line chart of values, "▁▂▃▄▅▆▇█", scaled to the largest; ' ' = no data. */
static char *
pe_sparkline(const double *v, const bool *known, int n)
{
	static const char *const bars[8] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
	StringInfoData buf;
	double		max = 0;

	for (int i = 0; i < n; i++)
		if (known[i] && v[i] > max)
			max = v[i];
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		if (!known[i])
			appendStringInfoChar(&buf, ' ');
		else
			appendStringInfoString(&buf, bars[max > 0 ? Min(7, (int) (v[i] / max * 7.999)) : 0]);
	}
	return buf.data;
}

#define PE_TREND_POINTS 30		/* two minutes each */

/*
 * pipeline.consumer_stats: per consumer, over its slots: counters since the
 * server started or reset_stats(), throughput over 1, 5 and 15 minutes, the
 * error rate, end-to-end latency percentiles over the last 5 to 10 minutes,
 * and the last hour's throughput and lag as one-line charts.
 */
Datum
pe_consumer_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeSlot	   *copy;
	int			n = 0;
	bool	   *done;
	TimestampTz now;
	uint32		now_period;

	pe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copy = pe_query_slots(fcinfo, &n, &now);
	now_period = (uint32) (now / (PE_PERIOD_SECS * USECS_PER_SEC));
	done = palloc0(sizeof(bool) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		Datum		v[17];
		bool		nl[17];
		uint64		msgs = 0,
					bytes = 0,
					batches = 0,
					dead = 0,
					errors = 0;
		double		win[3] = {0, 0, 0};
		static const int win_periods[3] = {6, 30, 90};
		double		tput[PE_TREND_POINTS];
		double		lag[PE_TREND_POINTS];
		bool		tput_known[PE_TREND_POINTS];
		bool		lag_known[PE_TREND_POINTS];
		PeHistogram merged;
		TimestampTz reset = 0;
		static const double qs[4] = {0.50, 0.95, 0.99, 1.0};

		if (done[i])
			continue;
		memset(nl, false, sizeof(nl));
		pe_hist_init(&merged);
		for (int k = 0; k < PE_TREND_POINTS; k++)
		{
			tput[k] = lag[k] = 0;
			tput_known[k] = true;
			lag_known[k] = false;
		}
		for (int j = i; j < n; j++)
		{
			PeSlot	   *s = &copy[j];

			if (done[j] || strcmp(s->consumer, copy[i].consumer) != 0)
				continue;
			done[j] = true;
			msgs += s->messages;
			bytes += s->bytes;
			batches += s->batches;
			dead += s->dead_letters;
			errors += s->errors;
			reset = Max(reset, s->stats_reset);
			for (int b = 0; b < PE_PERIODS; b++)
			{
				uint32		age = now_period - s->period[b];
				int			point;

				if (s->period[b] == 0 || age >= PE_PERIODS)
					continue;
				for (int w = 0; w < 3; w++)
					if (age < (uint32) win_periods[w])
						win[w] += s->period_msgs[b];
				point = PE_TREND_POINTS - 1 - (int) (age / (PE_PERIODS / PE_TREND_POINTS));
				tput[point] += s->period_msgs[b];
				if (s->period_lag[b] >= 0)
				{
					lag[point] = Max(lag[point], (double) s->period_lag[b]);
					lag_known[point] = true;
				}
			}
			for (int w = 0; w < 2; w++)
				for (int b = 0; b < PE_HIST_BUCKETS; b++)
					pg_atomic_fetch_add_u64(&merged.count[b], pg_atomic_read_u64(&s->latency[w].count[b]));
			for (int w = 0; w < 2; w++)
			{
				uint64		m = pg_atomic_read_u64(&s->latency[w].max_us);

				if (m > pg_atomic_read_u64(&merged.max_us))
					pg_atomic_write_u64(&merged.max_us, m);
			}
		}

		v[0] = CStringGetTextDatum(copy[i].consumer);
		v[1] = Int64GetDatum((int64) msgs);
		v[2] = Int64GetDatum((int64) bytes);
		v[3] = Int64GetDatum((int64) batches);
		v[4] = Int64GetDatum((int64) dead);
		v[5] = Int64GetDatum((int64) errors);
		v[6] = Float8GetDatum(round(win[0] / (win_periods[0] * PE_PERIOD_SECS) * 10) / 10);
		v[7] = Float8GetDatum(round(win[1] / (win_periods[1] * PE_PERIOD_SECS) * 10) / 10);
		v[8] = Float8GetDatum(round(win[2] / (win_periods[2] * PE_PERIOD_SECS) * 10) / 10);
		if (msgs > 0)
			v[9] = Float8GetDatum((double) dead / (double) msgs);
		else
			nl[9] = true;
		for (int q = 0; q < 4; q++)
		{
			double		ms = pe_hist_percentile_ms(&merged, qs[q], NULL);

			if (ms < 0)
				nl[10 + q] = true;
			else
				v[10 + q] = Float8GetDatum(round(ms * 1000.0) / 1000.0);
		}
		v[14] = CStringGetTextDatum(pe_sparkline(tput, tput_known, PE_TREND_POINTS));
		v[15] = CStringGetTextDatum(pe_sparkline(lag, lag_known, PE_TREND_POINTS));
		v[16] = TimestampTzGetDatum(reset);
		nl[16] = (reset == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}


static const char *
pe_slot_state_name(PeSlotState s)
{
	switch (s)
	{
		case PE_SLOT_FREE:
			return "stopped";
		case PE_SLOT_STARTING:
			return "starting";
		case PE_SLOT_RUNNING:
			return "running";
		case PE_SLOT_STOPPED:
			return "stopped";
		case PE_SLOT_FAILED:
			return "failed";
		case PE_SLOT_RESTARTING:
			return "restarting";
	}
	return "unknown";
}

Datum
pe_slots(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeSlot	   *copy;
	int			n = 0;

	bool	   *may;
	TimestampTz now;

	pe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copy = pe_query_slots(fcinfo, &n, &now);
	may = palloc(sizeof(bool) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		PeSlot	   *s = &copy[i];
		Datum		v[12];
		bool		nl[12];
		bool		may_see = false;
		int			j;
		Datum	   *parts = palloc(sizeof(Datum) * Max(s->npartitions, 1));
		int			nparts;

		/* one catalog look-up per consumer, not per slot */
		for (j = 0; j < i; j++)
			if (strcmp(copy[j].consumer, s->consumer) == 0)
				break;
		if (j < i)
			may_see = may[j];
		else
		{
			PeConsumerDef *def = pe_consumer_read(s->consumer, true);

			may_see = def != NULL && pe_may_see_secrets(def->owner);
		}
		may[i] = may_see;

		memset(nl, false, sizeof(nl));
		v[0] = CStringGetTextDatum(s->consumer);
		v[1] = Int32GetDatum(s->slot);
		v[2] = Int32GetDatum(s->pid);
		nl[2] = (s->pid == 0);
		v[3] = CStringGetTextDatum(pe_slot_state_name(s->state));
		v[4] = Int32GetDatum(s->restarts);
		v[5] = CStringGetTextDatum(s->last_error);
		nl[5] = (s->last_error[0] == '\0' || !may_see);
		v[6] = TimestampTzGetDatum(s->last_error_at);
		nl[6] = (s->last_error_at == 0);
		v[7] = TimestampTzGetDatum(s->last_batch_at);
		nl[7] = (s->last_batch_at == 0);
		/* assigned partitions: those of a running worker */
		nparts = (s->state == PE_SLOT_RUNNING || s->state == PE_SLOT_STARTING) ? s->npartitions : 0;
		for (int p = 0; p < nparts; p++)
			parts[p] = Int32GetDatum(s->partitions[p]);
		v[8] = PointerGetDatum(construct_array(parts, nparts, INT4OID, 4, true, TYPALIGN_INT));
		v[9] = Int64GetDatum((int64) s->messages);
		v[10] = Int64GetDatum((int64) s->batches);
		v[11] = Int64GetDatum((int64) s->dead_letters);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}

/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Statistics kept in shared memory: producer totals and delivery
 *	  latency, per-slot consumer counters, and resetting them.
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
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pipeline_ext.h"

PG_FUNCTION_INFO_V1(pe_producer_stats);
PG_FUNCTION_INFO_V1(pe_reset_stats);
PG_FUNCTION_INFO_V1(pe_partitions);

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

/* pipeline._partitions(): each slot's partitions, as its worker last saw them */
Datum
pe_partitions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeSlot	   *copy;
	int			n = 0;

	pe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copy = palloc(sizeof(PeSlot) * pe_shared->max_slots);
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < pe_shared->max_slots; i++)
		if (pe_shared->slots[i].state != PE_SLOT_FREE && pe_shared->slots[i].dboid == MyDatabaseId)
			copy[n++] = pe_shared->slots[i];
	LWLockRelease(pe_shared->lock);

	for (int i = 0; i < n; i++)
	{
		PeSlot	   *s = &copy[i];

		for (int k = 0; k < s->npartitions; k++)
		{
			Datum		v[6];
			bool		nl[6] = {false, false, false, false, false, false};

			v[0] = CStringGetTextDatum(s->consumer);
			v[1] = Int32GetDatum(s->slot);
			v[2] = Int32GetDatum(s->partitions[k]);
			v[3] = Int64GetDatum(s->applied[k]);
			nl[3] = (s->applied[k] < 0);
			v[4] = Int64GetDatum(s->high[k]);
			nl[4] = (s->high[k] < 0);
			v[5] = TimestampTzGetDatum(s->high_at[k]);
			nl[5] = (s->high_at[k] == 0);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
		}
	}
	return (Datum) 0;
}

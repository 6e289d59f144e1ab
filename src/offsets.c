/*-------------------------------------------------------------------------
 *
 * offsets.c
 *	  A slot's offsets: reading the next offsets stored in pipeline.offsets,
 *	  storing a batch's next offsets in its transaction behind a fence, and
 *	  committing them to the Kafka group (synchronously, or best effort).
 *
 * IDENTIFICATION
 *	  src/offsets.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "slot.h"
#include "workers.h"

/* Read the stored offsets of this consumer's partitions. */
void
pe_slot_load_offsets(void)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = CStringGetTextDatum(pe_run->def->name);
	rc = SPI_execute_with_args("SELECT \"partition\", next_offset, reset FROM pipeline.offsets "
							   "WHERE consumer OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read offsets: %s", SPI_result_code_string(rc));
	for (int p = 0; p < pe_run->npart; p++)
	{
		pe_run->parts[p].stored = -1;
		pe_run->parts[p].reset = false;
	}
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		o = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (p >= pe_run->npart)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			pe_slot_grow(p + 1);
			MemoryContextSwitchTo(old);
		}
		pe_run->parts[p].stored = o;
		pe_run->parts[p].reset = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
	}
	SPI_finish();
	pe_xact_commit();
}

/*
 * Commit the next offsets to the Kafka group: sync, or best effort.  A
 * group shared between servers (pe_run->handoff) also gets, per partition,
 * who committed and from which offset the batch started
 * (pe_slot_handoff_metadata), so that a committer whose own commit did not
 * follow can find the batch again.
 */
rd_kafka_resp_err_t
pe_slot_kafka_commit(rd_kafka_message_t **msgs, int n, bool sync)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
	rd_kafka_resp_err_t err;
	int64	   *first = palloc(sizeof(int64) * Max(n, 1));	/* per element of l */
	int		   *where = palloc(sizeof(int) * Max(pe_run->npart, 1));	/* partition -> element */

	/* (the collector kept only messages of known partitions: p < npart) */
	for (int p = 0; p < pe_run->npart; p++)
		where[p] = -1;
	for (int i = 0; i < n; i++)
	{
		int32		p = msgs[i]->partition;
		int			k = where[p];

		if (k < 0)
		{
			rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p);
			k = where[p] = l->cnt - 1;
			first[k] = msgs[i]->offset;
		}
		l->elems[k].offset = Max(l->elems[k].offset, msgs[i]->offset + 1);
		first[k] = Min(first[k], msgs[i]->offset);
	}
	pfree(where);
	if (pe_run->handoff)
		for (int k = 0; k < l->cnt; k++)
			pe_slot_handoff_metadata(&l->elems[k], first[k]);
	pfree(first);
	if (!sync)
		err = rd_kafka_commit(pe_run->rk, l, 1);
	else
	{
		/*
		 * A synchronous rd_kafka_commit() waits for the coordinator without
		 * a bound; its result comes to a queue of ours instead, polled in
		 * slices so that a SIGTERM is answered meanwhile.
		 */
		rd_kafka_queue_t *q = rd_kafka_queue_new(pe_run->rk);

		pgstat_report_activity(STATE_RUNNING, "committing offsets to the Kafka group");
		err = rd_kafka_commit_queue(pe_run->rk, l, q, NULL, NULL);
		while (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_event_t *ev = rd_kafka_queue_poll(q, PE_WAIT_SLICE_MS);

			if (ev != NULL && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT)
			{
				err = rd_kafka_event_error(ev);
				rd_kafka_event_destroy(ev);
				break;
			}
			if (ev != NULL)
				rd_kafka_event_destroy(ev);
			pe_slot_wait_tick();
		}
		rd_kafka_queue_destroy(q);
	}
	rd_kafka_topic_partition_list_destroy(l);
	return err;
}

/*
 * The statement that stores a partition's next offset with its fences: the
 * consumer must still be the one the slot started for ($5, its id: not
 * dropped, its name not taken by another), and the row must still hold
 * what the slot expects ($4; NULL when it expects no row).  Kept by the
 * caller.
 */
SPIPlanPtr
pe_offsets_prepare(void)
{
	Oid			types[5] = {TEXTOID, INT4OID, INT8OID, INT8OID, INT8OID};
	SPIPlanPtr	plan;

	plan = SPI_prepare("INSERT INTO pipeline.offsets AS o (consumer, \"partition\", next_offset) "
					   "SELECT c.name, $2, $3 FROM pipeline.consumer c "
					   "WHERE c.name OPERATOR(pg_catalog.=) $1 AND c.id OPERATOR(pg_catalog.=) $5 "
					   "ON CONFLICT (consumer, \"partition\") DO UPDATE "
					   "SET next_offset = EXCLUDED.next_offset, updated_at = pg_catalog.now(), reset = false "
					   "WHERE o.next_offset IS NOT DISTINCT FROM $4",
					   5, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the offsets statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Store a batch's next offsets in its transaction.  False when a fence
 * did not hold: reset_offsets() or another slot moved an offset since the
 * slot read it, or the consumer was dropped, and the batch must be rolled
 * back.
 */
bool
pe_offsets_store(PeOffsetWrite *w)
{
	bool		ok = true;

	for (int k = 0; k < w->n; k++)
	{
		Datum		v[5];
		char		nl[5] = {' ', ' ', ' ', ' ', ' '};

		v[0] = CStringGetTextDatum(w->consumer);
		v[1] = Int32GetDatum(w->partitions[k]);
		v[2] = Int64GetDatum(w->next[k]);
		if (w->expected[k] >= 0)
			v[3] = Int64GetDatum(w->expected[k]);
		else
			nl[3] = 'n';
		v[4] = Int64GetDatum(w->consumer_id);
		if (SPI_execute_plan(w->plan, v, nl, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write offsets");
		if (SPI_processed != 1)
			ok = false;
	}
	return ok;
}

/*
 * Move one partition's stored offset to next in a transaction of its own,
 * behind the same fences as a batch's (slot_handoff.c: a claim whose
 * messages retention removed).  False when a fence did not hold.
 */
bool
pe_slot_store_offset(int32 p, int64 next)
{
	PeOffsetWrite w;
	int64		expected = pe_run->parts[p].stored;
	bool		ok;

	w.consumer = pe_run->def->name;
	w.consumer_id = pe_run->def->id;
	w.plan = pe_run->offset_plan;
	w.n = 1;
	w.partitions = &p;
	w.next = &next;
	w.expected = &expected;
	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ok = pe_offsets_store(&w);
	SPI_finish();
	pe_xact_commit();
	if (ok)
	{
		pe_run->parts[p].stored = next;
		pe_run->parts[p].reset = false;
	}
	return ok;
}

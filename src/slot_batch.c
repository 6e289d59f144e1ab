/*-------------------------------------------------------------------------
 *
 * slot_batch.c
 *	  One batch of a slot through one transaction: the data path (batch.c)
 *	  with the partitions' next offsets, retried on transient errors, and
 *	  counted when it fails for a reason that is not about its rows.  An
 *	  append consumer with aggregates that is behind takes the next
 *	  batches into the same transaction before its aggregates and offsets.
 *
 * IDENTIFICATION
 *	  src/slot_batch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "aggregate.h"
#include "shmem.h"
#include "slot.h"
#include "workers.h"

/* A message as the data path reads it, from librdkafka's. */
static void
pe_slot_message(rd_kafka_message_t *m, PeMessage *msg)
{
	rd_kafka_timestamp_type_t tstype;

	msg->topic = pe_run->def->topic;
	msg->partition = m->partition;
	msg->offset = m->offset;
	msg->timestamp_ms = rd_kafka_message_timestamp(m, &tstype);
	msg->key = m->key;
	msg->key_len = m->key_len;
	msg->value = m->payload;
	msg->value_len = m->len;
	if (rd_kafka_message_headers(m, &msg->hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
		msg->hdrs = NULL;
}

/*
 * Whether a partition of the batch has more messages than it reached, as
 * librdkafka last heard from the brokers (their high watermarks, cached
 * from the fetch answers: no request).  One more is not counted: a
 * transactional producer's commit marker follows its last message.
 */
static bool
pe_slot_behind(PeBatch *b)
{
	int64	   *next = palloc0(sizeof(int64) * pe_run->npart);
	bool		behind = false;

	for (int i = 0; i < b->n; i++)
		next[b->msgs[i].partition] = Max(next[b->msgs[i].partition], b->msgs[i].offset + 1);
	for (int32 p = 0; p < pe_run->npart && !behind; p++)
	{
		int64		lo;
		int64		hi;

		if (next[p] > 0 &&
			rd_kafka_get_watermark_offsets(pe_run->rk, pe_run->def->topic, p, &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR)
			behind = hi > next[p] + 1;
	}
	pfree(next);
	return behind;
}

/*
 * Whether the batch's transaction takes in another batch's messages
 * before its aggregates and offsets: when the consumer appends, has
 * aggregates and is behind (the last batch was cut at batch_size or
 * PE_BATCH_MAX_BYTES, or a partition holds more than the batch reached:
 * pe_slot_behind()), up to PE_XACT_MAX_BATCHES.  An aggregate then
 * writes each of its windows once for all of them, where it would write
 * it once per batch: under a backlog of many events per window, most of
 * its cost.  Not in upsert mode: each batch of a transaction would
 * update the same keys again, row versions that cannot be pruned before
 * the commit, which cost the apply what the aggregates gained (and twice
 * the memory).  Not for Avro (its schemas are fetched before the
 * transaction), nor where offsets go to the group with each batch
 * (at_most_once, handoff), nor when the partitions or their offsets move.
 */
static bool
pe_slot_may_extend(PeBatch *b, int batches, int last_n, size_t last_bytes)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	bool		moved;

	if (b->aggs == NIL || pe_run->def->upsert || batches >= PE_XACT_MAX_BATCHES || pe_run->batch == NULL ||
		pe_run->handoff || pe_run->catching_up || strcmp(pe_run->def->delivery, "at_most_once") == 0 ||
		pe_run->def->format == PE_FORMAT_AVRO || pe_run->target->key_avro)
		return false;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	moved = s->reseeks != pe_run->reseeks;
	LWLockRelease(pe_shared->lock);
	if (moved || pe_run->need_reseek || pe_run->assignment_changed || pe_run->rebalance_error[0] != '\0')
		return false;
	return last_n >= pe_run->def->batch_size || last_bytes >= PE_BATCH_MAX_BYTES || pe_slot_behind(b);
}

/*
 * One more batch for an open transaction: what the queue holds now, up to
 * batch_size messages and PE_BATCH_MAX_BYTES, after batch[0..*n).  Waits
 * only pipeline_ext.batch_linger for it.  *n counts each message as soon
 * as it is taken from the queue: a cancel (retried in place) or another
 * error then leaves none of them out of the retry, or unfreed.
 */
static void
pe_slot_collect_more(rd_kafka_message_t **batch, int *n, size_t *bytes)
{
	int			start = *n;
	size_t		start_bytes = *bytes;
	bool		lingered = false;

	while (*n - start < pe_run->def->batch_size && *bytes - start_bytes < PE_BATCH_MAX_BYTES &&
		   *n < pe_run->batch_room)
	{
		int			want = Min(pe_run->def->batch_size - (*n - start), pe_run->batch_room - *n);
		ssize_t		got;

		CHECK_FOR_INTERRUPTS();
		got = rd_kafka_consume_batch_queue(pe_run->queue, lingered ? pe_batch_linger_ms : 0, batch + *n, want);
		if (got < 0)
			break;
		*n = pe_slot_keep(batch, *n, got, bytes);
		if (got < want)
		{
			if (lingered || pe_batch_linger_ms == 0)
				break;
			lingered = true;
		}
		if (pe_run->assignment_changed || pe_run->rebalance_error[0] != '\0')
			break;
	}
}

/*
 * Run a batch through the data path (batch.c) in the current transaction:
 * its messages as librdkafka holds them (*n; more when the transaction
 * takes in the next batches, see pe_slot_may_extend()), and the next
 * offset of each of its partitions, fenced by the offset this slot last
 * stored.
 */
static PeBatchOutcome
pe_slot_apply_batch(rd_kafka_message_t **rkm, int *n, size_t *bytes, int64 *ndead, char **stop_error)
{
	PeBatch		b;
	PeOffsetWrite w;
	PeBatchOutcome outcome;
	int			maxp;
	int64	   *next;
	int64	   *expected;
	int32	   *pids;
	int		   *where;
	int			np = 0;
	int			last_n = *n;
	size_t		last_bytes = *bytes;

	/* after ALTER TABLE: describe the target again (types, columns, keys) */
	AcceptInvalidationMessages();
	if (pe_run->target_stale || pe_run->target == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		/*
		 * Closed first, then forgotten: if opening it again fails (a
		 * transient error is retried), the next attempt opens it afresh
		 * instead of using a description that is gone.
		 */
		if (pe_run->target)
		{
			pe_avro_keep(pe_run->target);	/* Avro's writer schemas: for the new description */
			pe_target_close(pe_run->target);
		}
		pe_run->target = NULL;
		pe_run->target = pe_target_open(pe_run->def, false);
		pe_avro_reuse(pe_run->target);
		pe_run->target_stale = false;
		MemoryContextSwitchTo(old);
	}

	memset(&b, 0, sizeof(b));
	b.msgs = palloc0(sizeof(PeMessage) * Max(*n, 1));
	b.n = *n;
	b.npart = pe_run->npart;
	b.target = pe_run->target;
	b.dead_plan = pe_run->dead_plan;
	b.own_transaction = true;
	for (int i = 0; i < *n; i++)
		pe_slot_message(rkm[i], &b.msgs[i]);

	/*
	 * The rows; while the slot is behind, those of the next batches too (a
	 * retry counts the batches its first attempt took in, in *n).
	 */
	outcome = pe_batch_apply_rows(&b);
	while (outcome == PE_BATCH_DONE && pe_slot_may_extend(&b, pe_run->xact_batches, last_n, last_bytes))
	{
		int			before = *n;

		last_bytes = *bytes;
		pe_slot_collect_more(rkm, n, bytes);
		last_n = *n - before;
		last_bytes = *bytes - last_bytes;
		if (last_n == 0)
			break;
		pe_run->xact_batches++;
		/* as the loop does for a batch it collected (slot.c) */
		if (last_n >= PE_WAKE_MESSAGES || last_bytes >= PE_WAKE_BYTES)
			pe_slot_wake_fetchers();
		b.msgs = repalloc(b.msgs, sizeof(PeMessage) * *n);
		memset(b.msgs + before, 0, sizeof(PeMessage) * last_n);
		for (int i = before; i < *n; i++)
			pe_slot_message(rkm[i], &b.msgs[i]);
		b.n = *n;
		elog(DEBUG2, "pipeline_ext consumer %s/%d: %d more messages into the batch's transaction (%d in all)",
			 pe_run->def->name, pe_run->slot, last_n, *n);
		outcome = pe_batch_apply_rows(&b);
	}
	if (outcome == PE_BATCH_STOP)
	{
		/* the first bad message (decoding, the aggregates' screen and the apply each add their own) */
		PeDeadLetter *dl = linitial(b.res.dead);
		ListCell   *lc;

		foreach(lc, b.res.dead)
			if (((PeDeadLetter *) lfirst(lc))->msg_index < dl->msg_index)
				dl = lfirst(lc);

		*stop_error = psprintf("message at partition %d offset " INT64_FORMAT ": %s",
							   b.msgs[dl->msg_index].partition, b.msgs[dl->msg_index].offset, dl->error);
		return outcome;
	}

	/*
	 * The collector kept only messages of known partitions (p < npart; a
	 * rebalance while more were collected may have made it larger).
	 */
	b.npart = pe_run->npart;
	where = palloc(sizeof(int) * pe_run->npart);	/* partition -> k */
	maxp = Min(*n, pe_run->npart);	/* partitions the batch can touch */
	next = palloc(sizeof(int64) * maxp);
	expected = palloc(sizeof(int64) * maxp);
	pids = palloc(sizeof(int32) * maxp);
	for (int p = 0; p < pe_run->npart; p++)
		where[p] = -1;
	for (int i = 0; i < *n; i++)
	{
		int32		p = b.msgs[i].partition;
		int			k = where[p];

		if (k < 0)
		{
			k = where[p] = np++;
			pids[k] = p;
			next[k] = b.msgs[i].offset + 1;
		}
		else
			next[k] = Max(next[k], b.msgs[i].offset + 1);
	}
	/*
	 * Fenced in every delivery mode: a reset_offsets() that committed while
	 * this batch was collected or applied must not be overwritten by it.
	 */
	for (int k = 0; k < np; k++)
	{
		expected[k] = (pids[k] < pe_run->npart) ? pe_run->parts[pids[k]].stored : -1;
		/* what a claim on the group says the batch started from (slot_handoff.c) */
		if (pids[k] < pe_run->npart)
			pe_run->parts[pids[k]].claim_base = expected[k];
	}
	w.consumer = pe_run->def->name;
	w.consumer_id = pe_run->def->id;
	w.plan = pe_run->offset_plan;
	w.n = np;
	w.partitions = pids;
	w.next = next;
	w.expected = expected;
	b.offsets = &w;

	/* the aggregates, once for all of it, and the offsets */
	outcome = pe_batch_finish(&b);
	*ndead = list_length(b.res.dead);
	if (outcome == PE_BATCH_DONE)
		for (int k = 0; k < np; k++)
			if (pids[k] < pe_run->npart)
			{
				pe_run->parts[pids[k]].stored = next[k];
				pe_run->parts[pids[k]].reset = false;
			}
	return outcome;
}

/*
 * Count a failed attempt to apply a batch (shared memory: it outlives the
 * worker).  True when it was the last one allowed.
 */
static bool
pe_slot_count_apply_failure(void)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	int			n;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	n = ++s->apply_failures;
	LWLockRelease(pe_shared->lock);
	return pe_max_apply_failures > 0 && n >= pe_max_apply_failures;
}

static bool
pe_error_is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_QUERY_CANCELED ||
		sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * A group shared between servers (slot_handoff.c): the batch's offsets go
 * to the group before PostgreSQL's commit.  A group that refuses them (a
 * rebalance under way, this member gone) means the partitions move: the
 * batch is rolled back and the next owner applies it.  An answer that
 * never came may hide a commit the group took: the worker restarts, and
 * pe_slot_catch_up() finds out.
 */
static PeBatchOutcome
pe_slot_commit_to_group(rd_kafka_message_t **batch, int n)
{
	rd_kafka_resp_err_t err;

	/*
	 * A partition revoked while the batch was collected (cooperative
	 * rebalancing takes partitions without a new assignment): its next
	 * owner may have read the group's offset already, and the group would
	 * take this commit under the new generation.
	 */
	for (int i = 0; i < n; i++)
	{
		int32		p = batch[i]->partition;

		if (p >= pe_run->npart || !pe_run->parts[p].assigned)
		{
			ereport(LOG,
					(errmsg("pipeline_ext consumer %s/%d: partition %d was revoked while the batch was collected; "
							"rolled back, for its next owner",
							pe_run->def->name, pe_run->slot, p)));
			pe_run->group_refused = true;
			return PE_BATCH_CONFLICT;
		}
	}
	err = pe_slot_kafka_commit(batch, n, true);

	switch (err)
	{
		case RD_KAFKA_RESP_ERR_NO_ERROR:
			pe_run->group_took = true;
			return PE_BATCH_DONE;
		case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
		case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
		case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
		case RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID:
		case RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST:
		case RD_KAFKA_RESP_ERR__STATE:	/* not sent: not in the group now */
			ereport(LOG,
					(errmsg("pipeline_ext consumer %s/%d: group \"%s\" refused the batch's offsets (%s); "
							"rolled back, for the partitions' next owner",
							pe_run->def->name, pe_run->slot, pe_run->def->group_id, rd_kafka_err2str(err))));
			pe_run->group_refused = true;
			return PE_BATCH_CONFLICT;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not commit offsets to the Kafka group \"%s\": %s",
							pe_run->def->group_id, rd_kafka_err2str(err)),
					 errhint("The worker restarts; a batch the group took is applied then.")));
	}
	return PE_BATCH_CONFLICT;		/* keep the compiler quiet */
}

/*
 * One attempt at applying a batch.  False after a transient error (cancel,
 * serialization failure, deadlock), which is logged and rolled back; other
 * errors propagate and end the worker.
 */
bool
pe_slot_try_batch(rd_kafka_message_t **batch, int *n, size_t *bytes, PeBatchOutcome *outcome,
				  int64 *ndead, char **stop_error)
{
	MemoryContext old = MemoryContextSwitchTo(pe_run->batch_cxt);
	volatile bool ok = true;

	PG_TRY();
	{
		if (strcmp(pe_run->def->delivery, "at_most_once") == 0)
		{
			rd_kafka_resp_err_t err = pe_slot_kafka_commit(batch, *n, true);

			if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not commit offsets to the Kafka group before applying: %s",
								rd_kafka_err2str(err))));
		}
		pe_xact_begin();
		pgstat_report_activity(STATE_RUNNING, "applying a batch");
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* decoded rows go to the batch context, which keeps its memory */
		MemoryContextSwitchTo(pe_run->batch_cxt);
		*outcome = pe_slot_apply_batch(batch, n, bytes, ndead, stop_error);
		if (*outcome == PE_BATCH_DONE && pe_run->handoff && !pe_run->catching_up)
			*outcome = pe_slot_commit_to_group(batch, *n);
		SPI_finish();
		PopActiveSnapshot();
		if (*outcome == PE_BATCH_DONE)
			CommitTransactionCommand();
		else
			AbortCurrentTransaction();
		pe_run->group_took = false;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		/*
		 * The group took the batch's offsets and PostgreSQL's commit
		 * failed: the worker restarts, and applies the batch again before
		 * it joins the group (slot_handoff.c).
		 */
		if (ProcDiePending || pe_run->group_took)
		{
			RESUME_INTERRUPTS();
			PG_RE_THROW();
		}
		if (!pe_error_is_transient(edata->sqlerrcode))
		{
			/*
			 * Not about a row, and not transient (a trigger that runs SET
			 * ROLE, a revoked privilege): the worker fails and is restarted
			 * with backoff, in case someone fixes the cause, but only so
			 * many times in a row before the consumer stops.  The brokers
			 * (a group commit before the apply) are retried forever.
			 */
			if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_CONNECTION_EXCEPTION ||
				edata->sqlerrcode == ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION ||
				!pe_slot_count_apply_failure())
			{
				RESUME_INTERRUPTS();
				PG_RE_THROW();
			}
			EmitErrorReport();
			*outcome = PE_BATCH_STOP;
			*stop_error = psprintf("%d attempts in a row to apply a batch failed "
								   "(pipeline_ext.max_apply_failures): %s",
								   pe_max_apply_failures, edata->message);
		}
		else
		{
			EmitErrorReport();
			ok = false;
		}
		FreeErrorData(edata);
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	if (*stop_error)
		*stop_error = pstrdup(*stop_error);
	MemoryContextReset(pe_run->batch_cxt);
	return ok;
}

/*
 * Avro: the writer schemas a batch's values (and keys) name, fetched before its
 * transaction, so that decoding asks nobody and no request to the registry
 * runs while the transaction holds its locks.  A registry that does not
 * answer: the slot waits, backing off from 1 s to 30 s, with the reason as
 * its last error, and asks again; the messages stay in hand, so none is
 * lost or made a dead letter.  A SIGTERM ends the wait.  (A schema still
 * missing when the batch decodes, its target described again in between,
 * is fetched then, and a failure fails the batch: the worker restarts.)
 */
void
pe_slot_fetch_schemas(rd_kafka_message_t **batch, int n)
{
	int			backoff_ms = 1000;
	PeTarget   *t = pe_run->target;

	if (t == NULL || (pe_run->def->format != PE_FORMAT_AVRO && !t->key_avro))
		return;
	for (int i = 0; i < 2 * n; i++)
	{
		bool		key = (i % 2) == 1;
		rd_kafka_message_t *m = batch[i / 2];
		int32		id;

		if (key ? !t->key_avro : pe_run->def->format != PE_FORMAT_AVRO)
			continue;
		id = key ? pe_avro_schema_id(m->key, m->key_len) : pe_avro_schema_id(m->payload, m->len);
		if (id < 0)
			continue;			/* a dead letter when decoded */
		while (!pe_avro_known(t, key, id))
		{
			char	   *why;
			TimestampTz until;

			if (pe_avro_fetch(t, key, pe_run->conn, id, &why) != PE_REGISTRY_UNAVAILABLE)
				break;
			why = psprintf("waiting for the schema registry (schema %d): %s", id, why);
			ereport(LOG,
					(errmsg("pipeline_ext %s: %s; asking again in %d ms", pe_run->log_who, why, backoff_ms)));
			pe_slot_record_error(why);
			until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), backoff_ms);
			while (GetCurrentTimestamp() < until)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, PE_WAIT_SLICE_MS,
								 PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				pe_slot_wait_tick();
			}
			backoff_ms = Min(backoff_ms * 2, 30000);
		}
	}
}

/*
 * Idle and caught up: the consumer's aggregates may move their watermark
 * with the clock (pe_aggregates_idle), in a transaction of its own.  An
 * error is logged, not fatal to the worker: the next idle second tries
 * again.
 */
void
pe_slot_idle_aggregates(void)
{
	MemoryContext old = CurrentMemoryContext;

	PG_TRY();
	{
		pe_xact_begin();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		pe_aggregates_idle(pe_run->def);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(old);
		if (ProcDiePending)
		{
			RESUME_INTERRUPTS();
			PG_RE_THROW();
		}
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

/*-------------------------------------------------------------------------
 *
 * slot_metrics.c
 *	  What a slot worker publishes to shared memory for the monitoring views:
 *	  after each commit its counters, throughput and end-to-end latency; the
 *	  time of each partition's oldest unapplied message; its partitions, their
 *	  committed offsets and high watermarks (asking the brokers only for
 *	  partitions that have not moved for a while).
 *
 * IDENTIFICATION
 *	  src/slot_metrics.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "slot.h"

/* high watermarks older than this do not say a consumer is caught up */
#define PE_CAUGHT_UP_FRESH_MS 5000

#define PE_ASK_EVERY_MS 5000		/* ask for idle partitions' watermarks */
#define PE_ASK_TIMEOUT_MS 1000
#define PE_WAKE_WAIT_MS 1			/* pe_slot_wake_fetchers */

/*
 * After a commit: counters, the throughput of this period, and each
 * message's end-to-end latency (commit time minus its Kafka timestamp).
 */
void
pe_slot_record_batch(rd_kafka_message_t **batch, int n, size_t bytes, int64 ndead)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	TimestampTz now = GetCurrentTimestamp();
	PeHistogram *h;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	s->messages += n;
	s->bytes += bytes;
	s->batches++;
	s->dead_letters += ndead;
	s->apply_failures = 0;
	s->last_batch_at = now;
	s->period_msgs[pe_slot_period(s, now)] += n;
	if (s->latency_since == 0 || now - s->latency_since >= (int64) PE_LATENCY_WINDOW_SECS * USECS_PER_SEC)
	{
		/* a new window; the previous one stays readable */
		s->latency_cur = 1 - s->latency_cur;
		pe_hist_init(&s->latency[s->latency_cur]);
		s->latency_since = now;
	}
	h = &s->latency[s->latency_cur];
	LWLockRelease(pe_shared->lock);

	for (int i = 0; i < n; i++)
	{
		rd_kafka_timestamp_type_t type;
		int64		ts = rd_kafka_message_timestamp(batch[i], &type);

		/* (a producer's timestamp may be anything: past the range, not a figure) */
		if (ts > 0 && ts <= PE_KAFKA_MS_MAX)
			pe_hist_add(h, now - pe_kafka_ms_to_timestamptz(ts));
	}
}

/*
 * The next offset to apply, as the views show it: the stored one, else
 * where the partition started (its log start for 'earliest'), so that a
 * consumer that starts at 'latest' is not shown behind by the whole log.
 * -1 when unknown.
 */
static int64
pe_slot_next_offset(int32 p, int64 low)
{
	PePartState *ps = &pe_run->parts[p];

	if (ps->stored >= 0)
		return ps->stored;
	if (ps->start >= 0)
		return ps->start;
	if (ps->start == RD_KAFKA_OFFSET_BEGINNING && low >= 0)
		return low;
	return -1;
}

/*
 * The time of each batch partition's oldest unapplied message.  Before the
 * apply it is the partition's first message in the batch (everything
 * before it is applied).  After the commit the next message is not older
 * than the last one applied, which stands in until the next batch, or the
 * watermarks showing the partition caught up, say better.
 */
void
pe_slot_note_oldest(rd_kafka_message_t **batch, int n, bool before_apply)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	TimestampTz ts[PE_SLOT_MAX_PARTITIONS];
	bool		seen[PE_SLOT_MAX_PARTITIONS];

	memset(seen, false, sizeof(seen));
	for (int j = 0; j < n; j++)
	{
		rd_kafka_message_t *m = batch[before_apply ? j : n - 1 - j];
		rd_kafka_timestamp_type_t type;
		int64		ms;
		int			k = m->partition < pe_run->npart ? pe_run->parts[m->partition].shm : -1;

		if (k < 0 || seen[k])
			continue;
		seen[k] = true;
		ms = rd_kafka_message_timestamp(m, &type);
		ts[k] = ms > 0 && ms <= PE_KAFKA_MS_MAX ? pe_kafka_ms_to_timestamptz(ms) : 0;
	}
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (int k = 0; k < s->npartitions; k++)
		if (seen[k] && ts[k] != 0)
			s->oldest[k] = ts[k];
	LWLockRelease(pe_shared->lock);
}

void
pe_slot_publish_partitions(void)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	int			n = 0;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	pe_slot_reset_partitions(s, GetCurrentTimestamp());
	for (int p = 0; p < pe_run->npart; p++)
	{
		pe_run->parts[p].shm = -1;
		if (pe_run->parts[p].assigned && n < PE_SLOT_MAX_PARTITIONS)
		{
			pe_run->parts[p].shm = n;
			pe_run->parts[p].moved_at = GetCurrentTimestamp();
			pe_run->parts[p].asked_high = -1;
			s->partitions[n] = p;
			s->applied[n] = pe_slot_next_offset(p, -1);
			s->high[n] = -1;
			s->high_at[n] = 0;
			n++;
		}
	}
	s->npartitions = n;
	LWLockRelease(pe_shared->lock);
}

/*
 * librdkafka learns a partition's high watermark from fetch responses
 * only, so a partition that cannot be fetched (its leader unreachable,
 * fetches failing) would look caught up.  Every few seconds, the
 * partitions that have not moved for that long (idle, or stuck) are asked
 * for with one ListOffsets round, bounded in time; busy partitions never
 * are, so a healthy slot does not wait on this.
 */
static void
pe_slot_ask_watermarks(TimestampTz now, bool all, int timeout_ms)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);

	for (int p = 0; p < pe_run->npart; p++)
		if (pe_run->parts[p].assigned &&
			(all || now - pe_run->parts[p].moved_at >= (int64) PE_ASK_EVERY_MS * 1000))
			rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p)->offset = RD_KAFKA_OFFSET_END;
	if (l->cnt > 0 &&
		rd_kafka_offsets_for_times(pe_run->rk, l, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		for (int i = 0; i < l->cnt; i++)
		{
			int32		p = l->elems[i].partition;

			if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && p < pe_run->npart)
				pe_run->parts[p].asked_high = Max(pe_run->parts[p].asked_high, l->elems[i].offset);
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/*
 * Every slot of this consumer is running, has read all there is of its
 * partitions by high watermarks seen within PE_CAUGHT_UP_FRESH_MS, and
 * together they hold all of the topic's partitions: no slot behind, none
 * restarting, no partition unread.  (pe_shared->lock held.)
 */
static bool
pe_slot_consumer_caught_up(TimestampTz now)
{
	int			held = 0;

	for (int i = 0; i < pe_shared->max_slots; i++)
	{
		PeSlot	   *o = &pe_shared->slots[i];

		if (o->state == PE_SLOT_FREE || o->dboid != MyDatabaseId || o->consumer_id != pe_run->def->id || o->dropped)
			continue;
		if (o->state != PE_SLOT_RUNNING)
			return false;
		for (int k = 0; k < o->npartitions; k++)
			if (o->high[k] < 0 || now - o->high_at[k] > (int64) PE_CAUGHT_UP_FRESH_MS * 1000 ||
				o->high[k] > Max(o->applied[k], 0))
				return false;
		held += o->npartitions;
	}
	return held >= pe_run->npart;
}

/*
 * Publish the committed offsets and the high watermarks of this slot's
 * partitions.  The watermarks come from librdkafka's cache, filled by the
 * fetch responses: no request to the broker, so readers never wait on it.
 * True when the whole consumer has read all there is (see above).
 */
bool
pe_slot_publish_watermarks(void)
{
	bool		caught_up = false;
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	TimestampTz now = GetCurrentTimestamp();
	int64		lo[PE_SLOT_MAX_PARTITIONS];
	int64		hi[PE_SLOT_MAX_PARTITIONS];
	int			n = s->npartitions;	/* only this process writes it */

	if (now - pe_run->last_asked >= (int64) PE_ASK_EVERY_MS * 1000)
	{
		pe_slot_ask_watermarks(now, false, PE_ASK_TIMEOUT_MS);
		pe_run->last_asked = now;
	}
	for (int k = 0; k < n; k++)
	{
		int32		p = s->partitions[k];

		if (rd_kafka_get_watermark_offsets(pe_run->rk, pe_run->def->topic, p,
										   &lo[k], &hi[k]) != RD_KAFKA_RESP_ERR_NO_ERROR)
			hi[k] = -1;
		if (p < pe_run->npart)
			hi[k] = Max(hi[k], pe_run->parts[p].asked_high);
	}
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	{
		int64		lag = 0;
		bool		known = false;
		bool		all_known = n > 0;

		for (int k = 0; k < n && k < s->npartitions; k++)
		{
			int32		p = s->partitions[k];

			if (p < pe_run->npart && s->applied[k] != pe_slot_next_offset(p, lo[k]))
			{
				s->applied[k] = pe_slot_next_offset(p, lo[k]);
				s->progress_at[k] = now;
				pe_run->parts[p].moved_at = now;
			}
			if (hi[k] < 0)
				all_known = false;
			if (hi[k] >= 0)
			{
				s->high[k] = hi[k];
				s->high_at[k] = now;
				lag += Max(hi[k] - Max(s->applied[k], 0), 0);
				known = true;
			}
		}
		if (known)
			s->period_lag[pe_slot_period(s, now)] = lag;
		pe_slot_note_watermarks(s, now);
		caught_up = known && all_known && lag == 0 && pe_slot_consumer_caught_up(now);
	}
	LWLockRelease(pe_shared->lock);
	return caught_up;
}

/*
 * A slot that took a large batch from a full prefetch queue wakes the
 * brokers' fetchers.  librdkafka 2.0 stops fetching a partition while the
 * queue holds queued.max.messages.kbytes, and its broker thread looks at
 * the queue again only when something wakes it, at the latest after a
 * second: a slot that applies faster than that drains the queue and
 * waits, idle, for the rest of the second (one append slot was idle half
 * its time).  A request to each leader wakes its thread, which then
 * fetches while the batch is applied: one ListOffsets round for all the
 * slot's partitions.  The request wakes the thread as soon as it is
 * queued, so the slot waits for the answers only PE_WAKE_WAIT_MS (they
 * freshen the lag when they come in time; a late one is dropped by
 * librdkafka): a broker round trip before each batch would cost a slot
 * far from its brokers (Event Hubs over the internet) a tenth of its
 * time.  Only under a backlog: a caught-up slot's queue never fills.  Not
 * with librdkafka 2.2 and later, which back off fetch.queue.backoff.ms
 * instead (consumer_catalog.c sets it).
 */
void
pe_slot_wake_fetchers(void)
{
	if (rd_kafka_version() < PE_RDKAFKA_FETCH_QUEUE_BACKOFF)
		pe_slot_ask_watermarks(GetCurrentTimestamp(), true, PE_WAKE_WAIT_MS);
}

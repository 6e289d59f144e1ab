/*-------------------------------------------------------------------------
 *
 * slot_assign.c
 *	  Which partitions a slot applies and from which offsets: discovering the
 *	  topic's partitions (and partitions added later), manual assignment of
 *	  this slot's share, the group's rebalances, where a partition without a
 *	  stored offset starts, and seeking again after the stored offsets moved.
 *
 * IDENTIFICATION
 *	  src/slot_assign.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "slot.h"
#include "workers.h"

static void
pe_slot_init_parts(PePartState *parts, int from, int to)
{
	for (int p = from; p < to; p++)
	{
		parts[p].partition = p;
		parts[p].assigned = false;
		parts[p].stored = -1;
		parts[p].reset = false;
		parts[p].shm = -1;
		parts[p].asked_high = -1;
		parts[p].floor = -1;
		parts[p].catchup_end = -1;
		parts[p].carried = NULL;
		parts[p].claim_base = -1;
		parts[p].moved_at = 0;
		parts[p].start = RD_KAFKA_OFFSET_INVALID;
	}
}

void
pe_slot_grow(int npart)
{
	if (npart <= pe_run->npart)
		return;
	pe_run->parts = pe_run->parts
		? repalloc(pe_run->parts, sizeof(PePartState) * npart)
		: palloc(sizeof(PePartState) * npart);
	pe_slot_init_parts(pe_run->parts, pe_run->npart, npart);
	pe_run->npart = npart;
}

/*
 * pe_slot_grow() for a librdkafka callback, which must not throw (an
 * ERROR would jump through librdkafka's frames): false when out of memory.
 */
static bool
pe_slot_grow_quietly(int npart)
{
	PePartState *parts;

	if (npart <= pe_run->npart)
		return true;
	parts = MemoryContextAllocExtended(TopMemoryContext, sizeof(PePartState) * npart, MCXT_ALLOC_NO_OOM);
	if (parts == NULL)
		return false;
	if (pe_run->parts)
	{
		memcpy(parts, pe_run->parts, sizeof(PePartState) * pe_run->npart);
		pfree(pe_run->parts);
	}
	pe_slot_init_parts(parts, pe_run->npart, npart);
	pe_run->parts = parts;
	pe_run->npart = npart;
	return true;
}

/*
 * librdkafka's calls that wait on the brokers, made in slices up to the
 * whole timeout with pe_slot_wait_tick() in between, so that the worker
 * answers a SIGTERM within a slice even while the brokers do not answer.
 * Each slice asks again, so slices grow from 200 ms to 1 s: a broker that
 * answers in more than one slice (far away, or loaded) still answers one,
 * if it answers within a second, and a SIGTERM is answered within one.
 */
/* A slice ended without an answer: no broker usable yet, or none answered. */
static bool
pe_slot_wait_more(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR__TIMED_OUT || err == RD_KAFKA_RESP_ERR__TRANSPORT;
}

/* One librdkafka call that waits on the brokers, given a slice's timeout. */
typedef rd_kafka_resp_err_t (*PeBrokerCall) (void *arg, int timeout_ms);

static rd_kafka_resp_err_t
pe_slot_sliced(PeBrokerCall call, void *arg, int timeout_ms)
{
	TimestampTz start = GetCurrentTimestamp();
	rd_kafka_resp_err_t err;
	int			slice = PE_WAIT_SLICE_MS;

	for (;;)
	{
		int			left = timeout_ms - (int) pe_ms_since(start);

		err = call(arg, Max(1, Min(left, slice)));
		if (!pe_slot_wait_more(err) || left <= slice)
			return err;
		slice = Min(slice * 2, PE_WAIT_SLICE_MAX_MS);
		pe_slot_wait_tick();
	}
}

typedef struct PeWatermarksCall
{
	int32		p;
	int64	   *lo;
	int64	   *hi;
} PeWatermarksCall;

static rd_kafka_resp_err_t
pe_call_watermarks(void *arg, int timeout_ms)
{
	PeWatermarksCall *c = arg;

	return rd_kafka_query_watermark_offsets(pe_run->rk, pe_run->def->topic, c->p, c->lo, c->hi, timeout_ms);
}

rd_kafka_resp_err_t
pe_slot_query_watermarks(int32 p, int64 *lo, int64 *hi, int timeout_ms)
{
	PeWatermarksCall c = {p, lo, hi};

	return pe_slot_sliced(pe_call_watermarks, &c, timeout_ms);
}

static rd_kafka_resp_err_t
pe_call_offsets_for_times(void *arg, int timeout_ms)
{
	return rd_kafka_offsets_for_times(pe_run->rk, arg, timeout_ms);
}

static rd_kafka_resp_err_t
pe_slot_offsets_for_times(rd_kafka_topic_partition_list_t *l, int timeout_ms)
{
	return pe_slot_sliced(pe_call_offsets_for_times, l, timeout_ms);
}

typedef struct PeMetadataCall
{
	rd_kafka_topic_t *rkt;
	const struct rd_kafka_metadata **md;
} PeMetadataCall;

static rd_kafka_resp_err_t
pe_call_metadata(void *arg, int timeout_ms)
{
	PeMetadataCall *c = arg;

	return rd_kafka_metadata(pe_run->rk, 0, c->rkt, c->md, timeout_ms);
}

static rd_kafka_resp_err_t
pe_slot_metadata(rd_kafka_topic_t *rkt, const struct rd_kafka_metadata **md, int timeout_ms)
{
	PeMetadataCall c = {rkt, md};

	return pe_slot_sliced(pe_call_metadata, &c, timeout_ms);
}

static rd_kafka_resp_err_t
pe_call_committed(void *arg, int timeout_ms)
{
	return rd_kafka_committed(pe_run->rk, arg, timeout_ms);
}

/*
 * The group's committed offsets (and their metadata) for a list of
 * partitions.  With each_partition, a partition the group could not say
 * anything about is an error too (in a group shared between servers,
 * resuming at this server's own offset might apply again what another
 * server applied); otherwise its element carries the error.
 */
void
pe_slot_read_committed(rd_kafka_topic_partition_list_t *l, bool each_partition)
{
	rd_kafka_resp_err_t err;

	if (l->cnt == 0)
		return;
	err = pe_slot_sliced(pe_call_committed, l, 30000);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not read the offsets group \"%s\" committed for topic \"%s\"",
						pe_run->def->group_id, pe_run->def->topic),
				 errdetail("librdkafka: %s", rd_kafka_err2str(err)),
				 errhint("The worker restarts and asks again.")));
	for (int i = 0; each_partition && i < l->cnt; i++)
		if (l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the offset group \"%s\" committed for partition %d of topic \"%s\"",
							pe_run->def->group_id, l->elems[i].partition, pe_run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(l->elems[i].err)),
					 errhint("The worker restarts and asks again.")));
}

/*
 * Where a partition with no stored offset starts: 'earliest' is the
 * beginning; 'latest' and timestamps are resolved now, so that a restart
 * before the first commit does not move the start.
 */
static int64
pe_slot_start_offset(int32 p, bool new_partition)
{
	const char *so = pe_run->def->start_offset;
	int64		lo,
				hi;
	rd_kafka_resp_err_t err;

	if (new_partition || strcmp(so, "earliest") == 0)
		return RD_KAFKA_OFFSET_BEGINNING;
	if (strcmp(so, "latest") == 0)
	{
		err = pe_slot_query_watermarks(p, &lo, &hi, 10000);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not look up the end of partition %d of topic \"%s\"", p, pe_run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
		return hi;
	}
	else
	{
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		int64		o;

		rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p)->offset = pe_kafka_ms_from_text(so);
		err = pe_slot_offsets_for_times(l, 10000);
		o = l->elems[0].offset;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			err = l->elems[0].err;
		rd_kafka_topic_partition_list_destroy(l);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not look up offsets by time in topic \"%s\"", pe_run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
		if (o < 0)
			return RD_KAFKA_OFFSET_END;
		return o;
	}
}

/* Partition count of the topic, or -1 if the broker did not answer in time. */
static int
pe_slot_partition_count(int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(pe_run->rk, pe_run->def->topic, NULL);
	rd_kafka_resp_err_t err;
	int			n = -1;

	/* without a handle, librdkafka would describe every topic instead */
	if (rkt == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid topic \"%s\" for consumer \"%s\"", pe_run->def->topic, pe_run->def->name),
				 errdetail("librdkafka: %s", rd_kafka_err2str(rd_kafka_last_error()))));
	err = pe_slot_metadata(rkt, &md, timeout_ms);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1)
	{
		if (md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			n = md->topics[0].partition_cnt;
		else if (md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
			n = 0;
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return n;
}

/* Offset to resume a partition from, for an assignment. */
static int64
pe_slot_resume_offset(int32 p, bool new_partition)
{
	int64		o = RD_KAFKA_OFFSET_INVALID;	/* the group's committed offset */

	if (pe_run->exactly_once || pe_run->def->group_id == NULL)
	{
		if (pe_run->parts[p].stored >= 0)
			return pe_run->parts[p].stored;
		if (pe_run->exactly_once)
			o = pe_slot_start_offset(p, new_partition);
	}
	pe_run->parts[p].start = o;
	return o;
}

/*
 * Manual assignment: assign every partition p with p % parallelism = slot
 * not assigned yet (all of them when reassigning).
 */
static void
pe_slot_assign_manual(bool reassign, bool new_partitions)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(pe_run->npart);
	rd_kafka_resp_err_t err;
	rd_kafka_error_t *error = NULL;

	for (int p = 0; p < pe_run->npart; p++)
	{
		if (p % pe_run->def->parallelism != pe_run->slot)
			continue;
		if (pe_run->parts[p].assigned && !reassign)
			continue;
		rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p)->offset =
			pe_slot_resume_offset(p, new_partitions);
		pe_run->parts[p].assigned = true;
	}
	if (reassign)
		err = rd_kafka_assign(pe_run->rk, l);
	else
	{
		err = RD_KAFKA_RESP_ERR_NO_ERROR;
		if (l->cnt > 0)
			error = rd_kafka_incremental_assign(pe_run->rk, l);
		if (error)
		{
			err = rd_kafka_error_code(error);
			rd_kafka_error_destroy(error);
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not assign partitions of topic \"%s\"", pe_run->def->topic),
				 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	pe_slot_publish_partitions();
}

/*
 * A rebalance of the group gives or takes partitions.  Every partition
 * given is taken, numbered past what the slot knew or not (partitions added
 * to the topic since): its messages must not be dropped while the group's
 * position moves on.  Runs inside a librdkafka call, so it never throws:
 * what fails is kept in rebalance_error, for the loop to raise.
 */
void
pe_slot_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
					 rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
	bool		cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
	rd_kafka_error_t *error = NULL;
	rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;

	(void) opaque;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		int32		top = -1;

		for (int i = 0; i < partitions->cnt; i++)
			top = Max(top, partitions->elems[i].partition);
		if (!pe_slot_grow_quietly(top + 1))
		{
			snprintf(pe_run->rebalance_error, sizeof(pe_run->rebalance_error),
					 "out of memory for %d partitions", top + 1);
			return;
		}
		for (int i = 0; i < partitions->cnt; i++)
		{
			int32		p = partitions->elems[i].partition;

			pe_run->parts[p].assigned = true;
			/* exactly once: the offset stored in PostgreSQL */
			if (pe_run->exactly_once)
				partitions->elems[i].offset = pe_run->parts[p].stored >= 0
					? pe_run->parts[p].stored
					: (strcmp(pe_run->def->start_offset, "latest") == 0 && p < pe_run->npart_at_start
					   ? RD_KAFKA_OFFSET_END
					   : RD_KAFKA_OFFSET_BEGINNING);	/* (a partition added since: all of it) */
		}
		if (cooperative)
			error = rd_kafka_incremental_assign(rk, partitions);
		else
			aerr = rd_kafka_assign(rk, partitions);
		/* the stored offsets may be older than what another member applied */
		pe_run->need_reseek = pe_run->exactly_once;
		pe_run->reseek_from_group = true;
	}
	else
	{
		if (cooperative)
		{
			for (int i = 0; i < partitions->cnt; i++)
				if (partitions->elems[i].partition < pe_run->npart)
					pe_run->parts[partitions->elems[i].partition].assigned = false;
			error = rd_kafka_incremental_unassign(rk, partitions);
		}
		else
		{
			for (int p = 0; p < pe_run->npart; p++)
				pe_run->parts[p].assigned = false;
			aerr = rd_kafka_assign(rk, NULL);
		}
	}
	if (error)
	{
		snprintf(pe_run->rebalance_error, sizeof(pe_run->rebalance_error),
				 "%s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	else if (aerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		snprintf(pe_run->rebalance_error, sizeof(pe_run->rebalance_error),
				 "%s", rd_kafka_err2str(aerr));
	pe_run->assignment_changed = true;
}

/* Look for partitions added to the topic; assign this slot's share. */
void
pe_slot_discover(bool first)
{
	int			n = pe_slot_partition_count(first ? 10000 : 1000);
	MemoryContext old;

	pe_run->last_discover = GetCurrentTimestamp();
	if (n < 0)
	{
		if (first)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the partitions of topic \"%s\"", pe_run->def->topic),
					 errhint("Check that the brokers of connection \"%s\" are reachable.", pe_run->conn->name)));
		return;
	}
	if (n == 0)
	{
		if (first)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("topic \"%s\" does not exist on connection \"%s\"", pe_run->def->topic, pe_run->conn->name),
					 errhint("Create the topic, then start the consumer again.")));
		return;
	}
	if (n <= pe_run->npart && !first)
		return;
	if (!first)
		ereport(LOG,
				(errmsg("pipeline_ext consumer %s/%d: topic \"%s\" now has %d partitions",
						pe_run->def->name, pe_run->slot, pe_run->def->topic, n)));
	old = MemoryContextSwitchTo(TopMemoryContext);
	pe_slot_grow(n);
	if (first)
		pe_run->npart_at_start = n;
	MemoryContextSwitchTo(old);
	if (pe_run->def->group_id == NULL)
		pe_slot_assign_manual(first, !first);
}

/* After the stored offsets moved under us: read them again and seek. */
void
pe_slot_reseek(void)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	pe_slot_load_offsets();
	if (pe_run->def->group_id == NULL)
	{
		/* re-assign: librdkafka drops what it prefetched */
		pe_slot_assign_manual(true, false);
	}
	else
	{
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(pe_run->npart);
		rd_kafka_error_t *e;

		for (int p = 0; p < pe_run->npart; p++)
			if (pe_run->parts[p].assigned)
				rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p);

		/*
		 * After a rebalance each partition resumes where the group
		 * committed, and never before what this server applied (its
		 * stored offset): a partition that comes from a member on another
		 * server (several servers sharing a topic through one group)
		 * resumes where that one stopped.  exactly_once: see
		 * pe_slot_handoff_assigned().
		 */
		pe_slot_read_committed(l, pe_run->handoff && pe_run->reseek_from_group);
		for (int i = 0; i < l->cnt; i++)
		{
			int32		p = l->elems[i].partition;
			int64		committed = l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR ? l->elems[i].offset : -1;
			int64		from;

			/*
			 * After reset_offsets() (or a fence that did not hold), the
			 * stored offset is the one to go to, backwards too; and after a
			 * rebalance as well when no batch moved the offset since a
			 * reset (made while the consumer was stopped, say).
			 */
			if (!pe_run->reseek_from_group)
				from = pe_run->parts[p].stored;
			else
			{
				from = pe_run->handoff ? pe_slot_handoff_assigned(&l->elems[i])
					: Max(pe_run->parts[p].stored, committed);
			}

			if (from < 0)
				from = pe_slot_start_offset(p, p >= pe_run->npart_at_start);
			else if (pe_run->reseek_from_group && from > pe_run->parts[p].stored)
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: partition %d resumes at offset " INT64_FORMAT
								", where group \"%s\" committed (applied here up to " INT64_FORMAT ")",
								pe_run->def->name, pe_run->slot, p, from,
								pe_run->def->group_id, pe_run->parts[p].stored)));
			l->elems[i].offset = from;
			l->elems[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
			/* what was fetched from the old position may still come: dropped */
			pe_run->parts[p].floor = from;
		}
		if (l->cnt > 0)
		{
			/*
			 * Asynchronous (no wait on the brokers, nothing to slice): a
			 * failed seek shows as a fetch error of the partition.
			 */
			e = rd_kafka_seek_partitions(pe_run->rk, l, 0);
			if (e)
			{
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: seek failed: %s",
								pe_run->def->name, pe_run->slot, rd_kafka_error_string(e))));
				rd_kafka_error_destroy(e);
			}
		}
		rd_kafka_topic_partition_list_destroy(l);
		pe_slot_publish_partitions();
	}
	pe_run->need_reseek = false;
	pe_run->reseek_from_group = false;
	MemoryContextSwitchTo(old);
}

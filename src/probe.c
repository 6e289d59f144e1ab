/*-------------------------------------------------------------------------
 *
 * probe.c
 *	  Fresh lag figures for consumers that have no running worker.
 *
 *	  A stopped (or failing) consumer's partitions keep filling up, and
 *	  pipeline.consumer_lag must still say how far behind it is, without
 *	  making its readers wait on a broker.  The database's manager does the
 *	  asking instead.  Every couple of seconds, for each consumer without a
 *	  live worker, it reads the stored offsets, asks the brokers for the
 *	  partitions' high watermarks (one ListOffsets round per leader, bounded
 *	  in time), and starts fetching the first unapplied message of each
 *	  partition that is behind, to learn how old it is.  The fetch is
 *	  asynchronous: each round only picks up what has arrived.
 *
 *	  The figures go into the consumer's slot entries in shared memory,
 *	  exactly where its workers put theirs while they run, so that the views
 *	  read one place.  An entry a worker has taken over is left alone.
 *
 * IDENTIFICATION
 *	  src/probe.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "consumer.h"
#include "kafka.h"
#include "shmem.h"
#include "workers.h"

#define PE_PROBE_EVERY_MS 2000		/* watermarks of each consumer */
#define PE_PROBE_RETRY_MS 10000		/* ... after the brokers did not answer */
#define PE_PROBE_TIMEOUT_MS 1000	/* longest wait on the brokers, per call */
#define PE_PROBE_BUDGET_MS 1000		/* per round: the rest wait for the next */
#define PE_PROBE_METADATA_MS 30000	/* partition count */
#define PE_PROBE_POLL_BATCH 64

typedef struct PeProbe
{
	PeConsumerRef ref;
	char	   *name;			/* ref.name */
	bool		wanted;			/* still without a worker, this round */
	bool		broken;			/* no client could be made; said once */
	char	   *topic;
	int			parallelism;
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	int			npart;
	int64	   *stored;			/* next offset per partition; -1: none */
	bool	   *fetching;		/* its first unapplied message is awaited */
	int64	   *fetch_from;		/* ... from this stored offset */
	int64	   *known_for;		/* stored offset whose message time is known */
	TimestampTz *known_ts;		/* ... and that time; 0: the message had none */
	TimestampTz next_probe;
	TimestampTz last_metadata;
} PeProbe;

static MemoryContext probe_cxt = NULL;
static List *probes = NIL;

static bool
pe_probe_has_worker(Oid dboid, const PeConsumerRef *consumer)
{
	bool		found = false;

	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < pe_shared->max_slots && !found; i++)
	{
		PeSlot	   *s = &pe_shared->slots[i];

		if (s->state != PE_SLOT_FREE && s->dboid == dboid && s->consumer_id == consumer->id && !s->dropped &&
			(s->pid != 0 || s->state == PE_SLOT_STARTING || s->state == PE_SLOT_RUNNING))
			found = true;
	}
	LWLockRelease(pe_shared->lock);
	return found;
}

static void
pe_probe_grow(PeProbe *p, int npart)
{
	MemoryContext old;

	if (npart <= p->npart)
		return;
	old = MemoryContextSwitchTo(probe_cxt);
#define PE_GROW(field, type) \
	p->field = p->field ? repalloc(p->field, sizeof(type) * npart) : palloc(sizeof(type) * npart)
	PE_GROW(stored, int64);
	PE_GROW(fetching, bool);
	PE_GROW(fetch_from, int64);
	PE_GROW(known_for, int64);
	PE_GROW(known_ts, TimestampTz);
#undef PE_GROW
	for (int i = p->npart; i < npart; i++)
	{
		p->stored[i] = -1;
		p->fetching[i] = false;
		p->fetch_from[i] = -1;
		p->known_for[i] = PG_INT64_MIN;
		p->known_ts[i] = 0;
	}
	p->npart = npart;
	MemoryContextSwitchTo(old);
}

static void
pe_probe_free(PeProbe *p)
{
	if (p->queue)
		rd_kafka_queue_destroy(p->queue);
	if (p->rk)
		rd_kafka_destroy_flags(p->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	if (p->npart > 0)
	{
		pfree(p->stored);
		pfree(p->fetching);
		pfree(p->fetch_from);
		pfree(p->known_for);
		pfree(p->known_ts);
	}
	if (p->topic)
		pfree(p->topic);
	pfree(p);
}

/*
 * In a transaction: the consumer's definition, a client for its
 * connection (made once), and its stored offsets.
 */
static void
pe_probe_prepare(PeProbe *p, const char *dbname)
{
	PeConsumerDef *def = pe_consumer_read(p->name, true);
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	if (def == NULL || def->id != p->ref.id)
	{
		p->wanted = false;
		return;
	}
	if (p->rk == NULL && !p->broken)
	{
		PeConnection *conn = pe_connection_lookup(def->connection, true);
		MemoryContext old;
		List	   *props = NIL;
		List	   *forced = NIL;
		rd_kafka_conf_t *conf;
		char		errstr[512];

		if (conn == NULL)
			return;
		old = MemoryContextSwitchTo(probe_cxt);
		p->topic = pstrdup(def->topic);
		p->parallelism = def->parallelism;
		MemoryContextSwitchTo(old);

		/* a small client: it never joins the group, commits or prefetches much */
		props = lappend(props, pe_property("client.id", "pipeline_ext", "pipeline_ext"));
		forced = lappend(forced, pe_property("group.id", psprintf("pipeline_ext.%s.%s.lag", dbname, p->name),
											 "pipeline_ext"));
		forced = lappend(forced, pe_property("enable.auto.commit", "false", "pipeline_ext"));
		forced = lappend(forced, pe_property("enable.auto.offset.store", "false", "pipeline_ext"));
		forced = lappend(forced, pe_property("enable.partition.eof", "false", "pipeline_ext"));
		props = lappend(props, pe_property("auto.offset.reset", "earliest", "pipeline_ext"));
		props = lappend(props, pe_property("queued.min.messages", "1", "pipeline_ext"));
		props = lappend(props, pe_property("queued.max.messages.kbytes", "1024", "pipeline_ext"));
		props = lappend(props, pe_property("max.partition.fetch.bytes", "65536", "pipeline_ext"));
		props = lappend(props, pe_property("fetch.max.bytes", "1048576", "pipeline_ext"));
		conf = pe_kafka_conf(conn, props, forced);
		rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
		p->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
		if (p->rk == NULL)
		{
			char	   *why = pe_redact(errstr, pe_connection_secrets(conn));

			rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */

			p->broken = true;
			ereport(LOG,
					(errmsg("pipeline_ext: cannot watch the lag of stopped consumer \"%s\": %s", p->name, why)));
			return;
		}
		p->queue = rd_kafka_queue_get_consumer(p->rk);
	}

	values[0] = CStringGetTextDatum(p->name);
	if (SPI_execute_with_args("SELECT \"partition\", next_offset FROM pipeline.offsets "
							  "WHERE consumer OPERATOR(pg_catalog.=) $1",
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the offsets of consumer \"%s\"", p->name);
	for (int i = 0; i < p->npart; i++)
		p->stored[i] = -1;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		part = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		next = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (part < 0 || part >= 100000)
			continue;
		pe_probe_grow(p, part + 1);
		p->stored[part] = next;
	}
}

/*
 * The slot entry and index that show a partition, adding it to the entry
 * of slot (partition mod parallelism) when no entry shows it yet.  NULL
 * when a worker has taken the consumer over.  Lock held exclusively.
 */
static PeSlot *
pe_probe_locate(Oid dboid, PeProbe *p, int32 part, bool create, TimestampTz now, int *kout)
{
	PeSlot	   *s;
	int			k;

	for (int slot = 0; slot < p->parallelism; slot++)
	{
		s = pe_slot_entry(dboid, &p->ref, slot, false);
		if (s == NULL)
			continue;
		if (s->pid != 0 || s->state == PE_SLOT_STARTING || s->state == PE_SLOT_RUNNING)
			return NULL;
		for (k = 0; k < s->npartitions; k++)
			if (s->partitions[k] == part)
			{
				*kout = k;
				return s;
			}
	}
	if (!create)
		return NULL;
	s = pe_slot_entry(dboid, &p->ref, part % Max(p->parallelism, 1), true);
	if (s == NULL || s->npartitions >= PE_SLOT_MAX_PARTITIONS)
		return NULL;
	k = s->npartitions++;
	s->partitions[k] = part;
	s->applied[k] = -1;
	s->high[k] = -1;
	s->high_at[k] = 0;
	s->oldest[k] = 0;
	s->progress_at[k] = now;
	for (int i = 0; i < PE_LAG_SAMPLES; i++)
		s->sample_lag[i][k] = -1;
	*kout = k;
	return s;
}

/* Fetch exactly the partitions whose oldest unapplied message is awaited. */
static void
pe_probe_assign(PeProbe *p)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(Max(p->npart, 1));
	rd_kafka_resp_err_t err;

	for (int i = 0; i < p->npart; i++)
		if (p->fetching[i])
			rd_kafka_topic_partition_list_add(l, p->topic, i)->offset =
				p->fetch_from[i] >= 0 ? p->fetch_from[i] : RD_KAFKA_OFFSET_BEGINNING;
	err = rd_kafka_assign(p->rk, l->cnt > 0 ? l : NULL);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		elog(DEBUG1, "pipeline_ext: lag watch of \"%s\": assign failed: %s", p->name, rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(l);
}

/* Ask the brokers for the high watermarks, and publish them; false: no answer. */
static bool
pe_probe_watermarks(Oid dboid, PeProbe *p, TimestampTz now)
{
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_resp_err_t err;
	bool		refetch = false;

	if (p->rk == NULL)
		return false;
	if (p->npart == 0 || now - p->last_metadata > (int64) PE_PROBE_METADATA_MS * 1000)
	{
		rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, p->topic, NULL);
		const struct rd_kafka_metadata *md = NULL;

		/* without a handle librdkafka would describe every topic: look later */
		if (rkt == NULL)
			return false;
		err = rd_kafka_metadata(p->rk, 0, rkt, &md, PE_PROBE_TIMEOUT_MS);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
			md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			pe_probe_grow(p, md->topics[0].partition_cnt);
			p->last_metadata = now;
		}
		if (md)
			rd_kafka_metadata_destroy(md);
		rd_kafka_topic_destroy(rkt);
	}
	if (p->npart == 0)
		return false;

	/* ListOffsets with the "latest" timestamp (-1): the high watermarks */
	l = rd_kafka_topic_partition_list_new(p->npart);
	for (int i = 0; i < p->npart; i++)
		rd_kafka_topic_partition_list_add(l, p->topic, i)->offset = RD_KAFKA_OFFSET_END;
	err = rd_kafka_offsets_for_times(p->rk, l, PE_PROBE_TIMEOUT_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		/* the figures keep their age, which the view shows */
		elog(DEBUG1, "pipeline_ext: lag watch of \"%s\": %s", p->name, rd_kafka_err2str(err));
		rd_kafka_topic_partition_list_destroy(l);
		return false;
	}

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	for (int j = 0; j < l->cnt; j++)
	{
		int32		part = l->elems[j].partition;
		int64		hi = l->elems[j].offset;
		PeSlot	   *s;
		int			k;

		if (l->elems[j].err != RD_KAFKA_RESP_ERR_NO_ERROR || hi < 0 || part >= p->npart)
			continue;
		s = pe_probe_locate(dboid, p, part, true, now, &k);
		if (s == NULL)
			continue;
		if (s->applied[k] != p->stored[part])
		{
			s->applied[k] = p->stored[part];
			s->progress_at[k] = now;
		}
		s->high[k] = hi;
		s->high_at[k] = now;
		if (hi > Max(p->stored[part], 0))
		{
			if (p->known_for[part] == p->stored[part] && p->known_ts[part] != 0)
				s->oldest[k] = p->known_ts[part];
			else if (!p->fetching[part] || p->fetch_from[part] != p->stored[part])
			{
				p->fetching[part] = true;
				p->fetch_from[part] = p->stored[part];
				refetch = true;
			}
		}
		else if (p->fetching[part])
		{
			p->fetching[part] = false;
			refetch = true;
		}
	}
	for (int slot = 0; slot < p->parallelism; slot++)
	{
		PeSlot	   *s = pe_slot_entry(dboid, &p->ref, slot, false);
		int64		lag = 0;

		if (s == NULL || s->pid != 0 || s->state == PE_SLOT_STARTING || s->state == PE_SLOT_RUNNING)
			continue;
		for (int k = 0; k < s->npartitions; k++)
			if (s->high[k] >= 0)
				lag += Max(s->high[k] - Max(s->applied[k], 0), 0);
		s->period_lag[pe_slot_period(s, now)] = lag;
		pe_slot_note_watermarks(s, now);
	}
	LWLockRelease(pe_shared->lock);
	rd_kafka_topic_partition_list_destroy(l);
	if (refetch)
		pe_probe_assign(p);
	return true;
}

/* Pick up the first unapplied messages that have arrived; never waits. */
static void
pe_probe_poll(Oid dboid, PeProbe *p)
{
	rd_kafka_message_t *msgs[PE_PROBE_POLL_BATCH];
	ssize_t		got;
	bool		reassign = false;

	if (p->queue == NULL)
		return;
	got = rd_kafka_consume_batch_queue(p->queue, 0, msgs, PE_PROBE_POLL_BATCH);
	for (ssize_t i = 0; i < got; i++)
	{
		rd_kafka_message_t *m = msgs[i];
		int32		part = m->partition;

		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && part >= 0 && part < p->npart &&
			p->fetching[part] && m->offset >= Max(p->fetch_from[part], 0))
		{
			rd_kafka_timestamp_type_t type;
			int64		ts = rd_kafka_message_timestamp(m, &type);
			PeSlot	   *s;
			int			k;

			/* the stored offset's message, or the first one retention kept */
			p->fetching[part] = false;
			p->known_for[part] = p->fetch_from[part];
			p->known_ts[part] = ts > 0 && ts <= PE_KAFKA_MS_MAX ? pe_kafka_ms_to_timestamptz(ts) : 0;
			reassign = true;
			LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
			s = pe_probe_locate(dboid, p, part, false, 0, &k);
			if (s && p->known_ts[part] != 0 && s->applied[k] == p->known_for[part] &&
				s->high[k] > Max(s->applied[k], 0))
				s->oldest[k] = p->known_ts[part];
			LWLockRelease(pe_shared->lock);
		}
		rd_kafka_message_destroy(m);
	}
	if (reassign)
		pe_probe_assign(p);
}

static int
pe_probe_overdue_cmp(const ListCell *a, const ListCell *b)
{
	TimestampTz ta = ((PeProbe *) lfirst(a))->next_probe;
	TimestampTz tb = ((PeProbe *) lfirst(b))->next_probe;

	return ta < tb ? -1 : (ta > tb ? 1 : 0);
}

/*
 * One round, from the manager's loop: names are the database's consumers.
 * Probes of consumers that are gone, or whose workers run again, are
 * dropped.  Errors are logged and the round skipped: the manager must go on.
 */
void
pe_probe_round(Oid dboid, const PeConsumerRef *consumers, int n)
{
	TimestampTz now = GetCurrentTimestamp();
	List	   *due = NIL;
	ListCell   *lc;
	MemoryContext caller = CurrentMemoryContext;

	if (probe_cxt == NULL)
		probe_cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext lag probes", ALLOCSET_SMALL_SIZES);

	foreach(lc, probes)
		((PeProbe *) lfirst(lc))->wanted = false;
	for (int i = 0; i < n; i++)
	{
		PeProbe    *p = NULL;

		if (pe_probe_has_worker(dboid, &consumers[i]))
			continue;
		foreach(lc, probes)
			if (((PeProbe *) lfirst(lc))->ref.id == consumers[i].id)
				p = lfirst(lc);
		if (p == NULL)
		{
			p = MemoryContextAllocZero(probe_cxt, sizeof(PeProbe));
			p->ref = consumers[i];
			p->name = p->ref.name;
			probes = lappend(probes, p);
		}
		p->wanted = true;
		if (now >= p->next_probe)
			due = lappend(due, p);
	}

	if (due != NIL)
	{
		PG_TRY();
		{
			pe_xact_begin();
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			foreach(lc, due)
				pe_probe_prepare(lfirst(lc), get_database_name(dboid));
			SPI_finish();
			pe_xact_commit();
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(caller);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			foreach(lc, due)
				((PeProbe *) lfirst(lc))->next_probe = now + (int64) PE_PROBE_RETRY_MS * 1000;
			return;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(caller);
		/*
		 * Brokers that do not answer cost up to PE_PROBE_TIMEOUT_MS per
		 * call: within a round's budget, the most overdue first; the rest
		 * wait for the next round, and an unanswered one for longer.
		 */
		list_sort(due, pe_probe_overdue_cmp);
		foreach(lc, due)
		{
			PeProbe    *p = lfirst(lc);
			bool		ok;

			CHECK_FOR_INTERRUPTS();
			if (GetCurrentTimestamp() - now > (int64) PE_PROBE_BUDGET_MS * 1000)
				break;
			if (!p->wanted)
				continue;
			ok = pe_probe_watermarks(dboid, p, GetCurrentTimestamp());
			p->next_probe = GetCurrentTimestamp() +
				(int64) (ok ? PE_PROBE_EVERY_MS : PE_PROBE_RETRY_MS) * 1000;
		}
	}

	/* drop the probes no longer wanted; poll the others */
	foreach(lc, probes)
	{
		PeProbe    *p = lfirst(lc);

		if (!p->wanted)
		{
			probes = foreach_delete_current(probes, lc);
			pe_probe_free(p);
		}
		else
			pe_probe_poll(dboid, p);
	}
}

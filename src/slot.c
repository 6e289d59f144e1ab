/*-------------------------------------------------------------------------
 *
 * slot.c
 *	  A consumer slot's worker: it owns a set of partitions (every partition
 *	  p with p % parallelism = slot, or what the Kafka group gives it;
 *	  slot_assign.c) and loops: collect a batch, then in one transaction
 *	  decode and apply it, write its dead letters, and write the next offsets
 *	  of its partitions with a fence (the stored offset must still be the one
 *	  the slot started the batch from; otherwise another slot, or
 *	  reset_offsets(), moved it, and the batch is rolled back and the slot
 *	  seeks again).  Offsets are then committed to the Kafka group, best
 *	  effort, so external tools see progress.
 *
 * IDENTIFICATION
 *	  src/slot.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "slot.h"
#include "workers.h"

#define PE_DISCOVER_MS 5000
#define PE_SLICE_MS 100
/* idle this long, a slot gives its kept batch memory back */
#define PE_TRIM_IDLE_MS 10000

PeSlotRun  *pe_run = NULL;


/*
 * Between two slices of a wait on the brokers (at most PE_WAIT_SLICE_MS
 * each): a SIGTERM (stop_consumer, DROP DATABASE, shutdown) or the
 * postmaster's death is answered here, whatever the brokers do.  A cancel
 * is for a batch being applied; outside one there is nothing to cancel.
 */
/* librdkafka's error callback (served by rd_kafka_poll in the loop's thread) */
static void
pe_slot_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	(void) rk;
	(void) opaque;
	if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION && pe_run)
		pe_redact_into(pe_run->auth_error, sizeof(pe_run->auth_error), reason, pe_run->secrets);
}

/*
 * A broker refused the connection's credentials: the worker fails at once
 * with that reason (its last error), and is restarted with backoff.
 */
static void
pe_slot_check_auth(void)
{
	if (pe_run->rk)
		rd_kafka_poll(pe_run->rk, 0);
	if (pe_run->auth_error[0] != '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("authentication failed for connection \"%s\"", pe_run->conn->name),
				 errdetail("The broker said: %s", pe_redact(pe_run->auth_error, pe_run->secrets)),
				 errhint("Fix the connection's credentials; the worker retries with backoff.")));
}

void
pe_slot_wait_tick(void)
{
	if (QueryCancelPending)
	{
		QueryCancelPending = false;
		ereport(LOG,
				(errmsg("pipeline_ext consumer %s/%d: no batch is being applied; cancel request ignored",
						pe_run->def->name, pe_run->slot)));
	}
	CHECK_FOR_INTERRUPTS();
	if (!PostmasterIsAlive())
		proc_exit(1);
	pe_slot_check_auth();
}

static void
pe_slot_drain_logs(void)
{
	rd_kafka_poll(pe_run->rk, 0);
	pe_log_drain(pe_run->rk, pe_run->log_who, pe_run->secrets);
}

static void
pe_slot_relcache_cb(Datum arg, Oid relid)
{
	(void) arg;
	if (pe_run && pe_run->target && (relid == InvalidOid || relid == pe_run->def->target))
		pe_run->target_stale = true;
}

/*
 * At exit: give back the messages we hold, and leave the group so that its
 * partitions move at once.  The handle itself is not destroyed: the process
 * is ending, and rd_kafka_destroy() can wait without bound for a broker.
 */
static void
pe_slot_close_kafka(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (pe_run == NULL || pe_run->rk == NULL)
		return;
	for (int i = 0; i < pe_run->batch_n; i++)
		rd_kafka_message_destroy(pe_run->batch[i]);
	pe_run->batch_n = 0;
	if (pe_run->def->group_id)
	{
		rd_kafka_queue_t *q = rd_kafka_queue_new(pe_run->rk);
		rd_kafka_error_t *e = rd_kafka_consumer_close_queue(pe_run->rk, q);
		TimestampTz start = GetCurrentTimestamp();

		if (e)
			rd_kafka_error_destroy(e);
		else
			while (!rd_kafka_consumer_closed(pe_run->rk) && pe_ms_since(start) < 3000)
			{
				rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);

				if (ev)
				{
					if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
						rd_kafka_assign(pe_run->rk, NULL);
					rd_kafka_event_destroy(ev);
				}
			}
	}
}

static void
pe_slot_connect(void)
{
	List	   *forced = NIL;
	List	   *defaults = pe_consumer_defaults(pe_run->def, pe_run->dbname, &forced);
	rd_kafka_conf_t *conf = pe_kafka_conf(pe_run->conn, defaults, forced);
	char		errstr[512];

	if (rd_kafka_conf_set(conf, "log.queue", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		elog(ERROR, "could not set log.queue: %s", errstr);
	rd_kafka_conf_set_log_cb(conf, pe_log_cb);
	rd_kafka_conf_set_error_cb(conf, pe_slot_error_cb);
	if (pe_run->def->group_id)
		rd_kafka_conf_set_rebalance_cb(conf, pe_slot_rebalance_cb);
	pe_run->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (pe_run->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka consumer for connection \"%s\"", pe_run->conn->name),
				 errdetail("%s", pe_redact(errstr, pe_run->secrets))));
	}
	rd_kafka_set_log_queue(pe_run->rk, NULL);
	pe_run->queue = rd_kafka_queue_get_consumer(pe_run->rk);
}

static void
pe_slot_prepare_catalog_plans(void)
{
	pe_run->offset_plan = pe_offsets_prepare();
	pe_run->dead_plan = pe_deadletter_prepare();
}

static void
pe_slot_init(void)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	char		name[NAMEDATALEN];
	int64		id;
	MemoryContext old;

	LWLockAcquire(pe_shared->lock, LW_SHARED);
	strlcpy(name, s->consumer, NAMEDATALEN);
	id = s->consumer_id;
	pe_run->slot = s->slot;
	LWLockRelease(pe_shared->lock);

	pe_xact_begin();
	old = MemoryContextSwitchTo(TopMemoryContext);
	pe_run->def = pe_consumer_read(name, true);
	/* gone, stopped, or dropped and its name taken by another consumer */
	if (pe_run->def == NULL || !pe_run->def->enabled || pe_run->def->id != id)
	{
		MemoryContextSwitchTo(old);
		pe_xact_commit();
		proc_exit(0);
	}
	pe_run->exactly_once = strcmp(pe_run->def->delivery, "exactly_once") == 0;
	pe_run->handoff = pe_run->exactly_once && pe_run->def->group_id != NULL;
	pe_run->dbname = get_database_name(MyDatabaseId);
	pe_run->log_who = psprintf("consumer %s/%d", pe_run->def->name, pe_run->slot);
	pe_run->conn = pe_connection_lookup(pe_run->def->connection, false);
	if (!superuser_arg(pe_run->def->owner) && !has_privs_of_role(pe_run->def->owner, pe_run->conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner of consumer \"%s\" may no longer use connection \"%s\"", name, pe_run->conn->name),
				 errhint("Grant the consumer's owner membership in the connection's owner role, or recreate the consumer.")));
	pe_run->secrets = pe_connection_secrets(pe_run->conn);

	/*
	 * The target is kept by its number: once it is dropped there is nothing
	 * to retry, so the consumer stops, saying why, instead of restarting
	 * forever on "could not open relation".
	 */
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(pe_run->def->target)))
	{
		char	   *msg = psprintf("stopped: the target table of consumer \"%s\" was dropped", name);

		ereport(LOG,
				(errmsg("pipeline_ext consumer %s/%d %s", name, pe_run->slot, msg),
				 errhint("Drop the consumer, or create it again on a new table.")));
		pe_consumer_record_target_gone(pe_run->def->id, msg);
		MemoryContextSwitchTo(old);
		pe_xact_commit();
		pe_slot_record_error(msg);
		pe_wake_manager(MyDatabaseId);
		proc_exit(0);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* SPI_connect switched to its own context, freed by SPI_finish */
	MemoryContextSwitchTo(TopMemoryContext);
	pe_run->target = pe_target_open(pe_run->def, false);
	pe_slot_prepare_catalog_plans();
	SPI_finish();
	MemoryContextSwitchTo(old);
	pe_xact_commit();

	/* a 4 MB block kept across resets: no page faults for every batch */
	pe_run->batch_cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext batch",
										   4 * 1024 * 1024, 1024 * 1024, 16 * 1024 * 1024);
	pe_run->loop_cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext slot loop",
											 ALLOCSET_DEFAULT_SIZES);

	/* (before the catch-up, which applies batches) */
	CacheRegisterRelcacheCallback(pe_slot_relcache_cb, (Datum) 0);

	old = MemoryContextSwitchTo(TopMemoryContext);
	pe_slot_load_offsets();

	pe_slot_connect();
	if (pe_run->def->group_id)
	{
		rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
		rd_kafka_resp_err_t err;

		pe_slot_discover(true);
		if (pe_run->handoff)
			pe_slot_catch_up();
		rd_kafka_topic_partition_list_add(topics, pe_run->def->topic, RD_KAFKA_PARTITION_UA);
		err = rd_kafka_subscribe(pe_run->rk, topics);
		rd_kafka_topic_partition_list_destroy(topics);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not subscribe to topic \"%s\"", pe_run->def->topic),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	}
	else
		pe_slot_discover(true);
	MemoryContextSwitchTo(old);
	before_shmem_exit(pe_slot_close_kafka, 0);
}

/* The FATAL message the worker ends with, for pe_slot_exit to keep. */
static char slot_fatal[PE_ERROR_LEN];

static bool slot_fatal_terminated = false;

static emit_log_hook_type prev_emit_log_hook = NULL;

static void
pe_slot_emit_log(ErrorData *edata)
{
	if (edata->elevel >= FATAL && slot_fatal[0] == '\0' && edata->message)
	{
		strlcpy(slot_fatal, edata->message, sizeof(slot_fatal));
		slot_fatal_terminated = (edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN);
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
pe_slot_exit(int code, Datum arg)
{
	int			idx = DatumGetInt32(arg);
	PeSlot	   *s = &pe_shared->slots[idx];

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
	{
		/*
		 * FATAL exits do not unwind to pe_slot_main's PG_CATCH: a
		 * termination nobody in pipeline_ext asked for (pg_terminate_backend)
		 * is kept as the last error here, and the slot restarts with backoff.
		 */
		if (code != 0 && !s->error_exit && !s->stop_requested)
		{
			strlcpy(s->last_error, slot_fatal[0] ? slot_fatal : "worker exited unexpectedly",
					sizeof(s->last_error));
			s->last_error_at = GetCurrentTimestamp();
			s->error_exit = true;
			s->terminated = slot_fatal_terminated;
		}
		s->pid = 0;
		s->state = s->error_exit ? PE_SLOT_FAILED : PE_SLOT_STOPPED;
		/* the partitions' figures stay, for the manager to keep fresh */
	}
	LWLockRelease(pe_shared->lock);
}

void
pe_slot_record_error(const char *msg)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	strlcpy(s->last_error, msg, sizeof(s->last_error));
	s->last_error_at = GetCurrentTimestamp();
	LWLockRelease(pe_shared->lock);
}


/*
 * The table statistics of what the batches wrote: without them autovacuum
 * never learns of the target's dead rows.  pgstat_report_stat(false) sends
 * them at most once a second, judged by the last commit's time, so an idle
 * worker would hold its last batches' figures back until the next one:
 * once a second has passed since that commit, they are sent anyway.
 */
static void
pe_slot_report_table_stats(void)
{
	if (!pe_run->stats_pending)
		return;
	if (pe_ms_since(pe_run->last_commit_at) < 1000)
	{
		(void) pgstat_report_stat(false);
		return;
	}
	(void) pgstat_report_stat(true);
	pe_run->stats_pending = false;
}

/* Apply a batch, retrying transient errors (after a second) in place. */
PeBatchOutcome
pe_slot_apply_with_retries(rd_kafka_message_t **batch, int *n, size_t *bytes, int64 *ndead, char **stop_error)
{
	PeBatchOutcome outcome = PE_BATCH_DONE;

	while (!pe_slot_try_batch(batch, n, bytes, &outcome, ndead, stop_error))
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		QueryCancelPending = false; /* the retry answers it */
		CHECK_FOR_INTERRUPTS();
	}
	return outcome;
}

/* on_error 'stop' (or max_apply_failures): the consumer stops, saying why. */
void
pe_slot_stop_on_error(const char *stop_error)
{
	char	   *msg = psprintf("stopped on error: %s", stop_error);

	ereport(LOG,
			(errmsg("pipeline_ext consumer %s/%d stopped: %s", pe_run->def->name, pe_run->slot, stop_error)));
	pe_xact_begin();
	pe_consumer_record_error(pe_run->def->id, msg, true);
	pe_xact_commit();
	pe_slot_record_error(msg);
	pe_wake_manager(MyDatabaseId);
	proc_exit(0);
}

/*
 * Keep what the queue gave: batch[n..n + got) without errors (logged),
 * messages of partitions revoked meanwhile and messages already applied,
 * packed after batch[0..n).  Returns the new count; *bytes grows by the
 * kept messages' keys and values.
 */
int
pe_slot_keep(rd_kafka_message_t **batch, int n, ssize_t got, size_t *bytes)
{
	int			w = n;

	for (ssize_t i = 0; i < got; i++)
	{
		rd_kafka_message_t *m = batch[n + i];
		int32		p = m->partition;

		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: %s", pe_run->def->name, pe_run->slot,
								pe_redact(rd_kafka_message_errstr(m), pe_run->secrets))));
			rd_kafka_message_destroy(m);
			continue;
		}
		/*
		 * Revoked meanwhile, or already applied: below the stored offset, or
		 * below where the group resumed the partition.
		 */
		if (p >= pe_run->npart || !pe_run->parts[p].assigned ||
			m->offset < Max(pe_run->parts[p].stored, pe_run->parts[p].floor))
		{
			rd_kafka_message_destroy(m);
			continue;
		}
		batch[w++] = m;
		*bytes += m->len + m->key_len;
	}
	pe_run->batch_n = w;
	return w;
}

/* The slot's main loop: collect a batch, apply it, commit, repeat. */
static void
pe_slot_loop(void)
{
	PeSlot	   *s = &pe_shared->slots[pe_run->slot_index];
	rd_kafka_message_t **batch;
	int			batch_cap;

	batch_cap = pe_run->def->batch_size;
	/* room for the batches a transaction may take in (slot_batch.c) */
	pe_run->batch_room = batch_cap * PE_XACT_MAX_BATCHES;
	batch = MemoryContextAllocHuge(TopMemoryContext, sizeof(rd_kafka_message_t *) * pe_run->batch_room);
	pe_run->batch = batch;

	for (;;)
	{
		int			n = 0;
		size_t		bytes = 0;
		TimestampTz first_at = 0;
		int64		ndead = 0;
		char	   *stop_error = NULL;
		PeBatchOutcome outcome = PE_BATCH_DONE;
		bool		drained = false;	/* the local queue was found empty */
		bool		lingered = false;

		/*
		 * What one turn allocates (log lines, redacted errors, an error's
		 * copy at each retry) goes here and is freed at the next: a worker
		 * runs for months.  What must last switches to TopMemoryContext.
		 */
		MemoryContextSwitchTo(pe_run->loop_cxt);
		MemoryContextReset(pe_run->loop_cxt);

		/*
		 * Collect a batch: wait for a first message, then take what has
		 * arrived, and apply as soon as the local queue is empty (after
		 * pipeline_ext.batch_linger).  Caught up, batches are small and
		 * applied at once; behind, what arrives while one is applied makes
		 * the next one bigger, up to batch_size messages, PE_BATCH_MAX_BYTES
		 * and batch_timeout from its first message.
		 */
		pgstat_report_activity(STATE_IDLE, NULL);
		while (n < batch_cap && bytes < PE_BATCH_MAX_BYTES)
		{
			int			slice = PE_SLICE_MS;
			int			want = batch_cap - n;
			ssize_t		got;

			/*
			 * A cancel aborts the batch being applied (which is then
			 * retried); while collecting there is nothing to cancel.
			 */
			pe_slot_wait_tick();

			pe_slot_report_table_stats();
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (n == 0)
			{
				/* librdkafka waits until it has all it was asked for */
				want = 1;
			}
			else
			{
				int64		left = pe_run->def->batch_timeout_ms - pe_ms_since(first_at);

				if (left <= 0)
					break;
				if (!drained)
					slice = 0;
				else if (!lingered && pe_batch_linger_ms > 0)
				{
					slice = Min(pe_batch_linger_ms, (int) left);
					lingered = true;
				}
				else
					break;
			}
			got = rd_kafka_consume_batch_queue(pe_run->queue, slice, batch + n, want);
			if (n > 0 && got < want)
				drained = true;
			if (got < 0)
			{
				/* the queue failed at once: wait the slice out, do not spin */
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: could not read from the consumer queue: %s",
								pe_run->def->name, pe_run->slot, rd_kafka_err2str(rd_kafka_last_error()))));
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, slice,
								 PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				got = 0;
			}
			{
				int			w = pe_slot_keep(batch, n, got, &bytes);

				if (w > n && first_at == 0)
					first_at = GetCurrentTimestamp();
				n = w;
			}
			pe_slot_drain_logs();
			if (pe_run->rebalance_error[0] != '\0')
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not take the partitions the group \"%s\" gave", pe_run->def->group_id),
						 errdetail("librdkafka: %s", pe_run->rebalance_error),
						 errhint("The worker restarts and joins the group again.")));
			if (pe_run->assignment_changed)
			{
				pe_run->assignment_changed = false;
				pe_slot_publish_partitions();
			}
			if (s->reseeks != pe_run->reseeks)
			{
				/* reset_offsets() moved the stored offsets */
				LWLockAcquire(pe_shared->lock, LW_SHARED);
				pe_run->reseeks = s->reseeks;
				LWLockRelease(pe_shared->lock);
				pe_run->need_reseek = true;
			}
			if (pe_run->need_reseek)
			{
				for (int i = 0; i < n; i++)
					rd_kafka_message_destroy(batch[i]);
				n = 0;
				pe_run->batch_n = 0;
				bytes = 0;
				first_at = 0;
				drained = lingered = false;
				pe_slot_reseek();
			}
			if (n == 0 && pe_ms_since(pe_run->last_watermarks) >= 1000)
			{
				/* idle and caught up: a quiet stream's aggregates close their last windows */
				if (pe_slot_publish_watermarks())
					pe_slot_idle_aggregates();
				pe_run->last_watermarks = GetCurrentTimestamp();
#ifdef __GLIBC__
				/* idle for a while: give back the batch memory kept (mallopt below) */
				if (!pe_run->heap_trimmed && pe_ms_since(pe_run->last_commit_at) >= PE_TRIM_IDLE_MS)
				{
					malloc_trim(0);
					pe_run->heap_trimmed = true;
				}
#endif
			}
			if (pe_ms_since(pe_run->last_discover) >= PE_DISCOVER_MS)
			{
				pe_slot_discover(false);
				if (n == 0)
					continue;
			}
		}
		if (n == 0)
			continue;

		/* a backlog: let the fetchers fill the queue while this is applied */
		if (n >= PE_WAKE_MESSAGES || bytes >= PE_WAKE_BYTES)
			pe_slot_wake_fetchers();

		/* apply it, in one transaction, retrying transient errors */
		pe_slot_note_oldest(batch, n, true);
		elog(DEBUG2, "pipeline_ext consumer %s/%d: batch of %d messages collected in %lld ms",
			 pe_run->def->name, pe_run->slot, n, (long long) pe_ms_since(first_at));
		pe_slot_fetch_schemas(batch, n);
		pe_run->xact_batches = 1;
		outcome = pe_slot_apply_with_retries(batch, &n, &bytes, &ndead, &stop_error);
		if (outcome == PE_BATCH_STOP)
			pe_slot_stop_on_error(stop_error);
		if (outcome == PE_BATCH_CONFLICT && pe_run->group_refused)
		{
			/*
			 * The group refused the batch's offsets (rolled back): its
			 * partitions may be moving.  Each one still held resumes where
			 * the group committed, the batch's start.
			 */
			pe_run->group_refused = false;
			for (int i = 0; i < n; i++)
				rd_kafka_message_destroy(batch[i]);
			pe_run->batch_n = 0;
			pe_run->need_reseek = true;
			pe_run->reseek_from_group = true;
			continue;
		}
		if (outcome == PE_BATCH_CONFLICT)
		{
			ereport(LOG,
					(errmsg("pipeline_ext consumer %s/%d: stored offsets moved (reset_offsets or another slot); seeking to them",
							pe_run->def->name, pe_run->slot)));
			for (int i = 0; i < n; i++)
				rd_kafka_message_destroy(batch[i]);
			pe_run->batch_n = 0;
			pe_slot_reseek();
			continue;
		}

		/* committed: only now does the batch count */
		pe_run->stats_pending = true;
		pe_run->last_commit_at = GetCurrentTimestamp();
		pe_run->heap_trimmed = false;
		pe_slot_record_batch(batch, n, bytes, ndead);
		pe_slot_note_oldest(batch, n, false);
		pe_slot_publish_watermarks();
		pe_run->last_watermarks = GetCurrentTimestamp();

		{
			/*
			 * Waited for in at_least_once (the group holds the offsets);
			 * best effort in exactly_once, but for a group shared between
			 * servers, where the batch committed them before its own
			 * commit (slot_handoff.c).
			 */
			bool		sync = strcmp(pe_run->def->delivery, "at_least_once") == 0;
			rd_kafka_resp_err_t err = pe_run->handoff ? RD_KAFKA_RESP_ERR_NO_ERROR :
				pe_slot_kafka_commit(batch, n, sync);

			if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET && sync)
				ereport(LOG,
						(errmsg("pipeline_ext consumer %s/%d: could not commit offsets to the Kafka group: %s",
								pe_run->def->name, pe_run->slot, rd_kafka_err2str(err))));
		}
		for (int i = 0; i < n; i++)
			rd_kafka_message_destroy(batch[i]);
		pe_run->batch_n = 0;
	}
}

void
pe_slot_main(Datum arg)
{
	int			idx = DatumGetInt32(arg);
	PeWorkerExtra extra;
	PeSlot	   *s = &pe_shared->slots[idx];
	char		activity[NAMEDATALEN + 32];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
#ifdef __GLIBC__

	/*
	 * Each batch's memory is freed at its end and taken again by the next.
	 * glibc gives a free top of the heap larger than its trim threshold
	 * back to the kernel (and serves large blocks with mmap), so each batch
	 * faulted in and zeroed fresh pages: a tenth of a busy slot's time
	 * (bench/profile.sh).  Kept instead, up to what a batch takes, which
	 * batch_size and the decoder bound, and given back with malloc_trim()
	 * once the slot has been idle for PE_TRIM_IDLE_MS.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
#endif

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (s->dboid != extra.dboid || s->incarnation != extra.incarnation || s->state != PE_SLOT_STARTING)
	{
		LWLockRelease(pe_shared->lock);
		proc_exit(0);
	}
	s->pid = MyProcPid;
	s->state = PE_SLOT_RUNNING;
	s->error_exit = false;
	s->terminated = false;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_slot_exit, Int32GetDatum(idx));
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = pe_slot_emit_log;

	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);
	pe_pin_search_path();

	pe_run = MemoryContextAllocZero(TopMemoryContext, sizeof(PeSlotRun));
	pe_run->slot_index = idx;
	pe_run->reseeks = s->reseeks;

	PG_TRY();
	{
		pe_slot_init();
		snprintf(activity, sizeof(activity), "pipeline_ext consumer %s/%d", pe_run->def->name, pe_run->slot);
		pgstat_report_appname(activity);
		pe_slot_loop();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		edata = CopyErrorData();
		MemoryContextSwitchTo(old);
		if (edata->sqlerrcode != ERRCODE_ADMIN_SHUTDOWN)
		{
			LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
			strlcpy(s->last_error, edata->message, sizeof(s->last_error));
			s->last_error_at = GetCurrentTimestamp();
			s->error_exit = true;
			LWLockRelease(pe_shared->lock);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
}

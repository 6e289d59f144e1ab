/*-------------------------------------------------------------------------
 *
 * relay.c
 *	  The outbox relay: one background worker per database (started by its
 *	  manager once the outbox has been used there) that publishes the committed
 *	  rows of pipeline.outbox exactly once, with a transactional producer
 *	  per connection.
 *
 *	  Reading.  Rows are read by snapshot, never "ids above the last one":
 *	  an epoch is a snapshot, and its rows (those whose transaction it sees
 *	  as committed) are taken in id order, a round at a time; rows of
 *	  transactions that commit later wait for the next epoch.  So a
 *	  transaction that commits after a later-numbered one is never
 *	  skipped.  A round goes out in commit order (outbox_commits.c), so
 *	  per key the order is the commit order: across epochs by the
 *	  snapshots, within a round by the commit times, and across the cut of
 *	  an epoch larger than a round by taking into the round the rest of
 *	  the transactions that committed before its last
 *	  (pe_relay_round_complete).
 *
 *	  One round, one Kafka transaction:
 *	    1. PostgreSQL: the round's rows are chosen and recorded (the
 *	       round's number and its ids, outbox_relay.pending); commit.
 *	    2. Kafka: begin; the rows, each with its outbox id in a header;
 *	       then the checkpoint, a message (key: the transactional.id,
 *	       value: the round) in the checkpoint topic; commit.
 *	    3. PostgreSQL: the round's rows are removed, pending cleared.
 *	  Killed between 2 and 3, the relay finds the round pending when it
 *	  starts again, and reads the checkpoint topic (read_committed): the
 *	  round went out if its checkpoint did, in the same Kafka transaction.
 *	  Then its rows are removed; else the round is sent again.  A new
 *	  producer with the same transactional.id fences an old one and
 *	  aborts what it left open, so consumers in read_committed see each
 *	  message once.
 *
 *	  Refusals.  A message the client or the broker refuses for good (too
 *	  large, no such topic or partition, not authorized) is moved to
 *	  pipeline.outbox_dead_letter with the reason, in PostgreSQL, before
 *	  the Kafka transaction without it commits; the others go on.  Other
 *	  failures (broker down, timeouts) keep the rows and retry with
 *	  backoff.
 *
 *	  This file: the worker's loop, its rounds, and their PostgreSQL steps
 *	  but the first (which rows make a round: relay_choose.c); the Kafka
 *	  side is relay_kafka.c, the figures relay_stats.c.
 *
 * IDENTIFICATION
 *	  src/relay.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "connection.h"
#include "kafka.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

#define PE_RELAY_NAP_MS 1000

int			pe_outbox_round_max = 50000;
int			pe_outbox_round_kb = 65536;
int			pe_outbox_linger_ms = 50;
int			pe_relay_db = -1;		/* its entry in pe_shared->dbs */
static List *relay_conns = NIL;	/* PeRelayConn, TopMemoryContext */
static Oid	pe_relay_catalog = InvalidOid;	/* pipeline.outbox_relay, in the transactional.id */

/*
 * The relay's statements, each prepared once and kept (a round runs six to
 * eight of them; parsing and planning each every round was most of the
 * relay's CPU).  Keyed by their text, which for the round's query depends
 * on two settings: a reload that changes them adds a plan, and the oldest
 * ones go past PE_RELAY_PLANS_MAX.  The argument types are part of the
 * key, so that a text run with other types is prepared for them.
 */
#define PE_RELAY_PLAN_ARGS 4

typedef struct PeRelayPlan
{
	char	   *sql;
	int			nargs;
	Oid			types[PE_RELAY_PLAN_ARGS];
	SPIPlanPtr	plan;
} PeRelayPlan;

#define PE_RELAY_PLANS_MAX 32
static List *pe_relay_plans = NIL;	/* PeRelayPlan, TopMemoryContext */

void
pe_spi_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expect)
{
	SPIPlanPtr	plan = NULL;
	ListCell   *lc;
	int			rc;

	foreach(lc, pe_relay_plans)
	{
		PeRelayPlan *p = lfirst(lc);

		if (p->nargs == nargs && strcmp(p->sql, sql) == 0 &&
			(nargs == 0 || memcmp(p->types, types, sizeof(Oid) * nargs) == 0))
		{
			plan = p->plan;
			break;
		}
	}
	if (plan == NULL)
	{
		MemoryContext old;
		PeRelayPlan *p;

		if (nargs > PE_RELAY_PLAN_ARGS)
			elog(ERROR, "outbox relay: \"%s\" takes more than %d arguments", sql, PE_RELAY_PLAN_ARGS);
		plan = SPI_prepare(sql, nargs, types);
		if (plan == NULL)
			elog(ERROR, "outbox relay: could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		if (list_length(pe_relay_plans) >= PE_RELAY_PLANS_MAX)
		{
			PeRelayPlan *oldest = linitial(pe_relay_plans);

			SPI_freeplan(oldest->plan);
			pfree(oldest->sql);
			pfree(oldest);
			pe_relay_plans = list_delete_first(pe_relay_plans);
		}
		old = MemoryContextSwitchTo(TopMemoryContext);
		p = palloc(sizeof(PeRelayPlan));
		p->sql = pstrdup(sql);
		p->nargs = nargs;
		if (nargs > 0)
			memcpy(p->types, types, sizeof(Oid) * nargs);
		p->plan = plan;
		pe_relay_plans = lappend(pe_relay_plans, p);
		MemoryContextSwitchTo(old);
	}
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	if (rc != expect)
		elog(ERROR, "outbox relay: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * Move the round's refused messages to the dead letters, out of the
 * outbox and out of the pending round.  Committed before the Kafka
 * transaction without them is, so that a crash in between cannot count
 * them as sent.
 */
void
pe_relay_bury(PeRelayConn *c, PeOutMsg *msgs, int n)
{
	Oid			types[3] = {TEXTOID, INT8ARRAYOID, TEXTARRAYOID};
	Datum		values[3];
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *why = palloc(sizeof(Datum) * n);
	int			k = 0;
	MemoryContext back;

	for (int i = 0; i < n; i++)
		if (msgs[i].dead && !msgs[i].buried)
		{
			ids[k] = Int64GetDatum(msgs[i].id);
			why[k] = CStringGetTextDatum(pe_redact(msgs[i].dead, c->secrets));
			msgs[i].buried = true;
			k++;
		}
	if (k == 0)
		return;
	back = CurrentMemoryContext;
	values[0] = CStringGetTextDatum(c->name);
	values[1] = PointerGetDatum(construct_array(ids, k, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(why, k, TEXTOID, -1, false, TYPALIGN_INT));

	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pe_spi_exec("WITH gone AS (DELETE FROM pipeline.outbox o "
				"USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS d(id, error) "
				"WHERE o.id = d.id AND o.connection = $1 "
				"RETURNING o.id, o.connection, o.topic, o.\"partition\", o.key, o.value, o.headers, "
				"o.sent_at, o.sent_by, d.error) "
				"INSERT INTO pipeline.outbox_dead_letter (id, connection, topic, \"partition\", key, value, "
				"headers, sent_at, sent_by, error) SELECT * FROM gone",
				3, types, values, NULL, SPI_OK_INSERT);
	pe_spi_exec("UPDATE pipeline.outbox_relay SET dead_letters = dead_letters + "
				"pg_catalog.cardinality($2::pg_catalog.int8[]), "
				"pending = pending - (SELECT pg_catalog.range_agg(pg_catalog.int8range(i, i, '[]')) "
				"FROM pg_catalog.unnest($2::pg_catalog.int8[]) i) WHERE connection = $1",
				2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	pe_xact_commit();
	MemoryContextSwitchTo(back);
}

/*
 * A message goes out only for a role that may use its connection as the
 * connection is now (the connection's owner, a member of the owner's
 * role, a superuser), as send() and capture_changes() checked: one whose
 * right was revoked since, or whose connection was dropped and made again
 * by another role, is marked refused with the reason (and then buried, not
 * sent with credentials that are no longer its sender's).  So is one for
 * the relays' checkpoint topic, where it could pass for a checkpoint, and
 * one whose sender no longer exists (a dropped role: the captures and
 * connections it owned stay, as nothing records them as its).
 * Returns how many were marked.
 */
static int
pe_relay_check_senders(PeRelayConn *c, PeOutMsg *msgs, int n)
{
	MemoryContext back = CurrentMemoryContext;
	PeConnection *conn;
	Oid			ok_for = InvalidOid;
	int			marked = 0;

	pe_xact_begin();
	conn = pe_connection_lookup(c->name, true);
	for (int i = 0; conn == NULL && i < n; i++)
		if (!msgs[i].dead)
		{
			/* dropped since the producer was made: its messages cannot go anywhere */
			msgs[i].dead = MemoryContextStrdup(back, psprintf("connection \"%s\" does not exist", c->name));
			marked++;
		}
	for (int i = 0; conn && i < n; i++)
	{
		const char *who;

		if (msgs[i].dead)
			continue;
		if (pe_outbox_checkpoint_topic && strcmp(msgs[i].topic, pe_outbox_checkpoint_topic) == 0)
		{
			/* (send() refuses it; a capture made before the setting changed may not) */
			msgs[i].dead = MemoryContextStrdup(back,
											   psprintf("topic \"%s\" is where the outbox relays keep their checkpoints",
														msgs[i].topic));
			marked++;
			continue;
		}
		if (msgs[i].sent_by == ok_for)
			continue;
		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(msgs[i].sent_by)))
		{
			/* (its connection may be the dropped role's too: no one may use it for that role) */
			msgs[i].dead = MemoryContextStrdup(back,
											   psprintf("role %u, which sent it, no longer exists", msgs[i].sent_by));
			marked++;
			continue;
		}
		if (has_privs_of_role(msgs[i].sent_by, conn->owner))
		{
			ok_for = msgs[i].sent_by;	/* (a round's messages are mostly one role's) */
			continue;
		}
		who = GetUserNameFromId(msgs[i].sent_by, true);
		msgs[i].dead = MemoryContextStrdup(back,
										   psprintf("role %s%s%s, which sent it, may not use connection \"%s\" (owned by %s): "
													"its right was revoked, or the connection was dropped and made again by another role",
													who ? "\"" : "", who ? who : psprintf("%u", msgs[i].sent_by), who ? "\"" : "",
													c->name, GetUserNameFromId(conn->owner, true) ? GetUserNameFromId(conn->owner, true) : "unknown"));
		marked++;
	}
	pe_xact_commit();
	MemoryContextSwitchTo(back);
	return marked;
}

/* Step 3: the round is in Kafka; its rows go. */
static void
pe_relay_settle(PeRelayConn *c, int nsent)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2];

	MemoryContext back = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(c->name);
	values[1] = Int64GetDatum(nsent);
	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pe_spi_exec("DELETE FROM pipeline.outbox WHERE connection = $1 "
				"AND id >= (SELECT pg_catalog.lower(pending) FROM pipeline.outbox_relay WHERE connection = $1) "
				"AND id < (SELECT pg_catalog.upper(pending) FROM pipeline.outbox_relay WHERE connection = $1) "
				"AND id <@ (SELECT pending FROM pipeline.outbox_relay WHERE connection = $1)",
				1, types, values, NULL, SPI_OK_DELETE);
	pe_spi_exec("UPDATE pipeline.outbox_relay SET pending = NULL, published = published + $2 "
				"WHERE connection = $1", 2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();

	/*
	 * No need to wait for this commit's WAL flush: a settle lost in a crash
	 * leaves the round pending, and the restarted relay finds the round's
	 * checkpoint in Kafka and settles it again without sending.  The next
	 * round's pending mark commits synchronously, flushing this one too.
	 */
	(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	pe_xact_commit();
	MemoryContextSwitchTo(back);
}

/*
 * One round through a connection.  Returns the number of messages it
 * settled (sent or dead), 0 when there was nothing, -1 on a failure.
 */
static int
pe_relay_round(PeRelayConn *c, MemoryContext cxt)
{
	PeOutMsg   *msgs;
	int			n;
	bool		was_pending;
	int64		round;
	MemoryContext old = MemoryContextSwitchTo(cxt);
	int			result = -1;

	round = pe_relay_choose(c, &msgs, &n, &was_pending);
	if (round == 0)
	{
		MemoryContextSwitchTo(old);
		return 0;
	}
	if (!pe_relay_producer(c))
	{
		if (c->gone)
		{
			/* the connection is gone: its messages cannot go anywhere */
			for (int i = 0; i < n; i++)
				msgs[i].dead = psprintf("connection \"%s\" does not exist", c->name);
			pe_relay_bury(c, msgs, n);
			pe_relay_note_published(msgs, n, n);
			result = n;
		}
		MemoryContextSwitchTo(old);
		return result;
	}

	if (was_pending && !c->checked)
	{
		/* found pending at start: did it go out before the relay stopped? */
		uint64		fp = 0;
		bool		has_fp = false;
		int64		committed = pe_relay_committed_round(c, &fp, &has_fp);

		if (committed == -2)
		{
			MemoryContextSwitchTo(old);
			return -1;
		}
		c->checked = true;

		/*
		 * It went out if the last checkpoint is this very round: its number
		 * and its ids.  (Only a checkpoint written before fingerprints is
		 * judged by its number alone, as it was then.)
		 */
		if (has_fp ? committed == round && fp == pe_relay_fingerprint(msgs, n) : committed >= round)
		{
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": round " INT64_FORMAT " was committed to Kafka before the relay stopped; its %d messages are not sent again",
							c->name, round, n)));
			pe_relay_settle(c, n);
			pe_relay_note_published(msgs, n, 0);
			MemoryContextSwitchTo(old);
			return n;
		}
		if (committed < 0)
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": round " INT64_FORMAT " was not committed to Kafka before the relay stopped (no checkpoint of this relay); its %d messages are sent again",
							c->name, round, n)));
		else
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": round " INT64_FORMAT " was not committed to Kafka before the relay stopped (the last checkpoint is of round " INT64_FORMAT "%s); its %d messages are sent again",
							c->name, round, committed, committed == round ? ", with other messages" : "", n)));
	}
	c->checked = true;

	/*
	 * (Only now: a round found already in Kafka above went out as it was,
	 * whatever its senders may do since.)
	 */
	if (pe_relay_check_senders(c, msgs, n) > 0)
		pe_relay_bury(c, msgs, n);

	for (;;)
	{
		bool		refused;
		int			ndead = 0;
		int			nsent = 0;

		pgstat_report_activity(STATE_RUNNING, "publishing outbox messages");
		if (pe_relay_send(c, round, msgs, n, !was_pending, &refused))
		{
			for (int i = 0; i < n; i++)
				if (msgs[i].dead)
					ndead++;
			nsent = n - ndead;
			pe_relay_settle(c, nsent);
			pe_relay_note_published(msgs, n, ndead);
			c->backoff_ms = 0;
			c->retry_at = 0;
			result = n;
			break;
		}
		if (!refused)
			break;				/* a failure: noted, backing off */
		/* some were refused and buried: the others again, at once */
		for (int i = 0; i < n; i++)
		{
			msgs[i].reported = false;
			msgs[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
		}
		if (c->fatal)
			break;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	pe_relay_forget_round();
	MemoryContextSwitchTo(old);
	return result;
}

static PeRelayConn *
pe_relay_conn(const char *name)
{
	ListCell   *lc;
	PeRelayConn *c;
	MemoryContext old;

	foreach(lc, relay_conns)
	{
		c = lfirst(lc);
		if (strcmp(c->name, name) == 0)
			return c;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc0(sizeof(PeRelayConn));
	c->name = pstrdup(name);
	/*
	 * Stable for this outbox, new for another: a dropped and created
	 * extension starts its rounds at 0 again, and must not read an old
	 * outbox's checkpoints as its own.
	 */
	c->txn_id = psprintf("pipeline_ext-outbox-" UINT64_FORMAT "-%u-%u-%s",
						 GetSystemIdentifier(), MyDatabaseId, pe_relay_catalog, name);
	relay_conns = lappend(relay_conns, c);
	MemoryContextSwitchTo(old);
	return c;
}

/* The connections that have rows or a pending round. */
static List *
pe_relay_connections(void)
{
	List	   *names = NIL;
	MemoryContext back = CurrentMemoryContext;

	pe_xact_begin();
	if (!OidIsValid(pe_relay_catalog))
		pe_relay_catalog = get_relname_relid("outbox_relay", get_namespace_oid(PE_SCHEMA, false));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* the outbox's connections, one index probe each (a loose index scan) */
	pe_spi_exec("WITH RECURSIVE c AS ("
				"(SELECT connection FROM pipeline.outbox ORDER BY connection LIMIT 1) UNION ALL "
				"SELECT (SELECT o.connection FROM pipeline.outbox o WHERE o.connection > c.connection "
				"ORDER BY o.connection LIMIT 1) FROM c WHERE c.connection IS NOT NULL) "
				"SELECT connection FROM c WHERE connection IS NOT NULL "
				"UNION SELECT connection FROM pipeline.outbox_relay WHERE pending IS NOT NULL",
				0, NULL, NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	pe_xact_commit();
	MemoryContextSwitchTo(back);
	return names;
}

void
pe_relay_main(Datum arg)
{
	PeWorkerExtra extra;
	MemoryContext cxt;
	List	   *names = NIL;	/* connection names, TopMemoryContext */
	TimestampTz discovered_at = 0;
	bool		was_busy = false;

	pe_relay_db = DatumGetInt32(arg);
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	if (pe_shared->dbs[pe_relay_db].dboid != extra.dboid || pe_shared->dbs[pe_relay_db].relay.pid != 0)
	{
		LWLockRelease(pe_shared->lock);
		pe_relay_db = -1;
		proc_exit(0);
	}
	pe_shared->dbs[pe_relay_db].relay.pid = MyProcPid;
	pe_shared->dbs[pe_relay_db].relay.latch = MyLatch;
	LWLockRelease(pe_shared->lock);
	before_shmem_exit(pe_relay_exit, 0);

	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);
	pe_pin_search_path();

	/*
	 * The relay's commits are synchronous whatever the database's or the
	 * server's synchronous_commit: the commit that records a round as
	 * pending must be durable before its messages leave, and flushing it
	 * also flushes the commits of the transactions that sent them (they
	 * come before it in the WAL), so that no message is published for a
	 * transaction that a crash then loses.
	 */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Its statements are small and run over and over, but their estimates
	 * can pass jit_above_cost (an outbox whose statistics lag a burst):
	 * compiling them took more CPU than the rest of the relay, on the
	 * cores the applications that send are using.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every query of the relay reads a few thousand rows of one connection
	 * in id order from the outbox's primary key; a table whose statistics
	 * lag its bursts (a million rows since the last ANALYZE) must not turn
	 * that into a bitmap scan and a sort of everything that waits.
	 */
	SetConfigOption("enable_bitmapscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname("pipeline_ext outbox relay");
	cxt = AllocSetContextCreate(TopMemoryContext, "pipeline_ext relay round", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		ListCell   *lc;
		bool		busy = false;
		bool		partial = false;
		long		nap = PE_RELAY_NAP_MS;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		ResetLatch(MyLatch);

		/*
		 * Which connections have messages: looked up when the last loop
		 * found nothing to do, and once a second; in between (a backlog
		 * being drained) the same ones again, since the look-up wades
		 * through the index entries of rows just deleted.
		 */
		if (!was_busy || pe_ms_since(discovered_at) >= PE_RELAY_NAP_MS)
		{
			list_free_deep(names);
			names = pe_relay_connections();
			discovered_at = GetCurrentTimestamp();
		}
		foreach(lc, names)
		{
			PeRelayConn *c = pe_relay_conn(lfirst(lc));
			int			done;

			if (c->retry_at != 0 && GetCurrentTimestamp() < c->retry_at)
			{
				nap = Min(nap, Max(1, (c->retry_at - GetCurrentTimestamp()) / 1000));
				continue;
			}
			MemoryContextReset(cxt);
			done = pe_relay_round(c, cxt);
			if (done > 0)
				busy = true;
			if (done > 0 && done < pe_outbox_round_max)
				partial = true;
			else if (done < 0)
				nap = Min(nap, c->backoff_ms);
		}
		was_busy = busy;
		(void) pgstat_report_stat(false);

		if (busy && partial && pe_outbox_linger_ms > 0)
		{
			/*
			 * Caught up: let the next round gather what commits meanwhile
			 * (commits set the latch, which this wait ignores), rather than
			 * a Kafka transaction per application commit.
			 */
			(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, pe_outbox_linger_ms, PG_WAIT_EXTENSION);
			continue;
		}
		if (busy)
			continue;
		/*
		 * Idle: a send() wakes it at its commit, a COMMIT PREPARED too
		 * (pipeline_ext.c); rows that come otherwise (a restore) are seen
		 * within a nap.
		 */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
	}
}

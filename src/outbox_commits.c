/*-------------------------------------------------------------------------
 *
 * outbox_commits.c
 *	  When the transactions that wrote into the outbox committed: a table
 *	  in shared memory, filled by the writers' own commit, that the relay
 *	  reads to publish a round in commit order and to measure its latency
 *	  from COMMIT (not from send()).
 *
 *	  Outbox ids are drawn at send(), so two transactions that write the
 *	  same key without the database ordering them (no row lock between
 *	  them) can commit in the other order than their ids.  The commit time
 *	  is what orders them: a writer that waits for another's lock commits
 *	  after it, and so gets a later commit time.
 *
 *	  Each entry is made at PRE_COMMIT, before the transaction becomes
 *	  visible, with no time yet; the COMMIT callback writes the time (the
 *	  commit record's, GetCurrentTransactionStopTimestamp()).  A relay that
 *	  sees the rows of a transaction whose entry has no time yet is looking
 *	  at the instants between ProcArrayEndTransaction() and the callback,
 *	  and waits for it.  An abort after PRE_COMMIT (a serialization failure)
 *	  removes the entry.
 *
 *	  A prepared transaction commits in the session that runs COMMIT
 *	  PREPARED: pipeline_ext's utility hook makes its entry there, in a
 *	  database where the extension is installed, before the command, and
 *	  gives it the time the command began once it has succeeded (a time
 *	  before the commit, and so before that of any writer that waited for
 *	  the prepared transaction's locks).
 *
 *	  The table keeps the last PE_COMMITS_KEPT entries, the oldest going
 *	  first, and is lost with shared memory at a restart.  A transaction
 *	  not found there committed before every transaction found (it is
 *	  older, or from before the restart), so an unknown time sorts first.
 *	  ("Commit time" is the commit record's timestamp, taken just before
 *	  the record is written; two transactions that commit within the same
 *	  instants may become visible in the other order.  Writers ordered by
 *	  a lock are not: the second commits after the first has ended.)
 *
 *	  Locking: commits_lock (the second LWLock of the "pipeline_ext"
 *	  tranche), exclusive to add, fill or remove an entry, shared to look
 *	  one up.
 *
 * IDENTIFICATION
 *	  src/outbox_commits.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"

#include "relay.h"

#define PE_COMMITS_KEPT 65536

typedef struct PeCommit
{
	FullTransactionId fxid;		/* hash key: the top-level transaction */
	TimestampTz at;				/* 0: committing, time not written yet */
	int64		max_id;			/* the highest outbox id it wrote (PG_INT64_MAX: unknown) */
	Oid			dbid;			/* its database (outbox ids are per database) */
} PeCommit;

typedef struct PeCommitRing
{
	LWLock	   *lock;
	uint64		next;			/* entries made so far; next % KEPT is the oldest */
	FullTransactionId order[PE_COMMITS_KEPT];
} PeCommitRing;

static PeCommitRing *pe_commit_ring = NULL;
static HTAB *pe_commits = NULL;

/* this backend's entry, made at PRE_COMMIT */
static FullTransactionId pe_commit_mine = {0};

Size
pe_commits_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(PeCommitRing)),
					hash_estimate_size(PE_COMMITS_KEPT, sizeof(PeCommit)));
}

/* At shared memory start-up, under AddinShmemInitLock. */
void
pe_commits_shmem_init(LWLock *lock)
{
	HASHCTL		info;
	bool		found;

	pe_commit_ring = ShmemInitStruct("pipeline_ext outbox commits order", sizeof(PeCommitRing), &found);
	if (!found)
	{
		pe_commit_ring->lock = lock;
		pe_commit_ring->next = 0;
	}
	info.keysize = sizeof(FullTransactionId);
	info.entrysize = sizeof(PeCommit);
	pe_commits = ShmemInitHash("pipeline_ext outbox commits", PE_COMMITS_KEPT, PE_COMMITS_KEPT,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/*
 * PRE_COMMIT of a transaction that wrote into the outbox: its entry,
 * without a time.  Nothing here may fail after the entry is made
 * (an abort must find it to remove it).
 */
static void
pe_commits_begin_for(FullTransactionId fxid, int64 max_id)
{
	PeCommit   *e;
	bool		found;
	uint64		slot;

	if (pe_commit_ring == NULL || !FullTransactionIdIsValid(fxid))
		return;
	LWLockAcquire(pe_commit_ring->lock, LW_EXCLUSIVE);
	if (hash_search(pe_commits, &fxid, HASH_FIND, NULL) != NULL)
	{
		/* another session's (two COMMIT PREPARED of one gid): theirs to fill */
		LWLockRelease(pe_commit_ring->lock);
		return;
	}
	slot = pe_commit_ring->next++ % PE_COMMITS_KEPT;
	if (pe_commit_ring->next > PE_COMMITS_KEPT)
		hash_search(pe_commits, &pe_commit_ring->order[slot], HASH_REMOVE, NULL);
	pe_commit_ring->order[slot] = fxid;
	e = hash_search(pe_commits, &fxid, HASH_ENTER_NULL, &found);
	if (e)
	{
		e->at = 0;
		e->max_id = max_id;
		e->dbid = MyDatabaseId;	/* COMMIT PREPARED runs in the prepared one's */
	}
	LWLockRelease(pe_commit_ring->lock);
	if (e)
		pe_commit_mine = fxid;
}

void
pe_commits_begin(int64 max_id)
{
	pe_commits_begin_for(GetTopFullTransactionIdIfAny(), max_id);
}

/*
 * Before COMMIT PREPARED gid, in a database where pipeline_ext is
 * installed (else false, and nothing is done): the entry of the prepared
 * transaction that it commits, if there is one by that name.
 */
bool
pe_commits_begin_prepared(const char *gid)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	TransactionId xid = InvalidTransactionId;
	bool		isnull;

	if (pe_commit_ring == NULL || !OidIsValid(get_extension_oid("pipeline_ext", true)))
		return false;
	values[0] = CStringGetTextDatum(gid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_with_args("SELECT transaction FROM pg_catalog.pg_prepared_xact() "
							  "WHERE gid OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			xid = DatumGetTransactionId(d);
	}
	SPI_finish();
	PopActiveSnapshot();
	if (TransactionIdIsNormal(xid))
	{
		/* its full id: the epoch of the next xid, or the one before */
		FullTransactionId next = ReadNextFullTransactionId();
		uint32		epoch = EpochFromFullTransactionId(next);

		if (xid > XidFromFullTransactionId(next))
			epoch--;
		pe_commits_begin_for(FullTransactionIdFromEpochAndXid(epoch, xid), PG_INT64_MAX);
	}
	return true;
}

/* The entry made by this session gets its commit time. */
void
pe_commits_committed_at(TimestampTz at)
{
	PeCommit   *e;

	if (!FullTransactionIdIsValid(pe_commit_mine))
		return;
	LWLockAcquire(pe_commit_ring->lock, LW_EXCLUSIVE);
	e = hash_search(pe_commits, &pe_commit_mine, HASH_FIND, NULL);
	if (e)
		e->at = Max(at, 1);
	LWLockRelease(pe_commit_ring->lock);
	pe_commit_mine = InvalidFullTransactionId;
}

/* COMMIT: the commit record's time. */
void
pe_commits_committed(void)
{
	if (FullTransactionIdIsValid(pe_commit_mine))
		pe_commits_committed_at(GetCurrentTransactionStopTimestamp());
}

/* ABORT after PRE_COMMIT, or a COMMIT PREPARED that failed: no commit. */
void
pe_commits_forget(void)
{
	if (!FullTransactionIdIsValid(pe_commit_mine))
		return;
	LWLockAcquire(pe_commit_ring->lock, LW_EXCLUSIVE);
	hash_search(pe_commits, &pe_commit_mine, HASH_REMOVE, NULL);
	LWLockRelease(pe_commit_ring->lock);
	pe_commit_mine = InvalidFullTransactionId;
}

/*
 * The commit times of m[from..n) (committed_at; 0 if unknown), messages of
 * transactions the caller's snapshot sees as committed: one look-up per
 * run of messages of one transaction, under one hold of the lock per try.
 * An entry without its time yet is of a transaction between becoming
 * visible and its COMMIT callback: its messages are tried again after a
 * moment (up to a second; then unknown).
 */
void
pe_commits_times(PeOutMsg *m, int from, int n)
{
	for (int tries = 0;; tries++)
	{
		FullTransactionId last = InvalidFullTransactionId;
		TimestampTz at = 0;
		bool		waiting = false;

		LWLockAcquire(pe_commit_ring->lock, LW_SHARED);
		for (int i = from; i < n; i++)
		{
			if (tries > 0 && m[i].committed_at != -1)
				continue;		/* settled on an earlier try */
			if (!FullTransactionIdEquals(m[i].xid, last))
			{
				PeCommit   *e = hash_search(pe_commits, &m[i].xid, HASH_FIND, NULL);

				last = m[i].xid;
				at = e ? e->at : 0;
				if (e && at == 0)
					at = tries < 1000 ? -1 : 0;	/* -1: try again */
			}
			m[i].committed_at = at;
			waiting |= (at == -1);
		}
		LWLockRelease(pe_commit_ring->lock);
		if (!waiting)
			return;
		pg_usleep(1000L);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * The transactions of this database that committed before `before` and
 * wrote an outbox id above `above` (at most room of them, into xids;
 * -1 if there are more), and *upto the highest id they wrote.  The relay asks this of a round
 * cut from an epoch larger than a round, to add to it the rest of the
 * transactions that committed before its last.
 */
int
pe_commits_before(TimestampTz before, int64 above, FullTransactionId *xids, int room, int64 *upto)
{
	HASH_SEQ_STATUS seq;
	PeCommit   *e;
	int			n = 0;

	*upto = above;
	LWLockAcquire(pe_commit_ring->lock, LW_SHARED);
	hash_seq_init(&seq, pe_commits);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		/*
		 * Of this database; a commit time before (not the same: that would
		 * take the rest of the round's last transaction too, which may come
		 * in later rounds; so two transactions of one key with the same
		 * microsecond on both sides of a cut keep id order); ids above the
		 * cut.  Not a prepared transaction
		 * (its highest id is unknown: id order), nor one whose time is
		 * still being written (the next round has it).
		 */
		if (e->dbid != MyDatabaseId || e->at <= 0 || e->at >= before ||
			e->max_id <= above || e->max_id == PG_INT64_MAX)
			continue;
		if (n == room)
		{
			hash_seq_term(&seq);
			n = -1;
			break;
		}
		xids[n++] = e->fxid;
		*upto = Max(*upto, e->max_id);
	}
	LWLockRelease(pe_commit_ring->lock);
	return n;
}

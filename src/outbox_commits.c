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
 *	  The table keeps the last PE_COMMITS_KEPT entries, the oldest going
 *	  first, and is lost with shared memory at a restart.  A transaction
 *	  not found there (older, committed before a restart, or prepared and
 *	  committed by COMMIT PREPARED) takes its time from
 *	  track_commit_timestamp when that is on; else its time is unknown, and
 *	  unknown sorts first: it committed before every transaction found.
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

#include "access/commit_ts.h"
#include "access/transam.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"

#include "relay.h"

#define PE_COMMITS_KEPT 65536

typedef struct PeCommit
{
	FullTransactionId fxid;		/* hash key: the top-level transaction */
	TimestampTz at;				/* 0: committing, time not written yet */
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
							   &info, HASH_ELEM | HASH_BLOBS);
}

/*
 * PRE_COMMIT of a transaction that wrote into the outbox: its entry,
 * without a time.  Nothing here may fail after the entry is made
 * (an abort must find it to remove it).
 */
void
pe_commits_begin(void)
{
	FullTransactionId fxid = GetTopFullTransactionIdIfAny();
	PeCommit   *e;
	bool		found;
	uint64		slot;

	if (pe_commit_ring == NULL || !FullTransactionIdIsValid(fxid))
		return;
	LWLockAcquire(pe_commit_ring->lock, LW_EXCLUSIVE);
	slot = pe_commit_ring->next++ % PE_COMMITS_KEPT;
	if (pe_commit_ring->next > PE_COMMITS_KEPT)
		hash_search(pe_commits, &pe_commit_ring->order[slot], HASH_REMOVE, NULL);
	pe_commit_ring->order[slot] = fxid;
	e = hash_search(pe_commits, &fxid, HASH_ENTER_NULL, &found);
	if (e)
		e->at = 0;
	LWLockRelease(pe_commit_ring->lock);
	if (e)
		pe_commit_mine = fxid;
}

/* COMMIT: the entry gets the commit record's time. */
void
pe_commits_committed(void)
{
	PeCommit   *e;
	TimestampTz at;

	if (!FullTransactionIdIsValid(pe_commit_mine))
		return;
	at = GetCurrentTransactionStopTimestamp();
	LWLockAcquire(pe_commit_ring->lock, LW_EXCLUSIVE);
	e = hash_search(pe_commits, &pe_commit_mine, HASH_FIND, NULL);
	if (e)
		e->at = Max(at, 1);
	LWLockRelease(pe_commit_ring->lock);
	pe_commit_mine = InvalidFullTransactionId;
}

/* ABORT or PREPARE after PRE_COMMIT: no commit to tell of here. */
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
 * The commit time of fxid, a transaction the caller's snapshot sees as
 * committed; 0 if unknown.
 */
TimestampTz
pe_commits_lookup(FullTransactionId fxid)
{
	for (int tries = 0;; tries++)
	{
		PeCommit   *e;
		TimestampTz at = -1;

		LWLockAcquire(pe_commit_ring->lock, LW_SHARED);
		e = hash_search(pe_commits, &fxid, HASH_FIND, NULL);
		if (e)
			at = e->at;
		LWLockRelease(pe_commit_ring->lock);
		if (at > 0)
			return at;
		if (at == 0 && tries < 1000)
		{
			/* committed and visible, its callback still to come: a moment */
			pg_usleep(1000L);
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		break;
	}

	/*
	 * Not kept here: the commit timestamp, if the server tracks it, for an
	 * xid of this cluster's last 2^31 (restored rows carry other clusters'
	 * xids; commit_ts itself refuses those outside what it keeps).
	 */
	if (track_commit_timestamp)
	{
		uint64		next = U64FromFullTransactionId(ReadNextFullTransactionId());
		uint64		mine = U64FromFullTransactionId(fxid);
		TimestampTz ts;

		if (mine < next && next - mine < ((uint64) 1 << 31) &&
			TransactionIdIsNormal(XidFromFullTransactionId(fxid)) &&
			TransactionIdGetCommitTsData(XidFromFullTransactionId(fxid), &ts, NULL))
			return ts;
	}
	return 0;
}

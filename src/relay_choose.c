/*-------------------------------------------------------------------------
 *
 * relay_choose.c
 *	  The outbox relay's first step: which rows make the next round.  The
 *	  round found pending (after a crash), or the next rows of the epoch
 *	  (a snapshot: the rows of the transactions it sees as committed), cut
 *	  by id and bounded in messages and bytes, completed across the cut
 *	  with the rest of the transactions that committed before its last,
 *	  and put into commit order (outbox_commits.c); recorded as pending in
 *	  pipeline.outbox_relay before anything is sent.  See relay.c for the
 *	  whole round.
 *
 * IDENTIFICATION
 *	  src/relay_choose.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/xid8.h"

#include "relay.h"
#include "workers.h"

/*
 * The order a round goes out in.  Ids are drawn at send(), and a
 * transaction can commit after another that drew later ids, so: commit
 * time (outbox_commits.c), an unknown one (0) first; then, for a known
 * time, the transaction, so that two of the same time do not mix; then id.
 */
static int
pe_relay_cmp_commit(const void *a, const void *b)
{
	const PeOutMsg *x = a;
	const PeOutMsg *y = b;

	if (x->committed_at != y->committed_at)
		return x->committed_at < y->committed_at ? -1 : 1;
	/* unknown times: id order, as committed before anything known */
	if (x->committed_at != 0 && !FullTransactionIdEquals(x->xid, y->xid))
		return FullTransactionIdPrecedes(x->xid, y->xid) ? -1 : 1;
	return x->id < y->id ? -1 : (x->id > y->id ? 1 : 0);
}

/*
 * The relay's query of a window of outbox rows: those of connection $1
 * that filter keeps, in id order, at most limit of them, and of those the
 * ones that bound keeps (on x.len, a row's bytes of key and value, and
 * x.run, the bytes up to it); with got, how many the limit let through.
 */
static char *
pe_relay_window_sql(const char *filter, int limit, const char *bound)
{
	return psprintf("SELECT id, topic, \"partition\", key, value, headers, sent_at, xid, sent_by, got FROM ("
					"SELECT w.*, pg_catalog.sum(w.len) OVER (ORDER BY w.id) AS run, "
					"pg_catalog.count(*) OVER () AS got FROM ("
					"SELECT o.*, pg_catalog.octet_length(COALESCE(o.key, '\\x'::pg_catalog.bytea)) "
					"+ pg_catalog.octet_length(COALESCE(o.value, '\\x'::pg_catalog.bytea)) AS len "
					"FROM pipeline.outbox o WHERE connection = $1 AND %s "
					"ORDER BY id LIMIT %d) w) x WHERE %s ORDER BY id",
					filter, limit, bound);
}

/* An outbox row, as the relay's queries list its columns, into *m. */
static void
pe_relay_read_msg(HeapTuple tup, TupleDesc desc, PeOutMsg *m)
{
	Datum		d;
	bool		isnull;

	m->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	m->topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	d = SPI_getbinval(tup, desc, 3, &isnull);
	m->partition = isnull ? RD_KAFKA_PARTITION_UA : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	m->key = isnull ? NULL : DatumGetByteaPCopy(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	m->value = isnull ? NULL : DatumGetByteaPCopy(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	m->headers = isnull ? NULL : DatumGetJsonbPCopy(d);
	m->sent_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));
	m->xid = DatumGetFullTransactionId(SPI_getbinval(tup, desc, 8, &isnull));
	m->sent_by = DatumGetObjectId(SPI_getbinval(tup, desc, 9, &isnull));
}

/*
 * A round cut at id `cut` from an epoch larger than a round: add the
 * epoch's rows above the cut of the transactions that committed before
 * the round's last commit.  Without them, two transactions of one key
 * whose ids are in the other order than their commits could fall on both
 * sides of the cut and go out in id order.  So a round can hold up to
 * twice outbox_round_max messages and outbox_round_bytes.  (Left in id
 * order: more than a round's worth of such rows, more than PE_ROUND_EARLY
 * such transactions, prepared transactions, and those whose time is not
 * known, see pe_commits_before.)  Returns the round's new size; *msgs
 * grows in cxt.
 */
#define PE_ROUND_EARLY 1024

static int
pe_relay_round_complete(Datum conn, PeOutMsg **msgs, int n, int64 cut, MemoryContext cxt)
{
	PeOutMsg   *m = *msgs;
	TimestampTz last = 0;
	FullTransactionId xids[PE_ROUND_EARLY];
	Datum		xd[PE_ROUND_EARLY];
	int			k;
	int64		upto;
	Oid			types[4] = {TEXTOID, INT8OID, INT8OID, XID8ARRAYOID};
	Datum		values[4];
	int			more;
	bool		isnull;
	MemoryContext old;

	for (int i = 0; i < n; i++)
		last = Max(last, m[i].committed_at);
	if (last == 0)
		return n;
	k = pe_commits_before(last, cut, xids, PE_ROUND_EARLY, &upto);
	if (k <= 0)
		return n;
	for (int i = 0; i < k; i++)
		xd[i] = FullTransactionIdGetDatum(xids[i]);
	values[0] = conn;
	values[1] = Int64GetDatum(cut);
	values[2] = Int64GetDatum(upto);
	values[3] = PointerGetDatum(construct_array(xd, k, XID8OID, sizeof(FullTransactionId), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	/* as the round's own query: bounded in messages and in bytes */
	pe_spi_exec(pe_relay_window_sql("id > $2 AND id <= $3 AND xid OPERATOR(pg_catalog.=) ANY ($4) "
									"AND pg_catalog.pg_visible_in_snapshot(xid, "
									"(SELECT epoch FROM pipeline.outbox_relay WHERE connection = $1))",
									pe_outbox_round_max + 1,
									psprintf("x.run <= %ld", (long) pe_outbox_round_kb * 1024)),
				4, types, values, NULL, SPI_OK_SELECT);
	more = SPI_processed;
	if (more == 0 || more > pe_outbox_round_max ||
		more < DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 10, &isnull)))
		return n;				/* more than a round's worth: left in id order */
	old = MemoryContextSwitchTo(cxt);
	m = palloc0(sizeof(PeOutMsg) * (n + more));
	memcpy(m, *msgs, sizeof(PeOutMsg) * n);
	for (int i = 0; i < more; i++)
		pe_relay_read_msg(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &m[n + i]);
	MemoryContextSwitchTo(old);
	pe_commits_times(m, n, n + more);
	*msgs = m;
	return n + more;
}

/*
 * Step 1: the round to send, from the pending one or the epoch's next rows
 * (msgs palloc'd in the current context).  Returns its number, 0 if there
 * is nothing to send; *was_pending tells a round found pending.
 */
int64
pe_relay_choose(PeRelayConn *c, PeOutMsg **msgs, int *n, bool *was_pending)
{
	Oid			t1[1] = {TEXTOID};
	Datum		v1[1];
	int64		round;
	bool		isnull;
	bool		pending;
	bool		have_epoch;
	MemoryContext cxt = CurrentMemoryContext;
	const char *cols = "SELECT id, topic, \"partition\", key, value, headers, sent_at, xid, sent_by FROM pipeline.outbox ";

	*n = 0;
	*msgs = NULL;
	pe_xact_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	v1[0] = CStringGetTextDatum(c->name);
	pe_spi_exec("INSERT INTO pipeline.outbox_relay (connection) VALUES ($1) ON CONFLICT DO NOTHING",
				1, t1, v1, NULL, SPI_OK_INSERT);
	pe_spi_exec("SELECT round, pending IS NOT NULL, epoch IS NOT NULL FROM pipeline.outbox_relay "
				"WHERE connection = $1 FOR UPDATE", 1, t1, v1, NULL, SPI_OK_SELECT);
	round = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pending = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	have_epoch = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	*was_pending = pending;

	if (pending)
		pe_spi_exec(psprintf("%s WHERE connection = $1 "
							 "AND id >= (SELECT pg_catalog.lower(pending) FROM pipeline.outbox_relay WHERE connection = $1) "
							 "AND id < (SELECT pg_catalog.upper(pending) FROM pipeline.outbox_relay WHERE connection = $1) "
							 "AND id <@ (SELECT pending FROM pipeline.outbox_relay WHERE connection = $1) ORDER BY id", cols),
					1, t1, v1, NULL, SPI_OK_SELECT);
	else
	{
		/*
		 * Within an epoch, rows are read in id order: those at or below the
		 * last round's cut are gone (so an index scan does not wade through
		 * the dead rows of the epoch's earlier rounds; those a round took
		 * above its cut are passed over).  Across epochs there is no such
		 * bound.
		 */
		char	   *next = pe_relay_window_sql("id > COALESCE((SELECT epoch_after FROM pipeline.outbox_relay WHERE connection = $1), 0) "
											   "AND (pg_catalog.pg_visible_in_snapshot(xid, "
											   "(SELECT epoch FROM pipeline.outbox_relay WHERE connection = $1)) "
		/*
		 * an xid this cluster has not reached yet: no transaction here
		 * wrote it, so it is a row that pg_restore brought from another
		 * cluster, committed there
		 */
											   "OR xid OPERATOR(pg_catalog.>=) "
											   "(SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())))",
											   pe_outbox_round_max,
		/* the round's bytes bounded too: rows that start below the bound */
											   psprintf("x.run - x.len < %ld", (long) pe_outbox_round_kb * 1024));

		if (have_epoch)
			pe_spi_exec(next, 1, t1, v1, NULL, SPI_OK_SELECT);
		if (!have_epoch || SPI_processed == 0)
		{
			/* a new epoch: what is committed as of now */
			pe_spi_exec("UPDATE pipeline.outbox_relay SET epoch = pg_catalog.pg_current_snapshot(), "
						"epoch_after = NULL WHERE connection = $1", 1, t1, v1, NULL, SPI_OK_UPDATE);
			pe_spi_exec(next, 1, t1, v1, NULL, SPI_OK_SELECT);
		}
	}

	if (SPI_processed > 0)
	{
		int			count = SPI_processed;
		SPITupleTable *tt = SPI_tuptable;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		PeOutMsg   *m = palloc0(sizeof(PeOutMsg) * count);
		Datum	   *idd;
		int64		got = pending ? count :
			DatumGetInt64(SPI_getbinval(tt->vals[0], tt->tupdesc, 10, &isnull));
		bool		drained = got < pe_outbox_round_max && count == got;
		int64		cut;

		for (int i = 0; i < count; i++)
			pe_relay_read_msg(tt->vals[i], tt->tupdesc, &m[i]);
		cut = m[count - 1].id;	/* read in id order */
		MemoryContextSwitchTo(old);
		SPI_freetuptable(tt);	/* copied: its memory goes before more is read */
		pe_commits_times(m, 0, count);
		if (!pending && !drained)
			count = pe_relay_round_complete(v1[0], &m, count, cut, cxt);
		qsort(m, count, sizeof(PeOutMsg), pe_relay_cmp_commit);
		*msgs = m;
		*n = count;
		if (!pending)
		{
			Oid			t4[4] = {TEXTOID, INT8ARRAYOID, BOOLOID, INT8OID};
			Datum		v4[4];

			idd = palloc(sizeof(Datum) * count);
			for (int i = 0; i < count; i++)
				idd[i] = Int64GetDatum(m[i].id);
			v4[0] = v1[0];
			v4[1] = PointerGetDatum(construct_array(idd, count, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			/* fewer than a round's worth, and all of them taken: the epoch is drained */
			v4[2] = BoolGetDatum(drained);
			/* the next round of the epoch starts above the rows read in id order */
			v4[3] = Int64GetDatum(cut);
			pe_spi_exec("UPDATE pipeline.outbox_relay SET round = round + 1, "
						"pending = (SELECT pg_catalog.range_agg(pg_catalog.int8range(i, i, '[]')) "
						"FROM pg_catalog.unnest($2) i), "
						"epoch = CASE WHEN $3 THEN NULL ELSE epoch END, "
						"epoch_after = CASE WHEN $3 THEN NULL ELSE $4 END "
						"WHERE connection = $1",
						4, t4, v4, NULL, SPI_OK_UPDATE);
			round++;
		}
	}
	else if (pending)
	{
		/* its rows are gone (the extension's tables were changed by hand?) */
		pe_spi_exec("UPDATE pipeline.outbox_relay SET pending = NULL WHERE connection = $1",
					1, t1, v1, NULL, SPI_OK_UPDATE);
	}
	SPI_finish();
	pe_xact_commit();
	MemoryContextSwitchTo(cxt);		/* the commit left TopMemoryContext current */
	return *n > 0 ? round : 0;
}

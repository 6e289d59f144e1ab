/*-------------------------------------------------------------------------
 *
 * relay_stats.c
 *	  The outbox relay's figures in shared memory (its pid and latch, rounds,
 *	  failures with the last error, rate, commit-to-acknowledged latency),
 *	  written by the relay after each round, and pipeline._relay_stats()
 *	  that reads them.
 *
 * IDENTIFICATION
 *	  src/relay_stats.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "kafka.h"
#include "relay.h"
#include "shmem.h"

#define PE_RELAY_BACKOFF_MAX_MS 30000
#define PE_RELAY_RATE_WINDOW_SECS 10

PG_FUNCTION_INFO_V1(pe_relay_stats);
PG_FUNCTION_INFO_V1(pe_relay_error_connection);

PeRelay *
pe_relay_shared(void)
{
	return &pe_shared->dbs[pe_relay_db].relay;
}

void
pe_relay_exit(int code, Datum arg)
{
	PeRelay    *r;

	(void) arg;
	if (pe_relay_db < 0)
		return;
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	if (r->pid == MyProcPid)
	{
		r->pid = 0;
		r->latch = NULL;
		if (code != 0)
		{
			int			f = Min(r->failures, 5);

			r->failures++;
			r->restart_at = GetCurrentTimestamp() + (int64) (1000 << f) * 1000;
		}
		else
			r->failures = 0;
	}
	LWLockRelease(pe_shared->lock);
}

void
pe_relay_note_error(PeRelayConn *c, const char *fmt,...)
{
	va_list		ap;
	StringInfoData buf;
	char	   *text;
	PeRelay    *r;

	/* whole, then redacted, then cut (in last_error): see pe_redact_into() */
	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(ap, fmt);
		needed = appendStringInfoVA(&buf, fmt, ap);
		va_end(ap);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	text = pe_redact(buf.data, c->secrets);
	ereport(LOG,
			(errmsg("pipeline_ext outbox relay, connection \"%s\": %s", c->name, text)));
	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	r->round_failures++;
	snprintf(r->last_error, sizeof(r->last_error), "connection \"%s\": %s", c->name, text);
	strlcpy(r->last_error_conn, c->name, sizeof(r->last_error_conn));
	r->last_error_at = GetCurrentTimestamp();
	LWLockRelease(pe_shared->lock);

	/* back off: 100 ms, doubling, at most PE_RELAY_BACKOFF_MAX_MS */
	c->backoff_ms = c->backoff_ms == 0 ? 100 : Min(c->backoff_ms * 2, PE_RELAY_BACKOFF_MAX_MS);
	c->retry_at = GetCurrentTimestamp() + (int64) c->backoff_ms * 1000;
}

/*
 * After a round went out: counters, rate, and commit-to-acknowledged
 * latency (from send() for a message whose commit time is unknown).
 */
void
pe_relay_note_published(PeOutMsg *msgs, int n, int ndead)
{
	TimestampTz now = GetCurrentTimestamp();
	PeRelay    *r;
	PeHistogram *h;
	int			ok = 0;

	LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
	r = pe_relay_shared();
	if (r->window_start == 0)
		r->window_start = now;
	if (now - r->window_start >= (int64) PE_RELAY_RATE_WINDOW_SECS * USECS_PER_SEC)
	{
		r->rate = (double) r->window_msgs * USECS_PER_SEC / (now - r->window_start);
		r->window_start = now;
		r->window_msgs = 0;
	}
	if (r->latency_since == 0 || now - r->latency_since >= (int64) PE_LATENCY_WINDOW_SECS * USECS_PER_SEC)
	{
		r->latency_cur = 1 - r->latency_cur;
		pe_hist_init(&r->latency[r->latency_cur]);
		r->latency_since = now;
	}
	h = &r->latency[r->latency_cur];
	for (int i = 0; i < n; i++)
		if (msgs[i].dead == NULL)
		{
			pe_hist_add(h, Max(now - (msgs[i].committed_at > 0 ? msgs[i].committed_at : msgs[i].sent_at), 0));
			ok++;
		}
	r->published += ok;
	r->window_msgs += ok;
	r->dead_letters += ndead;
	r->rounds++;
	if (ok > 0)
		r->last_publish_at = now;
	LWLockRelease(pe_shared->lock);
}


/* pipeline._relay_stats(): the relay of the current database. */
Datum
pe_relay_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[13];
	bool		nulls[13];
	PeRelay		r;
	bool		found = false;
	uint64		total;
	double		p;

	pe_require_preload();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, true, sizeof(nulls));
	memset(&r, 0, sizeof(r));
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid == MyDatabaseId)
		{
			r = pe_shared->dbs[i].relay;
			found = true;
		}
	LWLockRelease(pe_shared->lock);

	if (found && r.pid != 0)
	{
		values[0] = Int32GetDatum(r.pid);
		nulls[0] = false;
	}
	values[1] = BoolGetDatum(found && r.pid != 0);
	nulls[1] = false;
	values[2] = Int64GetDatum(r.published);
	values[3] = Int64GetDatum(r.rounds);
	values[4] = Int64GetDatum(r.round_failures);
	values[5] = Int64GetDatum(r.dead_letters);
	nulls[2] = nulls[3] = nulls[4] = nulls[5] = false;
	if (r.last_error[0])
	{
		values[6] = CStringGetTextDatum(r.last_error);
		values[7] = TimestampTzGetDatum(r.last_error_at);
		nulls[6] = nulls[7] = false;
	}
	if (r.last_publish_at)
	{
		values[8] = TimestampTzGetDatum(r.last_publish_at);
		nulls[8] = false;
	}
	/*
	 * The rate of the last window of PE_RELAY_RATE_WINDOW_SECS, closed by
	 * the first round after it ran its length.  A window that ran longer
	 * without a round to close it holds only what was published in its
	 * first seconds: what it holds over its time, and 0 once it is two
	 * windows old (nothing was published for at least one), not the rate
	 * of the busy window before, forever.
	 */
	{
		TimestampTz now = GetCurrentTimestamp();
		int64		w = (int64) PE_RELAY_RATE_WINDOW_SECS * USECS_PER_SEC;
		double		rate = r.rate;

		if (r.window_start != 0 && now - r.window_start >= 2 * w)
			rate = 0;
		else if (r.window_start != 0 && now - r.window_start >= w)
			rate = (double) r.window_msgs * USECS_PER_SEC / (now - r.window_start);
		values[9] = Float8GetDatum(rate);
		nulls[9] = false;
	}
	p = pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.5, &total);
	if (total > 0)
	{
		values[10] = Float8GetDatum(p);
		values[11] = Float8GetDatum(pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.95, &total));
		values[12] = Float8GetDatum(pe_hist_percentile_ms(&r.latency[r.latency_cur], 0.99, &total));
		nulls[10] = nulls[11] = nulls[12] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * pipeline._relay_error_connection(): the connection the relay's last
 * error is about (outbox_status shows the error on that connection's row
 * only), NULL if none.
 */
Datum
pe_relay_error_connection(PG_FUNCTION_ARGS)
{
	char		name[NAMEDATALEN] = "";

	pe_require_preload();
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid == MyDatabaseId)
			strlcpy(name, pe_shared->dbs[i].relay.last_error_conn, sizeof(name));
	LWLockRelease(pe_shared->lock);
	if (name[0] == '\0')
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(name));
}

/*-------------------------------------------------------------------------
 *
 * slot_handoff.c
 *	  Several servers sharing a topic through one consumer group, exactly
 *	  once.  A slot of an exactly_once consumer in a group commits each
 *	  batch's offsets to the group inside the batch's transaction, before
 *	  PostgreSQL's commit; a group that refuses them (the partitions are
 *	  moving) rolls the batch back, and the partition's next owner applies
 *	  it.  So the group's offset is never behind what any server applied,
 *	  and the next owner of a partition resumes there without a duplicate.
 *
 *	  What is left is a crash between the two commits: the group took the
 *	  batch ("claimed" it for this server), PostgreSQL did not.  Each commit
 *	  carries its claim, "who FROM" (its range ends at the committed offset),
 *	  and the claims of the partition's previous owners that it found when
 *	  it took the partition over, "who FROM-TO", the newest eight.  A slot
 *	  looks for claims of its own server that its database does not hold (its
 *	  stored offset is still before the claim's end, and not past its start)
 *	  at its start, before it joins the group, and applies exactly those
 *	  ranges again, whoever owns the partition by then.  The claim is found
 *	  as long as fewer than PE_HANDOFF_CARRIED other servers took the
 *	  partition over meanwhile.
 *
 * IDENTIFICATION
 *	  src/slot_handoff.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "slot.h"
#include "workers.h"

#define PE_HANDOFF_TAG "pipeline_ext/1"
#define PE_HANDOFF_CARRIED 8		/* previous owners' claims kept */
#define PE_HANDOFF_MAX_CLAIMS (PE_HANDOFF_CARRIED + 1)

typedef struct PeClaim
{
	char		who[64];		/* SYSTEMID/DBOID/CONSUMERID */
	int64		from;
	int64		to;				/* exclusive */
	int64		base;			/* the claimer's stored offset then (-1: none) */
} PeClaim;

/* "SYSTEMID/DBOID/CONSUMERID": this server's database and consumer. */
static const char *
pe_handoff_identity(void)
{
	if (pe_run->handoff_identity == NULL)
		pe_run->handoff_identity =
			MemoryContextStrdup(TopMemoryContext,
								psprintf(UINT64_FORMAT "/%u/" INT64_FORMAT,
										 GetSystemIdentifier(), MyDatabaseId, pe_run->def->id));
	return pe_run->handoff_identity;
}

/*
 * One claim, "WHO:FROM@BASE" (the committer's: it ends at the committed
 * offset) or "WHO:FROM-TO@BASE" (carried).
 */
static bool
pe_handoff_parse_claim(char *tok, bool first, int64 committed, PeClaim *c)
{
	char	   *colon = strrchr(tok, ':');
	char	   *at = strrchr(tok, '@');
	char	   *end;

	if (colon == NULL || at == NULL || at < colon || colon - tok >= (int) sizeof(c->who))
		return false;
	memcpy(c->who, tok, colon - tok);
	c->who[colon - tok] = '\0';
	errno = 0;
	c->from = strtoll(colon + 1, &end, 10);
	if (errno != 0 || end == colon + 1 || c->from < 0)
		return false;
	if (first && end == at)
		c->to = committed;
	else if (!first && *end == '-')
	{
		char	   *dash = end;

		c->to = strtoll(dash + 1, &end, 10);
		if (errno != 0 || end == dash + 1 || end != at)
			return false;
	}
	else
		return false;
	c->base = strtoll(at + 1, &end, 10);
	return errno == 0 && end != at + 1 && *end == '\0' && c->base >= -1 && c->to > c->from;
}

/*
 * The claims in a committed offset's metadata, the committer's first.
 * None when the metadata is not ours (another client committed) or cannot
 * be read.
 */
static int
pe_handoff_parse(const rd_kafka_topic_partition_t *tp, PeClaim *claims)
{
	char	   *buf;
	char	   *tok;
	char	   *save = NULL;
	int			n = 0;

	if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR || tp->offset < 0 ||
		tp->metadata == NULL || tp->metadata_size == 0 || tp->metadata_size > 4096)
		return 0;
	buf = palloc(tp->metadata_size + 1);
	memcpy(buf, tp->metadata, tp->metadata_size);
	buf[tp->metadata_size] = '\0';
	tok = strtok_r(buf, " ", &save);
	if (tok != NULL && strcmp(tok, PE_HANDOFF_TAG) == 0)
		while ((tok = strtok_r(NULL, " ", &save)) != NULL && n < PE_HANDOFF_MAX_CLAIMS &&
			   pe_handoff_parse_claim(tok, n == 0, tp->offset, &claims[n]))
			n++;
	pfree(buf);
	return n;
}

/*
 * Whether a claim is this server's and its database does not hold all of
 * it: the stored offset is still at least the one the claiming batch
 * started from, and before its end.  (A slot of this server may have
 * applied part of it again already: what is left is still owed.)
 */
static bool
pe_handoff_owed(const PeClaim *c, int32 p)
{
	int64		stored = pe_run->parts[p].stored;

	return strcmp(c->who, pe_handoff_identity()) == 0 &&
		stored >= c->base && stored < c->to;
}

/* Where what is owed of a claim starts. */
static int64
pe_handoff_owed_from(const PeClaim *c, int32 p)
{
	int64		stored = pe_run->parts[p].stored;

	return stored == c->base ? c->from : stored;
}

static void
pe_handoff_log_owed(int32 p, const PeClaim *c)
{
	ereport(LOG,
			(errmsg("pipeline_ext consumer %s/%d: partition %d: applying offsets " INT64_FORMAT " to " INT64_FORMAT
					" again; group \"%s\" took their commit, PostgreSQL did not",
					pe_run->def->name, pe_run->slot, p, c->from, c->to - 1, pe_run->def->group_id)));
}

/* The metadata of a batch's group commit for one partition. */
void
pe_slot_handoff_metadata(rd_kafka_topic_partition_t *tp, int64 from)
{
	char	   *carried = tp->partition < pe_run->npart ? pe_run->parts[tp->partition].carried : NULL;
	int64		base = tp->partition < pe_run->npart ? pe_run->parts[tp->partition].claim_base : -1;
	char	   *md = psprintf(PE_HANDOFF_TAG " %s:" INT64_FORMAT "@" INT64_FORMAT "%s",
							  pe_handoff_identity(), from, base, carried ? carried : "");

	if (tp->metadata)
		free(tp->metadata);
	/* librdkafka frees it with the list */
	tp->metadata = strdup(md);
	tp->metadata_size = tp->metadata ? strlen(md) : 0;
	pfree(md);
}

/*
 * A partition given to this slot by the group, with what the group
 * committed for it: the claims of other servers to carry in this slot's
 * commits, and where to resume.  That is the committed offset (and never
 * before this server's stored one), or, when the last commit was this
 * server's own claim that its database does not hold, the claim's start.
 * A claim of its own further back (a crash, while another server committed
 * since) needs the exact range read again: the worker restarts for that.
 */
int64
pe_slot_handoff_assigned(const rd_kafka_topic_partition_t *tp)
{
	int32		p = tp->partition;
	PeClaim		claims[PE_HANDOFF_MAX_CLAIMS];
	int			n = pe_handoff_parse(tp, claims);
	int64		committed = tp->err == RD_KAFKA_RESP_ERR_NO_ERROR ? tp->offset : -1;
	StringInfoData carried;
	int			kept = 0;

	initStringInfo(&carried);
	for (int i = 0; i < n && kept < PE_HANDOFF_CARRIED; i++)
	{
		bool		seen = strcmp(claims[i].who, pe_handoff_identity()) == 0;

		for (int j = 0; j < i && !seen; j++)
			seen = strcmp(claims[j].who, claims[i].who) == 0;
		if (seen)
			continue;
		appendStringInfo(&carried, " %s:" INT64_FORMAT "-" INT64_FORMAT "@" INT64_FORMAT,
						 claims[i].who, claims[i].from, claims[i].to, claims[i].base);
		kept++;
	}
	if (pe_run->parts[p].carried)
		pfree(pe_run->parts[p].carried);
	pe_run->parts[p].carried = kept > 0 ? MemoryContextStrdup(TopMemoryContext, carried.data) : NULL;
	pfree(carried.data);

	if (n > 0 && pe_handoff_owed(&claims[0], p))
	{
		pe_handoff_log_owed(p, &claims[0]);
		return pe_handoff_owed_from(&claims[0], p);
	}

	/*
	 * reset_offsets() since this server's last batch of the partition:
	 * the stored offset, if the group's last commit is this server's (or
	 * there is none); after another server's, what it applied stands.
	 */
	if (pe_run->parts[p].reset && pe_run->parts[p].stored >= 0 &&
		(n == 0 || strcmp(claims[0].who, pe_handoff_identity()) == 0))
		return pe_run->parts[p].stored;
	for (int i = 1; i < n; i++)
		if (pe_handoff_owed(&claims[i], p))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %d of topic \"%s\": group \"%s\" took offsets " INT64_FORMAT " to " INT64_FORMAT
							" from this server, and its database does not hold them",
							p, pe_run->def->topic, pe_run->def->group_id, claims[i].from, claims[i].to - 1),
					 errhint("The worker restarts and applies them before it joins the group again.")));
	return Max(pe_run->parts[p].stored, committed);
}

static bool
pe_slot_catch_up_done(void)
{
	for (int p = 0; p < pe_run->npart; p++)
		if (pe_run->parts[p].catchup_end >= 0)
			return false;
	return true;
}

/* A partition read again is done once its stored offset reaches the end. */
static void
pe_slot_catch_up_check(int32 p, int64 seen)
{
	if (pe_run->parts[p].catchup_end >= 0 &&
		(pe_run->parts[p].stored >= pe_run->parts[p].catchup_end || seen >= pe_run->parts[p].catchup_end))
		pe_run->parts[p].catchup_end = -1;
}

/*
 * At a slot's start, before it joins the group: the ranges the group took
 * from this server that its database does not hold are read again and
 * applied.  Every partition: in a group, any slot may have claimed any of
 * them.  Two slots of the server starting at once may read the same range
 * again; the offsets' fence lets one of them apply it, and the other
 * restarts and finds nothing owed.
 */
void
pe_slot_catch_up(void)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(Max(pe_run->npart, 1));
	rd_kafka_topic_partition_list_t *todo = rd_kafka_topic_partition_list_new(1);
	rd_kafka_message_t **batch;
	rd_kafka_resp_err_t err;
	int			cap = pe_run->def->batch_size;

	for (int p = 0; p < pe_run->npart; p++)
		rd_kafka_topic_partition_list_add(l, pe_run->def->topic, p);
	pe_slot_read_committed(l, true);
	for (int i = 0; i < l->cnt; i++)
	{
		int32		p = l->elems[i].partition;
		PeClaim		claims[PE_HANDOFF_MAX_CLAIMS];
		int			n = pe_handoff_parse(&l->elems[i], claims);

		for (int k = 0; k < n; k++)
		{
			int64		lo,
						hi,
						from;

			if (!pe_handoff_owed(&claims[k], p))
				continue;
			from = pe_handoff_owed_from(&claims[k], p);
			pe_handoff_log_owed(p, &claims[k]);
			err = pe_slot_query_watermarks(p, &lo, &hi, 30000);
			if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not look up the offsets kept in partition %d of topic \"%s\"",
								p, pe_run->def->topic),
						 errdetail("librdkafka: %s", rd_kafka_err2str(err)),
						 errhint("The worker restarts and asks again.")));
			if (lo > from)
			{
				/* retention removed them meanwhile: nothing can bring them back */
				ereport(WARNING,
						(errmsg("pipeline_ext consumer %s/%d: partition %d: offsets " INT64_FORMAT " to " INT64_FORMAT
								" are no longer kept by the broker and cannot be applied",
								pe_run->def->name, pe_run->slot, p, from, Min(lo, claims[k].to) - 1)));
				from = lo;
				if (from >= claims[k].to)
				{
					/* nothing of it is left: the claim is retired */
					pe_slot_store_offset(p, claims[k].to);
					break;
				}
			}
			pe_run->parts[p].catchup_end = claims[k].to;
			pe_run->parts[p].floor = from;
			pe_run->parts[p].assigned = true;
			rd_kafka_topic_partition_list_add(todo, pe_run->def->topic, p)->offset = from;
			break;
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (todo->cnt == 0)
	{
		rd_kafka_topic_partition_list_destroy(todo);
		return;
	}

	err = rd_kafka_assign(pe_run->rk, todo);
	rd_kafka_topic_partition_list_destroy(todo);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not read partitions of topic \"%s\" again", pe_run->def->topic),
				 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	pe_run->catching_up = true;
	batch = palloc(sizeof(rd_kafka_message_t *) * cap);
	while (!pe_slot_catch_up_done())
	{
		ssize_t		got;
		int			n = 0;
		size_t		bytes = 0;
		PeBatchOutcome outcome;
		int64		ndead = 0;
		char	   *stop_error = NULL;

		pe_slot_wait_tick();
		got = rd_kafka_consume_batch_queue(pe_run->queue, PE_WAIT_SLICE_MS, batch, cap);
		if (got < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read from the consumer queue: %s", rd_kafka_err2str(rd_kafka_last_error())),
					 errhint("The worker restarts and reads the partitions again.")));
		for (ssize_t i = 0; i < got; i++)
		{
			rd_kafka_message_t *m = batch[i];
			int32		p = m->partition;

			if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || p >= pe_run->npart || pe_run->parts[p].catchup_end < 0)
			{
				if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
					ereport(LOG,
							(errmsg("pipeline_ext consumer %s/%d: %s", pe_run->def->name, pe_run->slot,
									pe_redact(rd_kafka_message_errstr(m), pe_run->secrets))));
				rd_kafka_message_destroy(m);
				continue;
			}
			if (m->offset >= pe_run->parts[p].floor && m->offset < pe_run->parts[p].catchup_end)
			{
				batch[n++] = m;
				bytes += m->len + m->key_len;
			}
			else
			{
				/* past the range (or the range is gone): nothing more of it comes */
				pe_slot_catch_up_check(p, m->offset);
				rd_kafka_message_destroy(m);
			}
		}
		if (n == 0)
			continue;
		outcome = pe_slot_apply_with_retries(batch, &n, &bytes, &ndead, &stop_error);
		if (outcome == PE_BATCH_STOP)
			pe_slot_stop_on_error(stop_error);
		if (outcome != PE_BATCH_DONE)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the stored offsets moved while offsets group \"%s\" took from this server were applied again",
							pe_run->def->group_id),
					 errhint("The worker restarts and looks again (another slot may have applied them).")));
		pe_slot_record_batch(batch, n, bytes, ndead);
		for (int i = 0; i < n; i++)
		{
			int32		p = batch[i]->partition;

			pe_run->parts[p].stored = Max(pe_run->parts[p].stored, batch[i]->offset + 1);
			pe_slot_catch_up_check(p, batch[i]->offset + 1);
			rd_kafka_message_destroy(batch[i]);
		}
	}
	pfree(batch);
	pe_run->catching_up = false;
	for (int p = 0; p < pe_run->npart; p++)
	{
		pe_run->parts[p].floor = -1;
		pe_run->parts[p].assigned = false;
	}
	err = rd_kafka_assign(pe_run->rk, NULL);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not leave the partitions read again"),
				 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
}

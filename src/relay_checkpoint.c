/*-------------------------------------------------------------------------
 *
 * relay_checkpoint.c
 *	  The outbox relay's checkpoints (see relay.c): the topic they go to,
 *	  created when missing; a round's fingerprint, written with its number
 *	  in the round's Kafka transaction (relay_kafka.c); and, after a
 *	  restart, reading back the last checkpoint this relay committed.
 *
 * IDENTIFICATION
 *	  src/relay_checkpoint.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "kafka.h"
#include "producer.h"
#include "relay.h"
#include "workers.h"

char	   *pe_outbox_checkpoint_topic = NULL;

/*
 * The checkpoint topic, created when missing: one partition, compacted
 * (only each relay's last checkpoint matters), the cluster's replication
 * factor.  A refusal (no CREATE on the cluster) is only logged: the
 * topic may exist, or the first round says what is wrong.
 */
void
pe_relay_checkpoint_topic(PeRelayConn *c)
{
	rd_kafka_NewTopic_t *nt;
	rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
	rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(c->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_event_t *ev;
	char		errstr[256];
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->rk, pe_outbox_checkpoint_topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	bool		exists = false;

	/* there already (the usual case): nothing to ask the cluster */
	if (rkt && rd_kafka_metadata(c->rk, 0, rkt, &md, pe_produce_timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
		exists = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
			md->topics[0].partition_cnt > 0;
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	if (exists)
	{
		rd_kafka_AdminOptions_destroy(opts);
		rd_kafka_queue_destroy(q);
		return;
	}

	nt = rd_kafka_NewTopic_new(pe_outbox_checkpoint_topic, 1, -1, errstr, sizeof(errstr));
	if (nt == NULL)
	{
		ereport(LOG, (errmsg("pipeline_ext outbox relay: checkpoint topic: %s", errstr)));
		rd_kafka_AdminOptions_destroy(opts);
		rd_kafka_queue_destroy(q);
		return;
	}
	(void) rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
	(void) rd_kafka_AdminOptions_set_request_timeout(opts, pe_produce_timeout_ms, errstr, sizeof(errstr));
	rd_kafka_CreateTopics(c->rk, &nt, 1, opts, q);
	ev = rd_kafka_queue_poll(q, pe_produce_timeout_ms + 1000);
	if (ev)
	{
		const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
		size_t		n = 0;
		const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;
		rd_kafka_resp_err_t err = rd_kafka_event_error(ev);

		if (err == RD_KAFKA_RESP_ERR_NO_ERROR && n == 1)
			err = rd_kafka_topic_result_error(tr[0]);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
			ereport(LOG,
					(errmsg("pipeline_ext outbox relay, connection \"%s\": could not create checkpoint topic \"%s\": %s",
							c->name, pe_outbox_checkpoint_topic, rd_kafka_err2str(err)),
					 errhint("Create it (one partition, cleanup.policy=compact), or let the connection's role create topics.")));
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_NewTopic_destroy(nt);
	rd_kafka_AdminOptions_destroy(opts);
	rd_kafka_queue_destroy(q);
}

/*
 * A consumer of the checkpoint topic at this isolation level; NULL (the
 * error noted) when it cannot be made.  assign() needs a group: this one
 * never joins nor commits.
 */
static rd_kafka_t *
pe_relay_checkpoint_reader(PeRelayConn *c, const char *isolation)
{
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	List	   *forced = NIL;
	rd_kafka_t *rk;
	char		errstr[512];
	MemoryContext back = CurrentMemoryContext;

	pe_xact_begin();
	conn = pe_connection_lookup(c->name, false);
	forced = lappend(forced, pe_property("isolation.level", isolation, "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.auto.commit", "false", "pipeline_ext"));
	forced = lappend(forced, pe_property("enable.partition.eof", "true", "pipeline_ext"));
	forced = lappend(forced, pe_property("group.id", psprintf("%s-checkpoint", c->txn_id), "pipeline_ext"));
	conf = pe_kafka_conf(conn, list_make1(pe_property("client.id", "pipeline_ext", "pipeline_ext")), forced);
	pe_xact_commit();
	MemoryContextSwitchTo(back);
	rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		pe_relay_note_error(c, "could not create a consumer for the checkpoint topic: %s", errstr);
	}
	return rk;
}

/*
 * The round's fingerprint: a hash of its message ids (those still in it,
 * whatever their order), written with its checkpoint.  A round number alone can
 * come again (a restore to a point in time, an asynchronous failover:
 * the database's count goes back, the checkpoint topic's does not); the
 * same number with the same ids is the same round.
 */
uint64
pe_relay_fingerprint(const PeOutMsg *msgs, int n)
{
	uint64		fp = 0;

	/* a sum of the ids' hashes: the same whatever the order they are in */
	for (int i = 0; i < n; i++)
		if (msgs[i].dead == NULL)
			fp += hash_bytes_extended((const unsigned char *) &msgs[i].id, sizeof(int64), 0) + 1;
	return fp;
}

/*
 * The last checkpoint this relay committed through the connection (the
 * newest by offset), from the checkpoint topic (read_committed: an aborted
 * round's checkpoint is not seen): its round, and *fp its fingerprint
 * (*has_fp false for a checkpoint written before fingerprints).  -1 if
 * none; -2 if it could not be read.
 */
int64
pe_relay_committed_round(PeRelayConn *c, uint64 *fp, bool *has_fp)
{
	rd_kafka_t *rk;
	rd_kafka_t *plain;
	int64		low,
				high,
				stable,
				found = -1;
	int64		window = 1000;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_partition_list_t *parts;
	size_t		idlen = strlen(c->txn_id);
	TimestampTz wait_until;

	if ((rk = pe_relay_checkpoint_reader(c, "read_committed")) == NULL)
		return -2;
	if ((plain = pe_relay_checkpoint_reader(c, "read_uncommitted")) == NULL)
	{
		rd_kafka_destroy(rk);
		return -2;
	}

	/*
	 * Every checkpoint this relay committed lies below the log's end as it
	 * is now.  A read_committed reader stops at the last stable offset,
	 * which an open transaction of another database's relay (sharing the
	 * topic) holds back: wait until it has passed the end, or a checkpoint
	 * behind it would be missed and a committed round sent again.
	 */
	err = rd_kafka_query_watermark_offsets(plain, pe_outbox_checkpoint_topic, 0, &low, &high,
										   pe_produce_timeout_ms);
	rd_kafka_destroy(plain);
	wait_until = GetCurrentTimestamp() + (int64) pe_produce_timeout_ms * 1000;
	while (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		err = rd_kafka_query_watermark_offsets(rk, pe_outbox_checkpoint_topic, 0, &low, &stable,
											   pe_produce_timeout_ms);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR || stable >= high)
			break;
		if (GetCurrentTimestamp() > wait_until)
		{
			rd_kafka_destroy(rk);
			pe_relay_note_error(c, "checkpoint topic \"%s\" has a transaction open at offset " INT64_FORMAT
								" (its end is " INT64_FORMAT "): waiting for it to end before reading the checkpoint",
								pe_outbox_checkpoint_topic, stable, high);
			return -2;
		}
		CHECK_FOR_INTERRUPTS();
		pg_usleep(100 * 1000L);
	}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_destroy(rk);
		pe_relay_note_error(c, "could not read checkpoint topic \"%s\": %s",
							pe_outbox_checkpoint_topic, rd_kafka_err2str(err));
		return -2;
	}

	/* the newest first: windows back from the end until ours shows up */
	parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, pe_outbox_checkpoint_topic, 0);
	for (int64 end = high; found < 0 && end > low; window *= 10)
	{
		int64		start = Max(low, end - window);
		TimestampTz deadline = GetCurrentTimestamp() + (int64) pe_produce_timeout_ms * 1000;

		parts->elems[0].offset = start;
		if ((err = rd_kafka_assign(rk, parts)) != RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		for (;;)
		{
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);

			CHECK_FOR_INTERRUPTS();
			if (m == NULL)
			{
				if (GetCurrentTimestamp() > deadline)
				{
					err = RD_KAFKA_RESP_ERR__TIMED_OUT;
					break;
				}
				continue;
			}
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			{
				rd_kafka_message_destroy(m);
				break;
			}
			if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				err = m->err;
				rd_kafka_message_destroy(m);
				break;
			}
			if (m->offset < end && m->key_len == idlen && memcmp(m->key, c->txn_id, idlen) == 0 &&
				m->payload != NULL)
			{
				char	   *v = pnstrdup(m->payload, m->len);
				char	   *rest;

				/* "round" or "round fingerprint"; offsets rise within a window */
				found = strtoll(v, &rest, 10);
				*has_fp = (*rest == ' ');
				*fp = *has_fp ? strtoull(rest + 1, NULL, 16) : 0;
			}
			if (m->offset >= end - 1)
			{
				rd_kafka_message_destroy(m);
				break;
			}
			rd_kafka_message_destroy(m);
		}
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		end = start;
	}
	rd_kafka_topic_partition_list_destroy(parts);
	rd_kafka_destroy(rk);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		pe_relay_note_error(c, "could not read checkpoint topic \"%s\": %s",
							pe_outbox_checkpoint_topic, rd_kafka_err2str(err));
		return -2;
	}
	return found;
}

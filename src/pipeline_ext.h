/*-------------------------------------------------------------------------
 *
 * pipeline_ext.h
 *	  What every file of pipeline_ext shares: the schema name, the GUCs,
 *	  and Kafka's clock.  Each subsystem has its own header beside it.
 *
 *	  Processes (workers.h):
 *	    postmaster ── launcher.c ── one manager.c per database with consumers
 *	                                  │     or an outbox
 *	                                  ├── probe.c: lag of stopped consumers
 *	                                  ├── one slot.c worker per consumer slot
 *	                                  └── relay.c: the outbox relay
 *	                                        (relay_kafka.c, relay_stats.c)
 *	    backends: connection.c, produce.c, outbox.c, consumer_api.c,
 *	              offsets_api.c, deadletter_api.c, stats.c (SQL functions
 *	              and views)
 *
 *	  A message's way through a slot (datapath.h):
 *	    slot.c          poll a batch from librdkafka (slot_assign.c: which
 *	                    partitions, from which offsets)
 *	    slot_batch.c    the batch in one transaction, retried when transient
 *	                    (appending with aggregates, behind: the next
 *	                    batches' rows too, then aggregates and offsets)
 *	    batch.c         the steps below in this order; a replay of dead
 *	                    letters (deadletter_api.c) too
 *	      decode.c      message → row, through the format's decoder:
 *	                    decode_json.c, decode_csv.c, decode_raw.c,
 *	                    decode_avro.c (avro_schemas.c: writer schemas
 *	                    from registry.c, fetched by slot_batch.c before
 *	                    the transaction; avro_values.c: values into
 *	                    columns; decode_avro_flat.c: flat records in one
 *	                    pass; avro_check.c, avro_json.c)
 *	                    (target.c: which column takes what)
 *	      dedup.c       newest message per key (upsert)
 *	      apply.c       set-based INSERT / DELETE, prepared once;
 *	                    apply_append.c: appends straight into the heap
 *	      deadletter.c  the rows that fail, isolated; dead-letter rows
 *	      aggregate.c   windowed aggregates: the events each counts,
 *	                    aggregate_pre.c groups them by window and group
 *	                    (aggregate_group.c: an event's group key, hash),
 *	                    aggregate_merge.c merges them into the results,
 *	                    aggregate_close.c moves the watermark and closes
 *	                    windows, aggregate_emit.c sends what they emit
 *	                    through the outbox (definitions: aggregate_api.c)
 *	      offsets.c     next offsets, fenced (the slot commits them to the
 *	                    Kafka group after the commit)
 *	    slot_metrics.c  after commit: counters, latency, watermarks
 *	                    (shmem.h: shmem.c, histogram.c, lag.c)
 *	  Kafka side (kafka.h): kafka_props.c, kafka_client.c, eventhubs.c;
 *	  producing (producer.h): producer.c, produce.c; the outbox (relay.h).
 *
 * IDENTIFICATION
 *	  src/pipeline_ext.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PIPELINE_EXT_H
#define PIPELINE_EXT_H

#include "postgres.h"

#include "datatype/timestamp.h"

#define PE_SCHEMA "pipeline"

/* GUCs (pipeline_ext.c) */
extern int	pe_produce_timeout_ms;
extern int	pe_max_consumer_slots;
extern int	pe_lag_window_ms;
extern int	pe_max_apply_failures;
extern int	pe_batch_linger_ms;
extern int	pe_default_parallelism;

/*
 * Kafka's clock: timestamps are milliseconds since 1970; PostgreSQL's are
 * microseconds since 2000.
 */
#define PE_KAFKA_EPOCH_USECS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC)

static inline TimestampTz
pe_kafka_ms_to_timestamptz(int64 ms)
{
	return ms * 1000 - PE_KAFKA_EPOCH_USECS;
}

static inline int64
pe_timestamptz_to_kafka_ms(TimestampTz ts)
{
	return ts / 1000 + PE_KAFKA_EPOCH_USECS / 1000;
}

/*
 * The largest Kafka timestamp pe_kafka_ms_to_timestamptz() takes: beyond
 * it the microseconds overflow (producers may send any int64).  Up to it
 * the result is a valid timestamptz (the year 294247 at the most).
 */
#define PE_KAFKA_MS_MAX (PG_INT64_MAX / 1000)

/* kafka_client.c: a timestamp written as text (start_offset, reset_offsets) */
extern int64 pe_kafka_ms_from_text(const char *text);

#endif							/* PIPELINE_EXT_H */

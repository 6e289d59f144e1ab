/*-------------------------------------------------------------------------
 *
 * pipeline_ext.h
 *	  Declarations shared by pipeline_ext's source files.
 *
 * IDENTIFICATION
 *	  src/pipeline_ext.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PIPELINE_EXT_H
#define PIPELINE_EXT_H

#include "postgres.h"

#include "nodes/pg_list.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#include <librdkafka/rdkafka.h>

#define PE_SCHEMA "pipeline"

/* GUCs (pipeline_ext.c) */
extern int	pe_produce_timeout_ms;
extern int	pe_max_consumer_slots;
extern int	pe_lag_window_ms;

/* shmem.c */
#define PE_MAX_DBS 64
#define PE_ERROR_LEN 512
#define PE_SLOT_MAX_PARTITIONS 256
#define PE_PERIOD_SECS 10
#define PE_PERIODS 360				/* one hour */
#define PE_LATENCY_WINDOW_SECS 300
#define PE_LAG_SAMPLES 10			/* lag history: one sample per tenth of the window */

typedef enum PeSlotState
{
	PE_SLOT_FREE = 0,			/* entry unused */
	PE_SLOT_STARTING,			/* worker registered, not attached yet */
	PE_SLOT_RUNNING,			/* worker attached */
	PE_SLOT_STOPPED,			/* exited cleanly, or stopped by the user */
	PE_SLOT_FAILED,				/* exited with an error; manager will restart */
	PE_SLOT_RESTARTING			/* waiting out the backoff before a restart */
} PeSlotState;

/*
 * A latency histogram in shared memory, updated with atomics: log-linear
 * buckets, four per power of two of microseconds (within 19 % of the value).
 */
#define PE_HIST_SUB 4
#define PE_HIST_BUCKETS (40 * PE_HIST_SUB)

typedef struct PeHistogram
{
	pg_atomic_uint64 count[PE_HIST_BUCKETS];
	pg_atomic_uint64 max_us;
} PeHistogram;

extern void pe_hist_init(PeHistogram *h);
extern void pe_hist_add(PeHistogram *h, int64 us);
extern double pe_hist_percentile_ms(PeHistogram *h, double q, uint64 *total);

/*
 * One consumer slot: the worker that applies a share of a consumer's
 * partitions.  Written by the slot's worker and by its database's manager
 * under pe_shared->lock; read by the status functions.
 */
typedef struct PeSlot
{
	PeSlotState state;
	Oid			dboid;
	char		consumer[NAMEDATALEN];
	int			slot;
	uint32		incarnation;	/* bumped at every start */
	uint32		reseeks;		/* bumped when the stored offsets were reset */
	pid_t		pid;
	bool		error_exit;		/* the worker recorded an error */
	bool		terminated;		/* ... which was a termination (pg_terminate_backend) */
	bool		stop_requested; /* pipeline_ext itself told the worker to stop */
	int			restarts;		/* since server start */
	int			backoff;		/* consecutive quick failures */
	TimestampTz started_at;
	TimestampTz restart_at;
	TimestampTz last_error_at;
	TimestampTz last_batch_at;
	char		last_error[PE_ERROR_LEN];
	int			npartitions;
	int32		partitions[PE_SLOT_MAX_PARTITIONS];
	/* per assigned partition, in the order of partitions[] */
	int64		applied[PE_SLOT_MAX_PARTITIONS];	/* next offset committed */
	int64		high[PE_SLOT_MAX_PARTITIONS];	/* high watermark, -1 unknown */
	TimestampTz high_at[PE_SLOT_MAX_PARTITIONS];	/* when it was seen */
	/* time of the oldest message not applied yet (0: none, or unknown) */
	TimestampTz oldest[PE_SLOT_MAX_PARTITIONS];
	TimestampTz progress_at[PE_SLOT_MAX_PARTITIONS];	/* applied last moved */
	/* lag history for consumer_lag's status, sampled with the watermarks */
	TimestampTz sample_at[PE_LAG_SAMPLES];
	int64		sample_lag[PE_LAG_SAMPLES][PE_SLOT_MAX_PARTITIONS];	/* -1: unknown */
	int			sample_next;
	TimestampTz created_at;		/* the entry, for "no batch for longer than" */
	uint64		messages;
	uint64		bytes;
	uint64		batches;
	uint64		dead_letters;
	TimestampTz stats_reset;
	uint64		errors;			/* batches that failed the worker */
	/* the last hour in 10-second periods: messages applied, total lag */
	uint32		period[PE_PERIODS];
	uint32		period_msgs[PE_PERIODS];
	int64		period_lag[PE_PERIODS];
	/* end-to-end latency (commit time - message timestamp), two 5-minute windows */
	PeHistogram latency[2];
	int			latency_cur;
	TimestampTz latency_since;
} PeSlot;

/* One database the launcher keeps a manager running in. */
typedef struct PeDatabase
{
	Oid			dboid;			/* InvalidOid: entry unused */
	bool		wanted;			/* start (or keep) a manager there */
	pid_t		pid;			/* manager's pid, 0 if none */
	struct Latch *latch;		/* manager's latch, to wake it */
	int			failures;		/* consecutive error exits */
	uint64		wakeups;		/* bumped by every wake-up request */
	TimestampTz restart_at;
	TimestampTz hold_until;		/* no manager before: DROP DATABASE under way */
} PeDatabase;

typedef struct PeSharedState
{
	LWLock	   *lock;			/* guards dbs[] and slots[] */
	pg_atomic_uint64 produced_messages;
	pg_atomic_uint64 produced_bytes;
	pg_atomic_uint64 produce_failures;
	PeHistogram produce_latency;	/* produce call to broker acknowledgement */
	TimestampTz producer_stats_reset;
	struct Latch *launcher_latch;
	PeDatabase	dbs[PE_MAX_DBS];
	int			max_slots;
	PeSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} PeSharedState;

extern PeSharedState *pe_shared;

extern void pe_shmem_init_hooks(void);
extern void pe_require_preload(void);
extern PeSlot *pe_snapshot_slots(int *n);
extern PeSlot *pe_slot_entry(Oid dboid, const char *consumer, int slot, bool create);
extern int	pe_slot_period(PeSlot *s, TimestampTz t);
extern void pe_slot_reset_partitions(PeSlot *s, TimestampTz now);
extern void pe_slot_note_watermarks(PeSlot *s, TimestampTz now);
extern const char *pe_lag_status(const PeSlot *s, int k, TimestampTz now);

/* A Kafka timestamp (milliseconds since 1970) as a timestamptz. */
static inline TimestampTz
pe_kafka_ms_to_timestamptz(int64 ms)
{
	return ms * 1000 - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC;
}

/* kafka_conf.c: librdkafka configuration, validation and secrets */
typedef enum PePropertyAccess
{
	PE_PROP_USER,				/* any role may set it */
	PE_PROP_SUPERUSER,			/* reads server files or runs programs */
	PE_PROP_MANAGED				/* set by pipeline_ext itself */
} PePropertyAccess;

extern bool pe_property_is_secret(const char *name);
extern PePropertyAccess pe_property_access(const char *name);
extern void pe_validate_options(Jsonb *options, bool for_eventhubs_derived);
extern char *pe_jsonb_scalar_to_cstring(JsonbValue *v, const char *key);
extern char *pe_redact(const char *text, List *secrets);

typedef struct PeEventHubsConfig
{
	char	   *namespace_host; /* NS.servicebus.windows.net */
	char	   *entity_path;	/* EntityPath=..., or NULL */
	char	   *key_name;		/* SharedAccessKeyName */
} PeEventHubsConfig;

extern void pe_parse_eventhubs(const char *connstr, PeEventHubsConfig *out);

/* connection.c */
typedef struct PeConnection
{
	char	   *name;
	Oid			owner;
	char	   *kind;			/* "kafka" or "eventhubs" */
	List	   *props;			/* effective properties: list of PeProperty */
} PeConnection;

typedef struct PeProperty
{
	char	   *name;
	char	   *value;
	const char *source;			/* "connection", "eventhubs", "default" */
} PeProperty;

typedef struct PeCatalogAccess
{
	Oid			save_userid;
	int			save_sec;
} PeCatalogAccess;

extern void pe_catalog_begin(PeCatalogAccess *acc);
extern void pe_catalog_end(PeCatalogAccess *acc);
extern bool pe_may_see_secrets(Oid owner);
extern PeConnection *pe_connection_lookup(const char *name, bool missing_ok);
extern void pe_check_connection_use(PeConnection *conn);
extern Oid	pe_connection_catalog_relid(void);
extern List *pe_connection_secrets(PeConnection *conn);

/* produce.c */
extern void pe_produce_init(void);
extern List *pe_producer_default_props(void);

/* target.c: decoding messages into a target table's rows, and applying them */
typedef enum PeFormat
{
	PE_FORMAT_JSON,
	PE_FORMAT_CSV,
	PE_FORMAT_TEXT,
	PE_FORMAT_BYTEA
} PeFormat;

/* A message to decode: from librdkafka, or a dead letter being replayed. */
typedef struct PeMessage
{
	const char *topic;
	int32		partition;
	int64		offset;
	int64		timestamp_ms;	/* -1: none */
	const char *key;			/* NULL: no key */
	size_t		key_len;
	const char *value;			/* NULL: tombstone */
	size_t		value_len;
	rd_kafka_headers_t *hdrs;	/* librdkafka's headers, or NULL */
	Jsonb	   *headers_jsonb;	/* replayed dead letter's headers, or NULL */
} PeMessage;

/* A message that could not be decoded or applied. */
typedef struct PeDeadLetter
{
	int			msg_index;
	char	   *error;
	char		sqlstate[6];
} PeDeadLetter;

/* What a consumer's catalog row says about decoding and applying. */
typedef struct PeConsumerDef
{
	char	   *name;
	Oid			owner;
	char	   *connection;
	char	   *topic;
	Oid			target;
	PeFormat	format;
	bool		upsert;
	ArrayType  *key_columns;	/* NULL: the primary key */
	char	   *delivery;
	int			parallelism;
	char	   *start_offset;
	int			batch_size;
	int			batch_timeout_ms;
	Jsonb	   *column_map;		/* NULL: none */
	char	   *group_id;		/* NULL: manual assignment */
	bool		stop_on_error;
	bool		delete_on_tombstone;
	Jsonb	   *format_options;
	bool		enabled;
} PeConsumerDef;

typedef struct PeTarget PeTarget;

typedef struct PeBatchResult
{
	int64		applied;		/* rows inserted or updated (incl. superseded) */
	int64		deleted;		/* tombstones applied */
	List	   *dead;			/* PeDeadLetter */
} PeBatchResult;

extern PeFormat pe_parse_format(const char *format);
extern PeTarget *pe_target_open(PeConsumerDef *def, bool check_privileges);
extern void pe_target_apply(PeTarget *t, PeMessage *msgs, int n, PeBatchResult *res);
extern void pe_target_close(PeTarget *t);
extern Jsonb *pe_message_headers(PeMessage *msg);
extern bool pe_error_is_row_specific(int sqlerrcode);
extern Datum pe_bytes_to_bytea(const char *data, size_t len);

/* worker.c: launcher, per-database managers, consumer slot workers */
extern void pe_register_launcher(void);
extern void pe_wake_manager(Oid dboid);
extern void pe_release_database(Oid dboid);
extern void pe_xact_begin(void);
extern void pe_xact_commit(void);
extern PGDLLEXPORT void pe_launcher_main(Datum arg);
extern PGDLLEXPORT void pe_manager_main(Datum arg);
extern PGDLLEXPORT void pe_slot_main(Datum arg);

/* kafka_conf.c */
extern rd_kafka_conf_t *pe_kafka_conf(PeConnection *conn, List *defaults);
extern PeProperty *pe_property(const char *name, const char *value, const char *source);

/* consumer.c: the consumer catalog and its SQL functions */
extern PeConsumerDef *pe_consumer_read(const char *name, bool missing_ok);
extern List *pe_consumer_defaults(PeConsumerDef *def, int npartitions, const char *dbname);
extern void pe_consumer_record_error(const char *name, const char *error, bool disable);
extern void pe_quiet_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

/* probe.c: fresh lag figures for consumers that have no running worker */
extern void pe_probe_round(Oid dboid, const char (*names)[NAMEDATALEN], int n);

#endif							/* PIPELINE_EXT_H */

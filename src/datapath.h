/*-------------------------------------------------------------------------
 *
 * datapath.h
 *	  The data path of a batch of messages (batch.c runs it): the target's
 *	  description (target.c), decoding (decode.c and a decoder per format:
 *	  decode_json.c, decode_csv.c, decode_raw.c, decode_avro.c), keeping the newest
 *	  message per key (dedup.c), applying with prepared statements
 *	  (apply.c), isolating and recording dead letters (deadletter.c), and
 *	  storing offsets (offsets.c).
 *
 * IDENTIFICATION
 *	  src/datapath.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_DATAPATH_H
#define PE_DATAPATH_H

#include "pipeline_ext.h"

#include "executor/spi.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

#include <librdkafka/rdkafka.h>

#include "consumer.h"
#include "registry.h"

#define PE_JSON_MAX_DEPTH 16

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
	Jsonb	   *headers_jsonb;	/* replayed dead letter from 0.3.0 (no headers_raw), or NULL */
} PeMessage;

/* A message that could not be decoded or applied. */
typedef struct PeDeadLetter
{
	int			msg_index;
	char	   *error;
	char		sqlstate[6];
} PeDeadLetter;

typedef struct PeBatchResult
{
	int64		applied;		/* rows inserted or updated (incl. superseded) */
	int64		deleted;		/* tombstones applied */
	List	   *dead;			/* PeDeadLetter */
} PeBatchResult;

/* Where a column's value comes from. */
typedef enum PeSource
{
	PE_SRC_FIELD,				/* JSON field path */
	PE_SRC_CSV,					/* CSV field by position */
	PE_SRC_VALUE,				/* the whole value */
	PE_SRC_KEY,
	PE_SRC_TOPIC,
	PE_SRC_PARTITION,
	PE_SRC_OFFSET,
	PE_SRC_TIMESTAMP,
	PE_SRC_HEADERS,
	PE_SRC_HEADER
} PeSource;

typedef struct PeColumn
{
	char	   *name;
	AttrNumber	attnum;
	Oid			typid;
	int32		typmod;
	Oid			collation;
	Oid			arraytyp;		/* how a batch's values of it travel: an array of
								 * the type, or text[] when it has no array type
								 * (it is an array itself): apply.c */
	bool		via_text;		/* the latter: cast back in the statement ... */
	char	   *cast;			/* ... with this ("::type", qualified), else "" */
	FmgrInfo	outfunc;		/* via_text or an array: the (base) type's output function */
	bool		is_domain;
	int32		numeric_typmod; /* a numeric (or a domain over one): its typmod, else -1 */
	Oid			elemtyp;		/* an array column: its element type, else invalid */
	struct PeColumn *elem;		/* ... and the element as a column of its own */
	int16		typlen;
	bool		typbyval;
	char		typalign;
	FmgrInfo	infunc;
	Oid			ioparam;
	bool		is_json;		/* json or jsonb: nested values as JSON text */
	bool		is_bytea;
	PeSource	source;
	char	  **path;			/* PE_SRC_FIELD */
	int			npath;
	size_t		path0len;		/* strlen(path[0]), for the fast JSON path */
	int			csv_index;		/* PE_SRC_CSV */
	char	   *header;			/* PE_SRC_HEADER */
	char	   *default_expr;	/* used when the value is NULL, or NULL */
	bool		is_key;
	FmgrInfo   *hash_fn;		/* key columns: for de-duplication */
	FmgrInfo   *eq_fn;
	Oid			eq_opr;			/* key columns: the type's equality operator */
	FmgrInfo   *cmp_fn;			/* key columns: btree order, or NULL */
	bool		bytewise;		/* key columns: text or varchar whose collation
								 * is deterministic: equal iff the same bytes,
								 * so hashed, compared and ordered as bytes */
} PeColumn;

/* A consumer's target table, as the data path sees it. */
typedef struct PeTarget
{
	PeConsumerDef *def;
	Oid			relid;
	char	   *relname;		/* schema-qualified, quoted */
	int			ncols;
	PeColumn   *cols;
	int			nkeys;
	int		   *keycols;		/* indexes into cols */
	int			ncsv;
	char		csv_delim;
	char		csv_quote;
	char	   *csv_null;
	bool		needs_headers;
	bool		flat_json;		/* every field column is a top-level field */
	bool		key_avro;		/* format_options key_format 'avro' */
	struct PeAvroCache *avro;	/* the Avro format's writer schemas (decode_avro.c) */
	struct PeAvroCache *avro_key;	/* ... and those of Avro keys */
	SPIPlanPtr	apply_plan;
	SPIPlanPtr	delete_plan;
	MemoryContext cxt;			/* holds all of the above (pe_target_open) */
} PeTarget;

/* One decoded message. */
typedef struct PeRow
{
	int			msg_index;
	bool		tombstone;
	bool		superseded;		/* a newer message of the same key won */
	Datum	   *values;
	bool	   *nulls;
	uint32		hash;
} PeRow;

/* Found values of one message, per column, as text (or raw bytes). */
typedef struct PeFound
{
	bool		found;
	bool		isnull;
	char	   *text;
	size_t		len;
	bool		raw;			/* text holds raw bytes, not verified text */
	bool		json_string;	/* JSON string: a json column needs it quoted */
	bool		json_nested;	/* a JSON object or array, as its JSON text */
} PeFound;

/* JSON's whitespace, skipped from data[i] on (decode_json.c, decode.c) */
#define PE_WS(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')

static inline size_t
pe_json_skip_ws(const char *data, size_t len, size_t i)
{
	while (i < len && PE_WS(data[i]))
		i++;
	return i;
}

/* decode_avro.c */
extern void pe_decode_avro(PeTarget *t, const char *data, size_t len, PeRow *row);
extern void pe_decode_avro_key(PeTarget *t, const char *data, size_t len, PeRow *row, bool only_nulls);
extern Datum pe_avro_key_value(PeTarget *t, PeColumn *col, const char *data, size_t len);
extern int32 pe_avro_schema_id(const char *data, size_t len);
extern bool pe_avro_known(PeTarget *t, bool key, int32 id);
extern PeRegistryAnswer pe_avro_fetch(PeTarget *t, bool key, struct PeConnection *conn, int32 id, char **why);
extern void pe_avro_close(PeTarget *t);
extern void pe_avro_keep(PeTarget *t);
extern void pe_avro_reuse(PeTarget *t);

/* target.c */
extern PeTarget *pe_target_open(PeConsumerDef *def, bool check_privileges);
extern void pe_target_close(PeTarget *t);
extern bool pe_unique_index_on(Relation rel, const AttrNumber *atts, int natts, bool exactly);

/* The next offsets a batch stores, and the fence each must pass. */

typedef struct PeOffsetWrite
{
	const char *consumer;
	int64		consumer_id;	/* fence: the consumer the slot started for */
	SPIPlanPtr	plan;			/* pe_offsets_prepare() */
	int			n;
	int32	   *partitions;
	int64	   *next;			/* next offset to apply */
	int64	   *expected;		/* what the stored row holds; -1: no row */
} PeOffsetWrite;

/* One batch through the data path (batch.c). */
typedef struct PeBatch
{
	PeTarget   *target;
	PeMessage  *msgs;
	int			n;
	SPIPlanPtr	dead_plan;		/* a slot: pe_deadletter_prepare() */
	int64	   *replay_ids;		/* a replay: the dead letters' ids */
	PeOffsetWrite *offsets;		/* a slot: the offsets to store */
	bool		own_transaction;	/* a slot: the transaction is the batch's */
	int			npart;			/* a slot: the partitions of the topic */
	PeBatchResult res;			/* out */
	/* pe_batch_apply_rows() so far: */
	int			napplied;		/* msgs[0..napplied) decoded and applied */
	PeRow	   *rows;			/* ... their rows */
	int			nrows;
	List	   *aggs;			/* the consumer's aggregates, read once */
} PeBatch;

typedef enum PeBatchOutcome
{
	PE_BATCH_DONE,
	PE_BATCH_CONFLICT,			/* stored offsets moved: seek again */
	PE_BATCH_STOP				/* on_error = 'stop' hit a bad message */
} PeBatchOutcome;

extern PeBatchOutcome pe_batch_apply(PeBatch *b);
extern PeBatchOutcome pe_batch_apply_rows(PeBatch *b);
extern PeBatchOutcome pe_batch_finish(PeBatch *b);

/* decode.c */
extern PeFormat pe_parse_format(const char *format);
extern int	pe_decode_batch(PeTarget *t, PeMessage *msgs, int n, PeRow *rows, PeBatchResult *res);
extern void pe_verify_text(const char *data, size_t len, const char *what);
extern Jsonb *pe_message_headers(PeMessage *msg);
extern ArrayType *pe_message_headers_raw(PeMessage *msg);
extern rd_kafka_headers_t *pe_headers_from_raw(ArrayType *raw);

/* A column's value from its text. */
static inline Datum
pe_input(PeColumn *col, const char *text)
{
	return InputFunctionCall(&col->infunc, (char *) text, col->ioparam, col->typmod);
}

/* the decoders: decode_json.c, decode_csv.c */
extern void pe_decode_json_value(PeTarget *t, const char *data, size_t len, PeFound *found);
extern void pe_decode_json(PeTarget *t, const char *data, size_t len, PeFound *found, const char *what);
extern void pe_decode_csv_value(PeTarget *t, const char *data, size_t len, PeFound *found);
extern char *pe_json_array_literal(PeColumn *col, const char *json, size_t len);

/* decode_time.c */
extern void pe_iso_prepare(void);
extern bool pe_iso_timestamptz(const char *s, size_t len, TimestampTz *result);

/* decode_raw.c: bytes taken whole */
extern Datum pe_bytes_to_bytea(const char *data, size_t len);
extern Datum pe_raw_value(PeColumn *col, const char *data, size_t len, const char *what);
extern Datum pe_raw_whole_value(PeTarget *t, PeColumn *col, PeMessage *msg);

/* dedup.c */
extern void pe_dedup(PeTarget *t, PeMessage *msgs, PeRow *rows, int nrows);
extern int	pe_key_bytes_cmp(Datum a, Datum b);

/* apply.c */
extern void pe_build_statements(PeTarget *t);
extern Datum pe_column_array(PeColumn *col, Datum *values, bool *nulls, int n);
extern ErrorData *pe_try_subxact(void (*fn) (void *arg), void *arg, bool keep);
extern ErrorData *pe_try_statement(PeTarget *t, PeRow **rows, int n, bool is_delete, bool keep,
								   int64 *processed);
extern void pe_apply(PeTarget *t, PeRow *rows, int nrows, PeBatchResult *res);

/* apply_append.c */
extern bool pe_append_rows(PeTarget *t, PeRow **rows, int n, int64 *processed);

/* deadletter.c */
extern bool pe_error_is_row_specific(int sqlerrcode);
extern void pe_add_dead(PeBatchResult *res, int msg_index, ErrorData *edata);
extern void pe_deadletter_isolate(PeTarget *t, PeRow **rows, int n, bool is_delete, PeBatchResult *res);
extern SPIPlanPtr pe_deadletter_prepare(void);
extern void pe_deadletter_record(SPIPlanPtr plan, PeConsumerDef *def, PeMessage *msgs, List *dead);
extern void pe_deadletter_replayed(int64 *ids, int n, List *dead);

/* offsets.c */
extern SPIPlanPtr pe_offsets_prepare(void);
extern bool pe_offsets_store(PeOffsetWrite *w);

#endif							/* PE_DATAPATH_H */

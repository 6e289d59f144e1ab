/*-------------------------------------------------------------------------
 *
 * consumer.h
 *	  Consumers: what a catalog row says (consumer_catalog.c) and the
 *	  SQL functions that manage them (consumer_api.c, offsets_api.c,
 *	  deadletter_api.c).
 *
 * IDENTIFICATION
 *	  src/consumer.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_CONSUMER_H
#define PE_CONSUMER_H

#include "pipeline_ext.h"

#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/jsonb.h"

typedef enum PeFormat
{
	PE_FORMAT_JSON,
	PE_FORMAT_CSV,
	PE_FORMAT_TEXT,
	PE_FORMAT_BYTEA,
	PE_FORMAT_AVRO
} PeFormat;

/* What a consumer's catalog row says about decoding and applying. */
typedef struct PeConsumerDef
{
	int64		id;				/* its identity: a name can be reused, an id not */
	char	   *name;
	Oid			owner;
	char	   *connection;
	char	   *topic;
	Oid			target;			/* InvalidOid: the table was dropped */
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

/* consumer_catalog.c */
extern PeConsumerDef *pe_consumer_read(const char *name, bool missing_ok);
extern List *pe_consumer_defaults(PeConsumerDef *def, const char *dbname, List **forced);
extern void pe_consumer_check_target(PeConsumerDef *def);
extern void pe_consumer_record_error(int64 id, const char *error, bool disable);
extern void pe_consumer_record_target_gone(int64 id, const char *error);

/* consumer_api.c */
extern PeConsumerDef *pe_consumer_for_owner(const char *name, const char *action);
extern void pe_reseek_at_commit(const char *name);

#endif							/* PE_CONSUMER_H */

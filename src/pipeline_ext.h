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
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#include <librdkafka/rdkafka.h>

#define PE_SCHEMA "pipeline"

/* GUCs (pipeline_ext.c) */
extern int	pe_produce_timeout_ms;

/* shmem.c */
typedef struct PeSharedState
{
	LWLock	   *lock;			/* guards the slot tables added by later
								 * versions; counters below are atomics */
	pg_atomic_uint64 produced_messages;
	pg_atomic_uint64 produced_bytes;
	pg_atomic_uint64 produce_failures;
} PeSharedState;

extern PeSharedState *pe_shared;

extern void pe_shmem_init_hooks(void);
extern void pe_require_preload(void);

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

extern PeConnection *pe_connection_lookup(const char *name, bool missing_ok);
extern void pe_check_connection_use(PeConnection *conn);
extern Oid	pe_connection_catalog_relid(void);
extern List *pe_connection_secrets(PeConnection *conn);

/* produce.c */
extern void pe_produce_init(void);

#endif							/* PIPELINE_EXT_H */

/*-------------------------------------------------------------------------
 *
 * registry.h
 *	  A connection's schema registry (Confluent's REST API): its options,
 *	  and fetching writer schemas by id (registry.c).
 *
 * IDENTIFICATION
 *	  src/registry.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_REGISTRY_H
#define PE_REGISTRY_H

#include "pipeline_ext.h"

#include "nodes/pg_list.h"

struct PeConnection;

/* the connection options of the registry (not librdkafka's) */
#define PE_REGISTRY_URL "schema.registry.url"
#define PE_REGISTRY_USER_INFO "schema.registry.basic.auth.user.info"
#define PE_REGISTRY_TIMEOUT "schema.registry.request.timeout.ms"
#define PE_REGISTRY_TIMEOUT_DEFAULT 5000

extern bool pe_registry_property(const char *name, bool *secret);
extern const char *pe_registry_option(struct PeConnection *conn, const char *name);
extern void pe_registry_check_option(const char *name, const char *value);

/* What asking the registry for a schema found. */
typedef enum PeRegistryAnswer
{
	PE_REGISTRY_FOUND,			/* *schema_json set */
	PE_REGISTRY_NOT_FOUND,		/* the registry says there is no such id */
	PE_REGISTRY_UNAVAILABLE		/* no answer, or not one to act on: retry */
} PeRegistryAnswer;

extern PeRegistryAnswer pe_registry_fetch_schema(struct PeConnection *conn, int32 id, char **schema_json,
												 char **why);
extern int32 pe_registry_subject_schema(struct PeConnection *conn, const char *subject, char **schema_json);
extern PeRegistryAnswer pe_registry_latest(struct PeConnection *conn, const char *subject, int32 *id,
										   char **schema_json, char **why);

#endif							/* PE_REGISTRY_H */

/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  The Kafka side: which librdkafka properties exist and who may set
 *	  them (kafka_props.c), building a client's configuration, librdkafka's
 *	  log lines and the redaction of secrets (kafka_client.c), and Azure
 *	  Event Hubs connection strings (eventhubs.c).
 *
 * IDENTIFICATION
 *	  src/kafka.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_KAFKA_H
#define PE_KAFKA_H

#include "pipeline_ext.h"

#include "nodes/pg_list.h"
#include "utils/jsonb.h"

#include <librdkafka/rdkafka.h>

struct PeConnection;

/*
 * librdkafka 2.2.0 (rd_kafka_version()) and later: a partition whose
 * prefetch queue is full backs off fetch.queue.backoff.ms.  Before, it
 * waited for its broker thread to wake (slot_metrics.c wakes it).
 */
#define PE_RDKAFKA_FETCH_QUEUE_BACKOFF 0x02020000

/* kafka_props.c */
typedef enum PePropertyAccess
{
	PE_PROP_USER,				/* any role may set it */
	PE_PROP_SERVER_FILE,		/* reads a server file: pg_read_server_files */
	PE_PROP_SUPERUSER,			/* loads code, runs programs, writes files */
	PE_PROP_MANAGED,			/* set by pipeline_ext itself */
	PE_PROP_UNLISTED			/* not reviewed (a newer librdkafka's): superusers */
} PePropertyAccess;

extern bool pe_property_is_secret(const char *name);
extern PePropertyAccess pe_property_access(const char *name);
extern void pe_validate_options(Jsonb *options, bool for_eventhubs_derived);
extern char *pe_jsonb_scalar_to_cstring(JsonbValue *v, const char *key);

/* kafka_client.c */
typedef struct PeProperty
{
	char	   *name;
	char	   *value;
	const char *source;			/* "connection", "eventhubs", "default" */
} PeProperty;

extern rd_kafka_conf_t *pe_kafka_conf(struct PeConnection *conn, List *defaults, List *forced);
extern PeProperty *pe_property(const char *name, const char *value, const char *source);
extern char *pe_redact(const char *text, List *secrets);
extern void pe_redact_into(char *dst, size_t size, const char *text, List *secrets);
extern void pe_quiet_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);
extern void pe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);
extern bool pe_log_pending(const rd_kafka_t *rk);
extern void pe_log_drain(const rd_kafka_t *rk, const char *who, List *secrets);

/* eventhubs.c */
typedef struct PeEventHubsConfig
{
	char	   *namespace_host; /* NS.servicebus.windows.net */
	char	   *entity_path;	/* EntityPath=..., or NULL */
	char	   *key_name;		/* SharedAccessKeyName */
} PeEventHubsConfig;

extern void pe_parse_eventhubs(const char *connstr, PeEventHubsConfig *out);

#endif							/* PE_KAFKA_H */

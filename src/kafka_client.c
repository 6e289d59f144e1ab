/*-------------------------------------------------------------------------
 *
 * kafka_client.c
 *	  Making librdkafka clients: a configuration from a connection's
 *	  properties after the caller's defaults, property lists, the redaction
 *	  of secrets from librdkafka's texts, and librdkafka's log lines: the
 *	  one log ring that producers and slot workers drain, and the silent
 *	  callback of short-lived clients.
 *
 * IDENTIFICATION
 *	  src/kafka_client.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/elog.h"

#include "connection.h"
#include "kafka.h"
#include "registry.h"

/*
 * Replace every occurrence of each secret in text with asterisks.
 */
char *
pe_redact(const char *text, List *secrets)
{
	char	   *result = pstrdup(text);
	ListCell   *lc;
	size_t		len = strlen(result);

	/* librdkafka's texts sometimes end in a newline */
	while (len > 0 && (result[len - 1] == '\n' || result[len - 1] == ' '))
		result[--len] = '\0';

	foreach(lc, secrets)
	{
		const char *secret = lfirst(lc);
		size_t		slen = strlen(secret);
		StringInfoData buf;
		const char *p;
		const char *hit;

		if (slen < 3)
			continue;
		initStringInfo(&buf);
		p = result;
		while ((hit = strstr(p, secret)) != NULL)
		{
			appendBinaryStringInfo(&buf, p, hit - p);
			appendStringInfoString(&buf, "********");
			p = hit + slen;
		}
		appendStringInfoString(&buf, p);
		pfree(result);
		result = buf.data;
	}
	return result;
}

/*
 * text redacted into dst, cut to fit after: cut first, a secret cut short
 * at the end would no longer match, and its first part would show.
 */
void
pe_redact_into(char *dst, size_t size, const char *text, List *secrets)
{
	char	   *r = pe_redact(text, secrets);

	strlcpy(dst, r, size);
	pfree(r);
}

/*
 * A librdkafka configuration from a connection's properties, after the
 * given defaults (which the connection's own options override) and before
 * the forced ones (which override them: what exactly-once depends on).
 * Errors name the property and redact the connection's secrets.
 */
rd_kafka_conf_t *
pe_kafka_conf(PeConnection *conn, List *defaults, List *forced)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	List	   *props = list_concat(list_concat(list_copy(defaults), conn->props), forced);
	ListCell   *lc;

	foreach(lc, props)
	{
		PeProperty *prop = lfirst(lc);

		/* the schema registry's options are not librdkafka's */
		if (pe_registry_property(prop->name, NULL))
			continue;
		if (rd_kafka_conf_set(conf, prop->name, prop->value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			rd_kafka_conf_destroy(conf);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid property \"%s\" in connection \"%s\"", prop->name, conn->name),
					 errdetail("%s", pe_redact(errstr, pe_connection_secrets(conn))),
					 errhint("Recreate the connection with a valid value.")));
		}
	}
	return conf;
}

/* A property list entry, for defaults lists. */
PeProperty *
pe_property(const char *name, const char *value, const char *source)
{
	PeProperty *p = palloc(sizeof(PeProperty));

	p->name = pstrdup(name);
	p->value = pstrdup(value);
	p->source = source;
	return p;
}

/* librdkafka's log lines of short-lived clients: dropped (they may name brokers' errors at length) */
void
pe_quiet_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void) rk;
	(void) level;
	(void) fac;
	(void) buf;
}

/*
 * librdkafka's log lines.  Clients that log through log.queue have their
 * log callback served by rd_kafka_poll() on this process's own thread; the
 * callback still neither pallocs nor ereports: it fills a small ring that
 * pe_log_drain() writes out.  Each line keeps the client it came from, so
 * that a process with several clients (a slot worker whose target's
 * trigger produces, a backend with producers for two connections) labels
 * each line with its own client and redacts that client's secrets.
 */
#define PE_LOG_RING 32
#define PE_LOG_LEN 512

typedef struct PeLogLine
{
	const rd_kafka_t *rk;
	int			level;
	char		text[PE_LOG_LEN];
} PeLogLine;

static PeLogLine log_ring[PE_LOG_RING];
static int	log_ring_count = 0;
static int	log_ring_dropped = 0;

void
pe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (log_ring_count >= PE_LOG_RING)
	{
		log_ring_dropped++;
		return;
	}
	log_ring[log_ring_count].rk = rk;
	log_ring[log_ring_count].level = level;
	snprintf(log_ring[log_ring_count].text, PE_LOG_LEN, "%s: %s", fac, buf);
	log_ring_count++;
}

/* Does the ring hold lines of this client (or dropped ones to report)? */
bool
pe_log_pending(const rd_kafka_t *rk)
{
	for (int i = 0; i < log_ring_count; i++)
		if (log_ring[i].rk == rk)
			return true;
	return log_ring_dropped > 0;
}

/* Write this client's queued lines as "pipeline_ext WHO: line"; keep the others. */
void
pe_log_drain(const rd_kafka_t *rk, const char *who, List *secrets)
{
	int			kept = 0;

	for (int i = 0; i < log_ring_count; i++)
	{
		char	   *line;

		if (log_ring[i].rk != rk)
		{
			if (kept != i)
				log_ring[kept] = log_ring[i];
			kept++;
			continue;
		}
		line = pe_redact(log_ring[i].text, secrets);
		/* librdkafka uses syslog levels: 0-4 are errors and warnings */
		ereport(log_ring[i].level <= 4 ? LOG : DEBUG1,
				(errmsg_internal("pipeline_ext %s: %s", who, line),
				 errhidestmt(true)));
		pfree(line);
	}
	log_ring_count = kept;
	if (log_ring_dropped > 0)
		ereport(DEBUG1,
				(errmsg_internal("pipeline_ext: %d librdkafka log lines dropped", log_ring_dropped)));
	log_ring_dropped = 0;
}

/* A timestamp written as text (ISO 8601, any form timestamptz reads) in Kafka's milliseconds. */
int64
pe_kafka_ms_from_text(const char *text)
{
	Datum		ts = DirectFunctionCall3(timestamptz_in, CStringGetDatum(text),
										 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));

	return pe_timestamptz_to_kafka_ms(DatumGetTimestampTz(ts));
}

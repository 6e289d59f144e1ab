/*-------------------------------------------------------------------------
 *
 * kafka_client.c
 *	  Making librdkafka clients: a configuration from a connection's
 *	  properties after the caller's defaults, property lists, the redaction
 *	  of secrets from librdkafka's texts, and the log callback of short-lived
 *	  clients.
 *
 * IDENTIFICATION
 *	  src/kafka_client.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "connection.h"
#include "kafka.h"

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
 * A librdkafka configuration from a connection's properties, after the
 * given defaults (which the connection's own options override).  Errors
 * name the property and redact the connection's secrets.
 */
rd_kafka_conf_t *
pe_kafka_conf(PeConnection *conn, List *defaults)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	List	   *props = list_concat(list_copy(defaults), conn->props);
	ListCell   *lc;

	foreach(lc, props)
	{
		PeProperty *prop = lfirst(lc);

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

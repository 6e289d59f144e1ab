/*-------------------------------------------------------------------------
 *
 * kafka_props.c
 *	  librdkafka properties: which exist, which are secret, which only a
 *	  superuser may set, and checking a user's options one by one.  Nothing
 *	  here puts a secret into an error message: values of secret properties
 *	  are redacted from librdkafka's own error text.
 *
 * IDENTIFICATION
 *	  src/kafka_props.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <stdio.h>

#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/varlena.h"

#include "kafka.h"
#include "registry.h"

/* Every property name librdkafka knows, read once per process. */
static List *known_properties = NIL;

static List *
pe_known_properties(void)
{
	char	   *buf = NULL;
	size_t		len = 0;
	FILE	   *fp;
	MemoryContext old;
	char	   *line;
	char	   *save = NULL;

	if (known_properties != NIL)
		return known_properties;

	/*
	 * rd_kafka_conf_properties_show() prints CONFIGURATION.md's tables; the
	 * first column of each row is a property name.
	 */
	fp = open_memstream(&buf, &len);
	if (fp == NULL)
		elog(ERROR, "open_memstream failed: %m");
	rd_kafka_conf_properties_show(fp);
	fclose(fp);

	old = MemoryContextSwitchTo(TopMemoryContext);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *bar = strchr(line, '|');
		char	   *end;

		if (bar == NULL || line[0] == '-' || line[0] == '#' || line[0] == ' ' ||
			strncmp(line, "Property ", 9) == 0)
			continue;
		end = bar;
		while (end > line && end[-1] == ' ')
			end--;
		if (end > line)
			known_properties = lappend(known_properties, pnstrdup(line, end - line));
	}
	MemoryContextSwitchTo(old);
	free(buf);

	return known_properties;
}

static bool
pe_property_exists(const char *name)
{
	ListCell   *lc;

	foreach(lc, pe_known_properties())
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	}
	return false;
}

static const char *
pe_closest_property(const char *name)
{
	ListCell   *lc;
	const char *best = NULL;
	int			best_d = INT_MAX;
	int			len = strlen(name);

	if (len > 255)
		return NULL;
	foreach(lc, pe_known_properties())
	{
		const char *cand = lfirst(lc);
		int			d;

		if (strlen(cand) > 255)
			continue;
		d = varstr_levenshtein(name, len, cand, strlen(cand), 1, 1, 1, false);
		if (d < best_d)
		{
			best_d = d;
			best = cand;
		}
	}
	/* Only suggest something that looks like a misspelling. */
	if (best == NULL || best_d > Max(2, len / 3))
		return NULL;
	return best;
}

/*
 * Who may set each property, and which are secret: a list pinned to the
 * properties of librdkafka 2.0.2, the version pipeline_ext is tested with
 * (every string-valued property of its CONFIGURATION.md is here; callbacks
 * and pointers cannot be set from SQL at all).  A property that is not in
 * the list -- one that a newer librdkafka adds -- is for superusers, and
 * its value is masked, until it has been reviewed and listed: a rule that
 * refused known names over whatever librdkafka accepts would let every new
 * release add one more way to load code or read files.
 *
 * sasl.kerberos.principal is for superusers too: librdkafka's default
 * sasl.kerberos.kinit.cmd puts it, unquoted, into a shell command.  So is
 * sasl.oauthbearer.token.endpoint.url, where the server would send its
 * client credentials.
 *
 * Sorted by name (strcmp order), for bsearch().
 */
typedef struct PeKnownProperty
{
	const char *name;
	PePropertyAccess access;
	bool		secret;			/* masked for other roles, redacted from texts */
} PeKnownProperty;

static const PeKnownProperty pe_known[] = {
	{"acks", PE_PROP_USER, false},
	{"allow.auto.create.topics", PE_PROP_USER, false},
	{"api.version.fallback.ms", PE_PROP_USER, false},
	{"api.version.request", PE_PROP_USER, false},
	{"api.version.request.timeout.ms", PE_PROP_USER, false},
	{"auto.commit.enable", PE_PROP_USER, false},
	{"auto.commit.interval.ms", PE_PROP_USER, false},
	{"auto.offset.reset", PE_PROP_USER, false},
	{"batch.num.messages", PE_PROP_USER, false},
	{"batch.size", PE_PROP_USER, false},
	{"bootstrap.servers", PE_PROP_MANAGED, false},
	{"broker.address.family", PE_PROP_USER, false},
	{"broker.address.ttl", PE_PROP_USER, false},
	{"broker.version.fallback", PE_PROP_USER, false},
	{"builtin.features", PE_PROP_MANAGED, false},
	{"check.crcs", PE_PROP_USER, false},
	{"client.id", PE_PROP_USER, false},
	{"client.rack", PE_PROP_USER, false},
	{"compression.codec", PE_PROP_USER, false},
	{"compression.level", PE_PROP_USER, false},
	{"compression.type", PE_PROP_USER, false},
	{"connections.max.idle.ms", PE_PROP_USER, false},
	{"consume.callback.max.messages", PE_PROP_USER, false},
	{"coordinator.query.interval.ms", PE_PROP_USER, false},
	{"debug", PE_PROP_USER, false},
	{"delivery.report.only.error", PE_PROP_USER, false},
	{"delivery.timeout.ms", PE_PROP_USER, false},
	{"enable.auto.commit", PE_PROP_USER, false},
	{"enable.auto.offset.store", PE_PROP_USER, false},
	{"enable.gapless.guarantee", PE_PROP_USER, false},
	{"enable.idempotence", PE_PROP_USER, false},
	{"enable.partition.eof", PE_PROP_USER, false},
	{"enable.random.seed", PE_PROP_USER, false},
	{"enable.sasl.oauthbearer.unsecure.jwt", PE_PROP_USER, false},
	{"enable.ssl.certificate.verification", PE_PROP_USER, false},
	{"enabled_events", PE_PROP_SUPERUSER, false},
	{"fetch.error.backoff.ms", PE_PROP_USER, false},
	{"fetch.max.bytes", PE_PROP_USER, false},
	{"fetch.message.max.bytes", PE_PROP_USER, false},
	{"fetch.min.bytes", PE_PROP_USER, false},
	{"fetch.wait.max.ms", PE_PROP_USER, false},
	{"group.id", PE_PROP_USER, false},
	{"group.instance.id", PE_PROP_USER, false},
	{"group.protocol.type", PE_PROP_USER, false},
	{"heartbeat.interval.ms", PE_PROP_USER, false},
	{"internal.termination.signal", PE_PROP_SUPERUSER, false},
	{"isolation.level", PE_PROP_USER, false},
	{"linger.ms", PE_PROP_USER, false},
	{"log.connection.close", PE_PROP_USER, false},
	{"log.queue", PE_PROP_MANAGED, false},
	{"log.thread.name", PE_PROP_USER, false},
	{"log_level", PE_PROP_USER, false},
	{"max.in.flight", PE_PROP_USER, false},
	{"max.in.flight.requests.per.connection", PE_PROP_USER, false},
	{"max.partition.fetch.bytes", PE_PROP_USER, false},
	{"max.poll.interval.ms", PE_PROP_USER, false},
	{"message.copy.max.bytes", PE_PROP_USER, false},
	{"message.max.bytes", PE_PROP_USER, false},
	{"message.send.max.retries", PE_PROP_USER, false},
	{"message.timeout.ms", PE_PROP_USER, false},
	{"metadata.broker.list", PE_PROP_MANAGED, false},
	{"metadata.max.age.ms", PE_PROP_USER, false},
	{"offset.store.method", PE_PROP_SUPERUSER, false},
	{"offset.store.path", PE_PROP_SUPERUSER, false},
	{"offset.store.sync.interval.ms", PE_PROP_USER, false},
	{"partition.assignment.strategy", PE_PROP_USER, false},
	{"partitioner", PE_PROP_USER, false},
	{"plugin.library.paths", PE_PROP_SUPERUSER, false},
	{"produce.offset.report", PE_PROP_USER, false},
	{"queue.buffering.backpressure.threshold", PE_PROP_USER, false},
	{"queue.buffering.max.kbytes", PE_PROP_USER, false},
	{"queue.buffering.max.messages", PE_PROP_USER, false},
	{"queue.buffering.max.ms", PE_PROP_USER, false},
	{"queued.max.messages.kbytes", PE_PROP_USER, false},
	{"queued.min.messages", PE_PROP_USER, false},
	{"queuing.strategy", PE_PROP_USER, false},
	{"receive.message.max.bytes", PE_PROP_USER, false},
	{"reconnect.backoff.jitter.ms", PE_PROP_USER, false},
	{"reconnect.backoff.max.ms", PE_PROP_USER, false},
	{"reconnect.backoff.ms", PE_PROP_USER, false},
	{"request.required.acks", PE_PROP_USER, false},
	{"request.timeout.ms", PE_PROP_USER, false},
	{"retries", PE_PROP_USER, false},
	{"retry.backoff.ms", PE_PROP_USER, false},
	{"sasl.kerberos.keytab", PE_PROP_SUPERUSER, false},
	{"sasl.kerberos.kinit.cmd", PE_PROP_SUPERUSER, false},
	{"sasl.kerberos.min.time.before.relogin", PE_PROP_USER, false},
	{"sasl.kerberos.principal", PE_PROP_SUPERUSER, false},
	{"sasl.kerberos.service.name", PE_PROP_USER, false},
	{"sasl.mechanism", PE_PROP_USER, false},
	{"sasl.mechanisms", PE_PROP_USER, false},
	{"sasl.oauthbearer.client.id", PE_PROP_USER, false},
	{"sasl.oauthbearer.client.secret", PE_PROP_USER, true},
	{"sasl.oauthbearer.config", PE_PROP_USER, true},
	{"sasl.oauthbearer.extensions", PE_PROP_USER, true},
	{"sasl.oauthbearer.method", PE_PROP_USER, false},
	{"sasl.oauthbearer.scope", PE_PROP_USER, false},
	{"sasl.oauthbearer.token.endpoint.url", PE_PROP_SUPERUSER, false},
	{"sasl.password", PE_PROP_USER, true},
	{"sasl.username", PE_PROP_USER, false},
	{"security.protocol", PE_PROP_USER, false},
	{"session.timeout.ms", PE_PROP_USER, false},
	{"socket.blocking.max.ms", PE_PROP_USER, false},
	{"socket.connection.setup.timeout.ms", PE_PROP_USER, false},
	{"socket.keepalive.enable", PE_PROP_USER, false},
	{"socket.max.fails", PE_PROP_USER, false},
	{"socket.nagle.disable", PE_PROP_USER, false},
	{"socket.receive.buffer.bytes", PE_PROP_USER, false},
	{"socket.send.buffer.bytes", PE_PROP_USER, false},
	{"socket.timeout.ms", PE_PROP_USER, false},
	{"ssl.ca.certificate.stores", PE_PROP_SUPERUSER, false},
	{"ssl.ca.location", PE_PROP_SERVER_FILE, false},
	{"ssl.ca.pem", PE_PROP_USER, false},
	{"ssl.certificate.location", PE_PROP_SERVER_FILE, false},
	{"ssl.certificate.pem", PE_PROP_USER, false},
	{"ssl.cipher.suites", PE_PROP_USER, false},
	{"ssl.crl.location", PE_PROP_SERVER_FILE, false},
	{"ssl.curves.list", PE_PROP_USER, false},
	{"ssl.endpoint.identification.algorithm", PE_PROP_USER, false},
	{"ssl.engine.id", PE_PROP_SUPERUSER, false},
	{"ssl.engine.location", PE_PROP_SUPERUSER, false},
	{"ssl.key.location", PE_PROP_SERVER_FILE, false},
	{"ssl.key.password", PE_PROP_USER, true},
	{"ssl.key.pem", PE_PROP_USER, true},
	{"ssl.keystore.location", PE_PROP_SERVER_FILE, false},
	{"ssl.keystore.password", PE_PROP_USER, true},
	{"ssl.providers", PE_PROP_SUPERUSER, false},
	{"ssl.sigalgs.list", PE_PROP_USER, false},
	{"statistics.interval.ms", PE_PROP_USER, false},
	{"sticky.partitioning.linger.ms", PE_PROP_USER, false},
	{"topic.blacklist", PE_PROP_USER, false},
	{"topic.metadata.propagation.max.ms", PE_PROP_USER, false},
	{"topic.metadata.refresh.fast.cnt", PE_PROP_USER, false},
	{"topic.metadata.refresh.fast.interval.ms", PE_PROP_USER, false},
	{"topic.metadata.refresh.interval.ms", PE_PROP_USER, false},
	{"topic.metadata.refresh.sparse", PE_PROP_USER, false},
	{"transaction.timeout.ms", PE_PROP_USER, false},
	{"transactional.id", PE_PROP_USER, false},
};

static int
pe_known_cmp(const void *key, const void *elem)
{
	return strcmp((const char *) key, ((const PeKnownProperty *) elem)->name);
}

static const PeKnownProperty *
pe_known_property(const char *name)
{
	return bsearch(name, pe_known, lengthof(pe_known), sizeof(PeKnownProperty), pe_known_cmp);
}

/*
 * Secret: listed as such, or not listed at all (not reviewed: masked).  The
 * schema registry's options (registry.c) say themselves.
 */
bool
pe_property_is_secret(const char *name)
{
	const PeKnownProperty *p = pe_known_property(name);
	bool		secret;

	if (pe_registry_property(name, &secret))
		return secret;

	return p == NULL || p->secret;
}

PePropertyAccess
pe_property_access(const char *name)
{
	const PeKnownProperty *p = pe_known_property(name);

	if (pe_registry_property(name, NULL))
		return PE_PROP_USER;
	return p ? p->access : PE_PROP_UNLISTED;
}

/*
 * Text of a JSON scalar option value; error for null, arrays and objects.
 */
char *
pe_jsonb_scalar_to_cstring(JsonbValue *v, const char *key)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		case jbvNull:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must not be null", key),
					 errhint("Leave the option out to use librdkafka's default."),
					 errhidestmt(true)));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must be a string, number or boolean", key),
					 errhint("librdkafka properties are flat: write lists as comma-separated strings."),
					 errhidestmt(true)));
	}
	return NULL;				/* keep compiler quiet */
}

/*
 * Check every key and value of a connection's options against librdkafka,
 * and who may set it.  Raises an error for the first bad one.
 */
void
pe_validate_options(Jsonb *options, bool for_eventhubs_derived)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	rd_kafka_conf_t *conf;
	char	   *volatile key = NULL;

	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("Pass librdkafka properties as an object, for example '{\"acks\": \"all\"}'."),
				 errhidestmt(true)));

	conf = rd_kafka_conf_new();
	PG_TRY();
	{
		it = JsonbIteratorInit(&options->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *value;
			char		errstr[512];
			rd_kafka_conf_res_t res;

			if (tok == WJB_KEY)
			{
				key = pnstrdup(v.val.string.val, v.val.string.len);
				continue;
			}
			if (tok != WJB_VALUE)
				continue;

			/* the schema registry's: not librdkafka's, checked on their own */
			if (pe_registry_property(key, NULL))
			{
				pe_registry_check_option(key, pe_jsonb_scalar_to_cstring(&v, key));
				continue;
			}
			if (strncmp(key, "schema.registry.", 16) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unknown schema registry option \"%s\"", key),
						 errhint("The registry's options are \"%s\", \"%s\" and \"%s\".",
								 PE_REGISTRY_URL, PE_REGISTRY_USER_INFO, PE_REGISTRY_TIMEOUT),
						 errhidestmt(true)));

			if (!pe_property_exists(key))
			{
				const char *closest = pe_closest_property(key);

				if (closest)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("unknown librdkafka property \"%s\"", key),
							 errhint("Perhaps you meant \"%s\".", closest),
							 errhidestmt(true)));
				else
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("unknown librdkafka property \"%s\"", key),
							 errhint("See the configuration properties of librdkafka %s (CONFIGURATION.md).",
									 rd_kafka_version_str()),
							 errhidestmt(true)));
			}

			switch (pe_property_access(key))
			{
				case PE_PROP_MANAGED:
					if (strcmp(key, "bootstrap.servers") == 0 ||
						strcmp(key, "metadata.broker.list") == 0)
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								 errmsg("property \"%s\" cannot be set in options", key),
								 errhint("Pass the brokers as the bootstrap_servers argument."),
								 errhidestmt(true)));
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("property \"%s\" is managed by pipeline_ext and cannot be set", key),
							 errhint("Remove it from the options."),
							 errhidestmt(true)));
					break;
				case PE_PROP_SERVER_FILE:
					if (!superuser() && !has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
						ereport(ERROR,
								(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
								 errmsg("permission denied to set property \"%s\"", key),
								 errdetail("It makes the server read one of its own files."),
								 errhint("Ask a superuser to create the connection, or to grant you pg_read_server_files."),
								 errhidestmt(true)));
					break;
				case PE_PROP_SUPERUSER:
					if (!superuser())
						ereport(ERROR,
								(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
								 errmsg("permission denied to set property \"%s\"", key),
								 errdetail("It makes the server load code, read or write its own files, run programs or signal itself."),
								 errhint("Ask a superuser to create the connection."),
								 errhidestmt(true)));
					break;
				case PE_PROP_UNLISTED:
					if (!superuser())
						ereport(ERROR,
								(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
								 errmsg("permission denied to set property \"%s\"", key),
								 errdetail("Ordinary roles may set only the properties of librdkafka 2.0.2 that pipeline_ext has reviewed; this one is not among them."),
								 errhint("Ask a superuser to create the connection."),
								 errhidestmt(true)));
					break;
				case PE_PROP_USER:
					break;
			}

			if (for_eventhubs_derived &&
				(strcmp(key, "security.protocol") == 0 ||
				 strcmp(key, "sasl.mechanisms") == 0 ||
				 strcmp(key, "sasl.mechanism") == 0 ||
				 strcmp(key, "sasl.username") == 0 ||
				 strcmp(key, "sasl.password") == 0))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("property \"%s\" is derived from the Event Hubs connection string", key),
						 errhint("Remove it from the options, or use pipeline.create_connection() "
								 "to configure the endpoint by hand."),
						 errhidestmt(true)));

			value = pe_jsonb_scalar_to_cstring(&v, key);
			res = rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr));
			if (res != RD_KAFKA_CONF_OK)
			{
				List	   *secrets = list_make1(value);

				/* librdkafka's reason echoes the value: keep secrets out */
				if (!pe_property_is_secret(key))
					secrets = NIL;

				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for librdkafka property \"%s\"", key),
						 errdetail("%s", pe_redact(errstr, secrets)),
						 errhint("Correct the value; librdkafka's CONFIGURATION.md lists the range of each property."),
						 errhidestmt(true)));
			}
		}
	}
	PG_FINALLY();
	{
		rd_kafka_conf_destroy(conf);
	}
	PG_END_TRY();
}

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

bool
pe_property_is_secret(const char *name)
{
	return strstr(name, "password") != NULL ||
		strstr(name, "secret") != NULL ||
		strcmp(name, "ssl.key.pem") == 0 ||
		strcmp(name, "sasl.oauthbearer.config") == 0;
}

PePropertyAccess
pe_property_access(const char *name)
{
	size_t		len = strlen(name);

	if (strcmp(name, "bootstrap.servers") == 0 ||
		strcmp(name, "metadata.broker.list") == 0 ||
		strcmp(name, "log.queue") == 0 ||
		strcmp(name, "builtin.features") == 0)
		return PE_PROP_MANAGED;

	/*
	 * Properties that load code, run programs or read files of the server
	 * would hand the server's operating-system user to whoever sets them.
	 */
	if (strcmp(name, "plugin.library.paths") == 0 ||
		strcmp(name, "sasl.kerberos.kinit.cmd") == 0 ||
		strcmp(name, "sasl.kerberos.keytab") == 0 ||
		(len > 9 && strcmp(name + len - 9, ".location") == 0))
		return PE_PROP_SUPERUSER;

	return PE_PROP_USER;
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
				case PE_PROP_SUPERUSER:
					if (!superuser() &&
						!(strstr(key, ".location") != NULL &&
						  has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES)))
						ereport(ERROR,
								(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
								 errmsg("permission denied to set property \"%s\"", key),
								 errdetail("It makes the server read its own files or run programs."),
								 errhint("Ask a superuser to create the connection%s.",
										 strstr(key, ".location") ? ", or to grant you pg_read_server_files" : ""),
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

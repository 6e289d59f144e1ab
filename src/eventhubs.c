/*-------------------------------------------------------------------------
 *
 * eventhubs.c
 *	  Azure Event Hubs: parsing a namespace's connection string into what its
 *	  Kafka endpoint needs.  Errors name the part that is wrong, never its
 *	  value.
 *
 * IDENTIFICATION
 *	  src/eventhubs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"

#include "kafka.h"

/*
 * Parse "Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=..;
 * SharedAccessKey=..[;EntityPath=..]".  Errors name the part that is wrong
 * and never include the key.
 */
void
pe_parse_eventhubs(const char *connstr, PeEventHubsConfig *out)
{
	char	   *copy = pstrdup(connstr);
	char	   *part;
	char	   *save = NULL;
	char	   *endpoint = NULL;
	char	   *key_name = NULL;
	char	   *key = NULL;
	char	   *entity = NULL;
	int			partno = 0;
	const char *hint =
		"An Event Hubs connection string looks like "
		"Endpoint=sb://NAMESPACE.servicebus.windows.net/;SharedAccessKeyName=NAME;"
		"SharedAccessKey=KEY[;EntityPath=HUB]; copy it from the namespace's "
		"\"Shared access policies\" page.";

	memset(out, 0, sizeof(*out));

	if (connstr[strspn(connstr, " \t\r\n;")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The string is empty."),
				 errhint("%s", hint), errhidestmt(true)));

	for (part = strtok_r(copy, ";", &save); part; part = strtok_r(NULL, ";", &save))
	{
		char	   *eq;
		char	   *name;
		char	   *value;
		char	  **slot;

		partno++;
		while (*part == ' ' || *part == '\t' || *part == '\r' || *part == '\n')
			part++;
		if (*part == '\0')
			continue;
		eq = strchr(part, '=');
		if (eq == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Event Hubs connection string"),
					 errdetail("Part %d is not of the form Name=Value.", partno),
					 errhint("%s", hint), errhidestmt(true)));
		*eq = '\0';
		name = part;
		value = eq + 1;

		if (pg_strcasecmp(name, "Endpoint") == 0)
			slot = &endpoint;
		else if (pg_strcasecmp(name, "SharedAccessKeyName") == 0)
			slot = &key_name;
		else if (pg_strcasecmp(name, "SharedAccessKey") == 0)
			slot = &key;
		else if (pg_strcasecmp(name, "EntityPath") == 0)
			slot = &entity;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Event Hubs connection string"),
					 errdetail("Unknown part \"%.64s\"; the known parts are Endpoint, SharedAccessKeyName, SharedAccessKey and EntityPath.", name),
					 errhint("%s", hint), errhidestmt(true)));

		if (*slot != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Event Hubs connection string"),
					 errdetail("The %s part appears more than once.", name),
					 errhint("%s", hint), errhidestmt(true)));
		*slot = value;
	}

	if (endpoint == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The Endpoint part is missing."),
				 errhint("%s", hint), errhidestmt(true)));
	if (pg_strncasecmp(endpoint, "sb://", 5) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The Endpoint must start with \"sb://\"."),
				 errhint("%s", hint), errhidestmt(true)));
	{
		char	   *host = endpoint + 5;
		size_t		hlen = strcspn(host, "/");
		bool		ok = hlen > 0 && host[hlen + strspn(host + hlen, "/")] == '\0';

		for (size_t i = 0; ok && i < hlen; i++)
			if (!(isalnum((unsigned char) host[i]) || host[i] == '.' || host[i] == '-'))
				ok = false;
		if (!ok || strchr(host, '.') == NULL || host[0] == '.' || host[0] == '-')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Event Hubs connection string"),
					 errdetail("The Endpoint must be sb:// followed by a namespace host name such as NAMESPACE.servicebus.windows.net, with no port or path."),
					 errhint("%s", hint), errhidestmt(true)));
		out->namespace_host = pnstrdup(host, hlen);
	}

	if (key_name == NULL || *key_name == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The SharedAccessKeyName part is missing or empty."),
				 errhint("%s", hint), errhidestmt(true)));
	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The SharedAccessKey part is missing."),
				 errhint("%s", hint), errhidestmt(true)));
	if (*key == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The SharedAccessKey is empty."),
				 errhint("%s", hint), errhidestmt(true)));
	if (entity != NULL && *entity == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Event Hubs connection string"),
				 errdetail("The EntityPath is empty."),
				 errhint("Leave EntityPath out for a namespace-level connection string."),
				 errhidestmt(true)));

	out->key_name = pstrdup(key_name);
	out->entity_path = entity ? pstrdup(entity) : NULL;
	/* Wipe our copy of the key before it goes back to the allocator. */
	memset(copy, 0, strlen(connstr));
	pfree(copy);
}

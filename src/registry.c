/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  A connection's schema registry, Confluent's REST API: its options
 *	  (beside librdkafka's in the connection's options, and never passed
 *	  to librdkafka), checked when the connection is created.
 *
 *	  schema.registry.url                    http:// or https://, no
 *	                                         credentials in it
 *	  schema.registry.basic.auth.user.info   NAME:PASSWORD, a secret: masked
 *	                                         like sasl.password
 *	  schema.registry.request.timeout.ms     a bound on each request
 *
 * IDENTIFICATION
 *	  src/registry.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "registry.h"

typedef struct PeRegistryProperty
{
	const char *name;
	bool		secret;
} PeRegistryProperty;

static const PeRegistryProperty pe_registry_props[] = {
	{PE_REGISTRY_URL, false},
	{PE_REGISTRY_USER_INFO, true},
	{PE_REGISTRY_TIMEOUT, false},
};

/* Whether name is an option of the registry; *secret whether it is masked. */
bool
pe_registry_property(const char *name, bool *secret)
{
	for (size_t i = 0; i < lengthof(pe_registry_props); i++)
		if (strcmp(name, pe_registry_props[i].name) == 0)
		{
			if (secret)
				*secret = pe_registry_props[i].secret;
			return true;
		}
	return false;
}

/*
 * Check one of the registry's options.  No message here shows the value
 * of the secret one.
 */
void
pe_registry_check_option(const char *name, const char *value)
{
	if (strcmp(name, PE_REGISTRY_URL) == 0)
	{
		const char *authority;

		if (strncmp(value, "http://", 7) == 0)
			authority = value + 7;
		else if (strncmp(value, "https://", 8) == 0)
			authority = value + 8;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must be an http:// or https:// URL", name),
					 errhint("Give the registry's address, for example \"http://registry.example.com:8081\"."),
					 errhidestmt(true)));
		if (authority[0] == '\0' || authority[0] == '/')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" has no host", name),
					 errhint("Give the registry's address, for example \"http://registry.example.com:8081\"."),
					 errhidestmt(true)));
		for (const char *c = value; *c; c++)
			if ((unsigned char) *c <= ' ' || *c == ',')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"%s\" must be one URL without spaces", name),
						 errhint("Give one registry address; a load balancer in front of several registries serves as one."),
						 errhidestmt(true)));
		/* credentials in the URL would be shown to everybody: they have their own, masked, option */
		if (strchr(authority, '@') != NULL && (strchr(authority, '/') == NULL || strchr(authority, '@') < strchr(authority, '/')))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must not hold credentials", name),
					 errhint("Put NAME:PASSWORD in the option \"%s\", which is kept secret.", PE_REGISTRY_USER_INFO),
					 errhidestmt(true)));
	}
	else if (strcmp(name, PE_REGISTRY_USER_INFO) == 0)
	{
		if (strchr(value, ':') == NULL || value[0] == ':')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must be NAME:PASSWORD", name),
					 errhint("Give the registry's user name and password, separated by a colon."),
					 errhidestmt(true)));
	}
	else if (strcmp(name, PE_REGISTRY_TIMEOUT) == 0)
	{
		char	   *end;
		long		ms = strtol(value, &end, 10);

		if (*value == '\0' || *end != '\0' || ms < 1 || ms > 300000)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" must be a number of milliseconds from 1 to 300000", name),
					 errhint("The default is %d.", PE_REGISTRY_TIMEOUT_DEFAULT),
					 errhidestmt(true)));
	}
}

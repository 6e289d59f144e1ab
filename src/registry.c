/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  A connection's schema registry, Confluent's REST API: its options
 *	  (beside librdkafka's in the connection's options, and never passed
 *	  to librdkafka), checked when the connection is created, and fetching
 *	  a writer schema by its id (libcurl).
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

#include <curl/curl.h>

#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "connection.h"
#include "kafka.h"
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

/*
 * Fetching a writer schema by id: GET {url}/schemas/ids/{id}, with the
 * connection's credentials, bounded by its timeout, over http or https only
 * (no redirects followed, no other protocols).  A cancel or SIGTERM ends a
 * request at once.  The caller is told what was found: the schema, that the
 * registry has no such id (Confluent's 40403), or that it could not tell
 * (down, slow, refused the credentials, answered something else); never
 * an error of its own, and no text here shows the credentials.
 */

/* a response's body, bounded */
#define PE_REGISTRY_MAX_BODY (16 * 1024 * 1024)

typedef struct PeHttpBody
{
	StringInfoData buf;
	bool		too_big;
} PeHttpBody;

static size_t
pe_registry_write(char *data, size_t size, size_t nmemb, void *arg)
{
	PeHttpBody *b = arg;
	size_t		n = size * nmemb;

	if (b->buf.len + n > PE_REGISTRY_MAX_BODY)
	{
		b->too_big = true;
		return 0;				/* curl stops */
	}
	appendBinaryStringInfo(&b->buf, data, n);
	return n;
}

/* curl's progress callback: stop a request when the process must stop */
static int
pe_registry_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	(void) arg;
	(void) dltotal;
	(void) dlnow;
	(void) ultotal;
	(void) ulnow;
	return (InterruptPending && (QueryCancelPending || ProcDiePending)) ? 1 : 0;
}

/* One of the registry options of a connection, or NULL. */
const char *
pe_registry_option(PeConnection *conn, const char *name)
{
	ListCell   *lc;

	foreach(lc, conn->props)
	{
		PeProperty *p = lfirst(lc);

		if (strcmp(p->name, name) == 0)
			return p->value;
	}
	return NULL;
}

/* A field of a registry's JSON answer as text (a string's, or a number's), or NULL. */
static char *
pe_registry_field(const char *body, const char *key)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile text = NULL;

	PG_TRY();
	{
		Jsonb	   *doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
		JsonbValue	k;
		JsonbValue *v;

		if (JB_ROOT_IS_OBJECT(doc))
		{
			k.type = jbvString;
			k.val.string.val = (char *) key;
			k.val.string.len = strlen(key);
			v = findJsonbValueFromContainer(&doc->root, JB_FOBJECT, &k);
			if (v && v->type == jbvString)
				text = pnstrdup(v->val.string.val, v->val.string.len);
			else if (v && v->type == jbvNumeric)
				text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		}
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		text = NULL;
	}
	PG_END_TRY();
	return text;
}

/* Confluent's error_code in an error answer, or 0. */
static int
pe_registry_error_code(const char *body)
{
	char	   *code = pe_registry_field(body, "error_code");

	return code ? atoi(code) : 0;
}

/*
 * One request to a connection's registry: GET path, or POST post_body
 * (JSON) to it.  False, with *why, when no answer came; else the answer's
 * status and body.
 */
static bool
pe_registry_request(PeConnection *conn, const char *path, const char *post_body, long *status, char **answer,
					char **why)
{
	const char *url = pe_registry_option(conn, PE_REGISTRY_URL);
	const char *user = pe_registry_option(conn, PE_REGISTRY_USER_INFO);
	const char *timeout = pe_registry_option(conn, PE_REGISTRY_TIMEOUT);
	long		timeout_ms = timeout ? atol(timeout) : PE_REGISTRY_TIMEOUT_DEFAULT;
	static bool curl_ready = false;
	CURL	   *curl;
	CURLcode	rc;
	char		errbuf[CURL_ERROR_SIZE];
	struct curl_slist *headers = NULL;
	PeHttpBody	body;
	size_t		ulen;

	*status = 0;
	*answer = NULL;
	*why = NULL;
	if (url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("connection \"%s\" has no schema registry", conn->name),
				 errhint("Avro messages name their schema by id: create the connection with the option \"%s\".",
						 PE_REGISTRY_URL)));
	if (!curl_ready)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			elog(ERROR, "could not initialize libcurl");
		curl_ready = true;
	}
	curl = curl_easy_init();
	if (curl == NULL)
		elog(ERROR, "could not start a libcurl request");

	initStringInfo(&body.buf);
	body.too_big = false;
	errbuf[0] = '\0';
	ulen = strlen(url);
	while (ulen > 0 && url[ulen - 1] == '/')
		ulen--;
	headers = curl_slist_append(headers, "Accept: application/vnd.schemaregistry.v1+json, application/json");
	if (post_body)
	{
		headers = curl_slist_append(headers, "Content-Type: application/vnd.schemaregistry.v1+json");
		(void) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, post_body);
	}
	(void) curl_easy_setopt(curl, CURLOPT_URL, psprintf("%.*s%s", (int) ulen, url, path));
	(void) curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	(void) curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	(void) curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	(void) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	(void) curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	(void) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	(void) curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, pe_registry_write);
	(void) curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
	(void) curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	(void) curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, pe_registry_progress);
	(void) curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	if (user)
	{
		(void) curl_easy_setopt(curl, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
		(void) curl_easy_setopt(curl, CURLOPT_USERPWD, user);
	}

	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		(void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	CHECK_FOR_INTERRUPTS();

	if (rc != CURLE_OK)
	{
		/* libcurl's own texts name the host, never the credentials (not in the URL) */
		*why = body.too_big ? psprintf("the registry's answer was larger than %d bytes", PE_REGISTRY_MAX_BODY)
			: pe_redact(errbuf[0] ? errbuf : curl_easy_strerror(rc), pe_connection_secrets(conn));
		pfree(body.buf.data);
		return false;
	}
	*answer = body.buf.data;
	return true;
}

PeRegistryAnswer
pe_registry_fetch_schema(PeConnection *conn, int32 id, char **schema_json, char **why)
{
	long		status;
	char	   *body;

	*schema_json = NULL;
	if (!pe_registry_request(conn, psprintf("/schemas/ids/%d", id), NULL, &status, &body, why))
		return PE_REGISTRY_UNAVAILABLE;
	if (status == 200)
	{
		*schema_json = pe_registry_field(body, "schema");
		if (*schema_json)
			return PE_REGISTRY_FOUND;
		*why = psprintf("the answer for schema id %d has no \"schema\"", id);
	}
	else if (status == 404 && pe_registry_error_code(body) == 40403)
	{
		*why = psprintf("the schema registry has no schema with id %d", id);
		return PE_REGISTRY_NOT_FOUND;
	}
	else if (status == 401 || status == 403)
		*why = psprintf("the schema registry refused the connection's credentials (HTTP %ld)", status);
	else
		*why = psprintf("the schema registry answered HTTP %ld for schema id %d", status, id);
	return PE_REGISTRY_UNAVAILABLE;
}

/* The path of a subject's resource: /subjects/{subject, percent-encoded}{rest}. */
static char *
pe_registry_subject_path(const char *subject, const char *rest)
{
	CURL	   *curl = curl_easy_init();
	char	   *escaped;
	char	   *path;

	if (curl == NULL)
		elog(ERROR, "could not start a libcurl request");
	escaped = curl_easy_escape(curl, subject, 0);
	curl_easy_cleanup(curl);
	if (escaped == NULL)
		elog(ERROR, "could not encode a subject's name");
	path = psprintf("/subjects/%s%s", escaped, rest);
	curl_free(escaped);
	return path;
}

/*
 * A subject's latest version (GET /subjects/{subject}/versions/latest):
 * PE_REGISTRY_NOT_FOUND when the registry has no such subject.
 */
PeRegistryAnswer
pe_registry_latest(PeConnection *conn, const char *subject, int32 *id, char **schema_json, char **why)
{
	long		status;
	char	   *body;
	char	   *text;
	char	   *path = pe_registry_subject_path(subject, "/versions/latest");

	*schema_json = NULL;
	if (!pe_registry_request(conn, path, NULL, &status, &body, why))
		return PE_REGISTRY_UNAVAILABLE;
	if (status == 200 && (text = pe_registry_field(body, "id")) != NULL &&
		(*schema_json = pe_registry_field(body, "schema")) != NULL)
	{
		*id = (int32) atol(text);
		return PE_REGISTRY_FOUND;
	}
	if (status == 404 && pe_registry_error_code(body) == 40401)
	{
		*why = psprintf("the schema registry has no subject \"%s\"", subject);
		return PE_REGISTRY_NOT_FOUND;
	}
	*why = psprintf("the schema registry answered HTTP %ld for the latest version of subject \"%s\"", status, subject);
	return PE_REGISTRY_UNAVAILABLE;
}

/*
 * For producing: the id of a subject's schema, registered (schema_json
 * given: POST /subjects/{subject}/versions, which returns the id of an
 * identical schema already there) or its latest version (GET
 * /subjects/{subject}/versions/latest, *schema_json set).  Errors say what
 * the registry said.
 */
int32
pe_registry_subject_schema(PeConnection *conn, const char *subject, char **schema_json)
{
	long		status;
	char	   *body;
	char	   *why;
	char	   *path = pe_registry_subject_path(subject, *schema_json ? "/versions" : "/versions/latest");
	char	   *id;

	if (*schema_json)
	{
		StringInfoData req;

		initStringInfo(&req);
		appendStringInfoString(&req, "{\"schema\": ");
		escape_json(&req, *schema_json);
		appendStringInfoChar(&req, '}');
		if (!pe_registry_request(conn, path, req.data, &status, &body, &why))
			goto unavailable;
	}
	else if (!pe_registry_request(conn, path, NULL, &status, &body, &why))
		goto unavailable;

	if (status == 200 && (id = pe_registry_field(body, "id")) != NULL)
	{
		if (*schema_json == NULL && (*schema_json = pe_registry_field(body, "schema")) == NULL)
			elog(ERROR, "the schema registry's latest version of subject \"%s\" has no schema", subject);
		return (int32) atol(id);
	}
	if (status == 401 || status == 403)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("the schema registry of connection \"%s\" refused its credentials (HTTP %ld)", conn->name, status),
				 errhint("Check the connection's \"%s\".", PE_REGISTRY_USER_INFO)));
	{
		int			code = pe_registry_error_code(body);
		char	   *message = pe_registry_field(body, "message");

		if (message)
			message = pe_redact(message, pe_connection_secrets(conn));

		ereport(ERROR,
				(errcode(code == 409 || code == 42201 || code == 40401 ? ERRCODE_INVALID_PARAMETER_VALUE
						 : ERRCODE_CONNECTION_FAILURE),
				 code == 409 ? errmsg("the schema is incompatible with subject \"%s\"", subject)
				 : code == 42201 ? errmsg("the schema registry finds the schema invalid")
				 : code == 40401 ? errmsg("subject \"%s\" is not in the schema registry", subject)
				 : errmsg("the schema registry answered HTTP %ld for subject \"%s\"", status, subject),
				 message ? errdetail("The registry said: %s", message) : 0,
				 code == 40401 ? errhint("Pass the schema, to register it.")
				 : code == 409 ? errhint("Change the schema as the subject's compatibility level allows, or change the level.")
				 : 0));
	}
unavailable:
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not reach the schema registry of connection \"%s\"", conn->name),
			 errdetail("%s", why)));
	return -1;					/* keep the compiler quiet */
}

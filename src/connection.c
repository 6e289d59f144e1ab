/*-------------------------------------------------------------------------
 *
 * connection.c
 *	  Connections: named Kafka (or Azure Event Hubs) endpoints with their
 *	  librdkafka properties, stored in pipeline.connection.
 *
 *	  The catalog table is readable and writable only by the extension's
 *	  owner.  The SQL functions here run as the caller, check what the caller
 *	  may do, and then read or write the catalog as the table's owner.  A
 *	  connection belongs to the role that created it; that role, its members
 *	  and superusers may use it and see its secrets; everybody else sees the
 *	  secrets masked.
 *
 * IDENTIFICATION
 *	  src/connection.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "connection.h"
#include "kafka.h"
#include "producer.h"


PG_FUNCTION_INFO_V1(pe_create_connection);
PG_FUNCTION_INFO_V1(pe_create_eventhubs_connection);
PG_FUNCTION_INFO_V1(pe_drop_connection);
PG_FUNCTION_INFO_V1(pe_connection_config);
PG_FUNCTION_INFO_V1(pe_mask_options);

Oid
pe_connection_catalog_relid(void)
{
	Oid			nsp = get_namespace_oid(PE_SCHEMA, true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("connection", nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension pipeline_ext is not installed in this database"),
				 errhint("Run CREATE EXTENSION pipeline_ext.")));
	return relid;
}

/* Run the catalog statements of one call as the catalog table's owner. */
void
pe_catalog_begin(PeCatalogAccess *acc)
{
	HeapTuple	tup;
	Oid			owner;
	Oid			relid = pe_connection_catalog_relid();

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&acc->save_userid, &acc->save_sec);
	SetUserIdAndSecContext(owner, acc->save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

void
pe_catalog_end(PeCatalogAccess *acc)
{
	SPI_finish();
	SetUserIdAndSecContext(acc->save_userid, acc->save_sec);
}

bool
pe_may_see_secrets(Oid owner)
{
	return superuser() || has_privs_of_role(GetUserId(), owner);
}

static void
pe_check_name(const char *name)
{
	size_t		len = strlen(name);

	if (len == 0 || len > 63 || strspn(name, "abcdefghijklmnopqrstuvwxyz"
									   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid connection name \"%.80s\"", name),
				 errhint("Use 1 to 63 letters, digits, \"_\", \".\" or \"-\".")));
}

static void
pe_insert_connection(const char *name, const char *kind, const char *bootstrap,
					 Jsonb *options, Jsonb *derived, const char *entity)
{
	PeCatalogAccess acc;
	Oid			argtypes[7] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
	Datum		values[7];
	char		nulls[7] = "       ";
	Oid			owner = GetUserId();
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(owner);
	values[2] = CStringGetTextDatum(kind);
	values[3] = CStringGetTextDatum(bootstrap);
	values[4] = JsonbPGetDatum(options);
	values[5] = JsonbPGetDatum(derived);
	if (entity)
		values[6] = CStringGetTextDatum(entity);
	else
		nulls[6] = 'n';

	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args("INSERT INTO pipeline.connection "
							   "(name, owner, kind, bootstrap_servers, options, derived, eventhubs_entity) "
							   "VALUES ($1, $2, $3, $4, $5, $6, $7) "
							   "ON CONFLICT (name) DO NOTHING",
							   7, argtypes, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "could not insert connection: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("connection \"%s\" already exists", name),
				 errhint("Drop it with pipeline.drop_connection() first, or choose another name."),
				 errhidestmt(true)));
	pe_catalog_end(&acc);

	/* Cached producers of every backend re-read the catalog at commit. */
	CacheInvalidateRelcacheByRelid(pe_connection_catalog_relid());
}

/*
 * Run a function that received a secret (a SASL password in its options,
 * an Event Hubs key in its connection string) so that every error it
 * raises, its own or one from deeper down (a catalog insert, librdkafka's
 * checks, out of memory), hides the statement: PostgreSQL would otherwise
 * log the statement, secret included, beside the error.
 */
static Datum
pe_call_hiding_statement(PGFunction fn, FunctionCallInfo fcinfo)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		result = (Datum) 0;

	PG_TRY();
	{
		result = fn(fcinfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		ReThrowError(edata);
	}
	PG_END_TRY();
	return result;
}

static Datum
pe_create_connection_checked(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *bootstrap;
	Jsonb	   *options;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection name and bootstrap_servers must not be null"),
				 errhidestmt(true)));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bootstrap = text_to_cstring(PG_GETARG_TEXT_PP(1));
	options = PG_ARGISNULL(2) ? DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")))
		: PG_GETARG_JSONB_P(2);

	pe_check_name(name);
	if (bootstrap[strspn(bootstrap, " \t,")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bootstrap_servers must list at least one broker"),
				 errhint("Give a comma-separated list of host:port pairs, for example 'kafka1:9092,kafka2:9092'."),
				 errhidestmt(true)));
	{
		/* Let librdkafka judge the broker list too. */
		rd_kafka_conf_t *conf = rd_kafka_conf_new();
		char		errstr[512];
		rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap,
												   errstr, sizeof(errstr));

		rd_kafka_conf_destroy(conf);
		if (res != RD_KAFKA_CONF_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid bootstrap_servers"),
					 errdetail("%s", pe_redact(errstr, NIL)),
					 errhidestmt(true)));
	}
	pe_validate_options(options, false);

	pe_insert_connection(name, "kafka", bootstrap, options,
						 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"))),
						 NULL);
	PG_RETURN_VOID();
}

/* Build a jsonb object from alternating key, value C strings. */
static Jsonb *
pe_jsonb_from_pairs(int n, const char **pairs)
{
	JsonbParseState *state = NULL;
	JsonbValue *res;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
	{
		JsonbValue	k,
					v;

		k.type = jbvString;
		k.val.string.val = (char *) pairs[2 * i];
		k.val.string.len = strlen(pairs[2 * i]);
		v.type = jbvString;
		v.val.string.val = (char *) pairs[2 * i + 1];
		v.val.string.len = strlen(pairs[2 * i + 1]);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

Datum
pe_create_connection(PG_FUNCTION_ARGS)
{
	return pe_call_hiding_statement(pe_create_connection_checked, fcinfo);
}

static Datum
pe_create_eventhubs_connection_checked(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *connstr;
	Jsonb	   *options;
	PeEventHubsConfig eh;
	char	   *bootstrap;
	const char *pairs[16];

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection name and connection_string must not be null"),
				 errhidestmt(true)));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	connstr = text_to_cstring(PG_GETARG_TEXT_PP(1));
	options = PG_ARGISNULL(2) ? DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")))
		: PG_GETARG_JSONB_P(2);

	pe_check_name(name);
	pe_parse_eventhubs(connstr, &eh);
	pe_validate_options(options, true);

	/*
	 * What Event Hubs documents for Kafka clients: TLS on port 9093, SASL
	 * PLAIN with the literal user name $ConnectionString and the whole
	 * connection string as the password.  The keepalive and the idle and
	 * metadata ages stay under the 240 s after which Event Hubs closes idle
	 * connections.
	 */
	bootstrap = psprintf("%s:9093", eh.namespace_host);
	pairs[0] = "security.protocol";
	pairs[1] = "SASL_SSL";
	pairs[2] = "sasl.mechanisms";
	pairs[3] = "PLAIN";
	pairs[4] = "sasl.username";
	pairs[5] = "$ConnectionString";
	pairs[6] = "sasl.password";
	pairs[7] = connstr;
	pairs[8] = "socket.keepalive.enable";
	pairs[9] = "true";
	pairs[10] = "metadata.max.age.ms";
	pairs[11] = "180000";
	pairs[12] = "connections.max.idle.ms";
	pairs[13] = "180000";

	pe_insert_connection(name, "eventhubs", bootstrap, options,
						 pe_jsonb_from_pairs(7, pairs), eh.entity_path);
	PG_RETURN_VOID();
}

Datum
pe_create_eventhubs_connection(PG_FUNCTION_ARGS)
{
	return pe_call_hiding_statement(pe_create_eventhubs_connection_checked, fcinfo);
}

/*
 * The names of the rows of pipeline.<table> whose <column> is connection
 * name, comma-separated, or NULL: none, or no such table (an older
 * version's catalog).  SPI connected.
 */
static char *
pe_connection_users(const char *table, const char *column, Datum name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {name};

	if (!OidIsValid(get_relname_relid(table, get_namespace_oid(PE_SCHEMA, false))))
		return NULL;
	if (SPI_execute_with_args(psprintf("SELECT pg_catalog.string_agg(name, ', ' ORDER BY name) FROM pipeline.%s "
									   "WHERE %s OPERATOR(pg_catalog.=) $1", table, column),
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

Datum
pe_drop_connection(PG_FUNCTION_ARGS)
{
	char	   *name;
	PeConnection *conn;
	PeCatalogAccess acc;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	char	   *users;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	conn = pe_connection_lookup(name, false);
	if (!pe_may_see_secrets(conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of connection \"%s\"", name),
				 errhint("Only the role that created the connection, its members, or a superuser can drop it.")));

	values[0] = CStringGetTextDatum(name);
	pe_catalog_begin(&acc);
	/* (pipeline.consumer exists from version 0.2.0 on) */
	users = pe_connection_users("consumer", "connection", values[0]);
	if (users != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("connection \"%s\" is used by consumers", name),
				 errdetail("Consumers using it: %s.", users),
				 errhint("Drop those consumers first with pipeline.drop_consumer().")));
	/* (pipeline.aggregate exists from version 0.6.0 on) */
	users = pe_connection_users("aggregate", "emit_connection", values[0]);
	if (users != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("connection \"%s\" is used by aggregates", name),
				 errdetail("Aggregates emitting through it: %s.", users),
				 errhint("Point them at another connection with pipeline.alter_aggregate(name, emit_connection => ...), "
						 "or drop them with pipeline.drop_aggregate().")));
	rc = SPI_execute_with_args("DELETE FROM pipeline.connection WHERE name OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "could not delete connection: %s", SPI_result_code_string(rc));
	pe_catalog_end(&acc);

	CacheInvalidateRelcacheByRelid(pe_connection_catalog_relid());
	PG_RETURN_VOID();
}

static void
pe_append_jsonb_props(List **props, Jsonb *jb, const char *source)
{
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			PeProperty *p = palloc(sizeof(PeProperty));

			p->name = key;
			p->value = pe_jsonb_scalar_to_cstring(&v, key);
			p->source = source;
			*props = lappend(*props, p);
		}
	}
}

/*
 * Read a connection from the catalog; props = bootstrap.servers, then the
 * properties derived from an Event Hubs string, then the user's options.
 */
PeConnection *
pe_connection_lookup(const char *name, bool missing_ok)
{
	PeCatalogAccess acc;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	PeConnection *conn = NULL;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(name);
	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args("SELECT owner, kind, bootstrap_servers, derived, options "
							   "FROM pipeline.connection WHERE name OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read connection: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext spi = MemoryContextSwitchTo(caller);
		PeProperty *boot = palloc(sizeof(PeProperty));

		conn = palloc0(sizeof(PeConnection));
		conn->name = pstrdup(name);
		conn->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		conn->kind = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		boot->name = "bootstrap.servers";
		boot->value = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		boot->source = "bootstrap_servers";
		conn->props = list_make1(boot);
		pe_append_jsonb_props(&conn->props,
							  DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 4, &isnull)),
							  "eventhubs");
		pe_append_jsonb_props(&conn->props,
							  DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 5, &isnull)),
							  "options");
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);

	if (conn == NULL && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connection \"%s\" does not exist", name),
				 errhint("Create it with pipeline.create_connection() or "
						 "pipeline.create_eventhubs_connection(); pipeline.connections lists the existing ones.")));
	return conn;
}

/* May the current role use this connection to produce or consume? */
void
pe_check_connection_use(PeConnection *conn)
{
	if (!pe_may_see_secrets(conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for connection \"%s\"", conn->name),
				 errhint("Connections are used by their owner (%s), members of that role, and superusers; "
						 "ask the owner to grant you membership.",
						 GetUserNameFromId(conn->owner, true) ? GetUserNameFromId(conn->owner, true) : "unknown")));
}

List *
pe_connection_secrets(PeConnection *conn)
{
	List	   *secrets = NIL;
	ListCell   *lc;

	foreach(lc, conn->props)
	{
		PeProperty *p = lfirst(lc);

		if (pe_property_is_secret(p->name))
			secrets = lappend(secrets, p->value);
	}
	return secrets;
}

/*
 * pipeline.connection_config(name, include_defaults): the properties a
 * client of this connection is created with, secrets masked for roles that
 * may not see them.
 */
Datum
pe_connection_config(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name;
	bool		include_defaults = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	PeConnection *conn;
	bool		may_see;
	List	   *props;
	ListCell   *lc;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	conn = pe_connection_lookup(name, false);
	may_see = pe_may_see_secrets(conn->owner);

	InitMaterializedSRF(fcinfo, 0);

	/* pipeline_ext's producer defaults apply unless the connection sets them */
	props = list_copy(conn->props);
	foreach(lc, pe_producer_default_props())
	{
		PeProperty *d = lfirst(lc);
		ListCell   *lc2;
		bool		overridden = false;

		foreach(lc2, conn->props)
			if (strcmp(((PeProperty *) lfirst(lc2))->name, d->name) == 0)
				overridden = true;
		if (!overridden)
			props = lappend(props, d);
	}

	if (include_defaults)
	{
		rd_kafka_conf_t *conf = rd_kafka_conf_new();
		const char **dump;
		size_t		cnt;

		dump = rd_kafka_conf_dump(conf, &cnt);
		for (size_t i = 0; i + 1 < cnt; i += 2)
		{
			ListCell   *lc2;
			bool		seen = false;

			foreach(lc2, props)
				if (strcmp(((PeProperty *) lfirst(lc2))->name, dump[i]) == 0 ||
					(strcmp(dump[i], "metadata.broker.list") == 0 &&
					 strcmp(((PeProperty *) lfirst(lc2))->name, "bootstrap.servers") == 0))
					seen = true;
			if (!seen)
			{
				PeProperty *p = palloc(sizeof(PeProperty));

				p->name = pstrdup(dump[i]);
				p->value = pstrdup(dump[i + 1]);
				p->source = "librdkafka";
				props = lappend(props, p);
			}
		}
		rd_kafka_conf_dump_free(dump, cnt);
		rd_kafka_conf_destroy(conf);
	}

	foreach(lc, props)
	{
		PeProperty *p = lfirst(lc);
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(p->name);
		values[1] = CStringGetTextDatum((!may_see && pe_property_is_secret(p->name)) ? PE_MASK : p->value);
		values[2] = CStringGetTextDatum(p->source);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * pipeline._mask_options(options jsonb, owner oid): the view's helper.
 */
Datum
pe_mask_options(PG_FUNCTION_ARGS)
{
	Jsonb	   *options = PG_GETARG_JSONB_P(0);
	Oid			owner = PG_GETARG_OID(1);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbParseState *state = NULL;
	JsonbValue *res = NULL;
	bool		mask_next = false;

	if (pe_may_see_secrets(owner))
		PG_RETURN_JSONB_P(options);

	it = JsonbIteratorInit(&options->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *key = pnstrdup(v.val.string.val, v.val.string.len);

			mask_next = pe_property_is_secret(key);
			res = pushJsonbValue(&state, tok, &v);
		}
		else if (tok == WJB_VALUE && mask_next)
		{
			JsonbValue	m;

			m.type = jbvString;
			m.val.string.val = PE_MASK;
			m.val.string.len = strlen(PE_MASK);
			res = pushJsonbValue(&state, tok, &m);
			mask_next = false;
		}
		else
			res = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	PG_RETURN_JSONB_P(JsonbValueToJsonb(res));
}

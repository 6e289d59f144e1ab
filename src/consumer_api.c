/*-------------------------------------------------------------------------
 *
 * consumer_api.c
 *	  The SQL functions that manage consumers: create_consumer(),
 *	  start_consumer(), stop_consumer(), drop_consumer().  They run as the
 *	  caller and check what the caller may do: use the connection, write the
 *	  target the way the consumer will.  The catalog is then written as its
 *	  owner, as for connections.  The background workers notice changes
 *	  through their database's manager, which these functions wake at commit.
 *
 * IDENTIFICATION
 *	  src/consumer_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "registry.h"
#include "aggregate.h"
#include "consumer.h"
#include "datapath.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(pe_create_consumer);

PG_FUNCTION_INFO_V1(pe_start_consumer);

PG_FUNCTION_INFO_V1(pe_stop_consumer);

PG_FUNCTION_INFO_V1(pe_drop_consumer);

static bool wake_at_commit = false;

static bool xact_cb_registered = false;

/* consumers whose stored offsets this transaction moved (TopMemoryContext) */
static List *reseek_at_commit = NIL;

/* consumers this transaction dropped (TopMemoryContext) */
typedef struct PeDropped
{
	int64		id;
	int			nest_level;		/* the subtransaction that dropped it */
} PeDropped;

static List *dropped_at_commit = NIL;

/* A rolled-back savepoint takes back the drops made under it. */
static void
pe_consumer_subxact_cb(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;
	int			level = GetCurrentTransactionNestLevel();

	(void) mySubid;
	(void) parentSubid;
	(void) arg;
	foreach(lc, dropped_at_commit)
	{
		PeDropped  *d = lfirst(lc);

		if (d->nest_level < level)
			continue;
		if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			dropped_at_commit = foreach_delete_current(dropped_at_commit, lc);
			pfree(d);
		}
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			d->nest_level = level - 1;
	}
}

static void
pe_consumer_xact_cb(XactEvent event, void *arg)
{
	(void) arg;
	if (event == XACT_EVENT_COMMIT && reseek_at_commit != NIL)
	{
		/* tell the running slots that their stored offsets moved */
		LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < pe_shared->max_slots; i++)
		{
			PeSlot	   *s = &pe_shared->slots[i];
			ListCell   *lc;

			if (s->state == PE_SLOT_FREE || s->dboid != MyDatabaseId)
				continue;
			foreach(lc, reseek_at_commit)
				if (strcmp(s->consumer, (char *) lfirst(lc)) == 0)
					s->reseeks++;
		}
		LWLockRelease(pe_shared->lock);
	}
	if (event == XACT_EVENT_COMMIT)
	{
		ListCell   *lc;

		/* a dropped consumer's figures and errors go with it */
		foreach(lc, dropped_at_commit)
			pe_slots_forget_consumer(MyDatabaseId, ((PeDropped *) lfirst(lc))->id);
	}
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		pe_wake_manager(MyDatabaseId);
	/* (a prepared transaction's drop is left to the manager) */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE)
	{
		wake_at_commit = false;
		list_free_deep(reseek_at_commit);
		reseek_at_commit = NIL;
		list_free_deep(dropped_at_commit);
		dropped_at_commit = NIL;
	}
}

/* Wake this database's manager once the current transaction commits. */
static void
pe_wake_at_commit(void)
{
	if (!xact_cb_registered)
	{
		RegisterXactCallback(pe_consumer_xact_cb, NULL);
		RegisterSubXactCallback(pe_consumer_subxact_cb, NULL);
		xact_cb_registered = true;
	}
	wake_at_commit = true;
}

/* At commit, tell the consumer's running slots that its stored offsets moved (any number of consumers a transaction). */
void
pe_reseek_at_commit(const char *name)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	pe_wake_at_commit();
	reseek_at_commit = lappend(reseek_at_commit, pstrdup(name));
	MemoryContextSwitchTo(old);
}

static void
pe_check_consumer_name(const char *name)
{
	size_t		len = strlen(name);

	if (len == 0 || len > 48 || strspn(name, "abcdefghijklmnopqrstuvwxyz"
									   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid consumer name \"%.80s\"", name),
				 errhint("Use 1 to 48 letters, digits, \"_\", \".\" or \"-\".")));
}

static const char *
pe_text_arg(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

static void
pe_check_start_offset(const char *s)
{
	if (strcmp(s, "earliest") == 0 || strcmp(s, "latest") == 0)
		return;
	if (!isdigit((unsigned char) s[0]))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid start_offset \"%s\"", s),
				 errhint("Use 'earliest', 'latest', or an ISO timestamp such as '2026-01-31 12:00:00+00'.")));
	/* raises the timestamp input error when it is not one */
	(void) DirectFunctionCall3(timestamptz_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/*
 * A consumer created without a parallelism gets
 * pipeline_ext.default_parallelism, by default 0, 'auto': one slot per
 * core, since a slot applies on one core (its own backend) while librdkafka
 * fetches and decodes on threads; at most PE_AUTO_PARALLELISM_MAX, since
 * each slot is a background worker (max_worker_processes).  A slot that
 * gets no partition (more slots than partitions) waits idle.
 */
#define PE_AUTO_PARALLELISM_MAX 4

static int
pe_auto_parallelism(void)
{
	long		cores = sysconf(_SC_NPROCESSORS_ONLN);

	if (pe_default_parallelism > 0)
		return pe_default_parallelism;
	return (int) Max(1, Min(cores, PE_AUTO_PARALLELISM_MAX));
}

Datum
pe_create_consumer(PG_FUNCTION_ARGS)
{
	PeConsumerDef def;
	PeConnection *conn;
	const char *mode;
	const char *on_error;
	const char *format;
	Interval   *timeout;
	int64		timeout_ms;
	bool		start;
	PeCatalogAccess acc;
	Oid			argtypes[18] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, REGCLASSOID, TEXTOID, TEXTOID,
	TEXTARRAYOID, TEXTOID, INT4OID, TEXTOID, INT4OID, INTERVALOID, JSONBOID, TEXTOID, TEXTOID,
	BOOLOID, JSONBOID};
	Datum		values[19];
	char		nulls[19];
	int			rc;

	pe_require_preload();
	memset(&def, 0, sizeof(def));
	def.name = (char *) pe_text_arg(fcinfo, 0, "consumer name");
	pe_check_consumer_name(def.name);
	def.connection = (char *) pe_text_arg(fcinfo, 1, "connection");
	def.topic = (char *) pe_text_arg(fcinfo, 2, "topic");
	if (def.topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be empty")));
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target must not be null")));
	def.target = PG_GETARG_OID(3);
	format = pe_text_arg(fcinfo, 4, "format");
	def.format = pe_parse_format(format);
	mode = pe_text_arg(fcinfo, 5, "mode");
	if (strcmp(mode, "upsert") != 0 && strcmp(mode, "append") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown mode \"%s\"", mode),
				 errhint("Use 'upsert' (one row per key, newest wins) or 'append' (one row per message).")));
	def.upsert = (strcmp(mode, "upsert") == 0);
	def.key_columns = PG_ARGISNULL(6) ? NULL : PG_GETARG_ARRAYTYPE_P(6);
	def.delivery = (char *) pe_text_arg(fcinfo, 7, "delivery");
	if (strcmp(def.delivery, "exactly_once") != 0 && strcmp(def.delivery, "at_least_once") != 0 &&
		strcmp(def.delivery, "at_most_once") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown delivery \"%s\"", def.delivery),
				 errhint("Use 'exactly_once', 'at_least_once' or 'at_most_once'.")));
	def.parallelism = PG_ARGISNULL(8) ? pe_auto_parallelism() : PG_GETARG_INT32(8);
	if (def.parallelism < 1 || def.parallelism > 64)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("parallelism must be between 1 and 64"),
				 errhint("Each slot is one background worker; max_worker_processes must leave room for them.")));
	def.start_offset = (char *) pe_text_arg(fcinfo, 9, "start_offset");
	pe_check_start_offset(def.start_offset);
	def.batch_size = PG_ARGISNULL(10) ? 50000 : PG_GETARG_INT32(10);	/* (NULL: the SQL default, since 0.4.0) */
	if (def.batch_size < 1 || def.batch_size > 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and 1000000")));
	if (PG_ARGISNULL(11))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("batch_timeout must not be null")));
	timeout = PG_GETARG_INTERVAL_P(11);
	timeout_ms = (timeout->time + (int64) timeout->day * USECS_PER_DAY +
				  (int64) timeout->month * 30 * USECS_PER_DAY) / 1000;
	if (timeout_ms < 1 || timeout_ms > 3600 * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_timeout must be between 1 millisecond and 1 hour")));
	def.batch_timeout_ms = (int) timeout_ms;
	def.column_map = PG_ARGISNULL(12) ? NULL : PG_GETARG_JSONB_P(12);
	def.group_id = PG_ARGISNULL(13) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(13));
	if (def.group_id && def.group_id[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_id must not be empty"),
				 errhint("Pass NULL for manual partition assignment.")));
	on_error = pe_text_arg(fcinfo, 14, "on_error");
	if (strcmp(on_error, "dead_letter") != 0 && strcmp(on_error, "stop") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown on_error \"%s\"", on_error),
				 errhint("Use 'dead_letter' (record the message in pipeline.dead_letters and go on) or 'stop'.")));
	def.stop_on_error = (strcmp(on_error, "stop") == 0);
	def.delete_on_tombstone = PG_ARGISNULL(15) ? false : PG_GETARG_BOOL(15);
	def.format_options = PG_ARGISNULL(16) ? NULL : PG_GETARG_JSONB_P(16);
	start = PG_ARGISNULL(17) ? true : PG_GETARG_BOOL(17);
	def.owner = GetUserId();
	def.enabled = start;

	conn = pe_connection_lookup(def.connection, false);
	pe_check_connection_use(conn);

	/* the target, its columns, keys and the caller's privileges */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		PeTarget   *t = pe_target_open(&def, true);

		if ((def.format == PE_FORMAT_AVRO || t->key_avro) && pe_registry_option(conn, PE_REGISTRY_URL) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("connection \"%s\" has no schema registry", conn->name),
					 errhint("Avro messages name their writer schema by its id in a registry: create the connection "
							 "with the option \"%s\".", PE_REGISTRY_URL)));
		pe_target_close(t);
	}
	SPI_finish();

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(def.name);
	values[1] = ObjectIdGetDatum(def.owner);
	values[2] = CStringGetTextDatum(def.connection);
	values[3] = CStringGetTextDatum(def.topic);
	values[4] = ObjectIdGetDatum(def.target);
	values[5] = CStringGetTextDatum(format);
	values[6] = CStringGetTextDatum(mode);
	if (def.key_columns)
		values[7] = PointerGetDatum(def.key_columns);
	else
		nulls[7] = 'n';
	values[8] = CStringGetTextDatum(def.delivery);
	values[9] = Int32GetDatum(def.parallelism);
	values[10] = CStringGetTextDatum(def.start_offset);
	values[11] = Int32GetDatum(def.batch_size);
	values[12] = IntervalPGetDatum(timeout);
	if (def.column_map)
		values[13] = JsonbPGetDatum(def.column_map);
	else
		nulls[13] = 'n';
	if (def.group_id)
		values[14] = CStringGetTextDatum(def.group_id);
	else
		nulls[14] = 'n';
	values[15] = CStringGetTextDatum(on_error);
	values[16] = BoolGetDatum(def.delete_on_tombstone);
	values[17] = def.format_options ? JsonbPGetDatum(def.format_options)
		: DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	values[18] = BoolGetDatum(start);

	pe_catalog_begin(&acc);
	{
		Oid			types[19];

		memcpy(types, argtypes, sizeof(argtypes));
		types[18] = BOOLOID;
		rc = SPI_execute_with_args("INSERT INTO pipeline.consumer (name, owner, connection, topic, target, format, mode, "
								   "key_columns, delivery, parallelism, start_offset, batch_size, batch_timeout, "
								   "column_map, group_id, on_error, delete_on_tombstone, format_options, enabled) "
								   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) "
								   "ON CONFLICT (name) DO NOTHING",
								   19, types, values, nulls, false, 0);
	}
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "could not insert consumer: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("consumer \"%s\" already exists", def.name),
				 errhint("Drop it with pipeline.drop_consumer() first, or choose another name.")));
	pe_catalog_end(&acc);

	if (start)
		pe_wake_at_commit();
	PG_RETURN_VOID();
}

PeConsumerDef *
pe_consumer_for_owner(const char *name, const char *action)
{
	PeConsumerDef *def = pe_consumer_read(name, false);

	if (!pe_may_see_secrets(def->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of consumer \"%s\" to %s", name, action),
				 errhint("Only the role that created the consumer, its members, or a superuser can do this.")));
	return def;
}

static void
pe_consumer_exec(const char *sql, const char *name)
{
	PeCatalogAccess acc;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;

	values[0] = CStringGetTextDatum(name);
	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args(sql, 1, argtypes, values, NULL, false, 0);
	if (rc < 0)
		elog(ERROR, "could not update consumer \"%s\": %s", name, SPI_result_code_string(rc));
	pe_catalog_end(&acc);
}

Datum
pe_start_consumer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PeConsumerDef *def;

	pe_require_preload();
	def = pe_consumer_for_owner(name, "start it");
	pe_consumer_check_target(def);
	pe_consumer_exec("UPDATE pipeline.consumer SET enabled = true WHERE name OPERATOR(pg_catalog.=) $1", name);
	pe_wake_at_commit();
	PG_RETURN_VOID();
}

Datum
pe_stop_consumer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	pe_require_preload();
	(void) pe_consumer_for_owner(name, "stop it");
	pe_consumer_exec("UPDATE pipeline.consumer SET enabled = false WHERE name OPERATOR(pg_catalog.=) $1", name);
	pe_wake_at_commit();
	PG_RETURN_VOID();
}

Datum
pe_drop_consumer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PeConsumerDef *def;
	MemoryContext old;

	pe_require_preload();
	def = pe_consumer_for_owner(name, "drop it");

	/*
	 * Its offsets go with it (ON DELETE CASCADE); its dead letters stay,
	 * their owner's, but belong to no consumer any more (ON DELETE SET
	 * NULL), so that a new consumer of the same name cannot replay them.
	 */
	pe_aggregates_drop_state(def);
	pe_consumer_exec("DELETE FROM pipeline.consumer WHERE name OPERATOR(pg_catalog.=) $1", name);
	pe_wake_at_commit();
	old = MemoryContextSwitchTo(TopMemoryContext);
	{
		PeDropped  *d = palloc(sizeof(PeDropped));

		d->id = def->id;
		d->nest_level = GetCurrentTransactionNestLevel();
		dropped_at_commit = lappend(dropped_at_commit, d);
	}
	MemoryContextSwitchTo(old);
	PG_RETURN_VOID();
}

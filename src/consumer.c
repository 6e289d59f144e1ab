/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  Consumers: their catalog rows and the SQL functions that manage them
 *	  (create, start, stop, drop, reset offsets, replay dead letters).
 *
 *	  The functions run as the caller and check what the caller may do:
 *	  use the connection, write the target the way the consumer will.  The
 *	  catalog is then written as its owner, as for connections.  The
 *	  background workers (worker.c) notice changes through their database's
 *	  manager, which these functions wake at commit.
 *
 * IDENTIFICATION
 *	  src/consumer.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pipeline_ext.h"

PG_FUNCTION_INFO_V1(pe_create_consumer);
PG_FUNCTION_INFO_V1(pe_start_consumer);
PG_FUNCTION_INFO_V1(pe_stop_consumer);
PG_FUNCTION_INFO_V1(pe_drop_consumer);
PG_FUNCTION_INFO_V1(pe_reset_offsets);
PG_FUNCTION_INFO_V1(pe_replay_dead_letters);
PG_FUNCTION_INFO_V1(pe_slots);

#define PE_CONSUMER_COLUMNS \
	"owner, connection, topic, target, format, mode, key_columns, delivery, parallelism, " \
	"start_offset, batch_size, (EXTRACT(epoch FROM batch_timeout) OPERATOR(pg_catalog.*) 1000)::int, " \
	"column_map, group_id, on_error, delete_on_tombstone, format_options, enabled"

static bool wake_at_commit = false;
static bool xact_cb_registered = false;
static char reseek_at_commit[NAMEDATALEN] = "";

static void
pe_consumer_xact_cb(XactEvent event, void *arg)
{
	(void) arg;
	if (event == XACT_EVENT_COMMIT && reseek_at_commit[0] != '\0')
	{
		/* tell the running slots that their stored offsets moved */
		LWLockAcquire(pe_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < pe_shared->max_slots; i++)
		{
			PeSlot	   *s = &pe_shared->slots[i];

			if (s->state != PE_SLOT_FREE && s->dboid == MyDatabaseId &&
				strcmp(s->consumer, reseek_at_commit) == 0)
				s->reseeks++;
		}
		LWLockRelease(pe_shared->lock);
	}
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		pe_wake_manager(MyDatabaseId);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
	{
		wake_at_commit = false;
		reseek_at_commit[0] = '\0';
	}
}

/* Wake this database's manager once the current transaction commits. */
static void
pe_wake_at_commit(void)
{
	if (!xact_cb_registered)
	{
		RegisterXactCallback(pe_consumer_xact_cb, NULL);
		xact_cb_registered = true;
	}
	wake_at_commit = true;
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

/* Read a consumer's definition; run as the catalog owner. */
PeConsumerDef *
pe_consumer_read(const char *name, bool missing_ok)
{
	PeCatalogAccess acc;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	PeConsumerDef *def = NULL;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(name);
	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args("SELECT " PE_CONSUMER_COLUMNS " FROM pipeline.consumer "
							   "WHERE name OPERATOR(pg_catalog.=) $1",
							   1, argtypes, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read consumer: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;
		MemoryContext spi = MemoryContextSwitchTo(caller);

		def = palloc0(sizeof(PeConsumerDef));
		def->name = pstrdup(name);
		def->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		def->connection = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		def->topic = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		def->target = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		def->format = pe_parse_format(TextDatumGetCString(SPI_getbinval(tup, desc, 5, &isnull)));
		def->upsert = strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 6, &isnull)), "upsert") == 0;
		d = SPI_getbinval(tup, desc, 7, &isnull);
		def->key_columns = isnull ? NULL : DatumGetArrayTypePCopy(d);
		def->delivery = TextDatumGetCString(SPI_getbinval(tup, desc, 8, &isnull));
		def->parallelism = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		def->start_offset = TextDatumGetCString(SPI_getbinval(tup, desc, 10, &isnull));
		def->batch_size = DatumGetInt32(SPI_getbinval(tup, desc, 11, &isnull));
		def->batch_timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
		d = SPI_getbinval(tup, desc, 13, &isnull);
		def->column_map = isnull ? NULL : DatumGetJsonbPCopy(d);
		d = SPI_getbinval(tup, desc, 14, &isnull);
		def->group_id = isnull ? NULL : TextDatumGetCString(d);
		def->stop_on_error = strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 15, &isnull)), "stop") == 0;
		def->delete_on_tombstone = DatumGetBool(SPI_getbinval(tup, desc, 16, &isnull));
		def->format_options = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 17, &isnull));
		def->enabled = DatumGetBool(SPI_getbinval(tup, desc, 18, &isnull));
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);

	if (def == NULL && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("consumer \"%s\" does not exist", name),
				 errhint("pipeline.consumers lists the existing consumers.")));
	return def;
}

/* Keep the last error of a consumer in its catalog row; optionally stop it. */
void
pe_consumer_record_error(const char *name, const char *error, bool disable)
{
	PeCatalogAccess acc;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, BOOLOID};
	Datum		values[3];
	int			rc;

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(error);
	values[2] = BoolGetDatum(disable);
	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args("UPDATE pipeline.consumer SET last_error = $2, last_error_at = pg_catalog.now(), "
							   "enabled = enabled AND NOT $3 WHERE name OPERATOR(pg_catalog.=) $1",
							   3, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not record the error of consumer \"%s\": %s", name, SPI_result_code_string(rc));
	pe_catalog_end(&acc);
}

/* librdkafka properties a consumer slot starts from (the connection overrides). */
List *
pe_consumer_defaults(PeConsumerDef *def, int npartitions, const char *dbname)
{
	List	   *props = NIL;
	char	   *group;
	int			kbytes;

	if (def->group_id)
		group = def->group_id;
	else
		group = psprintf("pipeline_ext.%s.%s", dbname, def->name);

	/*
	 * librdkafka 2.0 stops fetching a partition while the prefetch queue
	 * holds more than queued.max.messages.kbytes and looks again only about
	 * once a second.  With partitions forwarded to the consumer queue, the
	 * limit applies to that one queue, whatever the number of partitions:
	 * 20 MB holds about a second of what a busy slot applies, so it rarely
	 * waits on it, and with fetch.max.bytes it bounds the worker's memory
	 * however far behind it is (bench/consume.sh measures both).
	 */
	(void) npartitions;
	kbytes = 20 * 1024;

	props = lappend(props, pe_property("client.id", "pipeline_ext", "pipeline_ext"));
	props = lappend(props, pe_property("group.id", group, "pipeline_ext"));
	props = lappend(props, pe_property("enable.auto.commit", "false", "pipeline_ext"));
	props = lappend(props, pe_property("enable.auto.offset.store", "false", "pipeline_ext"));
	props = lappend(props, pe_property("enable.partition.eof", "false", "pipeline_ext"));
	props = lappend(props, pe_property("auto.offset.reset",
									   strcmp(def->start_offset, "latest") == 0 ? "latest" : "earliest",
									   "pipeline_ext"));
	props = lappend(props, pe_property("fetch.wait.max.ms", "100", "pipeline_ext"));
	props = lappend(props, pe_property("queued.min.messages", "1000000", "pipeline_ext"));
	props = lappend(props, pe_property("queued.max.messages.kbytes", psprintf("%d", kbytes), "pipeline_ext"));
	props = lappend(props, pe_property("fetch.max.bytes", "4194304", "pipeline_ext"));
	return props;
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
	def.parallelism = PG_ARGISNULL(8) ? 1 : PG_GETARG_INT32(8);
	if (def.parallelism < 1 || def.parallelism > 64)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("parallelism must be between 1 and 64"),
				 errhint("Each slot is one background worker; max_worker_processes must leave room for them.")));
	def.start_offset = (char *) pe_text_arg(fcinfo, 9, "start_offset");
	pe_check_start_offset(def.start_offset);
	def.batch_size = PG_ARGISNULL(10) ? 10000 : PG_GETARG_INT32(10);
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
	(void) pe_target_open(&def, true);
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

static PeConsumerDef *
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

	pe_require_preload();
	(void) pe_consumer_for_owner(name, "start it");
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

	pe_require_preload();
	(void) pe_consumer_for_owner(name, "drop it");
	/* its offsets go with it (ON DELETE CASCADE); its dead letters stay */
	pe_consumer_exec("DELETE FROM pipeline.consumer WHERE name OPERATOR(pg_catalog.=) $1", name);
	pe_wake_at_commit();
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * reset_offsets
 * ---------------------------------------------------------------------
 */

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
 * Set the stored offsets of every partition of the topic: to the low or
 * high watermark, to the first offset at or after a timestamp, or to a
 * given offset.  A running slot notices on its next commit (its offsets no
 * longer match what it expects) and seeks to the new ones.
 */
Datum
pe_reset_offsets(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *to = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PeConsumerDef *def;
	PeConnection *conn;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	char		errstr[512];
	volatile int nparts = 0;
	int64	   *volatile newoff = NULL;
	int64		fixed = -1;
	int64		ts_ms = -1;
	int			timeout = pe_produce_timeout_ms;
	PeCatalogAccess acc;

	pe_require_preload();
	def = pe_consumer_for_owner(name, "reset its offsets");
	if (strcmp(to, "earliest") != 0 && strcmp(to, "latest") != 0)
	{
		char	   *end;

		errno = 0;
		fixed = strtoll(to, &end, 10);
		if (*end != '\0' || errno != 0 || end == to)
		{
			TimestampTz ts;

			fixed = -1;
			if (!isdigit((unsigned char) to[0]))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid offset reset target \"%s\"", to),
						 errhint("Use 'earliest', 'latest', an ISO timestamp, or an offset.")));
			ts = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(to),
														 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
			ts_ms = ts / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
		}
		else if (fixed < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("offset must not be negative")));
	}

	conn = pe_connection_lookup(def->connection, false);
	conf = pe_kafka_conf(conn, list_make1(pe_property("client.id", "pipeline_ext", "pipeline_ext")));
	rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka client for connection \"%s\"", conn->name),
				 errdetail("%s", pe_redact(errstr, pe_connection_secrets(conn)))));

	PG_TRY();
	{
		rkt = rd_kafka_topic_new(rk, def->topic, NULL);
		err = rd_kafka_metadata(rk, 0, rkt, &md, timeout);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			nparts = md->topics[0].partition_cnt;
		if (md)
			rd_kafka_metadata_destroy(md);
		rd_kafka_topic_destroy(rkt);
		if (nparts == 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the partitions of topic \"%s\" within %d ms", def->topic, timeout),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err)),
					 errhint("Check that the brokers are reachable; pipeline_ext.produce_timeout sets the wait.")));

		newoff = palloc(sizeof(int64) * nparts);
		if (ts_ms >= 0)
		{
			rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);

			for (int p = 0; p < nparts; p++)
				rd_kafka_topic_partition_list_add(l, def->topic, p)->offset = ts_ms;
			err = rd_kafka_offsets_for_times(rk, l, timeout);
			for (int p = 0; p < nparts && err == RD_KAFKA_RESP_ERR_NO_ERROR; p++)
			{
				newoff[p] = l->elems[p].offset;
				if (l->elems[p].err != RD_KAFKA_RESP_ERR_NO_ERROR)
					err = l->elems[p].err;
				else if (newoff[p] < 0)
				{
					/* no message at or after the time: the end */
					int64		lo,
								hi;

					err = rd_kafka_query_watermark_offsets(rk, def->topic, p, &lo, &hi, timeout);
					newoff[p] = hi;
				}
			}
			rd_kafka_topic_partition_list_destroy(l);
		}
		else
		{
			err = RD_KAFKA_RESP_ERR_NO_ERROR;
			for (int p = 0; p < nparts && err == RD_KAFKA_RESP_ERR_NO_ERROR; p++)
			{
				int64		lo,
							hi;

				err = rd_kafka_query_watermark_offsets(rk, def->topic, p, &lo, &hi, timeout);
				if (strcmp(to, "earliest") == 0)
					newoff[p] = lo;
				else if (strcmp(to, "latest") == 0)
					newoff[p] = hi;
				else
					newoff[p] = Max(lo, Min(fixed, hi));
			}
		}
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not look up the offsets of topic \"%s\" within %d ms", def->topic, timeout),
					 errdetail("librdkafka: %s", rd_kafka_err2str(err))));
	}
	PG_FINALLY();
	{
		rd_kafka_destroy(rk);
	}
	PG_END_TRY();

	InitMaterializedSRF(fcinfo, 0);
	pe_catalog_begin(&acc);
	for (int p = 0; p < nparts; p++)
	{
		Oid			argtypes[3] = {TEXTOID, INT4OID, INT8OID};
		Datum		args[3];
		Datum		out[3];
		bool		outnulls[3] = {false, false, false};
		int			rc;

		args[0] = CStringGetTextDatum(name);
		args[1] = Int32GetDatum(p);
		args[2] = Int64GetDatum(newoff[p]);
		rc = SPI_execute_with_args("WITH old AS (SELECT next_offset FROM pipeline.offsets "
								   "  WHERE consumer OPERATOR(pg_catalog.=) $1 AND \"partition\" OPERATOR(pg_catalog.=) $2 FOR UPDATE) "
								   "INSERT INTO pipeline.offsets AS o (consumer, \"partition\", next_offset) VALUES ($1, $2, $3) "
								   "ON CONFLICT (consumer, \"partition\") DO UPDATE SET next_offset = EXCLUDED.next_offset, "
								   "updated_at = pg_catalog.now() "
								   "RETURNING (SELECT next_offset FROM old)",
								   3, argtypes, args, NULL, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
			elog(ERROR, "could not reset offset: %s", SPI_result_code_string(rc));
		out[0] = Int32GetDatum(p);
		out[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &outnulls[1]);
		out[2] = Int64GetDatum(newoff[p]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
	}
	pe_catalog_end(&acc);
	pe_wake_at_commit();
	strlcpy(reseek_at_commit, name, sizeof(reseek_at_commit));
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * replay_dead_letters
 * ---------------------------------------------------------------------
 */

/*
 * Re-apply a consumer's dead letters (all, or the given ids) in the order
 * they were recorded; delete the ones that now apply, and record the new
 * error of the others.
 */
Datum
pe_replay_dead_letters(PG_FUNCTION_ARGS)
{
	char	   *name;
	PeConsumerDef *def;
	PeTarget   *t;
	PeCatalogAccess acc;
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Datum		args[2];
	char		argnulls[2] = {' ', ' '};
	int			rc;
	int			n;
	PeMessage  *msgs;
	int64	   *ids;
	PeBatchResult res;
	TupleDesc	tupdesc;
	Datum		out[2];
	bool		outnulls[2] = {false, false};
	bool	   *failed;
	MemoryContext caller = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("consumer must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	def = pe_consumer_for_owner(name, "replay its dead letters");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	args[0] = CStringGetTextDatum(name);
	if (PG_ARGISNULL(1))
		argnulls[1] = 'n';
	else
		args[1] = PG_GETARG_DATUM(1);

	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args("SELECT id, topic, \"partition\", \"offset\", key, value, headers, "
							   "(EXTRACT(epoch FROM \"timestamp\") OPERATOR(pg_catalog.*) 1000)::bigint "
							   "FROM pipeline.dead_letters WHERE consumer OPERATOR(pg_catalog.=) $1 "
							   "AND ($2 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($2)) ORDER BY id FOR UPDATE",
							   2, argtypes, args, argnulls, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read dead letters: %s", SPI_result_code_string(rc));
	n = SPI_processed;
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		msgs = palloc0(sizeof(PeMessage) * Max(n, 1));
		ids = palloc(sizeof(int64) * Max(n, 1));
		for (int i = 0; i < n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Datum		d;

			ids[i] = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			msgs[i].topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
			msgs[i].partition = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
			msgs[i].offset = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
			d = SPI_getbinval(tup, desc, 5, &isnull);
			if (!isnull)
			{
				bytea	   *b = DatumGetByteaPCopy(d);

				msgs[i].key = VARDATA(b);
				msgs[i].key_len = VARSIZE(b) - VARHDRSZ;
			}
			d = SPI_getbinval(tup, desc, 6, &isnull);
			if (!isnull)
			{
				bytea	   *b = DatumGetByteaPCopy(d);

				msgs[i].value = VARDATA(b);
				msgs[i].value_len = VARSIZE(b) - VARHDRSZ;
			}
			d = SPI_getbinval(tup, desc, 7, &isnull);
			msgs[i].headers_jsonb = isnull ? NULL : DatumGetJsonbPCopy(d);
			d = SPI_getbinval(tup, desc, 8, &isnull);
			msgs[i].timestamp_ms = isnull ? -1 : DatumGetInt64(d);
		}
		MemoryContextSwitchTo(spi);
	}
	pe_catalog_end(&acc);

	memset(&res, 0, sizeof(res));
	if (n > 0)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		t = pe_target_open(def, false);
		pe_target_apply(t, msgs, n, &res);
		SPI_finish();
	}

	failed = palloc0(sizeof(bool) * Max(n, 1));
	pe_catalog_begin(&acc);
	{
		ListCell   *lc;
		Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};

		foreach(lc, res.dead)
		{
			PeDeadLetter *dl = lfirst(lc);
			Datum		a[3];

			failed[dl->msg_index] = true;
			a[0] = Int64GetDatum(ids[dl->msg_index]);
			a[1] = CStringGetTextDatum(dl->error);
			a[2] = CStringGetTextDatum(dl->sqlstate);
			rc = SPI_execute_with_args("UPDATE pipeline.dead_letters SET error = $2, sqlstate = $3, "
									   "failed_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
									   3, types, a, NULL, false, 0);
			if (rc != SPI_OK_UPDATE)
				elog(ERROR, "could not update a dead letter: %s", SPI_result_code_string(rc));
		}
		for (int i = 0; i < n; i++)
		{
			Datum		a[1];

			if (failed[i])
				continue;
			a[0] = Int64GetDatum(ids[i]);
			rc = SPI_execute_with_args("DELETE FROM pipeline.dead_letters WHERE id OPERATOR(pg_catalog.=) $1",
									   1, types, a, NULL, false, 0);
			if (rc != SPI_OK_DELETE)
				elog(ERROR, "could not delete a dead letter: %s", SPI_result_code_string(rc));
		}
	}
	pe_catalog_end(&acc);

	out[0] = Int64GetDatum(n - list_length(res.dead));
	out[1] = Int64GetDatum(list_length(res.dead));
	tupdesc = BlessTupleDesc(tupdesc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, out, outnulls)));
}

/* ---------------------------------------------------------------------
 * Slot status from shared memory
 * ---------------------------------------------------------------------
 */

static const char *
pe_slot_state_name(PeSlotState s)
{
	switch (s)
	{
		case PE_SLOT_FREE:
			return "stopped";
		case PE_SLOT_STARTING:
			return "starting";
		case PE_SLOT_RUNNING:
			return "running";
		case PE_SLOT_STOPPED:
			return "stopped";
		case PE_SLOT_FAILED:
			return "failed";
		case PE_SLOT_RESTARTING:
			return "restarting";
	}
	return "unknown";
}

Datum
pe_slots(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeSlot	   *copy;
	int			n = 0;

	bool	   *may;

	pe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	copy = pe_snapshot_slots(&n);
	may = palloc(sizeof(bool) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		PeSlot	   *s = &copy[i];
		Datum		v[12];
		bool		nl[12];
		bool		may_see = false;
		int			j;
		Datum	   *parts = palloc(sizeof(Datum) * Max(s->npartitions, 1));
		int			nparts;

		/* one catalog look-up per consumer, not per slot */
		for (j = 0; j < i; j++)
			if (strcmp(copy[j].consumer, s->consumer) == 0)
				break;
		if (j < i)
			may_see = may[j];
		else
		{
			PeConsumerDef *def = pe_consumer_read(s->consumer, true);

			may_see = def != NULL && pe_may_see_secrets(def->owner);
		}
		may[i] = may_see;

		memset(nl, false, sizeof(nl));
		v[0] = CStringGetTextDatum(s->consumer);
		v[1] = Int32GetDatum(s->slot);
		v[2] = Int32GetDatum(s->pid);
		nl[2] = (s->pid == 0);
		v[3] = CStringGetTextDatum(pe_slot_state_name(s->state));
		v[4] = Int32GetDatum(s->restarts);
		v[5] = CStringGetTextDatum(s->last_error);
		nl[5] = (s->last_error[0] == '\0' || !may_see);
		v[6] = TimestampTzGetDatum(s->last_error_at);
		nl[6] = (s->last_error_at == 0);
		v[7] = TimestampTzGetDatum(s->last_batch_at);
		nl[7] = (s->last_batch_at == 0);
		/* assigned partitions: those of a running worker */
		nparts = (s->state == PE_SLOT_RUNNING || s->state == PE_SLOT_STARTING) ? s->npartitions : 0;
		for (int p = 0; p < nparts; p++)
			parts[p] = Int32GetDatum(s->partitions[p]);
		v[8] = PointerGetDatum(construct_array(parts, nparts, INT4OID, 4, true, TYPALIGN_INT));
		v[9] = Int64GetDatum((int64) s->messages);
		v[10] = Int64GetDatum((int64) s->batches);
		v[11] = Int64GetDatum((int64) s->dead_letters);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}

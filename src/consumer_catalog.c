/*-------------------------------------------------------------------------
 *
 * consumer_catalog.c
 *	  A consumer's catalog row: reading it into a PeConsumerDef, keeping its
 *	  last error, and the librdkafka settings its slots start from (shown
 *	  by consumer_config()).
 *
 * IDENTIFICATION
 *	  src/consumer_catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "connection.h"
#include "consumer.h"
#include "datapath.h"
#include "kafka.h"



#define PE_CONSUMER_COLUMNS \
	"owner, connection, topic, target, format, mode, key_columns, delivery, parallelism, " \
	"start_offset, batch_size, (EXTRACT(epoch FROM batch_timeout) OPERATOR(pg_catalog.*) 1000)::int, " \
	"column_map, group_id, on_error, delete_on_tombstone, format_options, enabled, id"

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
		d = SPI_getbinval(tup, desc, 4, &isnull);
		def->target = isnull ? InvalidOid : DatumGetObjectId(d);
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
		def->id = DatumGetInt64(SPI_getbinval(tup, desc, 19, &isnull));
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

/* Refuse to work for a consumer whose target table was dropped. */
void
pe_consumer_check_target(PeConsumerDef *def)
{
	if (!OidIsValid(def->target))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the target table of consumer \"%s\" was dropped", def->name),
				 errhint("Drop the consumer and create it again on an existing table.")));
}

/*
 * Keep the last error of a consumer in its catalog row; optionally stop it.
 * By id: a consumer of the same name created since is another one.
 */
static void
pe_consumer_record(int64 id, const char *error, bool disable, bool unless_forgotten)
{
	PeCatalogAccess acc;
	Oid			argtypes[3] = {INT8OID, TEXTOID, BOOLOID};
	Datum		values[3];
	int			rc;

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	values[2] = BoolGetDatum(disable);
	pe_catalog_begin(&acc);
	rc = SPI_execute_with_args(unless_forgotten ?
							   "UPDATE pipeline.consumer SET last_error = $2, last_error_at = pg_catalog.now(), "
							   "enabled = enabled AND NOT $3 WHERE id OPERATOR(pg_catalog.=) $1 AND target IS NOT NULL" :
							   "UPDATE pipeline.consumer SET last_error = $2, last_error_at = pg_catalog.now(), "
							   "enabled = enabled AND NOT $3 WHERE id OPERATOR(pg_catalog.=) $1",
							   3, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not record the error of consumer " INT64_FORMAT ": %s", id, SPI_result_code_string(rc));
	pe_catalog_end(&acc);
}

void
pe_consumer_record_error(int64 id, const char *error, bool disable)
{
	pe_consumer_record(id, error, disable, false);
}

/*
 * A slot found its target gone: stop the consumer, saying so, unless the
 * drop already did (it forgets the table's number and says which table it
 * was, which is the better message to keep).
 */
void
pe_consumer_record_target_gone(int64 id, const char *error)
{
	pe_consumer_record(id, error, true, true);
}

/*
 * librdkafka properties of a consumer slot: the defaults (the connection's
 * options override them), and in *forced those its offsets and delivery
 * depend on, which override the connection's: the group, no automatic
 * offset store or commit, no partition-end events, and only committed
 * messages of transactional producers.
 */
List *
pe_consumer_defaults(PeConsumerDef *def, const char *dbname, List **forced)
{
	List	   *props = NIL;
	char	   *group;
	int			kbytes;

	if (def->group_id)
		group = def->group_id;
	else
		group = psprintf("pipeline_ext.%s.%s", dbname, def->name);

	/*
	 * The prefetch queue: librdkafka stops fetching while it holds
	 * queued.max.messages.kbytes of messages (with partitions forwarded to
	 * the consumer queue, that one queue, whatever the number of
	 * partitions), and each message costs it another 200 to 300 bytes of
	 * its own.  librdkafka 2.0 and 2.1 look at a full queue again only when
	 * the broker thread wakes, so a slot with a backlog wakes it when it
	 * takes a batch (pe_slot_wake_fetchers); 2.2 and later back off for
	 * fetch.queue.backoff.ms, set below.  Then 8 MB keeps a busy slot fed
	 * as well as 20 or 64 MB did, and bounds the worker's memory however
	 * far behind it is (bench/consume.sh measures both).
	 */
	kbytes = 8 * 1024;

	*forced = lappend(*forced, pe_property("group.id", group, "pipeline_ext"));
	*forced = lappend(*forced, pe_property("enable.auto.commit", "false", "pipeline_ext"));
	*forced = lappend(*forced, pe_property("enable.auto.offset.store", "false", "pipeline_ext"));
	*forced = lappend(*forced, pe_property("enable.partition.eof", "false", "pipeline_ext"));
	*forced = lappend(*forced, pe_property("isolation.level", "read_committed", "pipeline_ext"));

	props = lappend(props, pe_property("client.id", "pipeline_ext", "pipeline_ext"));
	props = lappend(props, pe_property("auto.offset.reset",
									   strcmp(def->start_offset, "latest") == 0 ? "latest" : "earliest",
									   "pipeline_ext"));
	/*
	 * A fetch that finds nothing is answered after fetch.wait.max.ms at the
	 * latest.  Apache Kafka answers as soon as fetch.min.bytes (1) arrived,
	 * so there the value costs no latency, only idle requests; brokers that
	 * hold an empty fetch for the whole wait (librdkafka's mock cluster, our
	 * test broker) add up to it to every message that comes to an idle
	 * partition.  5 ms keeps that small (bench/latency.sh), at about 200
	 * small requests a second per idle slot; a connection's options can
	 * raise it.
	 */
	props = lappend(props, pe_property("fetch.wait.max.ms", "5", "pipeline_ext"));
	props = lappend(props, pe_property("queued.min.messages", "1000000", "pipeline_ext"));
	props = lappend(props, pe_property("queued.max.messages.kbytes", psprintf("%d", kbytes), "pipeline_ext"));
	/* from librdkafka 2.2 a full queue backs off this long, not a second */
	if (rd_kafka_version() >= PE_RDKAFKA_FETCH_QUEUE_BACKOFF)
		props = lappend(props, pe_property("fetch.queue.backoff.ms", "10", "pipeline_ext"));
	props = lappend(props, pe_property("fetch.max.bytes", "4194304", "pipeline_ext"));
	return props;
}

/*
 * consumer_config(name): the librdkafka settings a consumer's slots choose,
 * each with the value librdkafka is given (the configuration the slots
 * build, pe_kafka_conf(), read back) and where it comes from: pipeline_ext's
 * default, the connection's option that overrides it, or pipeline_ext's
 * forced value, which the connection's options cannot override (what the
 * consumer's offsets and delivery depend on).  For the consumer's owner.
 */
PG_FUNCTION_INFO_V1(pe_consumer_config);

Datum
pe_consumer_config(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PeConsumerDef *def = pe_consumer_for_owner(name, "read its configuration");
	PeConnection *conn = pe_connection_lookup(def->connection, false);
	List	   *forced = NIL;
	List	   *defaults = pe_consumer_defaults(def, get_database_name(MyDatabaseId), &forced);
	ListCell   *lc;

	/* the configuration the slots build, read back: what librdkafka is given */
	rd_kafka_conf_t *conf = pe_kafka_conf(conn, defaults, forced);

	InitMaterializedSRF(fcinfo, 0);
	foreach(lc, list_concat(list_copy(defaults), forced))
	{
		PeProperty *d = lfirst(lc);
		const char *source = list_member_ptr(forced, d) ? "pipeline_ext (forced)" : "pipeline_ext";
		char		value[512];
		size_t		size = sizeof(value);
		Datum		values[3];
		bool		nulls[3] = {false, false, false};
		ListCell   *lc2;

		if (rd_kafka_conf_get(conf, d->name, value, &size) != RD_KAFKA_CONF_OK)
			strlcpy(value, d->value, sizeof(value));
		if (!list_member_ptr(forced, d))
			foreach(lc2, conn->props)
				if (strcmp(((PeProperty *) lfirst(lc2))->name, d->name) == 0)
					source = "connection";
		values[0] = CStringGetTextDatum(d->name);
		values[1] = CStringGetTextDatum(pe_property_is_secret(d->name) ? PE_MASK : value);
		values[2] = CStringGetTextDatum(source);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	rd_kafka_conf_destroy(conf);
	return (Datum) 0;
}

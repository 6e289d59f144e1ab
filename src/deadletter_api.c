/*-------------------------------------------------------------------------
 *
 * deadletter_api.c
 *	  pipeline.replay_dead_letters(): apply a consumer's dead letters again,
 *	  through the same data path as the slots, deleting those that apply now
 *	  and keeping the new error of the others.
 *
 * IDENTIFICATION
 *	  src/deadletter_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "consumer.h"
#include "datapath.h"

PG_FUNCTION_INFO_V1(pe_replay_dead_letters);

static void
pe_replay_free_headers(PeBatch *b)
{
	for (int i = 0; i < b->n; i++)
		if (b->msgs[i].hdrs)
		{
			rd_kafka_headers_destroy(b->msgs[i].hdrs);
			b->msgs[i].hdrs = NULL;
		}
}

/*
 * The dead letters through the data path into the consumer's target, as a
 * worker would apply them; the number that failed again.
 */
static int
pe_replay_apply(PeConsumerDef *def, PeBatch *b)
{
	/* as in a worker, the statements do not depend on the caller's search_path */
	int			nestlevel = NewGUCNestLevel();
	int			nfailed;

	(void) set_config_option("search_path", "", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	b->target = pe_target_open(def, false);
	PG_TRY();
	{
		(void) pe_batch_apply(b);
	}
	PG_CATCH();
	{
		/* what avro-c holds, and the Avro schemas' memory, are not the transaction's */
		pe_avro_close(b->target);
		PG_RE_THROW();
	}
	PG_END_TRY();
	/* the list and the target live in SPI's memory: before SPI_finish() */
	nfailed = list_length(b->res.dead);
	pe_target_close(b->target);
	b->target = NULL;
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	return nfailed;
}

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
	PeCatalogAccess acc;
	Oid			argtypes[2] = {INT8OID, INT8ARRAYOID};
	Datum		args[2];
	char		argnulls[2] = {' ', ' '};
	int			rc;
	int			n;
	PeMessage  *msgs;
	int64	   *ids;
	PeBatch		b;
	volatile int nfailed = 0;
	TupleDesc	tupdesc;
	Datum		out[2];
	bool		outnulls[2] = {false, false};
	MemoryContext caller = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("consumer must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	def = pe_consumer_for_owner(name, "replay its dead letters");
	pe_consumer_check_target(def);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	args[0] = Int64GetDatum(def->id);
	if (PG_ARGISNULL(1))
		argnulls[1] = 'n';
	else
		args[1] = PG_GETARG_DATUM(1);

	pe_catalog_begin(&acc);
	/* the consumer's own: by its id, never by a name another may have had */
	rc = SPI_execute_with_args("SELECT id, topic, \"partition\", \"offset\", key, value, headers, "
							   "\"timestamp\", headers_raw "
							   "FROM pipeline.dead_letters WHERE consumer_id OPERATOR(pg_catalog.=) $1 "
							   "AND ($2 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($2)) ORDER BY id FOR UPDATE",
							   2, argtypes, args, argnulls, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read dead letters: %s", SPI_result_code_string(rc));
	n = SPI_processed;

	/*
	 * The librdkafka headers made for the messages are malloc'ed: freed
	 * after the replay, and on any error from here on.
	 */
	memset(&b, 0, sizeof(b));
	PG_TRY();
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		msgs = palloc0(sizeof(PeMessage) * Max(n, 1));
		ids = palloc(sizeof(int64) * Max(n, 1));
		b.msgs = msgs;
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
			d = SPI_getbinval(tup, desc, 9, &isnull);
			b.n = i + 1;
			if (!isnull)
				msgs[i].hdrs = pe_headers_from_raw(DatumGetArrayTypeP(d));
			else
			{
				/* recorded by 0.3.0: only the readable form was kept */
				d = SPI_getbinval(tup, desc, 7, &isnull);
				msgs[i].headers_jsonb = isnull ? NULL : DatumGetJsonbPCopy(d);
			}
			d = SPI_getbinval(tup, desc, 8, &isnull);
			msgs[i].timestamp_ms = isnull ? -1 : pe_timestamptz_to_kafka_ms(DatumGetTimestampTz(d));
		}
		MemoryContextSwitchTo(spi);
		pe_catalog_end(&acc);
		b.n = n;
		b.replay_ids = ids;
		if (n > 0)
			nfailed = pe_replay_apply(def, &b);
	}
	PG_CATCH();
	{
		pe_replay_free_headers(&b);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pe_replay_free_headers(&b);

	out[0] = Int64GetDatum(n - nfailed);
	out[0] = Int64GetDatum(n - nfailed);
	out[1] = Int64GetDatum(nfailed);
	tupdesc = BlessTupleDesc(tupdesc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, out, outnulls)));
}

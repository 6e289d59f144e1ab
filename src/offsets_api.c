/*-------------------------------------------------------------------------
 *
 * offsets_api.c
 *	  pipeline.reset_offsets(): set a consumer's stored offsets from the
 *	  brokers' watermarks, a timestamp or a given offset.  Its running slots
 *	  notice at commit and seek to them.
 *
 * IDENTIFICATION
 *	  src/offsets_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "connection.h"
#include "consumer.h"
#include "kafka.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_reset_offsets);

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
			fixed = -1;
			if (!isdigit((unsigned char) to[0]))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid offset reset target \"%s\"", to),
						 errhint("Use 'earliest', 'latest', an ISO timestamp, or an offset.")));
			ts_ms = pe_kafka_ms_from_text(to);
		}
		else if (fixed < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("offset must not be negative")));
	}

	conn = pe_connection_lookup(def->connection, false);
	conf = pe_kafka_conf(conn, list_make1(pe_property("client.id", "pipeline_ext", "pipeline_ext")), NIL);
	rd_kafka_conf_set_log_cb(conf, pe_quiet_log_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);	/* (rd_kafka_new takes it only when it succeeds) */
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka client for connection \"%s\"", conn->name),
				 errdetail("%s", pe_redact(errstr, pe_connection_secrets(conn)))));
	}

	PG_TRY();
	{
		rkt = rd_kafka_topic_new(rk, def->topic, NULL);
		/* without a handle librdkafka would describe every topic */
		if (rkt == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid topic \"%s\" for consumer \"%s\"", def->topic, def->name),
					 errdetail("librdkafka: %s", rd_kafka_err2str(rd_kafka_last_error()))));
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
		/*
		 * The old offset first, locked: a CTE read only in the upsert's
		 * RETURNING ran after the upsert had changed its row, and found none.
		 */
		rc = SPI_execute_with_args("SELECT next_offset FROM pipeline.offsets "
								   "WHERE consumer OPERATOR(pg_catalog.=) $1 AND \"partition\" OPERATOR(pg_catalog.=) $2 FOR UPDATE",
								   2, argtypes, args, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not read offset: %s", SPI_result_code_string(rc));
		out[1] = (Datum) 0;
		outnulls[1] = true;
		if (SPI_processed == 1)
			out[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &outnulls[1]);
		rc = SPI_execute_with_args("INSERT INTO pipeline.offsets AS o (consumer, \"partition\", next_offset, reset) VALUES ($1, $2, $3, true) "
								   "ON CONFLICT (consumer, \"partition\") DO UPDATE SET next_offset = EXCLUDED.next_offset, "
								   "updated_at = pg_catalog.now(), reset = true",
								   3, argtypes, args, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "could not reset offset: %s", SPI_result_code_string(rc));
		out[0] = Int32GetDatum(p);
		out[2] = Int64GetDatum(newoff[p]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
	}
	pe_catalog_end(&acc);
	pe_reseek_at_commit(name);
	return (Datum) 0;
}

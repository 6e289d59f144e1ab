/*-------------------------------------------------------------------------
 *
 * outbox_resend.c
 *	  pipeline.resend_outbox_dead_letters(ids): after the cause of a
 *	  refusal is fixed (the topic made, the right granted, the size limit
 *	  raised), the caller's outbox dead letters (those
 *	  pipeline.outbox_dead_letters shows it; all of them, or those of ids)
 *	  go back into the outbox in their order, in the caller's transaction,
 *	  and leave the dead letters in the same transaction.  The caller must
 *	  be allowed to use each one's connection now, and each stays its first
 *	  sender's, whom the relay checks again (a superuser who sends
 *	  everything again does not lend its rights to letters refused for
 *	  their sender's).  The relay publishes them after what waits already,
 *	  each with a new outbox id.
 *
 * IDENTIFICATION
 *	  src/outbox_resend.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "nodes/value.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "connection.h"
#include "producer.h"
#include "relay.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(pe_outbox_resend);

Datum
pe_outbox_resend(PG_FUNCTION_ARGS)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	char		nulls[1];
	uint64		n;
	List	   *checked;		/* the connections the caller may use, as String nodes */

	pe_require_preload();
	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';

	/*
	 * Taken out of the dead letters through the view, as the caller: only
	 * what it may see, and rows another session takes at the same time
	 * are taken once.
	 */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("WITH d AS (DELETE FROM pipeline.outbox_dead_letters "
							  "WHERE $1 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($1) "
							  "RETURNING id, connection, topic, \"partition\", key, value, headers, sent_by) "
							  "SELECT connection, topic, \"partition\", key, value, headers, sent_by::pg_catalog.oid FROM d ORDER BY id",
							  1, types, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not take the outbox dead letters");
	n = SPI_processed;
	checked = NIL;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *connection = SPI_getvalue(tup, desc, 1);
		char	   *topic = SPI_getvalue(tup, desc, 2);
		bool		part_null;
		bool		headers_null;
		Datum		part = SPI_getbinval(tup, desc, 3, &part_null);
		Datum		headers = SPI_getbinval(tup, desc, 6, &headers_null);
		Datum		key;
		Datum		value;
		bool		key_null;
		bool		value_null;
		bool		sender_null;	/* (never: the column is NOT NULL) */
		Oid			sender = DatumGetObjectId(SPI_getbinval(tup, desc, 7, &sender_null));

		key = SPI_getbinval(tup, desc, 4, &key_null);
		value = SPI_getbinval(tup, desc, 5, &value_null);
		/*
		 * The checks send() makes, for the caller, against things as they
		 * are now; the connection's once per call (a failed check fails
		 * the whole call).
		 */
		if (!list_member(checked, makeString(connection)))
		{
			pe_check_connection_use(pe_connection_lookup(connection, false));
			checked = lappend(checked, makeString(connection));
		}
		pe_refuse_checkpoint_topic(topic);
		(void) pe_outbox_write(connection, topic, sender, part_null ? -1 : DatumGetInt32(part),
							   headers_null ? NULL : DatumGetJsonbP(headers),
							   1, &key, &key_null, &value, &value_null);
	}
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

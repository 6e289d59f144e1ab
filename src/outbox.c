/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  pipeline.send(): a message written into pipeline.outbox in the
 *	  caller's transaction.  Nothing leaves before COMMIT; a ROLLBACK (or a
 *	  rolled-back savepoint) takes the row with it.  The relay (relay.c)
 *	  publishes committed rows; at the commit of a transaction that sent,
 *	  it is woken (or its database's manager, which starts it).
 *
 * IDENTIFICATION
 *	  src/outbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "connection.h"
#include "datapath.h"
#include "producer.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(pe_outbox_send);

static bool pe_outbox_wake_at_commit = false;
static bool pe_outbox_cb_registered = false;

/* Wake this database's relay, or its manager to start one. */
void
pe_relay_wake(Oid dboid)
{
	struct Latch *latch = NULL;

	if (pe_shared == NULL)
		return;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid == dboid && pe_shared->dbs[i].relay.pid != 0)
			latch = pe_shared->dbs[i].relay.latch;
	LWLockRelease(pe_shared->lock);
	if (latch)
		SetLatch(latch);
	else
		pe_wake_manager(dboid);
}

static void
pe_outbox_xact_cb(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (pe_outbox_wake_at_commit)
			{
				pe_outbox_wake_at_commit = false;
				pe_relay_wake(MyDatabaseId);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			pe_outbox_wake_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * Write one message into the outbox, as the catalog's owner, for the
 * current role.  Returns its id.
 */
int64
pe_outbox_insert(const PeMessageArgs *a)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[7] = {TEXTOID, TEXTOID, INT4OID, BYTEAOID, BYTEAOID, JSONBOID, OIDOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			sender = GetUserId();
	PeCatalogAccess acc;
	int64		id;
	bool		isnull;
	int			rc;

	values[0] = CStringGetTextDatum(a->connection);
	values[1] = CStringGetTextDatum(a->topic);
	values[2] = Int32GetDatum(a->partition);
	if (a->partition < 0)
		nulls[2] = 'n';
	if (a->key)
		values[3] = pe_bytes_to_bytea(a->key, a->key_len);
	else
		nulls[3] = 'n';
	if (a->value)
		values[4] = pe_bytes_to_bytea(a->value, a->value_len);
	else
		nulls[4] = 'n';
	if (a->headers)
		values[5] = JsonbPGetDatum(a->headers);
	else
		nulls[5] = 'n';
	values[6] = ObjectIdGetDatum(sender);

	pe_catalog_begin(&acc);
	if (plan == NULL)
	{
		plan = SPI_prepare("INSERT INTO pipeline.outbox (connection, topic, \"partition\", key, value, headers, sent_by) "
						   "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
						   7, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare the outbox insert: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	rc = SPI_execute_plan(plan, values, nulls, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not write into the outbox: %s", SPI_result_code_string(rc));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pe_catalog_end(&acc);

	pe_outbox_note_sent();
	return id;
}

/*
 * Write messages into the outbox in one statement, as the catalog's owner,
 * for role sender: keys and values are bytea arrays of one length (nulls
 * allowed), kept in their order.
 */
void
pe_outbox_insert_many(const char *connection, const char *topic, Oid sender, Datum keys, Datum values)
{
	static SPIPlanPtr plan = NULL;
	PeCatalogAccess acc;
	Datum		args[5];
	uint64		written;

	args[0] = CStringGetTextDatum(connection);
	args[1] = CStringGetTextDatum(topic);
	args[2] = ObjectIdGetDatum(sender);
	args[3] = keys;
	args[4] = values;
	pe_catalog_begin(&acc);
	if (plan == NULL)
	{
		Oid			types[5] = {TEXTOID, TEXTOID, OIDOID, BYTEAARRAYOID, BYTEAARRAYOID};
		SPIPlanPtr	p = SPI_prepare_cursor("INSERT INTO pipeline.outbox (connection, topic, key, value, sent_by) "
										   "SELECT $1, $2, u.k, u.v, $3 FROM ROWS FROM (pg_catalog.unnest($4), "
										   "pg_catalog.unnest($5)) WITH ORDINALITY AS u(k, v, n) ORDER BY u.n",
										   5, types, CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "could not prepare the outbox insert: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plan = p;
	}
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write into the outbox");
	written = SPI_processed;
	pe_catalog_end(&acc);
	if (written > 0)
		pe_outbox_note_sent();
}

/* This transaction wrote into the outbox: wake the relay at its commit. */
void
pe_outbox_note_sent(void)
{
	if (!pe_outbox_cb_registered)
	{
		RegisterXactCallback(pe_outbox_xact_cb, NULL);
		pe_outbox_cb_registered = true;
	}
	pe_outbox_wake_at_commit = true;
}

/*
 * pipeline.send(connection, topic, value, key, headers, partition): the
 * outbox id.  The caller must be allowed to use the connection; the
 * topic and partition are checked by the broker when the relay publishes
 * (a refusal makes a dead letter, see relay.c), since nothing may reach
 * the network before COMMIT.
 */
Datum
pe_outbox_send(PG_FUNCTION_ARGS)
{
	PeMessageArgs a;
	PeConnection *conn;

	pe_require_preload();
	pe_message_args(fcinfo, &a);
	conn = pe_connection_lookup(a.connection, false);
	pe_check_connection_use(conn);
	PG_RETURN_INT64(pe_outbox_insert(&a));
}

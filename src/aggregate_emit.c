/*-------------------------------------------------------------------------
 *
 * aggregate_emit.c
 *	  Step 5 of the data path, what an aggregate emits: the rows of the
 *	  windows a batch changed (emit 'update': the merge, and the close that
 *	  marks them final) or closed (emit 'close': the final row once, moved
 *	  into the results table).  With a topic, each emitted row is also a
 *	  message written into the outbox (outbox.c) in the batch's
 *	  transaction, so a window is published if and only if its batch
 *	  committed, exactly once by the relay.  Key: the window and its groups
 *	  as a JSON object; value: the row as JSON, without the state columns.
 *
 * IDENTIFICATION
 *	  src/aggregate_emit.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "aggregate.h"
#include "connection.h"
#include "relay.h"

/* A text[] literal of the columns a message leaves out: the state ones, and the value ones too for its key. */
static char *
pe_agg_emit_drop(PeAggregate *a, bool value_columns)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "ARRAY['pe_inserted'");
	if (value_columns)
		appendStringInfoString(&s, ", 'closed'");
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			n = pe_agg_state_columns(a->fns[i], suffixes);

		if (value_columns)
			appendStringInfo(&s, ", %s", quote_literal_cstr(a->outs[i]));
		for (int k = 0; k < n; k++)
		{
			appendStringInfo(&s, ", %s", quote_literal_cstr(psprintf("%s__%s", a->outs[i], suffixes[k])));
		}
	}
	appendStringInfoString(&s, "]::pg_catalog.text[]");
	return s.data;
}

/*
 * A statement that writes rows of the results or state table (as r), after
 * common table expressions ctes (or NULL), made to return what it did:
 * when its rows are emitted to a topic, each row's key and value (bytea),
 * whether it is a new window and the windows removed (removed, an SQL
 * expression, or NULL); otherwise one row, how many rows it wrote and how
 * many windows it added, less those removed.  (A row an INSERT ... ON
 * CONFLICT inserted has no xmax; one it updated has the locker's.)
 */
char *
pe_agg_emit_wrap(PeAggregate *a, const char *ctes, const char *sql, bool emits, const char *removed,
				 const char *retracted)
{
	const char *with = ctes ? psprintf("WITH %s, ", ctes) : "WITH ";
	const char *inserted = "(r.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid) AS pe_inserted";

	if (removed == NULL)
		removed = "0::pg_catalog.int8";
	if (!emits || a->emit_topic == NULL)
		return psprintf("%sm AS (%s RETURNING %s) "
						"SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE m.pe_inserted) OPERATOR(pg_catalog.-) %s "
						"FROM m",
						with, sql, inserted, removed);
	{
		char	   *key = pe_agg_emit_drop(a, true);
		char	   *tombstones = "";

		/* the windows taken out and not put back (a session that moved): their keys, with a null value */
		if (retracted)
			tombstones = psprintf("UNION ALL SELECT pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.-) %s, NULL, false, "
								  "x.window_start, x.window_end FROM %s AS x WHERE NOT EXISTS (SELECT FROM m "
								  "WHERE (pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.-) %s) OPERATOR(pg_catalog.=) "
								  "(pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.-) %s)) ",
								  key, retracted, key, key);
		return psprintf("%sm AS (%s RETURNING r.*, %s) "
						"SELECT pg_catalog.convert_to(z.k::pg_catalog.text, 'UTF8'), "
						"pg_catalog.convert_to(z.v::pg_catalog.text, 'UTF8'), z.ins, %s "
						"FROM (SELECT pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.-) %s AS k, "
						"pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.-) %s AS v, m.pe_inserted AS ins, "
						"m.window_start AS ws, m.window_end AS we FROM m %s) AS z ORDER BY z.ws, z.we",
						with, sql, inserted, removed, key, pe_agg_emit_drop(a, false), tombstones);
	}
}

/*
 * After such a statement (its result in SPI_tuptable): the rows it wrote,
 * and how many are new windows (*inserted).  When they are emitted, they
 * count as emitted, and with a topic their messages go into the outbox for
 * the consumer's owner, who must still be allowed the connection.
 */
uint64
pe_agg_emitted(PeAggregate *a, PeTarget *t, bool emits, int64 *inserted)
{
	uint64		n = SPI_processed;
	SPITupleTable *tt = SPI_tuptable;
	Datum	   *k;
	Datum	   *v;
	bool	   *kn;
	bool	   *vn;
	PeConnection *conn;
	bool		isnull;

	*inserted = 0;
	if (!emits || a->emit_topic == NULL)
	{
		n = DatumGetInt64(SPI_getbinval(tt->vals[0], tt->tupdesc, 1, &isnull));
		*inserted = DatumGetInt64(SPI_getbinval(tt->vals[0], tt->tupdesc, 2, &isnull));
		if (emits)
			a->emitted += n;
		return n;
	}
	a->emitted += n;
	if (n == 0)
		return 0;
	conn = pe_connection_lookup(a->emit_connection, true);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connection \"%s\" of aggregate \"%s\" does not exist", a->emit_connection, a->name),
				 errhint("Create the connection again, or drop the aggregate and define it with another emit_connection.")));
	if (!superuser_arg(t->def->owner) && !has_privs_of_role(t->def->owner, conn->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the owner of aggregate \"%s\" may no longer use connection \"%s\"", a->name, conn->name),
				 errhint("Grant the consumer's owner membership in the connection's owner again, or drop the aggregate.")));
	k = palloc(sizeof(Datum) * n);
	v = palloc(sizeof(Datum) * n);
	kn = palloc(sizeof(bool) * n);
	vn = palloc(sizeof(bool) * n);
	for (uint64 r = 0; r < n; r++)
	{
		k[r] = SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &kn[r]);
		v[r] = SPI_getbinval(tt->vals[r], tt->tupdesc, 2, &vn[r]);
		if (DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, 3, &isnull)))
			(*inserted)++;
	}
	*inserted -= DatumGetInt64(SPI_getbinval(tt->vals[0], tt->tupdesc, 4, &isnull));
	pe_outbox_insert_many(a->emit_connection, a->emit_topic, t->def->owner, (int) n, k, kn, v, vn);
	return n;
}

/* The batch emitted, or opened windows: the aggregate's figures. */
void
pe_agg_note_emitted(PeAggregate *a)
{
	PeCatalogAccess acc;
	Oid			types[3] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(a->name);
	values[1] = Int64GetDatum((int64) a->emitted);
	values[2] = Int64GetDatum(a->opened);
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("UPDATE pipeline.aggregate SET emitted = emitted OPERATOR(pg_catalog.+) $2, "
							  "last_emit_at = CASE WHEN $2 OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() ELSE last_emit_at END, "
							  "open_windows = open_windows OPERATOR(pg_catalog.+) $3 "
							  "WHERE name OPERATOR(pg_catalog.=) $1",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update aggregate \"%s\"", a->name);
	pe_catalog_end(&acc);
	a->emitted = 0;
	a->opened = 0;
}

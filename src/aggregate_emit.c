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

/* A text[] literal of the state columns, and of the value columns if all. */
static char *
pe_agg_emit_drop(PeAggregate *a, bool value_columns)
{
	StringInfoData s;
	bool		any = false;

	initStringInfo(&s);
	appendStringInfoString(&s, "ARRAY[");
	if (value_columns)
	{
		appendStringInfoString(&s, "'closed'");
		any = true;
	}
	for (int i = 0; i < a->naggs; i++)
	{
		const char *suffixes[2];
		int			n = pe_agg_state_columns(a->fns[i], suffixes);

		if (value_columns)
			appendStringInfo(&s, ", %s", quote_literal_cstr(a->outs[i]));
		for (int k = 0; k < n; k++)
		{
			appendStringInfo(&s, "%s%s", any ? ", " : "",
							 quote_literal_cstr(psprintf("%s__%s", a->outs[i], suffixes[k])));
			any = true;
		}
	}
	appendStringInfoString(&s, "]::pg_catalog.text[]");
	return any ? s.data : "'{}'::pg_catalog.text[]";
}

/*
 * A statement that writes rows of the results or state table (as r), after
 * common table expressions ctes (or NULL), made to return what they emit:
 * with a topic, each row's key and value (bytea); without, the rows'
 * count is all that is used.
 */
char *
pe_agg_emit_wrap(PeAggregate *a, const char *ctes, const char *sql)
{
	if (a->emit_topic == NULL)
		return ctes ? psprintf("WITH %s %s", ctes, sql) : pstrdup(sql);
	return psprintf("WITH %s%sm AS (%s RETURNING r.*) "
					"SELECT pg_catalog.convert_to((pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.-) %s)::pg_catalog.text, 'UTF8'), "
					"pg_catalog.convert_to((pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.-) %s)::pg_catalog.text, 'UTF8') "
					"FROM m ORDER BY m.window_start, m.window_end",
					ctes ? ctes : "", ctes ? ", " : "", sql, pe_agg_emit_drop(a, true), pe_agg_emit_drop(a, false));
}

/*
 * After such a statement (its result in SPI_processed, SPI_tuptable):
 * count the rows, and with a topic write their messages into the outbox
 * for the consumer's owner, who must still be allowed the connection.
 */
void
pe_agg_emitted(PeAggregate *a, PeTarget *t)
{
	uint64		n = SPI_processed;
	SPITupleTable *tt = SPI_tuptable;
	Datum	   *k;
	Datum	   *v;
	bool	   *kn;
	bool	   *vn;
	int			dims[1];
	int			lbs[1] = {1};
	PeConnection *conn;

	a->emitted += n;
	if (a->emit_topic == NULL || n == 0)
		return;
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
	}
	dims[0] = (int) n;
	pe_outbox_insert_many(a->emit_connection, a->emit_topic, t->def->owner,
						  PointerGetDatum(construct_md_array(k, kn, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT)),
						  PointerGetDatum(construct_md_array(v, vn, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT)));
}

/* The batch emitted: the aggregate's figures. */
void
pe_agg_note_emitted(PeAggregate *a)
{
	PeCatalogAccess acc;
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(a->name);
	values[1] = Int64GetDatum((int64) a->emitted);
	pe_catalog_begin(&acc);
	if (SPI_execute_with_args("UPDATE pipeline.aggregate SET emitted = emitted OPERATOR(pg_catalog.+) $2, "
							  "last_emit_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update aggregate \"%s\"", a->name);
	pe_catalog_end(&acc);
	a->emitted = 0;
}

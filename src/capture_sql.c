/*-------------------------------------------------------------------------
 *
 * capture_sql.c
 *	  The query a captured statement's messages are made with when they
 *	  need one (capture.c prepares and runs it): an UPDATE's, which pairs
 *	  old and new rows by key, and the Debezium-style envelopes of every
 *	  event.  It reads the statement's transition tables pe_old and pe_new
 *	  and returns key and value bytes, in order.  (An INSERT's rows and a
 *	  DELETE's tombstones in the 'row' format need none: capture_rows.c.)
 *
 * IDENTIFICATION
 *	  src/capture_sql.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "capture.h"

/* json_build_object('k1', x."k1", ...) for the key columns */
static void
pe_capture_key(StringInfo buf, List *keys, const char *x)
{
	ListCell   *lc;

	appendStringInfoString(buf, "pg_catalog.json_build_object(");
	foreach(lc, keys)
	{
		const char *k = lfirst(lc);

		appendStringInfo(buf, "%s%s, %s.%s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_literal_cstr(k), x, quote_identifier(k));
	}
	appendStringInfoChar(buf, ')');
}

/* A Debezium-style envelope; op, before and after are SQL expressions. */
static char *
pe_capture_envelope(const char *op, const char *before, const char *after, Oid relid, const char *conn)
{
	const char *ts = "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8";

	return psprintf("pg_catalog.json_build_object('before', %s, 'after', %s, "
					"'source', pg_catalog.json_build_object('connector', 'pipeline_ext', 'version', %s, "
					"'name', %s, 'db', pg_catalog.current_database(), 'schema', %s, 'table', %s, "
					"'txId', pg_catalog.pg_current_xact_id()::pg_catalog.text::pg_catalog.int8, "
					"'lsn', pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), '0/0')::pg_catalog.int8, "
					"'ts_ms', %s), "
					"'op', %s, 'ts_ms', %s)",
					before, after,
					"(SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pipeline_ext')",
					quote_literal_cstr(conn),
					quote_literal_cstr(get_namespace_name(get_rel_namespace(relid))),
					quote_literal_cstr(get_rel_name(relid)), ts, op, ts);
}

/*
 * The query that makes one event's messages (key and value bytes, in
 * order) from the transition tables pe_old and pe_new: an UPDATE's, and
 * the Debezium envelopes.  (An INSERT's and a DELETE's in the 'row'
 * format are made without one, in capture_rows.c.)
 */
char *
pe_capture_sql(int event, Oid relid, List *keys, bool debezium, bool tombstones, const char *conn)
{
	StringInfoData buf;
	StringInfoData ko;
	StringInfoData kn;
	const char *head = "SELECT pg_catalog.convert_to(k::pg_catalog.text, 'UTF8'), "
		"pg_catalog.convert_to(v::pg_catalog.text, 'UTF8') FROM (";

	initStringInfo(&buf);
	initStringInfo(&ko);
	initStringInfo(&kn);
	pe_capture_key(&ko, keys, "pe_o");
	pe_capture_key(&kn, keys, "pe_n");

	Assert(event == 1 || debezium);
	if (event == 0)
	{
		appendStringInfo(&buf, "%s SELECT %s AS k, %s AS v FROM pe_new pe_n) s", head, kn.data,
						 pe_capture_envelope("'c'", "NULL::pg_catalog.json", "pg_catalog.row_to_json(pe_n.*)", relid, conn));
		return buf.data;
	}
	if (event == 2)
	{
		appendStringInfo(&buf, "%s SELECT %s AS k, %s AS v, 1 AS seq FROM pe_old pe_o", head, ko.data,
						 pe_capture_envelope("'d'", "pg_catalog.row_to_json(pe_o.*)", "NULL::pg_catalog.json", relid, conn));
		if (tombstones)
			appendStringInfo(&buf, " UNION ALL SELECT %s AS k, NULL::pg_catalog.json AS v, 2 AS seq FROM pe_old pe_o",
							 ko.data);
		appendStringInfoString(&buf, ") s ORDER BY seq");
		return buf.data;
	}

	/*
	 * UPDATE: old and new rows paired by key; an old key without a new row
	 * was changed away (a delete), a new key without an old row a create.
	 * Deletes go first, so that a key's last message is its state.
	 */
	resetStringInfo(&buf);
	appendStringInfo(&buf, "WITH pe_olds AS (SELECT %s AS k, pg_catalog.row_to_json(pe_o.*) AS r FROM pe_old pe_o), "
					 "pe_news AS (SELECT %s AS k, pg_catalog.row_to_json(pe_n.*) AS r FROM pe_new pe_n), "
					 "ch AS (SELECT COALESCE(b.k, a.k) AS k, a.r AS before, b.r AS after "
					 "FROM pe_olds a FULL JOIN pe_news b ON a.k::pg_catalog.text OPERATOR(pg_catalog.=) b.k::pg_catalog.text) %s",
					 ko.data, kn.data, head);
	if (debezium)
		appendStringInfo(&buf, "SELECT k, %s AS v, 1 AS seq FROM ch WHERE after IS NULL UNION ALL ",
						 pe_capture_envelope("'d'", "before", "NULL::pg_catalog.json", relid, conn));
	if (tombstones)
		appendStringInfoString(&buf, "SELECT k, NULL::pg_catalog.json AS v, 2 AS seq FROM ch WHERE after IS NULL UNION ALL ");
	appendStringInfo(&buf, "SELECT k, %s AS v, 3 AS seq FROM ch WHERE after IS NOT NULL) s ORDER BY seq",
					 debezium ? pe_capture_envelope("CASE WHEN before IS NULL THEN 'c' ELSE 'u' END", "before", "after", relid, conn)
					 : "after");
	return buf.data;
}

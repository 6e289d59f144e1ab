/*-------------------------------------------------------------------------
 *
 * decode_raw.c
 *	  Raw bytes taken whole: the value of the text and bytea formats, and
 *	  any column mapped to $value, $key or a header.  A bytea column gets
 *	  the bytes as they are; any other column gets them as text, which must
 *	  be valid in the database encoding, through the column type's input
 *	  function.  The bytea format into a column that is not bytea gives
 *	  the hex text.
 *
 * IDENTIFICATION
 *	  src/decode_raw.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"

#include "datapath.h"


Datum
pe_bytes_to_bytea(const char *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}


/* Convert raw bytes (key, value, header) for a column. */
Datum
pe_raw_value(PeColumn *col, const char *data, size_t len, const char *what)
{
	char	   *s;

	if (col->is_bytea)
	{
		Datum		b = pe_bytes_to_bytea(data, len);

		/* a domain over bytea: its constraints, as its input function would */
		if (col->typid != BYTEAOID)
			domain_check(b, false, col->typid, NULL, CurrentMemoryContext);
		return b;
	}
	pe_verify_text(data, len, what);
	s = pnstrdup(data, len);
	return pe_input(col, s);
}

/* The whole message value, for a column that takes it. */
Datum
pe_raw_whole_value(PeTarget *t, PeColumn *col, PeMessage *msg)
{
	if (t->def->format == PE_FORMAT_BYTEA && !col->is_bytea)
	{
		/* bytea format into a non-bytea column: hex text */
		return pe_input(col, TextDatumGetCString(DirectFunctionCall1(byteaout,
																	 pe_bytes_to_bytea(msg->value, msg->value_len))));
	}
	return pe_raw_value(col, msg->value, msg->value_len, "value");
}

/*-------------------------------------------------------------------------
 *
 * decode.c
 *	  Decoding messages into rows of the target: the decoder of the
 *	  consumer's format finds the value's fields (decode_json.c,
 *	  decode_csv.c), and each column takes its field, the whole value
 *	  (decode_raw.c), the key or the message's metadata (topic, partition,
 *	  offset, timestamp, headers).  A tombstone's key columns come from its
 *	  key.  A message whose decoding fails with an error about its data
 *	  becomes a dead letter, and decoding goes on with the next; any other
 *	  error ends the batch.
 *
 * IDENTIFICATION
 *	  src/decode.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "datapath.h"
/*
 * The decoders, one per format, indexed by PeFormat: how the fields of a
 * message's value are found for the columns that take them.  A format
 * without fields (text, bytea) puts the whole value into one column
 * (decode_raw.c).  A new format is one more entry.
 */
typedef struct PeDecoder
{
	const char *name;			/* as create_consumer() takes it */
	void		(*fields) (PeTarget *t, const char *data, size_t len, PeFound *found);
} PeDecoder;

static const PeDecoder pe_decoders[] = {
	[PE_FORMAT_JSON] = {"json", pe_decode_json_value},
	[PE_FORMAT_CSV] = {"csv", pe_decode_csv_value},
	[PE_FORMAT_TEXT] = {"text", NULL},
	[PE_FORMAT_BYTEA] = {"bytea", NULL},
	[PE_FORMAT_AVRO] = {"avro", NULL},	/* pe_decode_avro(): values, not text */
};

PeFormat
pe_parse_format(const char *format)
{
	StringInfoData names;
	int			n = lengthof(pe_decoders);

	for (int i = 0; i < n; i++)
		if (strcmp(format, pe_decoders[i].name) == 0)
			return (PeFormat) i;
	initStringInfo(&names);
	for (int i = 0; i < n; i++)
		appendStringInfo(&names, "%s'%s'", i == 0 ? "" : (i == n - 1 ? " or " : ", "), pe_decoders[i].name);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown format \"%s\"", format),
			 errhint("Use %s.", names.data)));
	return PE_FORMAT_JSON;		/* keep compiler quiet */
}

void
pe_verify_text(const char *data, size_t len, const char *what)
{
	if (!pg_verifymbstr(data, len, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("message %s is not valid %s text", what, GetDatabaseEncodingName()),
				 errhint("Use the bytea format, or map the %s to a bytea column.", what)));
}

static bool
pe_message_header(PeMessage *msg, const char *name, const char **val, size_t *len)
{
	if (msg->hdrs)
	{
		const void *v;

		if (rd_kafka_header_get_last(msg->hdrs, name, &v, len) != RD_KAFKA_RESP_ERR_NO_ERROR)
			return false;
		*val = v;
		return true;
	}
	if (msg->headers_jsonb)
	{
		JsonbValue	k;
		JsonbValue *v;

		k.type = jbvString;
		k.val.string.val = (char *) name;
		k.val.string.len = strlen(name);
		v = findJsonbValueFromContainer(&msg->headers_jsonb->root, JB_FOBJECT, &k);
		if (v == NULL)
			return false;
		if (v->type == jbvString)
		{
			*val = v->val.string.val;
			*len = v->val.string.len;
		}
		else
		{
			*val = NULL;
			*len = 0;
		}
		return true;
	}
	return false;
}

/* Text as it is when it is valid text, else "\x" and its bytes in hex. */
static void
pe_escape_header_part(StringInfo buf, const char *bytes, size_t len)
{
	char	   *t = pnstrdup(bytes, len);

	if (strlen(t) == len && pg_verifymbstr(t, len, true))
		escape_json(buf, t);
	else
	{
		StringInfoData hex;

		initStringInfo(&hex);
		appendStringInfoString(&hex, "\\x");
		for (size_t i = 0; i < len; i++)
			appendStringInfo(&hex, "%02x", ((const unsigned char *) bytes)[i]);
		escape_json(buf, hex.data);
		pfree(hex.data);
	}
	pfree(t);
}

/*
 * The message's headers as a jsonb object of strings, for reading: null
 * for a null value, names and values that are not text hex-encoded, the
 * last one of a repeated name.  pe_message_headers_raw() keeps them all.
 */
Jsonb *
pe_message_headers(PeMessage *msg)
{
	StringInfoData buf;
	size_t		idx = 0;
	const char *name;
	const void *val;
	size_t		len;
	bool		first = true;

	if (msg->headers_jsonb)
		return msg->headers_jsonb;
	if (msg->hdrs == NULL)
		return NULL;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	while (rd_kafka_header_get_all(msg->hdrs, idx++, &name, &val, &len) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (!first)
			appendStringInfoString(&buf, ", ");
		first = false;
		pe_escape_header_part(&buf, name, strlen(name));
		appendStringInfoString(&buf, ": ");
		if (val == NULL)
			appendStringInfoString(&buf, "null");
		else
			pe_escape_header_part(&buf, val, len);
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/*
 * The message's headers exactly: an n x 2 bytea array of names and values
 * (null values stay null), in order, repeated names included.  NULL when
 * the message has none.
 */
ArrayType *
pe_message_headers_raw(PeMessage *msg)
{
	size_t		n = 0;
	const char *name;
	const void *val;
	size_t		len;
	Datum	   *elems;
	bool	   *nulls;
	int			dims[2];
	int			lbs[2] = {1, 1};

	if (msg->hdrs == NULL)
		return NULL;
	while (rd_kafka_header_get_all(msg->hdrs, n, &name, &val, &len) == RD_KAFKA_RESP_ERR_NO_ERROR)
		n++;
	if (n == 0)
		return NULL;
	elems = palloc(sizeof(Datum) * 2 * n);
	nulls = palloc0(sizeof(bool) * 2 * n);
	for (size_t i = 0; i < n; i++)
	{
		(void) rd_kafka_header_get_all(msg->hdrs, i, &name, &val, &len);
		elems[2 * i] = pe_bytes_to_bytea(name, strlen(name));
		if (val == NULL)
		{
			nulls[2 * i + 1] = true;
			elems[2 * i + 1] = (Datum) 0;
		}
		else
			elems[2 * i + 1] = pe_bytes_to_bytea(val, len);
	}
	dims[0] = n;
	dims[1] = 2;
	return construct_md_array(elems, nulls, 2, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT);
}

/*
 * librdkafka headers from pe_message_headers_raw()'s array, so that a
 * replayed dead letter goes through the data path as it first came.
 */
rd_kafka_headers_t *
pe_headers_from_raw(ArrayType *raw)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	rd_kafka_headers_t *hdrs;

	if (ARR_NDIM(raw) != 2 || ARR_DIMS(raw)[1] != 2 || ARR_ELEMTYPE(raw) != BYTEAOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers_raw of a dead letter must be an n x 2 array of bytea")));
	deconstruct_array(raw, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	hdrs = rd_kafka_headers_new(n / 2);
	for (int i = 0; i + 1 < n; i += 2)
	{
		bytea	   *name;
		char	   *cname;

		if (nulls[i])
			continue;
		name = DatumGetByteaPP(elems[i]);
		cname = pnstrdup(VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name));
		if (nulls[i + 1])
			(void) rd_kafka_header_add(hdrs, cname, -1, NULL, 0);
		else
		{
			bytea	   *val = DatumGetByteaPP(elems[i + 1]);

			(void) rd_kafka_header_add(hdrs, cname, -1, VARDATA_ANY(val), VARSIZE_ANY_EXHDR(val));
		}
	}
	return hdrs;
}

static Datum
pe_found_value(PeColumn *col, PeFound *f)
{
	TimestampTz ts;

	/* a JSON array into an array column: its elements, by the element type's input */
	if (f->json_nested && col->elem && f->text[0] == '[')
		return pe_input(col, pe_json_array_literal(col, f->text, f->len));
	if (col->is_json && f->json_string)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		escape_json(&buf, f->text);
		return pe_input(col, buf.data);
	}

	/*
	 * The commonest types, without the function-call round trip: exactly
	 * what their input functions do in PostgreSQL 15, for columns of the
	 * type itself (not a domain) without a typmod; ISO 8601 timestamps with
	 * a zone without timestamptz_in's general parser (decode_time.c).
	 */
	if (!f->raw && col->typmod < 0)
		switch (col->typid)
		{
			case TEXTOID:
			case VARCHAROID:
				return PointerGetDatum(cstring_to_text(f->text));
			case INT8OID:
				return Int64GetDatum(pg_strtoint64(f->text));
			case INT4OID:
				return Int32GetDatum(pg_strtoint32(f->text));
			case FLOAT8OID:
				return Float8GetDatum(float8in_internal(f->text, NULL, "double precision", f->text));
			case TIMESTAMPTZOID:
				if (pe_iso_timestamptz(f->text, f->len, &ts))
					return TimestampTzGetDatum(ts);
				break;
			default:
				break;
		}
	return pe_input(col, f->text);
}

/*
 * Fill the key columns of a tombstone from the message key: a JSON object's
 * fields by column name (or column_map path), or the whole key for a
 * single key column.
 */
static void
pe_decode_tombstone_key(PeTarget *t, PeMessage *msg, PeRow *row)
{
	PeFound    *found = palloc0(sizeof(PeFound) * t->ncols);
	bool		json_key = false;

	if (msg->key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tombstone without a key"),
				 errhint("A tombstone (null value) deletes the row of its key; this one has no key.")));
	if (t->key_avro)
	{
		/* key_format 'avro': a record with a field per key column, or the one key column's value */
		pe_decode_avro_key(t, msg->key, msg->key_len, row, false);
		for (int k = 0; k < t->nkeys; k++)
			if (row->nulls[t->keycols[k]])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("cannot find key column \"%s\" in the Avro key of a tombstone", t->cols[t->keycols[k]].name),
						 errhint("Use an Avro record key with a field per key column, or a plain key for a single key column.")));
		return;
	}
	pe_verify_text(msg->key, msg->key_len, "key");
	{
		size_t		i = pe_json_skip_ws(msg->key, msg->key_len, 0);

		json_key = (i < msg->key_len && msg->key[i] == '{');
	}
	if (json_key)
		pe_decode_json(t, msg->key, msg->key_len, found, "key");

	for (int k = 0; k < t->nkeys; k++)
	{
		int			c = t->keycols[k];
		PeColumn   *col = &t->cols[c];

		if (col->source == PE_SRC_KEY || (!json_key && t->nkeys == 1))
		{
			row->values[c] = pe_raw_value(col, msg->key, msg->key_len, "key");
			row->nulls[c] = false;
		}
		else if (json_key && found[c].found && !found[c].isnull)
		{
			row->values[c] = pe_found_value(col, &found[c]);
			row->nulls[c] = false;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cannot find key column \"%s\" in the key of a tombstone", col->name),
					 errhint("Use a JSON object key with a field per key column, or a plain key for a single key column.")));
	}
}

/*
 * Decode one message into row, whose values and nulls arrays the caller
 * gave.  What finding the fields takes (the found array, the fields' text)
 * goes to scratch, which the caller resets after each message; only the
 * row's values are allocated in the current context, the batch's.
 */
static void
pe_decode_one(PeTarget *t, PeMessage *msg, PeRow *row, MemoryContext scratch)
{
	PeConsumerDef *def = t->def;
	PeFound    *found;
	MemoryContext batch_cxt;

	memset(row->values, 0, sizeof(Datum) * t->ncols);
	memset(row->nulls, true, sizeof(bool) * t->ncols);

	if (msg->value == NULL)
	{
		if (!def->delete_on_tombstone)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message has a null value (a tombstone)"),
					 errhint("Create the consumer with delete_on_tombstone => true to delete the key's row on a tombstone.")));
		row->tombstone = true;
		pe_decode_tombstone_key(t, msg, row);
		return;
	}

	batch_cxt = MemoryContextSwitchTo(scratch);
	found = palloc0(sizeof(PeFound) * t->ncols);
	if (pe_decoders[def->format].fields)
		pe_decoders[def->format].fields(t, msg->value, msg->value_len, found);
	MemoryContextSwitchTo(batch_cxt);
	/* Avro's fields go straight into the row's values (the rest below) */
	if (def->format == PE_FORMAT_AVRO)
		pe_decode_avro(t, msg->value, msg->value_len, row);
	/* key_format 'avro': key columns the value leaves null come from the key */
	if (t->key_avro && msg->key && t->nkeys > 0)
	{
		bool		need = false;

		for (int k = 0; k < t->nkeys; k++)
			need |= row->nulls[t->keycols[k]] && t->cols[t->keycols[k]].source != PE_SRC_KEY;
		if (need)
			pe_decode_avro_key(t, msg->key, msg->key_len, row, true);
	}

	for (int c = 0; c < t->ncols; c++)
	{
		PeColumn   *col = &t->cols[c];

		switch (col->source)
		{
			case PE_SRC_FIELD:
			case PE_SRC_CSV:
				if (found[c].found && !found[c].isnull)
				{
					row->values[c] = pe_found_value(col, &found[c]);
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_VALUE:
				row->values[c] = pe_raw_whole_value(t, col, msg);
				row->nulls[c] = false;
				break;
			case PE_SRC_KEY:
				if (msg->key)
				{
					/* an Avro key as JSON (or its text), unless the column takes the bytes */
					if (t->key_avro && !col->is_bytea)
						row->values[c] = pe_avro_key_value(t, col, msg->key, msg->key_len);
					else
						row->values[c] = pe_raw_value(col, msg->key, msg->key_len, "key");
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_TOPIC:
				row->values[c] = pe_input(col, msg->topic);
				row->nulls[c] = false;
				break;
			case PE_SRC_PARTITION:
				if (col->typid == INT4OID)
					row->values[c] = Int32GetDatum(msg->partition);
				else
					row->values[c] = pe_input(col, psprintf("%d", msg->partition));
				row->nulls[c] = false;
				break;
			case PE_SRC_OFFSET:
				if (col->typid == INT8OID)
					row->values[c] = Int64GetDatum(msg->offset);
				else
					row->values[c] = pe_input(col, psprintf(INT64_FORMAT, msg->offset));
				row->nulls[c] = false;
				break;
			case PE_SRC_TIMESTAMP:
				if (msg->timestamp_ms >= 0)
				{
					TimestampTz ts;

					if (msg->timestamp_ms > PE_KAFKA_MS_MAX)
						ereport(ERROR,
								(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
								 errmsg("message timestamp " INT64_FORMAT " ms is out of range for type timestamp with time zone",
										msg->timestamp_ms),
								 errhint("Kafka timestamps are milliseconds since 1970; correct the producer's timestamps, then replay the dead letter.")));
					ts = pe_kafka_ms_to_timestamptz(msg->timestamp_ms);

					/* with a precision, through the input function, which rounds */
					if (col->typid == TIMESTAMPTZOID && col->typmod < 0)
						row->values[c] = TimestampTzGetDatum(ts);
					else
						row->values[c] = pe_input(col, DatumGetCString(DirectFunctionCall1(timestamptz_out,
																							 TimestampTzGetDatum(ts))));
					row->nulls[c] = false;
				}
				break;
			case PE_SRC_HEADERS:
				{
					Jsonb	   *h = pe_message_headers(msg);

					if (h)
					{
						if (col->typid == JSONBOID)
							row->values[c] = JsonbPGetDatum(h);
						else
							row->values[c] = pe_input(col, JsonbToCString(NULL, &h->root, VARSIZE(h)));
						row->nulls[c] = false;
					}
				}
				break;
			case PE_SRC_HEADER:
				{
					const char *v;
					size_t		len;

					if (pe_message_header(msg, col->header, &v, &len) && v != NULL)
					{
						row->values[c] = pe_raw_value(col, v, len, "header");
						row->nulls[c] = false;
					}
				}
				break;
		}
	}
}

/*
 * Decode msgs[0..n) into rows, in order; returns the number of rows.  All
 * of it runs in one subtransaction: a message whose decoding raises an
 * error about the message becomes a dead letter, and decoding resumes
 * after it in a new one.  Any other error propagates.
 */
int
pe_decode_batch(PeTarget *t, PeMessage *msgs, int n, PeRow *rows, PeBatchResult *res)
{
	volatile int nrows = 0;
	volatile int i = 0;
	/* the rows' values and nulls, in two allocations for the whole batch */
	Datum	   *values = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(Datum) * t->ncols * Max(n, 1));
	bool	   *nulls = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(bool) * t->ncols * Max(n, 1));
	MemoryContext scratch = AllocSetContextCreate(CurrentMemoryContext, "pipeline_ext decode",
												  ALLOCSET_DEFAULT_SIZES);

	pe_iso_prepare();

	while (i < n)
	{
		MemoryContext cxt = CurrentMemoryContext;
		ResourceOwner owner = CurrentResourceOwner;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(cxt);
		PG_TRY();
		{
			for (; i < n; i++)
			{
				CHECK_FOR_INTERRUPTS();
				rows[nrows].msg_index = i;
				rows[nrows].values = values + (size_t) nrows * t->ncols;
				rows[nrows].nulls = nulls + (size_t) nrows * t->ncols;
				pe_decode_one(t, &msgs[i], &rows[nrows], scratch);
				MemoryContextReset(scratch);
				nrows++;
			}
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			if (!pe_error_is_row_specific(edata->sqlerrcode))
				ReThrowError(edata);
			pe_add_dead(res, i, edata);
			memset(&rows[nrows], 0, sizeof(PeRow));
			MemoryContextReset(scratch);
			i++;
		}
		PG_END_TRY();
	}
	MemoryContextDelete(scratch);
	return nrows;
}

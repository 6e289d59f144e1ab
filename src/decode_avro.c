/*-------------------------------------------------------------------------
 *
 * decode_avro.c
 *	  The Avro format: a message's value in Confluent's wire format (byte 0
 *	  is 0, bytes 1-4 the writer schema's id in the registry, big-endian,
 *	  then the record in Avro's binary encoding) decoded with its writer
 *	  schema (avro-c) straight into the values of the target's columns.
 *
 *	  Writer schemas are fetched from the connection's registry by id
 *	  (registry.c) once, and kept with what each column needs: the field
 *	  indexes of its path (a column's name, or a column_map path into
 *	  nested records) and the logical type of the field, which avro-c does
 *	  not read, so it is read here from the schema's JSON.  So messages of
 *	  every version of a subject go into the same table: a field a version
 *	  lacks leaves its column null (and so to its default).
 *
 *	  Values (avro_values.c): ["null", T] is a nullable T, other unions
 *	  their current branch; logical types into dates, times, timestamps,
 *	  numerics and uuids; enums their symbol; bytes and fixed bytea;
 *	  arrays into array columns; records, arrays and maps JSON for json and
 *	  jsonb columns.  Flat records skip avro-c (decode_avro_flat.c).

 *	  A value that is not in the wire format, names an id the registry does
 *	  not have, does not decode with its schema, or does not fit its column
 *	  is an error about the message (a dead letter).  A registry that does
 *	  not answer is not: the batch fails, and is tried again.
 *
 * IDENTIFICATION
 *	  src/decode_avro.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/datum.h"
#include "utils/memutils.h"

#include "avro_decode.h"

/* The wire format's schema id: bytes 1 to 4, big-endian. */
static inline int32
pe_avro_id_bytes(const unsigned char *u)
{
	return (int32) (((uint32) u[1] << 24) | ((uint32) u[2] << 16) | ((uint32) u[3] << 8) | (uint32) u[4]);
}

/* The schema id of a value (or key) in the wire format; an error otherwise. */
static int32
pe_avro_id(const char *data, size_t len, const char *what)
{
	const unsigned char *u = (const unsigned char *) data;
	int32		id;

	if (len < 5 || u[0] != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("message %s is not Avro in the schema registry's wire format", what),
				 len < 5 ? errdetail("It has %zu bytes; the wire format starts with 5 (a zero byte and a 4-byte schema id).", len)
				 : errdetail("Its first byte is %d, not 0 (the wire format's magic byte).", (int) u[0]),
				 errhint("Produce with a schema-registry Avro serializer, or consume the topic with another format.")));
	id = pe_avro_id_bytes(u);
	if (id < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("message %s is not Avro in the schema registry's wire format", what),
				 errdetail("Its schema id %d is negative.", id),
				 errhint("Produce with a schema-registry Avro serializer, or consume the topic with another format.")));
	return id;
}

/* The writer schema of a value (or key) in the wire format, resolved for t. */
static PeAvroSchema *
pe_avro_writer(PeTarget *t, bool key, const char *data, size_t len)
{
	int32		id = pe_avro_id(data, len, key ? "key" : "value");
	PeAvroSchema *s = pe_avro_schema(t, key, id);
	PeAvroCache *cache = pe_avro_cache(t, key);

	/* kept from an older description of the target: resolved for this one */
	if (s->paths == NULL)
	{
		char	   *reason = NULL;

		pe_avro_resolve(t, cache, s, s->doc, key);
		if (!key && !pe_avro_defaults(t, cache, s, pe_connection_lookup(t->def->connection, false), &reason))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not fetch the latest Avro schema of topic \"%s\" from the schema registry", t->def->topic),
					 errdetail("%s", reason),
					 errhint("Messages wait until the registry answers; none is skipped.")));
	}
	return s;
}

/* Read a value (or key) in the wire format with its writer schema s into that schema's record. */
static PeAvroSchema *
pe_avro_read(PeTarget *t, PeAvroSchema *s, bool key, const char *data, size_t len)
{
	const char *what = key ? "key" : "value";
	int32		id = s->id;
	PeAvroCache *cache = pe_avro_cache(t, key);
	char		extra;
	const unsigned char *p = (const unsigned char *) data + 5;
	const char *why = NULL;

	if (!pe_avro_check(s->schema, &p, (const unsigned char *) data + len, 0, &why) ||
		(p != (const unsigned char *) data + len && (why = "bytes after the record")))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("could not decode an Avro message %s with schema %d", what, id),
				 errdetail("%s.", why),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	avro_value_reset(&s->value);
	avro_reader_memory_set_source(cache->reader, data + 5, len - 5);
	if (avro_value_read(cache->reader, &s->value) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("could not decode an Avro message %s with schema %d", what, id),
				 errdetail("avro-c: %s", avro_strerror()),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	/* (avro-c's memory reader does not say where it is: one more byte must not be there) */
	if (avro_read(cache->reader, &extra, 1) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("an Avro message %s with schema %d has bytes after its record", what, id),
				 errhint("The message does not match the schema its id names: correct the producer, then replay the dead letter.")));
	return s;
}

/*
 * Each column with a path in s (read) takes its field; only those still
 * null with only_nulls.  An error names the column.
 */
static void
pe_avro_fill(PeTarget *t, PeAvroSchema *s, PeRow *row, bool only_nulls, bool flat)
{
	volatile int c = 0;
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		for (c = 0; c < t->ncols; c++)
		{
			PeAvroPath *p = &s->paths[c];
			avro_value_t v = s->value;
			bool		isnull = false;

			if (only_nulls && !row->nulls[c])
				continue;
			if (p->n < 0)
			{
				/* not in this version of the schema: the latest version's default, if any */
				if (p->has_default)
				{
					/*
					 * a copy: the schema's memory goes when a newer
					 * version turns up, perhaps within this batch
					 */
					row->values[c] = datumCopy(p->dflt, t->cols[c].typbyval, t->cols[c].typlen);
					row->nulls[c] = false;
				}
				continue;
			}
			if (flat)
			{
				/* read by decode_avro_flat.c: a top-level field */
				PeAvroScalar *x = pe_avro_flat_value(s->flat, p->idx[0]);

				if (x)
					row->values[c] = pe_avro_scalar_datum(&t->cols[c], p, x);
				row->nulls[c] = (x == NULL);
				continue;
			}
			for (int k = 0; k < p->n && !isnull; k++)
			{
				avro_value_t branch;
				avro_value_t *r = pe_avro_branch(&v, &branch);
				avro_value_t child;

				if (avro_value_get_type(r) == AVRO_NULL)
					isnull = true;
				else if (avro_value_get_by_index(r, p->idx[k], &child, NULL) != 0)
					isnull = true;	/* another branch of a union than a record */
				else
					v = child;
			}
			if (!isnull)
				row->values[c] = pe_avro_datum(&t->cols[c], p, &v, &isnull);
			row->nulls[c] = isnull;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* which column: the message alone would not say */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->message = psprintf("column \"%s\": %s", t->cols[c].name, edata->message);
		ReThrowError(edata);
	}
	PG_END_TRY();
}

/*
 * Decode one Avro value into the columns that take fields (the others are
 * the caller's): each column's field by its path in the writer schema, null
 * when that version of the schema has no such field.
 */
void
pe_decode_avro(PeTarget *t, const char *data, size_t len, PeRow *row)
{
	PeAvroSchema *s = pe_avro_writer(t, false, data, len);

	if (s->flat && pe_avro_flat_read(s->flat, (const unsigned char *) data + 5, (const unsigned char *) data + len))
		pe_avro_fill(t, s, row, false, true);
	else
		pe_avro_fill(t, pe_avro_read(t, s, false, data, len), row, false, false);
}

/*
 * key_format 'avro': the key columns from an Avro key, by name (a record),
 * or the whole key for one key column; with only_nulls, those the value
 * left null.
 */
void
pe_decode_avro_key(PeTarget *t, const char *data, size_t len, PeRow *row, bool only_nulls)
{
	pe_avro_fill(t, pe_avro_read(t, pe_avro_writer(t, true, data, len), true, data, len), row, only_nulls, false);
}

/* key_format 'avro': the whole key for a column mapped to $key (JSON, or a type's input). */
Datum
pe_avro_key_value(PeTarget *t, PeColumn *col, const char *data, size_t len)
{
	PeAvroSchema *s = pe_avro_read(t, pe_avro_writer(t, true, data, len), true, data, len);
	StringInfoData buf;

	initStringInfo(&buf);
	if (col->is_json)
		pe_avro_json(&buf, &s->value, 0);
	else
		pe_avro_text(&buf, &s->value, 0);
	return pe_input(col, buf.data);
}

/* The schema id of a value or key in the wire format, for a slot's look-ahead; -1 if none. */
int32
pe_avro_schema_id(const char *data, size_t len)
{
	const unsigned char *u = (const unsigned char *) data;

	if (data == NULL || len < 5 || u[0] != 0)
		return -1;
	return pe_avro_id_bytes(u);
}

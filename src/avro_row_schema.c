/*-------------------------------------------------------------------------
 *
 * avro_row_schema.c
 *	  pipeline.avro_schema(table): an Avro record schema for a table's row
 *	  type, for avro_encode() (avro_encode.c) and for registering.
 *
 * IDENTIFICATION
 *	  src/avro_row_schema.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

PG_FUNCTION_INFO_V1(pe_avro_schema_of);

/* The Avro type of a column type: a JSON text. */
static char *
pe_avro_type_of(Oid typid, int32 typmod, const char *name)
{
	Oid			elem = get_element_type(typid);

	if (OidIsValid(elem))
		return psprintf("{\"type\": \"array\", \"items\": %s}", pe_avro_type_of(elem, -1, name));
	switch (getBaseType(typid))
	{
		case BOOLOID:
			return "\"boolean\"";
		case INT2OID:
		case INT4OID:
			return "\"int\"";
		case INT8OID:
			return "\"long\"";
		case FLOAT4OID:
			return "\"float\"";
		case FLOAT8OID:
			return "\"double\"";
		case NUMERICOID:
			if (typmod < (int32) VARHDRSZ)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("column \"%s\" is a numeric without a precision, which an Avro decimal needs", name),
						 errhint("Give the column a precision (numeric(12,2)), or write the schema by hand.")));
			return psprintf("{\"type\": \"bytes\", \"logicalType\": \"decimal\", \"precision\": %d, \"scale\": %d}",
							((typmod - VARHDRSZ) >> 16) & 0xffff, (typmod - VARHDRSZ) & 0xffff);
		case DATEOID:
			return "{\"type\": \"int\", \"logicalType\": \"date\"}";
		case TIMEOID:
			return "{\"type\": \"long\", \"logicalType\": \"time-micros\"}";
		case TIMESTAMPTZOID:
			return "{\"type\": \"long\", \"logicalType\": \"timestamp-micros\"}";
		case TIMESTAMPOID:
			return "{\"type\": \"long\", \"logicalType\": \"local-timestamp-micros\"}";
		case UUIDOID:
			return "{\"type\": \"string\", \"logicalType\": \"uuid\"}";
		case BYTEAOID:
			return "\"bytes\"";
		default:
			/* text, varchar, json (as its text), enums, and whatever prints as text */
			return "\"string\"";
	}
}

/*
 * pipeline.avro_schema(rel regclass, name text) returns text: an Avro
 * record schema for the table's row type, its columns in order, those
 * that may be null as ["null", T] with default null.
 */
Datum
pe_avro_schema_of(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TupleDesc	desc;
	StringInfoData s;
	bool		first = true;
	char	   *name;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	/* (as reading its columns in a query would ask: a lock on a table one may not read is not given) */
	if (pg_class_aclcheck(PG_GETARG_OID(0), GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(PG_GETARG_OID(0))),
				 errhint("avro_schema() needs SELECT on the table.")));
	rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	desc = RelationGetDescr(rel);
	name = PG_ARGISNULL(1) ? RelationGetRelationName(rel) : text_to_cstring(PG_GETARG_TEXT_PP(1));

	initStringInfo(&s);
	appendStringInfoString(&s, "{\"type\": \"record\", \"name\": ");
	escape_json(&s, name);
	appendStringInfoString(&s, ", \"fields\": [");
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		char	   *type;

		if (att->attisdropped)
			continue;
		type = pe_avro_type_of(att->atttypid, att->atttypmod, NameStr(att->attname));
		appendStringInfoString(&s, first ? "{\"name\": " : ", {\"name\": ");
		first = false;
		escape_json(&s, NameStr(att->attname));
		if (att->attnotnull)
			appendStringInfo(&s, ", \"type\": %s}", type);
		else
			appendStringInfo(&s, ", \"type\": [\"null\", %s], \"default\": null}", type);
	}
	appendStringInfoString(&s, "]}");
	relation_close(rel, AccessShareLock);
	PG_RETURN_TEXT_P(cstring_to_text(s.data));
}

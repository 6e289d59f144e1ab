/*-------------------------------------------------------------------------
 *
 * avro_json.h
 *	  What an Avro schema's JSON says that avro-c does not read
 *	  (avro_json.c): logical types, types used again by name, a record's
 *	  fields and their defaults.  For decoding and encoding alike.
 *
 * IDENTIFICATION
 *	  src/avro_json.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_AVRO_JSON_H
#define PE_AVRO_JSON_H

#include "utils/jsonb.h"

/* days and microseconds from 1970-01-01 (Avro's epoch) to 2000-01-01 (PostgreSQL's) */
#define PE_AVRO_EPOCH_DAYS (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE)
#define PE_AVRO_EPOCH_US ((int64) PE_AVRO_EPOCH_DAYS * USECS_PER_DAY)

typedef enum PeAvroLogical
{
	PE_AVRO_PLAIN,
	PE_AVRO_DATE,
	PE_AVRO_TIME_MILLIS,
	PE_AVRO_TIME_MICROS,
	PE_AVRO_TIMESTAMP_MILLIS,
	PE_AVRO_TIMESTAMP_MICROS,
	PE_AVRO_LOCAL_TIMESTAMP_MILLIS,
	PE_AVRO_LOCAL_TIMESTAMP_MICROS,
	PE_AVRO_DECIMAL,
	PE_AVRO_UUID
} PeAvroLogical;

extern JsonbValue *pe_avro_json_key(JsonbContainer *obj, const char *key);
extern bool pe_avro_json_is(JsonbValue *v, const char *s);
extern JsonbContainer *pe_avro_json_type(JsonbValue *t, Jsonb *doc);
extern JsonbContainer *pe_avro_json_field(Jsonb *doc, char **path, int npath);
extern PeAvroLogical pe_avro_logical(JsonbContainer *type, int *scale, int *precision);
extern JsonbContainer *pe_avro_json_object(JsonbValue *t, Jsonb *doc);

#endif							/* PE_AVRO_JSON_H */

/*-------------------------------------------------------------------------
 *
 * avro_decode.h
 *	  What the Avro format's files share: a target's writer schemas
 *	  (avro_schemas.c), the check of a message's bytes against one
 *	  (avro_check.c), and the values decoded with one (decode_avro.c).
 *
 * IDENTIFICATION
 *	  src/avro_decode.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_AVRO_DECODE_H
#define PE_AVRO_DECODE_H

#include <avro.h>

#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "avro_json.h"
#include "connection.h"
#include "datapath.h"

/* One column's way into the records of one writer schema. */
typedef struct PeAvroPath
{
	int			n;				/* fields to follow; -1: not in this schema */
	int		   *idx;			/* their indexes, record by record */
	PeAvroLogical logical;		/* the field's logical type */
	int			scale;			/* a decimal's */
	PeAvroLogical item_logical; /* an array's items': logical type ... */
	int			item_scale;		/* ... and a decimal's scale */
	bool		has_default;	/* not in this schema: the reader's default ... */
	Datum		dflt;			/* ... for the column */
} PeAvroPath;

typedef struct PeAvroFlat PeAvroFlat;	/* decode_avro_flat.c */

/* A writer schema, by its registry id. */
typedef struct PeAvroSchema
{
	int32		id;				/* hash key */
	bool		missing;		/* the registry said it has no such id ... */
	TimestampTz missing_at;		/* ... then */
	char	   *why;			/* ... or why it cannot be read */
	avro_schema_t schema;
	avro_value_iface_t *iface;
	avro_value_t value;			/* a record read into, again and again */
	Jsonb	   *doc;			/* its JSON, for resolving it for a target again */
	PeAvroPath *paths;			/* indexed like the target's columns; NULL: to resolve */
	PeAvroFlat *flat;			/* values: how to read its records in one pass, or NULL */
	MemoryContext rcxt;			/* what resolving it allocated (paths, flat, defaults) */
} PeAvroSchema;

typedef struct PeAvroCache
{
	MemoryContext cxt;			/* all of it, beside avro-c's own (outlives a target's description) */
	HTAB	   *schemas;
	PeAvroSchema *last;			/* the schema found last (a topic's messages mostly share one) */
	avro_reader_t reader;
	int32		reader_id;		/* the subject's latest version asked for (0: never) */
	Jsonb	   *reader_doc;		/* ... its JSON, or NULL: no such subject */
} PeAvroCache;

/* avro_schemas.c */
extern PeAvroCache *pe_avro_cache(PeTarget *t, bool key);
extern PeAvroSchema *pe_avro_schema(PeTarget *t, bool key, int32 id);
extern void pe_avro_resolve(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, Jsonb *doc, bool key);
extern bool pe_avro_defaults(PeTarget *t, PeAvroCache *cache, PeAvroSchema *s, PeConnection *conn, char **why);

/* avro_check.c */
extern bool pe_avro_varint(const unsigned char **p, const unsigned char *end, int64 *out);
extern bool pe_avro_check(avro_schema_t s, const unsigned char **p, const unsigned char *end, int depth,
						  const char **why);

/* A primitive Avro value, read by avro-c or straight from a message's bytes. */
typedef struct PeAvroScalar
{
	avro_type_t type;
	int64		i;				/* boolean, int, long; an enum's index */
	double		d;
	float		f;
	const char *bytes;			/* string (not zero-terminated), bytes, fixed */
	size_t		len;
	avro_schema_t schema;		/* an enum's, for its symbol */
} PeAvroScalar;

/* decode_avro_flat.c */
extern PeAvroFlat *pe_avro_flat_plan(PeTarget *t, PeAvroSchema *s, MemoryContext cxt);
extern bool pe_avro_flat_read(PeAvroFlat *f, const unsigned char *p, const unsigned char *end);
extern PeAvroScalar *pe_avro_flat_value(PeAvroFlat *f, int i);

/* avro_values.c */
extern avro_value_t *pe_avro_branch(avro_value_t *v, avro_value_t *branch);
extern void pe_avro_json(StringInfo buf, avro_value_t *v, int depth);
extern void pe_avro_text(StringInfo buf, avro_value_t *v, int depth);
extern Datum pe_avro_int_datum(PeColumn *col, PeAvroLogical logical, int64 i, bool is_long);
extern Datum pe_avro_datum(PeColumn *col, PeAvroPath *p, avro_value_t *v, bool *isnull);
extern Datum pe_avro_scalar_datum(PeColumn *col, PeAvroPath *p, PeAvroScalar *x);
extern void pe_avro_verify_string(const char *s, size_t len);

#endif							/* PE_AVRO_DECODE_H */

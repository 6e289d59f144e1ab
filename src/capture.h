/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  Change capture's triggers, shared by capture.c (capture_changes,
 *	  uncapture, the trigger), capture_rows.c (the messages the trigger
 *	  makes without a query) and capture_follow.c (partitions made,
 *	  attached or detached after the capture).
 *
 * IDENTIFICATION
 *	  src/capture.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_CAPTURE_H
#define PE_CAPTURE_H

#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"
#include "utils/tuplestore.h"

/* A capture's key columns, set up to be written as JSON (capture_rows.c) */
typedef struct PeCaptureKey
{
	int			n;
	AttrNumber *atts;			/* in the table whose trigger it is */
	char	  **names;			/* as JSON strings */
	FmgrInfo   *to_json;		/* to_json() for each one's type */
} PeCaptureKey;

/* messages made and written at a time: a statement of any size in bounded memory */
#define PE_CAPTURE_CHUNK 1024

extern int64 pe_capture_lookup(Oid relid);
extern void pe_capture_make_triggers(Oid relid, int64 id, List *keys);
extern void pe_capture_drop_triggers(Oid relid);
extern List *pe_capture_current_keys(Relation rel, List *keys, char **attnums, int nattnums);

/* capture_sql.c */
extern char *pe_capture_sql(int event, Oid relid, List *keys, bool debezium, bool tombstones, const char *conn);

/* capture_rows.c */
extern AttrNumber pe_capture_key_attnum(Relation rel, const char *name);
extern PeCaptureKey *pe_capture_key_prepare(Relation rel, List *keys, MemoryContext cxt);
extern uint64 pe_capture_rows_write(PeCaptureKey *k, Relation rel, Tuplestorestate *rows, bool with_value,
									const char *connection, const char *topic, Oid owner);

/* capture_settings.c */
extern int	pe_capture_settings_pin(void);
extern void pe_capture_settings_restore(int nest);

/* capture_follow.c */
extern List *pe_capture_tree(Oid relid);
extern int64 pe_capture_trigger_id(Oid relid);
extern void pe_capture_cover(Oid captured, int64 id, Oid top, bool strict);

#endif							/* PE_CAPTURE_H */

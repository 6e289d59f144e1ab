/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  Change capture's triggers, shared by capture.c (capture_changes,
 *	  uncapture, the trigger) and capture_follow.c (partitions made,
 *	  attached or detached after the capture).
 *
 * IDENTIFICATION
 *	  src/capture.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_CAPTURE_H
#define PE_CAPTURE_H

#include "nodes/pg_list.h"
#include "utils/relcache.h"

extern int64 pe_capture_lookup(Oid relid);
extern void pe_capture_make_triggers(Oid relid, int64 id, List *keys);
extern void pe_capture_drop_triggers(Oid relid);
extern List *pe_capture_current_keys(Relation rel, List *keys, char **attnums, int nattnums);

/* capture_follow.c */
extern List *pe_capture_tree(Oid relid);
extern int64 pe_capture_trigger_id(Oid relid);
extern void pe_capture_cover(Oid captured, int64 id, Oid top, bool strict);

#endif							/* PE_CAPTURE_H */

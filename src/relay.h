/*-------------------------------------------------------------------------
 *
 * relay.h
 *	  The transactional outbox: pipeline.send() and the outbox rows it
 *	  writes (outbox.c), and the relay worker that publishes committed rows
 *	  exactly once with Kafka transactions (relay.c).
 *
 * IDENTIFICATION
 *	  src/relay.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_RELAY_H
#define PE_RELAY_H

#include "pipeline_ext.h"

#include "producer.h"

/* header that carries a message's outbox id, for consumers that dedupe */
#define PE_OUTBOX_ID_HEADER "pipeline_ext.outbox_id"

/* outbox.c */
extern int64 pe_outbox_insert(const PeMessageArgs *a);
extern void pe_relay_wake(Oid dboid);

/* relay.c */
extern char *pe_outbox_checkpoint_topic;
extern char *pe_outbox_crash_at;
extern int	pe_outbox_round_max;
extern PGDLLEXPORT void pe_relay_main(Datum arg);

#endif							/* PE_RELAY_H */

/*-------------------------------------------------------------------------
 *
 * connection.h
 *	  Connections: their catalog rows, who may use them, their secrets, and
 *	  running catalog statements as the catalog's owner (connection.c).
 *
 * IDENTIFICATION
 *	  src/connection.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PE_CONNECTION_H
#define PE_CONNECTION_H

#include "pipeline_ext.h"

#include "nodes/pg_list.h"

typedef struct PeConnection
{
	char	   *name;
	Oid			owner;
	char	   *kind;			/* "kafka" or "eventhubs" */
	List	   *props;			/* effective properties: list of PeProperty */
} PeConnection;

typedef struct PeCatalogAccess
{
	Oid			save_userid;
	int			save_sec;
} PeCatalogAccess;

extern void pe_catalog_begin(PeCatalogAccess *acc);
extern void pe_catalog_end(PeCatalogAccess *acc);
/* what a secret reads as for a role that may not see it */
#define PE_MASK "********"
extern bool pe_may_see_secrets(Oid owner);
extern PeConnection *pe_connection_lookup(const char *name, bool missing_ok);
extern void pe_check_connection_use(PeConnection *conn);
extern Oid	pe_connection_catalog_relid(void);
extern List *pe_connection_secrets(PeConnection *conn);

#endif							/* PE_CONNECTION_H */

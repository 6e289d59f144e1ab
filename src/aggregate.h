/*-------------------------------------------------------------------------
 *
 * aggregate.h
 *	  Continuous windowed aggregates: definitions (aggregate_api.c) and
 *	  their update in each batch's transaction (aggregate.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PIPELINE_EXT_AGGREGATE_H
#define PIPELINE_EXT_AGGREGATE_H

#include "datapath.h"

extern List *pe_aggregates_of(PeConsumerDef *def);
extern int	pe_aggregates_screen(List *aggs, PeTarget *t, PeRow *rows, int nrows, PeBatchResult *res);
extern void pe_aggregates_update(List *aggs, PeTarget *t, PeMessage *msgs, int n, PeRow *rows, int nrows,
								 List *dead, int npart, bool replay);

#endif

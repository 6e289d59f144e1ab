/*-------------------------------------------------------------------------
 *
 * aggregate_group.h
 *	  An event's groups as aggregate_pre.c groups a batch by them: how each
 *	  group column's values are hashed and compared, an event's key and
 *	  hash (aggregate_group.c), and whether two keys are the same.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PIPELINE_EXT_AGGREGATE_GROUP_H
#define PIPELINE_EXT_AGGREGATE_GROUP_H

#include "aggregate.h"

/* bytes of a PE_GROUP_BYTES value kept in its key, so that a cell compares them without a trip to its event */
#define PE_GROUP_INLINE 16

/* A group's value as PE_GROUP_BITS and PE_GROUP_BYTES compare it, taken from its event once. */
typedef struct PeGroupKey
{
	bool		isnull;
	int32		len;			/* _BYTES: the length of ... */
	const char *bytes;			/* ... its bytes */
	int64		bits;			/* _BITS: its number */
	uint64		inl[PE_GROUP_INLINE / sizeof(uint64)];	/* _BYTES of len <= PE_GROUP_INLINE: them, zero-padded */
} PeGroupKey;

/*
 * How a group's values are hashed and compared: with the type's own
 * functions, or, where those reduce to it, by their bits (a by-value
 * integer, date or timestamp) or their bytes (text in a deterministic
 * collation: texteq compares bytes, hashtext hashes them).  The hash is
 * this process's own (the TID cache's key, aggregate_direct.c), so it
 * need not be the type's.
 */
typedef enum PeGroupCmp
{
	PE_GROUP_FMGR,
	PE_GROUP_BITS,
	PE_GROUP_BYTES
} PeGroupCmp;

/* The groups' hash and equality functions. */
typedef struct PeAggGroupFns
{
	FmgrInfo   *hash;
	FmgrInfo   *eq;
	PeGroupCmp	how;
} PeAggGroupFns;

extern PeGroupCmp pe_group_cmp_of(Oid typid, Oid coll);
extern void pe_group_key(PeAggGroupFns *gf, PeColumn *col, PeRow *row, int c, PeGroupKey *k);
extern uint32 pe_group_hash(PeAggregate *a, PeTarget *t, const int *cols, PeAggGroupFns *gf, PeRow *row, PeGroupKey *k0);

/* Whether two keys of a PE_GROUP_BITS or PE_GROUP_BYTES group are the same value (null equal to null). */
static inline bool
pe_group_key_same(PeGroupCmp how, const PeGroupKey *x, const PeGroupKey *y)
{
	if (x->isnull || y->isnull)
		return x->isnull == y->isnull;
	if (how == PE_GROUP_BITS)
		return x->bits == y->bits;
	if (x->len != y->len)
		return false;
	if (x->len <= PE_GROUP_INLINE)
		return memcmp(x->inl, y->inl, sizeof(x->inl)) == 0;
	return memcmp(x->bytes, y->bytes, x->len) == 0;
}

#endif

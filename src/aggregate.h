/*-------------------------------------------------------------------------
 *
 * aggregate.h
 *	  Continuous windowed aggregates: definitions (aggregate_api.c) and
 *	  their update in each batch's transaction: which events count
 *	  (aggregate.c), their merge into the results (aggregate_merge.c), the
 *	  watermark and the windows it closes (aggregate_close.c), and what
 *	  they emit (aggregate_emit.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PIPELINE_EXT_AGGREGATE_H
#define PIPELINE_EXT_AGGREGATE_H

#include "datapath.h"
#include "lib/stringinfo.h"
#include "storage/lockdefs.h"
#include "utils/rel.h"
#include "datatype/timestamp.h"

extern List *pe_aggregates_of(PeConsumerDef *def);
extern void pe_aggregates_columns(List *aggs, PeTarget *t, bool *need);
extern void pe_aggregates_lock(int64 consumer_id, LOCKMODE mode);
extern bool pe_aggregates_changed(int64 consumer_id, int naggs);
extern void pe_aggregates_drop_state(PeConsumerDef *def);
extern void pe_aggregates_idle(PeConsumerDef *def);
extern int	pe_aggregates_screen(List *aggs, PeTarget *t, PeMessage *msgs, PeRow *rows, int nrows,
								 PeBatchResult *res);

/* the time_column that means the message's Kafka timestamp */
#define PE_AGG_TIMESTAMP "$timestamp"
extern void pe_aggregates_update(List *aggs, PeTarget *t, PeMessage *msgs, int n, PeRow *rows, int nrows,
								 List *dead, int npart, bool replay);

/* inside the aggregate files: one definition, as a batch uses it */
typedef struct PeAggregate
{
	char	   *name;
	Oid			results;
	int64		size_us;		/* of a session window: its gap */
	bool		session;
	bool		cumulative;		/* slide_us: its step */
	int64		slide_us;
	TimestampTz origin;
	char	   *time_zone;		/* windows in its wall time; NULL: UTC */
	Datum		tz_text;		/* ... as text, for timezone() */
	int64		lateness_us;
	bool		has_wm;			/* a watermark yet (at the batch's start) */
	int64		wm;				/* it, in the time column's microseconds */
	bool		has_cp;			/* windows ending at or before cp are closed */
	int64		cp;				/* (the watermark less the lateness, or more) */
	char	   *time_column;
	int			ngroups;
	char	  **groups;
	int			naggs;
	char	  **fns;
	char	  **args;
	char	  **outs;
	double	   *fractions;		/* of each percentile */
	const char *hll_schema;		/* quoted, when an aggregate uses hll */
	const char *tdigest_schema; /* quoted, when one uses tdigest */
	bool		emit_close;		/* emit 'close': open windows wait in state */
	Oid			state;
	char	   *emit_connection;	/* and emit_topic: NULL without a topic */
	char	   *emit_topic;
	uint64		emitted;		/* rows emitted in this batch */
	int64		opened;			/* windows it opened, not yet in open_windows */
	bool	   *has_valid_from; /* of each function: added by alter_aggregate */
	int64	   *valid_from;		/* ... complete in windows starting here on */
	int32		revision;
} PeAggregate;

/* a t-digest's compression: about 1% error at the tails, 6 kB per window */
#define PE_AGG_TDIGEST_COMPRESSION 100
/* an hll's registers, 2^11: about 2.3% error, 1.3 kB per window */
#define PE_AGG_HLL_LOG2M 11

extern int	pe_agg_state_columns(const char *fn, const char **suffixes);

/* aggregate_parse.c and aggregate_api.c: pieces of a definition, for create and alter */
extern Oid	pe_agg_require_column(Relation rel, const char *name, const char *what);
extern void pe_agg_parse(const char *spec, Relation rel, char **fn, char **arg, char **out, double *fraction);
extern void pe_agg_select_item(StringInfo sql, const char *fn, const char *argument, Oid argtype, const char *out,
							   Oid time_type);
extern const char *pe_agg_avg_sum_argument(Oid argtype, const char *expr);
/* the longest window, slide, gap, lateness or idle timeout: a century */
#define PE_AGG_MAX_DAYS 36525
/* group columns at most: the results' unique index has the window's start and end too (INDEX_MAX_KEYS 32) */
#define PE_AGG_MAX_GROUPS 30
extern void pe_agg_check_interval(Interval *iv, const char *what, bool zero_ok);
extern void pe_agg_require_decoded(PeTarget *t, const char *name, const char *what);
extern char *pe_agg_emit_connection(PeConsumerDef *def, char *name, const char *topic);
extern const char *pe_agg_extension_schema(const char *extname);

extern const char *pe_agg_table(PeAggregate *a, Oid rel);
extern void pe_agg_lock(PeAggregate *a);
extern const char *pe_agg_columns(PeAggregate *a);
extern Datum pe_agg_interval(int64 us);
extern int64 pe_agg_bin(int64 t, int64 stride, int64 origin);
extern int64 pe_agg_local(PeAggregate *a, int64 t);
extern int64 pe_agg_utc(PeAggregate *a, int64 local);
extern int	pe_agg_as_owner(PeTarget *t, const char *sql, int nargs, Oid *types, Datum *values, const char *nulls);
extern void pe_agg_session_joins(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take,
								 int ntake, const int *cols, bool *in_closed, bool *in_open);
extern void pe_agg_merge(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake,
						 const int *cols, int ncols);
extern void pe_agg_on_conflict(StringInfo s, PeAggregate *a, Oid time_type);

/* aggregate_direct.c: one column of a function's results, and how it merges */
typedef enum PeAggItemKind
{
	PE_ITEM_COUNT,				/* r + EXCLUDED */
	PE_ITEM_SUM,				/* COALESCE(r + EXCLUDED, r, EXCLUDED) */
	PE_ITEM_MIN,				/* LEAST(r, EXCLUDED) */
	PE_ITEM_MAX,				/* GREATEST(r, EXCLUDED) */
	PE_ITEM_AVG					/* the merged sum (next item) / the merged count (the one after) */
} PeAggItemKind;

typedef struct PeAggItem
{
	const char *name;			/* the results' column */
	PeAggItemKind kind;
	Oid			typid;			/* its type */
	int			agg;			/* the function's index in the aggregate */
	FmgrInfo   *cmp;			/* min, max: the type's btree comparison ... */
	Oid			collation;		/* ... in the column's collation */
} PeAggItem;

extern bool pe_agg_direct_merge(PeAggregate *a, PeTarget *t, Oid res, Oid time_type, int ncells,
								const uint32 *hashes, const Datum *ws,
								const Datum *we, PeColumn *const *gcols, Datum **gv, bool **gn, const PeAggItem *items,
								int nitems, Datum **iv, bool **in, int64 *inserted);

/* aggregate_pre.c */
extern int	pe_agg_compare(Oid typid, FmgrInfo *cmp, Oid collation, Datum x, Datum y);
extern bool pe_agg_pre_merge(PeAggregate *a, PeTarget *t, PeRow *rows, const Datum *times, const int *take, int ntake,
							 const int *cols, int ncols);
extern char *pe_agg_emit_wrap(PeAggregate *a, const char *ctes, const char *sql, bool emits, const char *removed,
							  const char *retracted);
extern uint64 pe_agg_emitted(PeAggregate *a, PeTarget *t, bool emits, int64 *inserted);
extern void pe_agg_note_emitted(PeAggregate *a);
extern void pe_agg_close_to(PeAggregate *a, PeTarget *t, Datum wm, bool isnull, TimestampTz started);
extern void pe_agg_advance(PeAggregate *a, PeTarget *t, int32 *bp, int64 *bl, int64 *bo, Datum *bt, bool *bt_null,
						   int nbp, int npart, TimestampTz started);

#endif

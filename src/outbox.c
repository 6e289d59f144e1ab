/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  pipeline.send(): a message written into pipeline.outbox in the
 *	  caller's transaction.  Nothing leaves before COMMIT; a ROLLBACK (or a
 *	  rolled-back savepoint) takes the row with it.  The relay (relay.c)
 *	  publishes committed rows; at the commit of a transaction that sent,
 *	  it is woken (or its database's manager, which starts it).
 *
 * IDENTIFICATION
 *	  src/outbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "connection.h"
#include "datapath.h"
#include "producer.h"
#include "relay.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(pe_outbox_send);

static bool pe_outbox_wake_at_commit = false;
static int64 pe_outbox_max_id = 0;	/* the highest id this transaction wrote */
static bool pe_outbox_cb_registered = false;

/* Wake this database's relay, or its manager to start one. */
void
pe_relay_wake(Oid dboid)
{
	struct Latch *latch = NULL;

	if (pe_shared == NULL)
		return;
	LWLockAcquire(pe_shared->lock, LW_SHARED);
	for (int i = 0; i < PE_MAX_DBS; i++)
		if (pe_shared->dbs[i].dboid == dboid && pe_shared->dbs[i].relay.pid != 0)
			latch = pe_shared->dbs[i].relay.latch;
	LWLockRelease(pe_shared->lock);
	if (latch)
		SetLatch(latch);
	else
		pe_wake_manager(dboid);
}

static void
pe_outbox_xact_cb(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pe_outbox_wake_at_commit)
				pe_commits_begin(pe_outbox_max_id);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (pe_outbox_wake_at_commit)
			{
				pe_outbox_wake_at_commit = false;
				pe_outbox_max_id = 0;
				pe_commits_committed();
				pe_relay_wake(MyDatabaseId);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction's rows commit with COMMIT PREPARED, elsewhere */
			pe_outbox_wake_at_commit = false;
			pe_outbox_max_id = 0;
			pe_commits_forget();
			break;
		default:
			break;
	}
}

/* The number of pipeline.outbox's column name. */
static AttrNumber
pe_outbox_attnum(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return i + 1;
	elog(ERROR, "pipeline.outbox has no column \"%s\"", name);
	return InvalidAttrNumber;	/* keep compiler quiet */
}

/*
 * pipeline.outbox as the extension made it, which pe_outbox_write() relies
 * on: a plain table of these columns and types, and nothing that an
 * INSERT statement would run besides (constraints other than NOT NULL,
 * generated columns, triggers, rules, row security).  A table changed by
 * hand is an error rather than rows written around what was added.
 */
static void
pe_outbox_check_shape(Relation rel)
{
	static const struct
	{
		const char *name;
		Oid			type;
	}			cols[] = {
		{"id", INT8OID}, {"xid", XID8OID}, {"connection", TEXTOID}, {"topic", TEXTOID},
		{"partition", INT4OID}, {"key", BYTEAOID}, {"value", BYTEAOID}, {"headers", JSONBOID},
		{"sent_at", TIMESTAMPTZOID}, {"sent_by", OIDOID},
	};
	TupleDesc	desc = RelationGetDescr(rel);
	int			live = 0;
	bool		ok = rel->rd_rel->relkind == RELKIND_RELATION && rel->trigdesc == NULL &&
		rel->rd_rules == NULL && !rel->rd_rel->relrowsecurity &&
		(desc->constr == NULL || (desc->constr->num_check == 0 && !desc->constr->has_generated_stored));

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		live++;
		if (att->attgenerated)
			ok = false;
	}
	if (live != (int) lengthof(cols))
		ok = false;
	for (int i = 0; ok && i < (int) lengthof(cols); i++)
		if (TupleDescAttr(desc, pe_outbox_attnum(desc, cols[i].name) - 1)->atttypid != cols[i].type)
			ok = false;
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table pipeline.outbox is not as pipeline_ext made it"),
				 errdetail("Messages are written into it directly: it must be a plain table of its ten columns, without triggers, rules, row security, check constraints or generated columns."),
				 errhint("Undo the change to pipeline.outbox.")));
}

/*
 * The sequence of pipeline.outbox's identity, looked up in pg_depend once
 * per backend (every send() and captured statement needs it), again when
 * the table is another one (the extension made again) or the sequence is
 * gone.
 */
static Oid
pe_outbox_sequence(Oid relid, AttrNumber a_id)
{
	static Oid	table = InvalidOid;
	static Oid	seq = InvalidOid;

	if (relid != table || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(seq)))
	{
		seq = getIdentitySequence(relid, a_id, false);
		table = relid;
	}
	return seq;
}

/*
 * What pe_outbox_write() needs to know of pipeline.outbox, found by name
 * and checked (pe_outbox_check_shape) once, kept until a relcache
 * invalidation of the table: every change to it that the check looks at
 * (its columns, triggers, rules, row security, constraints), and its drop
 * or rename, sends one.  A send() or a captured statement otherwise paid
 * two name look-ups and a hundred strcmp()s each time.
 */
typedef struct PeOutboxShape
{
	bool		valid;
	Oid			relid;
	AttrNumber	a_id, a_xid, a_conn, a_topic, a_part, a_key, a_value, a_headers, a_sent_at, a_sent_by;
} PeOutboxShape;

static PeOutboxShape pe_outbox_shape;

static void
pe_outbox_relcache_cb(Datum arg, Oid relid)
{
	(void) arg;
	if (relid == InvalidOid || relid == pe_outbox_shape.relid)
		pe_outbox_shape.valid = false;
}

/*
 * pipeline.outbox opened with RowExclusiveLock, and its shape.  The lock
 * is taken before the kept shape is trusted: taking it reads the
 * invalidations other sessions sent, and a table that changed meanwhile
 * is looked at again.
 */
static Relation
pe_outbox_open(const PeOutboxShape **shape)
{
	static bool registered = false;
	PeOutboxShape *c = &pe_outbox_shape;
	Relation	rel;

	if (!registered)
	{
		CacheRegisterRelcacheCallback(pe_outbox_relcache_cb, (Datum) 0);
		registered = true;
	}
	if (c->valid)
	{
		/* (gone meanwhile: the extension made again; looked up by name below) */
		rel = try_table_open(c->relid, RowExclusiveLock);
		if (rel && c->valid)
		{
			*shape = c;
			return rel;
		}
		if (rel)
			table_close(rel, RowExclusiveLock);
		c->valid = false;
	}

	{
		Oid			nsp = get_namespace_oid(PE_SCHEMA, false);
		Oid			relid = get_relname_relid("outbox", nsp);
		TupleDesc	desc;

		if (!OidIsValid(relid))
			elog(ERROR, "pipeline.outbox does not exist");
		rel = table_open(relid, RowExclusiveLock);
		pe_outbox_check_shape(rel);
		desc = RelationGetDescr(rel);
		c->a_id = pe_outbox_attnum(desc, "id");
		c->a_xid = pe_outbox_attnum(desc, "xid");
		c->a_conn = pe_outbox_attnum(desc, "connection");
		c->a_topic = pe_outbox_attnum(desc, "topic");
		c->a_part = pe_outbox_attnum(desc, "partition");
		c->a_key = pe_outbox_attnum(desc, "key");
		c->a_value = pe_outbox_attnum(desc, "value");
		c->a_headers = pe_outbox_attnum(desc, "headers");
		c->a_sent_at = pe_outbox_attnum(desc, "sent_at");
		c->a_sent_by = pe_outbox_attnum(desc, "sent_by");
		c->relid = relid;
		c->valid = true;
	}
	*shape = c;
	return rel;
}

/*
 * Write n messages into pipeline.outbox for role sender, in their order;
 * returns the first one's id.  Written as the extension's catalog is
 * (TimescaleDB writes its own so): heap and index inserts, without
 * planning and running a statement, which for an application's one-row
 * statement cost more than the insert itself.  The columns' defaults are
 * filled here: id from the identity's sequence, xid the top
 * transaction's, sent_at the clock's.  Only the extension writes the
 * table; it has no triggers, rules or policies, and no constraint but
 * NOT NULL and its primary key (ExecInsertIndexTuples checks that, and
 * maintains any index an administrator adds).
 */
int64
pe_outbox_write(const char *connection, const char *topic, Oid sender, int32 partition, Jsonb *headers,
				int n, Datum *keys, bool *key_nulls, Datum *values, bool *value_nulls)
{
	Relation	rel;
	const PeOutboxShape *sh;
	TupleDesc	desc;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Oid			seq;
	Datum		conn_d = CStringGetTextDatum(connection);
	Datum		topic_d = CStringGetTextDatum(topic);
	Datum		xid_d;
	Datum		now_d = TimestampTzGetDatum(GetCurrentTimestamp());
	CommandId	cid = GetCurrentCommandId(true);
	int64		first = 0;

	PreventCommandIfReadOnly("pipeline.send()");
	PreventCommandDuringRecovery("pipeline.send()");
	PreventCommandIfParallelMode("pipeline.send()");
	rel = pe_outbox_open(&sh);
	desc = RelationGetDescr(rel);
	seq = pe_outbox_sequence(RelationGetRelid(rel), sh->a_id);
	xid_d = FullTransactionIdGetDatum(GetTopFullTransactionId());

	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = table_slot_create(rel, &estate->es_tupleTable);

	for (int i = 0; i < n; i++)
	{
		int64		id = nextval_internal(seq, false);

		if (i == 0)
			first = id;
		pe_outbox_max_id = Max(pe_outbox_max_id, id);
		ExecClearTuple(slot);
		memset(slot->tts_isnull, true, sizeof(bool) * desc->natts);
		slot->tts_values[sh->a_id - 1] = Int64GetDatum(id);
		slot->tts_values[sh->a_xid - 1] = xid_d;
		slot->tts_values[sh->a_conn - 1] = conn_d;
		slot->tts_values[sh->a_topic - 1] = topic_d;
		slot->tts_values[sh->a_sent_at - 1] = now_d;
		slot->tts_values[sh->a_sent_by - 1] = ObjectIdGetDatum(sender);
		slot->tts_isnull[sh->a_id - 1] = slot->tts_isnull[sh->a_xid - 1] = slot->tts_isnull[sh->a_conn - 1] =
			slot->tts_isnull[sh->a_topic - 1] = slot->tts_isnull[sh->a_sent_at - 1] =
			slot->tts_isnull[sh->a_sent_by - 1] = false;
		if (partition >= 0)
		{
			slot->tts_values[sh->a_part - 1] = Int32GetDatum(partition);
			slot->tts_isnull[sh->a_part - 1] = false;
		}
		if (headers)
		{
			slot->tts_values[sh->a_headers - 1] = JsonbPGetDatum(headers);
			slot->tts_isnull[sh->a_headers - 1] = false;
		}
		slot->tts_values[sh->a_key - 1] = keys[i];
		slot->tts_isnull[sh->a_key - 1] = key_nulls[i];
		slot->tts_values[sh->a_value - 1] = values[i];
		slot->tts_isnull[sh->a_value - 1] = value_nulls[i];
		ExecStoreVirtualTuple(slot);
		table_tuple_insert(rel, slot, cid, 0, NULL);
		/* (a deferrable unique index would need the executor's recheck) */
		if (ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL) != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table pipeline.outbox is not as pipeline_ext made it"),
					 errdetail("It has a deferrable unique or exclusion constraint."),
					 errhint("Undo the change to pipeline.outbox.")));
		ResetPerTupleExprContext(estate);
	}

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	if (n > 0)
		pe_outbox_note_sent();
	return first;
}

/* Write one message into the outbox, for the current role.  Returns its id. */
int64
pe_outbox_insert(const PeMessageArgs *a)
{
	Datum		key = a->key ? pe_bytes_to_bytea(a->key, a->key_len) : (Datum) 0;
	Datum		value = a->value ? pe_bytes_to_bytea(a->value, a->value_len) : (Datum) 0;
	bool		key_null = a->key == NULL;
	bool		value_null = a->value == NULL;

	return pe_outbox_write(a->connection, a->topic, GetUserId(), a->partition, a->headers,
						   1, &key, &key_null, &value, &value_null);
}

/*
 * Write n messages (bytea keys and values, nulls allowed) of one topic
 * into the outbox for role sender, in their order.
 */
void
pe_outbox_insert_many(const char *connection, const char *topic, Oid sender,
					  int n, Datum *keys, bool *key_nulls, Datum *values, bool *value_nulls)
{
	pe_outbox_write(connection, topic, sender, -1, NULL, n, keys, key_nulls, values, value_nulls);
}

/* This transaction wrote into the outbox: wake the relay at its commit. */
void
pe_outbox_note_sent(void)
{
	if (!pe_outbox_cb_registered)
	{
		RegisterXactCallback(pe_outbox_xact_cb, NULL);
		pe_outbox_cb_registered = true;
	}
	pe_outbox_wake_at_commit = true;
}

/*
 * pipeline.send(connection, topic, value, key, headers, partition): the
 * outbox id.  The caller must be allowed to use the connection; the
 * topic and partition are checked by the broker when the relay publishes
 * (a refusal makes a dead letter, see relay.c), since nothing may reach
 * the network before COMMIT.
 */
Datum
pe_outbox_send(PG_FUNCTION_ARGS)
{
	PeMessageArgs a;
	PeConnection *conn;

	pe_require_preload();
	pe_message_args(fcinfo, &a);
	conn = pe_connection_lookup(a.connection, false);
	pe_check_connection_use(conn);
	PG_RETURN_INT64(pe_outbox_insert(&a));
}

/* pipeline_ext 0.9.0 -> 0.10.0: the outbox's dead letters can be sent again, or deleted, by their senders */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.10.0'" to load this file. \quit

-- A role deletes the dead letters it sees (those it, or a role it belongs
-- to, sent): the view's condition holds for its DELETE.
GRANT DELETE ON @extschema@.outbox_dead_letters TO PUBLIC;

-- After the cause is fixed: the caller's dead letters (all, or those of
-- ids) back into the outbox in their order, in the caller's transaction,
-- for the caller, who must be allowed to use each one's connection.
-- Returns how many.
CREATE FUNCTION @extschema@.resend_outbox_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'pe_outbox_resend';

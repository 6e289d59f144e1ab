/* pipeline_ext 0.8.0 -> 0.9.0 */
\echo Use "ALTER EXTENSION pipeline_ext UPDATE TO '0.9.0'" to load this file. \quit

-- A window, slide, lateness or idle timeout of create_aggregate() that does
-- not parse ('fortnight') is refused with a hint: the function reads the
-- spec itself, where the interval type's input refused it with none.
--
-- create_aggregate() gets a signature that takes them as text.  A quoted
-- literal or an untyped parameter goes to it (a string's preferred type is
-- text); a value that is an interval (interval '1 hour', a column, a
-- PL/pgSQL variable) keeps the interval signature of 0.6.0.  Both run the
-- same C function.
CREATE FUNCTION @extschema@.create_aggregate(
    name          text,
    consumer      text,
    "window"      text,
    time_column   text,
    aggregates    text[],
    group_by      text[] DEFAULT '{}',
    slide         text DEFAULT NULL,
    origin        timestamptz DEFAULT '2000-01-01 00:00:00+00',
    results       text DEFAULT NULL,
    lateness      text DEFAULT '0',
    idle_timeout  text DEFAULT '1 minute',
    emit          text DEFAULT 'update',
    emit_topic    text DEFAULT NULL,
    emit_connection text DEFAULT NULL,
    kind          text DEFAULT NULL,
    time_zone     text DEFAULT NULL)
RETURNS regclass
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'pe_create_aggregate';

-- alter_aggregate() keeps its interval signature: a text one beside it
-- would make a call that gives neither lateness nor idle_timeout match
-- both, and "any" would refuse an untyped parameter (a driver's) that
-- resolves to interval today.

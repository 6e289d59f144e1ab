/*-------------------------------------------------------------------------
 *
 * decode_json.c
 *	  The json format: a message value (or key) that is a JSON object, its
 *	  fields found by column name or column_map path.  A fast scanner takes
 *	  the common flat object without escapes; anything else goes through
 *	  PostgreSQL's JSON parser, which also reports malformed JSON.
 *
 * IDENTIFICATION
 *	  src/decode_json.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "datapath.h"

typedef struct PeJsonState
{
	JsonLexContext *lex;
	PeTarget   *t;
	PeFound    *found;
	const char *path[PE_JSON_MAX_DEPTH];
	int			pending_col;	/* column whose field was just named */
	int			pending_level;
	int			ncaptures;		/* object/array values being captured */
	int			capture_col[PE_JSON_MAX_DEPTH];
	int			capture_level[PE_JSON_MAX_DEPTH];
	const char *capture_start[PE_JSON_MAX_DEPTH];
} PeJsonState;

static int
pe_json_match(PeJsonState *st, int level)
{
	for (int c = 0; c < st->t->ncols; c++)
	{
		PeColumn   *col = &st->t->cols[c];
		bool		ok;

		if (col->source != PE_SRC_FIELD || col->npath != level)
			continue;
		ok = true;
		for (int d = 0; d < level && ok; d++)
			ok = (strcmp(col->path[d], st->path[d]) == 0);
		if (ok)
			return c;
	}
	return -1;
}

static void
pe_json_ofield_start(void *state, char *fname, bool isnull)
{
	PeJsonState *st = state;
	int			level = st->lex->lex_level;	/* 1 for top-level fields */

	(void) isnull;
	st->pending_col = -1;
	if (level < 1 || level > PE_JSON_MAX_DEPTH)
		return;
	st->path[level - 1] = fname;
	st->pending_col = pe_json_match(st, level);
	st->pending_level = level;
}

static void
pe_json_ofield_end(void *state, char *fname, bool isnull)
{
	PeJsonState *st = state;

	(void) fname;
	(void) isnull;
	st->pending_col = -1;
}

static void
pe_json_struct_start(void *state)
{
	PeJsonState *st = state;

	if (st->pending_col >= 0 && st->lex->lex_level == st->pending_level &&
		st->ncaptures < PE_JSON_MAX_DEPTH)
	{
		st->capture_col[st->ncaptures] = st->pending_col;
		st->capture_level[st->ncaptures] = st->pending_level;
		st->capture_start[st->ncaptures] = st->lex->token_start;
		st->ncaptures++;
		st->pending_col = -1;
	}
}

static void
pe_json_struct_end(void *state)
{
	PeJsonState *st = state;
	int			k = st->ncaptures - 1;

	if (k >= 0 && st->lex->lex_level == st->capture_level[k])
	{
		PeFound    *f = &st->found[st->capture_col[k]];

		f->found = true;
		f->isnull = false;
		f->len = st->lex->prev_token_terminator - st->capture_start[k];
		f->text = pnstrdup(st->capture_start[k], f->len);
		f->json_string = false;
		f->json_nested = true;
		st->ncaptures--;
	}
}

static void
pe_json_scalar(void *state, char *token, JsonTokenType type)
{
	PeJsonState *st = state;
	PeFound    *f;

	if (st->pending_col < 0 || st->lex->lex_level != st->pending_level)
		return;
	f = &st->found[st->pending_col];
	f->found = true;
	f->isnull = (type == JSON_TOKEN_NULL);
	f->text = token;
	f->len = token ? strlen(token) : 0;
	f->json_string = (type == JSON_TOKEN_STRING);
	f->json_nested = false;
}

/*
 * The fast path for the common message: a flat JSON object whose strings
 * have no escapes, mapped to top-level columns.  It scans the object once
 * without copying what no column takes.  Returns false when the message
 * needs the full parser (escapes, or a column with a nested path); any
 * syntax error also returns false, so the full parser reports it.
 */
static bool
pe_json_is_number(const char *p, size_t n)
{
	size_t		i = 0;

	if (i < n && p[i] == '-')
		i++;
	if (i >= n || !isdigit((unsigned char) p[i]))
		return false;
	if (p[i] == '0')
		i++;
	else
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	if (i < n && p[i] == '.')
	{
		i++;
		if (i >= n || !isdigit((unsigned char) p[i]))
			return false;
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	}
	if (i < n && (p[i] == 'e' || p[i] == 'E'))
	{
		i++;
		if (i < n && (p[i] == '+' || p[i] == '-'))
			i++;
		if (i >= n || !isdigit((unsigned char) p[i]))
			return false;
		while (i < n && isdigit((unsigned char) p[i]))
			i++;
	}
	return i == n;
}

/* Scan a string starting after its opening quote; false if it has escapes. */
static bool
pe_json_scan_string(const char *data, size_t len, size_t *i, size_t *end)
{
	size_t		j = *i;

	while (j < len && data[j] != '"')
	{
		if (data[j] == '\\' || (unsigned char) data[j] < 0x20)
			return false;
		j++;
	}
	if (j >= len)
		return false;
	*end = j;
	*i = j + 1;
	return true;
}

static bool
pe_decode_json_fast(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	size_t		i = 0;

	if (!t->flat_json)
		return false;
	i = pe_json_skip_ws(data, len, i);
	if (i >= len || data[i] != '{')
		return false;
	i++;
	i = pe_json_skip_ws(data, len, i);
	if (i < len && data[i] == '}')
	{
		i++;
		goto tail;
	}
	for (;;)
	{
		size_t		kstart,
					kend,
					vstart,
					vend;
		int			col = -1;
		bool		is_string = false;

		/* key */
		i = pe_json_skip_ws(data, len, i);
		if (i >= len || data[i] != '"')
			return false;
		kstart = ++i;
		if (!pe_json_scan_string(data, len, &i, &kend))
			return false;
		i = pe_json_skip_ws(data, len, i);
		if (i >= len || data[i] != ':')
			return false;
		i++;
		i = pe_json_skip_ws(data, len, i);
		if (i >= len)
			return false;

		for (int c = 0; c < t->ncols; c++)
		{
			PeColumn   *pc = &t->cols[c];

			if (pc->source == PE_SRC_FIELD && pc->path0len == kend - kstart &&
				memcmp(pc->path[0], data + kstart, kend - kstart) == 0)
			{
				col = c;
				break;
			}
		}

		/* value */
		vstart = i;
		if (data[i] == '"')
		{
			vstart = ++i;
			if (!pe_json_scan_string(data, len, &i, &vend))
				return false;
			is_string = true;
		}
		else if (data[i] == '{' || data[i] == '[')
		{
			int			depth = 0;
			JsonLexContext *lex;
			JsonSemAction sem;

			for (; i < len; i++)
			{
				char		ch = data[i];

				if (ch == '"')
				{
					i++;
					while (i < len && data[i] != '"')
					{
						if (data[i] == '\\')
							i++;
						i++;
					}
					if (i >= len)
						return false;
				}
				else if (ch == '{' || ch == '[')
					depth++;
				else if (ch == '}' || ch == ']')
				{
					if (--depth == 0)
					{
						i++;
						break;
					}
				}
			}
			if (depth != 0)
				return false;
			vend = i;
			/* a nested value must be valid JSON whatever column takes it */
			lex = makeJsonLexContextCstringLen((char *) data + vstart, vend - vstart, GetDatabaseEncoding(), false);
			memset(&sem, 0, sizeof(sem));
			if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
				return false;
		}
		else
		{
			while (i < len && data[i] != ',' && data[i] != '}' && !PE_WS(data[i]))
				i++;
			vend = i;
			if (!((vend - vstart == 4 && memcmp(data + vstart, "true", 4) == 0) ||
				  (vend - vstart == 5 && memcmp(data + vstart, "false", 5) == 0) ||
				  (vend - vstart == 4 && memcmp(data + vstart, "null", 4) == 0) ||
				  pe_json_is_number(data + vstart, vend - vstart)))
				return false;
		}

		if (col >= 0)
		{
			PeFound    *f = &found[col];

			f->found = true;
			f->isnull = (!is_string && vend - vstart == 4 && memcmp(data + vstart, "null", 4) == 0);
			f->text = pnstrdup(data + vstart, vend - vstart);
			f->len = vend - vstart;
			f->json_string = is_string;
			f->json_nested = !is_string && (data[vstart] == '{' || data[vstart] == '[');
		}

		i = pe_json_skip_ws(data, len, i);
		if (i < len && data[i] == ',')
		{
			i++;
			continue;
		}
		if (i < len && data[i] == '}')
		{
			i++;
			break;
		}
		return false;
	}
tail:
	i = pe_json_skip_ws(data, len, i);
	return i == len;
}

void
pe_decode_json(PeTarget *t, const char *data, size_t len, PeFound *found, const char *what)
{
	PeJsonState st;
	JsonSemAction sem;
	JsonParseErrorType rc;
	size_t		i = pe_json_skip_ws(data, len, 0);

	if (i == len || data[i] != '{')
	{
		/* still report malformed JSON as such */
		JsonLexContext *lex = makeJsonLexContextCstringLen((char *) data, len, GetDatabaseEncoding(), false);

		memset(&sem, 0, sizeof(sem));
		rc = pg_parse_json(lex, &sem);
		if (rc != JSON_SUCCESS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("message %s is not valid JSON: %s", what, json_errdetail(rc, lex))));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message %s is not a JSON object", what),
				 errhint("The json format maps the fields of a top-level object to columns.")));
	}

	memset(&st, 0, sizeof(st));
	st.lex = makeJsonLexContextCstringLen((char *) data, len, GetDatabaseEncoding(), true);
	st.t = t;
	st.found = found;
	st.pending_col = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_field_start = pe_json_ofield_start;
	sem.object_field_end = pe_json_ofield_end;
	sem.object_start = pe_json_struct_start;
	sem.object_end = pe_json_struct_end;
	sem.array_start = pe_json_struct_start;
	sem.array_end = pe_json_struct_end;
	sem.scalar = pe_json_scalar;
	rc = pg_parse_json(st.lex, &sem);
	if (rc != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("message %s is not valid JSON: %s", what, json_errdetail(rc, st.lex))));
}

/* The json decoder: the fields of a message value that is a JSON object. */
void
pe_decode_json_value(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	pe_verify_text(data, len, "value");
	if (!pe_decode_json_fast(t, data, len, found))
	{
		memset(found, 0, sizeof(PeFound) * t->ncols);
		pe_decode_json(t, data, len, found, "value");
	}
}

/* ---- a JSON array into an array column ---------------------------------- */

typedef struct PeJsonArrayState
{
	JsonLexContext *lex;
	StringInfo	out;			/* the array literal */
	bool		elem_json;		/* json or jsonb elements: each element's JSON text */
	int			capture_level;	/* an element taken whole, from this level; -1: none */
	const char *capture_start;
} PeJsonArrayState;

/* An element of an array literal, quoted: never read as NULL or as a sub-array. */
static void
pe_array_quote(StringInfo out, const char *s, size_t len)
{
	appendStringInfoChar(out, '"');
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] == '"' || s[i] == '\\')
			appendStringInfoChar(out, '\\');
		appendStringInfoChar(out, s[i]);
	}
	appendStringInfoChar(out, '"');
}

static void
pe_json_array_start(void *state)
{
	PeJsonArrayState *st = state;
	int			level = st->lex->lex_level;	/* the array's own: 0 for the value */

	if (st->capture_level >= 0)
		return;
	if (level > 0 && st->elem_json)
	{
		st->capture_level = level;
		st->capture_start = st->lex->token_start;
		return;
	}
	appendStringInfoChar(st->out, '{');	/* a dimension */
}

static void
pe_json_array_end(void *state)
{
	PeJsonArrayState *st = state;

	if (st->capture_level >= 0)
	{
		if (st->lex->lex_level == st->capture_level)
		{
			pe_array_quote(st->out, st->capture_start, st->lex->prev_token_terminator - st->capture_start);
			st->capture_level = -1;
		}
		return;
	}
	appendStringInfoChar(st->out, '}');
}

static void
pe_json_array_object_start(void *state)
{
	PeJsonArrayState *st = state;

	if (st->capture_level >= 0)
		return;
	st->capture_level = st->lex->lex_level;
	st->capture_start = st->lex->token_start;
}

static void
pe_json_array_element_start(void *state, bool isnull)
{
	PeJsonArrayState *st = state;

	(void) isnull;
	if (st->capture_level < 0 && st->out->data[st->out->len - 1] != '{')
		appendStringInfoChar(st->out, ',');
}

static void
pe_json_array_scalar(void *state, char *token, JsonTokenType type)
{
	PeJsonArrayState *st = state;

	if (st->capture_level >= 0)
		return;
	if (type == JSON_TOKEN_NULL)
		appendStringInfoString(st->out, "NULL");
	else if (type == JSON_TOKEN_STRING && st->elem_json)
	{
		StringInfoData j;

		initStringInfo(&j);
		escape_json(&j, token);
		pe_array_quote(st->out, j.data, j.len);
	}
	else
		pe_array_quote(st->out, token, strlen(token));
}

/*
 * A JSON array (json, len: valid JSON) as the literal of array column col:
 * nested arrays its dimensions, null NULL, objects their JSON text; for
 * json and jsonb elements, each element's JSON text.  The column's input
 * function then reads the elements with the element type's own.
 */
char *
pe_json_array_literal(PeColumn *col, const char *json, size_t len)
{
	PeJsonArrayState st;
	JsonSemAction sem;
	StringInfoData out;
	JsonParseErrorType rc;

	initStringInfo(&out);
	memset(&st, 0, sizeof(st));
	st.lex = makeJsonLexContextCstringLen((char *) json, len, GetDatabaseEncoding(), true);
	st.out = &out;
	st.elem_json = col->elem && col->elem->is_json;
	st.capture_level = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.array_start = pe_json_array_start;
	sem.array_end = pe_json_array_end;
	sem.object_start = pe_json_array_object_start;
	sem.object_end = pe_json_array_end;
	sem.array_element_start = pe_json_array_element_start;
	sem.scalar = pe_json_array_scalar;
	rc = pg_parse_json(st.lex, &sem);
	if (rc != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("field for column \"%s\" is not valid JSON: %s", col->name, json_errdetail(rc, st.lex))));
	return out.data;
}

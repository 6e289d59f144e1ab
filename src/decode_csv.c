/*-------------------------------------------------------------------------
 *
 * decode_csv.c
 *	  The csv format: one CSV record per message, its fields filling the
 *	  target's columns in order (delimiter, quote and null string from
 *	  format_options).
 *
 * IDENTIFICATION
 *	  src/decode_csv.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "datapath.h"

static void
pe_decode_csv(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	StringInfoData field;
	size_t		i = 0;
	int			n = 0;
	char		d = t->csv_delim;
	char		q = t->csv_quote;

	/* one record; a trailing newline is not a field */
	while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
		len--;
	initStringInfo(&field);
	for (;;)
	{
		bool		quoted = false;
		int			c;

		resetStringInfo(&field);
		if (i < len && data[i] == q)
		{
			quoted = true;
			i++;
			for (;;)
			{
				if (i >= len)
					ereport(ERROR,
							(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
							 errmsg("unterminated quoted CSV field %d", n + 1)));
				if (data[i] == q)
				{
					if (i + 1 < len && data[i + 1] == q)
					{
						appendStringInfoChar(&field, q);
						i += 2;
						continue;
					}
					i++;
					break;
				}
				appendStringInfoChar(&field, data[i++]);
			}
			if (i < len && data[i] != d)
				ereport(ERROR,
						(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
						 errmsg("unexpected character after quoted CSV field %d", n + 1)));
		}
		else
		{
			while (i < len && data[i] != d)
			{
				if (data[i] == '\n' || data[i] == '\r')
					ereport(ERROR,
							(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
							 errmsg("CSV value holds more than one record"),
							 errhint("Each message must hold exactly one CSV record.")));
				appendStringInfoChar(&field, data[i++]);
			}
		}

		for (c = 0; c < t->ncols; c++)
			if (t->cols[c].source == PE_SRC_CSV && t->cols[c].csv_index == n)
				break;
		if (c == t->ncols)
			ereport(ERROR,
					(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
					 errmsg("CSV record has more than %d fields", t->ncsv),
					 errhint("The fields fill the target's columns in order; %d columns take CSV fields.", t->ncsv)));
		found[c].found = true;
		found[c].isnull = (!quoted && strcmp(field.data, t->csv_null) == 0);
		found[c].text = pnstrdup(field.data, field.len);
		found[c].len = field.len;
		n++;
		if (i >= len)
			break;
		i++;					/* the delimiter */
	}
	for (int c = 0; c < t->ncols; c++)
		if (t->cols[c].source == PE_SRC_CSV && !found[c].found && t->cols[c].default_expr == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
					 errmsg("CSV record has %d fields, expected %d", n, t->ncsv),
					 errhint("Missing trailing fields are allowed only for columns with a default.")));
}

/* The csv decoder: the fields of a message value that is one CSV record. */
void
pe_decode_csv_value(PeTarget *t, const char *data, size_t len, PeFound *found)
{
	pe_verify_text(data, len, "value");
	pe_decode_csv(t, data, len, found);
}

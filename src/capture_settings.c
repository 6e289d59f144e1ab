/*-------------------------------------------------------------------------
 *
 * capture_settings.c
 *	  The settings a captured statement's messages are made under.  A
 *	  value's JSON text depends on some of the writing session's settings:
 *	  a timestamptz is written with the session's time zone offset, a
 *	  float with extra_float_digits' precision, a bytea as bytea_output
 *	  says, an interval as IntervalStyle says, and values printed by their
 *	  type's output function inside JSON (ranges, arrays of some types) as
 *	  DateStyle says.  Left to each session, one row would have another
 *	  key in each (another partition, a tombstone that misses the row it
 *	  deletes in a compacted topic), two keys could print the same (an
 *	  UPDATE pairs old and new rows by the key's text), and a float could
 *	  lose digits.  So the messages are made with TimeZone UTC (as
 *	  Debezium writes times), DateStyle ISO, IntervalStyle postgres,
 *	  extra_float_digits 1 (shortest text that reads back exactly) and
 *	  bytea_output hex: each set only for the trigger's work, and only
 *	  where the session has another value (a session with the defaults
 *	  pays five comparisons).  lc_monetary, for the money type, is left.
 *
 * IDENTIFICATION
 *	  src/capture_settings.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgtime.h"
#include "utils/bytea.h"
#include "utils/float.h"
#include "utils/guc.h"

#include "capture.h"

/* a zone whose offset is zero at every instant (UTC, Etc/UTC, GMT ...) */
static bool
pe_capture_zone_is_utc(void)
{
	long		gmtoff;

	return session_timezone != NULL && pg_get_timezone_offset(session_timezone, &gmtoff) && gmtoff == 0;
}

static void
pe_capture_set(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Set what differs from the fixed settings; returns the GUC nest level to
 * give pe_capture_settings_restore(), or -1 when nothing was set.  An
 * error before the restore is undone with the (sub)transaction, as a
 * function's SET clause is.
 */
int
pe_capture_settings_pin(void)
{
	bool		tz = pe_capture_zone_is_utc();
	int			nest;

	if (tz && DateStyle == USE_ISO_DATES && IntervalStyle == INTSTYLE_POSTGRES && extra_float_digits > 0 &&
		bytea_output == BYTEA_OUTPUT_HEX)
		return -1;
	nest = NewGUCNestLevel();
	if (!tz)
		pe_capture_set("TimeZone", "UTC");
	if (DateStyle != USE_ISO_DATES)
		pe_capture_set("DateStyle", "ISO");
	if (IntervalStyle != INTSTYLE_POSTGRES)
		pe_capture_set("IntervalStyle", "postgres");
	if (extra_float_digits <= 0)
		pe_capture_set("extra_float_digits", "1");
	if (bytea_output != BYTEA_OUTPUT_HEX)
		pe_capture_set("bytea_output", "hex");
	return nest;
}

void
pe_capture_settings_restore(int nest)
{
	if (nest >= 0)
		AtEOXact_GUC(true, nest);
}

/*-------------------------------------------------------------------------
 *
 * decode_time.c
 *	  Reading the timestamps streams carry most, ISO 8601 with an explicit
 *	  zone ("2026-11-24T00:00:01Z", "2026-11-24 00:00:01.25+02:00"),
 *	  straight into a timestamptz, without timestamptz_in's general parser
 *	  (a tenth of decoding the benchmark's events).  Only what has one
 *	  meaning whatever the session's settings is taken: four-digit years,
 *	  valid fields, at most microseconds, a zone of +/-HH[[:]MM], or Z while
 *	  timezone_abbreviations has it as UTC (it is an abbreviation, and a
 *	  custom set can lack it or move it); anything else (no zone, 24:00,
 *	  leap seconds, BC, typmods) is left to timestamptz_in, so the result
 *	  is always what it would give.
 *
 * IDENTIFICATION
 *	  src/decode_time.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/datetime.h"

#include "datapath.h"

/* "Z" is UTC in the current timezone_abbreviations (pe_iso_prepare) */
static bool pe_z_is_utc = false;

/* Look up what "Z" means now: once per batch, as the setting can change. */
void
pe_iso_prepare(void)
{
	int			offset = 0;
	pg_tz	   *tz = NULL;
	char		z[] = "z";

	pe_z_is_utc = (DecodeTimezoneAbbrev(0, z, &offset, &tz) == TZ && offset == 0);
}

/* n decimal digits at s, or -1 */
static int
pe_digits(const char *s, int n)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

/*
 * s[0..len) as an ISO 8601 timestamp with a zone, into *result; false when
 * it is not one of the forms taken here (the caller then asks
 * timestamptz_in, which also reports what is wrong).
 */
bool
pe_iso_timestamptz(const char *s, size_t len, TimestampTz *result)
{
	int			year,
				mon,
				mday,
				hour,
				min,
				sec;
	int64		usec = 0;
	int			zone = 0;		/* seconds east of UTC */
	size_t		i;

	/* YYYY-MM-DD[T ]HH:MM:SS */
	if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') ||
		s[13] != ':' || s[16] != ':')
		return false;
	year = pe_digits(s, 4);
	mon = pe_digits(s + 5, 2);
	mday = pe_digits(s + 8, 2);
	hour = pe_digits(s + 11, 2);
	min = pe_digits(s + 14, 2);
	sec = pe_digits(s + 17, 2);
	if (year < 1 || mon < 1 || mon > 12 || mday < 1 ||
		mday > day_tab[isleap(year)][mon - 1] ||
		hour < 0 || hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 59)
		return false;
	i = 19;

	/* .f to .ffffff */
	if (i < len && s[i] == '.')
	{
		int			ndig = 0;
		int64		scale = USECS_PER_SEC;

		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9')
		{
			if (++ndig > 6)
				return false;
			scale /= 10;
			usec += (s[i] - '0') * scale;
			i++;
		}
		if (ndig == 0)
			return false;
	}

	/* Z, or +/-HH, +/-HHMM, +/-HH:MM */
	if (i < len && s[i] == 'Z' && pe_z_is_utc)
		i++;
	else if (i < len && (s[i] == '+' || s[i] == '-'))
	{
		int			sign = (s[i] == '-') ? -1 : 1;
		int			zh,
					zm = 0;

		i++;
		if (len - i < 2 || (zh = pe_digits(s + i, 2)) < 0)
			return false;
		i += 2;
		if (i < len && s[i] == ':')
			i++;
		if (len - i >= 2)
		{
			if ((zm = pe_digits(s + i, 2)) < 0)
				return false;
			i += 2;
		}
		if (zh > 14 || zm > 59)
			return false;
		zone = sign * (zh * SECS_PER_HOUR + zm * SECS_PER_MINUTE);
	}
	else
		return false;			/* no zone: the session's TimeZone decides */
	if (i != len)
		return false;

	*result = ((int64) (date2j(year, mon, mday) - POSTGRES_EPOCH_JDATE) * SECS_PER_DAY +
			   hour * SECS_PER_HOUR + min * SECS_PER_MINUTE + sec - zone) * USECS_PER_SEC + usec;
	return true;
}

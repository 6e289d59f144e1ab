#!/usr/bin/env bash
# The whole test suite: set-up (packages, build, install), then pg_regress
# tests on a temporary instance and the end-to-end TAP tests against the test
# broker.  Last line: "N passed, M failed".
#
#   sudo bash test/check.sh            everything
#   PROVE_TESTS=test/t/001_produce.pl sudo -E bash test/check.sh   one TAP file
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

pe_setup

WORK=${PE_TEST_DIR:-/tmp/pipeline_ext-check}
pe_workdir "$WORK"
cd "$WORK"

passed=0
failed=0

echo "== pg_regress"
set +e
pe_as_user make -s PG_CONFIG="$PG_CONFIG" installcheck TAP_TESTS= 2>&1 | tee "$WORK/regress.log"
r_status=${PIPESTATUS[0]}
set -e
r_ok=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok [0-9]+ ' "$WORK/regress.log" || true)
r_bad=$(grep -cE '\.\.\. FAILED|^not ok ' "$WORK/regress.log" || true)
# pg_regress did not run, or stopped early (a missing expected file, a crash)
if [ "$r_status" -ne 0 ] && [ "$r_bad" -eq 0 ]; then r_bad=1; fi
if [ "$r_ok" -eq 0 ] && [ "$r_bad" -eq 0 ]; then r_bad=1; fi
passed=$((passed + r_ok)); failed=$((failed + r_bad))
if [ -f "$WORK/regression.diffs" ]; then
	echo "== regression.diffs"; cat "$WORK/regression.diffs"
fi

echo "== TAP (prove)"
set +e
pe_as_user env TEMP_CONFIG="$WORK/test/tap.conf" make -s PG_CONFIG="$PG_CONFIG" installcheck REGRESS= \
	${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} PROVE_FLAGS="-I $WORK/test/perl -v" 2>&1 | tee "$WORK/tap.log"
set -e
t_ok=$(grep -cE '^ok [0-9]+' "$WORK/tap.log" || true)
t_bad=$(grep -cE '^not ok [0-9]+' "$WORK/tap.log" || true)
# a script that died, or whose plan does not match, counts as a failure
t_die=$(grep -cE 'Dubious|Bad plan|No subtests run|Parse errors' "$WORK/tap.log" || true)
passed=$((passed + t_ok)); failed=$((failed + t_bad + t_die))
if [ "$t_bad" -gt 0 ] || [ "$t_die" -gt 0 ]; then
	for f in "$WORK"/tmp_check/log/*.log; do
		[ -f "$f" ] || continue
		echo "== $f (last 60 lines)"; tail -n 60 "$f"
	done
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

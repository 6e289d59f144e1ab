# PipelineExt::Crash: a server process killed with SIGKILL in a TAP test,
# and the wait for the postmaster's restart of every backend.  The next
# query must not start before that: PostgreSQL 15's psql helpers
# (poll_query_until, psql, safe_psql) write the query to psql's standard
# input, and a psql refused with "the database system is in recovery mode"
# exits before it is written, which kills the test with "Broken pipe"
# (008 failed that way once in CI).
package PipelineExt::Crash;

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(kill_and_wait_restart);

# kill_and_wait_restart(NODE, PID): SIGKILL to PID, a process of NODE;
# returns once NODE accepts connections again.  False when PID was not
# there to kill.
sub kill_and_wait_restart
{
	my ($node, $pid) = @_;
	my $log_at = -s $node->logfile;

	return 0 unless $pid && kill('KILL', $pid);
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_at);
	$node->wait_for_log(qr/database system is ready to accept connections/, $log_at);
	return 1;
}

1;

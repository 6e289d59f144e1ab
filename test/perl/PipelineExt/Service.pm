# PipelineExt::Service: what the test broker and the test registry share
# in TAP tests: a program started in the background that writes
# KEY=VALUE lines (its addresses) to an info file once it listens, and a
# control channel that takes one command line and answers "OK ..." or
# "ERR ...".
package PipelineExt::Service;

use strict;
use warnings;
use IO::Socket::INET;
use Time::HiRes qw(usleep);
use File::Temp qw(tempdir);

# spawn(NAME, [COMMAND...], INFO_OPTION): runs COMMAND with INFO_OPTION and
# an info file appended, its output in NAME.out of a temporary directory;
# returns its pid and the info file's keys (dies when it does not start).
sub spawn
{
	my ($name, $cmd, $info_option) = @_;
	my $dir = tempdir(CLEANUP => 1);
	my $info = "$dir/$name.info";
	my @cmd = (@$cmd, $info_option, $info);

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', "$dir/$name.out");
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or die "exec $cmd[0]: $!";
	}
	for (1 .. 100)
	{
		last if -s $info;
		usleep(100_000);
	}
	die "test $name did not start" unless -s $info;
	open(my $fh, '<', $info) or die;
	my %kv = map { chomp; split /=/, $_, 2 } <$fh>;
	close($fh);
	return ($pid, \%kv);
}

# control(NAME, ADDRESS, COMMAND): one command; the answer, dies on ERR.
sub control
{
	my ($name, $address, $cmd) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => $address, Proto => 'tcp')
	  or die "$name control channel: $!";
	print $sock "$cmd\n";
	my $answer = <$sock>;
	close($sock);
	die "$name command '$cmd' failed: " . ($answer // 'no answer') unless $answer && $answer =~ /^OK/;
	chomp $answer;
	return $answer;
}

1;

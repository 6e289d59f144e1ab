# PipelineExt::Registry: start and drive the project's test schema registry
# (test/registry/pe_registry.py, Confluent's REST API) from TAP tests.
package PipelineExt::Registry;

use strict;
use warnings;
use IO::Socket::INET;
use Time::HiRes qw(usleep);
use File::Temp qw(tempdir);
use IPC::Run ();
use Test::More;

# PipelineExt::Registry->start(user => 'name:password')
sub start
{
	my ($class, %args) = @_;
	my $dir = tempdir(CLEANUP => 1);
	my $info = "$dir/registry.info";
	my $bin = ($ENV{TESTDIR} // '.') . '/test/registry/pe_registry.py';
	my @cmd = ('/usr/bin/python3', $bin, '--info-file', $info);
	push @cmd, '--user', $args{user} if defined $args{user};

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', "$dir/registry.out");
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or die "exec $bin: $!";
	}
	for (1 .. 100)
	{
		last if -s $info;
		usleep(100_000);
	}
	die "test registry did not start" unless -s $info;
	open(my $fh, '<', $info) or die;
	my %kv = map { chomp; split /=/, $_, 2 } <$fh>;
	close($fh);
	my $self = bless { pid => $pid, url => $kv{url}, control => $kv{control}, user => $args{user} }, $class;
	note "test registry $self->{url}, control $self->{control}";
	return $self;
}

sub url { return $_[0]->{url}; }

# Send one control command (down S, up, slow MS, fail N, count PREFIX);
# returns the answer, dies on ERR.
sub ctl
{
	my ($self, $cmd) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => $self->{control}, Proto => 'tcp')
	  or die "registry control channel: $!";
	print $sock "$cmd\n";
	my $answer = <$sock>;
	close($sock);
	die "registry command '$cmd' failed: " . ($answer // 'no answer') unless $answer && $answer =~ /^OK/;
	chomp $answer;
	return $answer;
}

# Run a Python program with the registry's URL and credentials as its first
# two arguments (then @args); returns its standard output, dies on failure.
sub python
{
	my ($self, $program, @args) = @_;
	my ($out, $err);
	IPC::Run::run([ '/usr/bin/python3', '-c', $program, $self->{url}, $self->{user} // '', @args ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(300))
	  or die "python: $err";
	return $out;
}

sub DESTROY
{
	my ($self) = @_;
	if ($self->{pid})
	{
		kill 'TERM', $self->{pid};
		waitpid($self->{pid}, 0);
	}
}

1;

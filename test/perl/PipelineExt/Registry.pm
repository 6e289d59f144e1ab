# PipelineExt::Registry: start and drive the project's test schema registry
# (test/registry/pe_registry.py, Confluent's REST API) from TAP tests.
package PipelineExt::Registry;

use strict;
use warnings;
use IPC::Run ();
use Test::More;
use PipelineExt::Service;

# PipelineExt::Registry->start(user => 'name:password')
sub start
{
	my ($class, %args) = @_;
	my @cmd = ('/usr/bin/python3', ($ENV{TESTDIR} // '.') . '/test/registry/pe_registry.py');
	push @cmd, '--user', $args{user} if defined $args{user};

	my ($pid, $kv) = PipelineExt::Service::spawn('registry', \@cmd, '--info-file');
	my $self = bless { pid => $pid, url => $kv->{url}, control => $kv->{control}, user => $args{user} }, $class;
	note "test registry $self->{url}, control $self->{control}";
	return $self;
}

sub url { return $_[0]->{url}; }

# Send one control command (down S, up, slow MS, fail N, count PREFIX);
# returns the answer, dies on ERR.
sub ctl
{
	my ($self, $cmd) = @_;
	return PipelineExt::Service::control('registry', $self->{control}, $cmd);
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

# PipelineExt::Broker: start and drive the project's test broker
# (test/broker/pe_broker, librdkafka's mock cluster) from TAP tests.
package PipelineExt::Broker;

use strict;
use warnings;
use Time::HiRes qw(usleep);
use IPC::Run ();
use Test::More;
use PipelineExt::Service;

# PipelineExt::Broker->start(brokers => 1, topics => { events => 8 })
sub start
{
	my ($class, %args) = @_;
	my @cmd = (($ENV{TESTDIR} // '.') . '/test/broker/pe_broker', '--brokers', $args{brokers} // 1);
	my $topics = $args{topics} // {};
	push @cmd, '--topic', "$_:$topics->{$_}" for sort keys %$topics;

	my ($pid, $kv) = PipelineExt::Service::spawn('broker', \@cmd, '--info-file');
	my $self = bless { pid => $pid, bootstrap => $kv->{bootstrap}, control => $kv->{control} }, $class;
	note "test broker $self->{bootstrap}, control $self->{control}";
	return $self;
}

sub bootstrap { return $_[0]->{bootstrap}; }

# Send one control command; returns the answer, dies on ERR.
sub ctl
{
	my ($self, $cmd) = @_;
	return PipelineExt::Service::control('broker', $self->{control}, $cmd);
}

# The sum of the offsets a Kafka consumer group committed for a topic's
# partitions 0..parts-1, read by another client (python3-confluent-kafka).
sub group_committed
{
	my ($self, $group, $topic, $parts) = @_;
	my ($out, $err);
	IPC::Run::run([ '/usr/bin/python3', '-c', q{
import sys
from confluent_kafka import Consumer, TopicPartition
b, g, t, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Consumer({"bootstrap.servers": b, "group.id": g, "enable.auto.commit": False})
parts = c.committed([TopicPartition(t, p) for p in range(n)], timeout=10)
print(sum(max(tp.offset, 0) for tp in parts))
}, $self->{bootstrap}, $group, $topic, $parts ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	chomp $out if defined $out;
	return $out // '';
}

# group_committed() asked again until it is $expected (at most 60 s);
# returns what it last said.
sub wait_group_committed
{
	my ($self, $group, $topic, $parts, $expected) = @_;
	my $got = '';
	for (1 .. 300)
	{
		$got = $self->group_committed($group, $topic, $parts);
		last if $got eq $expected;
		usleep(200_000);
	}
	return $got;
}

# The whole of a topic as another client reads it (test/tools/read_topic.py:
# python3-confluent-kafka, read_committed): [partition, offset, key, value,
# outbox id header], in each partition's order.
sub read_topic
{
	my ($self, $topic) = @_;
	my ($out, $err);
	IPC::Run::run([ '/usr/bin/python3', ($ENV{TESTDIR} // '.') . '/test/tools/read_topic.py', $self->{bootstrap}, $topic ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120)) or die "read_topic.py $topic: $err";
	return [ map { [ split /\t/ ] } split /\n/, $out ];
}

sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	eval { $self->ctl('stop') };
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
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

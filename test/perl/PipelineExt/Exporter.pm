# One scrape of prometheus-postgres-exporter (Debian's) with the project's
# query file (sql/prometheus-postgres-exporter.yaml), against a test node:
# returns the /metrics body once a line matches $ready (or the last body
# after 20 s), and the exporter's log, for a diagnostic.
package PipelineExt::Exporter;

use strict;
use warnings;
use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep);

sub scrape
{
	my ($node, $ready) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $user = getpwuid($<);
	local $ENV{DATA_SOURCE_NAME} = sprintf('host=%s port=%d user=%s dbname=postgres sslmode=disable',
		$node->host, $node->port, $user);
	my $log = $node->basedir . '/exporter.log';
	my $h = IPC::Run::start([ 'prometheus-postgres-exporter', "--web.listen-address=127.0.0.1:$port",
		"--extend.query-path=$ENV{TESTDIR}/sql/prometheus-postgres-exporter.yaml",
		'--disable-default-metrics', '--disable-settings-metrics' ], '>', $log, '2>&1');
	my $body = '';
	for (1 .. 100)
	{
		my $r = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$port/metrics");
		$body = $r->{content} if $r->{success};
		last if $body =~ $ready;
		usleep(200_000);
	}
	$h->kill_kill;
	return ($body, -e $log ? slurp_file($log) : '');
}

1;

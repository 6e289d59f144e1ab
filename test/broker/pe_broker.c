/*-------------------------------------------------------------------------
 *
 * pe_broker.c
 *	  pipeline_ext's test and demo broker: librdkafka's mock cluster (the
 *	  real Kafka protocol over TCP on loopback) in a standalone program,
 *	  with a line-based control channel for topics and fault injection.
 *
 *	  pe_broker [--brokers N] [--topic NAME:PARTITIONS]... [--info-file F]
 *	            [--control-port P]
 *	  pe_broker ctl HOST:PORT COMMAND...
 *
 *	  On start it prints "bootstrap=<list>" and "control=127.0.0.1:<port>"
 *	  (and writes the same two lines to --info-file, if given).  Control
 *	  commands, one per line, each answered with "OK ..." or "ERR ...":
 *
 *	    ping
 *	    bootstrap
 *	    topic NAME PARTITIONS [REPLICATION]     create a topic
 *	    down ID|all / up ID|all                 take brokers down / up
 *	    rtt ID|all MS                           round-trip time of a broker
 *	    error APIKEY ERRCODE [COUNT]            fail the next COUNT requests
 *	    broker_error ID APIKEY ERRCODE [COUNT]  ... of that kind to one broker
 *	    delay ID APIKEY MS [COUNT]              ... or answer them MS late, without error
 *	    topic_error NAME ERRCODE                error for a topic in Metadata
 *	    clear APIKEY                            drop queued request errors
 *	    leader TOPIC PARTITION ID               move a partition's leader
 *	    stop                                    exit
 *
 *	  APIKEY is a number or a name (Produce, Fetch, Metadata, ...); ERRCODE
 *	  a number or librdkafka's name for it (e.g. NOT_LEADER_FOR_PARTITION).
 *
 * IDENTIFICATION
 *	  test/broker/pe_broker.c
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_CLIENTS 32
#define LINE_MAX_LEN 1024

typedef struct CtlClient
{
	int			fd;
	size_t		len;
	char		buf[LINE_MAX_LEN];
} CtlClient;

static rd_kafka_mock_cluster_t *mcluster;
static int	broker_count = 3;
static volatile sig_atomic_t stop_requested = 0;

static const struct
{
	const char *name;
	int16_t		key;
}			api_keys[] =
{
	{"Produce", 0}, {"Fetch", 1}, {"ListOffsets", 2}, {"Metadata", 3},
	{"OffsetCommit", 8}, {"OffsetFetch", 9}, {"FindCoordinator", 10},
	{"JoinGroup", 11}, {"Heartbeat", 12}, {"LeaveGroup", 13},
	{"SyncGroup", 14}, {"ApiVersions", 18}, {"InitProducerId", 22},
	{"AddPartitionsToTxn", 24}, {"AddOffsetsToTxn", 25}, {"EndTxn", 26},
	{"TxnOffsetCommit", 28},
};

static void
handle_signal(int signo)
{
	(void) signo;
	stop_requested = 1;
}

static int
parse_api_key(const char *s, int16_t *key)
{
	char	   *end;
	long		v;

	for (size_t i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++)
	{
		if (strcasecmp(s, api_keys[i].name) == 0)
		{
			*key = api_keys[i].key;
			return 0;
		}
	}
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 0 || v > 1000)
		return -1;
	*key = (int16_t) v;
	return 0;
}

static int
parse_err_code(const char *s, rd_kafka_resp_err_t *err)
{
	const struct rd_kafka_err_desc *descs;
	size_t		cnt;
	char	   *end;
	long		v;

	if (strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0)
		s += 18;
	rd_kafka_get_err_descs(&descs, &cnt);
	for (size_t i = 0; i < cnt; i++)
	{
		if (descs[i].name && strcasecmp(descs[i].name, s) == 0)
		{
			*err = descs[i].code;
			return 0;
		}
	}
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0')
		return -1;
	*err = (rd_kafka_resp_err_t) v;
	return 0;
}

/* Apply fn to one broker id or, for "all", to every broker. */
static int
each_broker(const char *which, rd_kafka_resp_err_t (*fn) (rd_kafka_mock_cluster_t *, int32_t, void *), void *arg)
{
	char	   *end;
	long		id;

	if (strcmp(which, "all") == 0)
	{
		for (int i = 1; i <= broker_count; i++)
			if (fn(mcluster, i, arg) != RD_KAFKA_RESP_ERR_NO_ERROR)
				return -1;
		return 0;
	}
	id = strtol(which, &end, 10);
	if (*which == '\0' || *end != '\0' || id < 1 || id > broker_count)
		return -1;
	return fn(mcluster, (int32_t) id, arg) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

static rd_kafka_resp_err_t
broker_down(rd_kafka_mock_cluster_t *mc, int32_t id, void *arg)
{
	(void) arg;
	return rd_kafka_mock_broker_set_down(mc, id);
}

static rd_kafka_resp_err_t
broker_up(rd_kafka_mock_cluster_t *mc, int32_t id, void *arg)
{
	(void) arg;
	return rd_kafka_mock_broker_set_up(mc, id);
}

static rd_kafka_resp_err_t
broker_rtt(rd_kafka_mock_cluster_t *mc, int32_t id, void *arg)
{
	return rd_kafka_mock_broker_set_rtt(mc, id, *(int *) arg);
}

/* Runs one control command; writes the answer (one line) into out. */
static void
run_command(char *line, char *out, size_t outlen)
{
	char	   *argv[8];
	int			argc = 0;
	char	   *save = NULL;
	char	   *tok;

	for (tok = strtok_r(line, " \t\r\n", &save); tok && argc < 8;
		 tok = strtok_r(NULL, " \t\r\n", &save))
		argv[argc++] = tok;

	if (argc == 0)
	{
		snprintf(out, outlen, "ERR empty command\n");
		return;
	}

	if (strcmp(argv[0], "ping") == 0)
		snprintf(out, outlen, "OK pong\n");
	else if (strcmp(argv[0], "bootstrap") == 0)
		snprintf(out, outlen, "OK %s\n", rd_kafka_mock_cluster_bootstraps(mcluster));
	else if (strcmp(argv[0], "topic") == 0 && (argc == 3 || argc == 4))
	{
		int			parts = atoi(argv[2]);
		int			rf = argc == 4 ? atoi(argv[3]) : 1;

		if (parts < 1 || rf < 1 || rf > broker_count)
			snprintf(out, outlen, "ERR bad partition count or replication factor\n");
		else
		{
			rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mcluster, argv[1], parts, rf);

			if (err)
				snprintf(out, outlen, "ERR %s\n", rd_kafka_err2str(err));
			else
				snprintf(out, outlen, "OK topic %s %d\n", argv[1], parts);
		}
	}
	else if ((strcmp(argv[0], "down") == 0 || strcmp(argv[0], "up") == 0) && argc == 2)
	{
		int			down = argv[0][0] == 'd';

		if (each_broker(argv[1], down ? broker_down : broker_up, NULL) != 0)
			snprintf(out, outlen, "ERR unknown broker \"%s\"\n", argv[1]);
		else
			snprintf(out, outlen, "OK %s %s\n", argv[0], argv[1]);
	}
	else if (strcmp(argv[0], "rtt") == 0 && argc == 3)
	{
		int			ms = atoi(argv[2]);

		if (ms < 0 || each_broker(argv[1], broker_rtt, &ms) != 0)
			snprintf(out, outlen, "ERR bad broker or rtt\n");
		else
			snprintf(out, outlen, "OK rtt %s %d\n", argv[1], ms);
	}
	else if (strcmp(argv[0], "error") == 0 && (argc == 3 || argc == 4))
	{
		int16_t		key;
		rd_kafka_resp_err_t err;
		int			count = argc == 4 ? atoi(argv[3]) : 1;

		if (parse_api_key(argv[1], &key) != 0)
			snprintf(out, outlen, "ERR unknown api key \"%s\"\n", argv[1]);
		else if (parse_err_code(argv[2], &err) != 0)
			snprintf(out, outlen, "ERR unknown error code \"%s\"\n", argv[2]);
		else if (count < 1 || count > 100000)
			snprintf(out, outlen, "ERR bad count\n");
		else
		{
			rd_kafka_resp_err_t *errs = calloc(count, sizeof(*errs));

			for (int i = 0; i < count; i++)
				errs[i] = err;
			rd_kafka_mock_push_request_errors_array(mcluster, key, count, errs);
			free(errs);
			snprintf(out, outlen, "OK error %d %s x%d\n", key, rd_kafka_err2name(err), count);
		}
	}
	else if (strcmp(argv[0], "broker_error") == 0 && (argc == 4 || argc == 5))
	{
		int16_t		key;
		rd_kafka_resp_err_t err;
		int32_t		id = atoi(argv[1]);
		int			count = argc == 5 ? atoi(argv[4]) : 1;

		if (parse_api_key(argv[2], &key) != 0)
			snprintf(out, outlen, "ERR unknown api key \"%s\"\n", argv[2]);
		else if (parse_err_code(argv[3], &err) != 0)
			snprintf(out, outlen, "ERR unknown error code \"%s\"\n", argv[3]);
		else if (count < 1 || count > 100000)
			snprintf(out, outlen, "ERR bad count\n");
		else
		{
			rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;

			/* the next count requests of that kind to that broker fail */
			for (int i = 0; i < count && !r; i++)
				r = rd_kafka_mock_broker_push_request_error_rtts(mcluster, id, key, 1, err, 0);
			if (r)
				snprintf(out, outlen, "ERR %s\n", rd_kafka_err2str(r));
			else
				snprintf(out, outlen, "OK broker_error %d %d %s x%d\n", id, key, rd_kafka_err2name(err), count);
		}
	}
	else if (strcmp(argv[0], "delay") == 0 && (argc == 4 || argc == 5))
	{
		int16_t		key;
		int32_t		id = atoi(argv[1]);
		int			ms = atoi(argv[3]);
		int			count = argc == 5 ? atoi(argv[4]) : 1;

		if (parse_api_key(argv[2], &key) != 0)
			snprintf(out, outlen, "ERR unknown api key \"%s\"\n", argv[2]);
		else if (ms < 0 || count < 1 || count > 100000)
			snprintf(out, outlen, "ERR bad delay or count\n");
		else
		{
			rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;

			/* the next count requests of that kind to that broker are answered ms late */
			for (int i = 0; i < count && !r; i++)
				r = rd_kafka_mock_broker_push_request_error_rtts(mcluster, id, key, 1,
																 RD_KAFKA_RESP_ERR_NO_ERROR, ms);
			if (r)
				snprintf(out, outlen, "ERR %s\n", rd_kafka_err2str(r));
			else
				snprintf(out, outlen, "OK delay %d %d %d ms x%d\n", id, key, ms, count);
		}
	}
	else if (strcmp(argv[0], "topic_error") == 0 && argc == 3)
	{
		rd_kafka_resp_err_t err;

		if (parse_err_code(argv[2], &err) != 0)
			snprintf(out, outlen, "ERR unknown error code \"%s\"\n", argv[2]);
		else
		{
			rd_kafka_mock_topic_set_error(mcluster, argv[1], err);
			snprintf(out, outlen, "OK topic_error %s %s\n", argv[1], rd_kafka_err2name(err));
		}
	}
	else if (strcmp(argv[0], "clear") == 0 && argc == 2)
	{
		int16_t		key;

		if (parse_api_key(argv[1], &key) != 0)
			snprintf(out, outlen, "ERR unknown api key \"%s\"\n", argv[1]);
		else
		{
			rd_kafka_mock_clear_request_errors(mcluster, key);
			snprintf(out, outlen, "OK clear %d\n", key);
		}
	}
	else if (strcmp(argv[0], "leader") == 0 && argc == 4)
	{
		rd_kafka_resp_err_t err =
			rd_kafka_mock_partition_set_leader(mcluster, argv[1], atoi(argv[2]), atoi(argv[3]));

		if (err)
			snprintf(out, outlen, "ERR %s\n", rd_kafka_err2str(err));
		else
			snprintf(out, outlen, "OK leader %s %s %s\n", argv[1], argv[2], argv[3]);
	}
	else if (strcmp(argv[0], "stop") == 0)
	{
		stop_requested = 1;
		snprintf(out, outlen, "OK stopping\n");
	}
	else
		snprintf(out, outlen, "ERR unknown command or wrong arguments: %s\n", argv[0]);
}

/* Client mode: send one command to a running broker, print the answer. */
static int
ctl_main(int argc, char **argv)
{
	char		host[256];
	char	   *colon;
	char		cmd[LINE_MAX_LEN] = "";
	char		reply[LINE_MAX_LEN];
	struct sockaddr_in addr;
	int			fd;
	ssize_t		n;
	size_t		got = 0;

	if (argc < 2)
	{
		fprintf(stderr, "usage: pe_broker ctl HOST:PORT COMMAND...\n");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", argv[0]);
	colon = strrchr(host, ':');
	if (!colon)
	{
		fprintf(stderr, "pe_broker: control address must be HOST:PORT\n");
		return 2;
	}
	*colon = '\0';
	for (int i = 1; i < argc; i++)
	{
		strncat(cmd, argv[i], sizeof(cmd) - strlen(cmd) - 2);
		strncat(cmd, i + 1 < argc ? " " : "\n", sizeof(cmd) - strlen(cmd) - 1);
	}
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t) atoi(colon + 1));
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
	{
		fprintf(stderr, "pe_broker: bad control host \"%s\"\n", host);
		return 2;
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *) &addr, sizeof(addr)) != 0)
	{
		fprintf(stderr, "pe_broker: cannot connect to %s: %s\n", argv[0], strerror(errno));
		return 1;
	}
	if (write(fd, cmd, strlen(cmd)) != (ssize_t) strlen(cmd))
		return 1;
	while (got < sizeof(reply) - 1 && (n = read(fd, reply + got, sizeof(reply) - 1 - got)) > 0)
	{
		got += n;
		if (memchr(reply, '\n', got))
			break;
	}
	reply[got] = '\0';
	close(fd);
	fputs(reply, stdout);
	return strncmp(reply, "OK", 2) == 0 ? 0 : 1;
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: pe_broker [--brokers N] [--topic NAME:PARTITIONS]... "
			"[--info-file FILE] [--control-port PORT]\n"
			"       pe_broker ctl HOST:PORT COMMAND...\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	char		errstr[512];
	const char *info_file = NULL;
	int			control_port = 0;
	int			listen_fd;
	struct sockaddr_in addr;
	socklen_t	addrlen = sizeof(addr);
	CtlClient	clients[MAX_CLIENTS];
	char	   *topics[256];
	int			ntopics = 0;

	if (argc > 1 && strcmp(argv[1], "ctl") == 0)
		return ctl_main(argc - 2, argv + 2);

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
			broker_count = atoi(argv[++i]);
		else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc && ntopics < 256)
			topics[ntopics++] = argv[++i];
		else if (strcmp(argv[i], "--info-file") == 0 && i + 1 < argc)
			info_file = argv[++i];
		else if (strcmp(argv[i], "--control-port") == 0 && i + 1 < argc)
			control_port = atoi(argv[++i]);
		else
			usage();
	}
	if (broker_count < 1 || broker_count > 16)
		usage();

	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, handle_signal);
	signal(SIGTERM, handle_signal);

	/* The mock cluster needs a client instance to live in. */
	conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "pe_broker: %s\n", errstr);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (!rk)
	{
		fprintf(stderr, "pe_broker: %s\n", errstr);
		return 1;
	}
	mcluster = rd_kafka_mock_cluster_new(rk, broker_count);
	if (!mcluster)
	{
		fprintf(stderr, "pe_broker: could not create the mock cluster\n");
		return 1;
	}

	for (int i = 0; i < ntopics; i++)
	{
		char	   *colon = strrchr(topics[i], ':');
		int			parts = colon ? atoi(colon + 1) : 1;
		rd_kafka_resp_err_t err;

		if (colon)
			*colon = '\0';
		err = rd_kafka_mock_topic_create(mcluster, topics[i], parts > 0 ? parts : 1, 1);
		if (err)
		{
			fprintf(stderr, "pe_broker: cannot create topic %s: %s\n", topics[i], rd_kafka_err2str(err));
			return 1;
		}
	}

	listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	{
		int			one = 1;

		setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	}
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = htons((uint16_t) control_port);
	if (bind(listen_fd, (struct sockaddr *) &addr, sizeof(addr)) != 0 ||
		listen(listen_fd, 16) != 0 ||
		getsockname(listen_fd, (struct sockaddr *) &addr, &addrlen) != 0)
	{
		fprintf(stderr, "pe_broker: control channel: %s\n", strerror(errno));
		return 1;
	}

	printf("bootstrap=%s\ncontrol=127.0.0.1:%d\n",
		   rd_kafka_mock_cluster_bootstraps(mcluster), ntohs(addr.sin_port));
	fflush(stdout);
	if (info_file)
	{
		char		tmp[4096];
		FILE	   *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", info_file);
		f = fopen(tmp, "w");
		if (!f)
		{
			fprintf(stderr, "pe_broker: %s: %s\n", tmp, strerror(errno));
			return 1;
		}
		fprintf(f, "bootstrap=%s\ncontrol=127.0.0.1:%d\n",
				rd_kafka_mock_cluster_bootstraps(mcluster), ntohs(addr.sin_port));
		fclose(f);
		rename(tmp, info_file);	/* readers never see half a file */
	}

	for (int i = 0; i < MAX_CLIENTS; i++)
		clients[i].fd = -1;

	while (!stop_requested)
	{
		struct pollfd pfd[MAX_CLIENTS + 1];
		int			map[MAX_CLIENTS + 1];
		int			n = 0;

		pfd[n].fd = listen_fd;
		pfd[n].events = POLLIN;
		map[n++] = -1;
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i].fd >= 0)
			{
				pfd[n].fd = clients[i].fd;
				pfd[n].events = POLLIN;
				map[n++] = i;
			}

		if (poll(pfd, n, 500) <= 0)
			continue;

		if (pfd[0].revents & POLLIN)
		{
			int			fd = accept(listen_fd, NULL, NULL);
			int			placed = 0;

			for (int i = 0; fd >= 0 && i < MAX_CLIENTS; i++)
				if (clients[i].fd < 0)
				{
					clients[i].fd = fd;
					clients[i].len = 0;
					placed = 1;
					break;
				}
			if (fd >= 0 && !placed)
				close(fd);
		}

		for (int k = 1; k < n; k++)
		{
			CtlClient  *c = &clients[map[k]];
			ssize_t		r;
			char	   *nl;

			if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			r = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
			if (r <= 0)
			{
				close(c->fd);
				c->fd = -1;
				continue;
			}
			c->len += r;
			c->buf[c->len] = '\0';
			while ((nl = strchr(c->buf, '\n')) != NULL)
			{
				char		out[LINE_MAX_LEN];
				size_t		used = nl - c->buf + 1;

				*nl = '\0';
				run_command(c->buf, out, sizeof(out));
				if (write(c->fd, out, strlen(out)) < 0)
					break;
				memmove(c->buf, c->buf + used, c->len - used);
				c->len -= used;
				c->buf[c->len] = '\0';
			}
			if (c->len >= sizeof(c->buf) - 1)
			{
				close(c->fd);	/* a line too long for any command */
				c->fd = -1;
			}
		}
	}

	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].fd >= 0)
			close(clients[i].fd);
	close(listen_fd);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(rk);
	return 0;
}

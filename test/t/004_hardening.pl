# Hardening (issue 9): what belongs to a consumer follows its identity, not
# its name; a dropped target is never written to again, whatever table later
# gets its number; reset_offsets holds in every delivery mode; dead letters
# keep their headers as bytes, so that a replay reproduces the message.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run qw(run timeout);
use Time::HiRes qw(time);
use PipelineExt::Broker;

my $broker = PipelineExt::Broker->start(
	brokers => 1,
	topics => { ident => 1, ident2 => 1, fence => 1, hdrs => 1, gone => 1, setrole => 1, bisect => 1, slowc => 1, forced => 1 });
my $bs = $broker->bootstrap;

my $node = PostgreSQL::Test::Cluster->new('hardening');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pipeline_ext'
max_worker_processes = 20
log_min_messages = info
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pipeline_ext');
$node->safe_psql('postgres', "SELECT pipeline.create_connection('local', '$bs')");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_for
{
	my ($query, $expected, $name) = @_;
	my $ok = $node->poll_query_until('postgres', $query, $expected);
	ok($ok, $name) or diag("last result: " . $node->safe_psql('postgres', $query));
}

sub produce
{
	my ($topic, $select) = @_;
	sql("SELECT count(*) FROM ($select) s(v, k), LATERAL pipeline.produce('local', '$topic', v, k)");
}

# --- points 2 and 4: a consumer's name can be reused, its identity not -------
# alice's consumer has a dead letter, figures and an error of hers in shared
# memory.  She drops it, and bob creates a consumer of the same name in the
# same transaction (so that nothing in between can tidy up): bob gets none
# of it, and cannot replay her dead letter into his table.
sql(qq{
CREATE ROLE alice; CREATE ROLE bob;
GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb) TO alice, bob;
GRANT CREATE ON SCHEMA public TO alice, bob;
SET ROLE alice;
SELECT pipeline.create_connection('alice_conn', '$bs');
CREATE TABLE alice_t (id int PRIMARY KEY, secret text CHECK (secret <> 'reject'));
CREATE FUNCTION alice_guard() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
  IF NEW.secret = 'boom' THEN
    RAISE EXCEPTION 'alice-private: % refused', NEW.secret USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END \$\$;
CREATE TRIGGER alice_guard BEFORE INSERT ON alice_t FOR EACH ROW EXECUTE FUNCTION alice_guard();
SELECT pipeline.create_consumer('shared', 'alice_conn', 'ident', 'alice_t');
RESET ROLE;
SET ROLE bob;
SELECT pipeline.create_connection('bob_conn', '$bs');
CREATE TABLE bob_t (id int PRIMARY KEY, secret text);
});
produce('ident', q{VALUES ('{"id": 1, "secret": "alice-one"}', '1'), ('{"id": 2, "secret": "reject"}', '2')});
wait_for(q{SELECT (SELECT count(*) FROM alice_t) || '/' || (SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'shared')},
	'1/1', "alice's consumer applies one message and keeps one dead letter");
produce('ident', q{VALUES ('{"id": 3, "secret": "boom"}', '3')});
wait_for(q{SELECT last_error FROM pipeline._slots() WHERE consumer = 'shared'},
	'alice-private: boom refused', "alice's worker fails with an error about her data");
sql(q{
BEGIN;
SET ROLE alice;
SELECT pipeline.drop_consumer('shared');
RESET ROLE;
SET ROLE bob;
SELECT pipeline.create_consumer('shared', 'bob_conn', 'ident2', 'bob_t');
COMMIT;
});
is(sql(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'shared' AND (messages > 0 OR dead_letters > 0 OR last_error IS NOT NULL)}),
	'0', "point 4: bob's new consumer shows none of alice's figures or errors, at once");
wait_for(q{SELECT string_agg(state, ',') FROM pipeline.consumer_status WHERE consumer = 'shared'}, 'running',
	"bob's consumer runs");
is(sql(q{SET ROLE bob; SELECT coalesce(last_error, '-') || '|' || messages || '|' || dead_letters
          FROM pipeline._slots() WHERE consumer = 'shared'}),
	'-|0|0', "point 4: ... nor once its worker runs: no error, no messages, no dead letters");
is(sql(q{SET ROLE bob; SELECT replayed || '/' || failed FROM pipeline.replay_dead_letters('shared')}), '0/0',
	"point 2: bob's replay_dead_letters of the same name replays nothing of alice's");
is(sql('SELECT count(*) FROM bob_t'), '0', "point 2: ... and nothing of hers is written to bob's table");
is(sql(q{SET ROLE alice; SELECT consumer || '|' || (consumer_id IS NULL) || '|' || convert_from(value, 'UTF8') FROM pipeline.dead_letters}),
	'shared|true|{"id": 2, "secret": "reject"}', "point 2: alice's dead letter stays hers, belonging to no consumer");
is(sql(q{SET ROLE bob; SELECT count(*) FROM pipeline.dead_letters}), '0', '... and bob cannot see it');
sql(q{SET ROLE bob; SELECT pipeline.drop_consumer('shared')});

# --- point 7: a dropped target is forgotten ----------------------------------
# PostgreSQL may give a dropped table's number to a new table: the consumer
# must never write there.  Dropping the target disables the consumer and
# forgets the number; starting it again is refused.
sql(q{
CREATE TABLE gone_t (id int PRIMARY KEY);
SELECT pipeline.create_consumer('gone', 'local', 'gone', 'gone_t');
DROP TABLE gone_t;
});
is(sql(q{SELECT coalesce(target::text, 'NULL') || '|' || enabled || '|' || last_error FROM pipeline.consumers WHERE name = 'gone'}),
	'NULL|false|the target table public.gone_t was dropped',
	'point 7: dropping the target disables its consumer and forgets the table number, at once');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT pipeline.start_consumer('gone')});
like($err, qr/ERROR:  the target table of consumer "gone" was dropped\nHINT:  Drop the consumer and create it again/,
	'point 7: start_consumer refuses a consumer whose target was dropped');
sql(q{SELECT pipeline.drop_consumer('gone')});

# --- point 10: reset_offsets holds outside exactly_once too -------------------
# The worker's batch waits on a lock of the target while reset_offsets
# commits; when the lock goes, the batch must not overwrite the reset.
sql(q{
CREATE TABLE fence_t (n int);
SELECT pipeline.create_consumer('fence', 'local', 'fence', 'fence_t', mode => 'append', delivery => 'at_least_once');
});
produce('fence', q{SELECT json_build_object('n', g)::text, NULL FROM generate_series(1, 5) g});
wait_for(q{SELECT count(*) FROM fence_t}, '5', 'fence: five messages applied');
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE fence_t IN ACCESS EXCLUSIVE MODE;');
produce('fence', q{SELECT json_build_object('n', g)::text, NULL FROM generate_series(6, 10) g});
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipeline_ext consumer fence/0' AND wait_event_type = 'Lock'},
	'1', 'fence: the batch waits on the lock of its table');
is(sql(q{SELECT string_agg(new_offset::text, ',') FROM pipeline.reset_offsets('fence', 'earliest')}), '0',
	'fence: reset_offsets commits while the batch waits');
$locker->query_safe('COMMIT;');
$locker->quit;
# the waiting batch is rolled back and the whole topic read again: the
# first five twice, the next five once (without the fence: 10 rows, the
# reset lost under the batch's offsets)
wait_for(q{SELECT count(*) || '/' || count(DISTINCT n) FROM fence_t}, '15/10',
	'point 10: at_least_once: the waiting batch did not overwrite the reset: the topic is read again');
is(sql(q{SELECT next_offset FROM pipeline.offsets WHERE consumer = 'fence'}), '10', '... and its offset is where it should be');
sql(q{SELECT pipeline.drop_consumer('fence')});

# --- point 15: dead-letter headers kept as bytes -------------------------------
# A header name that is not UTF-8, and a repeated name: the dead letter keeps
# all of them as they came (headers_raw), a readable form besides (headers),
# and a replay applies the message with the headers it came with.
sql(q{
CREATE TABLE hdr_t (id int PRIMARY KEY, v text CHECK (v <> 'reject'), h jsonb, dup text);
SELECT pipeline.create_consumer('hdrs', 'local', 'hdrs', 'hdr_t',
    column_map => '{"h": "$headers", "dup": "$header.dup"}');
});
my ($kout, $kerr);
run([ 'kcat', '-P', '-b', $bs, '-t', 'hdrs', '-k', 'k1', '-H', "\xff\xfe=bin", '-H', 'dup=first', '-H', 'dup=second' ],
	'<', \'{"id": 1, "v": "reject"}', '>', \$kout, '2>', \$kerr, timeout(60)) or diag("kcat: $kerr");
wait_for(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'hdrs'}, '1', 'headers: the message is a dead letter');
is(sql(q{SELECT array_length(headers_raw, 1) || '|' || encode(headers_raw[1][1], 'hex') || '=' || encode(headers_raw[1][2], 'escape')
          || '|' || encode(headers_raw[2][1], 'escape') || '=' || encode(headers_raw[2][2], 'escape')
          || '|' || encode(headers_raw[3][1], 'escape') || '=' || encode(headers_raw[3][2], 'escape')
          FROM pipeline.dead_letters WHERE consumer = 'hdrs'}),
	'3|fffe=bin|dup=first|dup=second', 'point 15: headers_raw keeps every header as bytes, in order, repeats included');
is(sql(q{SELECT headers FROM pipeline.dead_letters WHERE consumer = 'hdrs'}),
	'{"dup": "second", "\\\\xfffe": "bin"}', 'point 15: headers keeps a readable form, the name that is not text in hex');
sql(q{ALTER TABLE hdr_t DROP CONSTRAINT hdr_t_v_check});
is(sql(q{SELECT replayed || '/' || failed FROM pipeline.replay_dead_letters('hdrs')}), '1/0', 'headers: the replay applies it');
is(sql(q{SELECT h::text || '|' || dup FROM hdr_t}), '{"dup": "second", "\\\\xfffe": "bin"}|second',
	'point 15: ... with the headers it came with');
sql(q{SELECT pipeline.drop_consumer('hdrs')});

# --- point 14: isolating bad rows keeps no subtransaction per good half -------
# 200 messages, 10 of them refused by a CHECK constraint.  The bad ones are
# found with trials that are rolled back, and the good ones applied in one
# statement: every row a batch applied has the same xmin (the one
# subtransaction kept), where halving kept one per good half (about
# 2k log n: past 64 every snapshot in the cluster is suboverflowed).
sql(q{
CREATE TABLE bisect_t (id int PRIMARY KEY, v int CHECK (v < 1000));
SELECT pipeline.create_consumer('bisect', 'local', 'bisect', 'bisect_t', start => false);
});
produce('bisect', q{SELECT json_build_object('id', g, 'v', CASE WHEN g % 20 = 7 THEN 5000 ELSE g END)::text, g::text
                    FROM generate_series(1, 200) g});
sql(q{SELECT pipeline.start_consumer('bisect')});
wait_for(q{SELECT (SELECT count(*) FROM bisect_t) || '/' || (SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'bisect')},
	'190/10', 'bisection: 190 rows applied, 10 dead letters');
wait_for(q{SELECT sum(messages) FROM pipeline._slots() WHERE consumer = 'bisect'}, '200', 'bisection: the batches are counted');
my $batches = sql(q{SELECT sum(batches) FROM pipeline._slots() WHERE consumer = 'bisect'});
is(sql(q{SELECT count(DISTINCT xmin::text) FROM bisect_t}), $batches,
	"point 14: one subtransaction kept per batch ($batches), whatever the number of bad rows");
# the workers report their table statistics: without them autovacuum never
# learns of a target's dead rows
wait_for(q{SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'bisect_t'}, '190',
	"the worker's writes reach the statistics that autovacuum reads");
sql(q{SELECT pipeline.drop_consumer('bisect')});

# --- point 11: an error that is not about a row stops the consumer -----------
# A trigger that runs SET ROLE fails whatever the row: the worker is
# restarted with backoff, but after pipeline_ext.max_apply_failures attempts
# in a row the consumer stops, with the error shown.  Nothing is lost: once
# the cause is fixed, start_consumer applies the message.
sql(q{
ALTER SYSTEM SET pipeline_ext.max_apply_failures = 3;
SELECT pg_reload_conf();
CREATE TABLE setrole_t (id int PRIMARY KEY);
CREATE FUNCTION setrole_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN SET ROLE alice; RETURN NEW; END $$;
CREATE TRIGGER setrole_trg BEFORE INSERT ON setrole_t FOR EACH ROW EXECUTE FUNCTION setrole_trg();
SELECT pipeline.create_consumer('setrole', 'local', 'setrole', 'setrole_t');
});
produce('setrole', q{VALUES ('{"id": 1}', '1')});
wait_for(q{SELECT enabled || '|' || last_error FROM pipeline.consumers WHERE name = 'setrole'},
	'false|stopped on error: 3 attempts in a row to apply a batch failed (pipeline_ext.max_apply_failures): '
	  . 'cannot set parameter "role" within security-definer function',
	'point 11: a non-row error stops the consumer after max_apply_failures attempts, saying why');
is(sql(q{SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'setrole'}), '0', '... the message is not a dead letter');
sql(q{DROP TRIGGER setrole_trg ON setrole_t; SELECT pipeline.start_consumer('setrole')});
wait_for(q{SELECT count(*) FROM setrole_t}, '1', '... and once the cause is gone, start_consumer applies it');
sql(q{SELECT pipeline.drop_consumer('setrole'); ALTER SYSTEM RESET pipeline_ext.max_apply_failures; SELECT pg_reload_conf()});

# --- what exactly-once depends on is not the connection's to change ----------
# A connection's options cannot move a consumer's commits to another group,
# turn on librdkafka's automatic offset store or commit, or read the
# messages of aborted transactions.
sql(q{
SELECT pipeline.create_connection('overrides', '} . $bs . q{',
    '{"group.id": "hijack", "enable.auto.commit": "true", "enable.auto.offset.store": "true", "isolation.level": "read_uncommitted"}');
CREATE TABLE forced_t (id int PRIMARY KEY, v int);
SELECT pipeline.create_consumer('forced', 'overrides', 'forced', 'forced_t', delivery => 'at_least_once');
});
produce('forced', q{VALUES ('{"id": 1, "v": 1}', '1')});
wait_for(q{SELECT count(*) FROM forced_t}, '1', 'forced settings: the consumer applies a message');
is($broker->wait_group_committed('pipeline_ext.postgres.forced', 'forced', 1, '1'), '1',
	'... and commits it to its own group, whatever group.id the connection says');
is($broker->group_committed('hijack', 'forced', 1), '0', '... and nothing to the connection\'s');
sql(q{SELECT pipeline.drop_consumer('forced')});

# --- point 16: a Kafka commit the coordinator does not answer ----------------
# at_least_once commits each batch's offsets to the Kafka group and waits
# for the answer.  With the next OffsetCommit answered 20 s late, the worker
# is in that wait; a cancel is answered (there is no batch to cancel) and
# stop_consumer ends it within a slice of the wait, not when the broker
# answers.
sql(q{
CREATE TABLE slowc_t (id int PRIMARY KEY, v int);
SELECT pipeline.create_consumer('slowc', 'local', 'slowc', 'slowc_t', delivery => 'at_least_once');
});
produce('slowc', q{VALUES ('{"id": 1, "v": 1}', '1')});
wait_for(q{SELECT count(*) FROM slowc_t}, '1', 'slow commit: the consumer applies a first message');
# (its commit to the group comes after its own: the delay is for the next one)
is($broker->wait_group_committed('pipeline_ext.postgres.slowc', 'slowc', 1, '1'), '1',
	'slow commit: the group has the first message\'s offset');
$broker->ctl('delay 1 OffsetCommit 20000 1');
produce('slowc', q{VALUES ('{"id": 2, "v": 2}', '2')});
# the row commits before its offsets go to the group; an idle worker keeps
# its last activity's text, hence the state
wait_for(q{SELECT count(*) FROM slowc_t}, '2', 'slow commit: the second message is applied');
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipeline_ext consumer slowc/0'
             AND state = 'active' AND query = 'committing offsets to the Kafka group'}, '1',
	'slow commit: the worker waits for the coordinator');
my $log_pos = -s $node->logfile;
sql(q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'pipeline_ext consumer slowc/0'});
ok($node->wait_for_log(qr/consumer slowc\/0: no batch is being applied; cancel request ignored/, $log_pos),
	'point 16: a cancel during the wait is answered');
my $t_stop = time;
sql(q{SELECT pipeline.stop_consumer('slowc')});
wait_for(q{SELECT count(*) FROM pipeline._slots() WHERE consumer = 'slowc' AND pid IS NOT NULL}, '0',
	'point 16: stop_consumer ends the worker waiting on the coordinator');
my $took = time - $t_stop;
cmp_ok($took, '<', 10, sprintf('... at once (%.2f s), not when the coordinator answers (20 s)', $took));
is(sql(q{SELECT count(*) FROM slowc_t}), '2', '... with the batch it had applied kept');
sql(q{SELECT pipeline.drop_consumer('slowc')});

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no worker crashed');
$broker->stop;
done_testing();

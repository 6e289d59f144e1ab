-- The consumer API: everything create_consumer() checks before a message
-- arrives, the catalog view, and ownership.  start => false keeps the
-- workers out of it (no broker here).
SELECT pipeline.create_connection('cons', '127.0.0.1:9');
CREATE TABLE readings (device text PRIMARY KEY, temp numeric NOT NULL, seen timestamptz DEFAULT now(), extra jsonb);
CREATE TABLE log_t (id bigint GENERATED ALWAYS AS IDENTITY, line text, at timestamptz DEFAULT now());
CREATE TABLE nokey (a int, b int);
CREATE TABLE twokeys (a int, b int, c text, UNIQUE (a, b));
CREATE VIEW readings_v AS SELECT * FROM readings;

-- a good one, then its definition
SELECT pipeline.create_consumer('r1', 'cons', 'readings', 'readings', start => false);
SELECT name, owner, connection, topic, target, format, mode, key_columns, delivery, parallelism,
       start_offset, batch_size, batch_timeout, on_error, delete_on_tombstone, enabled
  FROM pipeline.consumers;
SELECT pipeline.create_consumer('r1', 'cons', 'readings', 'readings', start => false);

-- names, connections, topics
SELECT pipeline.create_consumer('bad name!', 'cons', 't', 'readings', start => false);
SELECT pipeline.create_consumer('c', 'nosuch', 't', 'readings', start => false);
SELECT pipeline.create_consumer('c', 'cons', '', 'readings', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings_v', start => false);
CREATE TEMP TABLE readings_tmp (device text PRIMARY KEY, temp numeric);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings_tmp', start => false);
DROP TABLE readings_tmp;
SELECT pipeline.create_consumer('c', 'cons', 't', 'nosuch_table', start => false);

-- formats, modes, delivery, errors, sizes
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format => 'xml', start => false);
-- avro needs a schema registry on the connection
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format => 'avro', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', mode => 'merge', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', delivery => 'twice', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', on_error => 'ignore', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', parallelism => 0, start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', batch_size => 0, start => false);
-- a null batch_size is the default, as when it is left out
SELECT pipeline.create_consumer('nullbatch', 'cons', 'readings', 'readings', batch_size => NULL, start => false);
SELECT batch_size FROM pipeline.consumers WHERE name = 'nullbatch';
SELECT pipeline.drop_consumer('nullbatch');
-- the librdkafka settings a consumer chooses: a connection's option over a
-- default, not over what the consumer's offsets depend on
SELECT pipeline.create_connection('fetchy', '127.0.0.1:9', '{"fetch.wait.max.ms": "50", "enable.auto.commit": "true"}');
SELECT pipeline.create_consumer('cfg', 'fetchy', 'readings', 'readings', start => false);
SELECT * FROM pipeline.consumer_config('cfg')
 WHERE property IN ('fetch.wait.max.ms', 'enable.auto.commit', 'queued.max.messages.kbytes', 'isolation.level') ORDER BY 1;
SELECT * FROM pipeline.consumer_config('nosuch');
SELECT pipeline.drop_consumer('cfg');
SELECT pipeline.drop_connection('fetchy');
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', batch_timeout => '0', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', start_offset => 'yesterday', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', start_offset => '2026-13-45', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', group_id => '', start => false);

-- keys: upsert needs a primary key or key columns covered by a unique index
SELECT pipeline.create_consumer('c', 'cons', 't', 'nokey', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'nokey', key_columns => '{a}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'twokeys', key_columns => '{a}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'twokeys', key_columns => '{a,zz}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'twokeys', key_columns => '{a,a}', start => false);
SELECT pipeline.create_consumer('c2', 'cons', 't', 'twokeys', key_columns => '{b,a}', start => false);
SELECT pipeline.create_consumer('c3', 'cons', 't', 'nokey', mode => 'append', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'nokey', mode => 'append', delete_on_tombstone => true, start => false);

-- column_map
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', column_map => '{"nosuch": "$key"}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', column_map => '{"seen": "$when"}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', column_map => '{"temp": 5}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', column_map => '[1]', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', column_map => '{"device": null}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format => 'csv',
       column_map => '{"temp": "payload.t"}', start => false);
SELECT pipeline.create_consumer('c4', 'cons', 't', 'readings',
       column_map => '{"device": "$key", "temp": "payload.sensor.t", "seen": "$timestamp", "extra": "$headers"}',
       start => false);

-- format options
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format_options => '{"delimiter": ";"}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format => 'csv', format_options => '{"delimiter": ";;"}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format => 'csv', format_options => '{"escape": "\\"}', start => false);
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format_options => '{"key_format": "protobuf"}', start => false);
-- key_format avro needs a schema registry too
SELECT pipeline.create_consumer('c', 'cons', 't', 'readings', format_options => '{"key_format": "avro"}', start => false);
SELECT pipeline.create_consumer('c5', 'cons', 't', 'readings', format => 'csv', format_options => '{"delimiter": ";", "null": "NA"}', start => false);

-- text: the value goes to the first column without a default
SELECT pipeline.create_consumer('c6', 'cons', 't', 'log_t', format => 'text', mode => 'append', start => false);
SELECT name, format, mode, column_map FROM pipeline.consumers ORDER BY name;
-- consumers created with start => false have stopped slots, one per parallelism
SELECT consumer, slot, worker_pid, state, partitions, restarts, last_batch_at FROM pipeline.consumer_status ORDER BY 1, 2;

-- privileges: the caller must be able to write the target the way the consumer will
UPDATE pipeline.consumer SET last_error = 'failed near secret value 42' WHERE name = 'r1';
SELECT name, last_error FROM pipeline.consumers WHERE name = 'r1';
CREATE ROLE regress_cons_user LOGIN;
GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb) TO regress_cons_user;
GRANT SELECT, INSERT ON readings TO regress_cons_user;
SET ROLE regress_cons_user;
SELECT pipeline.create_connection('users_conn', '127.0.0.1:9');
SELECT pipeline.create_consumer('u1', 'cons', 't', 'readings', mode => 'append', start => false);
SELECT pipeline.create_consumer('u1', 'users_conn', 't', 'readings', start => false);
SELECT pipeline.create_consumer('u1', 'users_conn', 't', 'readings', mode => 'append', start => false);
-- someone else's consumer cannot be stopped, dropped or reset
SELECT pipeline.stop_consumer('r1');
SELECT pipeline.drop_consumer('r1');
SELECT pipeline.reset_offsets('r1', 'earliest');
SELECT pipeline.replay_dead_letters('r1');
-- and its last error is not shown
SELECT name, last_error FROM pipeline.consumers WHERE name IN ('r1', 'u1') ORDER BY name;
SELECT count(*) FROM pipeline.dead_letters;
SELECT * FROM pipeline.offsets;
RESET ROLE;

-- a connection used by consumers cannot be dropped
SELECT pipeline.drop_connection('cons');
SELECT pipeline.reset_offsets('r1', 'sometime');
SELECT pipeline.reset_offsets('nosuch', 'earliest');

SELECT pipeline.drop_consumer('u1');
SELECT pipeline.drop_consumer('r1');
SELECT pipeline.drop_consumer('r1');
SELECT count(*) FROM pipeline.consumers;

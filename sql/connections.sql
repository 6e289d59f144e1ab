-- Connections: creation, option checks, the view, the effective config.
-- Brokers need not be reachable to create a connection.
SELECT pipeline.create_connection('local', '127.0.0.1:9', '{"acks": "all", "linger.ms": 20, "enable.idempotence": true}');
SELECT name, owner, kind, bootstrap_servers, options FROM pipeline.connections;
SELECT * FROM pipeline.connection_config('local');
-- librdkafka's own defaults on request
SELECT property, value, source FROM pipeline.connection_config('local', true)
 WHERE property IN ('socket.timeout.ms', 'linger.ms', 'acks', 'partitioner');

-- duplicate name
SELECT pipeline.create_connection('local', '127.0.0.1:9');
-- bad names
SELECT pipeline.create_connection('', '127.0.0.1:9');
SELECT pipeline.create_connection('has space', '127.0.0.1:9');
SELECT pipeline.create_connection(NULL, '127.0.0.1:9');
-- no brokers
SELECT pipeline.create_connection('nobrokers', ' , ');
-- unknown properties: the closest known one is named
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"ackz": "all"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"linger.msec": 5}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"compresion.type": "lz4"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"totally.unrelated.thing": 1}');
-- invalid values carry librdkafka's reason
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"acks": "sometimes"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"linger.ms": -5}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"compression.type": "brotli"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"enable.idempotence": "perhaps"}');
-- value types
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"linger.ms": null}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"linger.ms": [1, 2]}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '["acks"]');
-- properties pipeline_ext manages
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"bootstrap.servers": "elsewhere:9092"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"log.queue": "false"}');
-- nothing was stored by the failed calls
SELECT name FROM pipeline.connections ORDER BY name;

-- a connection with a secret: its owner (a superuser here) sees it
SELECT pipeline.create_connection('sasl', 'broker1:9092,broker2:9092',
  '{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-256",
    "sasl.username": "app", "sasl.password": "s3cr3t-pa55"}');
SELECT options FROM pipeline.connections WHERE name = 'sasl';
SELECT property, value FROM pipeline.connection_config('sasl') WHERE property LIKE 'sasl.%' ORDER BY 1;

-- dropping
SELECT pipeline.drop_connection('sasl');
SELECT pipeline.drop_connection('sasl');
SELECT pipeline.drop_connection(NULL);
SELECT * FROM pipeline.connection_config('nope');
SELECT name FROM pipeline.connections ORDER BY name;

-- a schema registry on the connection: its options are checked, not passed
-- to librdkafka, and its password is a secret like sasl.password
SELECT pipeline.create_connection('reg', '127.0.0.1:9',
  '{"schema.registry.url": "http://127.0.0.1:8081", "schema.registry.basic.auth.user.info": "app:reg-pa55",
    "schema.registry.request.timeout.ms": 2000}');
SELECT property, value FROM pipeline.connection_config('reg') WHERE property LIKE 'schema.registry.%' ORDER BY 1;
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.url": "ftp://127.0.0.1/"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.url": "http://"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.url": "http://a:8081,http://b:8081"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.url": "http://app:pw@127.0.0.1:8081"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.basic.auth.user.info": "no-colon-pw"}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.request.timeout.ms": 0}');
SELECT pipeline.create_connection('bad', '127.0.0.1:9', '{"schema.registry.urll": "http://127.0.0.1:8081"}');
SELECT pipeline.drop_connection('reg');

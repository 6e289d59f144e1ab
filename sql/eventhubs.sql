-- Azure Event Hubs connection strings and the Kafka settings derived from them.
SELECT pipeline.create_eventhubs_connection('hub',
  'Endpoint=sb://contoso-ns.servicebus.windows.net/;SharedAccessKeyName=send-listen;SharedAccessKey=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MjQyNDI=;EntityPath=telemetry');
SELECT name, kind, bootstrap_servers, eventhubs_entity FROM pipeline.connections WHERE name = 'hub';
SELECT * FROM pipeline.connection_config('hub');
-- without EntityPath, with extra options, and lower-case part names
SELECT pipeline.create_eventhubs_connection('hub2',
  'endpoint=sb://other-ns.servicebus.windows.net;sharedaccesskeyname=root;sharedaccesskey=a2V5PT0=;',
  '{"linger.ms": 50}');
SELECT property, value, source FROM pipeline.connection_config('hub2')
 WHERE property IN ('bootstrap.servers', 'security.protocol', 'linger.ms') ORDER BY 1;

-- Malformed strings: each error says which part is wrong.
SELECT pipeline.create_eventhubs_connection('x', '');
SELECT pipeline.create_eventhubs_connection('x', 'SharedAccessKeyName=a;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net:9093/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://localhost/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=k3y-k3y');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y;EntityPath=');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y;Colour=blue');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y;SharedAccessKey=other');
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;k3y-k3y-without-a-name');
-- options may not override what the string derives
SELECT pipeline.create_eventhubs_connection('x', 'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=k3y-k3y',
  '{"security.protocol": "PLAINTEXT"}');

-- No error above, nor its detail or hint, contains the key.
DO $$
DECLARE
  bad text[] := ARRAY[
    'Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRETKEY',
    'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRETKEY;SharedAccessKey=TOPSECRETKEY',
    'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;TOPSECRETKEY',
    'Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRETKEY',
    'SharedAccessKey=TOPSECRETKEY',
    'Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRETKEY;Foo=TOPSECRETKEY'];
  s text;
  msg text; det text; hin text;
BEGIN
  FOREACH s IN ARRAY bad LOOP
    BEGIN
      PERFORM pipeline.create_eventhubs_connection('leak', s);
      RAISE EXCEPTION 'accepted a malformed string';
    EXCEPTION WHEN invalid_parameter_value THEN
      GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
      IF strpos(msg || det || hin, 'TOPSECRETKEY') > 0 THEN
        RAISE EXCEPTION 'error text contains the key: %', msg;
      END IF;
    END;
  END LOOP;
  RAISE NOTICE 'no error text contained the key';
END $$;
SELECT name FROM pipeline.connections ORDER BY name;

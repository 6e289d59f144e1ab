-- Who may create, use, see and drop connections; secrets stay hidden.
CREATE ROLE regress_alice LOGIN;
CREATE ROLE regress_bob LOGIN;
CREATE ROLE regress_carol LOGIN;
GRANT regress_alice TO regress_carol;   -- carol is a member of alice

-- creating connections needs EXECUTE, which PUBLIC does not have
SET ROLE regress_bob;
SELECT pipeline.create_connection('bobs', '127.0.0.1:9');
RESET ROLE;
GRANT EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb),
                          pipeline.create_eventhubs_connection(text, text, jsonb),
                          pipeline.drop_connection(text)
   TO regress_alice, regress_bob;

SET ROLE regress_alice;
SELECT pipeline.create_connection('alices', 'broker:9092',
  '{"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN", "sasl.username": "alice",
    "sasl.password": "alice-pa55word", "ssl.key.password": "keypa55"}');
SELECT pipeline.create_eventhubs_connection('alices_hub',
  'Endpoint=sb://alice.servicebus.windows.net/;SharedAccessKeyName=rw;SharedAccessKey=QUxJQ0VTS0VZ');
-- properties that read server files or run programs are for superusers
SELECT pipeline.create_connection('evil', 'broker:9092', '{"sasl.kerberos.kinit.cmd": "touch /tmp/owned"}');
SELECT pipeline.create_connection('evil', 'broker:9092', '{"plugin.library.paths": "/tmp/evil.so"}');
SELECT pipeline.create_connection('evil', 'broker:9092', '{"ssl.ca.location": "/etc/shadow"}');
-- ... whatever librdkafka's name for it: ordinary roles may set only the
-- reviewed properties of librdkafka 2.0.2 (ssl.providers loads a library)
SELECT pipeline.create_connection('evil', 'broker:9092', '{"ssl.providers": "/tmp/evil"}');
SELECT pipeline.create_connection('evil', 'broker:9092', '{"ssl.engine.location": "/tmp/evil.so"}');
SELECT pipeline.create_connection('evil', 'broker:9092', '{"offset.store.path": "/tmp/x"}');
SELECT pipeline.create_connection('evil', 'broker:9092', '{"ssl_key": "x"}');
-- librdkafka's default kinit command puts the principal, unquoted, into a shell command
SELECT pipeline.create_connection('evil', 'broker:9092', '{"sasl.mechanisms": "GSSAPI", "sasl.kerberos.principal": "x;touch /tmp/owned"}');
-- the owner sees her secrets
SELECT name, owner, options->>'sasl.password' AS password FROM pipeline.connections WHERE name LIKE 'alice%' ORDER BY 1;
SELECT value FROM pipeline.connection_config('alices') WHERE property = 'sasl.password';
-- she cannot read the catalog table directly, only the view
SELECT * FROM pipeline.connection;
RESET ROLE;

-- bob sees the connections with every secret masked
SET ROLE regress_bob;
SELECT name, owner, options FROM pipeline.connections WHERE name LIKE 'alice%' ORDER BY 1;
SELECT * FROM pipeline.connection_config('alices');
SELECT property, value FROM pipeline.connection_config('alices_hub') WHERE property LIKE 'sasl%' ORDER BY 1;
SELECT count(*) AS leaked FROM pipeline.connection_config('alices', true) WHERE value LIKE '%pa55%';
-- he may not use, drop or read them
SELECT * FROM pipeline.produce('alices', 'topic', 'x');
SELECT pipeline.produce_async('alices', 'topic', 'x');
SELECT pipeline.drop_connection('alices');
SELECT * FROM pipeline.connection;
RESET ROLE;

-- carol, a member of alice, sees the secrets
SET ROLE regress_carol;
SELECT value FROM pipeline.connection_config('alices') WHERE property = 'sasl.password';
RESET ROLE;

-- a superuser sees everything and may drop
SELECT value FROM pipeline.connection_config('alices') WHERE property = 'sasl.password';
-- ... and may set what ordinary roles may not; secrets are masked by the
-- list (ssl.key.pem), not by the words in their names
SELECT pipeline.create_connection('supers', 'broker:9092',
  '{"ssl.providers": "default", "ssl.key.pem": "-----BEGIN PRIVATE KEY-----abc123", "ssl.cipher.suites": "HIGH"}');
SET ROLE regress_bob;
SELECT property, value FROM pipeline.connection_config('supers') WHERE source = 'options' ORDER BY 1;
RESET ROLE;
SELECT pipeline.drop_connection('supers');
SET ROLE regress_alice;
SELECT pipeline.drop_connection('alices');
SELECT pipeline.drop_connection('alices_hub');
RESET ROLE;
SELECT name FROM pipeline.connections ORDER BY name;
-- change capture: the statements on pipeline's catalog run as its owner,
-- so they must not follow the caller's search_path (an = of the caller's
-- would run as the owner: no NOTICE below); and a capture trigger whose
-- set-up failed must not crash the next statement (a second error, not a
-- lost connection)
CREATE SCHEMA regress_evil AUTHORIZATION regress_bob;
CREATE TABLE regress_captured (a int PRIMARY KEY);
SELECT pipeline.capture_changes('regress_captured', 'local', 'regress_topic');
SET ROLE regress_bob;
CREATE FUNCTION regress_evil.eq(oid, oid) RETURNS bool LANGUAGE plpgsql
  AS $$ BEGIN RAISE NOTICE 'the caller''s = runs as %', current_user; RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR regress_evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = regress_evil.eq);
CREATE TABLE regress_evil.bobs (a int PRIMARY KEY);
SET search_path = regress_evil, pg_catalog, public;
SELECT pipeline.uncapture('regress_evil.bobs');
RESET search_path;
CREATE TRIGGER bobs_x AFTER INSERT ON regress_evil.bobs FOR EACH STATEMENT EXECUTE FUNCTION pipeline._capture_trigger('999');
INSERT INTO regress_evil.bobs VALUES (1);
INSERT INTO regress_evil.bobs VALUES (2);
RESET ROLE;
DROP SCHEMA regress_evil CASCADE;
SELECT pipeline.uncapture('regress_captured');
DROP TABLE regress_captured;
DROP ROLE regress_carol;
REVOKE EXECUTE ON FUNCTION pipeline.create_connection(text, text, jsonb),
                           pipeline.create_eventhubs_connection(text, text, jsonb),
                           pipeline.drop_connection(text)
    FROM regress_alice, regress_bob;
DROP ROLE regress_alice;
DROP ROLE regress_bob;

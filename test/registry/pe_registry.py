#!/usr/bin/python3
"""pe_registry: the project's Confluent-compatible Schema Registry, for tests
and the demo (like test/broker/pe_broker).  In memory, on loopback.

    pe_registry.py --info-file F [--user NAME:PASSWORD]

Writes url=http://127.0.0.1:PORT and control=127.0.0.1:PORT to F once it
listens.  The REST API is the part of Confluent's that clients use:

    GET  /schemas/ids/{id}                     the schema of an id
    GET  /subjects                             the subjects
    GET  /subjects/{s}/versions                a subject's versions
    GET  /subjects/{s}/versions/{v|latest}     one version
    POST /subjects/{s}/versions                register (409 if incompatible)
    POST /subjects/{s}                         look a schema up in a subject
    POST /compatibility/subjects/{s}/versions/{v|latest}
    GET|PUT /config, GET|PUT /config/{s}       compatibility level

with Confluent's error codes (40401 subject not found, 40402 version not
found, 40403 schema not found, 42201 invalid schema, 42203 invalid
compatibility level, 409 incompatible schema, 401 unauthorized) and its
content type.  An identical schema registered again (in any subject) keeps
its id.  Compatibility (BACKWARD, FORWARD, FULL, their _TRANSITIVE forms,
NONE) is judged by Apache Avro's own rules (python3-avro's
avro.compatibility), not by code of ours.

The control channel takes one command per connection, a line, and answers
"OK ..." or "ERR ...":

    down SECONDS      stop listening (connections refused), back after SECONDS
    up                listen again now
    slow MS           answer every request MS milliseconds late (0: at once)
    fail N            answer the next N requests with HTTP 500
    count PATH-PREFIX how many requests asked for paths starting so, counted
                      from the first time the prefix is asked about
"""
import argparse
import base64
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE")


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Registry:
    """The registry's state: schemas by id, subjects' versions, levels."""

    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = {}        # id -> schema text (as first registered)
        self.by_canonical = {}   # canonical form -> id
        self.subjects = {}       # subject -> [id of version 1, 2, ...]
        self.level = "BACKWARD"
        self.subject_level = {}

    @staticmethod
    def parse(text):
        try:
            return avro.schema.parse(text)
        except Exception as e:  # python3-avro raises several kinds
            raise ApiError(422, 42201, "Invalid schema: %s" % e)

    def get_id(self, sid):
        if sid not in self.schemas:
            raise ApiError(404, 40403, "Schema %d not found" % sid)
        return self.schemas[sid]

    def versions(self, subject):
        if subject not in self.subjects:
            raise ApiError(404, 40401, "Subject '%s' not found." % subject)
        return self.subjects[subject]

    def version(self, subject, v):
        ids = self.versions(subject)
        if v == "latest":
            n = len(ids)
        else:
            try:
                n = int(v)
            except ValueError:
                raise ApiError(422, 42202, "The specified version '%s' is not a valid version id." % v)
        if n < 1 or n > len(ids):
            raise ApiError(404, 40402, "Version %s not found." % v)
        return n, ids[n - 1]

    @staticmethod
    def can_read(reader, writer):
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        return result.compatibility is SchemaCompatibilityType.compatible

    def compatible(self, level, new, olds):
        """Whether schema new may follow olds (oldest first) at level."""
        if level == "NONE" or not olds:
            return True
        against = olds if level.endswith("_TRANSITIVE") else olds[-1:]
        for old in against:
            if level.startswith(("BACKWARD", "FULL")) and not self.can_read(new, old):
                return False
            if level.startswith(("FORWARD", "FULL")) and not self.can_read(old, new):
                return False
        return True

    def level_of(self, subject):
        return self.subject_level.get(subject, self.level)

    def register(self, subject, text):
        schema = self.parse(text)
        canonical = json.dumps(schema.to_json(), sort_keys=True)
        ids = self.subjects.get(subject, [])
        sid = self.by_canonical.get(canonical)
        if sid is not None and sid in ids:
            return sid
        olds = [self.parse(self.schemas[i]) for i in ids]
        if not self.compatible(self.level_of(subject), schema, olds):
            raise ApiError(409, 409, "Schema being registered is incompatible with an earlier schema "
                                     "for subject \"%s\" (%s)" % (subject, self.level_of(subject)))
        if sid is None:
            sid = len(self.schemas) + 1
            self.schemas[sid] = text
            self.by_canonical[canonical] = sid
        self.subjects.setdefault(subject, []).append(sid)
        return sid

    def lookup(self, subject, text):
        schema = self.parse(text)
        canonical = json.dumps(schema.to_json(), sort_keys=True)
        ids = self.versions(subject)
        sid = self.by_canonical.get(canonical)
        if sid is None or sid not in ids:
            raise ApiError(404, 40403, "Schema not found")
        return ids.index(sid) + 1, sid


class Faults:
    def __init__(self):
        self.slow_ms = 0
        self.fail = 0
        self.counts = {}
        self.lock = threading.Lock()


def make_handler(reg, faults, user):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            try:
                doc = json.loads(self.raw or b"{}")
            except ValueError:
                raise ApiError(400, 400, "Unexpected character in the request body")
            if not isinstance(doc, dict):
                raise ApiError(400, 400, "The request body must be a JSON object")
            return doc

        def schema_of(self, doc):
            if doc.get("schemaType", "AVRO") != "AVRO":
                raise ApiError(422, 42201, "Invalid schema: only AVRO schemas are supported")
            if not isinstance(doc.get("schema"), str):
                raise ApiError(422, 42201, "Invalid schema: no schema given")
            return doc["schema"]

        def handle_any(self, method):
            # The request's body is read whatever the answer, so that the
            # connection stays usable: a client that keeps it alive (requests,
            # libcurl) sends its next request on it at once.  Closing it after
            # an error instead raced with that next request.
            self.raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with faults.lock:
                for prefix in list(faults.counts):
                    if self.path.startswith(prefix):
                        faults.counts[prefix] += 1
                failing = faults.fail > 0
                if failing:
                    faults.fail -= 1
                slow = faults.slow_ms
            if slow:
                time.sleep(slow / 1000.0)
            try:
                if user is not None:
                    auth = self.headers.get("Authorization", "")
                    expected = "Basic " + base64.b64encode(user.encode()).decode()
                    if auth != expected:
                        raise ApiError(401, 401, "Unauthorized")
                if failing:
                    raise ApiError(500, 50001, "Error in the backend data store (injected)")
                parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].split("/") if p]
                with reg.lock:
                    status, body = self.route(method, parts)
                self.reply(status, body)
            except ApiError as e:
                self.reply(e.status, {"error_code": e.code, "message": e.message})

        def route(self, method, p):
            n = len(p)
            if method == "GET" and n == 3 and p[:2] == ["schemas", "ids"] and p[2].isdigit():
                return 200, {"schema": reg.get_id(int(p[2]))}
            if method == "GET" and p == ["subjects"]:
                return 200, sorted(reg.subjects)
            if n >= 2 and p[0] == "subjects":
                s = p[1]
                if method == "GET" and n == 3 and p[2] == "versions":
                    return 200, list(range(1, len(reg.versions(s)) + 1))
                if method == "GET" and n == 4 and p[2] == "versions":
                    v, sid = reg.version(s, p[3])
                    return 200, {"subject": s, "version": v, "id": sid, "schema": reg.schemas[sid]}
                if method == "POST" and n == 3 and p[2] == "versions":
                    return 200, {"id": reg.register(s, self.schema_of(self.body()))}
                if method == "POST" and n == 2:
                    text = self.schema_of(self.body())
                    v, sid = reg.lookup(s, text)
                    return 200, {"subject": s, "version": v, "id": sid, "schema": reg.schemas[sid]}
            if method == "POST" and n == 5 and p[:2] == ["compatibility", "subjects"] and p[3] == "versions":
                new = reg.parse(self.schema_of(self.body()))
                v, sid = reg.version(p[2], p[4])
                ids = reg.subjects[p[2]][:v]
                olds = [reg.parse(reg.schemas[i]) for i in ids]
                return 200, {"is_compatible": reg.compatible(reg.level_of(p[2]), new, olds)}
            if p and p[0] == "config" and n <= 2:
                if method == "GET":
                    if n == 1:
                        return 200, {"compatibilityLevel": reg.level}
                    if p[1] not in reg.subject_level:
                        raise ApiError(404, 40408, "Subject '%s' does not have subject-level compatibility configured" % p[1])
                    return 200, {"compatibilityLevel": reg.subject_level[p[1]]}
                if method == "PUT":
                    level = str(self.body().get("compatibility", "")).upper()
                    if level not in LEVELS:
                        raise ApiError(422, 42203, "Invalid compatibility level. Valid values are %s" % ", ".join(LEVELS))
                    if n == 1:
                        reg.level = level
                    else:
                        reg.subject_level[p[1]] = level
                    return 200, {"compatibility": level}
            raise ApiError(404, 404, "HTTP 404 Not Found")

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_PUT(self):
            self.handle_any("PUT")

    return Handler


class Server:
    """The HTTP listener, which fault injection stops and starts."""

    def __init__(self, handler):
        self.handler = handler
        self.port = 0
        self.httpd = None
        self.lock = threading.Lock()
        self.generation = 0

    def up(self):
        with self.lock:
            if self.httpd is not None:
                return
            ThreadingHTTPServer.allow_reuse_address = True
            ThreadingHTTPServer.daemon_threads = True
            self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
            self.port = self.httpd.server_address[1]
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def down(self):
        with self.lock:
            if self.httpd is None:
                return
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
            self.generation += 1
            return self.generation

    def down_for(self, seconds):
        gen = self.down()

        def later():
            time.sleep(seconds)
            if self.generation == gen:
                self.up()
        threading.Thread(target=later, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--info-file", required=True)
    ap.add_argument("--user", help="NAME:PASSWORD for basic auth")
    args = ap.parse_args()

    reg = Registry()
    faults = Faults()
    server = Server(make_handler(reg, faults, args.user))
    server.up()

    control = socket.socket()
    control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    control.bind(("127.0.0.1", 0))
    control.listen(16)
    with open(args.info_file + ".tmp", "w") as f:
        f.write("url=http://127.0.0.1:%d\ncontrol=127.0.0.1:%d\n" % (server.port, control.getsockname()[1]))
    import os
    os.rename(args.info_file + ".tmp", args.info_file)

    while True:
        conn, _ = control.accept()
        with conn:
            words = conn.makefile().readline().split()
            try:
                cmd = words[0] if words else ""
                if cmd == "down":
                    server.down_for(float(words[1]))
                    answer = "OK down"
                elif cmd == "up":
                    server.up()
                    answer = "OK up"
                elif cmd == "slow":
                    faults.slow_ms = int(words[1])
                    answer = "OK slow %d" % faults.slow_ms
                elif cmd == "fail":
                    with faults.lock:
                        faults.fail = int(words[1])
                    answer = "OK fail %d" % faults.fail
                elif cmd == "count":
                    with faults.lock:
                        n = faults.counts.setdefault(words[1], 0)
                    answer = "OK %d" % n
                else:
                    answer = "ERR unknown command"
            except (IndexError, ValueError) as e:
                answer = "ERR %s" % e
            conn.sendall((answer + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())

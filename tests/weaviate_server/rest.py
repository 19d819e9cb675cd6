"""REST side of the Weaviate *test server* (``http.server``, one thread per connection).

Implemented (the paths weaviate-client 4.23 calls for what embedstream does):

* ``GET /v1/meta``, ``GET /v1/.well-known/ready``, ``/live``;
  ``/openid-configuration`` answers 404 (= no OIDC, what an anonymous Weaviate says);
* ``GET|POST /v1/schema``, ``GET|DELETE /v1/schema/{Class}``;
* ``GET|POST /v1/aliases``, ``GET|PUT|DELETE /v1/aliases/{Alias}``;
* ``POST /v1/objects``, ``GET|HEAD|DELETE /v1/objects/{Class}/{id}``;
* ``GET /v1/nodes``.

Anything else answers **501** with a message naming the method and path.
"""
from __future__ import annotations

import json
import re
import uuid as uuid_lib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .state import Invalid, NotFound, Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from .server import WeaviateTestServer


def _error_body(message: str) -> dict[str, Any]:
    return {"error": [{"message": message}]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real server
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
    server: "_HTTPServer"

    # quiet: pytest output should not carry one line per request
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    # -- helpers ------------------------------------------------------------------
    def _send(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _dispatch(self) -> None:
        ts: "WeaviateTestServer" = self.server.test_server
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", parse_qs(url.query)
        ts.record("http", f"{self.command} {path}")
        # A body must be drained even when we refuse the request, or keep-alive breaks.
        body = self._json() if self.command in ("POST", "PUT", "PATCH") else None
        if ts.is_down:
            return self._send(503, _error_body("test server is down"))
        fault = ts.faults.take_http(self.command, path)
        if fault is not None:
            return self._send(fault.status, _error_body(fault.message))
        if ts.api_key is not None and not path.startswith("/v1/.well-known"):
            if self.headers.get("Authorization") != f"Bearer {ts.api_key}":
                return self._send(401, _error_body("test server: missing or wrong API key"))
        try:
            self._route(ts, path, query, body)
        except Unsupported as e:
            self._send(501, _error_body(f"not implemented in the test server: {e}"))
        except NotFound as e:
            self._send(404, _error_body(str(e)))
        except Invalid as e:
            self._send(422, _error_body(str(e)))
        except Exception as e:  # a bug in the test server: answer, do not hang the client
            self._send(500, _error_body(f"test server error: {type(e).__name__}: {e}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch

    # -- routes ---------------------------------------------------------------------
    def _route(self, ts: "WeaviateTestServer", path: str, query: dict[str, list[str]], body: Any) -> None:
        db, m = ts.db, self.command

        if path == "/v1/meta" and m == "GET":
            return self._send(
                200,
                {
                    "hostname": f"http://127.0.0.1:{ts.http_port}",
                    "version": ts.version,
                    "modules": {},
                    "grpcMaxMessageSize": ts.grpc_max_message_size,
                },
            )
        if path in ("/v1/.well-known/ready", "/v1/.well-known/live") and m == "GET":
            return self._send(200)
        if path == "/v1/.well-known/openid-configuration" and m == "GET":
            return self._send(404, _error_body("OIDC is not configured"))

        # schema
        if path == "/v1/schema":
            if m == "GET":
                return self._send(200, {"classes": db.list_classes()})
            if m == "POST":
                return self._send(200, db.create_class(body))
        if match := re.fullmatch(r"/v1/schema/([^/]+)", path):
            name = match.group(1)
            if m == "GET":
                cls = db.get_class(name)
                if cls is None:
                    raise NotFound(f"class {name} not found")
                return self._send(200, cls)
            if m == "DELETE":
                db.delete_class(name)
                return self._send(200)
        if (match := re.fullmatch(r"/v1/schema/([^/]+)/properties", path)) and m == "POST":
            return self._send(200, db.add_property(match.group(1), body))

        # aliases
        if path == "/v1/aliases":
            if m == "GET":
                wanted = (query.get("class") or [None])[0]
                with db.lock:
                    items = [
                        {"alias": a, "class": c}
                        for a, c in sorted(db.aliases.items())
                        if wanted is None or c == wanted
                    ]
                return self._send(200, {"aliases": items})
            if m == "POST":
                db.create_alias(body.get("alias", ""), body.get("class", ""))
                return self._send(200, {"alias": body["alias"], "class": body["class"]})
        if match := re.fullmatch(r"/v1/aliases/([^/]+)", path):
            alias = match.group(1)
            if m == "GET":
                with db.lock:
                    target = db.aliases.get(alias)
                if target is None:
                    raise NotFound(f'alias "{alias}" not found')
                return self._send(200, {"alias": alias, "class": target})
            if m == "PUT":
                db.update_alias(alias, body.get("class", ""))
                return self._send(200, {"alias": alias, "class": body["class"]})
            if m == "DELETE":
                return self._send(204 if db.delete_alias(alias) else 404)

        # objects (single-object REST paths)
        if path == "/v1/objects" and m == "POST":
            if body.get("tenant"):
                raise Unsupported("multi-tenancy")
            obj_id = body.get("id") or str(uuid_lib.uuid4())
            vectors: dict[str, np.ndarray] = {}
            if body.get("vector"):
                vectors[""] = np.asarray(body["vector"], dtype=np.float32)
            for vname, vec in (body.get("vectors") or {}).items():
                vectors[vname] = np.asarray(vec, dtype=np.float32)
            db.put_object(body.get("class", ""), obj_id, body.get("properties") or {}, vectors)
            return self._send(200, {**body, "id": obj_id})
        if match := re.fullmatch(r"/v1/objects/([^/]+)/([0-9a-fA-F-]{36})", path):
            name, obj_id = match.groups()
            if m in ("GET", "HEAD"):
                obj = db.get_object(name, obj_id)
                if obj is None:
                    return self._send(404) if m == "HEAD" else self._send(404, _error_body("not found"))
                if m == "HEAD":
                    return self._send(204)
                out: dict[str, Any] = {
                    "class": name,
                    "id": obj.uuid,
                    "properties": obj.properties,
                    "creationTimeUnix": obj.created_ms,
                    "lastUpdateTimeUnix": obj.updated_ms,
                }
                if "include" in query and "vector" in query["include"][0]:
                    named = {k: v.tolist() for k, v in obj.vectors.items() if k}
                    if named:
                        out["vectors"] = named
                    if "" in obj.vectors:
                        out["vector"] = obj.vectors[""].tolist()
                return self._send(200, out)
            if m == "DELETE":
                return self._send(204 if db.delete_object(name, obj_id) else 404)

        # nodes
        if path == "/v1/nodes" and m == "GET":
            with db.lock:
                count = sum(len(c.objects) for c in db.collections.values())
                shards = len(db.collections)
            return self._send(
                200,
                {
                    "nodes": [
                        {
                            "name": "test-node-1",
                            "status": "HEALTHY",
                            "version": ts.version,
                            "gitHash": "test-server",
                            "stats": {"objectCount": count, "shardCount": shards},
                            "batchStats": {"queueLength": 0, "ratePerSecond": 0},
                            "shards": None,
                        }
                    ]
                },
            )

        raise Unsupported(f"{m} {path}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], test_server: "WeaviateTestServer"):
        super().__init__(address, _Handler)
        self.test_server = test_server


def make_http_server(test_server: "WeaviateTestServer", host: str, port: int) -> _HTTPServer:
    return _HTTPServer((host, port), test_server)

"""The real Weaviate of the test session (``real_weaviate`` fixture, registered in tests/conftest.py).

By default the fixture starts one Weaviate per session with :class:`load.servers.weaviate.WeaviateServer`
(on 127.0.0.1, free ports, API-key auth on with a random key, auto-schema off, data and log in the
session's temporary directory). To run the tests against an external server instead, set
``WEAVIATE_URL`` (``WEAVIATE_GRPC_PORT``, default 50051; ``WEAVIATE_API_KEY`` when it needs one).
Tests that stop or kill the server process (outages) always start their own server.

Every test uses its own collection prefix (:func:`unique_prefix`) and drops what it created.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.store.weaviate import WeaviateStore, sanitise_class_name
from load.servers.weaviate import WeaviateServer


def unique_prefix(tag: str = "EsTest") -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}"


@dataclass
class RealWeaviate:
    url: str
    grpc_port: int
    api_key: str | None
    version: str
    server: WeaviateServer | None  # None: an external server (WEAVIATE_URL)

    @classmethod
    def of(cls, server: WeaviateServer) -> "RealWeaviate":
        return cls(server.url, server.grpc_port, server.api_key, server.server_version or "?", server)

    def store(self, fingerprint: str, dim: int, collection_prefix: str, **kwargs: Any) -> WeaviateStore:
        params: dict[str, Any] = dict(url=self.url, grpc_port=self.grpc_port, api_key=self.api_key,
                                      fingerprint=fingerprint, dim=dim, collection_prefix=collection_prefix,
                                      timeout_s=20.0)
        params.update(kwargs)
        return WeaviateStore(**params)

    def client(self):
        import weaviate
        from weaviate.classes.init import Auth

        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        return weaviate.connect_to_custom(
            http_host=parts.hostname, http_port=parts.port or (443 if secure else 80), http_secure=secure,
            grpc_host=parts.hostname, grpc_port=self.grpc_port, grpc_secure=secure,
            auth_credentials=Auth.api_key(self.api_key) if self.api_key else None, skip_init_checks=True)

    def drop_prefix(self, prefix: str) -> None:
        """Delete the alias ``prefix`` and every collection whose name starts with it."""
        name = sanitise_class_name(prefix)
        client = self.client()
        try:
            for alias in client.alias.list_all() or {}:
                if alias.startswith(name):
                    client.alias.delete(alias_name=alias)
            for coll in client.collections.list_all(simple=True):
                if coll.startswith(name):
                    client.collections.delete(coll)
        finally:
            client.close()

    def settings_env(self) -> dict[str, str]:
        """EMBEDSTREAM_* settings that point a worker or a CLI command at this server."""
        env = {"EMBEDSTREAM_STORE": "weaviate", "EMBEDSTREAM_WEAVIATE_URL": self.url,
               "EMBEDSTREAM_WEAVIATE_GRPC_PORT": str(self.grpc_port)}
        if self.api_key:
            env["EMBEDSTREAM_WEAVIATE_API_KEY"] = self.api_key
        return env


def _external() -> RealWeaviate | None:
    url = os.environ.get("WEAVIATE_URL")
    if not url:
        return None
    rw = RealWeaviate(url, int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
                      os.environ.get("WEAVIATE_API_KEY") or None, "?", None)
    client = rw.client()
    try:
        rw.version = str(client.get_meta().get("version"))
    finally:
        client.close()
    return rw


def _say(request, line: str) -> None:
    """A line in the test log even when output is captured (CI shows the server version; it is
    listed again at the end of the report)."""
    from tests.session_servers import record

    record(line.replace("[embedstream tests] ", ""))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


@pytest.fixture(scope="session")
def real_weaviate(request, tmp_path_factory):
    """One real Weaviate for the session (see the module docstring)."""
    rw = _external()
    if rw is not None:
        _say(request, f"[embedstream tests] Weaviate {rw.version} (external, WEAVIATE_URL={rw.url}, "
                      f"gRPC {rw.grpc_port})")
        yield rw
        return
    server = WeaviateServer(tmp_path_factory.mktemp("weaviate")).start()
    rw = RealWeaviate.of(server)
    _say(request, f"[embedstream tests] Weaviate {rw.version} on {rw.url}, gRPC {rw.grpc_port} "
                  f"(pid {server.pid}, log {server.log_path})")
    try:
        yield rw
    finally:
        if request.session.testsfailed:
            _say(request, f"[embedstream tests] Weaviate log {server.log_path}; its last warnings/errors:\n"
                          f"{server.problems(20)}")
        server.stop()

"""A real Confluent-API schema registry for tests: Apicurio Registry 3.x, on 127.0.0.1.

Confluent's own Schema Registry is not on Maven Central; Apicurio Registry is
(``io.apicurio:apicurio-registry-app``, a Quarkus application published as a ``tar.gz`` with
classifier ``all``, see ``recipes/registry.pom.xml``). Its ``ccompat`` API under
``/apis/ccompat/v7`` speaks the Confluent Schema Registry protocol: confluent-kafka's
``SchemaRegistryClient``, ``AvroSerializer`` (auto-registration under ``<topic>-value``) and
``AvroDeserializer`` (schema id lookup) work against it unchanged.

    with RegistryServer(tmp_dir) as r:
        r.url                 # "http://127.0.0.1:<port>/apis/ccompat/v7" (EMBEDSTREAM_SCHEMA_REGISTRY_URL)
        r.stop(); r.start()   # an outage; schemas and their ids survive (H2 file in tmp_dir)

    with RegistryProxy(r.url) as p:   # a loopback proxy in front of it
        p.url                 # what the client is given
        p.mode = "503"        # every request answered 503 (a registry that is up but failing)

Facts (checked on Apicurio 3.3.3): it needs Java 21+ (class files version 65; the JDK found through
JAVA_HOME, PATH or /usr/lib/jvm is used); it starts in ~10 s on an idle 2-core machine; its default
storage is an in-memory H2 database (lost on restart), so the runner gives it an H2 file in the work
directory instead; besides its HTTP port it opens a Quarkus management interface on
0.0.0.0:9000 unless told otherwise - the runner puts it on another free 127.0.0.1 port
(``quarkus.management.enabled`` is a build-time setting and cannot turn it off). Logs (Quarkus
console: warnings and the access log) go to ``<dir>/registry.log``.
"""
from __future__ import annotations

import glob
import http.client
import logging
import os
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from load.servers import (PrerequisiteMissing, ServerProcess, _java_major, cache_dir, free_ports, maven_fetch, tail,
                           wait_port)

log = logging.getLogger(__name__)

REGISTRY_VERSION = os.environ.get("EMBEDSTREAM_REGISTRY_VERSION", "3.3.3")
RECIPES = Path(__file__).resolve().parent / "recipes"
CCOMPAT_PATH = "/apis/ccompat/v7"
#: Apicurio 3.x is compiled for Java 21
MIN_JAVA = 21


def registry_home(version: str = REGISTRY_VERSION) -> Path:
    return cache_dir() / f"apicurio-registry-{version}"


def registry_java(min_major: int = MIN_JAVA) -> str:
    """A ``java`` of at least ``min_major``: JAVA_HOME's, the PATH's, else the newest JDK under /usr/lib/jvm."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(shutil.which("java"))
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    found = []
    for c in candidates:
        try:
            out = subprocess.run([c, "-version"], capture_output=True, text=True, timeout=30).stderr
        except OSError:
            continue
        major = _java_major(out)
        if major is not None:
            found.append((major, c))
            if major >= min_major:
                return c
    have = ", ".join(f"{c} ({m})" for m, c in found) or "none"
    raise PrerequisiteMissing(f"Java {min_major}+ not found (JAVA_HOME, PATH, /usr/lib/jvm; found: {have}): "
                              f"needed to run the schema registry (Apicurio Registry {REGISTRY_VERSION}) in "
                              f"tests. Install a JDK {min_major}+ (e.g. Temurin 21 or 25 under /usr/lib/jvm; Debian 13: "
                              "apt-get install openjdk-21-jre-headless) or point JAVA_HOME at one.")


def install(version: str = REGISTRY_VERSION, quiet: bool = False) -> Path:
    """Fetch Apicurio Registry with Maven into the cache and unpack it (once); returns its directory."""
    home = registry_home(version)
    app = home / "app"
    stamp = home / ".complete"
    if stamp.exists():
        return app
    registry_java()
    if not quiet:
        print(f"installing Apicurio Registry {version} (Maven Central) into {home} ...", flush=True)
    dl = home / "download"
    maven_fetch(RECIPES / "registry.pom.xml", home, dl, {"registry.version": version},
                f"the schema registry (Apicurio Registry {version})")
    archives = sorted(dl.glob("apicurio-registry-app-*-all.tar.gz"))
    if len(archives) != 1:
        raise RuntimeError(f"expected one apicurio-registry-app-*-all.tar.gz in {dl}, found {archives}")
    tmp = home / "app.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tf:
        tf.extractall(tmp, filter="data")
    if not (tmp / "quarkus-run.jar").exists():
        raise RuntimeError(f"{archives[0]} has no quarkus-run.jar at its root")
    shutil.rmtree(app, ignore_errors=True)
    tmp.rename(app)
    shutil.rmtree(dl, ignore_errors=True)  # 150 MB archive: the unpacked copy is what runs
    stamp.write_text(version + "\n")
    return app


class RegistryServer(ServerProcess):
    """Apicurio Registry on a free 127.0.0.1 port, its schemas in an H2 file under ``workdir``.

    ``stop()`` then ``start()`` is a registry outage: same port, same schemas and ids afterwards.
    """

    def __init__(self, workdir: Path, version: str = REGISTRY_VERSION, heap: str = "320m",
                 jvm_args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.port, self.management_port = free_ports(2)
        self.log_path = self.workdir / "registry.log"
        self.db_path = self.workdir / "h2" / "registry"
        self.heap = heap
        self.jvm_args = list(jvm_args or [])
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API root: what EMBEDSTREAM_SCHEMA_REGISTRY_URL is set to."""
        return self.base_url + CCOMPAT_PATH

    def command(self) -> list[str]:
        app = install(self.version, quiet=True)
        return [registry_java(), f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                # the management interface (health, metrics) would bind 0.0.0.0:9000
                "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={self.management_port}",
                # an H2 file instead of the in-memory default: schemas survive a restart
                f"-Dapicurio.datasource.url=jdbc:h2:file:{self.db_path}",
                "-Dapicurio.datasource.jdbc.initial-size=2", "-Dapicurio.datasource.jdbc.min-size=2",
                "-Dapicurio.datasource.jdbc.max-size=10",
                f"-Dapicurio.storage.snapshot.location={self.workdir}",
                f"-Djava.io.tmpdir={self.workdir}",
                *self.jvm_args, "-jar", str(app / "quarkus-run.jar")]

    def start(self, timeout: float = 180.0) -> "RegistryServer":
        """Start the registry; returns when its Confluent API answers."""
        if self.alive():
            return self
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        wait_port(self.port, self.proc, timeout, f"Apicurio Registry {self.version}", self.log_path)
        while True:
            try:
                if self._get(CCOMPAT_PATH + "/subjects")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"Apicurio Registry exited with code {self.proc.returncode}; last log lines:\n"
                                   f"{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Apicurio Registry on {self.base_url} did not answer in {timeout:.0f}s; "
                                   f"last log lines:\n{tail(self.log_path)}")
            time.sleep(0.2)
        log.info("Apicurio Registry %s on %s (pid %d, log %s)", self.version, self.url, self.proc.pid,
                 self.log_path)
        return self

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def server_version(self) -> str:
        """The version the running registry reports (``/apis/registry/v3/system/info``)."""
        import json

        status, body = self._get("/apis/registry/v3/system/info")
        return json.loads(body)["version"] if status == 200 else "?"

class RegistryProxy:
    """A loopback HTTP proxy in front of a registry, for failures a running registry does not produce.

    ``mode``: ``"pass"`` forwards every request; ``"503"`` answers each with 503 Service Unavailable
    (a Confluent-style error body). ``requests`` counts what reached the proxy, ``failed`` what it
    answered with an error.
    """

    def __init__(self, upstream_url: str):
        u = urllib.parse.urlsplit(upstream_url)
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.mode = "pass"
        self.requests = 0
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.mode == "503":
                    proxy.failed += 1
                    return self._reply(503, b'{"error_code":50301,"message":"Service Unavailable (test proxy)"}',
                                       "application/json")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self._reply(r.status, data, r.getheader("Content-Type") or "application/json")
                except OSError as exc:
                    proxy.failed += 1
                    self._reply(502, f'{{"error_code":50201,"message":"upstream: {exc}"}}'.encode(),
                                "application/json")
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="registry-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> "RegistryProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "RegistryProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["REGISTRY_VERSION", "RegistryProxy", "RegistryServer", "install", "registry_home", "registry_java"]

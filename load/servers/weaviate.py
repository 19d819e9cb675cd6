"""A real Weaviate for tests, CI, the crash harness and the benchmarks: one node on 127.0.0.1.

The server is the upstream Go module, built the ordinary Go way and cached::

    CGO_ENABLED=0 GOBIN=<cache>/weaviate-v<version>/bin \\
        go install github.com/weaviate/weaviate/cmd/weaviate-server@v<version>

(:func:`install`; the checksum database stays on: the build environment drops ``GOSUMDB=off``,
``GONOSUMDB``, ``GONOSUMCHECK``, ``GOINSECURE`` and ``GOFLAGS`` if the caller has them). Measured
here (2 shared cores): 3 min 6 s with a cold module cache (about 1.8 GB of modules), 2 min 8 s
when only Weaviate's own module changed; the binary is about 170 MB (163 MiB).

Why 1.36: the newest minor that still builds with Go 1.25 (1.37+ require Go 1.26), fully
supported by the pinned weaviate-client 4.23 (which gates only 1.37 extras - export,
tokenisation API - above it); aliases (>= 1.32) and gRPC aggregate (>= 1.29) are there.
``EMBEDSTREAM_WEAVIATE_VERSION`` picks another release.

    with WeaviateServer(tmp_dir) as w:          # API-key auth on, random key
        w.url, w.grpc_port, w.api_key
        w.pause(); w.resume()                    # SIGSTOP / SIGCONT: a hung server
        w.kill(); w.start()                      # SIGKILL, then restart on the same data path

Settings: :data:`SHARED_SETTINGS` are the ones ``docker-compose.yml`` runs with (auto-schema off,
no vectorizer or API-based modules, API-key auth, telemetry off; tests/test_deploy.py keeps the
two equal). The server log (JSON lines) is ``<workdir>/weaviate.log`` and is kept.

**Listeners.** REST (``--host 127.0.0.1``), gossip TCP+UDP, Raft and Raft RPC
(``CLUSTER_BIND_ADDR=127.0.0.1``, which they also advertise) bind 127.0.0.1; the pprof/debug
listener (``:6060`` by default) is off (``GO_PROFILING_DISABLE=true``); Prometheus metrics are
off by default. Two listeners **cannot** be bound to loopback in any release (checked in
v1.36.15, v1.36.23, v1.37.14, v1.38.11 and main): Weaviate hard-codes the wildcard address,
``net.Listen("tcp", fmt.Sprintf(":%d", port))``, with no setting for a host:

* the public gRPC API, ``GRPC_PORT`` (``adapters/handlers/grpc/server.go``, ``StartAndListen``);
* the internal cluster API (HTTP + internal gRPC), ``CLUSTER_DATA_BIND_PORT``
  (``adapters/handlers/rest/clusterapi/serve.go`` ``Addr: fmt.Sprintf(":%d", port)`` and
  ``clusterapi/grpc/server.go``).

What limits the exposure: both ports are random free ports that live only as long as the test
session; the public gRPC API requires the API key (anonymous access is off unless a test asks
for it); the cluster API requires HTTP basic auth with a random per-server password
(``CLUSTER_BASIC_AUTH_USERNAME/PASSWORD``). tests/store/test_real_weaviate.py checks every
listener of the process: loopback, or one of exactly these two ports.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from load.servers import ServerProcess, cache_dir, free_ports, require_tool, wait_port

log = logging.getLogger(__name__)

WEAVIATE_VERSION = os.environ.get("EMBEDSTREAM_WEAVIATE_VERSION", "1.36.23")
MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
HOST = "127.0.0.1"

#: settings shared with docker-compose.yml's weaviate service (tests/test_deploy.py keeps them equal)
SHARED_SETTINGS = {
    # a deleted collection must stay deleted: with auto-schema on, the next write re-creates it
    # with guessed types (doc_id `word`-tokenised, so deletes by doc_id hit other documents)
    "AUTOSCHEMA_ENABLED": "false",
    "DEFAULT_VECTORIZER_MODULE": "none",  # embedstream brings its own vectors
    "ENABLE_MODULES": "",
    "API_BASED_MODULES_DISABLED": "true",  # 1.3x enables ~40 API-based modules by default
    "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
    "AUTHENTICATION_APIKEY_ENABLED": "true",
    "AUTHENTICATION_APIKEY_USERS": "embedstream",
    "DISABLE_TELEMETRY": "true",
    "CLUSTER_HOSTNAME": "node1",
    "RAFT_BOOTSTRAP_EXPECT": "1",
}
#: environment names that would turn off Go's checksum verification: never passed to `go install`
_UNSAFE_GO_ENV = ("GOSUMDB", "GONOSUMDB", "GONOSUMCHECK", "GOINSECURE", "GOFLAGS")


def weaviate_home(version: str = WEAVIATE_VERSION) -> Path:
    return cache_dir() / f"weaviate-v{version}"


def binary_path(version: str = WEAVIATE_VERSION) -> Path:
    return weaviate_home(version) / "bin" / "weaviate-server"


def install(version: str = WEAVIATE_VERSION, quiet: bool = False) -> Path:
    """Build the server with ``go install`` into the cache (once); returns the binary's path."""
    binary = binary_path(version)
    stamp = weaviate_home(version) / ".complete"
    if stamp.exists() and binary.exists():
        return binary
    go = require_tool("go", "to build the Weaviate server for the tests (go install, once)",
                      "Install Go 1.25+ (https://go.dev/doc/install); Weaviate 1.37+ needs Go 1.26.")
    home = weaviate_home(version)
    partial = home / "bin.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in _UNSAFE_GO_ENV}
    env.update(CGO_ENABLED="0", GOBIN=str(partial))
    cmd = [go, "install", f"{MODULE}@v{version}"]
    if not quiet:
        print(f"building Weaviate {version} with `{' '.join(cmd)}` into {home} "
              "(first time: ~2-4 min, ~1.8 GB of Go modules) ...", flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building Weaviate {version} failed (CGO_ENABLED=0 {' '.join(cmd)}):\n"
                           f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    built = partial / "weaviate-server"
    if not built.exists():
        raise RuntimeError(f"`{' '.join(cmd)}` succeeded but left no {built}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, binary)
    shutil.rmtree(partial, ignore_errors=True)
    gov = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    stamp.write_text(json.dumps({"version": version, "go": gov, "bytes": binary.stat().st_size,
                                 "build_s": round(time.monotonic() - t0, 1)}) + "\n")
    return binary


class WeaviateServer(ServerProcess):
    """One Weaviate node with its data in ``workdir/data`` and its log in ``workdir/weaviate.log``.

    ``api_key``: the key clients must send (default: a random one); ``anonymous=True`` turns
    API-key auth off and anonymous access on instead. ``env`` adds or overrides settings.
    """

    def __init__(self, workdir: Path, version: str = WEAVIATE_VERSION, *, api_key: str | None = None,
                 anonymous: bool = False, env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.data_path = self.workdir / "data"
        self.log_path = self.workdir / "weaviate.log"
        self.anonymous = anonymous
        self.api_key = None if anonymous else (api_key or secrets.token_urlsafe(24))
        self._cluster_password = secrets.token_urlsafe(24)
        (self.http_port, self.grpc_port, self.gossip_port, self.data_port, self.raft_port,
         self.raft_rpc_port) = free_ports(6)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.server_version: str | None = None

    # ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def public_wildcard_ports(self) -> set[int]:
        """The two ports Weaviate binds on every interface (see the module docstring)."""
        return {self.grpc_port, self.data_port}

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "HOME", "TMPDIR", "LANG", "TZ")}
        env.update(SHARED_SETTINGS)
        env.update({
            "PERSISTENCE_DATA_PATH": str(self.data_path),
            "GRPC_PORT": str(self.grpc_port),
            "CLUSTER_GOSSIP_BIND_PORT": str(self.gossip_port),
            "CLUSTER_DATA_BIND_PORT": str(self.data_port),
            # gossip, Raft and Raft RPC bind (and advertise) this address. Not CLUSTER_IN_LOCALHOST:
            # it makes Raft RPC assume "Raft port + 1" for the RPC port, which free ports break
            "CLUSTER_BIND_ADDR": HOST,
            "CLUSTER_BASIC_AUTH_USERNAME": "node1",
            "CLUSTER_BASIC_AUTH_PASSWORD": self._cluster_password,
            "RAFT_PORT": str(self.raft_port),
            "RAFT_INTERNAL_RPC_PORT": str(self.raft_rpc_port),
            "GO_PROFILING_DISABLE": "true",
            "PROMETHEUS_MONITORING_ENABLED": "false",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
        })
        if self.anonymous:
            env.update(AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED="true", AUTHENTICATION_APIKEY_ENABLED="false")
            env.pop("AUTHENTICATION_APIKEY_USERS", None)
        else:
            env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"] = self.api_key or ""
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> "WeaviateServer":
        """Start the node (on the same data path as before, if any); returns once it is ready."""
        if self.alive():
            return self
        binary = install(self.version, quiet=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"--- embedstream: starting Weaviate {self.version} at {time.ctime()}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [str(binary), "--host", HOST, "--port", str(self.http_port), "--scheme", "http"],
                env=self.environment(), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            wait_port(self.http_port, self.proc, timeout, f"Weaviate {self.version}", self.log_path)
            self._wait_ready(deadline)
            wait_port(self.grpc_port, self.proc, max(1.0, deadline - time.monotonic()),
                      f"Weaviate {self.version} gRPC", self.log_path)
            self.server_version = self.meta()["version"]
        except BaseException:
            self.kill()
            raise
        log.info("Weaviate %s on %s, gRPC %d (pid %d, data %s, log %s)", self.server_version, self.url,
                 self.grpc_port, self.proc.pid, self.data_path, self.log_path)
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Until GET /v1/.well-known/ready answers 200 (the node has a Raft leader: itself)."""
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v1/.well-known/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Weaviate exited with code {self.proc.returncode} during start-up; "
                                   f"last log lines:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Weaviate on {self.url} was not ready in time; last log lines:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def meta(self) -> dict:
        req = urllib.request.Request(f"{self.url}/v1/meta")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def pause(self) -> None:
        """SIGSTOP: the process hangs (its sockets stay open, nothing answers)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGCONT)

    def problems(self, lines: int = 20) -> str:
        """The last warning/error/fatal lines of the log (the info lines are mostly noise)."""
        if not self.log_path.exists():
            return "(no log)"
        keep = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                if '"level":"warning"' in ln or '"level":"error"' in ln or '"level":"fatal"' in ln
                or not ln.startswith("{")]
        return "\n".join(keep[-lines:]) or "(none)"


__all__ = ["SHARED_SETTINGS", "WEAVIATE_VERSION", "WeaviateServer", "binary_path", "install", "weaviate_home"]

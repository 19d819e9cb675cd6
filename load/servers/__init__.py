"""Real servers for the tests, CI, the crash harness and the benchmarks, on 127.0.0.1 only.

* :mod:`load.servers.kafka` - Apache Kafka (broker + KRaft controller in one JVM), from Maven Central;
* :mod:`load.servers.registry` - a Confluent-API schema registry;
* :mod:`load.servers.weaviate` - Weaviate, built with ``go install``.

Each is installed once into a cache outside the work tree (``~/.cache/embedstream``, or
``EMBEDSTREAM_CACHE_DIR``) and started on free ports with its data in a temporary directory.
``python -m load.servers install`` installs all of them (``make test`` runs it first, so a missing
prerequisite is reported in one line before any test starts); ``python -m load.servers --help``
lists the other commands.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class PrerequisiteMissing(RuntimeError):
    """A tool a server needs (java, mvn, go) is not installed; the message says which."""


def cache_dir() -> Path:
    d = Path(os.environ.get("EMBEDSTREAM_CACHE_DIR") or Path.home() / ".cache" / "embedstream")
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def require_tool(name: str, why: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrerequisiteMissing(f"`{name}` not found on PATH: needed {why}. {hint}")
    return path


def java_bin(min_major: int = 17) -> str:
    """A ``java`` of at least ``min_major``: JAVA_HOME's, else the PATH's."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(shutil.which("java"))
    for c in candidates:
        try:
            out = subprocess.run([c, "-version"], capture_output=True, text=True, timeout=30).stderr
        except OSError:
            continue
        major = _java_major(out)
        if major is not None and major >= min_major:
            return c
    raise PrerequisiteMissing(f"Java {min_major}+ not found (JAVA_HOME or `java` on PATH): needed to run "
                              "the Kafka broker and the schema registry in tests. Install a JDK 17+ "
                              "(Debian: apt-get install openjdk-17-jre-headless).")


def _java_major(version_output: str) -> int | None:
    import re

    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str, log: Path | None = None) -> None:
    """Wait until something listens on 127.0.0.1:port; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start-up"
                               + (f"; last log lines:\n{tail(log)}" if log else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s"
                       + (f"; last log lines:\n{tail(log)}" if log else ""))


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def maven_fetch(recipe: Path, home: Path, dest: Path, properties: dict[str, str], what: str,
                runtime_only: bool = False) -> None:
    """``mvn dependency:copy-dependencies`` of the POM ``recipe`` (copied into ``home``) into ``dest``."""
    mvn = require_tool("mvn", f"to fetch {what} from Maven Central for the tests",
                       "Install Maven 3.8+ (Debian: apt-get install maven).")
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    pom = home / "pom.xml"
    shutil.copy(recipe, pom)
    cmd = [mvn, "-q", "-B", "-f", str(pom), *(f"-D{k}={v}" for k, v in properties.items()),
           "dependency:copy-dependencies", *(["-DincludeScope=runtime"] if runtime_only else []),
           f"-DoutputDirectory={dest}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"fetching {what} with Maven failed ({' '.join(cmd)}):\n"
                           f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


class ServerProcess:
    """What the test servers share: one child process in its own process group (``self.proc``),
    stopped with SIGTERM and, after a timeout, SIGKILL; :meth:`start` (the subclass's) restarts it
    on the same data. A context manager."""

    proc: subprocess.Popen | None = None
    log_path: Path

    def start(self):  # pragma: no cover - every server defines it
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash: what is not on disk is lost)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused process must not linger
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL if it takes longer than ``timeout``."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

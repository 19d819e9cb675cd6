"""Shared fixtures: the real brokers (Apache Kafka; Tansu for tests marked `tansu`), the real ONNX encoders, per-test topics,
and a worker running as a subprocess (as in production)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from app.broker import EmbeddedBroker
from app.config import Settings
from load.procs import stop_process
from tests.session_servers import USED as SERVERS_USED, record
from tests.store.real_weaviate import real_weaviate  # noqa: F401  (session fixture: one real Weaviate)

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """Apache Kafka (load/servers/kafka.py), one per session: the broker the suite runs on."""
    from load.servers.kafka import KafkaServer

    k = KafkaServer(tmp_path_factory.mktemp("kafka"))
    k.start()
    record(f"Apache Kafka {k.version} on {k.bootstrap} (log {k.log_path})")
    yield k
    k.stop()


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory):
    """The embedded Tansu broker of `make demo` / `embedstream dev`, for tests marked ``tansu``."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


def both_brokers():
    """``pytestmark = both_brokers()``: run a module's tests on Apache Kafka and on Tansu."""
    return pytest.mark.parametrize("broker_kind", [pytest.param("kafka", id="kafka"),
                                                   pytest.param("tansu", id="tansu", marks=pytest.mark.tansu)])


@pytest.fixture
def broker_kind():
    """Overridden by ``both_brokers()``; "kafka" otherwise."""
    return "kafka"


@pytest.fixture
def broker(request, broker_kind):
    """The broker of this test: real Kafka, or the embedded Tansu for tests marked ``tansu``.
    Both have ``.bootstrap``; ``broker.kind`` is "kafka" or "tansu"."""
    if broker_kind == "tansu" or request.node.get_closest_marker("tansu") is not None:
        b = request.getfixturevalue("tansu_broker")
        b.kind = "tansu"
    else:
        b = request.getfixturevalue("kafka_broker")
        b.kind = "kafka"
    return b


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory):
    """A real Confluent-API schema registry (Apicurio Registry, load/servers/registry.py), one per session."""
    from load.servers.registry import RegistryServer

    r = RegistryServer(tmp_path_factory.mktemp("registry"))
    r.start()
    record(f"Apicurio Registry {r.server_version()} on {r.url} (log {r.log_path})")
    yield r
    r.stop()


@pytest.fixture(scope="session")
def schema_registry(registry_server) -> str:
    """The session registry's Confluent API URL (EMBEDSTREAM_SCHEMA_REGISTRY_URL)."""
    return registry_server.url


@pytest.fixture(scope="session")
def encoder():
    from app.encoder import Encoder

    return Encoder.load(variant="int8")


@pytest.fixture(scope="session")
def encoder_fp32():
    from app.encoder import Encoder

    return Encoder.load(variant="fp32")


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    """Settings with unique topics (created) and a fresh data dir for one test."""
    from app.topics import create_topics

    tag = uuid.uuid4().hex[:8]
    s = Settings.load(env={}, bootstrap_servers=broker.bootstrap, data_dir=str(tmp_path / "data"),
                      app_id=f"es-test-{tag}", changes_topic=f"changes-{tag}", alerts_topic=f"alerts-{tag}",
                      dlq_topic=f"dlq-{tag}", batch_max_wait_s=0.2, metrics_port=0,
                      # short group timeouts keep joins and failovers quick in tests (>= 6 s: Kafka's minimum)
                      session_timeout_s=6.0, heartbeat_interval_s=1.0)
    create_topics(s, replication_factor=1, echo=lambda m: None)
    return s


def settings_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    for f in ("bootstrap_servers", "data_dir", "app_id", "changes_topic", "alerts_topic", "dlq_topic",
              "batch_max_wait_s", "batch_max_events", "fetch_max_wait_ms", "store", "model_variant", "weaviate_url",
              "weaviate_grpc_port", "collection_prefix", "metrics_port", "session_timeout_s",
              "heartbeat_interval_s"):
        env["EMBEDSTREAM_" + f.upper()] = str(getattr(s, f))
    if s.weaviate_api_key:
        env["EMBEDSTREAM_WEAVIATE_API_KEY"] = s.weaviate_api_key
    # the registry and the connection security, where a test sets them
    for f in ("schema_registry_url", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
              "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
        if getattr(s, f, "") not in ("", "PLAINTEXT"):
            env["EMBEDSTREAM_" + f.upper()] = str(getattr(s, f))
    return env


@pytest.fixture
def env(settings, monkeypatch):
    """The process environment holds exactly ``settings`` (for CLI commands run in-process); stdin
    is not a terminal."""
    for k in [k for k in os.environ if k.startswith("EMBEDSTREAM_")]:
        monkeypatch.delenv(k)
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return settings


class WorkerProcess:
    """`python -m app worker` as a subprocess, with its log kept for failure reports."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict | None = None):
        self.settings = settings
        self.log_path = log_path
        self.env = {**settings_env(settings), **(extra_env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=REPO, env=self.env,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 45) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, sig, timeout)
        return self.proc.returncode


@pytest.fixture
def worker_factory(tmp_path):
    procs: list[WorkerProcess] = []

    def make(settings: Settings, **env) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(procs)}.log", env).start()
        procs.append(w)
        return w

    yield make
    for w in procs:
        w.stop(signal.SIGKILL)


@pytest.fixture
def producer(broker):
    from confluent_kafka import Producer

    from app.config import PRODUCER_PARTITIONER

    # the Java-compatible partitioner, as every embedstream producer (tests/test_partitioning.py)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": PRODUCER_PARTITIONER})
    yield p
    p.flush(10)


def consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 30.0):
    """Read records of a topic from the beginning until `expect` arrived (or timeout)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    return out


class Crash(BaseException):
    """kill -9 between two store calls (BaseException: nothing in the pipeline catches it)."""


class CrashingStore:
    """The real store; its ``crash_at``-th write call raises Crash instead of writing.
    ``combined=False`` hides ``write_chunks`` (upsert + delete in one version), so the
    processor writes chunks and deletes separately, as it does with the Weaviate store."""

    WRITES = ("write_chunks", "upsert_chunks", "delete_chunks_many", "delete_chunks", "put_states")

    def __init__(self, store, crash_at: int | None, combined: bool = True):
        self.store, self.crash_at, self.writes, self.combined = store, crash_at, 0, combined

    def __getattr__(self, name):
        if name == "write_chunks" and not self.combined:
            raise AttributeError(name)
        attr = getattr(self.store, name)
        if name not in self.WRITES:
            return attr

        def write(*a, **kw):
            self.writes += 1
            if self.writes == self.crash_at:
                raise Crash(name)
            return attr(*a, **kw)
        return write


def committed_offsets(settings: Settings, partitions=range(8), timeout: float = 30.0) -> dict[int, int]:
    """The worker group's committed offsets on the changes topic, of the ``partitions`` that have one.
    A retriable answer (NOT_COORDINATOR while the offsets topic or the group's coordinator is still
    being set up) is asked again until ``timeout``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.app_id,
                  "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                tps = c.committed([TopicPartition(settings.changes_topic, p) for p in partitions], timeout=10)
                return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
    finally:
        c.close()


def committed_total(settings: Settings, partitions: int = 8) -> int:
    """Sum of the worker group's committed offsets on the changes topic."""
    return sum(committed_offsets(settings, range(partitions)).values())


def pytest_terminal_summary(terminalreporter):
    """The servers this session ran on (CI logs must show the broker's, registry's and Weaviate's
    versions)."""
    if SERVERS_USED:
        terminalreporter.section("real servers of this run")
        for line in SERVERS_USED:
            terminalreporter.write_line(line)

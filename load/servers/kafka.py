"""Apache Kafka for tests and CI: one JVM that is broker and KRaft controller, on 127.0.0.1.

The broker comes from Maven Central (``org.apache.kafka:kafka_2.13``, see
``recipes/kafka.pom.xml``); :func:`install` copies its jars into the cache once. Why 4.1: the
clients embedstream runs all speak Kafka 4's protocol (KIP-896 removed the pre-2.1 request
versions): confluent-kafka 2.16 (librdkafka >= 2.11 is needed for 4.0.1+), aiokafka 0.14 and
faust-streaming 0.15 (faust 0.11 hard-coded CreateTopics v1, which 4.x refuses - embedstream
creates topics with confluent-kafka's admin client anyway).

    with KafkaServer(tmp_dir) as k:
        k.bootstrap          # "127.0.0.1:<port>"
        k.kill(); k.start()  # SIGKILL, then restart on the same log dir and ports

Broker settings are the ones ``docker-compose.yml`` runs with (checked by tests/test_deploy.py),
plus the single-node replication factors. The broker log (INFO from Kafka) is ``<dir>/broker.log``.
"""
from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from load.servers import (PrerequisiteMissing, ServerProcess, cache_dir, free_ports, java_bin, maven_fetch, tail,
                           wait_port)

log = logging.getLogger(__name__)

KAFKA_VERSION = os.environ.get("EMBEDSTREAM_KAFKA_VERSION", "4.1.1")
RECIPES = Path(__file__).resolve().parent / "recipes"

#: settings shared with docker-compose.yml (tests/test_deploy.py keeps the two equal)
BROKER_SETTINGS = {
    "auto.create.topics.enable": "false",       # topics come from topics/topics.toml
    "group.initial.rebalance.delay.ms": "0",
    "log.cleaner.enable": "true",
}
#: single-node only: internal topics with one replica
SINGLE_NODE_SETTINGS = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    # compaction runs soon enough for a test to see it (topics set their own segment.ms etc.)
    "log.cleaner.backoff.ms": "500",
    "log.retention.check.interval.ms": "1000",
    # after a SIGKILL the restarted broker cannot register until the controller lets its old session
    # expire (DUPLICATE_BROKER_REGISTRATION): a short broker session makes restarts take ~3 s, not ~12 s
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "2000",
}


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}"


def install(version: str = KAFKA_VERSION, quiet: bool = False) -> Path:
    """Fetch the broker jars with Maven into the cache (once); returns the lib directory."""
    home = kafka_home(version)
    lib = home / "lib"
    stamp = home / ".complete"
    if stamp.exists():
        return lib
    java_bin()
    if not quiet:
        print(f"installing Apache Kafka {version} (Maven Central) into {home} ...", flush=True)
    tmp = home / "lib.partial"
    maven_fetch(RECIPES / "kafka.pom.xml", home, tmp, {"kafka.version": version}, f"Apache Kafka {version}",
                runtime_only=True)
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.write_text(version + "\n")
    return lib


def new_cluster_id() -> str:
    """A KRaft cluster id: a base64url (no padding) UUID, as `kafka-storage random-uuid` prints. It
    may start with "-" (1 in 32): it is passed as ``--cluster-id=<id>``, never as a separate argument."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaServer(ServerProcess):
    """A single-node Kafka (broker + controller) with its log in ``workdir``.

    ``listeners`` adds named listeners (name -> (security protocol, port or 0)) beside the
    PLAINTEXT one the tests use; ``config`` adds or overrides broker settings;
    ``format_args`` goes to ``StorageTool format`` (e.g. ``--add-scram`` credentials).
    """

    def __init__(self, workdir: Path, version: str = KAFKA_VERSION, config: dict[str, str] | None = None,
                 listeners: dict[str, tuple[str, int]] | None = None, format_args: list[str] | None = None,
                 heap: str = "768m", jvm_args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.log_dir = self.workdir / "kafka-logs"
        self.log_path = self.workdir / "broker.log"
        self.stdout_path = self.workdir / "broker.stdout"
        n_extra = len(listeners or {})
        ports = free_ports(2 + n_extra)
        self.port, self.controller_port = ports[0], ports[1]
        self.listeners: dict[str, tuple[str, int]] = {}
        for (name, (proto, port)), fallback in zip((listeners or {}).items(), ports[2:]):
            self.listeners[name.upper()] = (proto, port or fallback)
        self.config = dict(config or {})
        self.format_args = list(format_args or [])
        self.heap = heap
        self.jvm_args = list(jvm_args or [])
        self.cluster_id = new_cluster_id()
        self.proc: subprocess.Popen | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listener_bootstrap(self, name: str) -> str:
        return f"127.0.0.1:{self.listeners[name.upper()][1]}"

    # ------------------------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        listeners = {"PLAINTEXT": ("PLAINTEXT", self.port), **self.listeners}
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": ",".join([f"{n}://127.0.0.1:{p}" for n, (_, p) in listeners.items()]
                                  + [f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, (_, p) in listeners.items()),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join([f"{n}:{proto}" for n, (proto, _) in listeners.items()]
                                                       + ["CONTROLLER:PLAINTEXT"]),
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            **BROKER_SETTINGS,
            **SINGLE_NODE_SETTINGS,
            **self.config,
        }
        return props

    def _write_properties(self) -> Path:
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        return path

    def _java(self, main: str, *args: str, **popen) -> list[str]:
        lib = install(self.version, quiet=True)
        return [java_bin(), f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={RECIPES / 'kafka-log4j2.properties'}",
                f"-Dembedstream.kafka.log={self.log_path}", *self.jvm_args,
                "-cp", f"{lib}/*", main, *args]

    def format(self) -> None:
        props = self._write_properties()
        cmd = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}", "-c", str(props),
                         "--standalone", "--ignore-formatted", *self.format_args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {r.stdout}\n{r.stderr}")
        self._formatted = True

    def start(self, timeout: float = 90.0) -> "KafkaServer":
        """Start the broker (formatting the log dir the first time); returns when it serves metadata."""
        if self.alive():
            return self
        if not self._formatted:
            self.format()
        props = self._write_properties()
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=open(self.stdout_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, timeout, f"Kafka {self.version}", self.log_path)
        self._wait_ready(time.monotonic() + timeout)
        log.info("Apache Kafka %s on %s (pid %d, log %s)", self.version, self.bootstrap, self.proc.pid,
                 self.log_path)
        return self

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while True:
            try:
                md = admin.list_topics(timeout=2)
                if md.brokers:
                    return
            except Exception:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with code {self.proc.returncode}; last log lines:\n"
                                   f"{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka on {self.bootstrap} did not serve metadata in time; last log lines:\n"
                                   f"{tail(self.log_path)}")
            time.sleep(0.2)


__all__ = ["KAFKA_VERSION", "KafkaServer", "PrerequisiteMissing", "install", "kafka_home"]

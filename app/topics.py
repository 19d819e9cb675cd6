"""Topic specs (``topics/topics.toml``) and their idempotent application with AdminClient."""
from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)
SPEC_FILE = Path(__file__).resolve().parent.parent / "topics" / "topics.toml"


class TopicsMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def load_specs(settings: Settings, spec_file: Path = SPEC_FILE,
               replication_factor: int | None = None) -> list[TopicSpec]:
    data = tomllib.loads(spec_file.read_text())
    names = {"changes": settings.changes_topic, "alerts": settings.alerts_topic, "dlq": settings.dlq_topic}
    specs = []
    for t in data["topic"]:
        rf = int(replication_factor or t.get("replication_factor", 1))
        cfg = {k: str(v) for k, v in t.get("config", {}).items()}
        if "min.insync.replicas" in cfg:  # never demand more in-sync replicas than exist
            cfg["min.insync.replicas"] = str(min(int(cfg["min.insync.replicas"]), rf))
        specs.append(TopicSpec(t["role"], names[t["role"]], int(t["partitions"]), rf, cfg))
    return specs


def _admin(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.kafka_config())


def existing_topics(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count, as the cluster reports it."""
    md = _admin(settings).list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


#: librdkafka errors that mean "the broker cannot be reached now" (retried), not "refused"
_UNREACHABLE = ("_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_MSG_TIMED_OUT",
                "LEADER_NOT_AVAILABLE", "BROKER_NOT_AVAILABLE", "NETWORK_EXCEPTION")


def wait_for_broker(settings: Settings, max_wait_s: float | None = None, on_wait=None) -> dict[str, int]:
    """:func:`existing_topics`, retried with backoff while the broker is unreachable (a restart or
    failover is transient: the worker waits, not-ready, instead of crashing). Other errors (e.g.
    authentication) raise at once. ``max_wait_s`` None: wait as long as it takes."""
    from confluent_kafka import KafkaException

    delay, waited = 0.5, 0.0
    while True:
        try:
            return existing_topics(settings)
        except KafkaException as exc:
            err = exc.args[0]
            name = err.name() if hasattr(err, "name") else str(err)
            if name not in _UNREACHABLE or (max_wait_s is not None and waited >= max_wait_s):
                raise
            log.warning("Kafka at %s not reachable (%s); retrying in %.1fs", settings.bootstrap_servers,
                        err.str() if hasattr(err, "str") else err, delay)
            if on_wait is not None:
                on_wait(err)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 15.0)


def create_topics(settings: Settings, replication_factor: int | None = None, timeout: float = 30.0,
                  echo=print) -> list[str]:
    """Create the topics that are missing; report ones whose partition count differs.

    Returns the names created. Safe to run any number of times.
    """
    from confluent_kafka.admin import NewTopic
    from confluent_kafka import KafkaError, KafkaException

    specs = load_specs(settings, replication_factor=replication_factor)
    have = existing_topics(settings)
    new = [s for s in specs if s.name not in have]
    for s in specs:
        if s.name in have:
            note = "" if have[s.name] == s.partitions else \
                f" (has {have[s.name]} partitions, spec says {s.partitions}: partitions are not changed automatically)"
            echo(f"exists   {s.name} [{s.role}]{note}")
    if not new:
        return []
    admin = _admin(settings)  # keep a reference: a collected client cancels its futures
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
         for s in new], operation_timeout=timeout, request_timeout=timeout)
    created = []
    for s in new:
        try:
            futures[s.name].result(timeout)
            created.append(s.name)
            echo(f"created  {s.name} [{s.role}] partitions={s.partitions} rf={s.replication_factor}")
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                echo(f"exists   {s.name} [{s.role}] (created concurrently)")
            else:
                raise RuntimeError(f"could not create topic {s.name}: {err}") from exc
    return created


def require_topics(settings: Settings, roles=("changes", "alerts", "dlq")) -> dict[str, int]:
    """Raise TopicsMissing (with the fix) unless every topic exists."""
    specs = [s for s in load_specs(settings) if s.role in roles]
    have = wait_for_broker(settings)
    missing = [s.name for s in specs if s.name not in have]
    if missing:
        raise TopicsMissing(f"topic(s) missing on {settings.bootstrap_servers}: {', '.join(missing)}. "
                            "Create them first: `embedstream topics create`")
    # input topics of EMBEDSTREAM_INPUTS belong to their producers (a Debezium connector creates its
    # table topics on first write): not created here, but the worker does not start without them
    inputs = [t for t in settings.input_topics()[1:] if "changes" in roles]
    absent = [t for t in inputs if t not in have]
    if absent:
        raise TopicsMissing(f"input topic(s) of {settings.inputs} missing on {settings.bootstrap_servers}: "
                            f"{', '.join(absent)}. They belong to their producers (Debezium creates a table's "
                            "topic when it first writes to it); create them or remove them from the inputs file")
    return {**{s.name: have[s.name] for s in specs}, **{t: have[t] for t in inputs}}

"""Behaviour only a real Apache Kafka has (Tansu keeps everything, in memory):

* a **compacted** changes topic - older versions compacted away (gaps in the offsets) and
  tombstones removed after ``delete.retention.ms`` - consumed from the beginning by a new worker
  and replayed by ``Replayer`` into a fresh collection: both end in the state the full log implies;
* the **broker SIGKILLed and restarted** on the same log dir mid-run (crash harness): 0 lost and 0
  stale documents.
"""
from __future__ import annotations

import sys
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from app.events import ChangeEvent, EventCodec, Op
from app.store.lancedb import LanceDBStore
from conftest import REPO, wait_for

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from load.crash_harness import run_crash_harness  # noqa: E402

T0 = 1_700_000_000_000
#: compaction settings of the test topic: segments roll after a second, everything is cleanable at
#: once, tombstones live 2 s (production: topics/topics.toml keeps them 7 days)
COMPACT_NOW = {"segment.ms": "1000", "min.cleanable.dirty.ratio": "0.001", "min.compaction.lag.ms": "0",
               "delete.retention.ms": "2000", "max.compaction.lag.ms": "2000"}


def _alter(settings, topic: str, configs: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    for f in admin.incremental_alter_configs([res]).values():
        f.result(30)


def _read_all(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record now in the topic (manual assignment from the beginning to the end)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out, eof = [], set()
        deadline = time.monotonic() + 30
        while len(eof) < partitions and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                eof.add(m.partition())
                continue
            out.append(m)
        return out
    finally:
        c.close()


def test_compacted_topic_with_gaps_and_removed_tombstones(settings, producer, worker_factory, encoder):
    topic, codec = settings.changes_topic, EventCodec()
    _alter(settings, topic, COMPACT_NOW)

    def send(doc, version, op=Op.UPSERT, text=None, partition=None):
        value = None if version is None else codec.encode(ChangeEvent(doc, op, version, T0, text))
        kw = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=doc.encode(), value=value, **kw)

    # the log: 20 documents; 0-9 updated; 10-14 deleted (op=DELETE, then a tombstone); 15-19 as they are
    for i in range(20):
        send(f"doc-{i}", 1, text=f"Document {i}, first text about topic {i}.")
    producer.flush(10)
    time.sleep(1.2)
    for i in range(10):
        send(f"doc-{i}", 2, text=f"Document {i}, second text about topic {i}.")
    for i in range(10, 15):
        send(f"doc-{i}", 2, op=Op.DELETE)
        send(f"doc-{i}", None)
    producer.flush(10)
    produced = 20 + 10 + 10
    live = {f"doc-{i}": 2 for i in range(10)} | {f"doc-{i}": 1 for i in range(15, 20)}
    fillers = 0

    # compaction runs on closed segments: keep rolling each partition's segment with new documents
    # until the old versions are gone and the tombstones were removed after delete.retention.ms
    def compacted() -> bool:
        nonlocal fillers
        for p in range(8):
            send(f"filler-{fillers}", 1, text=f"Filler document {fillers}.", partition=p)
            live[f"filler-{fillers}"] = 1
            fillers += 1
        producer.flush(10)
        recs = _read_all(settings.bootstrap_servers, topic, 8)
        keys = [m.key().decode() for m in recs]
        old_versions = sum(1 for k in keys if k.startswith("doc-") and int(k[4:]) < 15 and keys.count(k) > 1)
        deleted_left = sum(1 for k in keys if k.startswith("doc-") and 10 <= int(k[4:]) < 15)
        return old_versions == 0 and deleted_left == 0 and recs

    recs = wait_for(compacted, 120, interval=1.5, what="compaction to remove old versions and tombstones")
    offsets = {}
    for m in recs:
        offsets.setdefault(m.partition(), []).append(m.offset())
    gaps = sum(1 for offs in offsets.values() for a, b in zip(offs, offs[1:]) if b != a + 1)
    assert gaps > 0 and len(recs) < produced + fillers, "the log has no compaction gaps"

    # 1. a new worker consumes the compacted log from the beginning
    worker = worker_factory(settings)
    store = wait_for(lambda: _open(settings, encoder), 90, what="the worker's LanceDB tables")
    wait_for(lambda: store.count_documents() == len(live), 120, what=f"{len(live)} live documents")
    _assert_state(store, live)
    assert worker.alive()
    worker.stop()

    # 2. a replay of the compacted topic into a fresh collection: the same state
    from app.replay import Replayer, ReplayRange, open_target

    s2 = settings.replace(collection_prefix="compacted")
    proc = open_target(s2, encoder=encoder)
    rep = Replayer.start(s2, ReplayRange(), processor=proc, name="compacted", batch_size=16).run()
    # the replay reads what the compacted log holds now (the cleaner may have removed more since)
    assert rep.complete and 0 < rep.records <= len(recs)
    _assert_state(proc.store, live)


def _open(settings, encoder):
    try:
        return LanceDBStore(f"{settings.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def _assert_state(store, live: dict[str, int]) -> None:
    states = store.get_states(list(live) + [f"doc-{i}" for i in range(10, 15)])
    assert {d: s.version for d, s in states.items() if not s.deleted} == live
    for i in range(10, 15):  # never seen (record and tombstone compacted away) or deleted
        s = states.get(f"doc-{i}")
        assert s is None or s.deleted, s
        assert store.chunk_rows(f"doc-{i}") == []
    assert store.count_documents() == len(live)


@pytest.fixture
def own_kafka(tmp_path):
    """A broker of this test's own: it is killed and restarted mid-run."""
    from load.servers.kafka import KafkaServer

    k = KafkaServer(tmp_path / "kafka").start()
    yield k
    k.stop()


def test_broker_killed_and_restarted_mid_run_loses_nothing(own_kafka, tmp_path, encoder):
    from app.config import Settings
    from app.topics import create_topics

    s = Settings.load(env={}, bootstrap_servers=own_kafka.bootstrap, data_dir=str(tmp_path / "data"),
                      app_id="restart", changes_topic="changes", alerts_topic="alerts", dlq_topic="dlq",
                      batch_max_wait_s=0.2, metrics_port=0, session_timeout_s=6.0, heartbeat_interval_s=1.0)
    create_topics(s, replication_factor=1, echo=lambda m: None)
    report = run_crash_harness(s, events=1200, kills=1, seed=5, docs=60, encoder=encoder, rate=30,
                               log_dir=tmp_path / "logs", broker=own_kafka, broker_kills=2, echo=print)
    print(report.summary())
    assert report.broker_kills == 2, report.summary()
    assert report.drained and not report.mismatches and not report.unexpected_exits, report.summary()
    assert report.live_docs > 20 and report.deleted_docs > 3
    assert report.dead_letters_found == report.dead_letters_expected > 0, report.summary()
    assert report.ok

"""The Confluent framing against a real schema registry (Apicurio Registry's Confluent API), and what
the worker does while that registry is down or failing: wait and retry, never dead-letter."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from app.chunking import Chunker
from app.deadletter import Record
from app.events import ChangeEvent, DecodeError, EventCodec, Op, RegistryUnavailable
from app.observability import Health
from app.pipeline import Backoff, Interrupted, Processor
from app.store.lancedb import LanceDBStore
from conftest import REPO, settings_env, wait_for
from load.servers import free_port
from load.servers.registry import RegistryProxy, RegistryServer


def ev(doc="doc-1", version=1, text="hello registry"):
    return ChangeEvent(doc_id=doc, op=Op.UPSERT, version=version, event_time_ms=1_700_000_000_000, text=text)


def client(url: str, retries: int = 0) -> SchemaRegistryClient:
    # no client-side retries: each test sees the registry's first answer
    return SchemaRegistryClient({"url": url, "max.retries": retries})


def schema_id(raw: bytes) -> int:
    assert raw[0] == 0
    return struct.unpack(">I", raw[1:5])[0]


# -- the registry speaks the Confluent protocol the clients use ------------------------------------
def test_serializer_registers_under_topic_value_and_deserializer_looks_up_the_id(schema_registry, tmp_path):
    topic = f"changes-{tmp_path.name}"
    producer_side = EventCodec(registry=client(schema_registry))
    raw = producer_side.encode(ev(), topic=topic)
    sid = schema_id(raw)
    reg = client(schema_registry)
    assert f"{topic}-value" in reg.get_subjects()  # TopicNameStrategy, auto-registered
    latest = reg.get_latest_version(f"{topic}-value")
    assert latest.schema_id == sid and latest.version == 1
    assert json.loads(reg.get_schema(sid).schema_str)["name"] == "DocumentChange"
    # a fresh client (nothing cached) decodes by looking the id up
    assert EventCodec(registry=client(schema_registry)).decode(b"doc-1", raw, topic=topic) == ev()
    # the same schema again: same id, no new version
    again = EventCodec(registry=client(schema_registry)).encode(ev(version=2), topic=topic)
    assert schema_id(again) == sid
    assert reg.get_versions(f"{topic}-value") == [1]


def test_unknown_schema_id_has_its_own_reason(schema_registry):
    raw = EventCodec(registry=client(schema_registry)).encode(ev(), topic="changes-unknown-id")
    unknown = b"\x00" + struct.pack(">I", 987_654) + raw[5:]
    with pytest.raises(DecodeError) as e:
        EventCodec(registry=client(schema_registry)).decode(b"doc-1", unknown, topic="changes-unknown-id")
    assert e.value.reason == "unknown-schema-id" and "987654" in e.value.detail


def test_known_schema_id_with_a_bad_body_is_a_decode_error(schema_registry):
    raw = EventCodec(registry=client(schema_registry)).encode(ev(), topic="changes-bad-body")
    codec = EventCodec(registry=client(schema_registry))
    with pytest.raises(DecodeError) as e:
        codec.decode(b"doc-1", raw[:5] + b"\x7f\x01", topic="changes-bad-body")  # body ends early
    assert e.value.reason == "confluent-decode-error"


def test_unreachable_registry_is_transient_not_a_decode_error(schema_registry):
    raw = EventCodec(registry=client(schema_registry)).encode(ev(), topic="changes-down")
    closed = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"  # nothing listens there
    with pytest.raises(RegistryUnavailable) as e:
        EventCodec(registry=client(closed)).decode(b"doc-1", raw, topic="changes-down")
    assert not isinstance(e.value, DecodeError)
    assert "unreachable" in e.value.detail and e.value.schema_id == schema_id(raw)


def test_registry_answering_5xx_is_transient(schema_registry):
    raw = EventCodec(registry=client(schema_registry)).encode(ev(), topic="changes-503")
    with RegistryProxy(schema_registry) as proxy:
        codec = EventCodec(registry=client(proxy.url))
        proxy.mode = "503"
        with pytest.raises(RegistryUnavailable) as e:
            codec.decode(b"doc-1", raw, topic="changes-503")
        assert "HTTP 503" in e.value.detail and proxy.failed >= 1
        proxy.mode = "pass"
        assert codec.decode(b"doc-1", raw, topic="changes-503") == ev()


def test_wrong_registry_path_is_not_taken_for_an_unknown_schema(registry_server):
    raw = EventCodec(registry=client(registry_server.url)).encode(ev(), topic="changes-path")
    # the server's root instead of its Confluent API: a 404 that is not the registry's "schema not found"
    with pytest.raises(RegistryUnavailable) as e:
        EventCodec(registry=client(registry_server.base_url)).decode(b"doc-1", raw, topic="changes-path")
    assert "HTTP 404" in e.value.detail and "API root" in e.value.detail


# -- the processor waits for the registry ------------------------------------------------------------
def _proc(codec, encoder, tmp_path, health=None):
    store = LanceDBStore(tmp_path / "lance", encoder.fingerprint, encoder.dim)
    proc = Processor(codec, encoder, Chunker(encoder.tokenizer, 256, 32), store,
                     backoff=Backoff(initial_s=0.05, max_s=0.2))
    proc.health = health
    return proc, store


def _records(codec, topic, docs):
    return [Record(topic, 0, i, d.encode(), codec.encode(ev(d, 1, f"text of {d}"), framing=f, topic=topic), (),
                   1_700_000_000_000) for i, (d, f) in enumerate(docs)]


def test_processor_retries_while_the_registry_fails_and_dead_letters_nothing(schema_registry, encoder, tmp_path):
    topic = f"changes-{tmp_path.name}"
    producer_side = EventCodec(registry=client(schema_registry))
    records = _records(producer_side, topic, [("a", "confluent"), ("b", "single-object"), ("c", "confluent")])
    health = Health(failing_after_s=0.0)  # not ready at the first failure
    health.set("registry", True, "test")
    with RegistryProxy(schema_registry) as proxy:
        proc, store = _proc(EventCodec(registry=client(proxy.url)), encoder, tmp_path, health)
        proxy.mode = "503"
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("res", proc.process(records)))
        t.start()
        wait_for(lambda: proxy.failed >= 3, 30, what="three failed registry requests")
        assert t.is_alive(), "the batch must wait for the registry"
        registry = health.report()["checks"]["registry"]
        assert registry["ok"] is False and "HTTP 503" in registry["detail"]
        proxy.mode = "pass"
        t.join(30)
        assert not t.is_alive()
    res = out["res"]
    assert res.dead_letters == [] and res.counts["written"] == 3 and res.registry_retries >= 3
    assert health.report()["checks"]["registry"]["ok"] is True
    assert sorted(s.doc_id for s in store.get_states(["a", "b", "c"]).values()) == ["a", "b", "c"]


def test_processor_stop_interrupts_the_registry_wait(schema_registry, encoder, tmp_path):
    records = _records(EventCodec(registry=client(schema_registry)), "changes-stop", [("a", "confluent")])
    with RegistryProxy(schema_registry) as proxy:
        proxy.mode = "503"
        proc, _ = _proc(EventCodec(registry=client(proxy.url)), encoder, tmp_path)
        threading.Timer(0.5, proc.stop).start()
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            proc.process(records)
        assert time.monotonic() - t0 < 10


# -- produce and the worker against the real registry -----------------------------------------------
def test_produce_confluent_framing_registers_the_schema(settings, schema_registry):
    s = settings.replace(schema_registry_url=schema_registry)
    docs = [{"doc_id": f"p{i}", "version": 1, "text": f"produced {i}"} for i in range(3)]
    out = subprocess.run([sys.executable, "-m", "app", "produce", "-", "--framing", "confluent"], cwd=REPO,
                         env=settings_env(s), input="\n".join(json.dumps(d) for d in docs), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    values = _read_all(s.bootstrap_servers, s.changes_topic)
    assert len(values) == 3
    ids = {schema_id(v) for _, v in values}
    assert ids == {client(schema_registry).get_latest_version(f"{s.changes_topic}-value").schema_id}
    codec = EventCodec(registry=client(schema_registry))
    assert sorted(codec.decode(k, v, s.changes_topic).doc_id for k, v in values) == ["p0", "p1", "p2"]


def _read_all(bootstrap, topic):
    """Every record of the topic (key, value), up to its current end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        out, seen = [], {p: 0 for p in parts}
        deadline = time.monotonic() + 30
        while any(seen[p] < ends[p] for p in parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append((m.key(), m.value()))
                seen[m.partition()] = m.offset() + 1
        return out
    finally:
        c.close()


def _dlq_size(settings) -> int:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "dlq-probe"})
    try:
        parts = c.list_topics(settings.dlq_topic, timeout=10).topics[settings.dlq_topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(settings.dlq_topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _open_store(settings, encoder):
    try:
        return LanceDBStore(f"{settings.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def _readyz(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None, None


def _waiting(worker, reg):
    """wait_for that adds the worker's and the registry's last log lines to a timeout."""
    def wait(pred, timeout, **kw):
        try:
            return wait_for(pred, timeout, **kw)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}\n--- worker log ---\n{worker.log()[-4000:]}\n--- registry log ---\n"
                        f"{reg.log_tail(30)}")
    return wait


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_records_produced_while_the_registry_is_down_are_all_indexed_after_it_returns(
        settings, worker_factory, encoder, producer, tmp_path):
    """Acceptance (issue 12): valid Confluent-framed records produced while the registry is down are
    all indexed once it is back, none dead-lettered; /readyz shows the outage meanwhile."""
    reg = RegistryServer(tmp_path / "registry").start()
    try:
        port = free_port()
        s = settings.replace(schema_registry_url=reg.url, metrics_port=port)
        topic = s.changes_topic
        # the producer registered the schema before the outage (serializers cache the id)
        producer_side = EventCodec(registry=client(reg.url))
        first = producer_side.encode(ev("doc-0", 1, "written before the outage"), topic=topic)
        reg.stop()  # the outage: the registry's process is gone (connection refused)

        # a fresh worker (no schema cached); /readyz turns 503 after 3 s of registry failures
        worker = worker_factory(s, EMBEDSTREAM_UNREADY_AFTER_S="3")
        wait = _waiting(worker, reg)
        producer.produce(topic, key=b"doc-0", value=first)
        n = 20
        for i in range(1, n):
            producer.produce(topic, key=f"doc-{i}".encode(),
                             value=producer_side.encode(ev(f"doc-{i}", 1, f"document {i} about registries"),
                                                        topic=topic))
        producer.flush(10)

        def registry_down_reported_or_dead_lettered():
            if _dlq_size(s):
                return {"dead-lettered": True}
            code, body = _readyz(port)
            return code == 503 and body["checks"].get("registry", {}).get("ok") is False and body
        body = wait(registry_down_reported_or_dead_lettered, 120, interval=0.5,
                        what="/readyz reporting the registry down")
        assert _dlq_size(s) == 0, "valid records were dead-lettered while the registry was down"
        assert "unreachable" in body["checks"]["registry"]["detail"]
        time.sleep(3)  # the records keep waiting; nothing is dead-lettered or skipped meanwhile
        assert worker.alive(), worker.log()[-3000:]
        assert _dlq_size(s) == 0
        store = wait(lambda: _open_store(s, encoder), 60, what="the worker's LanceDB tables")
        assert store.count_documents() == 0

        reg.start(timeout=90)  # same port, same schemas
        wait(lambda: store.count_documents() == n, 120, interval=1, what=f"{n} documents indexed")
        assert _dlq_size(s) == 0, worker.log()[-3000:]
        code, body = wait(lambda: _readyz(port)[0] == 200 and _readyz(port), 30, what="/readyz ready again")
        assert body["checks"]["registry"]["ok"] is True
        assert "confluent-decode-error" not in worker.log() and "dead letter" not in worker.log()
        assert worker.stop() == 0, worker.log()[-3000:]
    finally:
        reg.stop()

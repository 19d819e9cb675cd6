"""The producer SDK (app/producer.py) against the real broker: keys, the Java-compatible partitioner,
both framings, checks before sending, and delivery errors raised."""
import socket
import struct
import uuid

import pytest

from app.events import DecodeError, EventCodec, Op
from app.producer import DeliveryError, DocumentProducer
from conftest import consume_all


def java_murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2 (the Java client's DefaultPartitioner hash), as a signed int."""
    m, r, seed = 0x5BD1E995, 24, 0x9747B28C
    n = len(data)
    h = (seed ^ n) & 0xFFFFFFFF
    for i in range(n // 4):
        k = struct.unpack_from("<I", data, 4 * i)[0]
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest, tail = n % 4, n - n % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions  # Utils.toPositive(murmur2(key)) % n


def test_murmur2_matches_kafkas_own_test_vectors():
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    assert {k: java_murmur2(k) for k in cases} == cases


def test_records_land_in_the_java_clients_partition_and_round_trip(settings):
    reports = []
    with DocumentProducer(settings=settings, on_delivery=reports.append) as p:
        for i in range(120):
            p.upsert(f"doc-{i}", f"text {i}", version=i + 1, metadata={"i": str(i)})
        p.delete("doc-0", version=5)
        p.tombstone("doc-1")
    assert p.delivered == 122 and not any(r.error for r in reports)
    wrong = [(r.doc_id, r.partition) for r in reports if r.partition != java_partition(r.doc_id.encode(), 8)]
    assert wrong == []  # librdkafka's default (consistent_random, CRC32) would put most elsewhere
    assert len({r.partition for r in reports}) == 8
    codec = EventCodec()
    msgs = consume_all(settings.bootstrap_servers, settings.changes_topic, 122)
    events = {(m.key(), m.offset(), m.partition()): codec.decode(m.key(), m.value()) for m in msgs}
    assert len(events) == 122
    by_doc = {}
    for ev in events.values():
        by_doc.setdefault(ev.doc_id, []).append(ev)
    assert by_doc["doc-7"][0].text == "text 7" and by_doc["doc-7"][0].metadata == {"i": "7"}
    assert {(e.op, e.version) for e in by_doc["doc-0"]} == {(Op.UPSERT, 1), (Op.DELETE, 5)}
    assert any(e.is_tombstone for e in by_doc["doc-1"])


def test_confluent_framing_through_the_registry(settings, schema_registry):
    s = settings.replace(schema_registry_url=schema_registry)
    with DocumentProducer(settings=s) as p:  # auto: Confluent, since a registry is configured
        p.upsert("c-1", "registered", version=3)
    [m] = consume_all(s.bootstrap_servers, s.changes_topic, 1)
    assert m.value()[0] == 0
    from app.components import build_codec

    assert build_codec(s).decode(m.key(), m.value(), s.changes_topic).text == "registered"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_delivery_errors_are_raised_not_swallowed():
    p = DocumentProducer(f"127.0.0.1:{_closed_port()}", topic=f"nowhere-{uuid.uuid4().hex[:6]}",
                         config={"message.timeout.ms": 1500})
    p.upsert("lost-1", "never acknowledged", version=1)
    p.upsert("lost-2", "never acknowledged", version=1)
    with pytest.raises(DeliveryError) as e:
        p.flush(20)
    assert sorted(f.doc_id for f in e.value.failures) == ["lost-1", "lost-2"]
    assert all("timed out" in f.error.lower() for f in e.value.failures)
    # a failure that arrived in the background is raised by the next call, and by the with block
    with pytest.raises(DeliveryError, match="lost-3"):
        with DocumentProducer(f"127.0.0.1:{_closed_port()}", config={"message.timeout.ms": 1500}) as q:
            q.upsert("lost-3", "x", version=1)


def test_events_the_worker_would_dead_letter_are_refused_before_sending():
    p = DocumentProducer(f"127.0.0.1:{_closed_port()}")
    with pytest.raises(DecodeError, match="control-characters"):
        p.upsert("d", "bell \x07", version=1)
    with pytest.raises(DecodeError, match="invalid-version"):
        p.delete("d", version=-1)
    with pytest.raises(DecodeError, match="invalid-doc-id"):
        p.tombstone(" ")
    with pytest.raises(TypeError, match="version must be an int"):
        p.upsert("d", "t", version="7")
    assert p.sent == 0
    with pytest.raises(ValueError, match="partitioner 'consistent_random'"):
        DocumentProducer("127.0.0.1:1", config={"partitioner": "consistent_random"})


def test_embedstream_produce_checks_every_line_before_sending_any(settings):
    import json
    import subprocess
    import sys

    from conftest import REPO, settings_env

    lines = [{"doc_id": "ok-1", "version": 1, "text": "fine"},
             {"doc_id": "bad", "version": 1, "text": "a bell \u0007 in the text"}]
    out = subprocess.run([sys.executable, "-m", "app", "produce", "-"], cwd=REPO, env=settings_env(settings),
                         input="\n".join(json.dumps(x) for x in lines), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "line 2: control-characters" in out.stderr, out.stderr
    assert consume_all(settings.bootstrap_servers, settings.changes_topic, 1, timeout=5) == []
    out = subprocess.run([sys.executable, "-m", "app", "produce", "-", "--version", "4"], cwd=REPO,
                         env=settings_env(settings), input=json.dumps({"doc_id": "ok-2", "text": "x"}),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"delivered 1 events to {settings.changes_topic}" in out.stderr, out.stderr
    [m] = consume_all(settings.bootstrap_servers, settings.changes_topic, 1)
    assert m.partition() == java_partition(b"ok-2", 8) and EventCodec().decode(m.key(), m.value()).version == 4

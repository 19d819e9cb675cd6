"""End to end: the worker process on the local Tansu broker, writing real LanceDB files."""
from __future__ import annotations

import subprocess
import sys

from app.events import ChangeEvent, EventCodec, Op
from app.store.lancedb import LanceDBStore
from conftest import REPO, committed_offsets as committed, consume_all, settings_env, wait_for

LONG = " ".join(f"Paragraph {i}: the orchard's apple trees need pruning in late winter." for i in range(90))


def send(producer, topic, key, value, delivered):
    def cb(err, msg):
        assert err is None, err
        delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    producer.produce(topic, key=key, value=value, on_delivery=cb)


def open_store(settings, encoder):
    return wait_for(lambda: _try_open(settings, encoder), 60, what="the worker to create its LanceDB tables")


def _try_open(settings, encoder):
    try:
        return LanceDBStore(f"{settings.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def test_worker_end_to_end(settings, worker_factory, producer, encoder):
    codec = EventCodec()
    topic = settings.changes_topic
    delivered: list[tuple] = []

    def ev(doc, v, text=None, op=Op.UPSERT):
        return codec.encode(ChangeEvent(doc, op, v, 1_700_000_000_000, text, {"src": "test"}))

    worker = worker_factory(settings)
    # new documents, one long (several chunks), bad bytes in the middle
    send(producer, topic, b"apple", ev("apple", 1, LONG), delivered)
    send(producer, topic, b"keep", ev("keep", 1, "The offside rule in football."), delivered)
    send(producer, topic, b"junk", b"\x09 not avro at all", delivered)
    send(producer, topic, b"gone", ev("gone", 1, "Soon to be deleted."), delivered)
    send(producer, topic, b"tomb", ev("tomb", 1, "Soon to be tombstoned."), delivered)
    producer.flush(10)
    store = open_store(settings, encoder)
    wait_for(lambda: store.count_documents() == 4, 90, what="4 documents indexed")
    assert len(store.chunk_rows("apple")) >= 3

    # updates: shrink apple to one chunk, delete by op and by tombstone, a stale event
    send(producer, topic, b"apple", ev("apple", 2, "Apples, briefly."), delivered)
    send(producer, topic, b"gone", ev("gone", 2, op=Op.DELETE), delivered)
    send(producer, topic, b"tomb", None, delivered)
    send(producer, topic, b"keep", ev("keep", 0, "stale text"), delivered)
    producer.flush(10)
    wait_for(lambda: store.count_documents() == 2 and len(store.chunk_rows("apple")) == 1, 90,
             what="update and deletes applied")
    assert store.chunk_rows("apple")[0]["text"] == "Apples, briefly."
    assert store.chunk_rows("gone") == [] and store.chunk_rows("tomb") == []
    assert store.chunk_rows("keep")[0]["text"] == "The offside rule in football."
    hit = store.search(encoder.encode(["football rules"])[0], k=1)[0]
    assert hit.doc_id == "keep"

    # the bad record is in the dead-letter topic, untouched, with reason headers
    [dl] = consume_all(settings.bootstrap_servers, settings.dlq_topic, 1)
    assert dl.key() == b"junk" and dl.value() == b"\x09 not avro at all"
    headers = dict(dl.headers())
    assert headers["x-dlq-reason"] == b"unknown-magic-byte"
    assert headers["x-dlq-source-topic"] == topic.encode()
    [(junk_partition, junk_offset)] = [(p, o) for p, o, k, v in delivered if k == b"junk"]
    assert headers["x-dlq-source-partition"] == str(junk_partition).encode()
    assert headers["x-dlq-source-offset"] == str(junk_offset).encode()

    # offsets of everything processed get committed (at-least-once, after the writes)
    ends: dict[int, int] = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, -1), o + 1)
    wait_for(lambda: committed(settings, ends) == ends, 30, what=f"committed offsets {ends}")
    assert worker.alive(), worker.log()

    # SIGTERM: clean exit
    assert worker.stop() == 0, worker.log()[-3000:]


def test_worker_refuses_to_start_without_topics(settings):
    env = settings_env(settings)
    env["EMBEDSTREAM_CHANGES_TOPIC"] = "no-such-topic"
    out = subprocess.run([sys.executable, "-m", "app", "worker"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "no-such-topic" in out.stderr and "embedstream topics create" in out.stderr


def test_worker_needs_bootstrap_servers(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app", "worker"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "EMBEDSTREAM_DATA_DIR": str(tmp_path)})
    assert out.returncode == 2 and "EMBEDSTREAM_BOOTSTRAP_SERVERS" in out.stderr


def test_worker_reads_compressed_batches(settings, worker_factory, encoder):
    """Producers may compress (lz4, snappy, zstd, gzip): the worker must decode every codec."""
    from confluent_kafka import Producer

    codec = EventCodec()
    worker_factory(settings)
    codecs = ("lz4", "snappy", "zstd", "gzip")
    for name in codecs:
        p = Producer({"bootstrap.servers": settings.bootstrap_servers, "compression.type": name, "linger.ms": 20})
        for i in range(3):
            doc = f"{name}-{i}"
            p.produce(settings.changes_topic, key=doc.encode(),
                      value=codec.encode(ChangeEvent(doc, Op.UPSERT, 1, 1_700_000_000_000, f"compressed with {name}")))
        assert p.flush(10) == 0
    store = open_store(settings, encoder)
    wait_for(lambda: store.count_documents() == 3 * len(codecs), 90, what="all compressed events indexed")

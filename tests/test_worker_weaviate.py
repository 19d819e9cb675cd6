"""The worker writing into Weaviate, selected by configuration alone.

Runs against the protocol-level Weaviate *test server* (tests/weaviate_server), not a
real Weaviate: the real weaviate-client in the worker process talks to it over sockets.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from app.events import ChangeEvent, EventCodec, Op
from app.store.weaviate import WeaviateStore
from conftest import committed_total, REPO, settings_env, wait_for
from weaviate_server import WeaviateTestServer


@pytest.fixture
def weaviate():
    with WeaviateTestServer() as server:
        yield server


def test_worker_on_weaviate_with_outage(settings, worker_factory, producer, encoder, weaviate):
    settings = settings.replace(store="weaviate", weaviate_url=weaviate.url, weaviate_grpc_port=weaviate.grpc_port,
                                collection_prefix="EsTest")
    codec = EventCodec()
    now = int(time.time() * 1000)

    def send(doc, v, text=None, op=Op.UPSERT):
        producer.produce(settings.changes_topic, key=doc.encode(),
                         value=codec.encode(ChangeEvent(doc, op, v, now, text, {"k": "v"})))

    worker = worker_factory(settings)
    send("doc-1", 1, "Compost needs a balance of green and brown material.")
    send("doc-1-extra", 1, "Aged compost improves the structure of clay soil.")
    send("doc-2", 1, " ".join(["Routers forward packets between networks using routing tables."] * 60))
    producer.flush(10)
    store = wait_for(lambda: _open(weaviate, encoder), 60, what="the worker's Weaviate collection")
    wait_for(lambda: store.count_documents() == 3, 90, what="3 documents in Weaviate")
    assert store.count() >= 4  # doc-2 has several chunks
    # FIELD tokenization: deleting doc-1 must not touch doc-1-extra
    send("doc-1", 2, op=Op.DELETE)
    producer.flush(10)
    wait_for(lambda: store.count_documents() == 2, 60, what="doc-1 deleted")
    assert set(store.get_states(["doc-1-extra", "doc-1"])) == {"doc-1-extra", "doc-1"}
    assert store.get_states(["doc-1"])["doc-1"].deleted and not store.get_states(["doc-1-extra"])["doc-1-extra"].deleted

    # `embedstream search` against Weaviate
    env = settings_env(settings)
    out = subprocess.run([sys.executable, "-m", "app", "search", "improving clay soil", "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["doc_id"] == "doc-1-extra"

    # outage: nothing committed past the failure, nothing lost after recovery
    wait_for(lambda: committed_total(settings) == 4, 30, what="offsets of the first 4 events committed")
    weaviate.down()
    send("doc-3", 1, "Written during the outage.")
    send("doc-2", 2, "Shrunk during the outage.")
    producer.flush(10)
    # weaviate-client retries UNAVAILABLE itself (1, 2, 4 ... s) before our backoff takes over;
    # either way the worker is blocked on the store and commits nothing
    wait_for(lambda: "retrying" in worker.log().lower(), 60, what="the worker to retry")
    time.sleep(3)
    assert committed_total(settings) == 4, "offsets advanced while the store was down"
    assert worker.alive()
    weaviate.up()
    wait_for(lambda: committed_total(settings) == 6, 120, what="offsets committed after recovery")
    store2 = _open(weaviate, encoder)
    assert store2.count_documents() == 3
    assert store2.get_states(["doc-2"])["doc-2"].version == 2 and store2.count() == 3  # no orphan chunks
    assert worker.stop() == 0, worker.log()[-3000:]


def _open(server, encoder):
    try:
        return WeaviateStore(url=server.url, grpc_port=server.grpc_port, fingerprint=encoder.fingerprint,
                             dim=encoder.dim, collection_prefix="EsTest", timeout_s=5)
    except Exception:
        return None

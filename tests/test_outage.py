"""Vector-store outage: the worker keeps running, retries, commits nothing it has not written, and
catches up after the store comes back - nothing lost.

The outage is real, not simulated: the tests run as root (chmod does not stop writes), so the
LanceDB directory ``<data_dir>/lancedb`` is moved aside and a regular *file* put at its path.
Every LanceDB read and write then fails with an I/O error ("Not a directory"), which the
adapter reports as TransientStoreError; moving the directory back ends the outage.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from app.chunking import Chunker
from app.events import ChangeEvent, EventCodec, Op
from app.store.base import TransientStoreError
from app.store.lancedb import LanceDBStore
from conftest import committed_offsets as committed, wait_for

OUTAGE_S = 16


class Stream:
    """Produces events and remembers, from delivery reports, the end offset of every partition."""

    def __init__(self, producer, settings):
        self.producer, self.topic, self.codec = producer, settings.changes_topic, EventCodec()
        self.ends: dict[int, int] = {}
        self.expected: dict[str, tuple[int, str | None]] = {}  # doc -> (version, text or None if deleted)

    def _cb(self, err, msg):
        assert err is None, err
        self.ends[msg.partition()] = max(self.ends.get(msg.partition(), 0), msg.offset() + 1)

    def upsert(self, doc, v, text):
        ev = ChangeEvent(doc, Op.UPSERT, v, 1_700_000_000_000 + v, text, {"v": str(v)})
        self.producer.produce(self.topic, key=doc.encode(), value=self.codec.encode(ev), on_delivery=self._cb)
        self.expected[doc] = (v, text)

    def delete(self, doc, v):
        ev = ChangeEvent(doc, Op.DELETE, v, 1_700_000_000_000 + v)
        self.producer.produce(self.topic, key=doc.encode(), value=self.codec.encode(ev), on_delivery=self._cb)
        self.expected[doc] = (v, None)

    def tombstone(self, doc):
        self.producer.produce(self.topic, key=doc.encode(), value=None, on_delivery=self._cb)
        self.expected[doc] = (self.expected[doc][0], None)

    def flush(self) -> dict[int, int]:
        assert self.producer.flush(30) == 0
        return dict(self.ends)


def open_store(settings, encoder):
    def attempt():
        try:
            return LanceDBStore(Path(settings.data_dir) / "lancedb", encoder.fingerprint, encoder.dim, create=False)
        except Exception:
            return None
    return wait_for(attempt, 90, what="the worker's LanceDB tables")


def assert_store_matches(store, stream, encoder):
    chunker = Chunker(encoder.tokenizer, 256, 32)
    states = store.get_states(list(stream.expected))
    total = 0
    for doc, (v, text) in stream.expected.items():
        st = states.get(doc)
        assert st is not None and st.version == v and st.deleted == (text is None), (doc, v, st)
        rows = store.chunk_rows(doc)
        if text is None:
            assert rows == [], doc
            continue
        want = [c.text for c in chunker.chunk(text)]
        assert [(r["chunk_index"], r["version"], r["text"]) for r in rows] == \
            [(i, v, t) for i, t in enumerate(want)], doc
        total += len(want)
    assert store.count() == total


@contextlib.contextmanager
def lancedb_outage(lance_dir: Path):
    """The store fails while inside: the LanceDB directory is moved aside and a file put in its place."""
    aside = lance_dir.with_name("lancedb.aside")
    os.rename(lance_dir, aside)
    lance_dir.write_text("store outage (test_outage.py)\n")
    try:
        yield
    finally:
        lance_dir.unlink()
        os.rename(aside, lance_dir)


def words(i: int, n: int = 12) -> str:
    vocab = ["tide", "harbour", "lantern", "gull", "rope", "anchor", "sail", "keel", "mast", "buoy", "pier", "net"]
    return " ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(n)) + f" {i}"


def written_before_outage(settings, stream: Stream, encoder, n: int):
    """``n`` documents produced, stored and committed; returns (store, committed end offsets)."""
    for i in range(n):
        stream.upsert(f"pre-{i}", 1, words(i))
    ends = stream.flush()
    store = open_store(settings, encoder)
    wait_for(lambda: store.count_documents() == n, 90, what=f"{n} documents before the outage")
    wait_for(lambda: committed(settings, ends) == ends, 30, what="offsets committed before the outage")
    return store, ends


def test_store_outage_is_retried_without_committing_and_nothing_is_lost(settings, worker_factory, producer, encoder):
    worker = worker_factory(settings)
    stream = Stream(producer, settings)
    lance_dir = Path(settings.data_dir) / "lancedb"

    # 1. before the outage: 10 documents written and committed
    store, ends_before = written_before_outage(settings, stream, encoder, 10)
    assert "retrying" not in worker.log()

    # 2. the outage: a file where the LanceDB directory was
    with lancedb_outage(lance_dir):
        with pytest.raises(TransientStoreError):  # it really fails
            store.count()
        t_outage = time.monotonic()
        for i in range(10, 25):
            stream.upsert(f"out-{i}", 1, words(i))
        stream.upsert("pre-2", 2, words(102, 40))    # update
        stream.upsert("pre-3", 3, words(3))          # newer version, same text
        stream.delete("pre-4", 2)
        stream.tombstone("pre-5")
        ends_during = stream.flush()
        assert ends_during != ends_before
        wait_for(lambda: "retrying" in worker.log(), 30, what="the worker to log store retries")
        # the worker stays up, and nothing produced during the outage is committed
        while time.monotonic() - t_outage < OUTAGE_S:
            assert worker.alive(), worker.log()[-3000:]
            assert committed(settings, ends_before) == ends_before, "offsets advanced during the store outage"
            time.sleep(2)
        assert "store" in worker.log() and worker.log().count("retrying") >= 3
    # 3. the store is back

    t_back = time.monotonic()
    wait_for(lambda: committed(settings, ends_during) == ends_during, 90,
             what="the worker to catch up after the outage")
    recovery_s = time.monotonic() - t_back
    assert worker.alive(), worker.log()[-3000:]
    assert_store_matches(store, stream, encoder)
    print(f"outage {OUTAGE_S}s: {worker.log().count('retrying')} retries logged; caught up {recovery_s:.1f}s "
          f"after the store came back")
    assert worker.stop(signal.SIGTERM) == 0, worker.log()[-3000:]


def test_sigterm_during_a_store_outage_stops_the_worker_without_committing(settings, worker_factory, producer,
                                                                           encoder):
    """A deploy (SIGTERM) while the store is down: the worker must give up the retrying batch within its
    shutdown grace period (app/agents.py SHUTDOWN_GRACE_S) and exit, committing nothing of it."""
    from app.agents import SHUTDOWN_GRACE_S

    worker = worker_factory(settings)
    stream = Stream(producer, settings)
    lance_dir = Path(settings.data_dir) / "lancedb"
    _, ends_before = written_before_outage(settings, stream, encoder, 4)

    with lancedb_outage(lance_dir):
        for i in range(4, 8):
            stream.upsert(f"out-{i}", 1, words(i))
        stream.flush()
        wait_for(lambda: "retrying" in worker.log(), 30, what="the worker to log store retries")
        t0 = time.monotonic()
        rc = worker.stop(signal.SIGTERM, timeout=SHUTDOWN_GRACE_S + 15)
        took = time.monotonic() - t0
        assert committed(settings, ends_before) == ends_before, "offsets advanced during the store outage"
        assert rc != -signal.SIGKILL, (
            f"the worker did not stop within {SHUTDOWN_GRACE_S + 15:.0f}s of SIGTERM during a store outage (killed "
            f"after {took:.0f}s); it kept retrying:\n" + "\n".join(worker.log().splitlines()[-6:]))


def test_worker_started_while_the_store_is_down_waits_for_it_not_ready(settings, worker_factory, producer, encoder):
    """A worker (re)started while its store is unavailable waits with backoff, answers /readyz 503
    naming the store, and starts consuming once the store is back; it does not exit. (Before, it died
    at start-up with TransientStoreError, and an orchestrator restart loop was the only retry.)"""
    import json
    import urllib.error
    import urllib.request

    from app.broker import free_port

    port = free_port()
    s = settings.replace(metrics_port=port)
    lance_dir = Path(s.data_dir) / "lancedb"
    lance_dir.mkdir(parents=True)
    stream = Stream(producer, s)
    stream.upsert("early-1", 1, words(1))
    ends = stream.flush()

    def readyz():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return None, None

    with lancedb_outage(lance_dir):
        worker = worker_factory(s)
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 and "unavailable" in
                                       r[1]["checks"]["store"]["detail"] else None)(readyz()),
                              90, what="/readyz 503 naming the unavailable store")
        wait_for(lambda: worker.log().count("store unavailable") >= 2, 30, what="the worker retrying the store")
        assert worker.alive()
    store = open_store(s, encoder)
    wait_for(lambda: store.count_documents() == 1, 90, what="the document written once the store is back")
    wait_for(lambda: committed(s, ends) == ends, 30, what="its offset committed")
    wait_for(lambda: readyz()[0] == 200, 30, what="/readyz 200")
    assert worker.stop() == 0

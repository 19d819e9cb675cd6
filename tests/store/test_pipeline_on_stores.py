"""The processing step (real encoder, no broker) on LanceDB and on the real Weaviate: doc ids that
differ only by whitespace, and the zombie guard (a late write of an older version is refused by the
store and counted ``stale``)."""
from __future__ import annotations

import itertools

import pytest

from app.chunking import Chunker
from app.deadletter import Record
from app.events import ChangeEvent, EventCodec, Op
from app.pipeline import Backoff, Processor

from .real_weaviate import unique_prefix

_offsets = itertools.count()
TEXT_A = "Compost needs a balance of green and brown material to break down quickly."
TEXT_B = "Routers forward packets between networks using routing tables and protocols."
LONG = " ".join(f"Sentence {i} is about rivers, deltas and the sediment they carry." for i in range(90))


@pytest.fixture(params=["lancedb", pytest.param("weaviate-real", marks=pytest.mark.real_weaviate)])
def open_store(request, tmp_path, encoder):
    opened = []
    if request.param == "lancedb":
        from app.store.lancedb import LanceDBStore

        def make():
            s = LanceDBStore(tmp_path / "lance", encoder.fingerprint, encoder.dim)
            opened.append(s)
            return s
        yield make
    else:
        rw = request.getfixturevalue("real_weaviate")
        prefix = unique_prefix()

        def make():
            s = rw.store(encoder.fingerprint, encoder.dim, prefix)
            opened.append(s)
            return s
        yield make
        rw.drop_prefix(prefix)
    for s in opened:
        s.close()


def processor(store, encoder):
    return Processor(EventCodec(), encoder, Chunker(encoder.tokenizer, 256, 32), store,
                     backoff=Backoff(initial_s=0.01, max_s=0.05))


def rec(doc, version, text=None, op=Op.UPSERT):
    value = EventCodec().encode(ChangeEvent(doc, op, version, 1_700_000_000_000 + version, text, {}))
    return Record("changes", 0, next(_offsets), doc.encode(), value, (), 1_700_000_000_000)


def tomb(doc):
    return Record("changes", 0, next(_offsets), doc.encode(), None, (), 1_700_000_000_000)


def test_doc_ids_differing_only_by_whitespace_never_delete_each_other(open_store, encoder):
    """Before the fix, on real Weaviate: "doc-1 " was accepted, and deleting it deleted doc-1's
    chunks (field tokenisation trims). Now such ids are dead-lettered at decode, on every store."""
    store = open_store()
    p = processor(store, encoder)
    res = p.process([rec("doc-1", 1, TEXT_A), rec("doc-1 ", 1, TEXT_B), rec("\u00a0doc-1", 1, TEXT_B)])
    assert sorted(dl.reason for dl in res.dead_letters) == ["invalid-doc-id", "invalid-doc-id"]
    res = p.process([rec("doc-1 ", 2, op=Op.DELETE), tomb("doc-1\t")])
    assert [dl.reason for dl in res.dead_letters] == ["invalid-doc-id", "invalid-doc-id"]
    assert store.count() == 1 and store.count_documents() == 1
    assert store.search(encoder.encode([TEXT_A])[0], k=1)[0].doc_id == "doc-1"


@pytest.mark.parametrize("late_op", [Op.UPSERT, Op.DELETE])
def test_an_evicted_workers_late_write_is_refused_by_the_store_and_counted_stale(open_store, encoder, late_op):
    """Worker A prepared v5 of doc (and is then evicted); worker B writes v6; A's commit comes
    late. The store refuses A's writes (version below the stored one): v6 stays, A counts stale."""
    a, b = processor(open_store(), encoder), processor(open_store(), encoder)
    a.process([rec("doc", 4, TEXT_A), rec("other", 1, TEXT_A)])
    late = a.prepare([rec("doc", 5, LONG if late_op is Op.UPSERT else None, late_op), rec("fresh", 1, TEXT_B)])
    b.process([rec("doc", 6, TEXT_B)])
    res = a.commit(late)
    assert res.counts["stale"] == 1 and not res.dead_letters
    assert res.counts["written"] == 1  # "fresh", in the same batch, is written
    store = open_store()
    st = store.get_states(["doc", "fresh"])
    assert st["doc"].version == 6 and not st["doc"].deleted and st["fresh"].version == 1
    hits = [h for h in store.search(encoder.encode([TEXT_B])[0], k=10) if h.doc_id == "doc"]
    assert [(h.version, h.chunk_index) for h in hits] == [(6, 0)]  # no chunk of v5 left behind
    assert store.count() == 3  # doc (1 chunk), other, fresh

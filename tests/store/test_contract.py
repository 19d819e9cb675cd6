"""Contract suite of the :class:`~app.store.base.VectorStore` protocol.

Every test runs against each backend of ``store_factory`` (see ``conftest.py``): LanceDB,
the Weaviate adapter against the in-process Weaviate *test server* (a protocol double), and the
same adapter against the session's real Weaviate (started by the ``real_weaviate`` fixture, or
an external one named by ``WEAVIATE_URL``).
"""
from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest

from app.store.base import (ChunkRecord, DocState, FingerprintMismatch, PermanentStoreError, StaleWrite, VectorStore,
                            chunk_uuid)

from .conftest import unit_vectors

FP = "fp-A"
DIM = 8


def chunks_of(
    doc_id: str,
    n: int,
    *,
    version: int = 1,
    fingerprint: str = FP,
    dim: int = DIM,
    seed: int = 0,
    text: str = "chunk {i} of {doc}",
    metadata: dict[str, str] | None = None,
) -> list[ChunkRecord]:
    vectors = unit_vectors(n, dim, seed)
    return [
        ChunkRecord(
            doc_id=doc_id,
            chunk_index=i,
            chunk_count=n,
            version=version,
            content_hash=f"h{version}",
            fingerprint=fingerprint,
            event_time_ms=1_700_000_000_000 + version,
            indexed_time_ms=1_700_000_000_500 + version,
            text=text.format(i=i, doc=doc_id),
            vector=vectors[i],
            metadata=metadata if metadata is not None else {"source": "test", "lang": "en"},
        )
        for i in range(n)
    ]


def state(
    doc_id: str, version: int = 1, *, deleted: bool = False, chunks: int = 2, fingerprint: str = FP
) -> DocState:
    return DocState(
        doc_id=doc_id,
        version=version,
        content_hash="" if deleted else f"h{version}",
        fingerprint=fingerprint,
        chunk_count=0 if deleted else chunks,
        deleted=deleted,
        event_time_ms=1_700_000_000_000 + version,
        updated_time_ms=1_700_000_000_900 + version,
    )


def test_store_implements_protocol(store_factory):
    store = store_factory(FP, DIM)
    assert isinstance(store, VectorStore)
    assert store.fingerprint == FP and store.dim == DIM


def test_upsert_then_count_and_search_finds_it(store_factory):
    store = store_factory(FP, DIM)
    chunks = chunks_of("doc-a", 3) + chunks_of("doc-b", 2, seed=1)
    store.upsert_chunks(chunks)
    assert store.count() == 5

    hits = store.search(chunks[1].vector, k=3)
    assert len(hits) == 3
    best = hits[0]
    assert (best.doc_id, best.chunk_index, best.version) == ("doc-a", 1, 1)
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert best.text == "chunk 1 of doc-a"
    assert dict(best.metadata) == {"source": "test", "lang": "en"}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h.score < 0.9999 for h in hits[1:])


def test_search_with_384_dim_vectors(store_factory):
    store = store_factory(FP, 384)
    chunks = chunks_of("doc-big", 20, dim=384, seed=7)
    store.upsert_chunks(chunks)
    hits = store.search(chunks[13].vector, k=5)
    assert (hits[0].doc_id, hits[0].chunk_index) == ("doc-big", 13)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 5


def test_upsert_same_ids_replaces(store_factory):
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-a", 3, version=1, text="old {i}"))
    v2 = chunks_of("doc-a", 3, version=2, seed=5, text="new {i}")
    store.upsert_chunks(v2)
    assert store.count() == 3
    hits = store.search(v2[2].vector, k=1)
    assert (hits[0].chunk_index, hits[0].version, hits[0].text) == (2, 2, "new 2")
    stored = store.fetch_vectors([c.id for c in v2])
    assert all(np.allclose(stored[c.id], c.vector, atol=1e-6) for c in v2)


def test_delete_from_index_keeps_the_head(store_factory):
    store = store_factory(FP, DIM)
    chunks = chunks_of("doc-a", 4)
    store.upsert_chunks(chunks + chunks_of("doc-b", 2, seed=1))
    assert store.delete_chunks("doc-a", from_index=1) == 3
    assert store.count() == 3
    left = store.fetch_vectors([c.id for c in chunks])
    assert set(left) == {chunk_uuid("doc-a", 0)}
    assert store.delete_chunks("doc-a", from_index=1) == 0


def test_delete_all_chunks_of_a_document(store_factory):
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-a", 3) + chunks_of("doc-b", 2, seed=1))
    assert store.delete_chunks("doc-a") == 3
    assert store.count() == 2
    assert {h.doc_id for h in store.search(unit_vectors(1, DIM, 9)[0], k=10)} == {"doc-b"}
    assert store.delete_chunks("doc-missing") == 0


def test_write_chunks_upserts_and_deletes_leftovers_together(store_factory):
    """Optional ``write_chunks`` (LanceDB): one call = upsert_chunks + delete_chunks_many."""
    store = store_factory(FP, DIM)
    if not hasattr(store, "write_chunks"):
        pytest.skip(f"{type(store).__name__} writes chunks and deletes separately")
    store.upsert_chunks(chunks_of("shrinks", 4) + chunks_of("gone", 3, seed=1) + chunks_of("kept", 2, seed=2))
    v2 = chunks_of("shrinks", 2, version=2, seed=3)
    store.write_chunks(v2 + chunks_of("new", 1, seed=4), [("shrinks", 2), ("gone", 0), ("new", 1)])
    assert [r["chunk_index"] for r in store.chunk_rows("shrinks")] == [0, 1]
    assert {r["version"] for r in store.chunk_rows("shrinks")} == {2}
    assert store.chunk_rows("gone") == []
    assert len(store.chunk_rows("kept")) == 2 and len(store.chunk_rows("new")) == 1
    assert store.count() == 5
    stored = store.fetch_vectors([c.id for c in v2])
    assert all(np.allclose(stored[c.id], c.vector, atol=1e-6) for c in v2)
    store.write_chunks([], [("kept", 0)])  # deletes only
    assert store.chunk_rows("kept") == [] and store.count() == 3


def test_ids_sharing_words_never_touch_each_other(store_factory):
    """doc_id must be compared as a whole value (Weaviate: FIELD tokenization, not WORD)."""
    store = store_factory(FP, DIM)
    ids = ["doc-1", "doc-1-extra", "Doc 1", "doc"]
    for n, doc_id in enumerate(ids):
        store.upsert_chunks(chunks_of(doc_id, 2, seed=n))
    store.put_states([state(doc_id, version=n + 1) for n, doc_id in enumerate(ids)])

    got = store.get_states(["doc-1"])
    assert set(got) == {"doc-1"} and got["doc-1"].version == 1
    assert set(store.get_states(["doc-1-extra", "doc"])) == {"doc-1-extra", "doc"}
    assert store.get_states(["doc-2", "extra", "1"]) == {}

    assert store.delete_chunks("doc-1") == 2
    assert store.count() == 6
    remaining = store.fetch_vectors([chunk_uuid(d, i) for d in ids for i in range(2)])
    assert {cid for cid in remaining} == {chunk_uuid(d, i) for d in ids[1:] for i in range(2)}
    assert store.delete_chunks("doc") == 2
    assert store.delete_chunks("1") == 0
    assert store.count() == 4


def test_delete_more_than_query_maximum_results(store_factory):
    """One Weaviate batch delete removes at most 10 000 objects: the adapter must loop."""
    store = store_factory(FP, DIM)
    n = 10_001
    vectors = unit_vectors(64, DIM, 3)
    big = [
        ChunkRecord("doc-huge", i, n, 1, "h", FP, 1, 2, f"t{i}", vectors[i % 64], {}) for i in range(n)
    ]
    for start in range(0, n, 2_500):
        store.upsert_chunks(big[start : start + 2_500])
    store.upsert_chunks(chunks_of("doc-small", 1))
    assert store.count() == n + 1
    t0 = time.perf_counter()
    assert store.delete_chunks("doc-huge") == n
    assert time.perf_counter() - t0 < 60
    assert store.count() == 1


def test_all_chunk_rows_is_every_chunk_once_past_one_page(store_factory):
    """The whole-collection scan of the crash harness: 2 501 chunks (Weaviate: three cursor pages of
    1 000), each once with chunk_rows' keys and values, nothing of a deleted document."""
    store = store_factory(FP, DIM)
    vectors = unit_vectors(64, DIM, 5)
    for d in range(5):
        store.upsert_chunks([ChunkRecord(f"doc-{d}", i, 500, 1, "h", FP, 1, 2, f"t{i}", vectors[i % 64], {"d": str(d)})
                             for i in range(500)])
    store.upsert_chunks(chunks_of("doc-5", 1))
    store.upsert_chunks(chunks_of("gone", 2))
    store.delete_chunks("gone")
    rows = store.all_chunk_rows()
    assert len(rows) == 2_501 == len({r["id"] for r in rows}) == store.count()
    assert {r["id"] for r in rows} == {chunk_uuid(f"doc-{d}", i) for d in range(5) for i in range(500)} | \
        {chunk_uuid("doc-5", 0)}
    by_id = {r["id"]: r for r in rows}
    assert [by_id[r["id"]] for r in store.chunk_rows("doc-5")] == store.chunk_rows("doc-5")
    assert by_id[chunk_uuid("doc-3", 7)]["chunk_index"] == 7 and by_id[chunk_uuid("doc-3", 7)]["text"] == "t7"
    assert set(rows[0]) == set(store.chunk_rows("doc-5")[0])


def test_states_round_trip_including_tombstones(store_factory):
    store = store_factory(FP, DIM)
    states = [state("doc-a", 3), state("doc-b", 1, chunks=7), state("doc-c", 4, deleted=True)]
    store.put_states(states)
    got = store.get_states(["doc-a", "doc-b", "doc-c", "doc-missing"])
    assert got == {s.doc_id: s for s in states}
    assert got["doc-c"].deleted and got["doc-c"].content_hash == "" and got["doc-c"].chunk_count == 0

    # replace by doc_id: the tombstone comes back to life, a live doc becomes a tombstone
    store.put_states([state("doc-c", 5), state("doc-a", 4, deleted=True)])
    got = store.get_states(["doc-a", "doc-c"])
    assert got["doc-c"] == state("doc-c", 5)
    assert got["doc-a"] == state("doc-a", 4, deleted=True)
    assert store.count_documents(include_deleted=True) == 3


def test_count_documents_excludes_tombstones_by_default(store_factory):
    store = store_factory(FP, DIM)
    store.put_states([state("a"), state("b"), state("c", deleted=True), state("d", deleted=True)])
    assert store.count_documents() == 2
    assert store.count_documents(include_deleted=False) == 2
    assert store.count_documents(include_deleted=True) == 4


def test_get_states_with_many_ids(store_factory):
    store = store_factory(FP, DIM)
    store.put_states([state(f"doc-{i}", i + 1) for i in range(300)])
    wanted = [f"doc-{i}" for i in range(0, 300, 2)] + ["doc-x"]
    got = store.get_states(wanted)
    assert set(got) == set(wanted) - {"doc-x"}
    assert got["doc-298"].version == 299


def test_fetch_vectors_returns_the_stored_vectors(store_factory):
    store = store_factory(FP, DIM)
    chunks = chunks_of("doc-a", 5, seed=11)
    store.upsert_chunks(chunks)
    missing = chunk_uuid("doc-a", 99)
    got = store.fetch_vectors([c.id for c in chunks] + [missing])
    assert set(got) == {c.id for c in chunks}
    for c in chunks:
        assert got[c.id].dtype == np.float32
        assert np.allclose(got[c.id], c.vector, atol=1e-6)


def test_empty_inputs(store_factory):
    store = store_factory(FP, DIM)
    store.upsert_chunks([])
    store.put_states([])
    assert store.get_states([]) == {}
    assert store.fetch_vectors([]) == {}
    assert store.count() == 0 and store.count_documents() == 0
    assert store.search(unit_vectors(1, DIM)[0], k=3) == []


def test_chunk_of_another_fingerprint_is_refused(store_factory):
    store = store_factory(FP, DIM)
    mixed = chunks_of("doc-a", 2) + chunks_of("doc-b", 1, fingerprint="fp-OTHER")
    with pytest.raises(FingerprintMismatch):
        store.upsert_chunks(mixed)
    assert store.count() == 0  # refused before anything was sent


def test_chunk_of_another_dimension_is_refused(store_factory):
    store = store_factory(FP, DIM)
    with pytest.raises(FingerprintMismatch):
        store.upsert_chunks(chunks_of("doc-a", 2, dim=DIM * 2))
    assert store.count() == 0


def test_state_of_another_fingerprint_is_refused(store_factory):
    store = store_factory(FP, DIM)
    other = DocState("doc-a", 1, "h", "fp-OTHER", 1, False, 1, 2)
    with pytest.raises(FingerprintMismatch):
        store.put_states([other])
    assert store.count_documents(include_deleted=True) == 0


def test_data_persists_across_close_and_reopen(store_factory):
    store = store_factory(FP, DIM)
    chunks = chunks_of("doc-a", 3)
    store.upsert_chunks(chunks)
    store.put_states([state("doc-a", 1, chunks=3), state("doc-z", 2, deleted=True)])
    store.close()

    again = store_factory(FP, DIM)
    assert again.count() == 3
    assert again.count_documents() == 1 and again.count_documents(include_deleted=True) == 2
    assert again.get_states(["doc-a", "doc-z"])["doc-z"].deleted
    hits = again.search(chunks[2].vector, k=1)
    assert (hits[0].doc_id, hits[0].chunk_index) == ("doc-a", 2)


def test_fingerprints_are_isolated(store_factory):
    a = store_factory("fp-A", DIM)
    b = store_factory("fp-B", DIM)
    a.upsert_chunks(chunks_of("doc-a", 2, fingerprint="fp-A"))
    assert a.count() == 2 and b.count() == 0
    assert b.search(unit_vectors(1, DIM)[0], k=5) == []


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\):UserWarning")  # on purpose here
def test_optimize_compacts_and_drops_old_versions(store_factory, tmp_path):
    """LanceDB: optimize() keeps the data and removes versions older than its window."""
    store = store_factory(FP, DIM)
    if not hasattr(store, "optimize") or not hasattr(store, "_chunks"):
        pytest.skip(f"{type(store).__name__} compacts on its own")
    for i in range(12):
        store.write_chunks(chunks_of(f"doc-{i}", 2, seed=i), [(f"doc-{i}", 2)])
    before = len(store._chunks.list_versions())
    store.optimize(keep_versions=timedelta(0))
    assert len(store._chunks.list_versions()) < before
    assert store.count() == 24
    assert [r["chunk_index"] for r in store.chunk_rows("doc-3")] == [0, 1]


# --------------------------------------------------------------------------- doc ids, versions


@pytest.mark.parametrize("twin", ["doc-1 ", " doc-1", "doc-1\t", "doc-1\u00a0", "\u3000doc-1"])
def test_doc_ids_with_surrounding_whitespace_are_refused_and_never_touch_their_trimmed_twin(store_factory, twin):
    """Real Weaviate compares field-tokenised doc ids trimmed: "doc-1 " would match (and delete)
    "doc-1". Every store refuses such ids, so both stores accept the same documents."""
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-1", 2))
    store.put_states([state("doc-1", 1)])
    with pytest.raises(PermanentStoreError) as info:
        store.upsert_chunks(chunks_of(twin, 3, seed=4))
    assert set(info.value.object_errors) == {twin}
    with pytest.raises(PermanentStoreError):
        store.put_states([state(twin, 9)])
    with pytest.raises(PermanentStoreError):
        store.delete_chunks(twin)
    assert store.get_states([twin]) == {}
    assert store.get_states(["doc-1"])["doc-1"].version == 1
    assert store.count() == 2 and store.count_documents(include_deleted=True) == 1


def test_a_chunk_write_older_than_the_stored_state_is_refused_and_the_rest_written(store_factory):
    """The zombie guard: an evicted worker's late write of v5 must not touch the v6 another worker
    stored - not even the chunk index v6 no longer has (no orphan)."""
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-a", 2, version=6, seed=1))
    store.put_states([state("doc-a", 6, chunks=2)])
    late = chunks_of("doc-a", 3, version=5, seed=2) + chunks_of("doc-b", 1, version=1, seed=3)
    with pytest.raises(StaleWrite) as info:
        store.upsert_chunks(late)
    assert set(info.value.object_errors) == {"doc-a"} and info.value.stale == info.value.object_errors
    assert isinstance(info.value, PermanentStoreError)
    kept = store.fetch_vectors([chunk_uuid("doc-a", i) for i in range(3)])
    assert set(kept) == {chunk_uuid("doc-a", 0), chunk_uuid("doc-a", 1)}
    assert np.allclose(kept[chunk_uuid("doc-a", 0)], chunks_of("doc-a", 2, version=6, seed=1)[0].vector, atol=1e-6)
    assert store.count() == 3  # doc-a's two v6 chunks + doc-b
    assert {h.version for h in store.search(late[0].vector, k=3) if h.doc_id == "doc-a"} == {6}


def test_a_chunk_write_older_than_the_stored_chunks_is_refused(store_factory):
    """Chunks come before the state: a newer version may be in the chunks only (its state not yet
    written, or lost in a crash)."""
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-a", 2, version=6, seed=1))
    with pytest.raises(StaleWrite):
        store.upsert_chunks(chunks_of("doc-a", 2, version=5, seed=2))
    store.upsert_chunks(chunks_of("doc-a", 2, version=6, seed=1))  # the same version again: idempotent
    store.upsert_chunks(chunks_of("doc-a", 1, version=7, seed=3))  # newer: fine
    assert {h.version for h in store.search(unit_vectors(1, DIM, 3)[0], k=5)} == {6, 7}


def test_a_state_older_than_the_stored_one_is_refused_and_the_rest_written(store_factory):
    store = store_factory(FP, DIM)
    store.put_states([state("doc-a", 6), state("doc-t", 4, deleted=True)])
    with pytest.raises(StaleWrite) as info:
        store.put_states([state("doc-a", 5, deleted=True), state("doc-t", 3), state("doc-b", 1)])
    assert set(info.value.object_errors) == {"doc-a", "doc-t"}
    got = store.get_states(["doc-a", "doc-t", "doc-b"])
    assert (got["doc-a"].version, got["doc-a"].deleted) == (6, False)
    assert (got["doc-t"].version, got["doc-t"].deleted) == (4, True)  # no resurrection either
    assert got["doc-b"].version == 1
    store.put_states([state("doc-a", 6)])  # a redelivered batch writes the same version: fine
    store.put_states([state("doc-a", 7, deleted=True)])
    assert store.get_states(["doc-a"])["doc-a"].deleted


def test_a_versioned_delete_never_removes_newer_chunks(store_factory):
    store = store_factory(FP, DIM)
    store.upsert_chunks(chunks_of("doc-a", 3, version=6) + chunks_of("doc-b", 2, version=2, seed=1))
    assert store.delete_chunks("doc-a", 0, max_version=5) == 0  # a late tombstone of v5
    assert store.delete_chunks_many([("doc-a", 1, 5), ("doc-b", 1, 2)]) == 1
    assert store.count() == 4
    assert store.delete_chunks("doc-a", 1, max_version=6) == 2
    assert store.count() == 2


def test_write_chunks_skips_the_deletes_of_a_stale_document(store_factory):
    """LanceDB's combined write: a refused document's leftover-chunk delete is not applied either."""
    store = store_factory(FP, DIM)
    if not hasattr(store, "write_chunks"):
        pytest.skip(f"{type(store).__name__} writes chunks and deletes separately")
    store.write_chunks(chunks_of("doc-a", 3, version=6), [])
    store.put_states([state("doc-a", 6, chunks=3)])
    with pytest.raises(StaleWrite) as info:
        store.write_chunks(chunks_of("doc-a", 1, version=5, seed=9) + chunks_of("doc-b", 1, seed=2),
                           [("doc-a", 1, 5), ("doc-b", 1, 1)])
    assert set(info.value.object_errors) == {"doc-a"}
    assert [(r["chunk_index"], r["version"]) for r in store.chunk_rows("doc-a")] == [(0, 6), (1, 6), (2, 6)]
    assert len(store.chunk_rows("doc-b")) == 1

"""The processing step with the real encoder and real LanceDB files (no broker)."""
import itertools

import numpy as np
import pytest

from app.chunking import Chunker
from app.deadletter import Record
from app.events import ChangeEvent, EventCodec, Op
from app.pipeline import Backoff, Interrupted, Processor
from app.store.base import TransientStoreError
from app.store.lancedb import LanceDBStore

LONG = " ".join(f"Sentence number {i} talks about telescopes and distant galaxies." for i in range(120))
_offsets = itertools.count()


class CountingEncoder:
    """The real encoder, counting how many chunks it is asked to embed."""

    def __init__(self, enc):
        self.enc, self.chunks = enc, 0
        self.fingerprint, self.dim, self.tokenizer = enc.fingerprint, enc.dim, enc.tokenizer

    def encode_tokens(self, token_ids):
        self.chunks += len(token_ids)
        return self.enc.encode_tokens(token_ids)


class FlakyStore:
    """Wraps the real LanceDB store; the first `fail` calls of `method` raise TransientStoreError."""

    def __init__(self, store, method, fail):
        self.store, self.method, self.fail, self.calls = store, method, fail, 0

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if name != self.method:
            return attr

        def wrapped(*a, **kw):
            self.calls += 1
            if self.calls <= self.fail:
                raise TransientStoreError("simulated outage")
            return attr(*a, **kw)
        return wrapped


@pytest.fixture
def codec():
    return EventCodec()


@pytest.fixture
def store(tmp_path, encoder):
    return LanceDBStore(tmp_path / "lance", encoder.fingerprint, encoder.dim)


@pytest.fixture
def counting(encoder):
    return CountingEncoder(encoder)


@pytest.fixture
def proc(codec, counting, store):
    return Processor(codec, counting, Chunker(counting.tokenizer, 256, 32), store,
                     backoff=Backoff(initial_s=0.01, max_s=0.05))


def rec(codec, doc, version, text=None, op=Op.UPSERT, meta=None, raw=None):
    if raw is not None or (op is None):
        value = raw
    else:
        value = codec.encode(ChangeEvent(doc, op, version, 1_700_000_000_000 + version, text, meta or {}))
    return Record("changes", 0, next(_offsets), doc.encode() if doc else None, value, (), 1_700_000_000_000)


def tomb(doc):
    return Record("changes", 0, next(_offsets), doc.encode(), None, (), 1_700_000_000_000)


def test_upsert_is_searchable(proc, codec, store, encoder):
    res = proc.process([rec(codec, "astro", 1, "Black holes form when massive stars collapse."),
                        rec(codec, "bread", 1, "Knead the dough and let it rise before baking.")])
    assert res.counts["written"] == 2 and not res.dead_letters
    [hit] = store.search(encoder.encode(["how are black holes made"])[0], k=1)
    assert hit.doc_id == "astro" and hit.score > 0.5
    [row] = store.chunk_rows("astro")
    assert row["version"] == 1 and row["fingerprint"] == encoder.fingerprint and row["indexed_time_ms"] > 0
    assert row["event_time_ms"] == 1_700_000_000_001 and row["content_hash"]


def test_update_replaces_chunks_without_orphans(proc, codec, store):
    proc.process([rec(codec, "doc", 1, LONG)])
    n = len(store.chunk_rows("doc"))
    assert n >= 3
    proc.process([rec(codec, "doc", 2, "Now it is short.")])
    rows = store.chunk_rows("doc")
    assert [(r["chunk_index"], r["version"], r["chunk_count"]) for r in rows] == [(0, 2, 1)]
    assert store.count() == 1
    proc.process([rec(codec, "doc", 3, LONG + " grown")])
    assert [r["chunk_index"] for r in store.chunk_rows("doc")] == list(range(n))


@pytest.mark.parametrize("how", ["delete-op", "tombstone"])
def test_delete_removes_every_chunk(proc, codec, store, how):
    proc.process([rec(codec, "doc", 1, LONG), rec(codec, "keep", 1, "stays")])
    assert len(store.chunk_rows("doc")) >= 3
    r = rec(codec, "doc", 2, op=Op.DELETE) if how == "delete-op" else tomb("doc")
    res = proc.process([r])
    assert res.counts["deleted"] == 1
    assert store.chunk_rows("doc") == [] and len(store.chunk_rows("keep")) == 1
    assert store.get_states(["doc"])["doc"].deleted
    assert store.count_documents() == 1


def test_stale_version_never_overwrites(proc, codec, store):
    proc.process([rec(codec, "doc", 5, "version five")])
    res = proc.process([rec(codec, "doc", 4, "version four (late)")])
    assert res.counts["stale"] == 1
    assert store.chunk_rows("doc")[0]["text"] == "version five"
    # nor after a delete: an older upsert cannot resurrect the document
    proc.process([rec(codec, "doc", 6, op=Op.DELETE)])
    res = proc.process([rec(codec, "doc", 5, "version five again")])
    assert res.counts["stale"] == 1 and store.chunk_rows("doc") == []


def test_newest_in_batch_wins(proc, codec, store):
    res = proc.process([rec(codec, "doc", 1, "one"), rec(codec, "doc", 3, "three"), rec(codec, "doc", 2, "two")])
    assert res.counts["superseded"] == 1 and res.counts["stale"] == 1 and res.counts["written"] == 1
    assert store.chunk_rows("doc")[0]["text"] == "three"


def test_duplicate_delivery_changes_nothing(proc, codec, store, counting):
    batch = [rec(codec, "a", 1, LONG), rec(codec, "b", 1, "bee")]
    proc.process(batch)
    before = {d: store.chunk_rows(d) for d in ("a", "b")}
    encoded = counting.chunks
    res = proc.process(batch)
    # the same records again: versions decide (same version, same content), whatever the offset
    assert res.counts["duplicate"] == 2 and res.chunks_written == 0
    assert counting.chunks == encoded
    assert {d: store.chunk_rows(d) for d in ("a", "b")} == before


def test_redelivered_tombstone_is_recognised_by_its_position(proc, codec, store):
    """Tombstones carry no version: a redelivered one (at or below the offset the state came from)
    must not delete what a later record of the same log wrote."""
    first = [rec(codec, "a", 1, "one"), tomb("a")]
    later = rec(codec, "a", 2, "two")
    proc.process(first + [later])
    res = proc.process(first + [later])  # redelivery of the whole range
    assert res.counts["already_applied"] == 1 and res.counts["duplicate"] == 1
    st = store.get_states(["a"])["a"]
    assert (st.version, st.deleted) == (2, False) and store.chunk_rows("a")[0]["text"] == "two"


def test_a_recreated_topic_is_not_skipped_by_offset(codec, store, encoder):
    """After the topic is recreated (new topic id) its offsets start at 0 again: a newer version at
    a low offset is applied, and a tombstone at a low offset deletes (before: both were skipped as
    'already applied' because their offsets were below the stored one)."""
    proc = Processor(codec, encoder, Chunker(encoder.tokenizer, 256, 32), store, backoff=Backoff(0.01, 0.05))
    ev = lambda doc, v, text: codec.encode(ChangeEvent(doc, Op.UPSERT, v, 1_700_000_000_000, text))
    proc.incarnations = {"changes": "topic-id-1"}
    proc.process([Record("changes", 0, 500, b"a", ev("a", 1, "old a")),
                  Record("changes", 0, 501, b"b", ev("b", 1, "old b"))])
    assert store.get_states(["a"])["a"].source_incarnation == "topic-id-1"
    proc.incarnations = {"changes": "topic-id-2"}  # deleted and created again
    res = proc.process([Record("changes", 0, 0, b"a", ev("a", 2, "new a")), Record("changes", 0, 1, b"b", None)])
    assert res.counts["already_applied"] == 0
    states = store.get_states(["a", "b"])
    assert states["a"].version == 2 and store.chunk_rows("a")[0]["text"] == "new a"
    assert states["b"].deleted and store.chunk_rows("b") == []
    # the same tombstone again, in the new incarnation: now it is a redelivery
    res = proc.process([Record("changes", 0, 1, b"b", None)])
    assert res.counts["already_applied"] == 1


def test_unchanged_content_is_not_reencoded(proc, codec, store, counting):
    proc.process([rec(codec, "doc", 1, LONG, meta={"rev": "1"})])
    encoded = counting.chunks
    vec_before = store.fetch_vectors([r["id"] for r in store.chunk_rows("doc")])
    res = proc.process([rec(codec, "doc", 2, LONG, meta={"rev": "2"})])
    assert counting.chunks == encoded and res.counts["unchanged_reused"] == 1
    rows = store.chunk_rows("doc")
    assert {r["version"] for r in rows} == {2} and all('"rev": "2"' in r["metadata_json"] for r in rows)
    vec_after = store.fetch_vectors([r["id"] for r in rows])
    assert all(np.array_equal(vec_before[k], vec_after[k]) for k in vec_before)
    proc.process([rec(codec, "doc", 3, LONG + " changed")])
    assert counting.chunks > encoded


def test_bad_records_are_dead_lettered_and_the_rest_written(proc, codec, store):
    res = proc.process([rec(codec, "ok1", 1, "fine"), rec(codec, "bad", 1, raw=b"\x07garbage"),
                        rec(codec, "conf", 1, "x"), rec(codec, "ok2", 1, "also fine")])
    assert [d.reason for d in res.dead_letters] == ["unknown-magic-byte"]
    assert res.dead_letters[0].record.value == b"\x07garbage"
    assert store.count_documents() == 3
    res = proc.process([rec(codec, "conf", 1, "other text, same version")])
    assert [d.reason for d in res.dead_letters] == ["version-conflict"]


def test_non_finite_vectors_are_dead_lettered(codec, store, encoder):
    class NaNForPoison(CountingEncoder):
        def encode_tokens(self, token_ids):
            v, n = self.enc.encode_tokens(token_ids)
            poison = set(self.enc.token_ids(["poison"])[0])
            for i, ids in enumerate(token_ids):
                if poison & set(ids):
                    v[i] = np.nan
            return v, n

    p = Processor(codec, NaNForPoison(encoder), Chunker(encoder.tokenizer), store)
    res = p.process([rec(codec, "a", 1, "poison"), rec(codec, "b", 1, "healthy")])
    assert [d.reason for d in res.dead_letters] == ["encoder-non-finite"]
    assert store.count_documents() == 1 and store.get_states(["b"])


def test_transient_store_errors_are_retried_not_skipped(codec, store, encoder):
    flaky = FlakyStore(store, "write_chunks", fail=3)
    p = Processor(codec, encoder, Chunker(encoder.tokenizer), flaky, backoff=Backoff(initial_s=0.01, max_s=0.02))
    res = p.process([rec(codec, "a", 1, "text")])
    assert res.store_retries == 3 and res.counts["written"] == 1 and store.count() == 1


def test_stop_during_outage_raises_interrupted_and_writes_no_state(codec, store, encoder):
    flaky = FlakyStore(store, "put_states", fail=10**9)
    calls = itertools.count()
    p = Processor(codec, encoder, Chunker(encoder.tokenizer), flaky,
                  backoff=Backoff(initial_s=0.01, max_s=0.01), should_stop=lambda: next(calls) > 5)
    with pytest.raises(Interrupted):
        p.process([rec(codec, "a", 1, "text")])
    assert store.get_states(["a"]) == {}  # nothing claims the event was applied


def test_store_refuses_other_fingerprints(tmp_path, encoder, encoder_fp32):
    from app.store.base import FingerprintMismatch

    LanceDBStore(tmp_path / "l", encoder.fingerprint, encoder.dim)
    with pytest.raises(ValueError, match="fingerprint"):
        Processor(EventCodec(), encoder_fp32, Chunker(encoder.tokenizer),
                  LanceDBStore(tmp_path / "l", encoder.fingerprint, encoder.dim))
    s = LanceDBStore(tmp_path / "l", encoder.fingerprint, encoder.dim)
    assert s.collection != LanceDBStore(tmp_path / "l", encoder_fp32.fingerprint, 384).collection
    from app.store.base import ChunkRecord
    with pytest.raises(FingerprintMismatch):
        s.upsert_chunks([ChunkRecord("d", 0, 1, 1, "h", encoder_fp32.fingerprint, 0, 0, "t",
                                     np.zeros(384, np.float32))])


def test_embedding_cache_encodes_boilerplate_once(codec, store, encoder):
    from app.cache import EmbeddingCache

    counting = CountingEncoder(encoder)
    cache = EmbeddingCache(100)
    p = Processor(codec, counting, Chunker(encoder.tokenizer), store, cache=cache)
    footer = "This message is confidential and intended only for the addressee."
    res = p.process([rec(codec, f"mail-{i}", 1, footer) for i in range(5)])
    assert counting.chunks == 1 and res.chunks_encoded == 1 and res.cache_hits == 4
    assert store.count_documents() == 5
    res = p.process([rec(codec, "mail-9", 1, footer), rec(codec, "other", 1, "something new")])
    assert counting.chunks == 2 and res.cache_hits == 1 and cache.hits == 1 and len(cache) == 2
    # cached vectors equal freshly encoded ones (int8 runs per row: no batch effect)
    fresh = encoder.encode([footer])[0]
    stored = store.fetch_vectors([r["id"] for r in store.chunk_rows("mail-9")])
    assert np.allclose(list(stored.values())[0], fresh, atol=1e-6)


def test_store_is_compacted_every_n_batches(codec, store, encoder):
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(store, name)

        def optimize(self):
            calls.append(1)
            store.optimize()

    p = Processor(codec, encoder, Chunker(encoder.tokenizer), Counting(), optimize_every=3)
    for i in range(7):
        p.process([rec(codec, f"d{i}", 1, f"text {i}")])
    assert len(calls) == 2 and store.count_documents() == 7


def test_a_batch_sharing_a_document_with_an_uncommitted_one_waits_for_its_write(proc, codec, store):
    """prepare(N+1) runs while N is being written: for a shared document it must wait for N's
    commit and then plan against N's state (v2 -> a stale v1 is recognised as stale)."""
    import threading

    first = proc.prepare([rec(codec, "shared", 2, "version two"), rec(codec, "other", 1, "x")])
    done: dict = {}
    t = threading.Thread(target=lambda: done.setdefault("res", proc.prepare([rec(codec, "shared", 1, "old")])))
    t.start()
    t.join(1.0)
    assert t.is_alive(), "the second batch planned before the first one's write"
    unrelated = proc.prepare([rec(codec, "unrelated", 1, "y")])  # no shared document: no wait
    proc.commit(first)
    t.join(30)
    assert not t.is_alive()
    assert proc.commit(done["res"]).counts["stale"] == 1
    assert proc.commit(unrelated).counts["written"] == 1
    assert store.get_states(["shared"])["shared"].version == 2

"""The worker's drift stage feeds one vector per event (the mean of its chunks), not one per chunk."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from app.alerts import DriftStage, event_vectors
from app.drift import DriftConfig
from app.pipeline import BatchResult
from load.drift_chunks import run_stream, synthetic_pool


def _record(partition, offset):
    return SimpleNamespace(partition=partition, offset=offset, timestamp_ms=1_000 * offset)


def test_the_stage_gives_the_monitor_one_row_per_event_with_the_first_chunk_s_metadata(tmp_path):
    rng = np.random.default_rng(3)
    sizes = [1, 3, 2]
    recs = [_record(1, 40), _record(1, 41), _record(2, 7)]
    v = rng.normal(size=(sum(sizes), 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    norms = rng.uniform(1, 3, size=sum(sizes))
    res = BatchResult(vectors=v, norms=norms, vector_doc_ids=[d for d, k in zip("abc", sizes) for _ in range(k)],
                      vector_records=[r for r, k in zip(recs, sizes) for _ in range(k)])
    stage = DriftStage("fp", "docs", tmp_path, DriftConfig(warmup=20))
    seen = {}
    observe = stage.monitor.observe

    def spy(vectors, **kw):
        seen.update(kw, vectors=vectors)
        return observe(vectors, **kw)

    stage.monitor.observe = spy
    assert stage.observe(res) == []
    assert stage.monitor.n_seen == 3
    want = np.stack([v[0], v[1:4].sum(0), v[4:6].sum(0)])
    np.testing.assert_allclose(seen["vectors"], want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(seen["norms"], [norms[0], norms[1:4].mean(), norms[4:6].mean()])
    assert seen["doc_ids"] == ["a", "b", "c"]
    assert list(seen["partitions"]) == [1, 1, 2] and list(seen["offsets"]) == [40, 41, 7]
    assert list(seen["event_times_ms"]) == [40_000, 41_000, 7_000]


def test_single_chunk_events_pass_through_unchanged():
    v = np.eye(3, dtype=np.float32)
    recs = [object(), object(), object()]
    out, nr, first = event_vectors(v, np.ones(3), recs)
    assert out is v and first == [0, 1, 2]


def test_a_multi_chunk_collection_fed_by_event_passes_the_serial_test_and_by_chunk_fails_it():
    # i.i.d. documents of one to five chunks that share their document's direction: the chunk rows
    # are serially dependent (the test flags every warm-up and the collection loses its `shift`
    # scan), the event rows are not
    pool = synthetic_pool(3000, seed=5)
    docs = np.random.default_rng(5).integers(len(pool), size=6000)
    cfg = DriftConfig()
    by_event = run_stream(pool, docs, "events", cfg)
    by_chunk = run_stream(pool, docs, "chunks", cfg)
    assert by_event["rows"] == 6000 and by_chunk["rows"] == int(pool.counts[docs].sum()) > 8000
    assert not by_event["flagged"] and by_chunk["flagged"]
    assert by_event["fired"] == 0
    # bursty documents (same-topic runs) are still flagged when fed by event
    from load.drift_eval import Source, draw_index

    bursty = draw_index(pool, Source(pool="synthetic", burst=20.0), np.random.default_rng(6), 6000)
    assert run_stream(pool, bursty, "events", cfg)["flagged"]
    assert not run_stream(pool, bursty, "events", replace(cfg, serial_alpha=0.0))["flagged"]


def test_documents_taken_from_another_encoder_from_a_point_on_are_reported_after_it():
    # load.drift_chunks's encoder change: the same documents, their chunks through another encoder
    # (here: a small common bias) from document 5000 on
    from load.drift_chunks import ChunkPool

    pool = synthetic_pool(3000, seed=7)
    bias = np.random.default_rng(8).normal(size=pool.vectors.shape[1])
    moved = pool.vectors + 0.25 * bias / np.linalg.norm(bias)
    alt = ChunkPool(pool.name, pool.labels, pool.counts,
                    (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32), pool.norms)
    docs = np.random.default_rng(9).integers(len(pool), size=7000)
    r = run_stream(pool, docs, "events", DriftConfig(), alt=alt, alt_from=5000)
    assert r["fired_docs"] and 5000 <= r["fired_docs"][0] < 5300, r["fired_docs"]
    assert run_stream(pool, docs, "events", DriftConfig())["fired"] == 0


def test_documents_with_more_chunks_from_a_point_on_are_fed_and_located_by_their_own_chunks():
    # load.drift_chunks's boilerplate change: from document 5000 on, every document has one more
    # chunk (the boilerplate's, first) with its own direction; fed by chunk, a FIRED alert's event is
    # mapped back to its document through the chunks actually fed
    from load.drift_chunks import ChunkPool

    pool = synthetic_pool(3000, seed=10)
    d = pool.vectors.shape[1]
    boiler = np.random.default_rng(11).normal(size=d)
    boiler = (boiler / np.linalg.norm(boiler)).astype(np.float32)
    vecs, norms = [], []
    for i in range(len(pool)):
        vecs += [boiler[None, :], pool.vectors[pool.starts[i] : pool.starts[i] + pool.counts[i]]]
        norms += [np.ones(1, np.float32), pool.norms[pool.starts[i] : pool.starts[i] + pool.counts[i]]]
    alt = ChunkPool(pool.name, pool.labels, pool.counts + 1, np.vstack(vecs), np.concatenate(norms))
    docs = np.random.default_rng(12).integers(len(pool), size=6000)
    for feeding in ("events", "chunks"):
        r = run_stream(pool, docs, feeding, DriftConfig(serial_alpha=0.0), alt=alt, alt_from=5000)
        assert r["fired_docs"] and 5000 <= r["fired_docs"][0] < 5100, (feeding, r["fired_docs"][:3])
    chunks = int(pool.counts[docs[:5000]].sum() + alt.counts[docs[5000:]].sum())
    assert run_stream(pool, docs, "chunks", DriftConfig(serial_alpha=0.0), alt=alt, alt_from=5000)["rows"] == chunks


def test_switches_report_the_edited_pools_changes_by_name():
    # load.drift_chunks --footer / --boilerplate: the edited chunk pools become "footer" and
    # "boilerplate" changes (a chunk appended here: the footer's), found in every feeding
    from load.drift_chunks import FEEDINGS, ChunkPool, switches

    pool = synthetic_pool(3000, seed=13)
    footer = np.random.default_rng(14).normal(size=pool.vectors.shape[1])
    footer = (footer / np.linalg.norm(footer)).astype(np.float32)
    vecs, norms = [], []
    for i in range(len(pool)):
        vecs += [pool.vectors[pool.starts[i] : pool.starts[i] + pool.counts[i]], footer[None, :]]
        norms += [pool.norms[pool.starts[i] : pool.starts[i] + pool.counts[i]], np.ones(1, np.float32)]
    alt = ChunkPool(pool.name, pool.labels, pool.counts + 1, np.vstack(vecs), np.concatenate(norms))
    rows = switches({"synthetic": pool}, part="tune", runs=2, after=1000, edited={"footer": {"synthetic": alt}},
                    mix=False, log=lambda s: None)
    assert [(r["stream"], r["feeding"]) for r in rows] == [("footer", f) for f, _ in FEEDINGS]
    for r in rows:
        assert r["missed"] == 0 and r["median_delay"] < 100, r


def test_the_cost_benchmark_times_every_pool():
    from load.drift_chunks import cost

    [row] = cost({"synthetic": synthetic_pool(500, seed=1)}, batches=3, log=lambda s: None)
    assert row["pool"] == "synthetic" and row["us_per_event"] > 0 and row["chunks_per_event"] > 1.0

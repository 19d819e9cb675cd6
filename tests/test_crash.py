"""Crash safety: kill -9 the worker mid-stream (the short CI variant of load/crash_harness.py), and
crash the processing step between its store writes.

* ``test_worker_survives_kill_9_and_sigterm``: the worker process on the local broker, 1 500
  keyed events (new / updates growing and shrinking the chunk count / unchanged-text versions /
  reverts / duplicates / stale re-sends / DELETE / tombstones / junk), killed with SIGKILL 3 times
  at random moments and once stopped with SIGTERM (exit 0; the store equals the state of exactly
  the committed prefix of the log), then drained: the LanceDB files equal the state the event log
  implies (no lost document, no stale version, chunks 0..n-1 exactly, no orphan or duplicate
  chunk, no deleted document, vectors of the right text) and every junk record is dead-lettered.
  ``python -m load.crash_harness --events 50000 --kills 20`` is the full run.
* ``test_crash_at_every_write_step_converges``: the same guarantee at the pipeline level, without
  timing luck: the batch is interrupted at each store write in turn (as kill -9 would), then
  redelivered with the same or with other batch boundaries.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from app.chunking import Chunker
from app.deadletter import Record
from app.events import ChangeEvent, EventCodec, Op
from app.pipeline import Backoff, Processor
from app.store.lancedb import LanceDBStore
from conftest import Crash, CrashingStore, REPO, both_brokers

if str(REPO) not in sys.path:  # load/ is not an installed package
    sys.path.insert(0, str(REPO))
from load.crash_harness import run_crash_harness  # noqa: E402


@both_brokers()
def test_worker_survives_kill_9_and_sigterm(settings, encoder, tmp_path):
    report = run_crash_harness(settings, events=1500, kills=3, seed=7, docs=80, encoder=encoder,
                               log_dir=tmp_path / "logs", echo=print)
    print(report.summary())
    assert report.drained, report.summary()
    assert report.kills == 3 and report.sigterm_exit_codes == [0, 0], report.summary()
    assert report.live_docs > 20 and report.deleted_docs > 5 and report.chunks_checked > 20
    assert report.dead_letters_found == report.dead_letters_expected > 0, report.summary()
    assert not report.sigterm_mismatches, report.summary()
    assert not report.mismatches, report.summary()
    assert report.ok


# ----------------------------------------------------------------------------------------
# pipeline level: interrupt a batch at each store write, then redeliver

LONG = " ".join(f"Line {i} of the harbour log records the tide, the wind and the ships." for i in range(30))
SHORT = "The harbour was quiet today."




def _records(codec, events):
    return [Record("changes", 0, i, e.doc_id.encode(), codec.encode(e), (), 0) for i, e in enumerate(events)]


@pytest.mark.parametrize("redelivery", ["same-batches", "merged"])
@pytest.mark.parametrize("step", ["write_chunks", "put_states", "separate:upsert_chunks",
                                  "separate:delete_chunks_many", "separate:put_states"])
def test_crash_at_every_write_step_converges(tmp_path, encoder, step, redelivery):
    """Batch 2 (shrink a, delete b, grow c) is killed before its `step` write; after the restart the
    events from the last committed offset are redelivered, either as the same batches or merged
    into one with the next event (a reverts to its v1 text). The result must be the event log's."""
    codec = EventCodec()
    chunker = Chunker(encoder.tokenizer, 256, 32)
    assert len(chunker.chunk(LONG)) >= 2
    E = lambda d, v, text=None, op=Op.UPSERT: ChangeEvent(d, op, v, 1_700_000_000_000 + v, text)
    events = [E("a", 1, LONG), E("b", 1, LONG), E("c", 1, SHORT),                   # batch 1
              E("a", 2, SHORT), E("b", 2, op=Op.DELETE), E("c", 2, LONG + " More."),  # batch 2
              E("a", 3, LONG)]                                                       # batch 3: a reverts
    recs = _records(codec, events)
    store = LanceDBStore(tmp_path / "lancedb", encoder.fingerprint, encoder.dim)
    # batch 1 makes 2 writes (chunks with their deletes in one version, states), or 3 when the
    # store writes chunks and deletes separately (Weaviate); batch 2 is killed before `step`
    crash_at = {"write_chunks": 3, "put_states": 4, "separate:upsert_chunks": 4,
                "separate:delete_chunks_many": 5, "separate:put_states": 6}[step]
    crashing = CrashingStore(store, crash_at, combined=not step.startswith("separate:"))
    proc = Processor(codec, encoder, chunker, crashing, backoff=Backoff(0.01, 0.02))
    proc.process(recs[0:3])                 # writes 1-3, committed up to offset 3
    with pytest.raises(Crash) as killed:
        proc.process(recs[3:6])             # killed before its `step` write
    assert killed.value.args == (step.split(":")[-1],)
    # restart: redelivery from offset 3
    proc = Processor(codec, encoder, chunker, store, backoff=Backoff(0.01, 0.02))
    if redelivery == "same-batches":
        proc.process(recs[3:6])
        proc.process(recs[6:7])
    else:
        proc.process(recs[3:7])

    expect = {"a": (3, LONG), "b": (2, None), "c": (2, LONG + " More.")}
    states = store.get_states(expect)
    total = 0
    for doc, (v, text) in expect.items():
        assert states[doc].version == v and states[doc].deleted == (text is None), (doc, states[doc])
        rows = store.chunk_rows(doc)
        if text is None:
            assert rows == []
            continue
        chunks = chunker.chunk(text)
        total += len(chunks)
        assert [(r["chunk_index"], r["version"], r["text"]) for r in rows] == [(c.index, v, c.text) for c in chunks]
        stored = store.fetch_vectors([r["id"] for r in rows])
        fresh, _ = encoder.encode_tokens([c.token_ids for c in chunks])
        cos = [float(np.dot(stored[r["id"]], f)) for r, f in zip(rows, fresh)]
        assert min(cos) > 0.995, (f"{doc} v{v}: stored vectors are not those of its text (cosines "
                                  f"{[round(c, 3) for c in cos]}): vectors of an interrupted batch were reused")
    assert store.count() == total


def test_redelivered_tombstone_does_not_delete_a_newer_version(tmp_path, encoder):
    """BUG (app/batching.py decide, tombstones under at-least-once): [tombstone, upsert v2] is written
    completely, the worker dies before Faust commits (commits run every second), and the redelivery
    cuts the batches differently: the tombstone alone meets the stored state v2 - written by the event
    AFTER it - and deletes it at v2; the redelivered v2 is then 'stale' (same version, deleted). The
    document the log ends with is lost. A tombstone has no version, so only the record's offset can
    tell that it was already applied."""
    codec = EventCodec()
    chunker = Chunker(encoder.tokenizer, 256, 32)
    store = LanceDBStore(tmp_path / "lancedb", encoder.fingerprint, encoder.dim)
    proc = Processor(codec, encoder, chunker, store, backoff=Backoff(0.01, 0.02))
    up = lambda v, text, off: Record("changes", 0, off, b"x", codec.encode(ChangeEvent("x", Op.UPSERT, v, 0, text)),
                                     (), 0)
    tomb = Record("changes", 0, 1, b"x", None, (), 0)
    proc.process([up(1, "first text", 0)])                  # committed up to offset 1
    proc.process([tomb, up(2, "second text", 2)])           # written; killed before the commit
    # restart: offsets 1.. are redelivered, cut into other batches
    proc = Processor(codec, encoder, chunker, store, backoff=Backoff(0.01, 0.02))
    proc.process([tomb])
    proc.process([up(2, "second text", 2)])
    st = store.get_states(["x"])["x"]
    assert (st.version, st.deleted) == (2, False), f"the log ends with x live at v2; the store has {st}"
    assert [r["text"] for r in store.chunk_rows("x")] == ["second text"]

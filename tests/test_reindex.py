"""Blue/green reindex on LanceDB: the live worker keeps serving the old collection while the
new one is backfilled; changes made meanwhile end up exactly as in a from-scratch index;
swap / rollback switch what search answers from; the LanceDB alias pointer."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from app.events import ChangeEvent, EventCodec, Op
from app.offsets import committed_offsets, group_activity, high_watermarks
from app.reindex import Reindex, ReindexError, resolve_search_target, variant_fingerprint
from app.replay import Replayer, ReplayRange, open_target
from app.store.base import FingerprintMismatch, PermanentStoreError
from app.store.lancedb import LanceDBStore, collection_name, read_alias
from conftest import settings_env, wait_for

TOPICS = ["gardening roses", "sourdough bread", "tcp handshakes", "black holes", "tax returns", "football tactics",
          "volcano eruptions", "jazz improvisation", "bicycle repair", "coral reefs", "chess openings", "beekeeping"]
LONG = " ".join(f"Section {i}: beekeepers inspect frames for brood, honey and signs of swarming." for i in range(40))


def send(producer, topic, items):
    codec = EventCodec()
    for doc, v, op, text in items:
        value = None if v is None else codec.encode(ChangeEvent(doc, op, v, 1_700_000_000_000, text, {"t": doc}))
        producer.produce(topic, key=doc.encode(), value=value)
    producer.flush(10)


def snapshot(store, docs):
    """doc -> (version, deleted, content_hash, [(chunk_index, chunk_count, text, version)])."""
    states = store.get_states(docs)
    out = {}
    for d in docs:
        rows = [(r["chunk_index"], r["chunk_count"], r["text"], r["version"]) for r in store.chunk_rows(d)]
        s = states.get(d)
        out[d] = None if s is None else (s.version, s.deleted, s.content_hash, s.chunk_count, rows)
    return out


def old_store(settings, encoder):
    try:
        return LanceDBStore(Path(settings.data_dir) / "lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def test_reindex_with_live_worker_equals_fresh_index_and_swaps(settings, producer, worker_factory, encoder,
                                                               encoder_fp32, tmp_path):
    topic = settings.changes_topic
    docs = [f"doc-{i}" for i in range(len(TOPICS))] + ["doc-20", "doc-21"]
    send(producer, topic, [(f"doc-{i}", 1, Op.UPSERT, f"A short note about {t}.") for i, t in enumerate(TOPICS)])
    producer.produce(topic, key=b"junk", value=b"\x09junk")
    producer.flush(10)
    worker = worker_factory(settings)
    old = wait_for(lambda: old_store(settings, encoder), 90, what="the worker's collection")
    wait_for(lambda: old.count_documents() == len(TOPICS), 90, what="the initial documents indexed")
    rec = read_alias(Path(settings.data_dir) / "lancedb", "embedstream")
    assert rec["collection"] == old.collection and rec["fingerprint"] == encoder.fingerprint

    # changes arrive while the backfill runs (produced from inside its first batch)
    during = [("doc-1", 2, Op.UPSERT, "Rewritten: roses need sun and pruning."),
              ("doc-2", 2, Op.DELETE, None),
              ("doc-3", None, Op.DELETE, None),
              ("doc-4", 2, Op.UPSERT, LONG),
              ("doc-20", 1, Op.UPSERT, "A new note about glaciers."),
              ("doc-1", 1, Op.UPSERT, "stale, never applied")]
    fired = []

    def during_backfill(replayer, result):
        if not fired:
            fired.append(True)
            send(producer, topic, during)

    rx = Reindex(settings, encoders={"int8": encoder, "fp32": encoder_fp32})
    st = rx.start(variant="fp32", batch_size=4, on_batch=during_backfill)
    assert fired and st["phase"] == "ready"
    new_collection = collection_name("embedstream", encoder_fp32.fingerprint)
    assert rx.state["new"]["collection"] == new_collection and rx.state["old"]["collection"] == old.collection
    assert [p["kind"] for p in rx.state["passes"]][:2] == ["backfill", "catch-up"]
    # the live worker kept writing its own (old) collection, and the alias was not moved
    wait_for(lambda: old.get_states(["doc-4"]).get("doc-4") and old.get_states(["doc-4"])["doc-4"].version == 2,
             90, what="the live worker to apply the changes")
    assert read_alias(Path(settings.data_dir) / "lancedb", "embedstream")["collection"] == old.collection
    ends = {p: m.high for p, m in high_watermarks(settings, topic).items()}
    # a partition that received no record has nothing to commit (None: no committed offset)
    wait_for(lambda: {p: o or 0 for p, o in committed_offsets(settings, settings.app_id, topic, list(ends)).items()}
             == ends, 30,
             what="the live worker to commit everything")
    status = rx.status()
    assert status["old"]["documents"] == status["new"]["documents"] == len(TOPICS) - 1  # -2 deleted, +1 new
    assert status["new_lag"] == 0 and status["live_lag"] == 0

    # search follows the alias: old collection + int8 before the swap, new + fp32 after it
    encoders = {"int8": encoder, "fp32": encoder_fp32}
    enc, store = resolve_search_target(settings, encoders)
    assert enc.fingerprint == encoder.fingerprint and store.collection == old.collection
    checks = rx.swap()
    assert all(c.ok for c in checks), checks
    enc, store = resolve_search_target(settings, encoders)
    assert enc.fingerprint == encoder_fp32.fingerprint and store.collection == new_collection
    hit = store.search(enc.encode(["glaciers"])[0], k=1)[0]
    assert hit.doc_id == "doc-20"

    # after the swap the old workers still write the old collection only
    send(producer, topic, [("doc-5", 2, Op.UPSERT, "Rewritten: tax returns are due in April.")])
    wait_for(lambda: old.get_states(["doc-5"])["doc-5"].version == 2, 60, what="the old worker to apply doc-5 v2")
    assert store.get_states(["doc-5"])["doc-5"].version == 1
    with pytest.raises(ReindexError, match="active"):
        rx.finish()  # the old worker is still running
    assert worker.stop() == 0, worker.log()[-2000:]
    wait_for(lambda: group_activity(settings, settings.app_id).active is False, 30, what="the group to empty")
    committed_before = committed_offsets(settings, settings.app_id, topic, list(range(8)))
    rx.finish()
    assert rx.state["phase"] == "finished"
    assert store.get_states(["doc-5"])["doc-5"].version == 2
    assert committed_offsets(settings, settings.app_id, topic, list(range(8))) == committed_before

    # identical to an index built from scratch with the new model (third data dir)
    fresh_settings = settings.replace(data_dir=str(tmp_path / "fresh"))
    fresh = open_target(fresh_settings, encoder=encoder_fp32)
    assert Replayer.start(fresh_settings, ReplayRange(), processor=fresh, name="fresh", dlq=False).run().complete
    got, want = snapshot(store, docs), snapshot(fresh.store, docs)
    assert got == want
    assert got["doc-2"][1] and got["doc-3"][1] and got["doc-1"][0] == 2 and len(got["doc-4"][4]) > 1
    assert fresh.store.count() == store.count()

    # rollback after finish: the old collection first catches up on what only the new side saw
    send(producer, topic, [("doc-6", 2, Op.UPSERT, "Rewritten: football tactics changed.")])
    rx.rollback()
    assert rx.state["phase"] == "rolled-back"
    enc, back = resolve_search_target(settings, encoders)
    assert enc.fingerprint == encoder.fingerprint and back.collection == old.collection
    assert back.get_states(["doc-6"])["doc-6"].version == 2
    assert {d: s[:4] if s else None for d, s in snapshot(back, docs).items() if d != "doc-6"} == \
        {d: s[:4] if s else None for d, s in snapshot(fresh.store, docs).items() if d != "doc-6"}


def test_chunking_reindex_swap_rollback_and_cli(settings, producer, encoder, monkeypatch, capsys):
    topic = settings.changes_topic
    send(producer, topic, [("long", 1, Op.UPSERT, LONG)] +
         [(f"n-{i}", 1, Op.UPSERT, f"A short note about {t}.") for i, t in enumerate(TOPICS[:6])])
    # the "live" collection, built the way the worker would (its store creates the alias)
    live = open_target(settings, encoder=encoder)
    assert Replayer.start(settings, ReplayRange(), processor=live, name="live").run().complete
    old_chunks = len(live.store.chunk_rows("long"))

    rx = Reindex(settings, encoders={"int8": encoder})
    with pytest.raises(ReindexError, match="live one"):
        rx.start()  # same model, same chunking: nothing to build
    st = rx.start(chunk_tokens=64, chunk_overlap=8)
    assert st["phase"] == "ready"
    assert rx.state["new"]["collection"] == collection_name("embedstream_c64o8", encoder.fingerprint)

    for k in [k for k in os.environ if k.startswith("EMBEDSTREAM_")]:
        monkeypatch.delenv(k)
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    from app.cli import main

    assert main(["reindex", "status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["phase"] == "ready" and shown["new"]["documents"] == shown["old"]["documents"] == 7
    assert shown["alias_target"] == live.store.collection

    assert main(["reindex", "swap"]) == 0
    assert "check queries: ok" in capsys.readouterr().out
    enc, store = resolve_search_target(settings, {"int8": encoder})
    assert store.collection == collection_name("embedstream_c64o8", encoder.fingerprint)
    assert len(store.chunk_rows("long")) > old_chunks  # answered by the re-chunked collection
    assert main(["reindex", "rollback"]) == 0
    capsys.readouterr()
    enc, store = resolve_search_target(settings, {"int8": encoder})
    assert store.collection == live.store.collection and len(store.chunk_rows("long")) == old_chunks
    assert main(["reindex", "swap"]) == 1  # rolled back: start a new reindex instead
    assert "rolled-back" in capsys.readouterr().err


def test_lancedb_alias_pointer(tmp_path):
    path = tmp_path / "lancedb"
    a = LanceDBStore(path, "fp-A", 4)
    assert a.alias_target() == a.collection and a.alias_record()["fingerprint"] == "fp-A"
    b = LanceDBStore(path, "fp-B", 4)
    assert b.alias_target() == a.collection  # an existing alias is never repointed on open
    b.point_alias()
    assert a.alias_target() == b.collection and read_alias(path, "embedstream")["fingerprint"] == "fp-B"
    b.point_alias(a.collection)  # the fingerprint is read from the target's tables
    assert read_alias(path, "embedstream") | {"updated_ms": 0} == \
        {"collection": a.collection, "fingerprint": "fp-A", "prefix": "embedstream", "updated_ms": 0}
    with pytest.raises(FingerprintMismatch):
        b.point_alias(a.collection, fingerprint="fp-B")
    with pytest.raises(PermanentStoreError):
        b.point_alias("embedstream__000000000000")
    c = LanceDBStore(path, "fp-C", 4, collection_prefix="other")
    data = json.loads((path / "aliases.json").read_text())
    assert data["format"] == "embedstream.lancedb-aliases/1"
    assert set(data["aliases"]) == {"embedstream", "other"} and c.alias_target() == c.collection
    assert not list(path.glob(".aliases.json.*"))  # no temporary files left
    # fingerprints of the model variants are known without loading a model
    assert variant_fingerprint("fp32").split(":")[1] == "fp32"
    v = np.zeros(4, dtype=np.float32)
    assert a.search(v, k=1) == []

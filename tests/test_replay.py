"""`embedstream replay`: offset and time ranges, dry run, interrupt + resume, Weaviate target.

Real Kafka (and Tansu for the marked tests), real LanceDB files, the real int8 encoder. The live group's committed
offsets (settings.app_id) are set with AdminClient and must not move.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.events import ChangeEvent, EventCodec, Op
from app.offsets import committed_offsets, reset_offsets
from app.replay import ProgressDisplay, Replayer, ReplayRange, open_target
from app.store.lancedb import LanceDBStore
from conftest import REPO, both_brokers, settings_env, wait_for

DAY = 86_400_000
T0 = 1_672_531_200_000  # 2023-01-01T00:00:00Z: record times far from the broker's write times


def produce(producer, topic, items):
    """items: (doc, version, op, text, ts_ms); version None = tombstone. Returns [(p, offset, doc)]."""
    codec = EventCodec()
    delivered = []

    def cb(err, msg):
        assert err is None, err
        delivered.append((msg.partition(), msg.offset(), msg.key().decode()))

    for doc, v, op, text, ts in items:
        value = None if v is None else codec.encode(ChangeEvent(doc, op, v, ts, text, {"v": str(v)}))
        producer.produce(topic, key=doc.encode(), value=value, timestamp=ts, on_delivery=cb)
    producer.flush(10)
    return sorted(delivered)


def expected_state(items):
    """Per-document final state under the Processor's version rules: doc -> (version, deleted, text)."""
    st: dict[str, tuple[int, bool, str | None]] = {}
    for doc, v, op, text, _ in items:
        cur = st.get(doc)
        if v is None:  # tombstone: delete whatever is stored
            if cur is not None:
                st[doc] = (cur[0], True, None)
        elif op is Op.DELETE:
            if cur is None or v >= cur[0]:
                st[doc] = (v, True, None)
        elif cur is None or v > cur[0]:
            st[doc] = (v, False, text)
    return st


def store_state(store, docs):
    states = store.get_states(docs)
    out = {}
    for d in docs:
        s = states.get(d)
        if s is None:
            assert store.chunk_rows(d) == [], d
            continue
        rows = store.chunk_rows(d)
        text = " ".join(r["text"] for r in rows) if rows else None
        assert len(rows) == s.chunk_count and (not s.deleted or not rows), (d, s, rows)
        out[d] = (s.version, s.deleted, text)
    return out


def lance(settings, encoder, prefix="embedstream"):
    return LanceDBStore(Path(settings.data_dir) / "lancedb", encoder.fingerprint, encoder.dim,
                        collection_prefix=prefix, create=False)


def live_offsets(settings):
    return committed_offsets(settings, settings.app_id, settings.changes_topic, list(range(8)))


@pytest.fixture
def history(settings, producer):
    """Three days of changes with updates, deletes, a tombstone, a stale event and a late record."""
    a = [(f"doc-{i}", 1, Op.UPSERT, f"Day one text of document {i} about gardens.", T0 + i * 1000)
         for i in range(8)]
    b = [("doc-1", 2, Op.UPSERT, "Day two: document 1 rewritten about rivers.", T0 + DAY),
         ("doc-2", 2, Op.DELETE, None, T0 + DAY + 1000),
         ("doc-3", None, Op.DELETE, None, T0 + DAY + 2000),
         ("doc-8", 1, Op.UPSERT, "Day two: a new document about volcanoes.", T0 + DAY + 3000),
         ("doc-4", 0, Op.UPSERT, "stale: must never win", T0 + DAY + 4000)]
    c = [("doc-1", 3, Op.UPSERT, "Day three: document 1 about mountains.", T0 + 2 * DAY),
         ("doc-9", 1, Op.UPSERT, "Day three: document 9 about deserts.", T0 + 2 * DAY + 1000),
         # a late record: produced last, timestamped inside day two
         ("doc-5", 2, Op.UPSERT, "Late: document 5 timestamped on day two.", T0 + DAY + 5000)]
    # the live worker's group "has committed" somewhere: replays must never move it
    reset_offsets(settings, settings.app_id, settings.changes_topic, {p: 1 for p in range(8)})
    da = produce(producer, settings.changes_topic, a)
    db = produce(producer, settings.changes_topic, b)
    dc = produce(producer, settings.changes_topic, c)
    return a, b, c, da, db, dc


@both_brokers()
def test_offset_range_time_range_and_dry_run(settings, history, encoder, capsys, broker):
    a, b, c, da, db, dc = history
    before = live_offsets(settings)
    assert before == {p: 1 for p in range(8)}
    docs = [f"doc-{i}" for i in range(10)]

    # dry run: counts per partition and op, nothing written, no checkpoint
    dry = Replayer.start(settings, ReplayRange(), dry_run=True).run()
    ops = {}
    for d in dry.partitions.values():
        for k, v in d.get("ops", {}).items():
            ops[k] = ops.get(k, 0) + v
    assert dry.complete and dry.records == 16
    assert ops == {"UPSERT": 14, "DELETE": 1, "TOMBSTONE": 1}
    assert not (Path(settings.data_dir) / "lancedb").exists() and not (Path(settings.data_dir) / "replay").exists()

    # offset range: everything of days one and two (end offsets exclusive, per partition)
    ends: dict[int, int] = {}
    for p, o, _ in da + db:
        ends[p] = max(ends.get(p, 0), o + 1)
    proc = open_target(settings, encoder=encoder)
    rep = Replayer.start(settings, ReplayRange(from_offsets=0, to_offsets=ends), processor=proc, name="days12",
                         batch_size=4).run()
    assert rep.complete and rep.records == len(a) + len(b)
    assert store_state(proc.store, docs) == expected_state(a + b)
    ckpt = json.loads((Path(settings.data_dir) / "replay" / "days12.json").read_text())
    assert ckpt["complete"] and {int(p): d["next"] for p, d in ckpt["partitions"].items()} == ends

    # time range [day two, day three): day two's records plus the late one, nothing else,
    # although offsets_for_times on Tansu knows only write times (all far after these)
    s2 = settings.replace(collection_prefix="timerange")
    proc2 = open_target(s2, encoder=encoder)
    rng = ReplayRange(from_ms=T0 + DAY, to_ms=T0 + 2 * DAY)
    rep2 = Replayer.start(s2, rng, processor=proc2, name="day2", batch_size=4).run()
    in_range = [x for x in a + b + c if T0 + DAY <= x[4] < T0 + 2 * DAY]
    assert rep2.complete and rep2.records == len(in_range) == 6
    # every record read from a partition's start to its end is either replayed or filtered out
    assert all(d["records"] + d["filtered"] == d["end"] - d["start"] for d in rep2.partitions.values())
    if broker.kind == "tansu":
        # offsets_for_times on Tansu knows only write times: the start steps back to the beginning
        assert rep2.filtered == 16 - 6
    else:
        # Kafka's offsets_for_times is exact: each partition starts at its first record of day two
        first = {}
        for (p, off, _), item in zip(da + db + dc, a + b + c):
            if item[4] >= T0 + DAY:
                first[p] = min(first.get(p, off), off)
        assert {p: d["start"] for p, d in rep2.partitions.items() if p in first} == first
    assert store_state(proc2.store, docs) == expected_state(in_range)

    # the CLI's dry run: counts per partition and op for a partition subset, nothing written
    from app.cli import main

    env = settings_env(settings)
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        p0 = da[0][0]
        assert main(["replay", "--dry-run", "--partitions", str(p0), "--json", "--quiet"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    shown = json.loads(capsys.readouterr().out)
    assert shown["dry_run"] and shown["complete"] and list(shown["partitions"]) == [str(p0)]
    assert shown["records"] == sum(1 for p, _, _ in da + db + dc if p == p0)

    # the live group's committed offsets did not move
    assert live_offsets(settings) == before


def test_interrupt_and_resume_equals_uninterrupted(settings, history, encoder, tmp_path):
    a, b, c, *_ = history
    docs = [f"doc-{i}" for i in range(10)]
    proc = open_target(settings, encoder=encoder)
    seen = []
    r = Replayer.start(settings, ReplayRange(), processor=proc, name="resumable", batch_size=3, max_records=5,
                       on_batch=lambda rp, res: seen.append(res.records))
    first = r.run()
    assert not first.complete and first.interrupted and 5 <= first.records < 16
    ckpt = Path(first.checkpoint)
    state = json.loads(ckpt.read_text())
    assert not state["complete"] and sum(d["records"] for d in state["partitions"].values()) == first.records

    resumed = Replayer.resume(settings, ckpt, processor=proc, batch_size=3).run()
    assert resumed.complete and resumed.records == 16  # cumulative over both runs

    # the same replay, uninterrupted, into another data dir
    s_ref = settings.replace(data_dir=str(tmp_path / "reference"))
    ref = open_target(s_ref, encoder=encoder)
    assert Replayer.start(s_ref, ReplayRange(), processor=ref, name="all").run().complete
    assert store_state(proc.store, docs) == store_state(ref.store, docs) == expected_state(a + b + c)

    # a checkpoint refuses another target
    other = open_target(settings.replace(collection_prefix="other"), encoder=encoder)
    with pytest.raises(Exception, match="collection"):
        Replayer.resume(settings, ckpt, processor=other)


def test_cli_sigint_stops_cleanly_and_resumes(settings, history, encoder):
    a, b, c, *_ = history
    env = settings_env(settings)
    before = live_offsets(settings)
    cmd = [sys.executable, "-m", "app", "replay", "--name", "cli", "--batch-size", "2", "--max-rate", "4",
           "--progress-interval", "0.5"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = Path(settings.data_dir) / "replay" / "cli.json"
    wait_for(lambda: ckpt.exists() and sum(d["records"] for d in json.loads(ckpt.read_text())["partitions"].values())
             >= 2, 60, what="the first checkpointed batch")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "stopping after the current batch" in err and "--resume" in err
    assert "replay:" in err and "ETA" in err  # plain progress lines (not a TTY)
    state = json.loads(ckpt.read_text())
    assert not state["complete"]
    done = sum(d["records"] for d in state["partitions"].values())
    assert 2 <= done < 16

    # the same command again resumes the named checkpoint (here in-process)
    from app.cli import main

    old_env = dict(os.environ)
    try:
        os.environ.update(env)
        assert main(["replay", "--name", "cli", "--quiet"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    state = json.loads(ckpt.read_text())
    assert state["complete"] and sum(d["records"] for d in state["partitions"].values()) == 16
    docs = [f"doc-{i}" for i in range(10)]
    assert store_state(lance(settings, encoder), docs) == expected_state(a + b + c)
    assert live_offsets(settings) == before


def test_progress_display_plain_lines():
    import io

    from app.replay import PartitionPlan

    buf = io.StringIO()
    pd = ProgressDisplay(stream=buf, interval_s=0, tty=False)
    plans = {0: PartitionPlan(start=0, end=100, end_method="fetch", next=0),
             1: PartitionPlan(start=10, end=10, end_method="fetch", next=10, done=True)}
    pd.begin(plans)
    time.sleep(0.05)
    plans[0].next = 50
    pd.update(plans, applied=50)
    text = buf.getvalue()
    assert "replay: 50/100 offsets" in text and "p0" in text and "50.0%" in text and "ETA" in text
    assert "\x1b[" not in text
    tty = io.StringIO()
    pd = ProgressDisplay(stream=tty, interval_s=0, tty=True)
    pd.begin(plans)
    pd.update(plans)
    pd.update(plans)
    assert "\x1b[3F" in tty.getvalue()  # redrawn in place


def test_replay_into_weaviate(settings, producer, encoder, real_weaviate):
    """Replay into a real Weaviate (API-key auth), then blue/green reindex through its alias."""
    from app.reindex import alias_record, resolve_search_target
    from tests.store.real_weaviate import unique_prefix

    items = [("w-1", 1, Op.UPSERT, "Glaciers carve valleys over thousands of years.", T0),
             ("w-2", 1, Op.UPSERT, "Espresso is brewed by forcing hot water through coffee.", T0 + 1),
             ("w-3", 1, Op.UPSERT, "To be deleted.", T0 + 2),
             ("w-3", 2, Op.DELETE, None, T0 + 3),
             ("w-1", 2, Op.UPSERT, "Glaciers carve U-shaped valleys.", T0 + 4)]
    produce(producer, settings.changes_topic, items)
    producer.produce(settings.changes_topic, key=b"bad", value=b"\x07garbage", headers=[("trace", b"t-1")])
    producer.flush(10)
    prefix = unique_prefix("EsReplay")
    try:
        s = settings.replace(store="weaviate", weaviate_url=real_weaviate.url, weaviate_grpc_port=real_weaviate.grpc_port,
                             weaviate_api_key=real_weaviate.api_key or "", collection_prefix=prefix,
                             weaviate_timeout_s=20)
        proc = open_target(s, encoder=encoder)
        try:
            rep = Replayer.start(s, ReplayRange(), processor=proc, name="wv").run()
            assert rep.complete and rep.records == 6 and rep.dead_letters == 1
            st = proc.store.get_states(["w-1", "w-2", "w-3"])
            assert st["w-1"].version == 2 and not st["w-1"].deleted
            assert st["w-3"].deleted and proc.store.count_documents() == 2
            assert proc.store.count() == 2
            # the alias the store created carries a collection whose fingerprint search can recover
            rec = alias_record(s)
            assert rec["collection"] == proc.store.collection_name and rec["fingerprint"] == encoder.fingerprint
            enc, store = resolve_search_target(s, encoders={"int8": encoder})
            try:
                hit = store.search(enc.encode(["coffee brewing"])[0], k=1)[0]
                assert hit.doc_id == "w-2"
            finally:
                store.close()

            # blue/green on Weaviate (new chunking): the alias is repointed and back
            from app.reindex import Reindex

            rx = Reindex(s, encoders={"int8": encoder})
            assert rx.start(chunk_tokens=64, chunk_overlap=8)["phase"] == "ready"
            new = rx.state["new"]["collection"]
            assert new.startswith(f"{prefix}_c64o8_") and rx.state["old"]["collection"] == proc.store.collection_name
            assert all(c.ok for c in rx.swap())
            assert alias_record(s)["collection"] == new
            enc, store = resolve_search_target(s, encoders={"int8": encoder})
            try:
                assert store.collection_name == new and store.count_documents() == 2
                assert store.search(enc.encode(["coffee brewing"])[0], k=1)[0].doc_id == "w-2"
            finally:
                store.close()
            rx.rollback()
            assert alias_record(s)["collection"] == proc.store.collection_name
        finally:
            proc.store.close()
    finally:
        real_weaviate.drop_prefix(prefix)
    # the dead letter went to the DLQ with its headers
    from conftest import consume_all

    [dl] = consume_all(settings.bootstrap_servers, settings.dlq_topic, 1)
    h = dict(dl.headers())
    assert dl.value() == b"\x07garbage" and h["trace"] == b"t-1" and h["x-dlq-reason"] == b"unknown-magic-byte"
    assert h["x-dlq-source-topic"] == settings.changes_topic.encode()

"""Crash harness: kill -9 the worker at random moments while a keyed change stream flows,
then check that the store converged to exactly the state the event log implies.

    python -m load.crash_harness --events 50000 --kills 20 --seed 1     # full run (not CI)
    python -m load.crash_harness --events 1500 --kills 3 --docs 80      # what tests/test_crash.py runs
    python -m load.crash_harness --bootstrap-servers HOST:PORT ...      # against a running broker

    python -m load.crash_harness --broker-kills 3 ...                   # also SIGKILL + restart Kafka
    python -m load.crash_harness --broker tansu ...                     # on the embedded Tansu broker
    python -m load.crash_harness --store weaviate ...                   # into a real Weaviate

The CLI starts its own Apache Kafka (``load.servers.kafka.KafkaServer``; ``--broker tansu``: the
embedded Tansu broker of ``embedstream dev``), creates
unique topics with ``app.topics.create_topics`` and a fresh data directory. The worker is
``python -m app worker`` as a subprocess (as in production), configured through
``EMBEDSTREAM_*`` like ``tests/conftest.py`` does, writing LanceDB files (``--store weaviate``:
into a real Weaviate the harness starts with ``load.servers.weaviate.WeaviateServer``, API-key auth
on; ``--weaviate-url``: an external one, whose collections it drops afterwards).

What happens (:func:`run_crash_harness`):

1. A seeded stream of N events over a few hundred doc ids is generated with the real
   codec (``EventCodec().encode(ChangeEvent(...))``): new documents, updates with new text
   (20 to 900 words: one chunk to five chunks of 256 tokens, so updates grow and shrink the
   chunk count), newer versions with unchanged text (vector reuse), reverts to an earlier
   text, exact re-sends of the latest event (duplicates), re-sends of older events (stale),
   ``op=DELETE`` with a newer version, tombstones (null value) and a little undecodable junk
   (dead-letter topic). Versions increase per document.
2. A background thread produces the stream (rate-limited, so it spans the kill phase) with
   an idempotent librdkafka producer; delivery reports give every event's partition/offset.
3. The worker is killed with SIGKILL ``kills`` times, each time after the current
   incarnation logged progress (a processed batch) plus a random delay, and restarted.
   Its first stop (``sigterm_at``) is a SIGTERM instead, while a backlog is being processed:
   the worker must exit 0; every event it logged as processed must be committed (committed
   offsets advanced by at least that many); and - as no kill -9 came before, so no
   uncommitted writes of a killed worker can be ahead of the committed offsets - the store at
   that moment must equal exactly the state of the *committed* prefix of the log (the
   in-flight batch was finished and committed, nothing processed is uncommitted, nothing
   committed is missing).
4. Drain: the worker runs until the group's committed offsets equal the end offsets of
   every partition (from the delivery reports; Tansu's ListOffsets(latest) is wrong), then
   it is stopped with SIGTERM.
5. Check: the expected final state is computed from the log in offset order with the
   documented rules (highest version wins; DELETE / tombstone delete; a tombstone keeps the
   version; a lower version never overwrites; the same version with the same content is a
   duplicate) and compared with the LanceDB files: every live document has a state with the
   expected version / content hash / chunk count, chunks 0..n-1 exactly, each carrying the
   expected version, hash, text, metadata and (``verify_vectors``) a vector equal to a fresh
   encoding of the expected chunk; deleted documents have no chunk and a deleted state with the
   expected version; no chunk id appears twice; ``count()`` equals the sum of the expected
   chunk counts. The dead-letter topic holds every junk record (at least once) and nothing else.

Runtime (this 2-core machine, shared; int8 encoder at ~100 short / ~20 full 256-token chunks
per second): each SIGKILL costs ~10-15 s (restart, model load, the dead member's 6 s session
timeout, rejoin) during which the backlog grows; the worker then processes ~150 events/s (256-event
batches of ~1.5 s, most of it encoding). The full run (50 000 events, 20 kills, rate 208/s) measured
13 min: 4 min producing and killing, 8 min draining the backlog, ~20 s checking. The CI variant
(1 500 events, 3 kills, 31 events/s) takes 60-90 s.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from load.procs import exit_on_sigterm, stop_process

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "app" / "data" / "sample_corpus.jsonl"
BASE_TIME_MS = 1_700_000_000_000
#: a stored vector counts as "the vector of this chunk" above this cosine to a fresh encoding
VECTOR_COSINE_MIN = 0.995

# ----------------------------------------------------------------------------------------
# the event stream


@dataclass
class GenEvent:
    """One generated record, in produce order."""

    idx: int
    doc_id: str
    kind: str  # new | update | same | revert | dup | stale | delete | tombstone | junk
    key: bytes | None
    value: bytes | None
    #: what the record means (None for junk; tombstones: op DELETE, version None)
    event: object | None
    partition: int = -1
    offset: int = -1


def vocabulary() -> list[str]:
    words: set[str] = set()
    for line in CORPUS.read_text().splitlines():
        if line.strip():
            words.update(re.findall(r"[a-z]+", json.loads(line)["text"].lower()))
    return sorted(words)


def make_text(rng: random.Random, vocab: list[str]) -> str:
    """20-900 words, mostly short (encoding is the expensive part of the run)."""
    r = rng.random()
    if r < 0.82:
        n = rng.randint(20, 60)        # one chunk
    elif r < 0.96:
        n = rng.randint(100, 260)      # one or two chunks
    else:
        n = rng.randint(400, 900)      # three to five chunks
    return " ".join(rng.choice(vocab) for _ in range(n))


#: relative weights of what happens to a known document
KIND_WEIGHTS = {"update": 28, "same": 8, "revert": 4, "dup": 18, "stale": 12, "delete": 6, "tombstone": 7,
                "junk": 1.5}


def generate_events(n: int, n_docs: int, seed: int, hot_docs: int = 10,
                    weights: dict[str, float] | None = None) -> list[GenEvent]:
    """A reproducible keyed change stream of ``n`` records over ``n_docs`` documents.

    ``weights`` (default :data:`KIND_WEIGHTS`) mixes what happens to a known document.
    """
    from app.events import ChangeEvent, EventCodec, Op

    codec = EventCodec()
    rng = random.Random(seed)
    vocab = vocabulary()
    docs = [f"doc-{i:04d}" for i in range(n_docs)]
    version: dict[str, int] = {}
    live_text: dict[str, str | None] = {}
    texts: dict[str, list[str]] = collections.defaultdict(list)
    sent: dict[str, list[tuple[bytes | None, object]]] = collections.defaultdict(list)
    kinds, weights = zip(*(weights or KIND_WEIGHTS).items())
    out: list[GenEvent] = []

    def upsert(doc: str, text: str, kind: str, i: int) -> GenEvent:
        version[doc] = version.get(doc, 0) + rng.choice((1, 1, 1, 2, 5))
        ev = ChangeEvent(doc, Op.UPSERT, version[doc], BASE_TIME_MS + i, text, {"gen": str(i), "kind": kind},
                         event_id=f"e{i}", source="crash-harness")
        live_text[doc] = text
        if not texts[doc] or texts[doc][-1] != text:
            texts[doc].append(text)
        return GenEvent(i, doc, kind, doc.encode(), codec.encode(ev), ev)

    for i in range(n):
        doc = rng.choice(docs[:hot_docs]) if rng.random() < 0.2 else rng.choice(docs)
        if not sent[doc]:
            r = rng.random()
            if r < 0.03:   # tombstone of a document never stored: nothing to delete
                ev = ChangeEvent(doc, Op.DELETE, None, 0)
                g = GenEvent(i, doc, "tombstone", doc.encode(), None, ev)
            elif r < 0.05:  # op=DELETE of a document never stored: a deleted state
                version[doc] = version.get(doc, 0) + 1
                ev = ChangeEvent(doc, Op.DELETE, version[doc], BASE_TIME_MS + i, None, {"gen": str(i)})
                g = GenEvent(i, doc, "delete", doc.encode(), codec.encode(ev), ev)
                live_text[doc] = None
            else:
                g = upsert(doc, make_text(rng, vocab), "new", i)
        else:
            kind = rng.choices(kinds, weights)[0]
            cur = live_text.get(doc)
            if kind == "same" and cur is None:
                kind = "update"
            if kind == "revert":
                older = [t for t in texts[doc] if t != cur]
                kind = "revert" if older else "update"
            if kind == "stale" and len(sent[doc]) < 2:
                kind = "dup"
            if kind == "update":
                g = upsert(doc, make_text(rng, vocab), kind, i)
            elif kind == "same":
                g = upsert(doc, cur, kind, i)
            elif kind == "revert":
                g = upsert(doc, rng.choice([t for t in texts[doc] if t != cur]), kind, i)
            elif kind == "dup":
                value, ev = sent[doc][-1]
                g = GenEvent(i, doc, kind, doc.encode(), value, ev)
            elif kind == "stale":
                value, ev = rng.choice(sent[doc][:-1])
                g = GenEvent(i, doc, kind, doc.encode(), value, ev)
            elif kind == "delete":
                version[doc] = version.get(doc, 0) + rng.choice((1, 2))
                ev = ChangeEvent(doc, Op.DELETE, version[doc], BASE_TIME_MS + i, None, {"gen": str(i)})
                g = GenEvent(i, doc, kind, doc.encode(), codec.encode(ev), ev)
                live_text[doc] = None
            elif kind == "tombstone":
                g = GenEvent(i, doc, kind, doc.encode(), None, ChangeEvent(doc, Op.DELETE, None, 0))
                live_text[doc] = None
            else:  # junk: not Avro at all -> dead letter
                g = GenEvent(i, doc, "junk", doc.encode(), b"\x07junk " + rng.randbytes(rng.randint(0, 40)), None)
        if g.kind != "junk":
            sent[doc].append((g.value, g.event))
        out.append(g)
    return out


# ----------------------------------------------------------------------------------------
# the expected state


@dataclass
class Expected:
    """What the store must hold for one document after the events applied so far."""

    version: int | None = None
    live: bool = False
    text: str | None = None
    metadata: dict = field(default_factory=dict)


def apply_event(exp: Expected, ev) -> None:
    """The documented rules, independent of batching."""
    from app.events import Op

    if ev.version is None:                      # tombstone: delete, keep the version
        exp.live, exp.text = False, None
        return
    if ev.op is Op.DELETE:
        if exp.version is None or ev.version >= exp.version:
            exp.version, exp.live, exp.text = ev.version, False, None
        return
    if exp.version is None or ev.version > exp.version:
        exp.version, exp.live, exp.text, exp.metadata = ev.version, True, ev.text, dict(ev.metadata)
    # same version: duplicate (same text), stale (deleted at that version) or conflict: no change


def expected_state(events: list[GenEvent], committed: dict[int, int] | None = None) -> dict[str, Expected]:
    """Apply the delivered events in log order; with ``committed``, only offsets below it."""
    state: dict[str, Expected] = {}
    for g in sorted((g for g in events if g.offset >= 0), key=lambda g: (g.partition, g.offset)):
        if g.event is None:
            continue
        if committed is not None and g.offset >= committed.get(g.partition, 0):
            continue
        apply_event(state.setdefault(g.doc_id, Expected()), g.event)
    return state


# ----------------------------------------------------------------------------------------
# the store


@dataclass
class Snapshot:
    states: dict  # doc_id -> DocState
    rows: list[dict]  # every chunk row (no vectors)
    count: int


def open_store(where, encoder):
    """The worker's store: ``where`` is the settings (LanceDB or Weaviate, as configured) or a data
    directory (LanceDB)."""
    from app.components import open_store as open_configured

    if isinstance(where, (str, Path)):
        from app.store.lancedb import LanceDBStore

        return LanceDBStore(Path(where) / "lancedb", encoder.fingerprint, encoder.dim, create=False)
    return open_configured(where, encoder.fingerprint, encoder.dim, create=False)


def snapshot(store, doc_ids) -> Snapshot:
    """The whole store: states of ``doc_ids`` and every chunk row (one scan, not one per doc)."""
    return Snapshot(store.get_states(list(doc_ids)), store.all_chunk_rows(), store.count())


@dataclass
class Check:
    docs: int = 0
    live: int = 0
    deleted: int = 0
    chunks: int = 0
    vectors: int = 0
    mismatches: list[str] = field(default_factory=list)
    kinds: collections.Counter = field(default_factory=collections.Counter)

    def bad(self, kind: str, msg: str) -> None:
        self.kinds[kind] += 1
        self.mismatches.append(f"{kind}: {msg}")


def compare(expected: dict[str, Expected], snap: Snapshot, chunker, check: Check | None = None) -> Check:
    """Compare a store snapshot with the expected state (see the module docstring)."""
    check = check or Check()
    by_doc: dict[str, list[dict]] = collections.defaultdict(list)
    ids = collections.Counter()
    for r in snap.rows:
        by_doc[r["doc_id"]].append(r)
        ids[r["id"]] += 1
    for cid, n in ids.items():
        if n > 1:
            check.bad("duplicate-row", f"chunk id {cid} stored {n} times")
    total = 0
    for doc, exp in sorted(expected.items()):
        check.docs += 1
        st = snap.states.get(doc)
        rows = sorted(by_doc.pop(doc, []), key=lambda r: r["chunk_index"])
        if not exp.live:
            check.deleted += 1
            if rows:
                check.bad("deleted-present", f"{doc}: deleted (v{exp.version}) but {len(rows)} chunk(s) of "
                                             f"v{sorted({r['version'] for r in rows})} stored")
            if st is not None and not st.deleted:
                check.bad("deleted-present", f"{doc}: deleted (v{exp.version}) but state is live v{st.version}")
            elif exp.version is not None and (st is None or st.version != exp.version):
                check.bad("tombstone-state", f"{doc}: expected a deleted state at v{exp.version}, store has "
                                             f"{'none' if st is None else f'v{st.version}'}")
            continue
        check.live += 1
        chunks = chunker.chunk(exp.text)
        n = len(chunks)
        total += n
        h = chunker.content_hash(exp.text)
        meta = json.dumps(exp.metadata, sort_keys=True)
        if st is None or st.deleted:
            check.bad("lost", f"{doc}: expected live v{exp.version} ({n} chunks), state "
                              f"{'missing' if st is None else f'deleted v{st.version}'}, {len(rows)} chunk(s)")
            continue
        if st.version != exp.version:
            check.bad("stale-version", f"{doc}: state v{st.version}, expected v{exp.version}")
        if st.content_hash != h or st.chunk_count != n:
            check.bad("state-content", f"{doc}: state hash/chunk_count {st.content_hash[:8]}/{st.chunk_count}, "
                                       f"expected {h[:8]}/{n}")
        if [r["chunk_index"] for r in rows] != list(range(n)):
            check.bad("chunk-indices", f"{doc} v{exp.version}: chunk indices {[r['chunk_index'] for r in rows]}, "
                                       f"expected 0..{n - 1}")
        for r in rows:
            check.chunks += 1
            i = r["chunk_index"]
            if r["version"] != exp.version:
                check.bad("stale-version", f"{doc}#{i}: chunk v{r['version']}, expected v{exp.version}")
            if r["content_hash"] != h or r["chunk_count"] != n:
                check.bad("chunk-content", f"{doc}#{i}: hash/chunk_count {r['content_hash'][:8]}/{r['chunk_count']},"
                                           f" expected {h[:8]}/{n}")
            elif i < n and r["text"] != chunks[i].text:
                check.bad("chunk-text", f"{doc}#{i}: stored text differs from the expected chunk")
            if r["metadata_json"] != meta:
                check.bad("metadata", f"{doc}#{i}: metadata {r['metadata_json'][:80]}, expected {meta[:80]}")
    for doc, rows in by_doc.items():
        check.bad("orphan", f"{doc}: {len(rows)} chunk(s) of a document the log never mentions")
    if snap.count != total:
        check.bad("count", f"store.count() = {snap.count}, expected {total} chunks")
    return check


def check_vectors(expected: dict[str, Expected], store, encoder, chunker, check: Check) -> None:
    """Every live chunk's stored vector must be the encoding of its expected text."""
    import numpy as np

    from app.store.base import chunk_uuid

    for doc, exp in sorted(expected.items()):
        if not exp.live:
            continue
        chunks = chunker.chunk(exp.text)
        ids = [chunk_uuid(doc, c.index) for c in chunks]
        stored = store.fetch_vectors(ids)
        fresh, _ = encoder.encode_tokens([c.token_ids for c in chunks])
        for c, cid, v in zip(chunks, ids, fresh):
            got = stored.get(cid)
            if got is None:
                continue  # reported by compare()
            check.vectors += 1
            cos = float(np.dot(got, v))
            if not cos >= VECTOR_COSINE_MIN:
                check.bad("vector", f"{doc}#{c.index}: stored vector is not this chunk's (cosine {cos:.3f})")


# ----------------------------------------------------------------------------------------
# worker processes and offsets


def worker_env(settings, **extra) -> dict[str, str]:
    """The worker's environment: ``EMBEDSTREAM_*`` from settings (as tests/conftest.py does)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    names = {f.name for f in fields(settings)}
    for f in ("bootstrap_servers", "data_dir", "app_id", "changes_topic", "alerts_topic", "dlq_topic",
              "batch_max_wait_s", "batch_max_events", "store", "model_variant", "weaviate_url",
              "weaviate_grpc_port", "collection_prefix", "metrics_port", "session_timeout_s",
              "heartbeat_interval_s"):
        if f in names:
            env["EMBEDSTREAM_" + f.upper()] = str(getattr(settings, f))
    if "metrics_port" in names:
        env["EMBEDSTREAM_METRICS_PORT"] = "0"  # several workers on one machine
    if getattr(settings, "weaviate_api_key", ""):
        env["EMBEDSTREAM_WEAVIATE_API_KEY"] = settings.weaviate_api_key
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProc:
    """``python -m app worker`` as a subprocess; one log file per incarnation."""

    def __init__(self, settings, log_path: Path, fault: str = "", **extra_env):
        self.log_path = log_path
        #: ``stage:n`` of load/faults.py: this incarnation raises one plain exception there
        self.fault = fault
        self.env = worker_env(settings, **extra_env)
        cmd = [sys.executable, "-m", "app", "worker"]
        if fault:
            from load.faults import ENV

            self.env[ENV] = fault
            cmd = [sys.executable, "-m", "load.faults"]  # `embedstream worker` with the fault patched in
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(log_path, "ab"),
                                     stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def fault_triggered(self) -> bool:
        return bool(self.fault) and "injected fault at" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def batches(self) -> int:
        return self.log().count("batch events=")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """Model loaded and store open; Faust (and its signal handlers) starts right after."""
        return "worker ready" in self.log()

    def wait_ready(self, timeout: float = 60, settle_s: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive() and not self.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle_s)
        return self.ready()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if not stop_process(self.proc, sig, timeout):
            return -999  # did not exit in time
        return self.proc.returncode


def produce_events(bootstrap: str, topic: str, stream, rate: float, errors: list[str],
                   flush_timeout: float = 120) -> float:
    """Produce the generated events at ``rate``/s (idempotent producer), recording each one's
    partition and offset on delivery; failures go to ``errors``. Returns the seconds it took."""
    from confluent_kafka import Producer

    from app.config import PRODUCER_PARTITIONER

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "partitioner": PRODUCER_PARTITIONER})
    t0 = time.monotonic()
    for i, g in enumerate(stream):
        def cb(err, msg, g=g):
            if err is not None:
                errors.append(f"event {g.idx}: {err}")
            else:
                g.partition, g.offset = msg.partition(), msg.offset()
        while True:
            try:
                p.produce(topic, key=g.key, value=g.value, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        ahead = (i + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    left = p.flush(flush_timeout)
    if left:
        errors.append(f"{left} events not delivered")
    return time.monotonic() - t0


class Offsets:
    """The consumer group's committed offsets (a Consumer that never joins the group)."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        from confluent_kafka import Consumer

        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                  "enable.auto.commit": False})

    def committed(self, partitions) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        tps = self.consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}

    def close(self) -> None:
        self.consumer.close()


def read_dead_letters(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Every record of the (1-partition) dead-letter topic, read until ``expect`` came + 2 s quiet."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out, deadline, quiet_until = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m)
                quiet_until = None
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + 2.0
                if time.monotonic() > quiet_until:
                    break
    finally:
        c.close()
    return out


# ----------------------------------------------------------------------------------------
# the run


@dataclass
class Report:
    events: int = 0
    docs: int = 0
    kinds: dict = field(default_factory=dict)
    kills: int = 0
    kills_mid_batch: int = 0
    #: the broker SIGKILLed and restarted on its log dir (``broker_kills``)
    broker_kills: int = 0
    broker_downtime_s: float = 0.0
    #: worker exits while the broker was down (or just back): fail-closed, restarted, not a failure
    exits_in_broker_outage: list = field(default_factory=list)
    #: faults injected (``stage:n``, one incarnation each) and how each incarnation ended
    faults: list = field(default_factory=list)
    #: incarnations whose injected fault fired and that failed closed (exit 70): expected
    fault_exits: list = field(default_factory=list)
    #: injected faults that never fired (the stage was not reached before the incarnation ended)
    faults_not_fired: list = field(default_factory=list)
    sigterm_exit_codes: list = field(default_factory=list)
    sigterm_committed_prefix_events: int = 0
    unexpected_exits: list = field(default_factory=list)
    batches_logged: int = 0
    retries_logged: int = 0
    docs_checked: int = 0
    live_docs: int = 0
    deleted_docs: int = 0
    chunks_checked: int = 0
    vectors_checked: int = 0
    dead_letters_expected: int = 0
    dead_letters_found: int = 0
    mismatch_kinds: dict = field(default_factory=dict)
    mismatches: list = field(default_factory=list)
    sigterm_mismatches: list = field(default_factory=list)
    produce_s: float = 0.0
    drain_s: float = 0.0
    total_s: float = 0.0
    drained: bool = False
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return (self.drained and not self.mismatches and not self.sigterm_mismatches and not self.unexpected_exits
                and all(rc == 0 for rc in self.sigterm_exit_codes))

    def summary(self, first: int = 10) -> str:
        lines = [
            f"events {self.events} over {self.docs} docs {self.kinds}",
            f"kills (SIGKILL) {self.kills} ({self.kills_mid_batch} with a batch in flight), "
            f"SIGTERM exit codes {self.sigterm_exit_codes}, unexpected exits {self.unexpected_exits}",
            f"broker kills (SIGKILL + restart on its log dir) {self.broker_kills}, "
            f"broker down {self.broker_downtime_s:.0f}s in all, worker exits (restarted) during broker outages "
            f"{self.exits_in_broker_outage}",
            f"faults injected {len(self.faults)}: failed closed (exit 70) {len(self.fault_exits)} "
            f"{self.fault_exits}, not reached {self.faults_not_fired}",
            f"batches logged {self.batches_logged}, store retries logged {self.retries_logged}",
            f"drained {self.drained} (produce {self.produce_s:.0f}s, drain {self.drain_s:.0f}s, "
            f"total {self.total_s:.0f}s)",
            f"checked: {self.docs_checked} documents ({self.live_docs} live, {self.deleted_docs} deleted), "
            f"{self.chunks_checked} chunks, {self.vectors_checked} vectors; dead letters "
            f"{self.dead_letters_found} found / {self.dead_letters_expected} junk records",
            f"SIGTERM check: processed <= committed, store == state of the committed prefix "
            f"({self.sigterm_committed_prefix_events} events): {len(self.sigterm_mismatches)} mismatches",
            f"mismatches: {len(self.mismatches)} {self.mismatch_kinds}",
        ]
        lines += ["  " + m for m in self.mismatches[:first]]
        lines += ["  SIGTERM " + m for m in self.sigterm_mismatches[:first]]
        lines.append(f"RESULT: {'OK' if self.ok else 'FAILED'}   (worker logs: {self.log_dir})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ok"] = self.ok
        return d


def run_crash_harness(settings, *, events: int, kills: int, seed: int = 1, docs: int | None = None,
                      rate: float | None = None, sigterm: bool = True, sigterm_at: int = 0,
                      verify_vectors: bool = True,
                      encoder=None, log_dir: Path | None = None, kill_delay_s: tuple[float, float] = (0.0, 2.5),
                      progress_timeout_s: float = 60.0, drain_timeout_s: float | None = None,
                      broker=None, broker_kills: int = 0, broker_down_s: tuple[float, float] = (1.0, 6.0),
                      faults: Sequence[str] = (), echo: Callable[[str], None] = print) -> Report:
    """Run the crash scenario against ``settings`` (topics must exist). See the module docstring.

    ``broker_kills`` (needs ``broker``, a :class:`load.servers.kafka.KafkaServer`): while the events
    are produced, the broker is SIGKILLed that many times at random moments and restarted on the
    same log dir after ``broker_down_s`` seconds; producer, worker and harness ride it out.

    ``faults`` (``stage:n`` of :mod:`load.faults`): the first ``len(faults)`` worker incarnations
    each raise one plain exception at that stage. Such a worker must fail closed - exit 70 with
    nothing past the failure committed - and the next incarnation must converge; an incarnation
    whose fault fired and that exited otherwise is an unexpected exit (the run fails).
    """
    from app.chunking import Chunker

    t_start = time.monotonic()
    rng = random.Random(seed * 7919 + 1)
    docs = docs or max(20, min(300, events // 150))
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="crash-harness-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report = Report(docs=docs, log_dir=str(log_dir))
    if encoder is None:
        from app.encoder import Encoder

        encoder = Encoder.load("int8")
    chunker = Chunker(encoder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)

    stream = generate_events(events, docs, seed)
    report.events = len(stream)
    report.kinds = dict(collections.Counter(g.kind for g in stream))
    # about 12 s of producing per incarnation (each kill, each injected fault, the SIGTERM check)
    rate = rate or max(20.0, events / max(1, (kills + len(faults) + 1) * 12))
    echo(f"[harness] {len(stream)} events over {docs} docs, {kills} kills, producing at {rate:.0f}/s; "
         f"logs in {log_dir}")

    # -- producer thread ------------------------------------------------------------------
    errors: list[str] = []
    produced = threading.Event()

    def produce() -> None:
        report.produce_s = produce_events(settings.bootstrap_servers, settings.changes_topic, stream, rate, errors)
        produced.set()

    incarnation = [0]
    partitions = range(len(_partitions(settings)))
    offsets = Offsets(settings.bootstrap_servers, settings.app_id, settings.changes_topic)
    committed_at_start: dict[int, int] = {}

    def committed_or_none(parts) -> dict[int, int] | None:
        """Committed offsets, or None while the broker cannot answer (a broker kill)."""
        try:
            return offsets.committed(parts)
        except Exception as exc:  # noqa: BLE001 - KafkaException while the broker restarts
            echo(f"[harness] committed offsets unavailable ({exc}); asking again")
            return None

    def total_committed() -> int:
        while True:
            c = committed_or_none(partitions)
            if c is not None:
                return sum(max(0, v) for v in c.values())
            time.sleep(1.0)

    outages: list[list[float]] = []  # [down at, back at (inf while down)], monotonic

    def in_broker_outage(grace_s: float = 15.0) -> bool:
        now = time.monotonic()
        return any(a <= now <= b + grace_s for a, b in outages)

    def restart_dead(w: WorkerProc) -> None:
        """A worker that exited on its own: its injected fault, an outage exit, or a failure of the run."""
        what = f"{w.log_path.name}: rc {w.proc.returncode}"
        if w.fault_triggered() and w.proc.returncode == 70:
            report.fault_exits.append(f"{w.fault} ({w.log_path.name})")
        elif in_broker_outage():
            report.exits_in_broker_outage.append(what)
        else:
            report.unexpected_exits.append(what + (f" (fault {w.fault})" if w.fault else ""))
        if len(report.unexpected_exits) > 5:
            raise RuntimeError(f"workers keep exiting: {report.unexpected_exits}")
        workers.append(start_worker())

    def kill_broker_repeatedly() -> None:
        # kill times spread over the produce phase; each kill at least 5 s after the broker is back
        t0, produce_s = time.monotonic(), len(stream) / rate
        at = sorted(rng.uniform(0.1, 0.8) * produce_s for _ in range(broker_kills))
        for i, t in enumerate(at):
            time.sleep(max(t - (time.monotonic() - t0), 5.0 if i else 0.0))
            if produced.is_set():
                echo(f"[harness] broker kill {i + 1}/{broker_kills} skipped: producing is over")
                break
            down = rng.uniform(*broker_down_s)
            echo(f"[harness] broker kill {i + 1}/{broker_kills}: SIGKILL, restart in {down:.1f}s")
            t_down = time.monotonic()
            outages.append([t_down, float("inf")])
            broker.kill()
            time.sleep(down)
            broker.start()
            outages[-1][1] = time.monotonic()
            report.broker_kills += 1
            report.broker_downtime_s += time.monotonic() - t_down
            echo(f"[harness] broker back after {time.monotonic() - t_down:.1f}s")

    def start_worker() -> WorkerProc:
        incarnation[0] += 1
        committed_at_start[incarnation[0]] = total_committed()  # the previous incarnation is gone
        fault = faults[incarnation[0] - 1] if incarnation[0] <= len(faults) else ""
        if fault:
            report.faults.append(fault)
            echo(f"[harness] incarnation {incarnation[0]}: fault {fault}")
        return WorkerProc(settings, log_dir / f"worker-{incarnation[0]:02d}.log", fault=fault)

    workers: list[WorkerProc] = []
    sigterm_snapshot = None
    try:
        workers.append(start_worker())
        producer_thread = threading.Thread(target=produce, name="producer", daemon=True)
        producer_thread.start()
        broker_thread = None
        if broker_kills:
            if broker is None:
                raise ValueError("broker_kills needs the broker (a load.servers.kafka.KafkaServer) to kill")
            broker_thread = threading.Thread(target=kill_broker_repeatedly, name="broker-killer", daemon=True)
            broker_thread.start()

        # -- the kill phase ---------------------------------------------------------------
        def caught_up() -> bool:
            ends: dict[int, int] = {}
            for g in stream:
                if g.offset >= 0:
                    ends[g.partition] = max(ends.get(g.partition, 0), g.offset + 1)
            committed = committed_or_none(ends) if ends else {}
            return committed is not None and all(committed.get(p, -1) >= e for p, e in ends.items())

        def wait_progress(w: WorkerProc) -> str:
            """Until this incarnation processed a batch (or has nothing left to process)."""
            deadline, next_check = time.monotonic() + progress_timeout_s, 0.0
            while w.alive() and time.monotonic() < deadline:
                if w.batches() > 0:
                    return "progress"
                if produced.is_set() and time.monotonic() > next_check:
                    next_check = time.monotonic() + 1.0
                    if w.ready() and caught_up():
                        return "idle"
                time.sleep(0.1)
            return "dead" if not w.alive() else "timeout"

        if not sigterm:
            sigterm_at = -1
        def wait_exit(w: WorkerProc) -> None:
            """An incarnation with an injected fault: until it exits (its fault) or that takes too long."""
            deadline = time.monotonic() + 2 * progress_timeout_s
            while w.alive() and time.monotonic() < deadline:
                if produced.is_set() and w.ready() and caught_up():
                    return  # nothing left that would reach the faulty stage
                time.sleep(0.1)

        k = -1
        while k + 1 < kills + (1 if sigterm else 0):
            w = workers[-1]
            if w.fault:  # no kill, no SIGTERM: it must stop itself, failing closed
                wait_exit(w)
                if not w.alive():
                    restart_dead(w)
                    continue
            why = wait_progress(w)
            if why == "dead":  # exited on its own (a fault, a broker outage): does not use up a kill
                restart_dead(w)
                continue
            k += 1
            time.sleep(rng.uniform(*kill_delay_s))
            if k == sigterm_at:
                w.wait_ready()
                n_before = w.batches()
                rc = w.stop(signal.SIGTERM, timeout=60)
                report.sigterm_exit_codes.append(rc)
                committed = None
                while committed is None:
                    committed = committed_or_none(partitions)
                # every event this incarnation logged as processed must be committed now
                processed = sum(int(n) for n in re.findall(r"batch events=(\d+)", w.log()))
                advance = sum(max(0, c) for c in committed.values()) - committed_at_start[incarnation[0]]
                if advance < processed:
                    report.sigterm_mismatches.append(
                        f"sigterm-commit: the worker processed {processed} events but committed only {advance}")
                if report.kills == 0:
                    # no kill -9 before: the store holds exactly the effects of processed events, so it must
                    # equal the state of the committed prefix (after a kill, the killed worker's uncommitted
                    # writes may legitimately run ahead of the committed offsets until redelivered)
                    store = open_store(settings, encoder)
                    sigterm_snapshot = (committed, snapshot(store, [f"doc-{i:04d}" for i in range(docs)]))
                    store.close()
                echo(f"[harness] SIGTERM after {n_before} batches ({why}): exit code {rc}, {processed} events "
                     f"processed, committed offsets advanced by {advance}: {committed}")
            else:
                # a batch is most likely in flight when the worker logged one within the last second
                in_flight = why == "progress" and _busy(w)
                w.stop(signal.SIGKILL)
                report.kills += 1
                report.kills_mid_batch += int(in_flight)
                echo(f"[harness] kill {report.kills}/{kills} (incarnation {incarnation[0]}, {w.batches()} batches, "
                     f"{'probably mid-batch' if in_flight else why})")
            workers.append(start_worker())

        # -- drain --------------------------------------------------------------------------
        producer_thread.join()
        if broker_thread is not None:
            broker_thread.join()
        if errors:
            raise RuntimeError(f"producing failed: {errors[:5]}")
        ends: dict[int, int] = {}
        for g in stream:
            ends[g.partition] = max(ends.get(g.partition, 0), g.offset + 1)
        t_drain = time.monotonic()
        drain_timeout_s = drain_timeout_s or max(180.0, events / 20)
        deadline = time.monotonic() + drain_timeout_s
        committed = {}
        while time.monotonic() < deadline:
            committed = committed_or_none(ends) or {}
            if all(committed.get(p, -1) >= e for p, e in ends.items()):
                report.drained = True
                break
            if not workers[-1].alive():
                restart_dead(workers[-1])
            time.sleep(1.0)
        report.drain_s = time.monotonic() - t_drain
        echo(f"[harness] drained={report.drained} in {report.drain_s:.0f}s: committed {committed}, ends {ends}")
        workers[-1].wait_ready()
        rc = workers[-1].stop(signal.SIGTERM, timeout=60)
        report.sigterm_exit_codes.append(rc)
    finally:
        for w in workers:
            if w.alive():
                w.stop(signal.SIGKILL)
        offsets.close()
    for w in workers:
        text = w.log()
        if w.fault and not w.fault_triggered():
            report.faults_not_fired.append(f"{w.fault} ({w.log_path.name})")
        report.batches_logged += text.count("batch events=")
        report.retries_logged += text.count("retrying")

    # -- check ------------------------------------------------------------------------------
    echo("[harness] checking the store")
    expected = expected_state(stream)
    store = open_store(settings, encoder)
    check = compare(expected, snapshot(store, expected), chunker)
    if verify_vectors:
        check_vectors(expected, store, encoder, chunker, check)
    store.close()
    report.docs_checked, report.live_docs, report.deleted_docs = check.docs, check.live, check.deleted
    report.chunks_checked, report.vectors_checked = check.chunks, check.vectors
    report.mismatches, report.mismatch_kinds = check.mismatches, dict(check.kinds)

    if sigterm_snapshot is not None:
        committed, snap = sigterm_snapshot
        prefix = expected_state(stream, committed)
        report.sigterm_committed_prefix_events = sum(
            1 for g in stream if 0 <= g.offset < committed.get(g.partition, 0))
        report.sigterm_mismatches += compare(prefix, snap, chunker).mismatches

    junk = {(g.partition, g.offset) for g in stream if g.kind == "junk"}
    report.dead_letters_expected = len(junk)
    dls = read_dead_letters(settings.bootstrap_servers, settings.dlq_topic, len(junk)) if junk else []
    found = set()
    for m in dls:
        h = dict(m.headers() or [])
        found.add((int(h.get("x-dlq-source-partition", b"-1")), int(h.get("x-dlq-source-offset", b"-1"))))
    report.dead_letters_found = len(found & junk)
    if found - junk:
        report.mismatches.append(f"dead-letter: {len(found - junk)} records dead-lettered that were not junk")
    if junk - found:
        report.mismatches.append(f"dead-letter: {len(junk - found)} junk records missing from the dead-letter topic")
    report.total_s = time.monotonic() - t_start
    return report


def _partitions(settings) -> list[int]:
    from app.topics import existing_topics

    return list(range(existing_topics(settings)[settings.changes_topic]))


def _fault_specs(text: str, seed: int) -> list[str]:
    """``--faults``: 'all' or 'stage[:n],...' -> ['stage:n', ...] (n drawn from 2..5 when not given)."""
    from load.faults import STAGES

    if not text:
        return []
    rng = random.Random(seed * 31 + 7)
    out = []
    for item in (STAGES if text == "all" else [t.strip() for t in text.split(",") if t.strip()]):
        stage, _, n = item.partition(":")
        if stage not in STAGES:
            raise SystemExit(f"--faults: unknown stage {stage!r} (one of {', '.join(STAGES)})")
        out.append(f"{stage}:{int(n) if n else rng.randint(2, 5)}")
    return out


def _busy(w: WorkerProc) -> bool:
    """Heuristic: the worker processed a batch recently, so it is most likely inside the next one."""
    return w.log_path.exists() and time.time() - w.log_path.stat().st_mtime < 1.0


# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.crash_harness", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--docs", type=int, default=None, help="distinct doc ids (default: events/150, 20..300)")
    ap.add_argument("--rate", type=float, default=None, help="produce rate, events/s (default: spans the kills)")
    ap.add_argument("--no-sigterm", action="store_true", help="skip the mid-stream SIGTERM check")
    ap.add_argument("--no-vectors", action="store_true", help="skip re-encoding the live chunks")
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="the broker to start: Apache Kafka (default; load/servers/kafka.py) or the embedded "
                         "Tansu of `embedstream dev`")
    ap.add_argument("--broker-kills", type=int, default=0,
                    help="also SIGKILL the (Kafka) broker this many times while producing and restart it on "
                         "its log dir")
    ap.add_argument("--bootstrap-servers", default="", help="use this running broker instead of starting one")
    ap.add_argument("--data-dir", default="", help="LanceDB + logs (default: a new temporary directory)")
    ap.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb",
                    help="the worker's store: LanceDB files in the data dir (default) or Weaviate: a real server "
                         "the harness starts (load/servers/weaviate.py, API-key auth on), or --weaviate-url")
    ap.add_argument("--weaviate-url", default="",
                    help="with --store weaviate: use this running Weaviate (REST URL; its collections of this run "
                         "are dropped afterwards)")
    ap.add_argument("--weaviate-grpc-port", type=int, default=50051, help="with --weaviate-url: its gRPC port")
    ap.add_argument("--weaviate-api-key", default="",
                    help="with --weaviate-url: its API key (default: $EMBEDSTREAM_WEAVIATE_API_KEY)")
    ap.add_argument("--faults", default="",
                    help="inject plain exceptions (load/faults.py): 'all' (every stage once) or a comma list of "
                         "stage[:n] (the n-th call raises; default n drawn from 2..5). The first incarnations get "
                         "one fault each; each must fail closed (exit 70) and the next converge. Stages: "
                         "prepare, encode, store-chunks, store-states, store-permanent, drift, dlq-send, ack")
    ap.add_argument("--json", default="", help="also write the report as JSON to this file")
    args = ap.parse_args(argv)
    exit_on_sigterm()  # a `kill` stops the servers this run started too

    from app.broker import EmbeddedBroker
    from app.config import Settings
    from app.topics import create_topics

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="crash-harness-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if args.broker_kills and (args.bootstrap_servers or args.broker != "kafka"):
        ap.error("--broker-kills needs the harness's own Kafka (--broker kafka, no --bootstrap-servers)")
    if args.weaviate_url and args.store != "weaviate":
        ap.error("--weaviate-url needs --store weaviate")
    weaviate = None
    if not args.bootstrap_servers:
        if args.broker == "kafka":
            from load.servers.kafka import KafkaServer

            broker = KafkaServer(data_dir / "kafka").start()
            print(f"[harness] Apache Kafka {broker.version} on {broker.bootstrap} (log {broker.log_path})")
        else:
            broker = EmbeddedBroker(log_path=data_dir / "broker.log").start()
    try:
        if args.store == "weaviate" and not args.weaviate_url:
            from load.servers.weaviate import WeaviateServer

            weaviate = WeaviateServer(data_dir / "weaviate").start()
            print(f"[harness] Weaviate {weaviate.server_version} on {weaviate.url}, gRPC {weaviate.grpc_port} "
                  f"(log {weaviate.log_path})")
        tag = uuid.uuid4().hex[:8]
        over = dict(bootstrap_servers=args.bootstrap_servers or broker.bootstrap, data_dir=str(data_dir / "data"),
                    app_id=f"crash-{tag}", changes_topic=f"changes-{tag}", alerts_topic=f"alerts-{tag}",
                    dlq_topic=f"dlq-{tag}", batch_max_wait_s=0.2,
                    # a killed worker's partitions move after the session timeout: keep it short
                    session_timeout_s=6.0, heartbeat_interval_s=1.0)
        if "metrics_port" in {f.name for f in fields(Settings)}:
            over["metrics_port"] = 0
        if args.store == "weaviate":
            over.update(store="weaviate", collection_prefix=f"Crash{tag}",
                        weaviate_url=weaviate.url if weaviate else args.weaviate_url,
                        weaviate_grpc_port=weaviate.grpc_port if weaviate else args.weaviate_grpc_port,
                        weaviate_api_key=(weaviate.api_key if weaviate else
                                          args.weaviate_api_key or os.environ.get("EMBEDSTREAM_WEAVIATE_API_KEY", ""))
                        or "")
        settings = Settings.load(env={}, **over)
        create_topics(settings, replication_factor=1, echo=lambda m: None)
        report = run_crash_harness(settings, faults=_fault_specs(args.faults, args.seed), events=args.events, kills=args.kills, seed=args.seed, docs=args.docs,
                                   rate=args.rate, sigterm=not args.no_sigterm, verify_vectors=not args.no_vectors,
                                   log_dir=data_dir / "logs", broker=broker, broker_kills=args.broker_kills)
        if args.weaviate_url:
            from app.encoder import Encoder

            enc = Encoder.load("int8")
            with open_store(settings, enc) as store:
                store.drop_collections()
    finally:
        if weaviate is not None:
            weaviate.stop()
        if broker is not None:
            broker.stop()
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

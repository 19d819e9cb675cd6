"""The processing step: a micro-batch of Kafka records in, store writes + dead letters out.

``Processor.process(records)`` is synchronous (run it off the event loop) and returns
only when every write and delete of the batch has been acknowledged by the store, or
the record was turned into a dead letter. Only then may the caller commit the batch's
offsets. Transient store errors are retried with exponential backoff for as long as it
takes (consumption stays paused meanwhile); they are never skipped. If the caller asks
to stop during a retry, :class:`Interrupted` is raised and nothing may be committed.

Write order per batch (each step idempotent, so a crash at any point followed by a
redelivery converges to the same state):

1. upsert the new chunks (deterministic ids: uuid5 of doc_id + chunk index);
2. delete chunks past each updated document's new chunk count, and every chunk of
   deleted documents;
3. write the document states (version, content hash, fingerprint, chunk count,
   deleted flag) - last, so a state never claims work that is not in the store.

Stores that offer ``write_chunks`` (LanceDB) do 1 and 2 in one table version. ``process`` is
``commit(prepare(records))``; the worker runs ``prepare`` of batch N+1 (decode, plan, encode)
while ``commit`` of batch N writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from app.batching import Action, DocPlan, already_applied, fold, with_source
from app.cache import EmbeddingCache
from app.chunking import Chunk, Chunker
from app.deadletter import DeadLetter, Record
from app.events import ChangeEvent, DecodeError, EventCodec, Op, RegistryUnavailable
from app.store.base import (ChunkRecord, DocState, PermanentStoreError, TransientStoreError, VectorStore,
                            chunk_uuid)

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Processing was stopped (shutdown) before the batch was fully written: do not commit."""


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delays(self):
        d = self.initial_s
        while True:
            yield d * (1 + random.uniform(-self.jitter, self.jitter))
            d = min(d * self.factor, self.max_s)


@dataclass
class BatchResult:
    records: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    chunks_written: int = 0
    chunks_encoded: int = 0
    #: chunks whose vector came from the embedding cache (or an identical chunk of the batch)
    cache_hits: int = 0
    store_retries: int = 0
    #: decodes retried because the schema registry was unavailable
    registry_retries: int = 0
    decode_s: float = 0.0
    encode_s: float = 0.0
    store_s: float = 0.0
    #: newly encoded vectors of this batch, for the drift monitor
    vectors: np.ndarray | None = None
    norms: np.ndarray | None = None
    vector_doc_ids: list[str] = field(default_factory=list)
    vector_records: list[Record] = field(default_factory=list)
    #: (event_time_ms, record timestamp_ms) of each applied event, for freshness metrics
    applied_times: list[tuple[int, int]] = field(default_factory=list)
    #: events by (op, outcome); ``counts`` holds the same by outcome alone
    outcomes: Counter = field(default_factory=Counter)
    #: personal data replaced by the scrubber, by kind
    scrubbed: Counter = field(default_factory=Counter)
    #: set when the batch is abandoned (revoked, shutdown): its retries and waits give up
    #: (Interrupted) and no further store call is made for it
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)

    def count(self, op: str, outcome: str, n: int = 1) -> None:
        self.outcomes[(op, outcome)] += n
        self.counts[outcome] += n

    def dead_letter(self, dl: DeadLetter, op: str = "unknown") -> None:
        self.dead_letters.append(dl)
        self.count(op, "dead_lettered")


def _op(ev: ChangeEvent) -> str:
    return "TOMBSTONE" if ev.is_tombstone else ev.op.value


@dataclass
class _Work:
    plan: DocPlan
    record: Record  # the record whose event decides the document's new state
    last_record: Record  # the document's last record in the batch (its offset goes into the state)
    chunks: list[Chunk] = field(default_factory=list)
    vectors: np.ndarray | None = None
    norms: np.ndarray | None = None


@dataclass
class Prepared:
    """A batch planned and encoded by :meth:`Processor.prepare`, ready for :meth:`Processor.commit`."""
    result: BatchResult
    work: list[_Work]


class Processor:
    """Decode → coalesce → plan → chunk → encode → store, for one micro-batch."""

    def __init__(self, codec: EventCodec, encoder, chunker: Chunker, store: VectorStore,
                 backoff: Backoff | None = None, should_stop: Callable[[], bool] | None = None,
                 on_retry: Callable[[Exception, float], None] | None = None,
                 cache: EmbeddingCache | None = None, scrubber=None, optimize_every: int = 200):
        self.codec = codec
        self.encoder = encoder
        self.chunker = chunker
        self.store = store
        self.fingerprint = store.fingerprint
        if encoder.fingerprint != store.fingerprint:
            raise ValueError(f"encoder fingerprint {encoder.fingerprint} != store {store.fingerprint}")
        self.backoff = backoff or Backoff()
        self.should_stop = should_stop or (lambda: False)
        self.on_retry = on_retry
        self.cache = cache
        self.scrubber = scrubber
        self.optimize_every = optimize_every
        #: incarnation (Kafka topic id, or cluster id + topic) of each input topic, recorded in the
        #: document states; tombstones are recognised as redelivered only within one incarnation
        self.incarnations: dict[str, str] = {}
        #: optional health reporter (app.observability.Health): store failures are reported as
        #: ``failing("store", why)`` / ``succeeded("store")``, an unavailable schema registry as
        #: ``failing("registry", why)`` / ``succeeded("registry")``
        self.health = None
        self._batches = 0
        self._stop_event = threading.Event()
        # prepare (reads) and commit (writes) may run in two threads; stores that are not known to
        # take concurrent calls get them one at a time
        self._store_lock = (contextlib.nullcontext() if getattr(store, "concurrent_calls", False)
                            else threading.Lock())
        #: documents of prepared batches not yet committed (see prepare)
        self._writing: set[str] = set()
        self._writing_cond = threading.Condition()

    # ------------------------------------------------------------------------------
    def process(self, records: Sequence[Record]) -> BatchResult:
        """Process one batch completely: ``commit(prepare(records))``."""
        return self.commit(self.prepare(records))

    def prepare(self, records: Sequence[Record], cancel: threading.Event | None = None) -> Prepared:
        """Decode, read the documents' states, plan, chunk and encode - everything but the writes.

        A caller may prepare batch N+1 (in another thread) while batch N is being committed: the
        encoder then never waits for the store. If batch N+1 has a document that batch N is still
        writing, this waits until N's commit is over, so N+1 always plans against the state N left.
        A prepared batch holds its documents until it is committed or :meth:`abandon`-ed. ``cancel``
        (set by the caller when it gives the batch up) ends any wait or retry with Interrupted.
        """
        res = BatchResult(records=len(records), cancel=cancel)
        t0 = time.perf_counter()
        decoded: list[tuple[int, ChangeEvent]] = []
        for pos, rec in enumerate(records):
            try:
                decoded.append((pos, self._decode(rec, res)))
            except DecodeError as exc:
                res.dead_letter(DeadLetter(rec, exc.reason, exc.detail, stage="decode"))
        by_doc: dict[str, list[tuple[int, ChangeEvent]]] = {}
        for pos, ev in decoded:  # offset order within a partition, hence per document
            by_doc.setdefault(ev.doc_id, []).append((pos, ev))
        res.decode_s = time.perf_counter() - t0

        self._wait_until_written(by_doc, res)
        states = self._retry("read states", lambda: self.store.get_states(list(by_doc)), res)
        work: list[_Work] = []
        for doc_id, events in by_doc.items():
            stored = states.get(doc_id)
            fresh = []
            for pos, ev in events:
                r = records[pos]
                # versions decide; only a tombstone (no version) is recognised by its position
                if ev.is_tombstone and already_applied(stored, r.topic, r.partition, r.offset,
                                                       self.incarnations.get(r.topic, "")):
                    res.count(_op(ev), Action.ALREADY_APPLIED.value)
                    continue
                try:
                    fresh.append((pos, self._scrub(ev, res)))
                except Exception as exc:  # a scrubber plugin failed on this text: set it aside
                    log.warning("scrubber %s failed on %s:%d@%d: %s: %s", getattr(self.scrubber, "name", "?"),
                                r.topic, r.partition, r.offset, type(exc).__name__, exc)
                    res.dead_letter(DeadLetter(r, "scrubber-error", f"{type(exc).__name__}: {exc}", stage="scrub"),
                                    _op(ev))
            if not fresh:
                continue
            plan = fold(doc_id, fresh, stored, lambda e: self._content_hash(e.text or ""))
            event_at = dict(fresh)
            for pos, action in plan.outcomes:
                ev = event_at[pos]
                if action is Action.CONFLICT:
                    res.dead_letter(DeadLetter(records[pos], "version-conflict",
                                               f"version {ev.version} is already stored with other content",
                                               stage="plan"), "UPSERT")
                elif action not in (Action.UPSERT, Action.DELETE):
                    res.count(_op(ev), action.value)
            if plan.action in (Action.UPSERT, Action.DELETE):
                work.append(_Work(plan, records[plan.pos], records[plan.last_pos]))

        upserts = [w for w in work if w.plan.action is Action.UPSERT]
        if upserts:
            t1 = time.perf_counter()
            texts = [w.plan.event.text or "" for w in upserts]
            for w, chunks in zip(upserts, self.chunker.chunk_many(texts)):
                w.chunks = chunks
            self._reuse_vectors([w for w in upserts if w.plan.reuse_vectors], res)
            self._encode([w for w in upserts if w.vectors is None], res)
            res.encode_s = time.perf_counter() - t1
            # documents the encoder could not embed were dead-lettered in _encode
            failed = {id(w) for w in upserts if w.vectors is None}
            work = [w for w in work if id(w) not in failed]

        prepared = Prepared(res, work)
        with self._writing_cond:
            self._writing.update(w.plan.doc_id for w in work)
        return prepared

    def commit(self, prepared: Prepared) -> BatchResult:
        """Write a prepared batch; returns when the store acknowledged every write and delete."""
        try:
            t2 = time.perf_counter()
            self._write(prepared.work, prepared.result)
            self._maybe_optimize()
            prepared.result.store_s = time.perf_counter() - t2
            return prepared.result
        finally:
            self._release(prepared)

    def _release(self, prepared: Prepared) -> None:
        """The batch's documents may be planned again (its commit is over, written or not)."""
        with self._writing_cond:
            self._writing.difference_update(w.plan.doc_id for w in prepared.work)
            self._writing_cond.notify_all()

    def abandon(self, prepared: Prepared) -> None:
        """A prepared batch will not be committed (revoked, shutdown, failure): release its documents."""
        self._release(prepared)

    def _wait_until_written(self, doc_ids, res: BatchResult | None = None) -> None:
        with self._writing_cond:
            while not self._writing.isdisjoint(doc_ids):
                if self._stopped(res):
                    raise Interrupted("stopped while waiting for the previous batch's writes")
                self._writing_cond.wait(0.1)

    def _stopped(self, res: BatchResult | None) -> bool:
        """The worker is stopping, or this batch was abandoned."""
        return (self.should_stop() or self._stop_event.is_set()
                or (res is not None and res.cancel is not None and res.cancel.is_set()))

    def _sleep(self, delay: float, res: BatchResult | None) -> bool:
        """Back off ``delay`` seconds; True when it was cut short because the batch must stop."""
        deadline = time.monotonic() + delay
        while True:
            left = deadline - time.monotonic()
            if self._stopped(res):
                return True
            if left <= 0:
                return False
            self._stop_event.wait(min(left, 0.1))

    def _maybe_optimize(self) -> None:
        """Compact the store every ``optimize_every`` batches (LanceDB: many small versions make
        each write slower - 52-81 ms per batch with compaction, 1.2 s at 12.5k rows without).
        Maintenance only: a failure is logged, never retried in the hot path."""
        self._batches += 1
        optimize = getattr(self.store, "optimize", None)
        if optimize is None or not self.optimize_every or self._batches % self.optimize_every:
            return
        try:
            with self._store_lock:
                optimize()
        except Exception as exc:
            log.warning("store optimize failed (%s); will try again later", exc)

    # ------------------------------------------------------------------------------
    def _scrub(self, ev: ChangeEvent, res: BatchResult) -> ChangeEvent:
        """Personal data out before anything else sees the text (nothing unscrubbed is stored)."""
        if self.scrubber is None or ev.op is not Op.UPSERT or ev.text is None:
            return ev
        text, found = self.scrubber.scrub(ev.text)
        for kind, n in found.items():
            res.scrubbed[kind] += n
        return dataclasses.replace(ev, text=text) if found else ev

    def _content_hash(self, text: str) -> str:
        prefix = f"{self.scrubber.name}\x00" if self.scrubber is not None else ""
        return self.chunker.content_hash(prefix + text)

    def _reuse_vectors(self, items: list[_Work], res: BatchResult) -> None:
        """Unchanged content: take the stored vectors instead of encoding again."""
        if not items:
            return
        # only chunks written with the current content: a crash can leave chunks of a newer,
        # never-committed version behind the stored state
        expect = {chunk_uuid(w.plan.doc_id, c.index): w.plan.content_hash for w in items for c in w.chunks}
        stored = self._retry("fetch vectors", lambda: self.store.fetch_vectors(list(expect), expect), res)
        for w in items:
            doc = w.plan.doc_id
            vecs = [stored.get(chunk_uuid(doc, c.index)) for c in w.chunks]
            if all(v is not None for v in vecs):
                w.vectors = np.stack(vecs).astype(np.float32)
                res.counts["unchanged_reused"] += 1

    def _encode(self, items: list[_Work], res: BatchResult) -> None:
        if not items:
            return
        token_ids = [c.token_ids for w in items for c in w.chunks]
        vecs, norms = self._encode_cached(token_ids, items, res)
        if vecs is None:  # the encoder failed on the whole batch: isolate the culprit
            groups = []
            for w in items:
                try:
                    groups.append(([w], *self.encoder.encode_tokens([c.token_ids for c in w.chunks])))
                except Exception as exc:
                    res.dead_letter(DeadLetter(w.record, "encoder-error", f"{type(exc).__name__}: {exc}",
                                               stage="encode"), "UPSERT")
        else:
            groups = [(items, vecs, norms)]
        for group, vecs, norms in groups:
            i = 0
            for w in group:
                n = len(w.chunks)
                v = vecs[i:i + n]
                i += n
                if not np.isfinite(v).all():
                    res.dead_letter(DeadLetter(w.record, "encoder-non-finite",
                                               "the encoder produced NaN/inf for this document", stage="encode"),
                                    "UPSERT")
                    continue
                w.vectors, w.norms = v, norms[i - n:i]
                res.vector_doc_ids.extend([w.plan.doc_id] * n)
                res.vector_records.extend([w.record] * n)
        encoded = [w for g, _, _ in groups for w in g if w.vectors is not None and w.norms is not None]
        if encoded:
            res.vectors = np.concatenate([w.vectors for w in encoded])
            res.norms = np.concatenate([w.norms for w in encoded])

    def _encode_cached(self, token_ids, items, res: BatchResult):
        """Encode through the cache: only chunks not seen before reach the encoder.

        Returns (vectors, norms), or (None, None) when the encoder raised.
        """
        n = len(token_ids)
        vecs = np.empty((n, self.encoder.dim), dtype=np.float32)
        norms = np.empty(n, dtype=np.float32)
        keys = ([self.cache.key(self.fingerprint, t) for t in token_ids] if self.cache is not None
                else [None] * n)
        todo: dict[bytes | int, list[int]] = {}
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if k is not None else None
            if hit is not None:
                vecs[i], norms[i] = hit
            else:
                todo.setdefault(k if k is not None else i, []).append(i)  # duplicates in-batch: encode once
        if todo:
            first = [idx[0] for idx in todo.values()]
            try:
                v, nr = self.encoder.encode_tokens([token_ids[i] for i in first])
            except Exception as exc:
                log.warning("encoder failed on a batch of %d chunks (%s); retrying per document", len(first), exc)
                return None, None
            res.chunks_encoded += len(first)
            for j, (k, idx) in enumerate(todo.items()):
                vecs[idx], norms[idx] = v[j], nr[j]
                if self.cache is not None and np.isfinite(v[j]).all():
                    self.cache.put(k, v[j], float(nr[j]))
        res.cache_hits += n - len(todo)  # chunks that did not reach the encoder
        return vecs, norms

    # ------------------------------------------------------------------------------
    def _write(self, work: list[_Work], res: BatchResult) -> None:
        now = int(time.time() * 1000)
        chunks: list[ChunkRecord] = []
        deletes: list[tuple[str, int, int]] = []  # (doc, from index, newest version it may delete)
        states: dict[str, DocState] = {}
        by_doc: dict[str, _Work] = {}
        for w in work:
            ev, plan, last = w.plan.event, w.plan, w.last_record
            by_doc[ev.doc_id] = w
            if plan.action is Action.UPSERT:
                n = len(w.chunks)
                for c, v in zip(w.chunks, w.vectors):
                    chunks.append(ChunkRecord(
                        doc_id=ev.doc_id, chunk_index=c.index, chunk_count=n, version=plan.version,
                        content_hash=plan.content_hash, fingerprint=self.fingerprint,
                        event_time_ms=ev.event_time_ms, indexed_time_ms=now, text=c.text, vector=v,
                        metadata=ev.metadata))
                deletes.append((ev.doc_id, n, plan.version))
                state = DocState(ev.doc_id, plan.version, plan.content_hash, self.fingerprint, n, False,
                                 ev.event_time_ms, now)
            else:
                deletes.append((ev.doc_id, 0, plan.version))
                et = ev.event_time_ms or w.record.timestamp_ms or now
                state = DocState(ev.doc_id, plan.version, "", self.fingerprint, 0, True, et, now)
            # every record of the document in this batch is reflected in this state
            states[ev.doc_id] = with_source(state, last.topic, last.partition, last.offset,
                                            self.incarnations.get(last.topic, ""))

        deletes_done = False
        if chunks:
            # stores that can (LanceDB) upsert and delete the leftover chunks in one version
            combined = getattr(self.store, "write_chunks", None)
            try:
                if combined is not None:
                    self._retry("upsert", lambda: combined(chunks, deletes), res)
                    deletes_done = True
                else:
                    self._retry("upsert", lambda: self.store.upsert_chunks(chunks), res)
            except PermanentStoreError as exc:
                # StaleWrite (exc.stale): the store holds a newer version (this worker was evicted
                # and another one wrote it): not written, counted stale, never dead-lettered
                errors = {k: v for k, v in exc.object_errors.items() if k not in exc.stale}
                if not errors and not exc.stale:
                    raise
                for doc in exc.stale:
                    self._stale(by_doc, doc, states, res)
                deletes = [d for d in deletes if d[0] not in exc.stale]
                chunks = [c for c in chunks if c.doc_id not in exc.stale]
                bad_docs: dict[str, str] = {}
                ids = {chunk_uuid(c.doc_id, c.chunk_index): c.doc_id for c in chunks}
                for oid, msg in errors.items():
                    doc = ids.get(oid, oid)
                    bad_docs.setdefault(doc, msg)
                for doc, msg in bad_docs.items():
                    w = by_doc.get(doc)
                    if w is None:
                        continue
                    res.dead_letter(DeadLetter(w.record, "store-rejected", msg, stage="store"), "UPSERT")
                    states.pop(doc, None)
                    deletes = [d for d in deletes if d[0] != doc]
                chunks = [c for c in chunks if c.doc_id not in bad_docs]
        res.chunks_written = len(chunks)
        if deletes and not deletes_done:
            self._retry("delete", lambda: self._delete_many(deletes), res)
        if states:
            try:
                self._retry("write states", lambda: self.store.put_states(list(states.values())), res)
            except PermanentStoreError as exc:
                if not exc.stale or set(exc.object_errors) - set(exc.stale):
                    raise
                for doc in exc.stale:
                    self._stale(by_doc, doc, states, res)
        for doc, st in states.items():
            w = by_doc[doc]
            res.count(_op(w.plan.event), "deleted" if st.deleted else "written")
            # tombstones carry no event time: their record's timestamp stands in for it
            ev = w.plan.event
            res.applied_times.append((ev.event_time_ms or w.record.timestamp_ms, w.record.timestamp_ms))

    @staticmethod
    def _stale(by_doc: dict[str, _Work], doc: str, states: dict[str, DocState], res: BatchResult) -> None:
        """A document the store refused as older than what it holds (StaleWrite)."""
        w = by_doc.get(doc)
        if w is not None and states.pop(doc, None) is not None:
            log.info("store holds a newer version of %r than %s: not written (stale)", doc, w.plan.version)
            res.count(_op(w.plan.event), Action.STALE.value)

    def _delete_many(self, items: list[tuple[str, int, int]]) -> int:
        many = getattr(self.store, "delete_chunks_many", None)
        if many is not None:
            return many(items)
        return sum(self.store.delete_chunks(*item) for item in items)

    def _decode(self, rec: Record, res: BatchResult) -> ChangeEvent:
        """Decode one record; while the schema registry is unavailable, retry with backoff (the
        batch - hence consumption - waits; a valid record is never dead-lettered for it)."""
        delays = None
        while True:
            if delays is not None and self._stopped(res):
                raise Interrupted("stopped while waiting for the schema registry")
            try:
                ev = self.codec.decode(rec.key, rec.value, rec.topic)
            except RegistryUnavailable as exc:
                delays = delays or self.backoff.delays()
                delay = next(delays)
                res.registry_retries += 1
                log.warning("%s (record %s:%d@%d); retrying in %.1fs", exc.detail, rec.topic, rec.partition,
                            rec.offset, delay)
                if self.health is not None:
                    self.health.failing("registry", exc.detail)
                if self._sleep(delay, res):
                    raise Interrupted("stopped while waiting for the schema registry") from exc
                continue
            except DecodeError:  # the registry answered (the record itself is bad)
                if delays is not None:
                    self._registry_back()
                raise
            if delays is not None:
                self._registry_back()
            return ev

    def _registry_back(self) -> None:
        log.info("schema registry available again")
        if self.health is not None:
            self.health.succeeded("registry")

    def _retry(self, what: str, fn, res: BatchResult):
        """Call fn until it succeeds; transient failures back off, never skip."""
        delays = self.backoff.delays()
        while True:
            if self._stopped(res):
                raise Interrupted(f"stopped while the store was retrying: {what}")
            try:
                with self._store_lock:
                    out = fn()
            except TransientStoreError as exc:
                delay = next(delays)
                res.store_retries += 1
                log.warning("store %s failed (%s); retrying in %.1fs", what, exc, delay)
                if self.health is not None:
                    self.health.failing("store", f"{what}: {exc}")
                if self.on_retry:
                    self.on_retry(exc, delay)
                if self._sleep(delay, res):
                    raise Interrupted(f"stopped while the store was retrying: {what}") from exc
                continue
            if self.health is not None:
                self.health.succeeded("store")
            return out

    def stop(self) -> None:
        """Ask a running ``process`` to give up its retry loop (it raises Interrupted)."""
        self._stop_event.set()

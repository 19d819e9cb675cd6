"""The batch-source boundary: what the delivery loop (:mod:`app.delivery`) needs from a consumer.

A :class:`BatchSource` hands out micro-batches of records in offset order per partition, takes
acks of batches (the store acknowledged them; the source may then commit), produces records
(dead letters, alerts) and waits for the broker's acknowledgement, and tells its listener about
assignment changes. Two implementations:

* the Faust one (``app.agents.FaustSource``; ``app/agents.py`` is the only module that imports
  Faust), used by the worker;
* :class:`MemorySource` below, an in-memory consumer group of one member, so ordering, acking,
  abandonment, revocation and shutdown are tested deterministically in milliseconds
  (``tests/test_source.py``).

The model is arroyo's ``ProcessingStrategy`` (submit / poll / join / close, commits through a
callback, a new strategy per assignment) and quix-streams' checkpoint (offsets are committed only
after the sink flushed), reduced to what one worker needs:

* **Acks are in order.** :class:`OffsetTracker` keeps the batches handed out per partition; a
  partition's commit position only moves over a contiguous run of acked batches. A batch that was
  *abandoned* (revoked mid-write, shutdown, a failure) blocks its partitions: nothing after it is
  acked in this assignment, so no commit can pass an unprocessed record - even on a partition that
  never committed (Faust skips its gap check there).
* **Revocation is bounded.** The listener's ``on_revoked`` must return within the rebalance
  timeout; batches it cannot finish in time are abandoned unacked and redelivered to whoever gets
  the partition.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable, Protocol, Sequence

from app.deadletter import Record

#: how often a source calls ``on_idle`` again while nothing arrives (the drift stage takes a relearn
#: request then: a quiet stream does not put it off until the next event)
IDLE_TICK_S = 1.0

log = logging.getLogger(__name__)

#: (topic, partition)
TP = tuple[str, int]


def tp_of(record: Record) -> TP:
    return record.topic, record.partition


@dataclass(eq=False)
class Batch:
    """Records handed out together, in offset order per partition.

    ``handles`` are the source's own objects for the records (Faust events), parallel to
    ``records``. ``cancel`` is set when the batch is abandoned: its writes stop at the next store
    call and it is never acked.
    """

    seq: int
    records: list[Record]
    handles: list = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def partitions(self) -> dict[TP, tuple[int, int]]:
        """(first offset, last offset) of each partition in the batch."""
        out: dict[TP, tuple[int, int]] = {}
        for r in self.records:
            tp = tp_of(r)
            lo, hi = out.get(tp, (r.offset, r.offset))
            out[tp] = (min(lo, r.offset), max(hi, r.offset))
        return out

    @property
    def abandoned(self) -> bool:
        return self.cancel.is_set()

    def without(self, tps: Iterable[TP]) -> "Batch":
        """The batch minus the records of ``tps`` (same seq and cancel token)."""
        drop = set(tps)
        keep = [i for i, r in enumerate(self.records) if tp_of(r) not in drop]
        return Batch(self.seq, [self.records[i] for i in keep],
                     [self.handles[i] for i in keep] if self.handles else [], self.cancel)

    def __repr__(self) -> str:
        parts = ",".join(f"{t}[{p}]@{lo}-{hi}" for (t, p), (lo, hi) in sorted(self.partitions.items()))
        return f"Batch(#{self.seq}, {len(self.records)} records, {parts or 'empty'})"


class RebalanceListener(Protocol):
    async def on_revoked(self, tps: set[TP]) -> None:
        """Partitions are being taken away. Finish or abandon their batches before returning
        (bounded by the rebalance timeout); the source commits what was acked afterwards."""

    async def on_assigned(self, tps: set[TP]) -> None:
        """The new assignment (the full set)."""


class BatchSource(Protocol):
    """A consumer as seen by the delivery loop."""

    #: set by the delivery loop before ``batches`` is iterated
    listener: RebalanceListener | None

    def batches(self, max_events: int, linger_s: float,
                on_idle: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Batch]:
        """Batches until the source stops. ``on_idle`` runs whenever nothing is buffered, and again
        every ``IDLE_TICK_S`` while nothing arrives."""

    async def ack(self, batch: Batch, tps: Iterable[TP] | None = None) -> None:
        """The store acknowledged ``batch`` (its records of ``tps``, default all): they may be committed."""

    async def send(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
                   ) -> None:
        """Produce ``records`` ((key, value, headers) each) to ``topic`` in this order, and wait for
        the broker's acknowledgement of all of them (raises on failure). Order matters: an alert
        consumer reads an episode's alerts in sequence."""

    def abandon(self, batch: Batch, tps: Iterable[TP] | None = None) -> None:
        """``batch`` (on ``tps``, default all) will never be acked: nothing after it is acked either."""

    def acked_position(self, tp: TP) -> int | None:
        """Next offset after the acked records of ``tp`` in this assignment (None: none acked yet)."""

    async def commit(self) -> None:
        """Commit the acked positions now (otherwise the source commits periodically)."""

    def assignment(self) -> set[TP]:
        """Partitions currently assigned."""

    def pause(self, tps: Iterable[TP]) -> None:
        """Stop fetching ``tps`` (until the process restarts)."""

    async def positions(self) -> dict[TP, tuple[int | None, int | None]]:
        """(committed offset, high-watermark) of every assigned partition (None: not known yet)."""


class OffsetTracker:
    """Batches handed out per partition, and how far each partition may be committed.

    ``handed_out`` registers a batch (in the order the source produced them); ``acked`` marks a
    batch done for some or all of its partitions and returns the partitions whose commit position
    moved; ``position(tp)`` is the next offset to commit (None: nothing acked in this assignment).
    ``abandon`` blocks the batch's partitions: later batches of a blocked partition are never
    acked (their records stay unprocessed as far as Kafka is concerned) until the partition is
    revoked and assigned again, which re-reads it from the committed offset.
    """

    def __init__(self):
        # per partition: deque of [seq, last offset, done] in hand-out order
        self._out: dict[TP, deque] = {}
        self._position: dict[TP, int] = {}
        self._blocked: dict[TP, int] = {}  # tp -> seq of the abandoned batch

    def handed_out(self, batch: Batch) -> None:
        for tp, (_, hi) in batch.partitions.items():
            self._out.setdefault(tp, deque()).append([batch.seq, hi, False])

    def acked(self, batch: Batch, tps: Iterable[TP] | None = None) -> dict[TP, list[int]]:
        """Mark ``batch`` done on ``tps``. Returns, per partition whose commit position moved, the
        seqs of the batches now committable there (in order; more than ``batch`` when it completed
        a run of batches acked out of order)."""
        want = set(batch.partitions) if tps is None else set(tps) & set(batch.partitions)
        moved: dict[TP, list[int]] = {}
        for tp in want:
            if batch.seq >= self._blocked.get(tp, batch.seq + 1):
                continue  # at or after an abandoned batch: never acked in this assignment
            q = self._out.get(tp)
            if not q:
                continue
            for entry in q:
                if entry[0] == batch.seq:
                    entry[2] = True
                    break
            while q and q[0][2]:
                seq, hi, _ = q.popleft()
                self._position[tp] = hi + 1
                moved.setdefault(tp, []).append(seq)
        return moved

    def may_ack(self, batch: Batch, tp: TP) -> bool:
        """Acking ``batch`` on ``tp`` now would not pass an unprocessed record."""
        q = self._out.get(tp)
        return batch.seq < self._blocked.get(tp, batch.seq + 1) and bool(q) and q[0][0] == batch.seq

    def abandon(self, batch: Batch, tps: Iterable[TP] | None = None) -> None:
        for tp in (batch.partitions if tps is None else tps):
            # only a batch of the current assignment blocks: one handed out before a revocation
            # (abandoned late, when its store call returned) says nothing about the new one
            if tp in batch.partitions and any(e[0] == batch.seq for e in self._out.get(tp, ())):
                self._blocked[tp] = min(self._blocked.get(tp, batch.seq), batch.seq)

    def blocked(self, tp: TP) -> bool:
        return tp in self._blocked

    def pending(self, tp: TP) -> int:
        """Batches handed out and not yet acked on ``tp``."""
        return sum(1 for e in self._out.get(tp, ()) if not e[2])

    def position(self, tp: TP) -> int | None:
        return self._position.get(tp)

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._out.pop(tp, None)
            self._position.pop(tp, None)
            self._blocked.pop(tp, None)


# ----------------------------------------------------------------------------------------
class SendFailed(Exception):
    """The broker did not acknowledge a produced record."""


class MemorySource:
    """An in-memory topic set consumed by a group of one member, for tests.

    ``append`` adds records; ``revoke``/``assign`` simulate a rebalance (awaiting the listener,
    like a real consumer does inside the rebalance callback); ``stop`` ends ``batches``.
    ``committed`` is what a restarted consumer would read from; ``sent`` holds produced records.
    ``fail_sends`` makes the next N sends raise :class:`SendFailed`. Batches come out in offset
    order per partition, round-robin over partitions, each at most ``max_events``.
    """

    def __init__(self, partitions: Iterable[TP] = (("changes", 0),)):
        self.logs: dict[TP, list[Record]] = {tp: [] for tp in partitions}
        self._assigned: set[TP] = set(self.logs)
        self._fetch: dict[TP, int] = {tp: 0 for tp in self.logs}  # next offset to hand out
        self.committed: dict[TP, int] = {}
        self.acked: dict[TP, int] = {}
        self.sent: list[tuple[str, bytes | None, bytes | None, tuple]] = []
        self.fail_sends = 0
        self.paused: set[TP] = set()
        self.listener: RebalanceListener | None = None
        self.tracker = OffsetTracker()
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._stopped = False
        self.highwater_override: dict[TP, int] = {}

    # -- test controls --------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        tp = tp_of(record)
        log_ = self.logs.setdefault(tp, [])
        if record.offset < 0 or (log_ and record.offset <= log_[-1].offset):
            record = Record(record.topic, record.partition, (log_[-1].offset + 1) if log_ else 0, record.key,
                            record.value, record.headers, record.timestamp_ms)
        log_.append(record)
        self._fetch.setdefault(tp, 0)
        self._wake.set()
        return record

    async def revoke(self, tps: Iterable[TP] | None = None) -> None:
        tps = set(self._assigned if tps is None else tps) & self._assigned
        if self.listener is not None:
            await self.listener.on_revoked(tps)
        await self.commit()
        self._assigned -= tps
        self.tracker.revoke(tps)
        for tp in tps:  # a new owner starts from the committed offset
            self._fetch[tp] = self.committed.get(tp, 0)
        self._wake.set()

    async def assign(self, tps: Iterable[TP]) -> None:
        self._assigned = set(tps)
        for tp in self._assigned:
            self._fetch[tp] = self.committed.get(tp, 0)
        if self.listener is not None:
            await self.listener.on_assigned(set(self._assigned))
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    # -- BatchSource ----------------------------------------------------------------------
    def _available(self) -> list[TP]:
        out = []
        for tp in sorted(self._assigned - self.paused):
            log_ = self.logs.get(tp, [])
            if any(r.offset >= self._fetch[tp] for r in log_[-1:]):
                out.append(tp)
        return out

    async def batches(self, max_events: int, linger_s: float = 0.0, on_idle=None):
        while not self._stopped:
            ready = self._available()
            if not ready:
                if on_idle is not None:
                    await on_idle()
                if self._stopped:
                    break
                if not self._available():
                    self._wake.clear()
                    if on_idle is None:
                        await self._wake.wait()
                    else:  # on_idle again every IDLE_TICK_S while nothing arrives (as the Kafka source)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), IDLE_TICK_S)
                continue
            records: list[Record] = []
            while len(records) < max_events:
                progressed = False
                for tp in ready:
                    nxt = [r for r in self.logs[tp] if r.offset >= self._fetch[tp]][:1]
                    if nxt and len(records) < max_events:
                        records.append(nxt[0])
                        self._fetch[tp] = nxt[0].offset + 1
                        progressed = True
                if not progressed:
                    break
            batch = Batch(next(self._seq), records, list(range(len(records))))
            self.tracker.handed_out(batch)
            yield batch

    async def ack(self, batch: Batch, tps=None) -> None:
        for tp in self.tracker.acked(batch, tps):
            if tp in self._assigned:
                self.acked[tp] = self.tracker.position(tp)

    def abandon(self, batch: Batch, tps=None) -> None:
        self.tracker.abandon(batch, tps)

    def acked_position(self, tp: TP) -> int | None:
        return self.tracker.position(tp)

    async def send(self, topic, records) -> None:
        await asyncio.sleep(0)
        if self.fail_sends > 0:
            self.fail_sends -= 1
            raise SendFailed(f"broker did not acknowledge a record to {topic}")
        self.sent.extend((topic, key, value, tuple(headers)) for key, value, headers in records)

    async def commit(self) -> None:
        for tp, pos in self.acked.items():
            if tp in self._assigned:
                self.committed[tp] = max(self.committed.get(tp, 0), pos)

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    def pause(self, tps) -> None:
        self.paused.update(tps)

    async def positions(self):
        out = {}
        for tp in self._assigned:
            log_ = self.logs.get(tp, [])
            hw = self.highwater_override.get(tp, (log_[-1].offset + 1) if log_ else 0)
            out[tp] = (self.committed.get(tp), hw)
        return out


# ----------------------------------------------------------------------------------------
def topic_incarnations(kafka_config: dict, topics: Sequence[str], timeout: float = 10.0) -> tuple[str, dict[str, str]]:
    """(cluster id, {topic: incarnation}) of ``topics``.

    The incarnation is the topic's Kafka topic id (a UUID the broker gives a topic when it is
    created: a recreated or mirrored topic has another one), or "<cluster id>/<topic>" when the
    broker names no topic id, or "" when neither can be read. The pipeline records it in document
    states, so offsets are only compared within one incarnation (``app.batching.already_applied``).
    """
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(dict(kafka_config))
    cluster = ""
    try:
        cluster = admin.describe_cluster(request_timeout=timeout).result(timeout).cluster_id or ""
    except Exception as exc:
        log.warning("could not read the Kafka cluster id (%s)", exc)
    out: dict[str, str] = {}
    try:
        futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout)
        for topic, fut in futures.items():
            tid = getattr(fut.result(timeout), "topic_id", None)
            text = str(tid) if tid is not None else ""
            out[topic] = text if text and text != "AAAAAAAAAAAAAAAAAAAAAA" else ""  # all-zero: none
    except Exception as exc:
        log.warning("could not read topic ids (%s); using cluster id + topic", exc)
    for topic in topics:
        if not out.get(topic):
            out[topic] = f"{cluster}/{topic}" if cluster else ""
    return cluster, out

"""Replay a range of the changes topic through the same :class:`~app.pipeline.Processor`
the worker uses (decode -> plan against the stored states -> chunk -> encode -> store),
into a chosen store / collection. Used by ``embedstream replay`` and by the reindex.

**The live group is never touched.** The replay reads with manual assignment
(``assign()``, no ``subscribe()``), ``enable.auto.commit=false`` and a throw-away
``group.id`` it never commits to; its position lives in its own checkpoint file.

**Range.** Per partition, ``start`` (inclusive) and ``end`` (exclusive):

* start: ``--from-offset`` (one number for every partition or ``P:N,...``), or ``--from``
  (ISO-8601; see below), or the beginning of the partition;
* end: ``--to-offset`` (exclusive), or the partition's high-watermark measured *from a
  fetch* when the replay is planned (:func:`app.offsets.high_watermarks`: ListOffsets is
  wrong on Tansu), so "to the end" means "to the end as it was when the replay began"
  and a busy topic cannot keep a replay running forever. A partition is finished when a
  record at/after its end shows up or the broker reports end-of-partition at/after it;
  if a partition really ends before the requested end, when end-of-partition was reported
  and no record arrived for ``idle_s`` seconds (:class:`app.offsets.RangeReader`). The
  ends are fixed in the checkpoint, so a resumed replay covers exactly the same range.
* time range ``--from``/``--to`` = records with ``from <= timestamp < to``. The start
  offset comes from ``offsets_for_times`` (imprecise on Tansu: broker write time per
  batch, 0 past the end), checked and widened backwards by reading record timestamps
  (:func:`app.offsets.seek_start_for_time`), and **every record is filtered by its own
  timestamp**, so the set of replayed records is exact. Reading continues to the end (a
  late record with an in-range timestamp is still found) unless ``time_slack_ms`` is
  given: then a partition stops at its first record newer than ``to + slack``.

**Checkpoint** (JSON, rewritten atomically after every batch the store acknowledged and
whose dead letters Kafka acknowledged)::

    {"format": "embedstream.replay-checkpoint/1", "name": "...", "topic": "...",
     "range": {...the requested range...},
     "target": {"store": "lancedb", "collection": "...", "fingerprint": "...", ...},
     "partitions": {"0": {"start": 0, "end": 120, "end_method": "fetch", "next": 64,
                          "done": false, "records": 60, "filtered": 4}, ...},
     "counts": {"UPSERT/written": 57, ...}, "dead_letters": 1,
     "complete": false, "started": "...", "updated": "..."}

``next`` is the first offset not yet applied; a resume continues from there, to the same
ends, into the same target (checked). Records between the last checkpoint and an abrupt
stop are applied again on resume, which the Processor's idempotent writes and version
rules absorb (at least once, like the worker).

**Stopping.** :meth:`Replayer.request_stop` (the CLI's first Ctrl-C) stops after the
batch in flight was written and checkpointed; ``max_records`` stops after at least that
many records (a test hook and a "sample" run).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

from app.config import ConfigError, Settings
from app.deadletter import Record
from app.offsets import (RangeReader, broker_flavour, reader_consumer, format_ms, high_watermarks, seek_start_for_time,
                         select_partitions, topic_partitions)

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "embedstream.replay-checkpoint/1"


class ReplayError(RuntimeError):
    """The replay cannot start or continue (bad range, checkpoint of another target, DLQ failure)."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_checkpoint_path(settings: Settings, name: str) -> Path:
    """``<data_dir>/replay/<name>.json``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return Path(settings.data_dir) / "replay" / f"{safe}.json"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
@dataclass
class ReplayRange:
    """What to replay. Offsets are inclusive starts / exclusive ends; times ``from <= ts < to``."""

    partitions: list[int] | None = None
    from_offsets: int | dict[int, int] | None = None
    to_offsets: int | dict[int, int] | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    #: stop a partition at its first record newer than ``to_ms + time_slack_ms`` (None: read to the end)
    time_slack_ms: int | None = None

    def validate(self) -> None:
        if self.from_offsets is not None and self.from_ms is not None:
            raise ConfigError("give a start offset or a start time, not both")
        if self.from_ms is not None and self.to_ms is not None and self.to_ms <= self.from_ms:
            raise ConfigError("--to must be after --from")
        for v in (self.from_offsets, self.to_offsets):
            vals = v.values() if isinstance(v, dict) else [v] if v is not None else []
            if any(x < 0 for x in vals):
                raise ConfigError("offsets must be >= 0")

    def selected(self, all_partitions: list[int]) -> list[int]:
        if self.partitions is not None:
            return select_partitions(all_partitions, self.partitions)
        keys: set[int] = set()
        for v in (self.from_offsets, self.to_offsets):
            if isinstance(v, dict):
                keys |= set(v)
        return select_partitions(all_partitions, sorted(keys) if keys else None)

    def to_json(self) -> dict:
        def enc(v):
            return {str(k): x for k, x in v.items()} if isinstance(v, dict) else v
        d = asdict(self)
        d["from_offsets"], d["to_offsets"] = enc(self.from_offsets), enc(self.to_offsets)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ReplayRange":
        def dec(v):
            return {int(k): int(x) for k, x in v.items()} if isinstance(v, dict) else v
        return cls(partitions=d.get("partitions"), from_offsets=dec(d.get("from_offsets")),
                   to_offsets=dec(d.get("to_offsets")), from_ms=d.get("from_ms"), to_ms=d.get("to_ms"),
                   time_slack_ms=d.get("time_slack_ms"))

    def describe(self) -> str:
        parts = []
        if self.from_ms is not None or self.to_ms is not None:
            parts.append(f"time [{format_ms(self.from_ms) if self.from_ms is not None else 'beginning'}, "
                         f"{format_ms(self.to_ms) if self.to_ms is not None else 'end'})")
        if self.from_offsets is not None or self.to_offsets is not None:
            parts.append(f"offsets [{self.from_offsets if self.from_offsets is not None else 'beginning'}, "
                         f"{self.to_offsets if self.to_offsets is not None else 'end'})")
        if self.partitions is not None:
            parts.append(f"partitions {self.partitions}")
        return ", ".join(parts) or "everything (beginning to the current end)"


@dataclass
class PartitionPlan:
    start: int
    end: int | None
    end_method: str
    next: int
    done: bool = False
    records: int = 0
    filtered: int = 0

    @classmethod
    def from_json(cls, d: dict) -> "PartitionPlan":
        return cls(**{k: d[k] for k in ("start", "end", "end_method", "next", "done", "records", "filtered")})


def plan_partitions(settings: Settings, topic: str, rng: ReplayRange) -> dict[int, PartitionPlan]:
    """Resolve the range to per-partition start/end offsets (reads the broker)."""
    from confluent_kafka import TopicPartition

    rng.validate()
    parts = rng.selected(topic_partitions(settings, topic))
    marks = high_watermarks(settings, topic, parts)
    starts: dict[int, int] = {}
    if rng.from_ms is not None:
        c = reader_consumer(settings)
        try:
            hints = {tp.partition: tp.offset for tp in
                     c.offsets_for_times([TopicPartition(topic, p, rng.from_ms) for p in parts], timeout=15)}
            exact = broker_flavour(settings) == "kafka"  # offsets_for_times is exact there
            for p in parts:
                hint = hints.get(p, -1)
                if exact:
                    starts[p] = marks[p].high if hint < 0 else hint
                else:
                    starts[p] = seek_start_for_time(c, topic, p, rng.from_ms, hint, marks[p])
        finally:
            c.close()
    for p in parts:
        if p not in starts:
            f = rng.from_offsets
            starts[p] = f if isinstance(f, int) else (f or {}).get(p, marks[p].low)
        starts[p] = max(starts[p], marks[p].low)
    plans: dict[int, PartitionPlan] = {}
    for p in parts:
        t = rng.to_offsets
        explicit = t if isinstance(t, int) else (t or {}).get(p)
        if explicit is not None:
            end, method = explicit, "offset"
        elif not marks[p].exact:
            end, method = None, "idle"  # no fetch answered: stop on end-of-partition + idle time
        else:
            end, method = marks[p].high, marks[p].method
        plans[p] = PartitionPlan(start=starts[p], end=end, end_method=method, next=starts[p],
                                 done=end is not None and starts[p] >= end)
    return plans


# ----------------------------------------------------------------------------------------
class ProgressDisplay:
    """Per-partition progress with rate and ETA: redrawn in place on a TTY, plain periodic
    lines otherwise (logs, CI, ``| tee``)."""

    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None, tty: bool | None = None,
                 label: str = "replay"):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 10.0)
        self.label = label
        self._last = 0.0
        self._lines = 0
        self._started = time.monotonic()
        self._first: dict[int, int] = {}

    def begin(self, plans: dict[int, PartitionPlan]) -> None:
        """Start measuring rates for a (new or resumed) run."""
        self._started = time.monotonic()
        self._first = {p: pl.next for p, pl in plans.items()}
        self._last = 0.0
        self._lines = 0

    def update(self, plans: dict[int, PartitionPlan], applied: int = 0, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        lines = []
        tot_done = tot_all = tot_rate_n = 0
        unknown = False
        for p, pl in sorted(plans.items()):
            first = self._first.setdefault(p, pl.next)
            done_n = pl.next - pl.start
            total = None if pl.end is None else max(pl.end - pl.start, 0)
            rate = (pl.next - first) / elapsed
            tot_done += done_n
            tot_rate_n += pl.next - first
            if total is None:
                unknown = True
            else:
                tot_all += total
            if pl.done:
                eta = "done"
            elif total is not None and rate > 0:
                eta = f"ETA {(pl.end - pl.next) / rate:.0f}s"
            else:
                eta = "ETA ?"
            pct = f"{100.0 * done_n / total:5.1f}%" if total else ("100.0%" if total == 0 else "    ?")
            lines.append(f"  p{p:<3} {done_n:>9}/{total if total is not None else '?':<9} {pct}  "
                         f"{rate:8.0f}/s  {eta}")
        rate = tot_rate_n / elapsed
        left = tot_all - tot_done
        eta = "?" if unknown or rate <= 0 else f"{left / rate:.0f}s"
        head = (f"{self.label}: {tot_done}/{'?' if unknown else tot_all} offsets, {applied} records applied, "
                f"{rate:.0f}/s, ETA {eta if left > 0 else '0s'}")
        if self.tty:
            if self._lines:
                self.stream.write(f"\x1b[{self._lines}F")
            for ln in [head, *lines]:
                self.stream.write("\x1b[2K" + ln + "\n")
            self._lines = 1 + len(lines)
        else:
            stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
            self.stream.write(f"{stamp} {head}\n")
            for ln in lines:
                self.stream.write(f"{stamp} {ln}\n")
        self.stream.flush()


# ----------------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    name: str
    checkpoint: str | None
    complete: bool
    interrupted: bool
    dry_run: bool
    records: int
    filtered: int
    dead_letters: int
    elapsed_s: float
    counts: dict[str, int]
    partitions: dict[int, dict]
    short_ends: dict[int, int] = field(default_factory=dict)

    def summary(self) -> str:
        state = "complete" if self.complete else ("interrupted" if self.interrupted else "stopped")
        lines = [f"{'dry run' if self.dry_run else 'replay'} {self.name}: {state}, {self.records} records"
                 f" ({self.filtered} outside the time range skipped, {self.dead_letters} dead-lettered) "
                 f"in {self.elapsed_s:.1f}s"]
        for p, d in sorted(self.partitions.items()):
            extra = " ".join(f"{k}={v}" for k, v in sorted(d.get("ops", {}).items()))
            lines.append(f"  p{p}: offsets [{d['start']}, {d['end'] if d['end'] is not None else '?'}) "
                         f"next={d['next']} records={d['records']} {extra}".rstrip())
        if self.counts:
            lines.append("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        for p, at in sorted(self.short_ends.items()):
            lines.append(f"  note: partition {p} ended at {at}, before the requested end")
        return "\n".join(lines)


def _headers(msg) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v if isinstance(v, bytes) else (b"" if v is None else str(v).encode()))
                 for k, v in (msg.headers() or ()))


def to_record(msg) -> Record:
    return Record(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), key=msg.key(),
                  value=msg.value(), headers=_headers(msg), timestamp_ms=int(msg.timestamp()[1]))


def describe_target(settings: Settings, store) -> dict:
    out = {"store": settings.store, "collection_prefix": settings.collection_prefix,
           "fingerprint": getattr(store, "fingerprint", None),
           "collection": getattr(store, "collection", None) or getattr(store, "collection_name", None)}
    if settings.store == "lancedb":
        out["data_dir"] = str(Path(settings.data_dir).resolve())
    else:
        out["weaviate_url"] = settings.weaviate_url
    return out


class Replayer:
    """One replay run (new, or resumed from a checkpoint). See the module doc.

    ``processor`` is a ready :class:`~app.pipeline.Processor` (None only for ``dry_run``).
    ``dlq``: send dead letters to ``dlq_topic`` (default the settings' DLQ topic); False only
    counts them (the reindex: the live worker already dead-lettered those records).
    ``on_batch(replayer, result)`` is called after each checkpointed batch.
    """

    def __init__(self, settings: Settings, state: dict, *, processor=None, dry_run: bool = False,
                 checkpoint: Path | None = None, max_rate: float | None = None, batch_size: int | None = None,
                 idle_s: float = 2.0, max_records: int | None = None, progress: ProgressDisplay | None = None,
                 dlq: bool = True, dlq_topic: str | None = None,
                 on_batch: Callable[["Replayer", object], None] | None = None, worker_id: str | None = None):
        if processor is None and not dry_run:
            raise ValueError("a processor is needed unless dry_run")
        self.settings = settings
        self.state = state
        self.processor = processor
        self.dry_run = dry_run
        self.checkpoint = None if dry_run else checkpoint
        self.max_rate = max_rate if max_rate and max_rate > 0 else None
        bs = batch_size or settings.batch_max_events
        if self.max_rate:
            bs = max(1, min(bs, int(self.max_rate)))  # a batch is at most ~1 s of the rate budget
        self.batch_size = bs
        self.idle_s = idle_s
        self.max_records = max_records
        self.progress = progress
        self.dlq = dlq
        self.dlq_topic = dlq_topic or settings.dlq_topic
        self.on_batch = on_batch
        self.worker_id = worker_id or f"{settings.app_id}.replay"
        self.plans = {int(p): PartitionPlan.from_json(d) for p, d in state["partitions"].items()}
        self.rng = ReplayRange.from_json(state["range"])
        self._stop = threading.Event()
        self._producer = None
        self._codec = None
        self._ops: dict[int, Counter] = defaultdict(Counter)
        for p, d in state["partitions"].items():
            self._ops[int(p)].update(d.get("ops", {}))
        self.applied = 0  # records applied in this run

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: Settings, rng: ReplayRange, *, name: str | None = None, topic: str | None = None,
              processor=None, dry_run: bool = False, checkpoint: Path | str | None = None, **kw) -> "Replayer":
        """Plan a new replay. ``checkpoint`` defaults to ``<data_dir>/replay/<name>.json``."""
        topic = topic or settings.changes_topic
        name = name or f"replay-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:4]}"
        plans = plan_partitions(settings, topic, rng)
        state = {"format": CHECKPOINT_FORMAT, "name": name, "topic": topic, "range": rng.to_json(),
                 "target": describe_target(settings, processor.store) if processor is not None else None,
                 "partitions": {str(p): asdict(pl) for p, pl in plans.items()}, "counts": {},
                 "dead_letters": 0, "complete": False, "started": _now_iso(), "updated": _now_iso()}
        path = None
        if not dry_run:
            path = Path(checkpoint) if checkpoint else default_checkpoint_path(settings, name)
        r = cls(settings, state, processor=processor, dry_run=dry_run, checkpoint=path, **kw)
        if path is not None:
            r._save()
        return r

    @classmethod
    def resume(cls, settings: Settings, checkpoint: Path | str, *, processor=None, **kw) -> "Replayer":
        """Continue the replay of a checkpoint file, into the same target (checked)."""
        path = Path(checkpoint)
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReplayError(f"cannot read checkpoint {path}: {exc}") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ReplayError(f"{path} is not a replay checkpoint ({state.get('format')!r})")
        if processor is not None and state.get("target"):
            want, have = state["target"], describe_target(settings, processor.store)
            for k in ("store", "fingerprint", "collection"):
                if want.get(k) != have.get(k):
                    raise ReplayError(f"checkpoint {path} replays into {k}={want.get(k)!r}, but this run would "
                                      f"write to {have.get(k)!r}: use the same store settings and model variant")
        return cls(settings, state, processor=processor, checkpoint=path, **kw)

    # -- control -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.state["name"]

    @property
    def topic(self) -> str:
        return self.state["topic"]

    def request_stop(self) -> None:
        """Stop after the batch in flight was written and checkpointed."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> ReplayReport:
        started = time.monotonic()
        todo = {p: pl for p, pl in self.plans.items() if not pl.done}
        interrupted = False
        short: dict[int, int] = {}
        if self.progress:
            self.progress.begin(self.plans)
        if todo:
            consumer = reader_consumer(self.settings)
            try:
                interrupted, short = self._loop(consumer, todo, started)
            finally:
                consumer.close()
                if self._producer is not None:
                    self._producer.flush(30)
        complete = all(pl.done for pl in self.plans.values())
        self.state["complete"] = complete
        self._save()
        if self.progress and todo:
            self.progress.update(self.plans, self.applied, force=True)
        return self._report(complete, interrupted, time.monotonic() - started, short)

    def _loop(self, consumer, todo: dict[int, PartitionPlan], started: float) -> tuple[bool, dict[int, int]]:
        reader = RangeReader(consumer, self.topic, {p: pl.next for p, pl in todo.items()},
                             {p: pl.end for p, pl in todo.items()}, idle_s=self.idle_s)
        self._reader = reader
        pending: list = []
        pending_next: dict[int, int] = {}
        pending_filtered: Counter = Counter()
        rng = self.rng
        for msgs in reader:
            for m in msgs:
                p = m.partition()
                ts = m.timestamp()[1]
                pending_next[p] = m.offset() + 1
                if rng.from_ms is not None and ts < rng.from_ms or rng.to_ms is not None and ts >= rng.to_ms:
                    pending_filtered[p] += 1
                    if (rng.to_ms is not None and rng.time_slack_ms is not None
                            and ts > rng.to_ms + rng.time_slack_ms):
                        reader._finish(p)
                    continue
                pending.append(m)
                if len(pending) >= self.batch_size:
                    self._flush(pending, pending_next, pending_filtered, started)
                    if self._should_stop():
                        return True, reader.short_ends()
            if not msgs and (pending or pending_next):
                self._flush(pending, pending_next, pending_filtered, started)
            if self._should_stop():
                if pending or pending_next:
                    self._flush(pending, pending_next, pending_filtered, started)
                return True, reader.short_ends()
            if self.progress:
                self.progress.update(self.plans, self.applied)
        self._flush(pending, pending_next, pending_filtered, started)
        for p, pos in reader.positions.items():  # the ends (also past compaction gaps / markers)
            pl = self.plans[p]
            pl.next = max(pl.next, pos)
            pl.done = True
        return False, reader.short_ends()

    def _should_stop(self) -> bool:
        return self._stop.is_set() or (self.max_records is not None and self.applied >= self.max_records)

    def _flush(self, pending: list, pending_next: dict[int, int], filtered: Counter, started: float) -> None:
        result = None
        if pending:
            records = [to_record(m) for m in pending]
            if self.dry_run:
                self._count_ops(records)
            else:
                result = self.processor.process(records)
                if result.dead_letters:
                    self._dead_letters(result.dead_letters)
                counts = Counter(self.state.get("counts", {}))
                for (op, outcome), n in result.outcomes.items():
                    counts[f"{op}/{outcome}"] += n
                self.state["counts"] = dict(counts)
            for r in records:
                self.plans[r.partition].records += 1
            self.applied += len(records)
        for p, n in filtered.items():
            self.plans[p].filtered += n
        for p, nxt in pending_next.items():
            self.plans[p].next = max(self.plans[p].next, nxt)
        reader = getattr(self, "_reader", None)
        if reader is not None:  # partitions the reader finished, all of whose records are flushed
            for p, ps in reader.parts.items():
                if ps.done and ps.position == self.plans[p].next:
                    self.plans[p].done = True
        pending.clear()
        pending_next.clear()
        filtered.clear()
        self._save()
        if self.progress:
            self.progress.update(self.plans, self.applied)
        if self.on_batch is not None and result is not None:
            self.on_batch(self, result)
        self._pace(started)

    def _pace(self, started: float) -> None:
        if not self.max_rate:
            return
        due = started + self.applied / self.max_rate
        wait = due - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)

    def _count_ops(self, records: list[Record]) -> None:
        from app.components import build_codec
        from app.events import DecodeError

        if self._codec is None:
            self._codec = build_codec(self.settings)
        for r in records:
            try:
                ev = self._codec.decode(r.key, r.value, r.topic)
                op = "TOMBSTONE" if ev.is_tombstone else ev.op.value
            except DecodeError as exc:
                op = f"invalid:{exc.reason}"
            self._ops[r.partition][op] += 1

    def _dead_letters(self, dead_letters) -> None:
        self.state["dead_letters"] = int(self.state.get("dead_letters", 0)) + len(dead_letters)
        for d in dead_letters:
            log.warning("dead letter %s:%d@%d reason=%s %s", d.record.topic, d.record.partition, d.record.offset,
                        d.reason, d.detail[:200])
        if not self.dlq:
            return
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer(self.settings.producer_config(**{"enable.idempotence": True,
                                                                       "linger.ms": 5}))
        errors: list[str] = []

        def on_delivery(err, msg):
            if err is not None:
                errors.append(str(err))

        for d in dead_letters:
            while True:
                try:
                    self._producer.produce(self.dlq_topic, key=d.record.key, value=d.record.value,
                                           headers=d.headers(self.worker_id), on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.1)
        left = self._producer.flush(60)
        if left or errors:
            raise ReplayError(f"{left + len(errors)} dead letter(s) not acknowledged by Kafka "
                              f"({'; '.join(errors[:3])}); the checkpoint was not advanced")

    # -- state -----------------------------------------------------------------------------------
    def _save(self) -> None:
        for p, pl in self.plans.items():
            d = asdict(pl)
            ops = {k: v for k, v in self._ops.get(p, Counter()).items() if v}
            if ops:
                d["ops"] = ops
            self.state["partitions"][str(p)] = d
        self.state["updated"] = _now_iso()
        if self.checkpoint is not None:
            write_json_atomic(self.checkpoint, self.state)

    def _report(self, complete: bool, interrupted: bool, elapsed: float, short: dict[int, int]) -> ReplayReport:
        parts = {int(p): dict(d) for p, d in self.state["partitions"].items()}
        return ReplayReport(
            name=self.name, checkpoint=str(self.checkpoint) if self.checkpoint else None, complete=complete,
            interrupted=interrupted, dry_run=self.dry_run, records=sum(pl.records for pl in self.plans.values()),
            filtered=sum(pl.filtered for pl in self.plans.values()),
            dead_letters=int(self.state.get("dead_letters", 0)), elapsed_s=elapsed,
            counts=dict(self.state.get("counts", {})), partitions=parts, short_ends=short)


def open_target(settings: Settings, encoder=None, store=None):
    """Encoder, store and Processor for a replay target from settings (store/collection prefix/model)."""
    from app.components import build_encoder, build_processor, open_store

    encoder = encoder or build_encoder(settings)
    store = store or open_store(settings, encoder.fingerprint, encoder.dim)
    return build_processor(settings, encoder, store)


# ----------------------------------------------------------------------------------------
# dead letters: read the DLQ topic, re-inject into the changes topic
@dataclass
class DeadLetterView:
    """One record of the dead-letter topic, its x-dlq-* headers parsed."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return (v or b"").decode("utf-8", "replace")
        return ""

    @property
    def reason(self) -> str:
        return self.header("x-dlq-reason") or "?"

    def as_dict(self, preview: int = 64) -> dict:
        from app.deadletter import strip_dlq_headers

        def num(name):
            v = self.header(name)
            return int(v) if v.lstrip("-").isdigit() else None

        value = self.value or b""
        return {"dlq_partition": self.partition, "dlq_offset": self.offset, "reason": self.reason,
                "detail": self.header("x-dlq-detail"), "stage": self.header("x-dlq-stage"),
                "time": format_ms(num("x-dlq-time") or self.timestamp_ms),
                "source_topic": self.header("x-dlq-source-topic"),
                "source_partition": num("x-dlq-source-partition"), "source_offset": num("x-dlq-source-offset"),
                "source_time": format_ms(num("x-dlq-source-timestamp")), "worker": self.header("x-dlq-worker"),
                "key": None if self.key is None else self.key.decode("utf-8", "replace"),
                "value_size": None if self.value is None else len(value),
                "value_preview_hex": value[:preview].hex(" "),
                "value_preview": value[:preview].decode("utf-8", "replace"),
                "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in strip_dlq_headers(self.headers)}}


def read_dead_letters(settings: Settings, topic: str | None = None, from_offsets: int | dict[int, int] | None = None,
                      reason: str | None = None, limit: int | None = None, idle_s: float = 1.0):
    """Dead letters from the beginning (or ``from_offsets``) to the current end of the DLQ topic,
    read with manual assignment (no group, nothing committed). Returns (letters, ends)."""
    topic = topic or settings.dlq_topic
    parts = topic_partitions(settings, topic)
    marks = high_watermarks(settings, topic, parts)
    starts = {p: max(marks[p].low, from_offsets if isinstance(from_offsets, int) else
                     (from_offsets or {}).get(p, marks[p].low)) for p in parts}
    ends = {p: (marks[p].high if marks[p].exact else None) for p in parts}
    out: list[DeadLetterView] = []
    c = reader_consumer(settings)
    try:
        reader = RangeReader(c, topic, starts, ends, idle_s=idle_s)
        for msgs in reader:
            for m in msgs:
                dl = DeadLetterView(m.partition(), m.offset(), int(m.timestamp()[1]), m.key(), m.value(), _headers(m))
                if reason is None or dl.reason == reason:
                    out.append(dl)
                    if limit is not None and len(out) >= limit:
                        return out, reader.positions
        return out, reader.positions
    finally:
        c.close()


def reinject_dead_letters(settings: Settings, letters: list[DeadLetterView], topic: str | None = None) -> int:
    """Produce each dead letter to the changes topic with its original key, value and headers
    (the x-dlq-* headers removed); returns how many Kafka acknowledged (raises on failures)."""
    from confluent_kafka import Producer

    from app.deadletter import strip_dlq_headers

    topic = topic or settings.changes_topic
    # the Java-compatible partitioner: a re-injected record lands where its document's other records are
    producer = Producer(settings.producer_config(**{"enable.idempotence": True, "linger.ms": 5}))
    errors: list[str] = []
    ok = 0

    def on_delivery(err, msg):
        nonlocal ok
        if err is not None:
            errors.append(str(err))
        else:
            ok += 1

    for dl in letters:
        while True:
            try:
                producer.produce(topic, key=dl.key, value=dl.value, headers=strip_dlq_headers(dl.headers) or None,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(60)
    if left or errors:
        raise ReplayError(f"{left + len(errors)} of {len(letters)} re-injected record(s) not acknowledged "
                          f"({'; '.join(errors[:3])})")
    return ok

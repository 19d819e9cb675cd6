"""Load generator: a realistic stream of document-change events to Kafka.

    python -m load.loadgen --bootstrap-servers 127.0.0.1:9092 --rate 50 --duration 60
    python -m load.loadgen --rate max --events 10000 --mix new=1          # bulk load
    python -m load.loadgen --events 100 --jsonl - | embedstream produce -  # JSON lines instead

This module doubles as the reference for producers. An event for embedstream is:

* **keyed by ``doc_id``** (UTF-8 bytes), so every change of one document lands in one
  partition and is consumed in order;
* **versioned**: ``version`` is an integer that increases with every change of that
  document (the producer's own counter, a database row version, an LSN ...). The worker
  drops lower versions (``stale``), treats the same version with the same text as a
  redelivery (``duplicate``) and dead-letters the same version with other text
  (``version-conflict``). A newer version with unchanged text is cheap: the stored
  vectors are reused;
* **Avro** ``DocumentChange`` (``schemas/document_change.avsc``) encoded with
  :class:`app.events.EventCodec` - single-object framing by default, the Confluent wire
  format when a schema registry is configured;
* **deleted** either with ``op=DELETE`` and a newer version, or with a *tombstone*: the
  key with a null value (the worker keeps the stored version and deletes every chunk).

Delivery: a ``confluent_kafka.Producer`` with idempotence (acks=all); every message gets a
delivery report, and the process exits 1 if any message was not delivered.

The stream model (:class:`ChangeStream`, seeded, reproducible):

* kinds of change, mixed by weight (``--mix``): ``new`` documents, ``update`` (the text is
  revised: some sentences rewritten, one added or dropped), ``resend`` (the same version and
  text again: an at-least-once upstream redelivering), ``touch`` (a newer version with the
  same text: a metadata-only change), ``delete`` (op DELETE, newer version) and
  ``tombstone`` (null value);
* document lengths from a :class:`load.texts.LengthMix` (``--lengths``): short notes of
  10-50 words up to multi-chunk articles of 600-2000 words;
* key skew: changes to existing documents pick the document by a Zipf law over creation
  rank with exponent ``--zipf`` (0 = uniform; ~1 = a few hot documents get most updates);
* rate: token bucket at ``--rate`` events/s (``max`` = as fast as the producer takes them),
  bounded by ``--events`` and/or ``--duration``.
"""
from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from load.texts import DEFAULT_MIX, LengthMix, TextGenerator

KINDS = ("new", "update", "resend", "touch", "delete", "tombstone")
DEFAULT_KIND_MIX = "new=0.30,update=0.40,resend=0.08,touch=0.10,delete=0.06,tombstone=0.06"


def now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------------
@dataclass
class Change:
    """One change before encoding. ``op`` None means a tombstone (key + null value).

    ``event_time_ms`` None means "stamp with the wall clock when it is produced".
    """

    kind: str
    doc_id: str
    op: str | None  # "UPSERT" | "DELETE" | None (tombstone)
    version: int | None
    text: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None
    event_time_ms: int | None = None

    def to_json(self) -> dict:
        """The `embedstream produce` JSON-lines format."""
        if self.op is None:
            return {"doc_id": self.doc_id, "tombstone": True}
        out = {"doc_id": self.doc_id, "op": self.op, "version": self.version, "metadata": self.metadata,
               "event_id": self.event_id, "source": "loadgen"}
        if self.text is not None:
            out["text"] = self.text
        if self.event_time_ms is not None:
            out["event_time"] = self.event_time_ms
        return out


def parse_kind_mix(spec: str) -> dict[str, float]:
    """``new=0.3,update=0.4,...`` -> weights (missing kinds weigh 0)."""
    out = dict.fromkeys(KINDS, 0.0)
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        if name not in out or not w:
            raise ValueError(f"bad mix entry {part!r}: expected one of {', '.join(KINDS)} as name=weight")
        out[name] = float(w)
        if out[name] < 0:
            raise ValueError(f"negative weight in {part!r}")
    if out["new"] <= 0:
        raise ValueError("the mix needs new > 0 (other kinds act on existing documents)")
    return out


@dataclass
class _Doc:
    doc_id: str
    version: int
    text: str
    topic: str
    title: str
    deleted: bool = False
    last_meta: dict[str, str] = field(default_factory=dict)


class ChangeStream:
    """Seeded, endless iterator of realistic :class:`Change` objects with per-document state.

    ``key_space`` caps the number of distinct documents (0: unlimited); once reached, a
    ``new`` becomes an ``update`` (or re-creates a deleted document).
    """

    def __init__(self, seed: int = 0, mix: dict[str, float] | str = DEFAULT_KIND_MIX,
                 lengths: LengthMix = DEFAULT_MIX, zipf: float = 1.0, key_space: int = 0,
                 id_prefix: str = "doc"):
        self.rng = random.Random(seed)
        self.texts = TextGenerator(seed=seed + 1)
        self.mix = parse_kind_mix(mix) if isinstance(mix, str) else dict(mix)
        self.lengths = lengths
        self.zipf = zipf
        self.key_space = key_space
        self.id_prefix = id_prefix
        self.docs: list[_Doc] = []       # in creation order = Zipf rank order (oldest hottest)
        self._cum: list[float] = []      # cumulative Zipf weights 1/rank^s
        self._n = 0                      # event counter (event ids)

    # -- choosing documents --------------------------------------------------------------
    def _pick(self, live: bool = True, tries: int = 8) -> _Doc | None:
        if not self.docs:
            return None
        for _ in range(tries):
            u = self.rng.random() * self._cum[-1]
            doc = self.docs[min(bisect.bisect_right(self._cum, u), len(self.docs) - 1)]
            if not live or not doc.deleted:
                return doc
        return None

    def _create(self) -> _Doc:
        words, cls = self.lengths.sample(self.rng)
        d = self.texts.document(words, cls)
        doc = _Doc(f"{self.id_prefix}-{len(self.docs):07d}", 1, d.text, d.topic, d.title)
        self.docs.append(doc)
        rank = len(self.docs)
        self._cum.append((self._cum[-1] if self._cum else 0.0) + rank ** -self.zipf)
        return doc

    def _meta(self, doc: _Doc, kind: str) -> dict[str, str]:
        if kind == "resend":  # a true redelivery: byte-for-byte the same fields
            return doc.last_meta
        doc.last_meta = {"title": doc.title, "topic": doc.topic, "change": kind}
        return doc.last_meta

    # -- the stream -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Change]:
        return self

    def __next__(self) -> Change:
        kinds = list(self.mix)
        kind = self.rng.choices(kinds, weights=[self.mix[k] for k in kinds])[0]
        self._n += 1
        event_id = f"lg-{self._n:09d}-{self.rng.getrandbits(32):08x}"
        if kind == "new" and self.key_space and len(self.docs) >= self.key_space:
            kind = "update"
        doc = None if kind == "new" else self._pick(live=kind != "update")
        if doc is None:  # nothing suitable exists yet: create a document instead
            kind = "new"
            doc = self._create()
            return Change("new", doc.doc_id, "UPSERT", doc.version, doc.text, self._meta(doc, kind), event_id)
        if kind == "update":
            # also re-creates a deleted document (a newer upsert after a delete is valid)
            doc.version += 1
            doc.text = self.texts.edit(doc.text, doc.topic) if not doc.deleted else \
                self.texts.text(self.lengths.sample(self.rng)[0], doc.topic)
            doc.deleted = False
        elif kind == "resend":
            pass  # same version, same text: the worker counts it as a duplicate
        elif kind == "touch":
            doc.version += 1  # newer version, same text: vectors are reused, not re-encoded
        elif kind == "delete":
            doc.version += 1
            doc.deleted = True
            return Change(kind, doc.doc_id, "DELETE", doc.version, None, self._meta(doc, kind), event_id)
        elif kind == "tombstone":
            doc.deleted = True  # a tombstone has no version; the next change continues after it
            doc.version += 1
            return Change(kind, doc.doc_id, None, None)
        return Change(kind, doc.doc_id, "UPSERT", doc.version, doc.text, self._meta(doc, kind), event_id)


# ----------------------------------------------------------------------------------------
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked. ``rate`` None: unlimited."""

    def __init__(self, rate: float | None, burst: float | None = None):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, (rate or 0) * 0.05)
        self.tokens = self.burst
        self.last = time.monotonic()

    def wait_time(self) -> float:
        """Seconds until one token is available (0: take it now)."""
        if self.rate is None:
            return 0.0
        t = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
        self.last = t
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        if self.rate is not None:
            self.tokens -= 1


@dataclass
class Stats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    #: (doc_id, version, event_time_ms) of every UPSERT/DELETE sent, when ``record`` is set
    sent_log: list[tuple[str, int | None, int]] | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.sent / max(self.elapsed, 1e-9)

    def as_dict(self) -> dict:
        return {"sent": self.sent, "delivered": self.delivered, "failed": self.failed, "bytes": self.bytes,
                "elapsed_s": round(self.elapsed, 3), "rate_eps": round(self.rate, 2), "by_kind": self.by_kind,
                "errors": self.errors[:10]}


def encode_change(codec, change: Change, event_time_ms: int, framing: str = "auto",
                  topic: str = "changes") -> tuple[bytes, bytes | None]:
    """(key, value) of a change: the key is always the doc_id; a tombstone's value is None."""
    from app.events import ChangeEvent, Op

    key = change.doc_id.encode("utf-8")
    if change.op is None:
        return key, None
    ev = ChangeEvent(doc_id=change.doc_id, op=Op(change.op), version=change.version,
                     event_time_ms=event_time_ms, text=change.text, metadata=change.metadata,
                     event_id=change.event_id, source="loadgen")
    return key, codec.encode(ev, framing=framing, topic=topic)


def make_producer(kafka_config: dict, extra: dict | None = None):
    """A producer suited to change events: idempotent (acks=all, ordered per partition)."""
    from confluent_kafka import Producer

    # No compression by default: the worker's aiokafka decompresses lz4/snappy/zstd only when
    # cramjam is installed (gzip always works); see --producer-config compression.type=gzip.
    from app.config import PRODUCER_PARTITIONER

    conf = {**kafka_config, "enable.idempotence": True, "linger.ms": 5,
            "queue.buffering.max.messages": 200_000, "partitioner": PRODUCER_PARTITIONER}
    conf.update(extra or {})
    return Producer(conf)


def debezium_encoder(table=None) -> Callable[[Change, int], tuple[bytes, bytes | None]]:
    """(key, value) of a change as a Debezium PostgreSQL connector would send it for a
    ``documents(id, title, body)`` table (:class:`load.cdc.PostgresTable`, JSON with the schema
    envelope): new -> op c, other upserts -> u, DELETE -> d, tombstone -> null value; the LSN is
    the change's version (it grows per document, as a row's LSNs do). Map the topic with
    ``table.inputs_toml()``: the embedded text is the body, so the same documents cost the worker
    the same encoder work as in the native schema."""
    from load.cdc import PostgresTable

    table = table or PostgresTable()

    def encode(change: Change, event_time_ms: int) -> tuple[bytes, bytes | None]:
        key = table.key(change.doc_id)
        if change.op is None:
            return key, None
        if change.op == "DELETE":
            return key, table.value("d", change.doc_id, change.version, event_time_ms)
        op = "c" if change.kind == "new" else "u"
        return key, table.value(op, change.doc_id, change.version, event_time_ms,
                                title=change.metadata.get("title"), body=change.text)
    encode.table = table
    return encode


def produce(changes: Iterable[Change], producer, topic: str, codec, *, rate: float | None = None,
            max_events: int | None = None, duration: float | None = None, framing: str = "auto",
            progress_every: float = 5.0, progress: Callable[[str], None] | None = None,
            record: bool = False, flush_timeout: float = 60.0,
            encode: Callable[[Change, int], tuple[bytes, bytes | None]] | None = None) -> Stats:
    """Send changes at ``rate`` events/s (None: as fast as possible) until the iterator ends,
    ``max_events`` were sent or ``duration`` seconds passed; then wait for every delivery report.

    Each event's ``event_time`` is the wall-clock ms at the moment it is handed to the
    producer (unless the change carries its own), so consumers can measure freshness.
    """
    from confluent_kafka import KafkaException

    stats = Stats(sent_log=[] if record else None)
    bucket = TokenBucket(rate)
    deadline = stats.started + duration if duration else None
    next_report = stats.started + progress_every

    def on_delivery(err, msg):
        if err is None:
            stats.delivered += 1
        else:
            stats.failed += 1
            if len(stats.errors) < 100:
                stats.errors.append(f"{msg.key()!r}: {err}")

    def report(final: bool = False):
        if progress is not None:
            progress(f"[loadgen] {'done' if final else 'progress'}: t={stats.elapsed:.1f}s sent={stats.sent} "
                     f"delivered={stats.delivered} failed={stats.failed} rate={stats.rate:.1f}/s"
                     + (f" (target {rate:g}/s)" if rate else " (target max)") + f" in_flight={len(producer)}")

    it = iter(changes)
    while max_events is None or stats.sent < max_events:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now >= next_report:
            report()
            next_report = now + progress_every
        wait = bucket.wait_time()
        if wait > 0:
            producer.poll(min(wait, 0.05) if deadline is None else max(0.0, min(wait, 0.05, deadline - now)))
            continue
        try:
            change = next(it)
        except StopIteration:
            break
        et = change.event_time_ms if change.event_time_ms is not None else now_ms()
        key, value = encode(change, et) if encode is not None else encode_change(codec, change, et, framing, topic)
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.05)
            except KafkaException as exc:
                stats.failed += 1
                stats.errors.append(f"{key!r}: {exc}")
                break
        bucket.take()
        stats.sent += 1
        stats.bytes += len(key) + (len(value) if value else 0)
        stats.by_kind[change.kind] = stats.by_kind.get(change.kind, 0) + 1
        if stats.sent_log is not None:
            stats.sent_log.append((change.doc_id, change.version, et))
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    if remaining:
        stats.failed += remaining
        stats.errors.append(f"{remaining} message(s) still undelivered after {flush_timeout}s")
    stats.finished = time.monotonic()
    report(final=True)
    return stats


# ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load.loadgen", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"change kinds: {', '.join(KINDS)} (default mix {DEFAULT_KIND_MIX})\n"
               f"length classes: name:lo-hi(words):weight (default {DEFAULT_MIX.spec()})\n"
               "exit status: 0 all delivered, 1 some delivery failed, 2 bad arguments/configuration")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: env EMBEDSTREAM_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", help="changes topic (default: EMBEDSTREAM_CHANGES_TOPIC / settings)")
    p.add_argument("--rate", default="50", help="events per second (token bucket), or 'max' (default 50)")
    p.add_argument("--events", type=int, help="stop after N events")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same stream")
    p.add_argument("--mix", default=DEFAULT_KIND_MIX, help="change kinds and weights, e.g. new=1,update=2")
    p.add_argument("--lengths", default=DEFAULT_MIX.spec(), help="document length classes (see below)")
    p.add_argument("--zipf", type=float, default=1.0,
                   help="key skew: Zipf exponent over documents by creation rank (0 = uniform; default 1.0)")
    p.add_argument("--key-space", type=int, default=0, help="at most N distinct documents (default unlimited)")
    p.add_argument("--id-prefix", default="doc", help="doc_id prefix (default 'doc': doc-0000000, ...)")
    p.add_argument("--mapping", default="document_change", choices=("document_change", "debezium"),
                   help="record format: document_change (the native schema) or debezium (what a Debezium "
                        "PostgreSQL connector sends for a documents(id, title, body) table; JSON with the "
                        "schema envelope; prints the [[input]] entry that maps the topic)")
    p.add_argument("--framing", default="auto", choices=("auto", "single-object", "confluent"),
                   help="Avro framing (auto: Confluent when EMBEDSTREAM_SCHEMA_REGISTRY_URL is set)")
    p.add_argument("--producer-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka producer setting (repeatable)")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--jsonl", metavar="FILE",
                   help="write the changes as JSON lines (`embedstream produce` format; - = stdout) "
                        "instead of producing to Kafka")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rate = None if str(args.rate).lower() == "max" else float(args.rate)
        if rate is not None and rate <= 0:
            raise ValueError("--rate must be > 0 or 'max'")
        if args.events is None and args.duration is None:
            raise ValueError("give --events N and/or --duration S")
        stream = ChangeStream(seed=args.seed, mix=args.mix, lengths=LengthMix.parse(args.lengths),
                              zipf=args.zipf, key_space=args.key_space, id_prefix=args.id_prefix)
        extra = {}
        for kv in args.producer_config:
            k, sep, v = kv.partition("=")
            if not sep:
                raise ValueError(f"--producer-config {kv!r}: expected KEY=VALUE")
            extra[k] = v
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.jsonl:
        if args.events is None:
            print("error: --jsonl needs --events N", file=sys.stderr)
            return 2
        out = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")
        try:
            for _, change in zip(range(args.events), stream):
                out.write(json.dumps(change.to_json()) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
                say(f"[loadgen] wrote {args.events} changes to {args.jsonl}")
        return 0

    from app.components import build_codec
    from app.config import ConfigError, Settings

    try:
        settings = Settings.load(**({"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}))
        topic = args.topic or settings.changes_topic
        producer = make_producer(settings.kafka_config(), extra)
        codec = build_codec(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    say(f"[loadgen] producing to {topic} on {settings.bootstrap_servers}: rate={args.rate}/s "
        f"events={args.events} duration={args.duration} seed={args.seed} mix={args.mix} zipf={args.zipf}")
    try:
        encode = None
        if args.mapping == "debezium":
            encode = debezium_encoder()
            say("[loadgen] debezium records; map the topic with (EMBEDSTREAM_INPUTS):\n"
                + encode.table.inputs_toml().replace(encode.table.topic, topic))
        stats = produce(stream, producer, topic, codec, rate=rate, max_events=args.events, duration=args.duration,
                        encode=encode,
                        framing=args.framing, progress_every=args.progress_interval, progress=say)
    except KeyboardInterrupt:
        remaining = producer.flush(30)
        say(f"[loadgen] interrupted; {remaining} message(s) undelivered")
        return 1 if remaining else 130
    say("[loadgen] summary: " + json.dumps(stats.as_dict()))
    if stats.failed:
        say(f"[loadgen] {stats.failed} event(s) NOT delivered, e.g. {stats.errors[:3]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

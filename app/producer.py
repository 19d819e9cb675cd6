"""Producer SDK: send document changes to embedstream from Python.

    from app.producer import DocumentProducer

    with DocumentProducer("kafka-1:9092,kafka-2:9092") as p:      # or DocumentProducer(settings=...)
        p.upsert("kb-42", "How to reset a password ...", version=7, metadata={"lang": "en"})
        p.delete("kb-17", version=12)      # op DELETE at a version: a later, older upsert cannot revive it
        p.tombstone("kb-3")                # key + null value: delete whatever is stored
    # leaving the block flushes: it returns once Kafka acknowledged every record, or raises DeliveryError

What it does for you, so that records land where the worker expects them:

* **key** = the doc_id (UTF-8): every change of a document goes to one partition, in order;
* **partitioner** ``murmur2_random``: librdkafka's implementation of the Java client's default
  partitioner (murmur2 of the key, positive, modulo the partition count), so Python, Java and
  kafkajs (``Partitioners.DefaultPartitioner``) producers put a document in the *same*
  partition; librdkafka's own default (``consistent_random``, CRC32) would not;
* **idempotence** (``enable.idempotence``, ``acks=all``): no duplicates or reordering on retries;
* **value** = a ``DocumentChange`` (``schemas/document_change.avsc``) in the single-object framing
  (``C3 01`` + schema fingerprint) or, with a schema registry, the Confluent framing
  (``framing="auto"`` picks Confluent when ``EMBEDSTREAM_SCHEMA_REGISTRY_URL`` is set);
* **checks before sending**: an event the worker would dead-letter (empty or oversized doc_id,
  text over the limit, control characters, too much metadata, a bad content type, a negative
  version) raises :class:`app.events.DecodeError` (a ``ValueError``) at the call, nothing is sent;
* **delivery errors are raised**, never swallowed: a record Kafka did not acknowledge makes the
  next ``upsert``/``delete``/``tombstone`` call, ``flush()``, ``close()`` or the end of the
  ``with`` block raise :class:`DeliveryError` with every failed doc_id and its error.

Versions: ``version`` is an integer that increases with every change of a document (a row
version, an update counter, an LSN, a timestamp in ms). The worker drops a lower version than
the one it stored (``stale``), treats the same version with the same text as a redelivery
(``duplicate``) and dead-letters the same version with other text (``version-conflict``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from app.config import PRODUCER_PARTITIONER as PARTITIONER
from app.events import ChangeEvent, Op

FRAMINGS = ("auto", "single-object", "confluent")


@dataclass(frozen=True)
class DeliveryReport:
    doc_id: str
    topic: str
    partition: int
    offset: int
    error: str | None = None


class DeliveryError(RuntimeError):
    """Records Kafka did not acknowledge: ``failures`` (one report each) and ``undelivered`` (still
    queued when the flush timeout ran out)."""

    def __init__(self, failures: list[DeliveryReport], undelivered: int = 0):
        self.failures = failures
        self.undelivered = undelivered
        parts = []
        if failures:
            shown = ", ".join(f"{f.doc_id!r}: {f.error}" for f in failures[:5])
            parts.append(f"{len(failures)} record(s) not delivered ({shown}{', ...' if len(failures) > 5 else ''})")
        if undelivered:
            parts.append(f"{undelivered} record(s) still undelivered when the flush timed out")
        super().__init__("; ".join(parts) or "delivery failed")


class DocumentProducer:
    """Send document changes to the changes topic (see the module docstring).

    ``bootstrap_servers`` / ``schema_registry_url`` / ``topic`` override the settings
    (default: ``Settings.load()``, i.e. ``EMBEDSTREAM_*`` and ``EMBEDSTREAM_CONFIG``); ``config``
    adds librdkafka producer settings (``linger.ms``, ``compression.type`` ...; the partitioner
    cannot be changed). ``on_delivery`` is called with a :class:`DeliveryReport` per record.
    ``flush_timeout_s`` bounds :meth:`flush`/:meth:`close` (and the ``with`` block's end).
    """

    def __init__(self, bootstrap_servers: str | None = None, *, topic: str | None = None,
                 schema_registry_url: str | None = None, framing: str = "auto", settings=None,
                 config: Mapping[str, Any] | None = None, validate: bool = True,
                 on_delivery: Callable[[DeliveryReport], None] | None = None, flush_timeout_s: float = 60.0):
        from confluent_kafka import Producer

        from app.components import build_codec
        from app.config import Settings

        if framing not in FRAMINGS:
            raise ValueError(f"framing {framing!r}: expected one of {', '.join(FRAMINGS)}")
        over = {k: v for k, v in (("bootstrap_servers", bootstrap_servers),
                                  ("schema_registry_url", schema_registry_url)) if v}
        if settings is None:
            settings = Settings.load(**over)
        elif over:
            settings = settings.replace(**over)
        self.settings = settings
        self.topic = topic or settings.changes_topic
        self.framing = framing
        self.validate = validate
        self.flush_timeout_s = flush_timeout_s
        self._codec = build_codec(settings)
        if framing == "confluent" and self._codec.registry is None:
            raise ValueError("framing='confluent' needs a schema registry URL (EMBEDSTREAM_SCHEMA_REGISTRY_URL)")
        extra = dict(config or {})
        if extra.get("partitioner", PARTITIONER) not in (PARTITIONER, "murmur2"):
            raise ValueError(f"partitioner {extra['partitioner']!r}: embedstream producers use {PARTITIONER} "
                             "(the Java client's partitioning), so a document's changes stay in one partition "
                             "whichever client sent them")
        conf = settings.producer_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 20, **extra})
        self._producer = Producer(conf)
        self._on_delivery = on_delivery
        self._failures: list[DeliveryReport] = []
        self._closed = False
        #: records handed to Kafka / acknowledged / failed
        self.sent = self.delivered = self.failed = 0

    # -- the API ----------------------------------------------------------------------------
    def upsert(self, doc_id: str, text: str, *, version: int, metadata: Mapping[str, str] | None = None,
               event_time_ms: int | None = None, event_id: str | None = None, source: str | None = None,
               content_type: str = "text/plain") -> None:
        """Create or replace a document's text (and metadata) at ``version``."""
        self.send(ChangeEvent(doc_id=doc_id, op=Op.UPSERT, version=_version(version),
                              event_time_ms=_now_ms() if event_time_ms is None else int(event_time_ms), text=text,
                              metadata={str(k): str(v) for k, v in (metadata or {}).items()}, event_id=event_id,
                              source=source, content_type=content_type))

    def delete(self, doc_id: str, *, version: int, event_time_ms: int | None = None, event_id: str | None = None,
               source: str | None = None) -> None:
        """Delete a document at ``version`` (an older upsert that arrives later stays deleted)."""
        self.send(ChangeEvent(doc_id=doc_id, op=Op.DELETE, version=_version(version),
                              event_time_ms=_now_ms() if event_time_ms is None else int(event_time_ms),
                              event_id=event_id, source=source))

    def tombstone(self, doc_id: str) -> None:
        """Send the key with a null value: deletes whatever is stored (and lets compaction drop the key)."""
        self.send(ChangeEvent(doc_id=doc_id, op=Op.DELETE, version=None, event_time_ms=0))

    def send(self, event: ChangeEvent) -> None:
        """Send one :class:`ChangeEvent` (``version=None``: a tombstone)."""
        if self._closed:
            raise RuntimeError("the producer is closed")
        self._raise_failures()
        if self.validate:
            self.check(event)
        key = event.doc_id.encode("utf-8")
        value = None if event.is_tombstone else self._codec.encode(event, framing=self.framing, topic=self.topic)
        doc_id = event.doc_id
        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value,
                                       on_delivery=lambda err, msg, d=doc_id: self._delivered(d, err, msg))
                break
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                self._producer.poll(0.05)
        self.sent += 1
        self._producer.poll(0)

    def check(self, event: ChangeEvent) -> None:
        """Raise :class:`app.events.DecodeError` (a ``ValueError``) if the worker would dead-letter ``event``."""
        if not isinstance(event.doc_id, str):
            raise TypeError(f"doc_id must be a str, not {type(event.doc_id).__name__}")
        self._codec.validate(event)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until every record sent so far was acknowledged; returns how many were in total.

        Raises :class:`DeliveryError` if any failed or the timeout ran out first.
        """
        remaining = self._producer.flush(self.flush_timeout_s if timeout_s is None else timeout_s)
        self._raise_failures(remaining)
        return self.delivered

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (raising :class:`DeliveryError` on failures) and stop accepting records."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True

    def __enter__(self) -> "DocumentProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # flush also when the block failed: records it sent are delivered (or reported), not dropped
        self.close()

    def __len__(self) -> int:
        """Records not yet acknowledged."""
        return len(self._producer)

    # -- internals ----------------------------------------------------------------------------
    def _delivered(self, doc_id: str, err, msg) -> None:
        report = DeliveryReport(doc_id, msg.topic() or self.topic, msg.partition() if msg.partition() is not None else -1,
                                msg.offset() if msg.offset() is not None else -1, None if err is None else str(err))
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self._failures.append(report)
        if self._on_delivery is not None:
            self._on_delivery(report)

    def _raise_failures(self, undelivered: int = 0) -> None:
        if self._failures or undelivered:
            failures, self._failures = self._failures, []
            raise DeliveryError(failures, undelivered)


def _version(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"version must be an int (a per-document counter that grows with every change), got {v!r}")
    return v


def _now_ms() -> int:
    return int(time.time() * 1000)

"""Dead letters: the original record plus headers that say why it was set aside.

A dead letter keeps the original key, value (bytes, untouched) and headers, and adds:

=========================  ======================================================
``x-dlq-reason``           short stable code, e.g. ``unknown-magic-byte``
``x-dlq-detail``           human-readable detail (truncated to 1 000 bytes)
``x-dlq-stage``            decode | validate | plan | encode | store
``x-dlq-source-topic``     where the record came from
``x-dlq-source-partition``
``x-dlq-source-offset``
``x-dlq-source-timestamp`` the record's timestamp (ms)
``x-dlq-time``             when it was dead-lettered (ms)
``x-dlq-worker``           the worker / app id that set it aside
=========================  ======================================================

``embedstream dlq replay`` re-injects dead letters into the changes topic with their
original key, value and headers (the ``x-dlq-*`` headers stripped).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

HEADER_PREFIX = "x-dlq-"


@dataclass(frozen=True)
class Record:
    """A Kafka record as the pipeline sees it (transport-neutral)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    reason: str
    detail: str = ""
    stage: str = "decode"
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def headers(self, worker: str = "embedstream") -> list[tuple[str, bytes]]:
        original = [(k, v) for k, v in self.record.headers if not k.startswith(HEADER_PREFIX)]
        return original + [
            ("x-dlq-reason", self.reason.encode()),
            ("x-dlq-detail", self.detail.encode("utf-8", "replace")[:1000]),
            ("x-dlq-stage", self.stage.encode()),
            ("x-dlq-source-topic", self.record.topic.encode()),
            ("x-dlq-source-partition", str(self.record.partition).encode()),
            ("x-dlq-source-offset", str(self.record.offset).encode()),
            ("x-dlq-source-timestamp", str(self.record.timestamp_ms).encode()),
            ("x-dlq-time", str(self.time_ms).encode()),
            ("x-dlq-worker", worker.encode()),
        ]


def strip_dlq_headers(headers) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in (headers or []) if not k.startswith(HEADER_PREFIX)]

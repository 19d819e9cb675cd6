"""Drift alerts: the dataclass, and Avro (schemas/drift_alert.avsc) / JSON encodings.

Schema versions: version 2 (the file) added the ``ENCODER_CHANGED`` kind and the ``canary`` field;
version 1 (fingerprint ``f1aa4a13d30794d9``) is derived from it by :func:`alert_schema_v1`, so that
FIRED and CLEARED alerts can still be written in version 1 for consumers that only know it
(``app.alerts`` does; :func:`writer_schema`).
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "AlertKind",
    "Severity",
    "Trigger",
    "PartitionRange",
    "SignalStats",
    "DriftAlert",
    "CanaryCheck",
    "SCHEMA_PATH",
    "alert_schema",
    "alert_schema_v1",
    "writer_schema",
    "encode_alert",
    "decode_alert",
]

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "drift_alert.avsc"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SCHEMA = None
_SCHEMA_V1 = None


class AlertKind(str, Enum):
    FIRED = "FIRED"
    CLEARED = "CLEARED"
    ENCODER_CHANGED = "ENCODER_CHANGED"


class Severity(str, Enum):
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return 0 if self is Severity.WARNING else 1


@dataclass(frozen=True)
class Trigger:
    signal: str
    detector: str
    event_index: int


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    first_offset: int
    last_offset: int


@dataclass(frozen=True)
class SignalStats:
    signal: str
    reference_mean: float
    reference_std: float
    current_mean: float
    current_std: float
    current_n: int
    shift: float


@dataclass(frozen=True)
class CanaryCheck:
    """The encoder canary's check behind an ENCODER_CHANGED alert (see :mod:`app.drift.canary`)."""

    worst_cosine: float
    mean_cosine: float
    worst_text: str
    max_abs_diff: float
    tolerance: float
    abs_tolerance: float
    provider: str
    reference: str
    texts: int
    reason: str


@dataclass(frozen=True)
class DriftAlert:
    """One alert. Times are milliseconds since the epoch (UTC).

    >>> a = DriftAlert(alert_id="x", kind=AlertKind.FIRED, severity=Severity.WARNING,
    ...                model_fingerprint="fp", collection="docs", episode_id="e", sequence=0,
    ...                detector="PageHinkley", signals=["centroid"],
    ...                triggers=[Trigger("centroid", "PageHinkley", 2500)], fired_at=1_700_000_000_000,
    ...                event_index=2500, episode_start_index=2500, window_start_index=2300)
    >>> a.kafka_key
    b'fp/docs'
    >>> decode_alert(encode_alert(a)) == a
    True
    """

    alert_id: str
    kind: AlertKind
    severity: Severity
    model_fingerprint: str
    collection: str
    episode_id: str
    sequence: int
    detector: str
    signals: list[str]
    triggers: list[Trigger]
    fired_at: int
    event_index: int
    episode_start_index: int
    window_start_index: int
    event_time: int | None = None
    offsets: list[PartitionRange] = field(default_factory=list)
    stats: list[SignalStats] = field(default_factory=list)
    example_doc_ids: list[str] = field(default_factory=list)
    events_observed: int = 0
    message: str = ""
    canary: CanaryCheck | None = None

    @property
    def kafka_key(self) -> bytes:
        """Message key on the alerts topic: ``<fingerprint>/<collection>`` (one key per reference)."""
        return f"{self.model_fingerprint}/{self.collection}".encode()

    def to_record(self) -> dict[str, Any]:
        """A plain dict matching ``schemas/drift_alert.avsc`` (enums as strings, times as ms)."""
        rec = asdict(self)
        rec["kind"] = self.kind.value
        rec["severity"] = self.severity.value
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "DriftAlert":
        r = dict(rec)
        r["kind"] = AlertKind(r["kind"])
        r["severity"] = Severity(r["severity"])
        r["fired_at"] = _to_ms(r["fired_at"])
        r["event_time"] = None if r.get("event_time") is None else _to_ms(r["event_time"])
        r["triggers"] = [Trigger(**t) for t in r.get("triggers", [])]
        r["offsets"] = [PartitionRange(**o) for o in r.get("offsets", [])]
        r["stats"] = [SignalStats(**s) for s in r.get("stats", [])]
        r["signals"] = list(r.get("signals", []))
        r["example_doc_ids"] = list(r.get("example_doc_ids", []))
        r["canary"] = None if r.get("canary") is None else CanaryCheck(**r["canary"])
        return cls(**r)

    def to_json(self, indent: int | None = 2) -> str:
        """Human-readable JSON (times also rendered as ISO-8601 UTC)."""
        rec = self.to_record()
        rec["fired_at_iso"] = _iso(self.fired_at)
        if self.event_time is not None:
            rec["event_time_iso"] = _iso(self.event_time)
        return json.dumps(rec, indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "DriftAlert":
        rec = json.loads(text)
        rec.pop("fired_at_iso", None)
        rec.pop("event_time_iso", None)
        return cls.from_record(rec)


def _iso(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def _to_ms(value: int | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    return int(value)


def alert_schema() -> dict:
    """The parsed Avro schema (cached)."""
    global _SCHEMA
    if _SCHEMA is None:
        with open(SCHEMA_PATH, encoding="utf-8") as fh:
            _SCHEMA = fastavro.parse_schema(json.load(fh))
    return _SCHEMA


def alert_schema_v1() -> dict:
    """Version 1 of the schema (before ENCODER_CHANGED and ``canary``), parsed (cached).

    Derived from the file: the ``canary`` field removed, the ``AlertKind`` symbols back to FIRED and
    CLEARED. Its parsing canonical form - hence its fingerprint - is that of the version-1 file.
    """
    global _SCHEMA_V1
    if _SCHEMA_V1 is None:
        with open(SCHEMA_PATH, encoding="utf-8") as fh:
            raw = json.load(fh)
        raw["fields"] = [f for f in raw["fields"] if f["name"] != "canary"]
        for f in raw["fields"]:
            if f["name"] == "kind":
                f["type"] = {"type": "enum", "name": "AlertKind", "symbols": ["FIRED", "CLEARED"]}
        _SCHEMA_V1 = fastavro.parse_schema(raw)
    return _SCHEMA_V1


def writer_schema(alert: DriftAlert) -> dict:
    """The oldest schema version that can carry ``alert`` (version 1 unless it needs version 2)."""
    if alert.kind in (AlertKind.FIRED, AlertKind.CLEARED) and alert.canary is None:
        return alert_schema_v1()
    return alert_schema()


def encode_alert(alert: DriftAlert) -> bytes:
    """Schemaless Avro encoding (no container header, no registry framing)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, alert_schema(), alert.to_record())
    return buf.getvalue()


def decode_alert(data: bytes) -> DriftAlert:
    """Inverse of :func:`encode_alert`."""
    rec = fastavro.schemaless_reader(io.BytesIO(data), alert_schema(), None)
    return DriftAlert.from_record(rec)

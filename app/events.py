"""Document-change events: the Avro schema, both wire framings, validation.

A record on the changes topic is keyed by ``doc_id`` (UTF-8) and its value is a
``DocumentChange`` (``schemas/document_change.avsc``) in one of two framings, told
apart by their first bytes:

* **Avro single-object encoding** - ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of
  the writer schema (little-endian) + the Avro body. Used when no schema registry is
  configured; the writer schema must be one of the schemas in ``schemas/``.
* **Confluent wire format** - ``00`` + 4-byte big-endian schema id + the Avro body,
  resolved through ``confluent_kafka.schema_registry`` (needs a registry URL).

A record with a key and a null value (a tombstone) deletes the document.

Anything that cannot be decoded or fails validation raises :class:`DecodeError` with a
short machine-readable ``reason`` (it becomes the dead-letter ``x-dlq-reason`` header).
A Confluent-framed record whose schema id the registry does not know is ``unknown-schema-id``;
one whose body does not decode with the registry's schema is ``confluent-decode-error``. A
registry that cannot answer (connection refused, timeout, 5xx, 401/403, or a 404 that is not the
registry's "schema not found") raises :class:`RegistryUnavailable` instead: that is transient and
says nothing about the record, so the worker retries it and never dead-letters it.

    >>> codec = EventCodec()
    >>> ev = ChangeEvent(doc_id="d1", op=Op.UPSERT, version=3, event_time_ms=1700000000000, text="hi")
    >>> raw = codec.encode(ev)
    >>> raw[:2].hex()
    'c301'
    >>> codec.decode(b"d1", raw).text
    'hi'
    >>> codec.decode(b"d1", None).op
    <Op.DELETE: 'DELETE'>
"""
from __future__ import annotations

import enum
import io
import json
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class Op(str, enum.Enum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


class DecodeError(ValueError):
    """An event that cannot be processed; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RegistryUnavailable(Exception):
    """The schema registry could not be asked (down, unreachable, failing): transient, retry later.

    Not a :class:`DecodeError`: the record may be perfectly valid."""

    def __init__(self, detail: str, schema_id: int | None = None):
        super().__init__(detail)
        self.detail = detail
        self.schema_id = schema_id


#: HTTP answers of a registry that say nothing about the record (retry): timeouts, rate limits,
#: server errors, and authentication failures (a configuration problem, not bad data)
_REGISTRY_TRANSIENT_STATUS = frozenset({401, 403, 407, 408, 425, 429})


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types of a request that got no HTTP answer (confluent-kafka uses httpx2 or httpx)."""
    types: list[type[BaseException]] = [OSError]
    for mod in ("httpx2", "httpx"):
        try:
            types.append(__import__(mod).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _registry_failure(exc: BaseException, schema_id: int) -> Exception | None:
    """Classify an exception raised while asking the registry about ``schema_id``.

    Returns the error to raise (:class:`RegistryUnavailable` or ``DecodeError("unknown-schema-id")``),
    or None when it is not a registry failure."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status, code = exc.http_status_code, exc.error_code
        # the registry's own "schema not found" (40403; the in-process mock registry says 40400)
        if status == 404 and isinstance(code, int) and 40400 <= code <= 40499:
            return DecodeError("unknown-schema-id", f"schema id {schema_id} is not in the registry ({exc})")
        if status == 404 or status >= 500 or status in _REGISTRY_TRANSIENT_STATUS:
            hint = " - is the schema registry URL the API root?" if status == 404 else ""
            return RegistryUnavailable(f"schema registry answered HTTP {status} for schema id {schema_id}: "
                                       f"{exc.error_message}{hint}", schema_id)
        return None
    if isinstance(exc, _transport_errors()):
        return RegistryUnavailable(f"schema registry unreachable for schema id {schema_id}: "
                                   f"{type(exc).__name__}: {exc}", schema_id)
    return None


@dataclass(frozen=True)
class ChangeEvent:
    doc_id: str
    op: Op
    version: int | None  # None only for tombstones (no body, so no version)
    event_time_ms: int
    text: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    event_id: str | None = None
    source: str | None = None
    content_type: str = "text/plain"

    @property
    def is_tombstone(self) -> bool:
        return self.version is None

    def to_avro(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id, "op": self.op.value, "version": int(self.version or 0),
            "event_time": datetime.fromtimestamp(self.event_time_ms / 1000, tz=timezone.utc),
            "text": self.text, "metadata": dict(self.metadata), "event_id": self.event_id,
            "source": self.source, "content_type": self.content_type,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ChangeEvent":
        """Build an event from a JSON object (the `embedstream produce` input format).

        Keys: doc_id, op (default UPSERT), version, event_time (ms or ISO-8601; default now),
        text, metadata, event_id, source, content_type.
        """
        if "doc_id" not in obj:
            raise ValueError("missing doc_id")
        op = Op(str(obj.get("op", "UPSERT")).upper())
        if "version" not in obj:
            raise ValueError("missing version (a per-document, monotonically increasing integer)")
        et = obj.get("event_time")
        if et is None:
            et_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        elif isinstance(et, (int, float)):
            et_ms = int(et)
        else:
            dt = datetime.fromisoformat(str(et).replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            et_ms = int(dt.timestamp() * 1000)
        return cls(doc_id=str(obj["doc_id"]), op=op, version=int(obj["version"]), event_time_ms=et_ms,
                   text=obj.get("text"), metadata={str(k): str(v) for k, v in (obj.get("metadata") or {}).items()},
                   event_id=obj.get("event_id"), source=obj.get("source"),
                   content_type=obj.get("content_type", "text/plain"))


@dataclass(frozen=True)
class Limits:
    """Input limits; an event over any of them is dead-lettered, not truncated."""

    max_doc_id_bytes: int = 512
    max_text_bytes: int = 1_000_000
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 16_384
    content_types: tuple[str, ...] = ("text/plain", "text/markdown")


# C0 control characters other than tab, newline, carriage return; and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def load_schema(name: str = "document_change") -> dict:
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def schema_fingerprint(parsed: dict) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's parsing canonical form, as sent on the wire."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _confluent_conf() -> dict:
    """Settings of the Confluent Avro (de)serializers: the subject is ``<topic>-value``, as Kafka
    Connect and the Java serializers name it. The client's own default since 2.16 first asks the
    registry for "associations", an endpoint Confluent-compatible registries such as Apicurio
    answer with 404 - and once in a few runs a decode then hung."""
    from confluent_kafka.schema_registry import topic_subject_name_strategy

    return {"subject.name.strategy": topic_subject_name_strategy}


class EventCodec:
    """Encode and decode change events in both framings.

    ``registry`` is a ``confluent_kafka.schema_registry.SchemaRegistryClient`` (or None).
    Known writer schemas for single-object encoding are every ``document_change*.avsc``
    in ``schemas/`` (older versions stay there so old events still decode).
    """

    def __init__(self, registry: Any | None = None, limits: Limits | None = None,
                 schema_dir: Path = SCHEMA_DIR):
        self.reader_schema = fastavro.parse_schema(json.loads((schema_dir / "document_change.avsc").read_text()))
        self.writer_schemas: dict[bytes, dict] = {}
        for path in sorted(schema_dir.glob("document_change*.avsc")):
            parsed = fastavro.parse_schema(json.loads(path.read_text()))
            self.writer_schemas[schema_fingerprint(parsed)] = parsed
        self.fingerprint = schema_fingerprint(self.reader_schema)
        self.registry = registry
        self.limits = limits or Limits()
        self._confluent_ser = None
        self._confluent_de = None
        self._schema_str = (schema_dir / "document_change.avsc").read_text()

    # -- encoding (producers) -------------------------------------------------------
    def encode(self, event: ChangeEvent, framing: str = "auto", topic: str = "changes") -> bytes:
        if framing == "auto":
            framing = "confluent" if self.registry is not None else "single-object"
        if framing == "single-object":
            buf = io.BytesIO()
            buf.write(SINGLE_OBJECT_MAGIC + self.fingerprint)
            fastavro.schemaless_writer(buf, self.reader_schema, event.to_avro())
            return buf.getvalue()
        if framing == "confluent":
            if self.registry is None:
                raise ValueError("the Confluent framing needs a schema registry URL")
            from confluent_kafka.serialization import MessageField, SerializationContext
            from confluent_kafka.schema_registry.avro import AvroSerializer

            if self._confluent_ser is None:
                self._confluent_ser = AvroSerializer(self.registry, self._schema_str, conf=_confluent_conf())
            return self._confluent_ser(event.to_avro(), SerializationContext(topic, MessageField.VALUE))
        raise ValueError(f"unknown framing {framing!r}")

    # -- decoding (the worker) -------------------------------------------------------
    def decode(self, key: bytes | None, value: bytes | None, topic: str = "changes") -> ChangeEvent:
        key_str = self._decode_key(key)
        if value is None:
            if key_str is None:
                raise DecodeError("tombstone-without-key", "a null value needs the doc_id as key")
            event = ChangeEvent(doc_id=key_str, op=Op.DELETE, version=None, event_time_ms=0)
            self.validate(event)  # the key is the doc_id: same rules
            return event
        if len(value) == 0:
            raise DecodeError("empty-value")
        if value[:2] == SINGLE_OBJECT_MAGIC:
            record = self._decode_single_object(value)
        elif value[0] == CONFLUENT_MAGIC:
            record = self._decode_confluent(value, topic)
        else:
            raise DecodeError("unknown-magic-byte", f"first byte 0x{value[0]:02x}")
        event = self._to_event(record)
        if key_str is None:
            raise DecodeError("missing-key", "records must be keyed by doc_id so one document stays in one partition")
        if key_str != event.doc_id:
            raise DecodeError("key-mismatch", f"key {key_str[:80]!r} != doc_id {event.doc_id[:80]!r}")
        self.validate(event)
        return event

    @staticmethod
    def _decode_key(key: bytes | None) -> str | None:
        if key is None:
            return None
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid-key", f"key is not UTF-8: {exc}") from None

    def _decode_single_object(self, value: bytes) -> dict:
        if len(value) < 10:
            raise DecodeError("truncated", "single-object header is 10 bytes")
        schema = self.writer_schemas.get(value[2:10])
        if schema is None:
            raise DecodeError("unknown-schema-fingerprint", value[2:10].hex())
        buf = io.BytesIO(value)
        buf.seek(10)
        try:
            record = fastavro.schemaless_reader(buf, schema, self.reader_schema)
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid-utf8", str(exc)) from None
        except (EOFError, StopIteration):
            raise DecodeError("truncated", "Avro body ended early") from None
        except Exception as exc:  # fastavro raises assorted errors on garbage
            raise DecodeError("avro-decode-error", f"{type(exc).__name__}: {exc}") from None
        if buf.tell() != len(value):
            raise DecodeError("trailing-bytes", f"{len(value) - buf.tell()} bytes after the record")
        return record

    def _decode_confluent(self, value: bytes, topic: str) -> dict:
        if self.registry is None:
            raise DecodeError("schema-registry-not-configured",
                              "Confluent-framed record but no schema registry URL is set")
        if len(value) < 5:
            raise DecodeError("truncated", "Confluent header is 5 bytes")
        from confluent_kafka.serialization import MessageField, SerializationContext
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        if self._confluent_de is None:
            self._confluent_de = AvroDeserializer(self.registry, self._schema_str, conf=_confluent_conf())
        schema_id = struct.unpack(">I", value[1:5])[0]
        try:
            # the writer schema first (the client caches it): a registry failure is told apart from
            # a body that does not decode
            self.registry.get_schema(schema_id)
            return self._confluent_de(value, SerializationContext(topic, MessageField.VALUE))
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid-utf8", str(exc)) from None
        except Exception as exc:
            failure = _registry_failure(exc, schema_id)
            if failure is not None:
                raise failure from None
            raise DecodeError("confluent-decode-error", f"schema id {schema_id}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _to_event(rec: Mapping[str, Any]) -> ChangeEvent:
        try:
            et = rec["event_time"]
            et_ms = int(et.timestamp() * 1000) if isinstance(et, datetime) else int(et)
            return ChangeEvent(doc_id=rec["doc_id"], op=Op(rec["op"]), version=int(rec["version"]),
                               event_time_ms=et_ms, text=rec.get("text"),
                               metadata=dict(rec.get("metadata") or {}), event_id=rec.get("event_id"),
                               source=rec.get("source"), content_type=rec.get("content_type") or "text/plain")
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError("invalid-field", f"{type(exc).__name__}: {exc}") from None

    def validate(self, ev: ChangeEvent) -> None:
        lim = self.limits
        if not ev.doc_id or not ev.doc_id.strip():
            raise DecodeError("invalid-doc-id", "empty doc_id")
        if ev.doc_id != ev.doc_id.strip():
            # Weaviate compares doc ids trimmed ("field" tokenisation): "a " would share, and
            # delete, the chunks of "a". Refused for every store alike.
            raise DecodeError("invalid-doc-id", "doc_id has leading or trailing whitespace")
        if len(ev.doc_id.encode()) > lim.max_doc_id_bytes or _CONTROL.search(ev.doc_id):
            raise DecodeError("invalid-doc-id", "doc_id too long or has control characters")
        if ev.version is not None and ev.version < 0:
            raise DecodeError("invalid-version", f"negative version {ev.version}")
        if ev.op is Op.UPSERT:
            if ev.text is None:
                raise DecodeError("missing-text", "UPSERT needs text")
            if len(ev.text.encode("utf-8", "surrogatepass")) > lim.max_text_bytes:
                raise DecodeError("text-too-large", f"> {lim.max_text_bytes} bytes")
            if _CONTROL.search(ev.text):
                raise DecodeError("control-characters", "text contains C0 control characters other than tab/newline")
            if ev.content_type not in lim.content_types:
                raise DecodeError("unsupported-content-type", ev.content_type[:80])
        if len(ev.metadata) > lim.max_metadata_entries or \
                sum(len(k) + len(v) for k, v in ev.metadata.items()) > lim.max_metadata_bytes:
            raise DecodeError("metadata-too-large",
                              f"at most {lim.max_metadata_entries} entries / {lim.max_metadata_bytes} bytes")

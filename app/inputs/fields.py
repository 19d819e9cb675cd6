"""Field paths, text templates and wire formats shared by the input mappings.

A **field path** names a value inside a decoded record: ``title``, ``author.name``,
``tags.0`` (list index). A path ending in ``?`` is optional: a missing field reads as
``None`` instead of failing. A field that is present with a null value reads as ``None``.

A **template** is text with ``{path}`` placeholders, e.g. ``"{title}\\n\\n{body}"``;
``{{`` and ``}}`` are literal braces. A placeholder whose field is missing makes the
record not fit its mapping (:class:`MissingField`, dead-lettered with reason
``missing-field`` and the path in the detail); ``{path?}`` renders a missing field as
the empty string. Null values render as the empty string, numbers as decimals, booleans
as ``true``/``false``, timestamps as ISO-8601.

    >>> t = Template.parse("{title}\\n\\n{body}", "text")
    >>> t.render({"title": "Hi", "body": "there"})
    'Hi\\n\\nthere'
    >>> t.fields
    ('title', 'body')
    >>> FieldPath.parse("author.name?", "x").get({"author": {}}) is None
    True
"""
from __future__ import annotations

import datetime as _dt
import decimal
import io
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from app.events import DecodeError

_MISSING = object()
_SEGMENT = re.compile(r"^\$?[A-Za-z_][A-Za-z0-9_\-]*$|^[0-9]+$")


class MappingConfigError(ValueError):
    """A mapping option is invalid; the message names the option."""


class MissingField(DecodeError):
    """The record lacks a field its mapping needs (reason ``missing-field``, the path in the detail)."""

    def __init__(self, path: str, where: str = ""):
        super().__init__("missing-field", f"{path}" + (f" ({where})" if where else ""))
        self.path = path


@dataclass(frozen=True)
class FieldPath:
    text: str
    segments: tuple[str, ...]
    optional: bool = False

    @classmethod
    def parse(cls, text: Any, option: str) -> "FieldPath":
        if not isinstance(text, str) or not text.strip():
            raise MappingConfigError(f"{option}: expected a field path such as 'title' or 'author.name', got {text!r}")
        raw = text.strip()
        optional = raw.endswith("?")
        if optional:
            raw = raw[:-1]
        segments = tuple(raw.split("."))
        for s in segments:
            if not _SEGMENT.match(s):
                raise MappingConfigError(f"{option}: bad field path {text!r} (segment {s!r}: letters, digits, "
                                         "_ and -, separated by '.'; a number indexes a list)")
        return cls(raw, segments, optional)

    def lookup(self, record: Any) -> Any:
        """The value at this path, or ``_MISSING``."""
        cur = record
        for s in self.segments:
            if isinstance(cur, Mapping):
                if s not in cur:
                    return _MISSING
                cur = cur[s]
            elif isinstance(cur, (list, tuple)) and s.isdigit():
                i = int(s)
                if i >= len(cur):
                    return _MISSING
                cur = cur[i]
            else:
                return _MISSING
        return cur

    def get(self, record: Any, where: str = "") -> Any:
        v = self.lookup(record)
        if v is _MISSING:
            if self.optional:
                return None
            raise MissingField(self.text, where)
        return v


def render_value(v: Any) -> str:
    """How a field value reads inside a template / as metadata."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, decimal.Decimal)):
        return str(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        raise DecodeError("invalid-field", "a bytes field cannot be rendered as text")
    if isinstance(v, (Mapping, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False, sort_keys=True)
    return str(v)


@dataclass(frozen=True)
class Template:
    text: str
    #: literal text and paths, alternating: (lit, path, lit, path, ..., lit)
    parts: tuple
    paths: tuple[FieldPath, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.paths)

    @classmethod
    def parse(cls, text: Any, option: str) -> "Template":
        if not isinstance(text, str):
            raise MappingConfigError(f"{option}: expected a template string such as \"{{title}}\\n\\n{{body}}\", "
                                     f"got {text!r}")
        parts: list = []
        paths: list[FieldPath] = []
        lit = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "{":
                if text.startswith("{{", i):
                    lit.append("{")
                    i += 2
                    continue
                j = text.find("}", i)
                if j < 0:
                    raise MappingConfigError(f"{option}: unclosed '{{' at position {i} in {text!r}")
                path = FieldPath.parse(text[i + 1:j], f"{option} (placeholder {text[i:j + 1]!r})")
                parts.append("".join(lit))
                lit = []
                parts.append(path)
                paths.append(path)
                i = j + 1
            elif c == "}":
                if text.startswith("}}", i):
                    lit.append("}")
                    i += 2
                    continue
                raise MappingConfigError(f"{option}: single '}}' at position {i} in {text!r} (write '}}}}')")
            else:
                lit.append(c)
                i += 1
        parts.append("".join(lit))
        if not paths:
            raise MappingConfigError(f"{option}: the template {text!r} names no field (write e.g. \"{{body}}\")")
        return cls(text, tuple(parts), tuple(paths))

    def render(self, record: Any, where: str = "", check: Callable[[str, Any], None] | None = None) -> str:
        out = []
        for k, part in enumerate(self.parts):
            if k % 2 == 0:
                out.append(part)
            else:
                v = part.get(record, where)
                if check is not None:
                    check(part.text, v)
                out.append(render_value(v))
        return "".join(out)


def to_version(v: Any, path: str) -> int:
    """A document version from a field value: an integer >= 0 (timestamps count as epoch ms)."""
    if isinstance(v, bool) or v is None:
        raise DecodeError("invalid-version", f"{path} is {v!r}, not an integer")
    if isinstance(v, int):
        out = v
    elif isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        out = int(v.timestamp() * 1000)
    elif isinstance(v, float) and v.is_integer():
        out = int(v)
    elif isinstance(v, str) and v.strip().isdigit():
        out = int(v.strip())
    else:
        raise DecodeError("invalid-version", f"{path} is {v!r}, not an integer")
    if out < 0 or out >= 2 ** 63:
        raise DecodeError("invalid-version", f"{path}={out} is outside 0 .. 2^63-1")
    return out


def to_millis(v: Any, path: str) -> int:
    """An event time from a field: epoch ms (int), ISO-8601 text or a datetime."""
    if isinstance(v, bool) or v is None:
        raise DecodeError("invalid-field", f"{path} is {v!r}, not a time")
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        return int(v.timestamp() * 1000)
    if isinstance(v, str):
        try:
            dt = _dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError("invalid-field", f"{path}={v[:60]!r} is not ISO-8601") from None
        return to_millis(dt, path)
    raise DecodeError("invalid-field", f"{path} is {type(v).__name__}, not a time")


# ---------------------------------------------------------------------------------------
# wire formats: JSON (optionally in a Kafka Connect schema envelope) and Confluent Avro
FORMATS = ("auto", "json", "avro")


def is_connect_envelope(obj: Any) -> bool:
    """Kafka Connect's JsonConverter with ``schemas.enable=true`` writes ``{"schema": ..., "payload": ...}``."""
    return isinstance(obj, dict) and len(obj) == 2 and "schema" in obj and "payload" in obj


def decode_json(data: bytes, what: str) -> Any:
    try:
        obj = json.loads(data)
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid-utf8", f"{what}: {exc}") from None
    except ValueError as exc:
        raise DecodeError("invalid-json", f"{what}: {exc}") from None
    return obj["payload"] if is_connect_envelope(obj) else obj


class AvroSchemas:
    """Writer schemas of Confluent-framed records, fetched from the registry by id and kept
    (a schema id never changes meaning). No reader schema: records decode as written, so a
    source table that gains a column simply yields records with one more field."""

    def __init__(self, registry: Any | None):
        self.registry = registry
        self._parsed: dict[int, Any] = {}

    def parsed(self, schema_id: int) -> Any:
        schema = self._parsed.get(schema_id)
        if schema is not None:
            return schema
        if self.registry is None:
            raise DecodeError("schema-registry-not-configured",
                              "Confluent-framed Avro record but no schema registry URL is set")
        import fastavro

        try:
            got = self.registry.get_schema(schema_id)
        except Exception as exc:
            raise _registry_error(exc, schema_id) from exc
        if (got.schema_type or "AVRO") != "AVRO":
            raise DecodeError("unsupported-schema-type", f"schema id {schema_id} is {got.schema_type}, not AVRO")
        try:
            schema = fastavro.parse_schema(json.loads(got.schema_str))
        except Exception as exc:
            raise DecodeError("confluent-decode-error", f"schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        self._parsed[schema_id] = schema
        return schema

    def decode(self, data: bytes, what: str) -> Any:
        if len(data) < 5:
            raise DecodeError("truncated", f"{what}: the Confluent header is 5 bytes")
        schema_id = struct.unpack(">I", data[1:5])[0]
        schema = self.parsed(schema_id)
        import fastavro

        buf = io.BytesIO(data)
        buf.seek(5)
        try:
            rec = fastavro.schemaless_reader(buf, schema, None)
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid-utf8", f"{what}: {exc}") from None
        except (EOFError, StopIteration):
            raise DecodeError("truncated", f"{what}: Avro body ended early (schema id {schema_id})") from None
        except Exception as exc:
            raise DecodeError("avro-decode-error", f"{what}: schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError("trailing-bytes", f"{what}: {len(data) - buf.tell()} bytes after the record")
        return rec


def _registry_error(exc: Exception, schema_id: int) -> Exception:
    """The registry's "schema not found" -> ``unknown-schema-id`` (bad input, dead-lettered);
    a registry that cannot answer -> :class:`app.events.RegistryUnavailable` (transient: the
    Processor retries, never dead-letters). Same rules as the native codec's Confluent decoding."""
    from app import events

    classify = getattr(events, "_registry_failure", None)
    if classify is not None:
        failure = classify(exc, schema_id)
        if failure is not None:
            return failure
        return DecodeError("confluent-decode-error", f"schema id {schema_id}: {type(exc).__name__}: {exc}")
    if getattr(exc, "http_status_code", None) == 404 and 40400 <= (getattr(exc, "error_code", 0) or 0) <= 40499:
        return DecodeError("unknown-schema-id", f"schema id {schema_id} is not in the registry")
    return exc  # nothing to tell transient from permanent: the batch fails, the worker stops (fail closed)


def decode_wire(data: bytes, fmt: str, avro: AvroSchemas, what: str) -> Any:
    """A key or value in the configured format (``auto``: Confluent Avro if the first byte is 0,
    JSON otherwise)."""
    if len(data) == 0:
        raise DecodeError("empty-value" if what == "value" else "invalid-key", f"{what} is empty")
    if data[0] == 0:
        if fmt == "json":
            raise DecodeError("unexpected-format", f"{what} is Confluent-framed Avro but the mapping expects JSON")
        return avro.decode(data, what)
    if fmt == "avro":
        raise DecodeError("unexpected-format", f"{what} starts with 0x{data[0]:02x}, not the Confluent magic byte 0")
    return decode_json(data, what)

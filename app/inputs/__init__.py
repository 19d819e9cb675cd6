"""Input mappings: which topics the worker consumes and how each topic's records become
document changes.

The changes topic (``EMBEDSTREAM_CHANGES_TOPIC``) always carries embedstream's own
``DocumentChange`` records. ``EMBEDSTREAM_INPUTS`` names a TOML file that adds topics, each
with a mapping:

    [[input]]
    topic = "dbserver1.inventory.customers"
    mapping = "debezium"                 # document_change | debezium | mapped
    text = "{first_name} {last_name}\\n\\n{email}"

    [[input]]
    topic = "cms.articles"
    mapping = "mapped"
    doc_id = "{id}"
    text = "{title}\\n\\n{body}"
    version = "revision"

========================  ==============================================================
mapping                   options (see :mod:`app.inputs.debezium`, :mod:`app.inputs.mapped`)
========================  ==============================================================
``document_change``       none: the native schema (both framings), as on the changes topic
``debezium``              ``text`` (required), ``doc_id``, ``metadata``, ``connector``,
                          ``version``, ``format``, ``unavailable_value``
``mapped``                ``doc_id``, ``text``, ``version`` (required), ``metadata``,
                          ``delete``, ``event_time``, ``key``, ``content_type``, ``format``
========================  ==============================================================

``format`` is ``auto`` (Confluent Avro when the first byte is 0, JSON otherwise), ``json`` or
``avro``. The file is read and checked when the settings load (every command), and an error
names the file, the entry and the option. :class:`InputCodec` keeps the
``decode(key, value, topic)`` interface of :class:`app.events.EventCodec` and sends each record
to its topic's mapping; every mapped event then passes the same validation (limits) as a
native one, and a record that does not fit its mapping raises :class:`DecodeError` (dead
letter, e.g. ``missing-field`` with the field's path in ``x-dlq-detail``).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.events import ChangeEvent, EventCodec, Limits
from app.inputs.debezium import CONNECTORS, UNAVAILABLE, DebeziumMapping
from app.inputs.fields import FORMATS, AvroSchemas, FieldPath, MappingConfigError, Template
from app.inputs.mapped import KEY_MODES, DeleteRule, MappedMapping

MAPPINGS = ("document_change", "debezium", "mapped")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_OPTIONS = {
    "document_change": set(),
    "debezium": {"text", "doc_id", "metadata", "connector", "version", "format", "unavailable_value"},
    "mapped": {"doc_id", "text", "version", "metadata", "delete", "event_time", "key", "content_type", "format"},
}
_REQUIRED = {"document_change": (), "debezium": ("text",), "mapped": ("doc_id", "text", "version")}

__all__ = ["MAPPINGS", "InputSpec", "InputCodec", "MappingConfigError", "load_inputs", "build_input_codec"]


@dataclass(frozen=True)
class InputSpec:
    topic: str
    mapping: str
    #: the mapping object (None for document_change: the native codec decodes it)
    decoder: Any = None
    format: str = "auto"


def load_inputs(path: str | Path) -> list[InputSpec]:
    """Read and check an inputs file; raises :class:`MappingConfigError` naming the entry and option."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingConfigError(f"cannot read TOML: {exc}") from None
    unknown = sorted(set(data) - {"input"})
    if unknown:
        raise MappingConfigError(f"unknown top-level key(s) {', '.join(unknown)} (expected [[input]] tables)")
    entries = data.get("input", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MappingConfigError("`input` must be an array of tables: write [[input]]")
    specs: list[InputSpec] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        topic = entry.get("topic")
        where = f"[[input]] #{n}" + (f" (topic {topic!r})" if isinstance(topic, str) else "")
        try:
            spec = parse_entry(entry)
        except MappingConfigError as exc:
            raise MappingConfigError(f"{where}: {exc}") from None
        if spec.topic in seen:
            raise MappingConfigError(f"{where}: topic {spec.topic!r} is listed twice")
        seen.add(spec.topic)
        specs.append(spec)
    return specs


def parse_entry(entry: dict) -> InputSpec:
    topic = entry.get("topic")
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        raise MappingConfigError(f"topic: expected a Kafka topic name (letters, digits, '.', '_', '-'), got {topic!r}")
    mapping = entry.get("mapping", "document_change")
    if mapping not in MAPPINGS:
        raise MappingConfigError(f"mapping: {mapping!r} is not one of {', '.join(MAPPINGS)}")
    options = {k: v for k, v in entry.items() if k not in ("topic", "mapping")}
    unknown = sorted(set(options) - _OPTIONS[mapping])
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[mapping])) or "none"
        raise MappingConfigError(f"unknown option(s) {', '.join(unknown)} for mapping {mapping!r} (allowed: {allowed})")
    for req in _REQUIRED[mapping]:
        if req not in options:
            raise MappingConfigError(f"{req}: required by mapping {mapping!r}")
    fmt = options.get("format", "auto")
    if fmt not in FORMATS:
        raise MappingConfigError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if mapping == "document_change":
        return InputSpec(topic, mapping, None, "auto")
    metadata = _metadata(options.get("metadata", {}))
    if mapping == "debezium":
        connector = options.get("connector", "auto")
        if connector not in CONNECTORS:
            raise MappingConfigError(f"connector: {connector!r} is not one of {', '.join(CONNECTORS)} "
                                     "(other connectors: set `version` to an integer field path)")
        unavailable = options.get("unavailable_value", UNAVAILABLE)
        if not isinstance(unavailable, str) or not unavailable:
            raise MappingConfigError(f"unavailable_value: expected a non-empty string, got {unavailable!r}")
        dec = DebeziumMapping(
            topic=topic, text=Template.parse(options["text"], "text"),
            doc_id=Template.parse(options["doc_id"], "doc_id") if "doc_id" in options else None,
            metadata=metadata, connector=connector,
            version=FieldPath.parse(options["version"], "version") if "version" in options else None,
            format=fmt, unavailable_value=unavailable)
        return InputSpec(topic, mapping, dec, fmt)
    key = options.get("key", "doc_id")
    if key not in KEY_MODES:
        raise MappingConfigError(f"key: {key!r} is not one of {', '.join(KEY_MODES)}")
    content_type = options.get("content_type", "text/plain")
    if content_type not in Limits().content_types:
        raise MappingConfigError(f"content_type: {content_type!r} is not one of {', '.join(Limits().content_types)}")
    dec = MappedMapping(
        topic=topic, doc_id=Template.parse(options["doc_id"], "doc_id"), text=Template.parse(options["text"], "text"),
        version=FieldPath.parse(options["version"], "version"), metadata=metadata,
        delete=_delete_rule(options["delete"]) if "delete" in options else None,
        event_time=FieldPath.parse(options["event_time"], "event_time") if "event_time" in options else None,
        key=key, content_type=content_type, format=fmt)
    return InputSpec(topic, mapping, dec, fmt)


def _metadata(raw: Any) -> dict[str, FieldPath]:
    if not isinstance(raw, dict):
        raise MappingConfigError(f"metadata: expected a table of name = \"field.path\", got {raw!r}")
    return {str(name): FieldPath.parse(path, f"metadata.{name}") for name, path in raw.items()}


def _delete_rule(raw: Any) -> DeleteRule:
    if not isinstance(raw, dict) or "field" not in raw or len(set(raw) & {"equals", "in"}) != 1 \
            or set(raw) - {"field", "equals", "in"}:
        raise MappingConfigError("delete: expected { field = \"path\", equals = VALUE } or "
                                 f"{{ field = \"path\", in = [VALUES] }}, got {raw!r}")
    values = raw["in"] if "in" in raw else [raw["equals"]]
    if not isinstance(values, list) or not values or any(isinstance(v, (dict, list)) for v in values):
        raise MappingConfigError(f"delete.in: expected a non-empty list of strings, numbers or booleans, got {values!r}")
    return DeleteRule(FieldPath.parse(raw["field"], "delete.field"), tuple(values))


class InputCodec:
    """Decodes each record with its topic's mapping; other topics (the changes topic) natively.

    Everything else (``encode``, ``validate``, ``registry`` ...) is the native codec's.
    """

    def __init__(self, native: EventCodec, specs: list[InputSpec]):
        self.native = native
        self.avro = AvroSchemas(native.registry)
        self.mappings: dict[str, Any] = {}
        for s in specs:
            if s.decoder is not None:
                s.decoder.avro = self.avro
                self.mappings[s.topic] = s.decoder

    def decode(self, key: bytes | None, value: bytes | None, topic: str = "changes") -> ChangeEvent:
        m = self.mappings.get(topic)
        if m is None:
            return self.native.decode(key, value, topic)
        event = m.decode(key, value, topic)
        self.native.validate(event)
        return event

    def __getattr__(self, name: str):
        return getattr(self.native, name)


def build_input_codec(native: EventCodec, inputs_file: str) -> EventCodec | InputCodec:
    """The native codec alone when no inputs file is set; else the dispatching codec."""
    if not inputs_file:
        return native
    return InputCodec(native, load_inputs(inputs_file))

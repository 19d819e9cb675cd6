"""The ``mapped`` input mapping: any Avro or JSON record -> a document change, by field paths.

    [[input]]
    topic = "cms.articles"
    mapping = "mapped"
    doc_id = "article-{id}"              # template; the record key must equal it (key = "doc_id")
    text = "{title}\\n\\n{body}"            # template over several fields
    version = "revision"                 # integer field (a timestamp counts as epoch ms)
    event_time = "updated_at?"           # optional: epoch ms, ISO-8601 or an Avro timestamp
    metadata = { author = "author.name", lang = "lang?" }
    delete = { field = "status", in = ["deleted", "archived"] }   # or equals = true

Values are JSON (with or without Kafka Connect's schema envelope) or Confluent-framed Avro
decoded with the writer schema from the registry. A record whose delete rule matches deletes
the document at its version (a record without the rule's field is not a delete); a key with a null value (tombstone) deletes it at whatever
version is stored - for that the key must be the doc_id (``key = "doc_id"``, the default:
records whose key differs from the rendered doc_id are ``key-mismatch``). With
``key = "none"`` the key is not looked at and tombstones are dead-lettered
(``tombstone-without-doc-id``): nothing names the document.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.events import ChangeEvent, DecodeError, Op
from app.inputs.fields import AvroSchemas, FieldPath, Template, decode_wire, render_value, to_millis, to_version

KEY_MODES = ("doc_id", "none")


@dataclass
class DeleteRule:
    path: FieldPath
    values: tuple

    def matches(self, rec: Any) -> bool:
        v = self.path.lookup(rec)  # a record without the field is not a delete
        # True == 1 in Python; a rule `equals = true` must not match a count of 1
        return any(isinstance(v, bool) == isinstance(w, bool) and v == w for w in self.values)


@dataclass
class MappedMapping:
    topic: str
    doc_id: Template
    text: Template
    version: FieldPath
    metadata: dict[str, FieldPath] = field(default_factory=dict)
    delete: DeleteRule | None = None
    event_time: FieldPath | None = None
    key: str = "doc_id"
    content_type: str = "text/plain"
    format: str = "auto"
    avro: AvroSchemas = field(default_factory=lambda: AvroSchemas(None))
    name: str = "mapped"

    def decode(self, key: bytes | None, value: bytes | None, topic: str) -> ChangeEvent:
        key_str = None
        if self.key == "doc_id" and key is not None:
            try:
                key_str = key.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("invalid-key", f"key is not UTF-8: {exc}") from None
        if value is None:
            if self.key != "doc_id":
                raise DecodeError("tombstone-without-doc-id", "key = \"none\": a null value names no document")
            if key_str is None:
                raise DecodeError("tombstone-without-key", "a null value needs the doc_id as key")
            return ChangeEvent(doc_id=key_str, op=Op.DELETE, version=None, event_time_ms=0, source="mapped")
        rec = decode_wire(value, self.format, self.avro, "value")
        if rec is None:
            raise DecodeError("invalid-field", "the value is JSON null (send a real tombstone: a null value)")
        if not isinstance(rec, Mapping):
            raise DecodeError("invalid-field", f"the value is a {type(rec).__name__}, not a record")
        doc_id = self.doc_id.render(rec, "doc_id")
        if self.key == "doc_id":
            if key_str is None:
                raise DecodeError("missing-key", "records must be keyed by doc_id so one document stays in one partition")
            if key_str != doc_id:
                raise DecodeError("key-mismatch", f"key {key_str[:80]!r} != doc_id {doc_id[:80]!r}")
        version = to_version(self.version.get(rec, "version"), self.version.text)
        et = 0
        if self.event_time is not None:
            v = self.event_time.get(rec, "event_time")
            et = to_millis(v, self.event_time.text) if v is not None else 0
        if self.delete is not None and self.delete.matches(rec):
            return ChangeEvent(doc_id=doc_id, op=Op.DELETE, version=version, event_time_ms=et, source="mapped")
        metadata = {}
        for name, path in self.metadata.items():
            v = path.get(rec, f"metadata {name}")
            if v is not None:
                metadata[name] = render_value(v)
        return ChangeEvent(doc_id=doc_id, op=Op.UPSERT, version=version, event_time_ms=et,
                           text=self.text.render(rec, "text"), metadata=metadata, source="mapped",
                           content_type=self.content_type)

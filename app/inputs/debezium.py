"""The ``debezium`` input mapping: Debezium change-event envelopes -> document changes.

A Debezium connector writes one topic per table. Each record is keyed by the row's primary
key (a struct such as ``{"id": 1004}``) and its value is the envelope
``{before, after, source, op, ts_ms}`` - as Avro through a schema registry (Confluent
framing) or as JSON, with or without Kafka Connect's ``{"schema", "payload"}`` wrapper.

=====================  ===================================================================
record                 document change
=====================  ===================================================================
``op`` c, u, r         UPSERT of ``after`` (``r``: a snapshot read, same as an insert)
``op`` d               DELETE at the event's version
null value             tombstone: DELETE whatever is stored (Debezium sends one after each
                       ``d``; also a JSON value ``{"schema": null, "payload": null}``)
``op`` t, m            dead-lettered ``unsupported-op`` (set ``skipped.operations=t`` on the
                       connector to not send truncates)
=====================  ===================================================================

**doc_id** comes from the *key* only (a tombstone has nothing else): by default
``<topic>/<key values in key-schema order>`` (each value's ``%`` and ``/`` percent-encoded),
e.g. ``dbserver1.inventory.customers/1004``; or the mapping's ``doc_id`` template over the
key fields (``"customer-{id}"``; ``{$topic}`` is the topic). **Key/row consistency:** every
key field that also appears in the row (``after``, or ``before`` of a delete) must have the
same value there, else ``key-mismatch``. A null key (a table without a primary key) is
``missing-key``: give the connector ``message.key.columns``.

**version** (an integer that must grow with every change of one row), per connector:

* ``postgresql``: ``source.lsn``, the WAL position of the change. Two changes of one row
  are serialised by its row lock, so the later one is written to the WAL later: the LSN
  grows per row, also for several changes of a row in one transaction. Snapshot reads carry
  the LSN the snapshot was taken at. Limit: a transaction that changed a row *before* that
  LSN but committed *after* the snapshot was taken streams with a lower LSN than the
  snapshot read of the row and is dropped as ``stale`` (counted) - a race of the initial
  snapshot only, with a transaction open across the snapshot start.
* ``mysql`` / ``mariadb``: the binlog coordinates ``source.file`` (``mysql-bin.000003``:
  index 3), ``source.pos`` (start of the rows event) and ``source.row`` (row within that
  event), as ``index << 32 | (pos + row)``. ``pos + row`` is strictly increasing within a
  binlog file: a rows event holding N rows is at least N bytes long, so ``row < N`` never
  reaches the next event's position. The binlog is written in commit order, so this grows
  per row across transactions and snapshot reads (which carry the position the snapshot
  was taken at). Limits: binlog index < 2^31 and position < 2^32 (MySQL's own limits);
  ``RESET MASTER``/``RESET BINARY LOGS AND GTIDS``, or a fail-over to a server with its own
  binlog numbering, restarts the positions - then rebuild into a fresh collection
  (``embedstream reindex``), or newer changes are dropped as ``stale``.
* ``auto`` (the default): ``source.connector``; records of Debezium < 0.8, which lack it, by
  their position fields (``file``/``pos``: MySQL, ``lsn``: PostgreSQL).
* anything else: set ``version`` to an integer field path (``"$source.ts_ms"``, or a row
  column such as ``"row_version"``); events without a usable version are dead-lettered
  ``unsupported-connector``. ``ts_ms`` has millisecond resolution: two changes of one row
  in the same millisecond get the same version (a ``version-conflict`` dead letter).

**text** is a template over the row's columns (``"{title}\\n\\n{body}"``), **metadata**
maps names to field paths; ``{$source.table}``, ``{$op}``, ``{$ts_ms}``, ``{$topic}`` reach
the envelope. A column whose value is Debezium's unchanged-TOAST placeholder
(``__debezium_unavailable_value``) is dead-lettered ``unavailable-value``: give the table
``REPLICA IDENTITY FULL``. Columns added to the table later simply appear in new records
(Avro: the new writer schema from the registry); a template field that older records lack
is ``missing-field`` unless written ``{column?}``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.events import ChangeEvent, DecodeError, Op
from app.inputs.fields import (AvroSchemas, FieldPath, MissingField, Template, decode_wire, render_value,
                               to_version)

CONNECTORS = ("auto", "postgresql", "mysql", "mariadb")
UNAVAILABLE = "__debezium_unavailable_value"


class _View(Mapping):
    """The row's columns, plus ``$source``, ``$op``, ``$ts_ms``, ``$topic`` from the envelope."""

    __slots__ = ("row", "env", "topic")

    def __init__(self, row: Mapping, env: Mapping, topic: str):
        self.row, self.env, self.topic = row, env, topic

    def __getitem__(self, k):
        if k.startswith("$"):
            if k == "$topic":
                return self.topic
            return self.env[k[1:]]
        return self.row[k]

    def __contains__(self, k):
        if isinstance(k, str) and k.startswith("$"):
            return k == "$topic" or k[1:] in self.env
        return k in self.row

    def __iter__(self):
        return iter(self.row)

    def __len__(self):
        return len(self.row)


def _quote(s: str) -> str:
    return s.replace("%", "%25").replace("/", "%2F")


def mysql_version(source: Mapping) -> int:
    """``binlog index << 32 | (pos + row)`` (see the module docstring)."""
    file = source.get("file")
    if file is None:
        raise MissingField("source.file", "MySQL binlog file")
    for name in ("pos", "row"):
        if source.get(name) is None:
            raise MissingField(f"source.{name}", "MySQL binlog position")
    _, _, suffix = str(file).rpartition(".")
    if not suffix.isdigit():
        raise DecodeError("invalid-version", f"source.file={str(file)[:80]!r} has no numeric binlog index")
    index, pos, row = int(suffix), int(source["pos"]), int(source["row"])
    if not (0 <= index < 2 ** 31 and 0 <= pos and 0 <= row and pos + row < 2 ** 32):
        raise DecodeError("version-overflow", f"binlog {file} pos {pos} row {row} does not fit index<2^31, pos+row<2^32")
    return index << 32 | (pos + row)


def postgres_version(source: Mapping) -> int:
    lsn = source.get("lsn")
    if lsn is None:
        raise MissingField("source.lsn", "PostgreSQL WAL position")
    return to_version(lsn, "source.lsn")


@dataclass
class DebeziumMapping:
    topic: str
    text: Template
    doc_id: Template | None = None
    metadata: dict[str, FieldPath] = field(default_factory=dict)
    connector: str = "auto"
    version: FieldPath | None = None
    format: str = "auto"
    unavailable_value: str = UNAVAILABLE
    avro: AvroSchemas = field(default_factory=lambda: AvroSchemas(None))
    name: str = "debezium"

    def decode(self, key: bytes | None, value: bytes | None, topic: str) -> ChangeEvent:
        key_fields = self._key(key, topic)
        doc_id = self._doc_id(key_fields, topic)
        env = decode_wire(value, self.format, self.avro, "value") if value is not None else None
        if env is None:  # tombstone (a null value, or JsonConverter's null envelope)
            return ChangeEvent(doc_id=doc_id, op=Op.DELETE, version=None, event_time_ms=0, source="debezium")
        if not isinstance(env, Mapping):
            raise DecodeError("invalid-field", f"value is a JSON {type(env).__name__}, not a Debezium envelope")
        op = env.get("op")
        if op is None:
            raise MissingField("op", "not a Debezium envelope?")
        source = env.get("source")
        if not isinstance(source, Mapping):
            raise MissingField("source", "the envelope's source block")
        if op in ("c", "u", "r"):
            side = "after"
        elif op == "d":
            side = "before"
        elif op in ("t", "m"):
            raise DecodeError("unsupported-op", f"op={op} ({'truncate' if op == 't' else 'message'}) has no "
                                                "document; set skipped.operations=t on the connector")
        else:
            raise DecodeError("invalid-field", f"op={str(op)[:20]!r} is not c, u, d or r")
        if side not in env:
            raise MissingField(side, f"op={op}")
        row = env[side]
        if row is None and side == "after":
            raise MissingField("after", f"null in an op={op} event")
        if row is not None and not isinstance(row, Mapping):
            raise DecodeError("invalid-field", f"{side} is not a record")
        if row is not None:
            self._check_key(key_fields, row, side)
        view = _View(row or {}, env, topic)
        version = self._version(env, source, view)
        et = source.get("ts_ms") or env.get("ts_ms") or 0
        event_time_ms = int(et) if isinstance(et, (int, float)) and not isinstance(et, bool) else 0
        connector = str(source.get("connector") or "debezium")
        if op == "d":
            return ChangeEvent(doc_id=doc_id, op=Op.DELETE, version=version, event_time_ms=event_time_ms,
                               source=f"debezium:{connector}")
        text = self.text.render(view, f"op={op}", self._check_available)
        metadata = {}
        for name, path in self.metadata.items():
            v = path.get(view, f"metadata {name}")
            self._check_available(path.text, v)
            if v is not None:
                metadata[name] = render_value(v)
        return ChangeEvent(doc_id=doc_id, op=Op.UPSERT, version=version, event_time_ms=event_time_ms, text=text,
                           metadata=metadata, source=f"debezium:{connector}")

    # -----------------------------------------------------------------------------------
    def _key(self, key: bytes | None, topic: str) -> Mapping:
        if key is None:
            raise DecodeError("missing-key", "Debezium sends a null key for tables without a primary key: "
                                             "set message.key.columns on the connector")
        k = decode_wire(key, self.format, self.avro, "key")
        if not isinstance(k, Mapping) or not k:
            raise DecodeError("invalid-key", f"expected the row's key as a struct such as {{\"id\": 1}}, got "
                                             f"{type(k).__name__} {str(k)[:60]!r}")
        return k

    def _doc_id(self, key_fields: Mapping, topic: str) -> str:
        if self.doc_id is not None:
            return self.doc_id.render(_View(key_fields, {}, topic), "key")
        parts = []
        for name, v in key_fields.items():
            if v is None:
                raise DecodeError("invalid-key", f"key field {name} is null")
            parts.append(_quote(render_value(v)))
        return topic + "/" + "/".join(parts)

    @staticmethod
    def _check_key(key_fields: Mapping, row: Mapping, side: str) -> None:
        for name, kv in key_fields.items():
            if name in row and render_value(row[name]) != render_value(kv):
                raise DecodeError("key-mismatch", f"key field {name}={render_value(kv)[:60]} but {side}.{name}="
                                                  f"{render_value(row[name])[:60]}")

    def _check_available(self, path: str, v: Any) -> None:
        if isinstance(v, str) and v == self.unavailable_value:
            raise DecodeError("unavailable-value", f"{path} holds Debezium's unchanged-TOAST placeholder "
                                                   f"{self.unavailable_value!r}: set REPLICA IDENTITY FULL on the table")

    def _version(self, env: Mapping, source: Mapping, view: _View) -> int:
        if self.version is not None:
            return to_version(self.version.get(view, "version"), self.version.text)
        connector = self.connector
        if connector == "auto":
            connector = str(source.get("connector") or "")
            if connector not in CONNECTORS:  # Debezium before 0.8 named no connector: tell by the position fields
                connector = ("mysql" if "file" in source or "pos" in source else
                             "postgresql" if "lsn" in source else connector)
        if connector == "postgresql":
            return postgres_version(source)
        if connector in ("mysql", "mariadb"):
            return mysql_version(source)
        raise DecodeError("unsupported-connector", f"no built-in version for source.connector={connector[:40]!r}: "
                                                   "set `version` in the mapping to an integer field path")

"""Change-data-capture records as a Debezium connector writes them, for tests and load.

* :func:`connect_to_avro` turns a Kafka Connect schema (the ``schema`` half of a JsonConverter
  record) into the Avro schema Confluent's ``AvroConverter`` registers for it (``AvroData``
  rules: a struct is a record named after the Connect name's last part in the namespace of
  the rest, an optional field is a ``["null", T]`` union with default null, int8/16/32 ->
  int, int64 -> long, float32 -> float, float64 -> double; a named type used twice, like
  ``before``/``after``, is referenced by name the second time).
* :func:`confluent_avro` frames a record as ``00`` + schema id + Avro body, registering its
  schema under ``<topic>-key`` / ``<topic>-value`` (the default TopicNameStrategy).
* :class:`PostgresTable` writes the records a Debezium PostgreSQL connector would send for a
  ``documents(id, title, body)`` table: JSON with the schema envelope, LSN as position.
"""
from __future__ import annotations

import io
import json
import struct
from typing import Any

_PRIMITIVE = {"int8": "int", "int16": "int", "int32": "int", "int64": "long", "float32": "float",
              "float64": "double", "boolean": "boolean", "string": "string", "bytes": "bytes"}


def connect_to_avro(schema: dict, _seen: set | None = None) -> Any:
    seen = set() if _seen is None else _seen
    t = str(schema["type"]).lower()
    if t == "struct":
        full = schema.get("name") or "ConnectDefault"
        if full in seen:
            avro: Any = full
        else:
            seen.add(full)
            ns, _, name = full.rpartition(".")
            fields = []
            for f in schema["fields"]:
                ft = connect_to_avro(f, seen)
                entry: dict = {"name": f["field"]}
                if _optional(f):
                    entry["type"] = ["null", ft]
                    entry["default"] = None
                else:
                    entry["type"] = ft
                fields.append(entry)
            avro = {"type": "record", "name": name, "fields": fields, "connect.name": full}
            if ns:
                avro["namespace"] = ns
        return avro
    if t == "array":
        return {"type": "array", "items": connect_to_avro(schema["items"], seen)}
    if t == "map":
        return {"type": "map", "values": connect_to_avro(schema["values"], seen)}
    if t not in _PRIMITIVE:
        raise ValueError(f"Connect type {t!r} not supported here")
    return _PRIMITIVE[t]


def _optional(f: dict) -> bool:
    o = f.get("optional", False)
    return o is True or str(o).lower() == "true"


def confluent_avro(registry, subject: str, avro_schema: Any, record: Any) -> bytes:
    import fastavro
    from confluent_kafka.schema_registry import Schema

    schema_id = registry.register_schema(subject, Schema(json.dumps(avro_schema), "AVRO"))
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(avro_schema), record)
    return buf.getvalue()


class PostgresTable:
    """Records of a Debezium PostgreSQL connector (``topic.prefix``=``server``) for the table
    ``public.documents(id text primary key, title text, body text)``, JSON with the schema envelope."""

    def __init__(self, server: str = "pg", table: str = "documents"):
        self.topic = f"{server}.public.{table}"
        name = f"{server}.public.{table}"
        row_fields = [{"type": "string", "optional": False, "field": "id"},
                      {"type": "string", "optional": True, "field": "title"},
                      {"type": "string", "optional": True, "field": "body"}]
        source = [{"type": "string", "optional": False, "field": f} for f in ("version", "connector", "name")] + \
                 [{"type": "int64", "optional": False, "field": "ts_ms"},
                  {"type": "string", "optional": True, "field": "snapshot"},
                  {"type": "string", "optional": False, "field": "db"},
                  {"type": "string", "optional": True, "field": "sequence"},
                  {"type": "string", "optional": False, "field": "schema"},
                  {"type": "string", "optional": False, "field": "table"},
                  {"type": "int64", "optional": True, "field": "txId"},
                  {"type": "int64", "optional": True, "field": "lsn"},
                  {"type": "int64", "optional": True, "field": "xmin"}]
        self.key_schema = {"type": "struct", "name": f"{name}.Key", "optional": False,
                           "fields": [{"type": "string", "optional": False, "field": "id"}]}
        self.value_schema = {
            "type": "struct", "name": f"{name}.Envelope", "optional": False, "fields": [
                {"type": "struct", "fields": row_fields, "optional": True, "name": f"{name}.Value", "field": "before"},
                {"type": "struct", "fields": row_fields, "optional": True, "name": f"{name}.Value", "field": "after"},
                {"type": "struct", "fields": source, "optional": False, "name": "io.debezium.connector.postgresql.Source",
                 "field": "source"},
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"}]}
        self.server, self.table = server, table
        self._key_schema_json = json.dumps(self.key_schema)
        self._value_schema_json = json.dumps(self.value_schema)

    def key(self, doc_id: str) -> bytes:
        return ('{"schema":' + self._key_schema_json + ',"payload":' + json.dumps({"id": doc_id}) + "}").encode()

    def _source(self, lsn: int, ts_ms: int, snapshot: bool) -> dict:
        return {"version": "2.7.0.Final", "connector": "postgresql", "name": self.server, "ts_ms": ts_ms,
                "snapshot": "true" if snapshot else "false", "db": "app", "sequence": json.dumps([None, str(lsn)]),
                "schema": "public", "table": self.table, "txId": lsn // 64, "lsn": lsn, "xmin": None}

    def value(self, op: str, doc_id: str, lsn: int, ts_ms: int, title: str | None = None,
              body: str | None = None) -> bytes:
        """op c/u/r: the row after; d: only the key column before (REPLICA IDENTITY DEFAULT)."""
        row = {"id": doc_id, "title": title, "body": body}
        payload = {"before": {"id": doc_id, "title": None, "body": None} if op == "d" else None,
                   "after": None if op == "d" else row, "source": self._source(lsn, ts_ms, op == "r"), "op": op,
                   "ts_ms": ts_ms}
        return ('{"schema":' + self._value_schema_json + ',"payload":' + json.dumps(payload) + "}").encode()

    def inputs_toml(self) -> str:
        """The [[input]] entry that maps this table: doc_id = id, text = body, title as metadata."""
        return (f'[[input]]\ntopic = "{self.topic}"\nmapping = "debezium"\nconnector = "postgresql"\n'
                'doc_id = "{id}"\ntext = "{body}"\nmetadata = { title = "title?" }\n')

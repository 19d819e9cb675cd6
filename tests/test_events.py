import io
import json
import struct

import fastavro
import pytest

from app.events import SCHEMA_DIR, ChangeEvent, DecodeError, EventCodec, Limits, Op, schema_fingerprint


def ev(**kw):
    base = dict(doc_id="doc-1", op=Op.UPSERT, version=7, event_time_ms=1_700_000_000_123,
                text="hello world", metadata={"lang": "en"}, event_id="e-1", source="cms")
    base.update(kw)
    return ChangeEvent(**base)


@pytest.fixture
def codec():
    return EventCodec()


@pytest.fixture
def registry(schema_registry):
    """A client of the real schema registry (Apicurio's Confluent API, started once per session)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": schema_registry})


def test_single_object_round_trip(codec):
    raw = codec.encode(ev())
    assert raw[:2] == b"\xc3\x01"
    assert raw[2:10] == schema_fingerprint(codec.reader_schema)
    got = codec.decode(b"doc-1", raw)
    assert got == ev()


def test_single_object_header_is_the_avro_spec_fingerprint(codec):
    # CRC-64-AVRO of the canonical form, little-endian (Avro spec test vector for "int")
    assert schema_fingerprint(fastavro.parse_schema("int")).hex() == "8f5c393f1ad57572"


def test_confluent_framing_round_trip(registry):
    codec = EventCodec(registry=registry)
    raw = codec.encode(ev(), topic="changes")
    assert raw[0] == 0 and len(raw) > 5
    schema_id = struct.unpack(">I", raw[1:5])[0]
    assert registry.get_schema(schema_id).schema_str
    assert codec.decode(b"doc-1", raw, topic="changes") == ev()


def test_both_framings_decode_in_one_codec(registry):
    codec = EventCodec(registry=registry)
    a = codec.encode(ev(doc_id="a"), framing="single-object")
    b = codec.encode(ev(doc_id="b"), framing="confluent")
    assert codec.decode(b"a", a).doc_id == "a"
    assert codec.decode(b"b", b).doc_id == "b"


def test_confluent_without_registry_is_a_clear_dead_letter(registry):
    raw = EventCodec(registry=registry).encode(ev())
    with pytest.raises(DecodeError) as e:
        EventCodec().decode(b"doc-1", raw)
    assert e.value.reason == "schema-registry-not-configured"


def test_tombstone_is_a_delete(codec):
    got = codec.decode(b"doc-9", None)
    assert got.op is Op.DELETE and got.doc_id == "doc-9" and got.is_tombstone


@pytest.mark.parametrize("key,value,reason", [
    (None, None, "tombstone-without-key"),
    (b"d", b"", "empty-value"),
    (b"d", b"\x05junk", "unknown-magic-byte"),
    (b"d", b"\xc3\x01\x00\x01", "truncated"),
    (b"d", b"\xc3\x01" + b"\xff" * 8 + b"\x02", "unknown-schema-fingerprint"),
    (b"\xff\xfe", None, "invalid-key"),
])
def test_undecodable_records_have_reasons(codec, key, value, reason):
    with pytest.raises(DecodeError) as e:
        codec.decode(key, value)
    assert e.value.reason == reason


def test_truncated_body(codec):
    raw = codec.encode(ev())
    with pytest.raises(DecodeError) as e:
        codec.decode(b"doc-1", raw[:-5])
    assert e.value.reason in ("truncated", "avro-decode-error", "invalid-utf8")


def test_trailing_bytes_rejected(codec):
    with pytest.raises(DecodeError) as e:
        codec.decode(b"doc-1", codec.encode(ev()) + b"\x00")
    assert e.value.reason == "trailing-bytes"


def test_invalid_utf8_text(codec):
    # hand-build a body whose text is not UTF-8
    good = codec.encode(ev(text="AAAA"))
    bad = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    with pytest.raises(DecodeError) as e:
        codec.decode(b"doc-1", bad)
    assert e.value.reason in ("invalid-utf8", "avro-decode-error")


@pytest.mark.parametrize("event,reason", [
    (ev(text=None), "missing-text"),
    (ev(doc_id=" "), "invalid-doc-id"),
    (ev(version=-1), "invalid-version"),
    (ev(text="nul \x00 byte"), "control-characters"),
    (ev(text="x" * 2000), "text-too-large"),
    (ev(metadata={f"k{i}": "v" for i in range(100)}), "metadata-too-large"),
    (ev(content_type="application/pdf"), "unsupported-content-type"),
])
def test_validation(event, reason):
    codec = EventCodec(limits=Limits(max_text_bytes=1000))
    with pytest.raises(DecodeError) as e:
        codec.decode(event.doc_id.encode(), codec.encode(event))
    assert e.value.reason == reason


def test_key_must_match_doc_id(codec):
    with pytest.raises(DecodeError) as e:
        codec.decode(b"other", codec.encode(ev()))
    assert e.value.reason == "key-mismatch"
    with pytest.raises(DecodeError) as e:
        codec.decode(None, codec.encode(ev()))
    assert e.value.reason == "missing-key"


def test_older_writer_schema_still_decodes(tmp_path):
    """Schema evolution: an event written with an older schema (fewer fields) decodes
    with defaults once that schema is kept next to the current one."""
    current = json.loads((SCHEMA_DIR / "document_change.avsc").read_text())
    old = dict(current, fields=[f for f in current["fields"] if f["name"] not in ("event_id", "source")])
    (tmp_path / "document_change.avsc").write_text(json.dumps(current))
    (tmp_path / "document_change.v0.avsc").write_text(json.dumps(old))
    codec = EventCodec(schema_dir=tmp_path)
    parsed_old = fastavro.parse_schema(old)
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema_fingerprint(parsed_old))
    rec = ev().to_avro()
    rec.pop("event_id"), rec.pop("source")
    fastavro.schemaless_writer(buf, parsed_old, rec)
    got = codec.decode(b"doc-1", buf.getvalue())
    assert got.text == "hello world" and got.event_id is None and got.source is None


def test_from_json():
    e = ChangeEvent.from_json({"doc_id": "a", "version": 2, "text": "t", "event_time": "2024-01-01T00:00:00Z",
                               "metadata": {"n": 1}})
    assert e.event_time_ms == 1704067200000 and e.metadata == {"n": "1"} and e.op is Op.UPSERT
    with pytest.raises(ValueError, match="version"):
        ChangeEvent.from_json({"doc_id": "a", "text": "t"})

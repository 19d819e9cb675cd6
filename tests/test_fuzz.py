"""Property-based fuzzing (hypothesis) of the decoder, the batch planner and the processing step.

Properties:

* ``EventCodec.decode`` either returns a ChangeEvent that satisfies every documented limit or
  raises DecodeError with a known, non-empty reason - never any other exception - for random
  bytes, random Avro bodies, bit flips, truncations, unknown magic bytes / fingerprints,
  writer schemas with missing or mistyped fields (registered and not), invalid UTF-8, control
  characters, oversized text and metadata.
* The result of a sequence of events does not depend on how it is cut into micro-batches: the
  planner (``fold``) applied batch by batch ends in the state the documented
  rules give when the events are applied one at a time (the log is the same; only the worker's
  batch boundaries, which change with every restart and redelivery, differ).
* ``Processor.process`` never raises for bad records: every bad record becomes exactly one
  DeadLetter with a reason and the original key / value / headers, and the good records of the
  same batch are written (real int8 encoder, real LanceDB files).
* A crash between the store writes of a batch, followed by redelivery (with other batch
  boundaries), converges to the expected state - including the vectors.

Decoder and planner properties run thousands of examples in a few seconds; the pipeline
properties run a few dozen (short texts: the int8 encoder is the slow part).
"""
from __future__ import annotations

import copy
import io
import itertools
import json
import tempfile
from pathlib import Path

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from conftest import Crash, CrashingStore
from app.batching import Action, fold
from app.chunking import Chunker
from app.deadletter import Record
from app.events import (SCHEMA_DIR, SINGLE_OBJECT_MAGIC, ChangeEvent, DecodeError, EventCodec, Limits, Op,
                        schema_fingerprint)
from app.pipeline import Backoff, Processor
from app.store.base import DocState, chunk_uuid
from app.store.lancedb import LanceDBStore

HC = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
      HealthCheck.filter_too_much]
FAST = settings(deadline=None, max_examples=600, suppress_health_check=HC, database=None)
PLANNER = settings(deadline=None, max_examples=1500, suppress_health_check=HC, database=None)
PIPELINE = settings(deadline=None, max_examples=25, suppress_health_check=HC, database=None)

#: every dead-letter reason the README documents
KNOWN_REASONS = {
    "unknown-magic-byte", "truncated", "trailing-bytes", "unknown-schema-fingerprint",
    "schema-registry-not-configured", "confluent-decode-error", "avro-decode-error", "invalid-utf8",
    "invalid-key", "missing-key", "key-mismatch", "tombstone-without-key", "empty-value", "invalid-field",
    "invalid-doc-id", "invalid-version", "missing-text", "text-too-large", "control-characters",
    "metadata-too-large", "unsupported-content-type", "version-conflict", "encoder-error",
    "encoder-non-finite", "store-rejected",
}
CONTROL = set(range(0x00, 0x09)) | {0x0B, 0x0C} | set(range(0x0E, 0x20)) | {0x7F}

CODEC = EventCodec()
SMALL = EventCodec(limits=Limits(max_doc_id_bytes=40, max_text_bytes=64, max_metadata_entries=4,
                                 max_metadata_bytes=128))
READER = CODEC.reader_schema
FP = CODEC.fingerprint


def check_decode(codec: EventCodec, key, value):
    """decode() returns a valid event or raises DecodeError with a known reason; nothing else."""
    try:
        ev = codec.decode(key, value)
    except DecodeError as exc:
        assert exc.reason, "DecodeError without a reason"
        assert exc.reason in KNOWN_REASONS, exc.reason
        return exc
    lim = codec.limits
    assert isinstance(ev, ChangeEvent)
    assert key is not None and key.decode("utf-8") == ev.doc_id
    assert ev.doc_id.strip() and len(ev.doc_id.encode()) <= lim.max_doc_id_bytes
    assert not any(ord(ch) in CONTROL for ch in ev.doc_id)
    if value is None:
        assert ev.version is None and ev.op is Op.DELETE
        return ev
    assert isinstance(ev.version, int) and ev.version >= 0
    assert isinstance(ev.event_time_ms, int)
    assert ev.op in (Op.UPSERT, Op.DELETE)
    if ev.op is Op.UPSERT:
        assert isinstance(ev.text, str)
        assert len(ev.text.encode("utf-8", "surrogatepass")) <= lim.max_text_bytes
        assert not any(ord(ch) in CONTROL for ch in ev.text)
        assert ev.content_type in lim.content_types
    assert len(ev.metadata) <= lim.max_metadata_entries
    assert sum(len(k) + len(v) for k, v in ev.metadata.items()) <= lim.max_metadata_bytes
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in ev.metadata.items())
    return ev


def avro(record: dict, schema=READER, fingerprint: bytes = FP) -> bytes:
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + fingerprint)
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def record(doc_id="d1", op="UPSERT", version=1, event_time=1_700_000_000_000, text="hello", metadata=None,
           event_id=None, source=None, content_type="text/plain") -> dict:
    return {"doc_id": doc_id, "op": op, "version": version, "event_time": event_time, "text": text,
            "metadata": metadata or {}, "event_id": event_id, "source": source, "content_type": content_type}


# ----------------------------------------------------------------------------------------
# strategies

no_surrogates = st.characters(blacklist_categories=("Cs",))
texts = st.one_of(st.text(no_surrogates, max_size=80),
                  st.text(st.sampled_from("ab \t\n\r\x00\x01\x1f\x7fé€😀"), max_size=30))
doc_ids = st.one_of(st.sampled_from(["d1", "doc-2", "", " ", "x" * 41, "a\x00b", "ü"]), st.text(no_surrogates, max_size=50))
metadata = st.one_of(
    st.dictionaries(st.text(no_surrogates, max_size=12), st.text(no_surrogates, max_size=40), max_size=6),
    st.builds(lambda n, w: {f"k{i}": "v" * w for i in range(n)}, st.integers(0, 80), st.integers(0, 400)))
content_types = st.one_of(st.sampled_from(["text/plain", "text/markdown", "application/pdf", ""]),
                          st.text(no_surrogates, max_size=12))
versions = st.one_of(st.integers(-5, 10), st.integers(-2**63, 2**63 - 1))
event_times = st.one_of(st.just(1_700_000_000_000), st.integers(-2**62, 2**62))
avro_records = st.builds(
    record, doc_id=doc_ids, op=st.sampled_from(["UPSERT", "DELETE"]), version=versions, event_time=event_times,
    text=st.one_of(st.none(), texts), metadata=metadata,
    event_id=st.one_of(st.none(), st.text(no_surrogates, max_size=10)), source=st.none(),
    content_type=content_types)
keys = st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([b"d1", b"\xff\xfe", b"doc-2", b""]))


# ----------------------------------------------------------------------------------------
# decoder


@FAST
@given(key=keys, value=st.one_of(st.none(), st.binary(max_size=200)))
def test_decode_random_bytes(key, value):
    check_decode(CODEC, key, value)


@FAST
@given(body=st.binary(max_size=300), known=st.booleans(), fp=st.binary(min_size=8, max_size=8))
def test_decode_random_avro_bodies(body, known, fp):
    """A valid-looking header followed by garbage: random Avro bodies for the real schema."""
    header = SINGLE_OBJECT_MAGIC + (FP if known else fp)
    out = check_decode(CODEC, b"d1", header + body)
    if not known and fp != FP:
        assert isinstance(out, DecodeError) and out.reason == "unknown-schema-fingerprint"


@FAST
@given(rec=avro_records, key_mode=st.sampled_from(["doc", "other", "none", "bad-utf8"]), small=st.booleans())
def test_decode_structured_events(rec, key_mode, small):
    """Valid Avro with arbitrary field values: validation accepts only what the limits allow."""
    try:
        value = avro(rec)
    except (ValueError, OverflowError, TypeError):
        assume(False)  # fastavro refuses to write it: not a record a producer can send
    key = {"doc": rec["doc_id"].encode(), "other": b"someone-else", "none": None, "bad-utf8": b"\xc3("}[key_mode]
    out = check_decode(SMALL if small else CODEC, key, value)
    if key_mode in ("none", "bad-utf8"):
        assert isinstance(out, DecodeError)
        assert out.reason in ({"missing-key"} if key_mode == "none" else {"invalid-key"}) | {"avro-decode-error", "invalid-field"}


@FAST
@given(rec=avro_records, cut=st.floats(0, 1, exclude_max=True))
def test_decode_truncated(rec, cut):
    try:
        value = avro(rec)
    except (ValueError, OverflowError, TypeError):
        assume(False)
    out = check_decode(CODEC, rec["doc_id"].encode(), value[:int(len(value) * cut)])
    assert isinstance(out, DecodeError)


@FAST
@given(rec=avro_records, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                                         max_size=4))
def test_decode_bit_flips(rec, flips):
    try:
        value = bytearray(avro(rec))
    except (ValueError, OverflowError, TypeError):
        assume(False)
    for pos, byte in flips:
        value[pos % len(value)] = byte
    check_decode(CODEC, rec["doc_id"].encode(), bytes(value))


@FAST
@given(first=st.integers(0, 255), rest=st.binary(max_size=30))
def test_decode_unknown_magic_byte(first, rest):
    value = bytes([first]) + rest
    out = check_decode(CODEC, b"d1", value)
    if first not in (0x00, 0xC3):
        assert isinstance(out, DecodeError) and out.reason == "unknown-magic-byte"
    if first == 0x00:  # Confluent framing without a registry
        assert isinstance(out, DecodeError) and out.reason == "schema-registry-not-configured"


@FAST
@given(placeholder_at=st.sampled_from(["doc_id", "text", "metadata", "content_type"]),
       bad=st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0", b"\x80\x80"]))
def test_decode_invalid_utf8(placeholder_at, bad):
    """A string field holding invalid UTF-8 (same length, so the Avro framing stays valid)."""
    rec = record(doc_id="d1", text="hi", metadata={"k": "v"})
    if placeholder_at == "metadata":
        rec["metadata"] = {"k": "\u00e9"}
    else:
        rec[placeholder_at] = "\u00e9" if placeholder_at != "doc_id" else "d\u00e9"
    value = avro(rec)
    i = value.index("\u00e9".encode(), 10)
    value = value[:i] + bad + value[i + 2:]
    key = "d\u00e9".encode() if placeholder_at == "doc_id" else b"d1"
    out = check_decode(CODEC, key, value)
    assert isinstance(out, DecodeError) and out.reason == "invalid-utf8", out


@FAST
@given(text=st.text(st.sampled_from("ab \x00\x01\x08\x0b\x0c\x0e\x1f\x7f\t\n\r"), min_size=1, max_size=20))
def test_decode_control_characters(text):
    out = check_decode(CODEC, b"d1", avro(record(text=text)))
    has_control = any(ord(c) in CONTROL for c in text)
    assert isinstance(out, DecodeError) == has_control
    if has_control:
        assert out.reason == "control-characters"


@FAST
@given(n=st.integers(0, 200))
def test_decode_text_over_the_limit(n):
    out = check_decode(SMALL, b"d1", avro(record(text="é" * n)))
    assert isinstance(out, DecodeError) == (2 * n > 64)
    if 2 * n > 64:
        assert out.reason == "text-too-large"


def test_tombstone_key_is_validated_like_a_doc_id():
    """BUG (app/events.py decode): a tombstone (null value) returns ChangeEvent(doc_id=key) without
    validate(): an empty, blank, over-long or control-character key is accepted as a doc_id, while the
    same doc_id in an event body is dead-lettered as invalid-doc-id."""
    for key in (b"", b"   ", b"a\x00b", b"x" * 600):
        with pytest.raises(DecodeError) as exc:
            CODEC.decode(key, avro(record(doc_id=key.decode(), op="DELETE", text=None)))
        assert exc.value.reason == "invalid-doc-id"
        with pytest.raises(DecodeError) as exc:
            CODEC.decode(key, None)
        assert exc.value.reason == "invalid-doc-id", key


# -- writer schemas with missing or mistyped fields -----------------------------------------

def _schema_json() -> dict:
    return json.loads((SCHEMA_DIR / "document_change.avsc").read_text())


def _variant(name: str) -> tuple[dict, dict, bool]:
    """(schema json, a record for it, whether the reader can resolve it)."""
    s = _schema_json()
    f = {fld["name"]: fld for fld in s["fields"]}
    rec = record()
    ok = True
    if name == "no_version":          # required field missing, no default
        s["fields"].remove(f["version"]); rec.pop("version"); ok = False
    elif name == "no_doc_id":
        s["fields"].remove(f["doc_id"]); rec.pop("doc_id"); ok = False
    elif name == "version_string":    # mistyped
        f["version"]["type"] = "string"; rec["version"] = "7"; ok = False
    elif name == "doc_id_int":
        f["doc_id"]["type"] = "int"; rec["doc_id"] = 5; ok = False
    elif name == "metadata_ints":
        f["metadata"]["type"] = {"type": "map", "values": "int"}; rec["metadata"] = {"a": 1}; ok = False
    elif name == "op_patch":          # an enum symbol the reader does not know
        f["op"]["type"] = {"type": "enum", "name": "Op", "symbols": ["UPSERT", "DELETE", "PATCH"]}
        rec["op"] = "PATCH"; ok = False
    elif name == "no_source":         # missing optional field: the reader's default applies
        s["fields"].remove(f["source"]); rec.pop("source")
    elif name == "extra_field":       # a field the reader does not know: skipped
        s["fields"].append({"name": "colour", "type": "string"}); rec["colour"] = "blue"
    elif name == "text_required":     # string where the reader has ["null","string"]: promoted
        f["text"]["type"] = "string"; f["text"].pop("default")
    elif name == "version_int":       # int promotes to long
        f["version"]["type"] = "int"
    else:
        raise ValueError(name)
    return s, rec, ok


VARIANTS = ["no_version", "no_doc_id", "version_string", "doc_id_int", "metadata_ints", "op_patch", "no_source",
            "extra_field", "text_required", "version_int"]
_schema_dir = Path(tempfile.mkdtemp(prefix="es-fuzz-schemas-"))
(_schema_dir / "document_change.avsc").write_text((SCHEMA_DIR / "document_change.avsc").read_text())
for _i, _name in enumerate(VARIANTS):
    (_schema_dir / f"document_change_fuzz{_i:02d}.avsc").write_text(json.dumps(_variant(_name)[0]))
REGISTERED = EventCodec(schema_dir=_schema_dir)


@FAST
@given(name=st.sampled_from(VARIANTS), registered=st.booleans(), doc=st.sampled_from(["d1", "doc-9"]),
       version=st.integers(0, 1000), text=st.text(st.sampled_from("abc "), max_size=20))
def test_decode_altered_writer_schemas(name, registered, doc, version, text):
    schema_json, rec, resolvable = _variant(name)
    parsed = fastavro.parse_schema(copy.deepcopy(schema_json))
    for k, v in (("doc_id", doc), ("version", version), ("text", text)):
        if k in rec and isinstance(rec[k], type(v)) and not isinstance(rec[k], bool):
            rec[k] = v
    value = avro(rec, parsed, schema_fingerprint(parsed))
    key = str(rec.get("doc_id", "d1")).encode()
    out = check_decode(REGISTERED if registered else CODEC, key, value)
    if not registered:
        assert isinstance(out, DecodeError) and out.reason == "unknown-schema-fingerprint"
    elif resolvable:
        assert isinstance(out, ChangeEvent), out
        assert out.doc_id == rec["doc_id"] and out.version == int(rec["version"])
    else:
        assert isinstance(out, DecodeError) and out.reason in {"avro-decode-error", "invalid-field"}, out


# ----------------------------------------------------------------------------------------
# the planner: batch boundaries must not change the outcome

def model(events: list[ChangeEvent]) -> dict:
    """The documented rules, one event at a time: doc -> (version, deleted, text)."""
    out: dict[str, list] = {}
    for ev in events:
        cur = out.get(ev.doc_id)  # [version, deleted, text]
        if ev.version is None:  # tombstone: delete, keep the version
            if cur is not None:
                cur[1], cur[2] = True, ""
            continue
        if cur is None or ev.version > cur[0]:
            out[ev.doc_id] = [ev.version, ev.op is Op.DELETE, ev.text or "" if ev.op is Op.UPSERT else ""]
        elif ev.version == cur[0] and ev.op is Op.DELETE:
            cur[1], cur[2] = True, ""
        # lower version: stale; same version UPSERT: duplicate / conflict / stale after delete
    return {d: tuple(v) for d, v in out.items()}


def planned(events: list[ChangeEvent], cuts) -> dict:
    """What the Processor's state writes would be, batch by batch (in memory, no I/O)."""
    states: dict[str, DocState] = {}
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(events))), len(events)]
    for a, b in itertools.pairwise(bounds):
        by_doc: dict[str, list] = {}
        for pos, ev in enumerate(events[a:b]):
            by_doc.setdefault(ev.doc_id, []).append((pos, ev))
        for d, evs in by_doc.items():
            p = fold(d, evs, states.get(d), lambda e: e.text or "")
            if p.action is Action.UPSERT:
                states[d] = DocState(d, p.version, p.content_hash, "fp", 1, False, 0, 0)
            elif p.action is Action.DELETE:
                states[d] = DocState(d, p.version, "", "fp", 0, True, 0, 0)
    return {d: (s.version, s.deleted, s.content_hash) for d, s in states.items()}


def U(v, text="a", doc="x"):
    return ChangeEvent(doc, Op.UPSERT, v, 0, text)


def D(v, doc="x"):
    return ChangeEvent(doc, Op.DELETE, v, 0)


def T(doc="x"):
    return ChangeEvent(doc, Op.DELETE, None, 0)


plan_events = st.lists(st.one_of(
    st.builds(U, st.integers(0, 5), st.sampled_from("ab"), st.sampled_from("xy")),
    st.builds(D, st.integers(0, 5), st.sampled_from("xy")),
    st.builds(T, st.sampled_from("xy"))), max_size=10)


@PLANNER
@given(events=plan_events, cuts=st.lists(st.integers(0, 10), max_size=6))
# a tombstone batched with the document's first upsert (fixed in 4a7a896)
@example(events=[U(1), T(), U(1)], cuts=[2])
# a tombstone batched with newer upserts of an already deleted document: their version is forgotten
@example(events=[D(1), U(2), T(), U(2)], cuts=[1, 3])
# a stale re-send batched after a tombstone replaces the tombstone, which is then lost
@example(events=[U(2), T(), U(1)], cuts=[1])
def test_batch_boundaries_do_not_change_the_outcome(events, cuts):
    """The worker's batch boundaries differ at every restart/redelivery; the result must not."""
    assert planned(events, cuts) == _visible(model(events)), (events, cuts)


def _visible(m: dict) -> dict:
    return {d: (v, deleted, "" if deleted else text) for d, (v, deleted, text) in m.items()}


def test_tombstone_in_the_same_batch_as_the_first_upsert_is_recorded():
    """Regression (fixed in 4a7a896): [upsert v1, tombstone] in one batch used to be a NOOP - no
    deleted state - so a later re-send of v1 resurrected the document."""
    assert planned([U(1), T(), U(1)], cuts=[1, 2]) == {"x": (1, True, "")}
    assert planned([U(1), T(), U(1)], cuts=[2]) == {"x": (1, True, "")}


def test_tombstone_batched_with_newer_upserts_of_a_deleted_document_keeps_their_version():
    """BUG (app/batching.py decide): the tombstone's floor_version is ignored when the stored state is
    already deleted (-> 'duplicate'), so the state keeps v1 and a later re-send of v2 resurrects the
    document. One event per batch gives deleted at v2."""
    assert planned([D(1), U(2), T(), U(2)], cuts=[1, 2, 3]) == {"x": (2, True, "")}
    assert planned([D(1), U(2), T(), U(2)], cuts=[1, 3]) == {"x": (2, True, "")}


def test_stale_event_after_a_tombstone_in_one_batch_does_not_cancel_it():
    """BUG (app/batching.py coalesce): after a tombstone without a floor version any versioned event
    wins - also a stale one, which plan() then drops: the tombstone is lost and the document stays live.
    One event per batch deletes it."""
    assert planned([U(2), T(), U(1)], cuts=[1, 2]) == {"x": (2, True, "")}
    assert planned([U(2), T(), U(1)], cuts=[1]) == {"x": (2, True, "")}


# ----------------------------------------------------------------------------------------
# the processing step with the real encoder and LanceDB files

class PoisonEncoder:
    """The real int8 encoder; chunks with a marker word come back NaN / inf, or make it raise."""

    def __init__(self, enc):
        self.enc, self.fingerprint, self.dim, self.tokenizer = enc, enc.fingerprint, enc.dim, enc.tokenizer
        self.nan, self.inf, self.boom = (set(enc.token_ids([w])[0]) for w in ("poison", "infinity", "explode"))

    def encode_tokens(self, token_ids):
        if any(self.boom & set(ids) for ids in token_ids):
            raise RuntimeError("simulated encoder failure")
        v, n = self.enc.encode_tokens(token_ids)
        for i, ids in enumerate(token_ids):
            if self.nan & set(ids):
                v[i] = np.nan
            elif self.inf & set(ids):
                v[i, 0] = np.inf
        return v, n


WORDS = ["river", "stone", "cloud", "garden", "engine", "violin", "harbour", "pepper"]
short_texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
headers = st.lists(st.tuples(st.sampled_from(["trace", "x-dlq-reason", "h"]), st.binary(max_size=6)), max_size=2)

#: bad record kinds -> the reason(s) they must be dead-lettered with
BAD_KINDS = {
    "random-bytes": {"unknown-magic-byte"}, "empty-value": {"empty-value"}, "truncated": {"truncated"},
    "unknown-fingerprint": {"unknown-schema-fingerprint"}, "invalid-utf8": {"invalid-utf8"},
    "control-characters": {"control-characters"}, "text-too-large": {"text-too-large"},
    "metadata-too-large": {"metadata-too-large"}, "missing-key": {"missing-key"}, "key-mismatch": {"key-mismatch"},
    "tombstone-without-key": {"tombstone-without-key"}, "missing-text": {"missing-text"},
    "nan": {"encoder-non-finite"}, "inf": {"encoder-non-finite"}, "encoder-raises": {"encoder-error"},
}
PIPE_LIMITS = Limits(max_text_bytes=200, max_metadata_entries=4, max_metadata_bytes=200)
PIPE_CODEC = EventCodec(limits=PIPE_LIMITS)


def bad_record(kind: str, i: int, rng_bytes: bytes) -> tuple[bytes | None, bytes | None]:
    doc = f"bad-{i}"
    ev = lambda **kw: PIPE_CODEC.encode(ChangeEvent(doc, Op.UPSERT, 1, 1_700_000_000_000,
                                                    kw.get("text", "fine words"), kw.get("meta", {})))
    if kind == "random-bytes":
        return doc.encode(), b"\x05" + rng_bytes
    if kind == "empty-value":
        return doc.encode(), b""
    if kind == "truncated":
        return doc.encode(), ev()[:-3]
    if kind == "unknown-fingerprint":
        return doc.encode(), SINGLE_OBJECT_MAGIC + b"\x00" * 8 + ev()[10:]
    if kind == "invalid-utf8":
        v = ev(text="caf\u00e9")
        j = v.index("\u00e9".encode())
        return doc.encode(), v[:j] + b"\xff\xfe" + v[j + 2:]
    if kind == "control-characters":
        return doc.encode(), ev(text="bell \x07 here")
    if kind == "text-too-large":
        return doc.encode(), ev(text="words " * 60)
    if kind == "metadata-too-large":
        return doc.encode(), ev(meta={f"k{j}": "v" for j in range(10)})
    if kind == "missing-key":
        return None, ev()
    if kind == "key-mismatch":
        return b"somebody-else", ev()
    if kind == "tombstone-without-key":
        return None, None
    if kind == "missing-text":
        return doc.encode(), avro(record(doc_id=doc, text=None))
    word = {"nan": "poison", "inf": "infinity", "encoder-raises": "explode"}[kind]
    return doc.encode(), ev(text=f"river {word} stone")


# one event per (doc, version): the same version with other content is a version conflict,
# which is a dead letter by design (tests/test_pipeline.py covers it)
good_events = st.lists(st.tuples(st.sampled_from(["g0", "g1", "g2"]), st.sampled_from(["UPSERT", "DELETE"]),
                                 st.integers(0, 4), short_texts), max_size=6, unique_by=lambda t: (t[0], t[2]))
bad_events = st.lists(st.tuples(st.sampled_from(sorted(BAD_KINDS)), st.binary(max_size=20)), max_size=5)


def _fresh_store(encoder):
    return LanceDBStore(Path(tempfile.mkdtemp(prefix="es-fuzz-")) / "lancedb", encoder.fingerprint, encoder.dim)


@PIPELINE
@given(goods=good_events, bads=bad_events, order=st.randoms(use_true_random=False), hdrs=headers)
@example(goods=[("g0", "UPSERT", 1, ""), ("g1", "UPSERT", 2, "river")], bads=[("nan", b""), ("inf", b"")],
         order=None, hdrs=[("trace", b"1")])
@example(goods=[("g0", "UPSERT", 1, "stone")], bads=[("encoder-raises", b"")], order=None, hdrs=[])
def test_processor_dead_letters_bad_records_and_writes_the_rest(encoder, goods, bads, order, hdrs):
    """Bad records never stop a batch: each is one dead letter with the original bytes; good ones land."""
    store = _fresh_store(encoder)
    enc = PoisonEncoder(encoder)
    proc = Processor(PIPE_CODEC, enc, Chunker(enc.tokenizer, 256, 32), store, backoff=Backoff(0.01, 0.02))
    items = [("good", g) for g in goods] + [("bad", b) for b in bads]
    if order is not None:
        order.shuffle(items)
    records, bad_at, good_evs = [], {}, []
    for off, (what, item) in enumerate(items):
        if what == "good":
            doc, op, v, text = item
            ev = ChangeEvent(doc, Op(op), v, 1_700_000_000_000 + off, text if op == "UPSERT" else None)
            key, value = doc.encode(), PIPE_CODEC.encode(ev)
            good_evs.append(ev)
        else:
            kind, junk = item
            key, value = bad_record(kind, off, junk)
            bad_at[off] = kind
        records.append(Record("changes", 0, off, key, value, tuple(hdrs), 1_700_000_000_000))

    res = proc.process(records)  # must not raise

    by_offset = {d.record.offset: d for d in res.dead_letters}
    assert len(by_offset) == len(res.dead_letters), "a record was dead-lettered twice"
    assert set(by_offset) == set(bad_at), ({o: d.reason for o, d in by_offset.items()}, bad_at)
    for off, kind in bad_at.items():
        dl = by_offset[off]
        assert dl.reason in BAD_KINDS[kind], (kind, dl.reason, dl.detail)
        orig = records[off]
        assert (dl.record.key, dl.record.value, dl.record.headers) == (orig.key, orig.value, orig.headers)
        h = dl.headers("w")
        assert h[:len([x for x in orig.headers if not x[0].startswith("x-dlq-")])] == \
            [x for x in orig.headers if not x[0].startswith("x-dlq-")]
        assert dict(h)["x-dlq-reason"] == dl.reason.encode() and dict(h)["x-dlq-source-offset"] == str(off).encode()

    expected = model(good_evs)
    states = store.get_states([f"g{i}" for i in range(3)] + [f"bad-{o}" for o in bad_at])
    chunker = Chunker(encoder.tokenizer, 256, 32)
    total = 0
    for doc in ("g0", "g1", "g2"):
        rows = store.chunk_rows(doc)
        if doc not in expected:
            assert doc not in states and rows == []
            continue
        v, deleted, text = expected[doc]
        st_ = states[doc]
        assert (st_.version, st_.deleted) == (v, deleted)
        if deleted:
            assert rows == []
        else:
            want = [c.text for c in chunker.chunk(text)]
            assert [r["text"] for r in rows] == want and {r["version"] for r in rows} == {v}
            total += len(want)
    assert not any(d.startswith("bad-") for d in states), "a dead-lettered record left a state"
    assert store.count() == total
    if total:
        vecs = store.fetch_vectors([chunk_uuid(d, 0) for d in expected if not expected[d][1]])
        assert all(np.isfinite(v).all() for v in vecs.values())


# -- crash between the writes of a batch, then redelivery ------------------------------------



crash_events = st.lists(st.tuples(st.sampled_from(["x", "y"]), st.sampled_from(["UPSERT", "UPSERT", "DELETE"]),
                                  st.sampled_from(["river stone", "cloud garden", "violin harbour pepper"])),
                        min_size=1, max_size=7)


@PIPELINE
@given(steps=crash_events, cuts=st.lists(st.integers(1, 6), max_size=3), crash_at=st.integers(1, 12),
       recuts=st.lists(st.integers(1, 6), max_size=3))
# doc x: v1 "river stone" stored; v2 "cloud garden" crashes after its chunks were written (before the
# state); redelivered together with v3 "river stone" (= the stored state's text), the stale chunk
# vectors of v2 are "reused" for v3.
@example(steps=[("x", "UPSERT", "river stone"), ("x", "UPSERT", "cloud garden"), ("x", "UPSERT", "river stone")],
         cuts=[1, 2], crash_at=5, recuts=[])
def test_crash_between_writes_then_redelivery_converges(encoder, steps, cuts, crash_at, recuts):
    """Kill the worker at any store call, redeliver from the last committed batch with other batch
    boundaries: the final state, chunk texts and vectors are those of the event log."""
    store = _fresh_store(encoder)
    chunker = Chunker(encoder.tokenizer, 256, 32)
    version = {}
    events = []
    for doc, op, text in steps:
        version[doc] = version.get(doc, 0) + 1
        events.append(ChangeEvent(doc, Op(op), version[doc], 1_700_000_000_000, text if op == "UPSERT" else None))
    records = [Record("changes", 0, i, e.doc_id.encode(), CODEC.encode(e), (), 0) for i, e in enumerate(events)]

    def batches(cut_points, start=0):
        b = [start, *sorted({start + c for c in cut_points if start + c < len(records)}), len(records)]
        return [records[x:y] for x, y in itertools.pairwise(b) if y > x]

    crashing = CrashingStore(store, crash_at)
    proc = Processor(CODEC, encoder, chunker, crashing, backoff=Backoff(0.01, 0.02))
    committed = 0
    try:
        for batch in batches(cuts):
            proc.process(batch)
            committed = batch[-1].offset + 1  # acked -> committed
    except Crash:
        pass
    # restart: a fresh processor, redelivery from the committed offset, other batch boundaries
    proc = Processor(CODEC, encoder, chunker, store, backoff=Backoff(0.01, 0.02))
    for batch in batches(recuts, committed):
        proc.process(batch)

    expected = model(events)
    for doc, (v, deleted, text) in expected.items():
        rows = store.chunk_rows(doc)
        st_ = store.get_states([doc])[doc]
        assert (st_.version, st_.deleted) == (v, deleted), doc
        if deleted:
            assert rows == []
            continue
        chunks = chunker.chunk(text)
        assert [(r["chunk_index"], r["version"], r["text"]) for r in rows] == [(c.index, v, c.text) for c in chunks]
        stored = store.fetch_vectors([r["id"] for r in rows])
        fresh, _ = encoder.encode_tokens([c.token_ids for c in chunks])
        for r, f in zip(rows, fresh):
            cos = float(np.dot(stored[r["id"]], f))
            assert cos > 0.995, f"{doc}#{r['chunk_index']} v{v} ({text!r}): stored vector is another text's " \
                                f"(cosine {cos:.3f})"

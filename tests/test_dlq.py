"""`embedstream dlq show|replay`: a record written with a schema version the pipeline does
not know is dead-lettered, shown, re-injected with its original bytes (x-dlq-* headers
stripped) and, once the schema is registered (the "fix"), indexed."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest

from app.chunking import Chunker
from app.cli import main
from app.events import SCHEMA_DIR, SINGLE_OBJECT_MAGIC, ChangeEvent, EventCodec, Op, schema_fingerprint
from app.offsets import high_watermarks
from app.pipeline import Processor
from app.replay import Replayer, ReplayRange, open_target, read_dead_letters
from conftest import consume_all


@pytest.fixture
def schema_v2(tmp_path):
    """A schema dir with the current schema plus a newer writer version (one more field)."""
    d = tmp_path / "schemas"
    d.mkdir()
    shutil.copy(SCHEMA_DIR / "document_change.avsc", d / "document_change.avsc")
    schema = json.loads((SCHEMA_DIR / "document_change.avsc").read_text())
    schema["fields"].append({"name": "language", "type": "string", "default": "en"})
    (d / "document_change_v2.avsc").write_text(json.dumps(schema))
    return d, fastavro.parse_schema(schema)


def encode_v2(parsed, doc: str, text: str) -> bytes:
    ev = ChangeEvent(doc, Op.UPSERT, 1, 1_700_000_000_000, text, {"k": "v"}).to_avro()
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + schema_fingerprint(parsed))
    fastavro.schemaless_writer(buf, parsed, {**ev, "language": "de"})
    return buf.getvalue()


def test_dlq_show_and_replay_after_a_fix(env, producer, encoder, schema_v2, capsys):
    s = env
    schema_dir, parsed = schema_v2
    v2_value = encode_v2(parsed, "new-schema-doc", "Written by a producer that already uses schema v2.")
    codec = EventCodec()
    producer.produce(s.changes_topic, key=b"ok-doc",
                     value=codec.encode(ChangeEvent("ok-doc", Op.UPSERT, 1, 1_700_000_000_000, "Plain v1 doc.")))
    producer.produce(s.changes_topic, key=b"new-schema-doc", value=v2_value,
                     headers=[("trace-id", b"abc-123"), ("source", b"crm")])
    producer.produce(s.changes_topic, key=b"junk", value=b"\x09 not avro")
    producer.flush(10)

    # the pipeline (today's schemas) dead-letters the v2 record and the junk
    proc = open_target(s, encoder=encoder)
    rep = Replayer.start(s, ReplayRange(), processor=proc, name="first").run()
    assert rep.complete and rep.dead_letters == 2
    store = proc.store
    assert set(store.get_states(["ok-doc", "new-schema-doc"])) == {"ok-doc"}

    # dlq show: human and JSON
    assert main(["dlq", "show"]) == 0
    out = capsys.readouterr().out
    assert "reason=unknown-schema-fingerprint" in out and "reason=unknown-magic-byte" in out
    assert f"source: {s.changes_topic}[" in out and "key: 'junk'" in out
    assert main(["dlq", "show", "--json", "--reason", "unknown-schema-fingerprint"]) == 0
    [shown] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown["key"] == "new-schema-doc" and shown["value_size"] == len(v2_value)
    assert shown["source_topic"] == s.changes_topic and shown["source_offset"] is not None
    assert shown["headers"] == {"trace-id": "abc-123", "source": "crm"} and shown["stage"] == "decode"
    assert main(["dlq", "show", "--limit", "1", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    # dry run re-injects nothing
    assert main(["dlq", "replay", "--reason", "unknown-schema-fingerprint", "--dry-run"]) == 0
    assert "would re-inject 1 dead letter(s)" in capsys.readouterr().out
    ends_before = {p: m.high for p, m in high_watermarks(s, s.changes_topic).items()}
    assert sum(ends_before.values()) == 3

    # re-inject: the original key, bytes and headers, without x-dlq-* headers
    assert main(["dlq", "replay", "--reason", "unknown-schema-fingerprint"]) == 0
    assert "re-injected 1 of 1 dead letter(s)" in capsys.readouterr().out
    msgs = consume_all(s.bootstrap_servers, s.changes_topic, 4)
    [again] = [m for m in msgs if m.key() == b"new-schema-doc" and m.offset() >= ends_before[m.partition()]]
    assert again.value() == v2_value
    assert again.headers() == [("trace-id", b"abc-123"), ("source", b"crm")]

    # the fix: the pipeline knows schema v2 now; replaying from where the first replay ended indexes it
    fixed = Processor(EventCodec(schema_dir=schema_dir), encoder, Chunker(encoder.tokenizer, 256, 32), store)
    first_ends = {int(p): d["next"] for p, d in
                  json.loads((Path(s.data_dir) / "replay" / "first.json").read_text())["partitions"].items()}
    rep2 = Replayer.start(s, ReplayRange(from_offsets=first_ends), processor=fixed, name="after-fix").run()
    assert rep2.complete and rep2.records == 1 and rep2.dead_letters == 0
    st = store.get_states(["new-schema-doc"])["new-schema-doc"]
    assert st.version == 1 and not st.deleted
    assert store.chunk_rows("new-schema-doc")[0]["text"] == "Written by a producer that already uses schema v2."

    # nothing more in the DLQ than the two originals; --from-offset skips what was handled
    letters, ends = read_dead_letters(s)
    assert len(letters) == 2
    assert main(["dlq", "show", "--from-offset", ",".join(f"{p}:{o}" for p, o in ends.items())]) == 0
    assert "no dead letters" in capsys.readouterr().out

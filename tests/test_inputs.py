"""Input mappings (app/inputs): configuration checks, templates, and decoding of Debezium's own
published example events (tests/fixtures/debezium, see each file's _source) and mapped records."""
import json
from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from app.events import DecodeError, EventCodec, Op
from app.inputs import InputCodec, load_inputs, parse_entry
from app.inputs.debezium import mysql_version
from app.inputs.fields import FieldPath, MappingConfigError, MissingField, Template
from load.cdc import confluent_avro, connect_to_avro

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "debezium"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def wire(obj) -> bytes | None:
    return None if obj is None else json.dumps(obj).encode()


def codec_for(toml: str, tmp_path, registry=None) -> InputCodec:
    f = tmp_path / "inputs.toml"
    f.write_text(toml)
    return InputCodec(EventCodec(registry=registry), load_inputs(f))


MYSQL = '''
[[input]]
topic = "dbserver1.inventory.customers"
mapping = "debezium"
text = "{first_name} {last_name}\\n\\n{email}"
metadata = { table = "$source.table" }
'''


# --- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize("entry,msg", [
    ({"topic": "t", "mapping": "cdc"}, "mapping: 'cdc' is not one of document_change, debezium, mapped"),
    ({"topic": "t", "mapping": "debezium"}, "text: required by mapping 'debezium'"),
    ({"topic": "t", "mapping": "mapped", "doc_id": "{id}", "text": "{t}"}, "version: required"),
    ({"topic": "t", "mapping": "debezium", "text": "{a}", "txt": "x"}, "unknown option(s) txt"),
    ({"topic": "t", "mapping": "debezium", "text": "no fields"}, "text: the template 'no fields' names no field"),
    ({"topic": "t", "mapping": "debezium", "text": "{title"}, "text: unclosed '{'"),
    ({"topic": "t", "mapping": "debezium", "text": "{a b}"}, "bad field path"),
    ({"topic": "t", "mapping": "debezium", "text": "{a}", "connector": "oracle"}, "connector: 'oracle'"),
    ({"topic": "t", "mapping": "debezium", "text": "{a}", "format": "protobuf"}, "format: 'protobuf'"),
    ({"topic": "bad topic!", "mapping": "debezium", "text": "{a}"}, "topic: expected a Kafka topic name"),
    ({"topic": "t", "mapping": "mapped", "doc_id": "{id}", "text": "{t}", "version": "v", "delete": {"field": "x"}},
     "delete: expected"),
    ({"topic": "t", "mapping": "mapped", "doc_id": "{id}", "text": "{t}", "version": "v", "key": "json"}, "key: 'json'"),
    ({"topic": "t", "mapping": "mapped", "doc_id": "{id}", "text": "{t}", "version": "v", "metadata": {"a": 3}},
     "metadata.a: expected a field path"),
])
def test_bad_entries_are_refused_naming_the_option(entry, msg):
    with pytest.raises(MappingConfigError) as e:
        parse_entry(entry)
    assert msg in str(e.value)


def test_settings_refuse_a_bad_inputs_file_at_load_naming_setting_entry_and_option(tmp_path):
    f = tmp_path / "inputs.toml"
    f.write_text(MYSQL + '\n[[input]]\ntopic = "cms.articles"\nmapping = "mapped"\ndoc_id = "{id}"\ntext = "{body}"\n')
    with pytest.raises(ConfigError) as e:
        Settings.load(env={"EMBEDSTREAM_INPUTS": str(f)})
    assert str(e.value).endswith(f"EMBEDSTREAM_INPUTS={f}: [[input]] #2 (topic 'cms.articles'): "
                                 "version: required by mapping 'mapped'")
    f.write_text("[input]\ntopic = 3\n")
    with pytest.raises(ConfigError, match=r"EMBEDSTREAM_INPUTS=.*write \[\[input\]\]"):
        Settings.load(env={"EMBEDSTREAM_INPUTS": str(f)})
    with pytest.raises(ConfigError, match="cannot read TOML"):
        Settings.load(env={"EMBEDSTREAM_INPUTS": str(tmp_path / "absent.toml")})
    f.write_text(MYSQL + MYSQL)
    with pytest.raises(ConfigError, match="listed twice"):
        Settings.load(env={"EMBEDSTREAM_INPUTS": str(f)})
    f.write_text(MYSQL.replace('mapping = "debezium"', 'mapping = "debezium"\nformat = "avro"'))
    with pytest.raises(ConfigError, match="format = \"avro\": set EMBEDSTREAM_SCHEMA_REGISTRY_URL"):
        Settings.load(env={"EMBEDSTREAM_INPUTS": str(f)})


def test_input_topics_are_the_changes_topic_and_the_configured_ones(tmp_path):
    f = tmp_path / "inputs.toml"
    f.write_text(MYSQL + '\n[[input]]\ntopic = "embedstream.changes"\n')
    s = Settings.load(env={"EMBEDSTREAM_INPUTS": str(f)})
    assert s.input_topics() == ["embedstream.changes", "dbserver1.inventory.customers"]
    assert Settings.load(env={}).input_topics() == ["embedstream.changes"]


# --- paths and templates ----------------------------------------------------------------------
def test_templates_render_fields_and_name_the_missing_one():
    t = Template.parse("{title}\n\n{body} {{literal}} {n} {flag} {gone?}", "text")
    assert t.render({"title": "T", "body": None, "n": 3, "flag": True}) == "T\n\n {literal} 3 true "
    with pytest.raises(MissingField) as e:
        t.render({"title": "T"}, "op=c")
    assert e.value.reason == "missing-field" and e.value.detail == "body (op=c)"
    assert FieldPath.parse("a.0.b", "x").get({"a": [{"b": 5}]}) == 5
    with pytest.raises(MappingConfigError, match="single '}'"):
        Template.parse("{a} }", "text")


# --- Debezium: the published examples --------------------------------------------------------
def test_mysql_tutorial_sequence_decodes_with_growing_binlog_versions(tmp_path):
    fx = fixture("mysql_tutorial")
    codec = codec_for(MYSQL, tmp_path)
    evs = [codec.decode(wire(r["key"]), wire(r["value"]), fx["topic"]) for r in fx["records"]]
    assert [(e.doc_id, e.op, e.version is None) for e in evs] == [
        ("dbserver1.inventory.customers/1004", Op.UPSERT, False), ("dbserver1.inventory.customers/1004", Op.UPSERT, False),
        ("dbserver1.inventory.customers/1004", Op.DELETE, False), ("dbserver1.inventory.customers/1004", Op.DELETE, True),
        ("dbserver1.inventory.customers/1005", Op.UPSERT, False), ("dbserver1.inventory.customers/1006", Op.UPSERT, False)]
    assert evs[0].text == "Anne Kretchmar\n\nannek@noanswer.org" and evs[1].text.startswith("Anne Marie ")
    assert evs[0].metadata == {"table": "customers"}
    # mysql-bin.000003, positions 154 (snapshot read), 364, 725, 1046, 1356
    assert [e.version for e in evs if e.version] == [3 << 32 | p for p in (154, 364, 725, 1046, 1356)]
    assert evs[1].event_time_ms == 1486501486 * 1000 + 308  # envelope ts_ms: this old source has no ts_ms


def test_mysql_reference_examples_and_their_doc_ids_from_the_key_template(tmp_path):
    fx = fixture("mysql_reference")
    codec = codec_for(MYSQL.replace("dbserver1", "mysql-server-1") + 'doc_id = "customer-{id}"\n', tmp_path)
    evs = [codec.decode(wire(r["key"]), wire(r["value"]), fx["topic"]) for r in fx["records"]]
    assert {e.doc_id for e in evs} == {"customer-1004"}
    assert [e.version for e in evs] == [3 << 32 | 154, 3 << 32 | 484, 3 << 32 | 805, None]
    assert [e.op for e in evs] == [Op.UPSERT, Op.UPSERT, Op.DELETE, Op.DELETE]


def test_postgres_reference_examples_version_is_the_lsn(tmp_path):
    fx = fixture("postgres_reference")
    codec = codec_for(f'[[input]]\ntopic = "{fx["topic"]}"\nmapping = "debezium"\ntext = "{{first_name}} {{last_name}}"\n',
                      tmp_path)
    evs = [codec.decode(wire(r["key"]), wire(r["value"]), fx["topic"]) for r in fx["records"]]
    # the key's payload has the id as the string "1", the row as the number 1: the same value
    assert {e.doc_id for e in evs} == {"PostgreSQL_server.public.customers/1"}
    assert [(e.op, e.version) for e in evs] == [(Op.UPSERT, 24023128), (Op.UPSERT, 24023128), (Op.DELETE, 46523128),
                                                (Op.DELETE, None)]
    assert evs[1].text == "Anne Marie Kretchmar" and evs[0].event_time_ms == 1559033904863


def test_debezium_serde_fixtures_json_with_and_without_the_schema_envelope_and_an_added_column(tmp_path):
    recs = fixture("serde_tests")["records"]
    toml = MYSQL.replace("dbserver1", "mysql-server-1").replace("{first_name} {last_name}", "{first_name} {middle_name?} {last_name}")
    codec = codec_for(toml, tmp_path)
    key = json.dumps({"id": 1004}).encode()
    plain = codec.decode(key, wire(recs["serde-without-schema"]), "mysql-server-1.inventory.customers")
    wrapped = codec.decode(key, wire(recs["serde-with-schema"]), "mysql-server-1.inventory.customers")
    assert plain == wrapped and plain.text == "Anne  Kretchmar\n\nannek@noanswer.org"
    added = codec.decode(key, wire(recs["serde-unknown-property"]), "mysql-server-1.inventory.customers")
    assert added.text == "Anne L Kretchmar\n\nannek@noanswer.org"
    strict = codec_for(MYSQL.replace("dbserver1", "mysql-server-1").replace("{last_name}", "{middle_name}"), tmp_path)
    with pytest.raises(DecodeError) as e:
        strict.decode(key, wire(recs["serde-without-schema"]), "mysql-server-1.inventory.customers")
    assert (e.value.reason, e.value.detail) == ("missing-field", "middle_name (op=c)")


def test_debezium_avro_through_the_registry_decodes_like_the_json(tmp_path):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = SchemaRegistryClient.new_client({"url": "mock://inputs-avro"})
    fx = fixture("mysql_tutorial")
    codec = codec_for(MYSQL.replace('mapping = "debezium"', 'mapping = "debezium"\nformat = "avro"'), tmp_path, registry)
    jcodec = codec_for(MYSQL, tmp_path)
    topic = fx["topic"]
    for r in fx["records"]:
        k = confluent_avro(registry, f"{topic}-key", connect_to_avro(r["key"]["schema"]), r["key"]["payload"])
        v = None if r["value"] is None else confluent_avro(
            registry, f"{topic}-value", connect_to_avro(r["value"]["schema"]), r["value"]["payload"])
        assert codec.decode(k, v, topic) == jcodec.decode(wire(r["key"]), wire(r["value"]), topic)
    with pytest.raises(DecodeError, match="unexpected-format"):
        codec.decode(wire(fx["records"][0]["key"]), wire(fx["records"][0]["value"]), topic)
    with pytest.raises(DecodeError, match="unknown-schema-id"):
        codec.decode(k, b"\x00\x00\x00\x03\xe7" + v[5:], topic)


def test_records_that_do_not_fit_the_debezium_mapping_name_the_reason(tmp_path):
    fx = fixture("mysql_tutorial")
    topic = fx["topic"]
    codec = codec_for(MYSQL, tmp_path)
    key, val = fx["records"][1]["key"], fx["records"][1]["value"]

    def reason(k, v):
        with pytest.raises(DecodeError) as e:
            codec.decode(k, v, topic)
        return e.value.reason, e.value.detail

    bad = json.loads(json.dumps(val))
    del bad["payload"]["after"]["email"]
    assert reason(wire(key), wire(bad)) == ("missing-field", "email (op=u)")
    other = json.loads(json.dumps(key))
    other["payload"]["id"] = 1005
    assert reason(wire(other), wire(val)) == ("key-mismatch", "key field id=1005 but after.id=1004")
    toast = json.loads(json.dumps(val))
    toast["payload"]["after"]["email"] = "__debezium_unavailable_value"
    assert reason(wire(key), wire(toast))[0] == "unavailable-value"
    trunc = {"payload": dict(val["payload"], op="t", before=None, after=None), "schema": None}
    assert reason(wire(key), wire(trunc["payload"]))[0] == "unsupported-op"
    assert reason(None, wire(val))[0] == "missing-key"
    assert reason(b"1004", wire(val))[0] == "invalid-key"
    nopos = json.loads(json.dumps(val))
    del nopos["payload"]["source"]["pos"]
    assert reason(wire(key), wire(nopos)) == ("missing-field", "source.pos (MySQL binlog position)")
    # the native limits apply to mapped events too
    big = json.loads(json.dumps(val))
    big["payload"]["after"]["last_name"] = "x\x01"
    assert reason(wire(key), wire(big))[0] == "control-characters"


def test_mysql_version_grows_with_position_row_and_file():
    v = lambda f, p, r: mysql_version({"file": f"mysql-bin.{f:06d}", "pos": p, "row": r})
    seq = [v(3, 154, 0), v(3, 154, 1), v(3, 154, 2), v(3, 300, 0), v(4, 4, 0), v(1000000, 4, 0)]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    assert v(2 ** 31 - 1, 2 ** 32 - 2, 1) < 2 ** 63
    with pytest.raises(DecodeError, match="version-overflow"):
        v(2 ** 31, 4, 0)


# --- mapped -------------------------------------------------------------------------------------
MAPPED = '''
[[input]]
topic = "cms.articles"
mapping = "mapped"
doc_id = "article-{id}"
text = "{title}\\n\\n{body}"
version = "revision"
event_time = "updated_at?"
metadata = { author = "author.name", lang = "lang?" }
delete = { field = "status", in = ["deleted", "archived"] }
'''


def article(**kw):
    base = {"id": 7, "title": "Kafka", "body": "Streams of events.", "revision": 3,
            "updated_at": "2024-05-01T00:00:00Z", "author": {"name": "Ann"}, "status": "live"}
    base.update(kw)
    return base


def test_mapped_json_records(tmp_path):
    codec = codec_for(MAPPED, tmp_path)
    ev = codec.decode(b"article-7", wire(article()), "cms.articles")
    assert (ev.doc_id, ev.op, ev.version, ev.text, ev.metadata) == (
        "article-7", Op.UPSERT, 3, "Kafka\n\nStreams of events.", {"author": "Ann"})
    assert ev.event_time_ms == 1714521600000
    no_status = {k: v for k, v in article().items() if k != "status"}
    assert codec.decode(b"article-7", wire(no_status), "cms.articles").op is Op.UPSERT  # no rule field: no delete
    gone = codec.decode(b"article-7", wire(article(status="archived", revision=4)), "cms.articles")
    assert (gone.op, gone.version) == (Op.DELETE, 4)
    assert codec.decode(b"article-7", None, "cms.articles").is_tombstone
    with pytest.raises(DecodeError, match="key-mismatch"):
        codec.decode(b"7", wire(article()), "cms.articles")
    with pytest.raises(DecodeError) as e:
        codec.decode(b"article-7", wire({k: v for k, v in article().items() if k != "revision"}), "cms.articles")
    assert (e.value.reason, e.value.detail) == ("missing-field", "revision (version)")
    with pytest.raises(DecodeError, match="invalid-version"):
        codec.decode(b"article-7", wire(article(revision="three")), "cms.articles")


def test_mapped_avro_records_and_a_boolean_delete_rule(tmp_path):
    import datetime as dt

    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = SchemaRegistryClient.new_client({"url": "mock://inputs-mapped"})
    schema = {"type": "record", "name": "Page", "fields": [
        {"name": "slug", "type": "string"}, {"name": "heading", "type": "string"},
        {"name": "content", "type": ["null", "string"], "default": None},
        {"name": "modified", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "removed", "type": "boolean", "default": False}]}
    toml = ('[[input]]\ntopic = "wiki"\nmapping = "mapped"\nformat = "avro"\ndoc_id = "{slug}"\n'
            'text = "{heading}\\n{content}"\nversion = "modified"\ndelete = { field = "removed", equals = true }\n')
    codec = codec_for(toml, tmp_path, registry)
    t = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    raw = confluent_avro(registry, "wiki-value", schema,
                         {"slug": "home", "heading": "Home", "content": None, "modified": t, "removed": False})
    ev = codec.decode(b"home", raw, "wiki")
    assert (ev.text, ev.version, ev.op) == ("Home\n", 1714521600000, Op.UPSERT)
    raw = confluent_avro(registry, "wiki-value", schema,
                         {"slug": "home", "heading": "Home", "content": "x", "modified": t, "removed": True})
    assert codec.decode(b"home", raw, "wiki").op is Op.DELETE


def test_topics_without_a_mapping_decode_natively(tmp_path):
    from app.events import ChangeEvent

    codec = codec_for(MAPPED, tmp_path)
    ev = ChangeEvent("d1", Op.UPSERT, 1, 0, text="hi")
    assert codec.decode(b"d1", codec.encode(ev), "embedstream.changes") == ev


def test_loadgen_debezium_records_decode_to_the_same_changes(tmp_path):
    from load.loadgen import ChangeStream, debezium_encoder

    enc = debezium_encoder()
    codec = codec_for(enc.table.inputs_toml(), tmp_path)
    n = 0
    for change in ChangeStream(seed=3, zipf=0.5).__iter__():
        key, value = enc(change, 1_700_000_000_000)
        ev = codec.decode(key, value, enc.table.topic)
        assert ev.doc_id == change.doc_id
        if change.op is None:
            assert ev.is_tombstone
        else:
            assert (ev.op.value, ev.version) == (change.op, change.version)
            if change.op == "UPSERT":
                assert ev.text == change.text and ev.metadata == {"title": change.metadata["title"]}
        n += 1
        if n == 300:
            break

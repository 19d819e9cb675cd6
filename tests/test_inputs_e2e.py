"""Input mappings end to end: Debezium's own published example events (tests/fixtures/debezium) and
mapped records replayed through the real Kafka broker and the real schema registry into one worker
process (LanceDB), next to native DocumentChange events; and bad mapping configurations refused at
start-up."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

from confluent_kafka import Producer

from app.store.lancedb import LanceDBStore
from conftest import REPO, consume_all, settings_env, wait_for
from load.cdc import confluent_avro, connect_to_avro
from test_inputs import fixture

MYSQL_POS_AFTER_ALTER = 1666  # a binlog position after the tutorial's last insert (1356)


def create_topics(settings, *names, partitions=2):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_config())
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for f in futures.values():
        f.result(30)


def column_added(tutorial: dict) -> tuple[dict, dict]:
    """Derived from the tutorial's insert of row 1005: `ALTER TABLE customers ADD COLUMN middle_name
    VARCHAR(255)` (as in Debezium's serde-unknown-property.json fixture), then an update that sets it.
    The value schema gains the optional column in before/after; the binlog position moves on."""
    rec = next(r for r in tutorial["records"] if r["key"]["payload"]["id"] == 1005)
    key, value = copy.deepcopy(rec["key"]), copy.deepcopy(rec["value"])
    for f in value["schema"]["fields"][:2]:  # before, after
        f["fields"].append({"type": "string", "optional": True, "field": "middle_name"})
    p = value["payload"]
    p["before"] = dict(p["after"], middle_name=None)
    p["after"] = dict(p["after"], middle_name="K.")
    p["op"] = "u"
    p["source"] = dict(p["source"], pos=MYSQL_POS_AFTER_ALTER, ts_sec=p["source"]["ts_sec"] + 60)
    p["ts_ms"] += 60_000
    return key, value


def missing_column(tutorial: dict) -> tuple[dict, dict]:
    """After `ALTER TABLE customers DROP COLUMN email`: the rows lack the column the text template needs."""
    rec = next(r for r in tutorial["records"] if r["key"]["payload"]["id"] == 1006)
    key, value = copy.deepcopy(rec["key"]), copy.deepcopy(rec["value"])
    for f in value["schema"]["fields"][:2]:  # before, after
        f["fields"] = [c for c in f["fields"] if c["field"] != "email"]
    key["payload"]["id"] = value["payload"]["after"]["id"] = 1007
    del value["payload"]["after"]["email"]
    value["payload"]["source"]["pos"] = MYSQL_POS_AFTER_ALTER + 300
    return key, value


INPUTS = '''
[[input]]
topic = "{json_topic}"
mapping = "debezium"
text = "{{first_name}} {{middle_name?}} {{last_name}}\\n\\n{{email}}"
metadata = {{ table = "$source.table" }}

[[input]]
topic = "{avro_topic}"
mapping = "debezium"
format = "avro"
doc_id = "customer-{{id}}"
text = "{{first_name}} {{middle_name?}} {{last_name}}\\n\\n{{email}}"

[[input]]
topic = "{pg_topic}"
mapping = "debezium"
format = "json"
text = "{{first_name}} {{last_name}} <{{email}}>"

[[input]]
topic = "{mapped_topic}"
mapping = "mapped"
doc_id = "{{id}}"
text = "{{title}}\\n\\n{{body}}"
version = "rev"
metadata = {{ author = "author?" }}
delete = {{ field = "status", equals = "deleted" }}
'''


def test_every_mapping_on_one_worker_ends_in_the_right_store_state(settings, schema_registry, worker_factory,
                                                                    encoder, tmp_path):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    tag = settings.app_id.rsplit("-", 1)[1]
    topics = dict(json_topic=f"dbserver1.inventory.customers-{tag}", avro_topic=f"avro.inventory.customers-{tag}",
                  pg_topic=f"PostgreSQL_server.public.customers-{tag}", mapped_topic=f"cms.articles-{tag}")
    create_topics(settings, *topics.values())
    inputs = tmp_path / "inputs.toml"
    inputs.write_text(INPUTS.format(**topics))
    s = settings.replace(schema_registry_url=schema_registry, inputs=str(inputs))
    registry = SchemaRegistryClient({"url": schema_registry})
    # Debezium's producers are Kafka Connect's (Java): murmur2 partitioning of the key bytes
    producer = Producer({"bootstrap.servers": s.bootstrap_servers, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    sent: list[tuple[str, bytes, bytes | None]] = []

    def send(topic, key: bytes, value: bytes | None):
        producer.produce(topic, key=key, value=value)
        sent.append((topic, key, value))

    js = lambda obj: None if obj is None else json.dumps(obj).encode()  # noqa: E731
    # Keys as Kafka Connect's JsonConverter writes them: the same key struct gives the same bytes,
    # so a row's changes share one partition. (The tutorial page prints the snapshot read's key
    # with its fields in another order than the later events' keys; sent verbatim, row 1004's
    # events were split over two partitions and the outcome counts depended on fetch order.)
    jk = lambda obj: json.dumps(obj, sort_keys=True).encode()  # noqa: E731

    def avro(topic, part: str, obj):
        if obj is None:
            return None
        return confluent_avro(registry, f"{topic}-{part}", connect_to_avro(obj["schema"]), obj["payload"])

    tutorial = fixture("mysql_tutorial")
    recs = tutorial["records"]
    # the tutorial (snapshot read, update, delete, tombstone, two inserts), a column added to the table,
    # a stale event (the update of the deleted row again) and a duplicate (the last insert again)
    mysql = [(r["key"], r["value"]) for r in recs] + [column_added(tutorial), (recs[1]["key"], recs[1]["value"]),
                                                      (recs[-1]["key"], recs[-1]["value"]), missing_column(tutorial)]
    for k, v in mysql:
        send(topics["json_topic"], jk(k), js(v))                                      # JsonConverter, schemas on
        send(topics["avro_topic"], avro(topics["avro_topic"], "key", k), avro(topics["avro_topic"], "value", v))
    for r in fixture("postgres_reference")["records"]:                                 # JsonConverter, schemas off
        send(topics["pg_topic"], js(r["key"]["payload"]), js(r["value"] and r["value"]["payload"]))
    article = lambda i, rev, **kw: js({"id": f"a{i}", "rev": rev, "title": f"Title {i}",  # noqa: E731
                                       "body": f"Body {i} revision {rev}.", **kw})
    mt = topics["mapped_topic"]
    for key, value in [(b"a1", article(1, 1)), (b"a1", article(1, 2, author="Ann")), (b"a1", article(1, 1)),
                       (b"a1", article(1, 2, author="Ann")), (b"a2", article(2, 1)),
                       (b"a2", article(2, 2, status="deleted")), (b"a3", article(3, 1)), (b"a3", None),
                       (b"a4", js({"id": "a4", "title": "no revision", "body": "x"}))]:
        send(mt, key, value)
    assert producer.flush(30) == 0
    from app.producer import DocumentProducer

    with DocumentProducer(settings=s, framing="single-object") as native:
        native.upsert("native-1", "A DocumentChange on the changes topic.", version=1)

    worker = worker_factory(s, EMBEDSTREAM_INPUTS=str(inputs), EMBEDSTREAM_SCHEMA_REGISTRY_URL=schema_registry)
    store = wait_for(lambda: _try_open(s, encoder), 120, what="the worker's LanceDB tables")
    j, a, pg = topics["json_topic"], "customer", topics["pg_topic"]
    ids = [f"{j}/1004", f"{j}/1005", f"{j}/1006", f"{a}-1004", f"{a}-1005", f"{a}-1006", f"{pg}/1",
           "a1", "a2", "a3", "native-1"]
    wait_for(lambda: _settled(store, ids), 180, what="every input applied: " + worker.log()[-2000:])
    states = store.get_states(ids)
    v = lambda pos: 3 << 32 | pos  # noqa: E731  (mysql-bin.000003)
    for prefix in (f"{j}/", f"{a}-"):
        assert states[prefix + "1004"].deleted and states[prefix + "1004"].version == v(725)  # delete, tombstone; stale update dropped
        assert states[prefix + "1005"].version == v(MYSQL_POS_AFTER_ALTER) and not states[prefix + "1005"].deleted
        assert [c["text"] for c in store.chunk_rows(prefix + "1005")] == ["Sarah K. Thompson\n\nkitt@acme.com"]
        assert [c["text"] for c in store.chunk_rows(prefix + "1006")] == ["Kenneth  Anderson\n\nkander@acme.com"]
        assert store.chunk_rows(prefix + "1004") == []
    assert json.loads(store.chunk_rows(f"{j}/1005")[0]["metadata_json"]) == {"table": "customers"}
    assert states[f"{pg}/1"].deleted and states[f"{pg}/1"].version == 46523128
    assert states["a1"].version == 2 and [c["text"] for c in store.chunk_rows("a1")] == ["Title 1\n\nBody 1 revision 2."]
    assert json.loads(store.chunk_rows("a1")[0]["metadata_json"]) == {"author": "Ann"}
    assert states["a2"].deleted and states["a2"].version == 2 and states["a3"].deleted
    assert "a4" not in store.get_states(["a4"])
    assert store.chunk_rows("native-1")[0]["text"] == "A DocumentChange on the changes topic."

    # what did not fit its mapping is in the DLQ, with the reason and the missing field
    dls = consume_all(s.bootstrap_servers, s.dlq_topic, 4, timeout=60)
    got = sorted((h["x-dlq-source-topic"].decode(), h["x-dlq-reason"].decode(), h["x-dlq-detail"].decode())
                 for h in (dict(m.headers()) for m in dls))
    assert got == sorted([
        (j, "missing-field", "email (op=c)"), (topics["avro_topic"], "missing-field", "email (op=c)"),
        (mt, "missing-field", "rev (version)"),
        # Debezium's PostgreSQL page gives its create and update the same LSN (24023128): the update
        # cannot be ordered by the version and is set aside, not silently applied
        (pg, "version-conflict", "version 24023128 is already stored with other content")]), got
    # stale: the deleted row's update again (JSON, Avro), a1 revision 1 again; duplicate: the tombstones
    # after a delete (JSON, Avro, PostgreSQL), the last insert again (JSON, Avro), a1 revision 2 again
    counts = [tuple(map(int, m)) for m in re.findall(r"stale=(\d+) duplicate=(\d+)", worker.log())]
    assert (sum(c[0] for c in counts), sum(c[1] for c in counts)) == (3, 6), counts
    assert worker.stop() == 0, worker.log()[-3000:]


def _try_open(s, encoder):
    try:
        return LanceDBStore(f"{s.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def _settled(store, ids) -> bool:
    states = store.get_states(ids)
    return len(states) == len(ids) and states[ids[1]].version == 3 << 32 | MYSQL_POS_AFTER_ALTER \
        and states[ids[4]].version == 3 << 32 | MYSQL_POS_AFTER_ALTER and states[ids[0]].deleted


def test_a_bad_mapping_configuration_stops_the_worker_at_start_up(settings, tmp_path):
    inputs = tmp_path / "inputs.toml"
    inputs.write_text('[[input]]\ntopic = "dbserver1.inventory.customers"\nmapping = "debezium"\n'
                      'text = "{first_name} {last_name"\n')
    env = {**settings_env(settings), "EMBEDSTREAM_INPUTS": str(inputs)}
    out = subprocess.run([sys.executable, "-m", "app", "worker"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert (f"EMBEDSTREAM_INPUTS={inputs}: [[input]] #1 (topic 'dbserver1.inventory.customers'): "
            "text: unclosed '{' at position 13") in out.stderr
    assert "Traceback" not in out.stderr

    # a good file whose topic does not exist (yet): refused too, with what to do
    inputs.write_text('[[input]]\ntopic = "no.such.topic"\nmapping = "mapped"\ndoc_id = "{id}"\ntext = "{t}"\n'
                      'version = "v"\n')
    out = subprocess.run([sys.executable, "-m", "app", "worker"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "input topic(s) of" in out.stderr and "no.such.topic" in out.stderr, out.stderr

"""End to end: a topic switch in the change stream produces a drift alert on the alerts topic."""
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from app.alerts import decode_alert_message, encode_alert_message, format_alert
from app.cli import SAMPLE_CORPUS, topic_sentences
from app.events import ChangeEvent, EventCodec, Op
from conftest import REPO, consume_all, settings_env


def sentences(topics):
    docs = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return topic_sentences(docs, topics)


def test_topic_switch_fires_an_alert(settings, worker_factory, producer):
    rng = random.Random(7)
    before = sentences({"astronomy", "computer networking"})
    after = sentences({"cooking", "medieval history"})
    warmup, stable, switched = 200, 100, 300
    worker = worker_factory(settings, EMBEDSTREAM_DRIFT_WARMUP=str(warmup))
    codec = EventCodec()
    for i in range(warmup + stable + switched):
        pool = before if i < warmup + stable else after
        text = " ".join(rng.sample(pool, 2))
        # one partition, so the monitor sees the events in production order
        producer.produce(settings.changes_topic, key=f"d{i}".encode(), partition=0,
                         value=codec.encode(ChangeEvent(f"d{i}", Op.UPSERT, 1, int(time.time() * 1000), text)))
    producer.flush(10)
    [msg] = consume_all(settings.bootstrap_servers, settings.alerts_topic, 1, timeout=240)
    alert = decode_alert_message(msg.value())
    assert alert.kind.value == "FIRED"
    assert alert.model_fingerprint.startswith("all-MiniLM-L6-v2:int8:")
    assert msg.key() == alert.kafka_key
    # fired after the switch, not during the stable part, and soon after it (events seen by the monitor)
    assert warmup + stable <= alert.event_index <= warmup + stable + 150, alert.event_index
    assert alert.example_doc_ids and alert.stats
    # for alert consumers: the CLI prints it
    out = subprocess.run([sys.executable, "-m", "app", "alerts", "--json", "--idle", "3", "--limit", "1"], cwd=REPO,
                         env=settings_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["alert_id"] == alert.alert_id
    assert "FIRED" in format_alert(alert)
    assert decode_alert_message(encode_alert_message(alert)) == alert

    # an SRE accepts the new regime: `embedstream drift relearn` while the worker runs (its stream is
    # quiet now); the worker closes the open episode with a CLEARED alert and warms up again
    def drift_cli(*args):
        return subprocess.run([sys.executable, "-m", "app", "drift", *args], cwd=REPO, env=settings_env(settings),
                              capture_output=True, text=True, timeout=60)

    r = drift_cli("relearn", "--collection", settings.collection_prefix, "--reason", "new topics accepted")
    assert r.returncode == 0 and "requested a new reference" in r.stdout, r.stdout + r.stderr
    cleared, deadline = None, time.monotonic() + 60
    while cleared is None and time.monotonic() < deadline:
        for m in consume_all(settings.bootstrap_servers, settings.alerts_topic, 100, timeout=3):
            a = decode_alert_message(m.value())
            if a.kind.value == "CLEARED" and "on request" in a.message:
                cleared = a
    assert cleared is not None and cleared.episode_id == alert.episode_id
    assert "new topics accepted" in cleared.message
    [state] = [json.loads(line) for line in drift_cli("status", "--json").stdout.splitlines()]
    assert state["warming_up"] and state["warmup_progress"] == 0 and not state["relearn_requested"], state
    assert worker.stop() == 0


@pytest.mark.tansu
def test_demo_drift_ends_with_the_drift_alert_printed_by_embedstream_alerts(tmp_path):
    # `embedstream demo --drift`: the demo's embedded stack, then a topic switch through Kafka; it
    # ends with the output of `embedstream alerts`, which must show the worker's FIRED alert
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    env["EMBEDSTREAM_DATA_DIR"] = str(tmp_path / "data")
    r = subprocess.run([sys.executable, "-m", "app", "demo", "--drift", "--timeout", "240"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    docs = int(re.search(r"(\d+) documents, \d+ chunks searchable", out).group(1))
    alerts = out.split("$ embedstream alerts", 1)[1]
    assert "FIRED" in alerts and "Embedding drift" in alerts, alerts
    fired_at = int(re.search(r"at event (\d+)", alerts).group(1))
    # the demo produces the switched events once the others are indexed, so the monitor's event
    # index (consumption order over 8 partitions) has every stable event before any switched one
    # the monitor sees one vector per event (the mean of its chunks): the demo's documents, then
    # its 1100 events about astronomy and networking
    switch = docs + 1100
    assert switch <= fired_at < switch + 300, (switch, fired_at)

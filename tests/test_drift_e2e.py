"""End to end: a topic switch in the change stream produces a drift alert on the alerts topic."""
import json
import random
import re
import subprocess
import sys
import time

from app.alerts import decode_alert_message, encode_alert_message, format_alert
from app.cli import SAMPLE_CORPUS
from app.events import ChangeEvent, EventCodec, Op
from conftest import REPO, consume_all, settings_env


def sentences(topics):
    out = []
    for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        if doc["metadata"]["topic"] in topics:
            out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if len(s.split()) >= 6]
    return out


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
    assert worker.stop() == 0

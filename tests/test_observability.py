"""Metrics and health: unit checks, and a scrape of a real worker's /metrics during a run."""
import json
import re
import time
import urllib.error
import urllib.request

from app.broker import free_port
from app.deadletter import DeadLetter, Record
from app.events import ChangeEvent, EventCodec, Op
from app.observability import Health, Metrics, serve
from app.pipeline import BatchResult
from conftest import wait_for


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_metrics_count_a_batch():
    m = Metrics()
    r = BatchResult(records=5, chunks_encoded=3, chunks_written=3, encode_s=0.2, store_s=0.05)
    r.count("UPSERT", "written", 2)
    r.count("TOMBSTONE", "deleted")
    r.dead_letter(DeadLetter(Record("t", 0, 1, b"k", b"x"), "unknown-magic-byte"))
    now = int(time.time() * 1000)
    r.applied_times = [(now - 1500, now - 200)] * 3
    m.observe_batch(r, 0.3, now)
    text = m.render().decode()
    assert 'embedstream_events_total{op="UPSERT",outcome="written"} 2.0' in text
    assert 'embedstream_events_total{op="TOMBSTONE",outcome="deleted"} 1.0' in text
    assert 'embedstream_dead_letters_total{reason="unknown-magic-byte"} 1.0' in text
    assert "embedstream_freshness_seconds_count 3.0" in text
    assert 'embedstream_freshness_seconds_bucket{le="1.5"} 3.0' in text
    assert 'embedstream_freshness_seconds_bucket{le="1.0"} 0.0' in text


def test_health_endpoints():
    m, h = Metrics(), Health()
    port = free_port()
    server = serve(m, h, port, "127.0.0.1")
    try:
        assert get(port, "/livez")[0] == 200
        code, body = get(port, "/readyz")
        assert code == 503 and json.loads(body)["checks"]["model"]["ok"] is False
        for c in Health.CHECKS:
            h.set(c, True)
        assert get(port, "/readyz")[0] == 200
        assert get(port, "/nope")[0] == 404
    finally:
        server.shutdown()


def test_worker_metrics_move_with_the_stream(settings, worker_factory, producer):
    port = free_port()
    settings = settings.replace(metrics_port=port)
    worker = worker_factory(settings, EMBEDSTREAM_WEAVIATE_API_KEY="wv-secret-in-env",
                            EMBEDSTREAM_SASL_PASSWORD="sasl-secret-in-env", EMBEDSTREAM_HEALTH_INTERVAL_S="0.5")
    # readiness: 503 while loading, 200 once broker, topics, store and model are ready
    seen = []

    def ready():
        try:
            code, body = get(port, "/readyz")
        except OSError:
            return False
        seen.append((code, json.loads(body)["checks"]["model"]["ok"]))
        return code == 200
    wait_for(ready, 60, interval=0.02, what="/readyz 200")
    assert (503, False) in seen, seen

    codec = EventCodec()
    n = 12
    for i in range(n):
        producer.produce(settings.changes_topic, key=f"d{i}".encode(),
                         value=codec.encode(ChangeEvent(f"d{i}", Op.UPSERT, 1, int(time.time() * 1000), f"text {i}")))
    producer.produce(settings.changes_topic, key=b"d0", value=None)
    producer.produce(settings.changes_topic, key=b"bad", value=b"\x42junk")
    producer.flush(10)

    def done():
        m = scrape(port)
        return m if m.get('embedstream_events_total{op="TOMBSTONE",outcome="deleted"}') == 1 and \
            sum(v for k, v in m.items() if k.startswith("embedstream_events_total")) == n + 2 else None
    m = wait_for(done, 90, what="metrics for all events")
    # the tombstone may share a batch with d0's upsert (then the upsert is superseded)
    written = m.get('embedstream_events_total{op="UPSERT",outcome="written"}', 0)
    superseded = m.get('embedstream_events_total{op="UPSERT",outcome="superseded"}', 0)
    assert written + superseded == n
    assert m['embedstream_dead_letters_total{reason="unknown-magic-byte"}'] == 1
    assert m["embedstream_freshness_seconds_count"] == written + 1
    assert m["embedstream_chunks_written_total"] == written
    assert m["embedstream_batch_size_events_sum"] == n + 2
    assert m["embedstream_ready"] == 1
    # lag of every assigned partition (8), from the committed position, refreshed on a timer
    lag = wait_for(lambda: (lambda lag: lag if len(lag) == 8 and all(v == 0 for v in lag.values()) else None)(
        {k: v for k, v in scrape(port).items() if k.startswith("embedstream_consumer_lag")}), 30,
        what="lag 0 on all 8 partitions")
    assert len(lag) == 8
    assert 0 <= m["embedstream_seconds_since_progress"] < 60
    info = [k for k in m if k.startswith("embedstream_info")][0]
    assert re.search(r'fingerprint="all-MiniLM-L6-v2:int8:', info) and 'provider="CPUExecutionProvider"' in info
    raw = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "secret-in-env" not in raw  # secrets never reach metrics
    assert worker.stop() == 0
    assert "secret-in-env" not in worker.log()  # nor logs


def test_worker_json_logs_one_line_per_batch_without_secrets(settings, worker_factory, producer):
    worker = worker_factory(settings, EMBEDSTREAM_LOG_JSON="true", EMBEDSTREAM_WEAVIATE_API_KEY="wv-secret-77",
                            EMBEDSTREAM_SASL_PASSWORD="kafka-secret-88")
    codec = EventCodec()
    producer.produce(settings.changes_topic, key=b"a",
                     value=codec.encode(ChangeEvent("a", Op.UPSERT, 1, int(time.time() * 1000), "hello")))
    producer.flush(10)

    def batch_line():
        for line in worker.log().splitlines():
            if line.startswith("{") and "batch events=" in line:
                return json.loads(line)
    rec = wait_for(batch_line, 90, what="a JSON batch log line")
    assert rec["level"] == "INFO" and "written=1" in rec["msg"] and "encode_ms=" in rec["msg"]
    assert worker.stop() == 0
    log = worker.log()
    assert "wv-secret-77" not in log and "kafka-secret-88" not in log


def test_readyz_turns_503_while_the_store_keeps_failing_and_livez_stays_200(settings, worker_factory, producer,
                                                                              encoder):
    """Readiness used to be set once at start-up: a worker retrying a dead store for hours said
    ready. Now it answers 503 once the store has failed for EMBEDSTREAM_UNREADY_AFTER_S, and 200
    again after it recovers; /livez only says the process answers."""
    from pathlib import Path

    from test_outage import Stream, lancedb_outage, written_before_outage

    port = free_port()
    settings = settings.replace(metrics_port=port)
    worker = worker_factory(settings, EMBEDSTREAM_UNREADY_AFTER_S="3", EMBEDSTREAM_HEALTH_INTERVAL_S="0.5")
    stream = Stream(producer, settings)
    written_before_outage(settings, stream, encoder, 3)
    wait_for(lambda: get(port, "/readyz")[0] == 200, 30, what="ready before the outage")
    with lancedb_outage(Path(settings.data_dir) / "lancedb"):
        stream.upsert("during", 1, "written during the store outage")
        stream.flush()
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/readyz")), 60,
                              what="/readyz 503 during the outage")
        assert json.loads(body)["checks"]["store"]["ok"] is False
        assert "failing for" in json.loads(body)["checks"]["store"]["detail"]
        assert get(port, "/livez")[0] == 200
    wait_for(lambda: get(port, "/readyz")[0] == 200, 90, what="ready again after the outage")
    assert worker.stop() == 0

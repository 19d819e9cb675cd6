"""Smoke tests of the load tooling (load/): the generator against the test broker and the
benchmark's quick variant end to end. Structure and sanity only - never timing targets."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from app.events import EventCodec, Op
from conftest import REPO, consume_all, settings_env


def test_change_stream_is_seeded_and_versions_increase():
    from load.loadgen import ChangeStream

    a = [c.to_json() for c, _ in zip(ChangeStream(seed=7), range(300))]
    b = [c.to_json() for c, _ in zip(ChangeStream(seed=7), range(300))]
    assert a == b
    kinds = {c.kind for c, _ in zip(ChangeStream(seed=7), range(300))}
    assert {"new", "update", "resend", "touch", "delete", "tombstone"} <= kinds
    last: dict[str, int] = {}
    for c, _ in zip(ChangeStream(seed=3), range(2000)):
        if c.version is None:  # tombstone
            continue
        prev = last.get(c.doc_id, 0)
        assert c.version >= prev and (c.kind == "resend" or c.version > prev), (c.kind, c.doc_id, prev, c.version)
        last[c.doc_id] = c.version


def test_loadgen_cli_produces_decodable_events(settings):
    n = 60
    env = settings_env(settings)
    p = subprocess.run([sys.executable, "-m", "load.loadgen", "--events", str(n), "--rate", "200", "--seed", "11",
                        "--topic", settings.changes_topic, "--progress-interval", "0.2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "[loadgen] done:" in p.stderr and "failed=0" in p.stderr
    msgs = consume_all(settings.bootstrap_servers, settings.changes_topic, n, timeout=30)
    assert len(msgs) == n
    codec = EventCodec()
    versions: dict[str, list[int]] = {}
    for m in msgs:
        ev = codec.decode(m.key(), m.value())
        assert ev.doc_id == m.key().decode()
        if m.value() is None:
            assert ev.op is Op.DELETE
            continue
        assert ev.event_time_ms > 1_600_000_000_000
        if ev.op is Op.UPSERT:
            assert ev.text
        versions.setdefault(ev.doc_id, []).append(ev.version)
    # per document (one partition each), versions never go down
    for doc, vs in versions.items():
        assert vs == sorted(vs), (doc, vs)


def test_loadgen_exits_nonzero_when_delivery_fails():
    # nothing listens on port 9: every message times out
    p = subprocess.run([sys.executable, "-m", "load.loadgen", "--bootstrap-servers", "127.0.0.1:9", "--events", "3",
                        "--rate", "max", "--producer-config", "message.timeout.ms=1500"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "NOT delivered" in p.stderr


@pytest.mark.slow
def test_bench_quick_structure(settings):
    from load.bench import BenchConfig, format_table, run_bench

    cfg = BenchConfig.quick_config(docs=24, latency_duration_s=5.0, baseline=False, timeout_s=90)
    r = run_bench(cfg, settings=settings, log=lambda line: None)

    for key in ("command", "started_at", "finished_at", "machine", "texts", "encoder", "pipeline", "latency",
                "worker", "baseline", "targets", "ratio_pipeline_over_encoder", "noise"):
        assert key in r, key
    for key in ("nproc", "model_fingerprint", "provider", "onnxruntime", "encoder_threads"):
        assert r["machine"][key], key
    assert r["texts"]["docs"] == 24 and r["texts"]["mean_tokens"] > 0
    assert r["encoder"]["docs_per_s"] > 0
    assert r["pipeline"]["events_per_s"] > 0 and r["pipeline"]["events"] == 24
    assert r["ratio_pipeline_over_encoder"] > 0
    lat = r["latency"]
    assert lat["measured"] > 0 and lat["measured"] == lat["events"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert r["worker"]["peak_rss_mb"] > 0
    assert r["baseline"]["status"] == "skipped"
    assert set(r["targets"]) == {"pipeline_over_encoder", "encoder_over_sentence_transformers", "latency_p95_ms",
                                 "worker_peak_rss_mb"}
    assert r["targets"]["encoder_over_sentence_transformers"]["met"] is None
    assert not math.isnan(r["targets"]["latency_p95_ms"]["value"])
    assert "pipeline / encoder" in format_table(r)

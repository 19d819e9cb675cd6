"""The worker, search, replay and reindex on a **real** Weaviate (load/servers/weaviate.py), API-key
auth on, on real Kafka: selected by configuration alone.

* end to end: worker writes, FIELD-tokenised deletes, ``embedstream search``, ``replay``,
  ``reindex start|status|swap|rollback|finish`` through the alias;
* outages of the Weaviate process itself: SIGSTOP (a hang: calls time out) and SIGKILL + restart on
  the same data path (a crash). Nothing is committed past the failure, the worker stays up, and
  after recovery the store equals what was produced: 0 lost.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from app.events import ChangeEvent, EventCodec, Op
from app.store.weaviate import WeaviateStore
from conftest import REPO, committed_offsets as committed, committed_total, settings_env, wait_for
from load.servers.weaviate import WeaviateServer
from test_outage import Stream, assert_store_matches, words
from tests.store.real_weaviate import RealWeaviate, unique_prefix

pytestmark = pytest.mark.real_weaviate


def on_weaviate(settings, rw: RealWeaviate, prefix: str, **kw):
    return settings.replace(store="weaviate", weaviate_url=rw.url, weaviate_grpc_port=rw.grpc_port,
                            weaviate_api_key=rw.api_key or "", collection_prefix=prefix, **kw)


def open_store(rw: RealWeaviate, prefix: str, encoder, wait: float = 90):
    def attempt():
        try:
            return rw.store(encoder.fingerprint, encoder.dim, prefix, timeout_s=10, use_alias=False)
        except Exception:
            return None
    return wait_for(attempt, wait, what="the worker's Weaviate collections")


def cli(monkeypatch, settings, *args) -> int:
    """``embedstream ARGS`` in this process with exactly ``settings`` in the environment."""
    from app.cli import main

    for k in [k for k in os.environ if k.startswith("EMBEDSTREAM_")]:
        monkeypatch.delenv(k)
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return main(list(args))


def test_worker_search_replay_and_reindex_on_real_weaviate(settings, worker_factory, producer, encoder,
                                                           real_weaviate, monkeypatch, capsys):
    prefix = unique_prefix("EsWorker")
    s = on_weaviate(settings, real_weaviate, prefix)
    stream = Stream(producer, s)
    worker = worker_factory(s)
    try:
        stream.upsert("doc-1", 1, "Compost needs a balance of green and brown material.")
        stream.upsert("doc-1-extra", 1, "Aged compost improves the structure of clay soil.")
        stream.upsert("doc-2", 1, " ".join(["Routers forward packets between networks using routing tables."] * 60))
        stream.flush()
        store = open_store(real_weaviate, prefix, encoder)
        wait_for(lambda: store.count_documents() == 3, 90, what="3 documents in Weaviate")
        assert store.count() >= 4  # doc-2 has several chunks
        assert store.alias_target() == store.collection_name  # the worker created the alias
        # FIELD tokenization: deleting doc-1 must not touch doc-1-extra
        stream.delete("doc-1", 2)
        ends = stream.flush()
        wait_for(lambda: committed(s, ends) == ends, 60, what="the delete committed")
        assert_store_matches(store, stream, encoder)

        # `embedstream search` (a separate process) through the alias
        out = subprocess.run([sys.executable, "-m", "app", "search", "improving clay soil", "--json"], cwd=REPO,
                             env=settings_env(s), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["doc_id"] == "doc-1-extra"
        assert real_weaviate.api_key not in out.stdout + out.stderr
        assert worker.stop() == 0, worker.log()[-3000:]

        # `embedstream replay` of the whole topic into the same collection: nothing changes
        before = {d: store.chunk_rows(d) for d in stream.expected}
        assert cli(monkeypatch, s, "replay", "--json", "--quiet", "--no-dlq") == 0
        report = json.loads(capsys.readouterr().out)
        # doc-1's upsert (v1) is older than its delete (v2); the rest are what the store holds
        assert report["counts"] == {"UPSERT/duplicate": 2, "UPSERT/stale": 1, "DELETE/duplicate": 1}
        assert report["complete"] and report["records"] == 4
        assert {d: store.chunk_rows(d) for d in stream.expected} == before

        # blue/green reindex (new chunking) through the alias
        old = store.collection_name
        assert cli(monkeypatch, s, "reindex", "start", "--chunk-tokens", "64", "--chunk-overlap", "8", "--quiet") == 0
        capsys.readouterr()
        assert cli(monkeypatch, s, "reindex", "status", "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        new = shown["new"]["collection"]
        assert shown["phase"] == "ready" and shown["alias_target"] == old and new != old
        assert shown["new"]["documents"] == shown["old"]["documents"] == 2
        assert cli(monkeypatch, s, "reindex", "swap") == 0
        assert "check queries: ok" in capsys.readouterr().out
        assert store.alias_target() == new
        out = subprocess.run([sys.executable, "-m", "app", "search", "routing tables", "--json", "--chunks"],
                             cwd=REPO, env=settings_env(s), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["doc_id"] == "doc-2"
        assert cli(monkeypatch, s, "reindex", "rollback") == 0
        capsys.readouterr()
        assert store.alias_target() == old
        assert cli(monkeypatch, s, "reindex", "swap") == 1  # rolled back: start a new one instead
        assert "rolled-back" in capsys.readouterr().err
        assert cli(monkeypatch, s, "reindex", "start", "--chunk-tokens", "64", "--chunk-overlap", "8",
                   "--quiet") == 0
        assert cli(monkeypatch, s, "reindex", "swap") == 0
        assert cli(monkeypatch, s, "reindex", "finish") == 0  # the old worker is stopped
        capsys.readouterr()
        assert cli(monkeypatch, s, "reindex", "status", "--json") == 0
        assert json.loads(capsys.readouterr().out)["phase"] == "finished"
        assert store.alias_target() == new
        with WeaviateStore(url=s.weaviate_url, grpc_port=s.weaviate_grpc_port, api_key=s.weaviate_api_key,
                           fingerprint=encoder.fingerprint, dim=encoder.dim,
                           collection_prefix=new.rsplit("_", 1)[0], use_alias=False) as rechunked:
            assert rechunked.collection_name == new
            assert len(rechunked.chunk_rows("doc-2")) > len(store.chunk_rows("doc-2"))  # 64-token chunks
        store.close()
    finally:
        real_weaviate.drop_prefix(prefix)


def test_weaviate_hang_and_crash_commit_nothing_past_the_failure_and_lose_nothing(settings, worker_factory, producer,
                                                                                  encoder, tmp_path):
    """SIGSTOP the Weaviate process (every call hangs until the client's timeout), then SIGCONT;
    then SIGKILL it and restart it on the same data path. Its own server: the session's stays up."""
    server = WeaviateServer(tmp_path / "weaviate").start()
    try:
        rw = RealWeaviate.of(server)
        prefix = unique_prefix("EsOutage")
        s = on_weaviate(settings, rw, prefix)
        # a hung server answers nothing: the client gives up after its timeout, the adapter retries
        worker = worker_factory(s, EMBEDSTREAM_WEAVIATE_TIMEOUT_S="4")
        stream = Stream(producer, s)
        for i in range(10):
            stream.upsert(f"pre-{i}", 1, words(i))
        ends = stream.flush()
        store = open_store(rw, prefix, encoder)
        wait_for(lambda: committed(s, ends) == ends, 90, what="offsets committed before the outage")
        assert_store_matches(store, stream, encoder)

        def outage(start, end, during_s: float, what: str, n0: int):
            retries = worker.log().count("retrying")
            start()
            for i in range(n0, n0 + 8):
                stream.upsert(f"{what}-{i}", 1, words(i))
            stream.upsert("pre-2", stream.expected["pre-2"][0] + 1, words(100 + n0, 40))  # grows
            stream.upsert("pre-3", stream.expected["pre-3"][0] + 1, words(3))  # newer, same text
            stream.delete(f"pre-{4 + n0 // 10}", stream.expected[f"pre-{4 + n0 // 10}"][0] + 1)
            during = stream.flush()
            before = committed(s, during)  # partitions new in this outage included (no offset yet)
            t0 = time.monotonic()
            wait_for(lambda: worker.log().count("retrying") > retries, 90, what=f"the worker to retry ({what})")
            while time.monotonic() - t0 < during_s:
                assert worker.alive(), worker.log()[-3000:]
                assert committed(s, during) == before, f"offsets advanced while Weaviate was {what}"
                time.sleep(1)
            t_back = time.monotonic()
            end()
            wait_for(lambda: committed(s, during) == during, 180, what=f"the worker to catch up after the {what}")
            assert worker.alive(), worker.log()[-3000:]
            print(f"Weaviate {what}: {worker.log().count('retrying') - retries} retries logged; caught up "
                  f"{time.monotonic() - t_back:.1f}s after it was back")
            return during

        ends = outage(server.pause, server.resume, 12, "hung", 10)
        assert_store_matches(store, stream, encoder)
        store.close()
        ends = outage(server.kill, server.start, 8, "crashed", 20)
        store = open_store(rw, prefix, encoder, wait=30)
        assert_store_matches(store, stream, encoder)
        assert committed_total(s) == sum(ends.values())
        store.close()
        assert worker.stop(signal.SIGTERM) == 0, worker.log()[-3000:]
        assert rw.api_key not in worker.log()
    finally:
        server.stop()


def test_events_in_a_record_batch_go_to_weaviate_with_the_right_api_key_only(settings, worker_factory, producer,
                                                                            real_weaviate, encoder):
    """A wrong API key: the worker refuses to start (exit non-zero, one clear line), the key never shown."""
    s = on_weaviate(settings, real_weaviate, unique_prefix("EsKey"))
    s = s.replace(weaviate_api_key="wrong-key-" + "x" * 16)
    codec = EventCodec()
    producer.produce(s.changes_topic, key=b"k", value=codec.encode(ChangeEvent("k", Op.UPSERT, 1, 1, "text", {})))
    producer.flush(10)
    worker = worker_factory(s)
    wait_for(lambda: not worker.alive(), 120, what="the worker to exit on refused credentials")
    assert worker.proc.returncode != 0
    log = worker.log()
    assert "credentials" in log or "401" in log, log[-2000:]
    assert s.weaviate_api_key not in log

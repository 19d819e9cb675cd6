"""Drift state files seen from outside the worker (app/drift/states.py), and `embedstream drift`."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from app.alerts import DriftStage
from app.drift import AlertKind, DriftMonitor
from app.drift.reference import MonitorKey
from app.drift.states import list_states, pending_relearn, relearn_path, request_relearn

from .synth import feed, switch_stream

REPO = Path(__file__).resolve().parents[2]
KEY = MonitorKey("model:int8:abc", "embedstream__0123456789ab")


def test_a_relearn_request_closes_the_episode_and_starts_a_new_warm_up(tmp_path):
    v, n = switch_stream(seed=11, n_before=6000, n_after=3000)
    mon = DriftMonitor(KEY, tmp_path)
    alerts = feed(mon, v[:6500], n[:6500])
    assert alerts and mon.episode is not None
    assert mon.relearn_if_requested() == [] and not mon.warming_up  # no request: nothing happens
    request_relearn(tmp_path, KEY, "catalogue v2")
    [cleared] = mon.relearn_if_requested()
    assert cleared.kind is AlertKind.CLEARED and cleared.episode_id == alerts[0].episode_id
    assert "on request" in cleared.message and "catalogue v2" in cleared.message, cleared.message
    assert mon.warming_up and mon.n_seen == 6500 and mon.status()["warmup_progress"] == 0
    assert mon.relearn_if_requested() == [] and mon.warming_up  # taken once
    # the request stays (several workers may share the data directory) but is satisfied: this
    # monitor's warm-up started after it, also after a restart
    assert relearn_path(tmp_path, KEY).exists()
    mon.close()
    mon = DriftMonitor(KEY, tmp_path)
    assert mon.relearn_if_requested() == [] and not list_states(tmp_path)[0].relearn_requested
    assert feed(mon, v[6500:], n[6500:]) == [] and not mon.warming_up  # the new regime is the reference


def test_the_worker_stage_takes_a_request_on_a_quiet_stream_and_at_start_up(tmp_path):
    v, n = switch_stream(seed=12, n_before=2100, n_after=0)
    stage = DriftStage(KEY.fingerprint, KEY.collection, tmp_path)
    stage.monitor.observe(v, norms=n)
    assert not stage.monitor.warming_up
    request_relearn(tmp_path, KEY)
    assert stage.flush() == [] and stage.monitor.warming_up  # no episode open: no alert, a new warm-up
    stage.monitor.observe(v, norms=n)
    assert not stage.monitor.warming_up
    stage.close()
    # requested while the worker is stopped: taken when it starts
    time.sleep(0.01)
    request_relearn(tmp_path, KEY, "backfill done")
    again = DriftStage(KEY.fingerprint, KEY.collection, tmp_path)
    assert again.monitor.warming_up and again.monitor.n_seen == 4200
    assert pending_relearn(tmp_path, KEY)["reason"] == "backfill done"


def test_workers_sharing_a_data_directory_each_take_a_request_once(tmp_path):
    v, n = switch_stream(seed=14, n_before=2100, n_after=0)
    a, b = DriftMonitor(KEY, tmp_path), DriftMonitor(KEY, tmp_path)
    a.observe(v, norms=n)
    b.observe(v, norms=n)
    request_relearn(tmp_path, KEY)
    assert a.relearn_if_requested() == [] and a.warming_up
    assert b.relearn_if_requested() == [] and b.warming_up  # not consumed by the first
    a.observe(v, norms=n)
    assert not a.warming_up and a.relearn_if_requested() == [] and not a.warming_up
    time.sleep(0.01)
    request_relearn(tmp_path, KEY, "again")  # a newer request is taken again
    assert a.relearn_if_requested() == [] and a.warming_up


def _cli(*args, data_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    env["EMBEDSTREAM_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "app", "drift", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_drift_status_and_relearn_commands(tmp_path):
    state_dir = tmp_path / "drift"
    r = _cli("status", data_dir=tmp_path)
    assert r.returncode == 0 and "no drift state" in r.stderr
    r = _cli("relearn", "--collection", "embedstream", data_dir=tmp_path)
    assert r.returncode == 2 and "no drift state" in r.stderr, r.stderr
    v, n = switch_stream(seed=13, n_before=2500, n_after=0)
    watched = DriftMonitor(KEY, state_dir)
    watched.observe(v, norms=n)
    watched.close()
    other = DriftMonitor(("model:int8:abc", "scratch__ba9876543210"), state_dir)
    other.observe(v[:700], norms=n[:700])
    other.close()

    [a, b] = list_states(state_dir)
    assert (a.collection, a.warming_up, a.events, a.warmup_progress, a.warmup) == (KEY.collection, False, 2500, 2000, 2000)
    assert a.serially_dependent is False and a.thresholds["page_hinkley"] == 6.75 and not a.episode_open
    assert (a.shift_refit, a.shift_refit_at, b.shift_refit) == ("pending", 4000, None)
    assert (b.collection, b.warming_up, b.warmup_progress) == ("scratch__ba9876543210", True, 700)
    r = _cli("status", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{KEY.collection}  [{KEY.fingerprint}]" in r.stdout and "watching, no open episode" in r.stdout
    assert "warming up 700/2000" in r.stdout and "shift scan fitted again at event 4000" in r.stdout
    rows = [json.loads(line) for line in _cli("status", "--json", data_dir=tmp_path).stdout.splitlines()]
    assert [(x["collection"], x["events"]) for x in rows] == [(KEY.collection, 2500), ("scratch__ba9876543210", 700)]

    r = _cli("relearn", "--collection", "nope", data_dir=tmp_path)
    assert r.returncode == 2 and "known: embedstream__0123456789ab [model:int8:abc]" in r.stderr, r.stderr
    # the collection prefix names it too
    r = _cli("relearn", "--collection", "embedstream", "--reason", "new catalogue", data_dir=tmp_path)
    assert r.returncode == 0 and "requested a new reference for embedstream__0123456789ab" in r.stdout, r.stdout
    assert pending_relearn(state_dir, KEY)["reason"] == "new catalogue"
    assert pending_relearn(state_dir, MonitorKey("model:int8:abc", "scratch__ba9876543210")) is None
    assert "NEW REFERENCE REQUESTED" in _cli("status", data_dir=tmp_path).stdout
    assert _cli("relearn", "--collection", "x", "--all", data_dir=tmp_path).returncode == 2  # one or the other
    r = _cli("relearn", "--all", data_dir=tmp_path)
    assert r.returncode == 0 and r.stdout.count("requested a new reference") == 2
    # the monitor takes it; then it is no longer pending
    mon = DriftMonitor(KEY, state_dir)
    assert mon.relearn_if_requested() == [] and mon.warming_up and mon.n_seen == 2500
    mon.close()
    st = list_states(state_dir)[0]
    assert st.events == 2500 and st.warming_up and not st.relearn_requested
    assert "NEW REFERENCE REQUESTED" not in _cli("status", data_dir=tmp_path).stdout.split("scratch")[0]

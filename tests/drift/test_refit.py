"""The `shift` scan's second fit on more events (DriftConfig.shift_refit, DRIFT.md section 2)."""
from dataclasses import replace

import numpy as np

from app.drift import DriftConfig, DriftMonitor
from app.drift.reference import read_state

from .synth import centres, feed, sample

KEY = ("model:int8:abc", "docs")


def _stream(seed: int, n_before: int = 5000, n_after: int = 1500):
    """Drift-free topics 0-5, then every vector moved by one small offset (an encoder swap)."""
    c = centres(seed)
    rng = np.random.default_rng(seed + 1)
    v0, n0 = sample(rng, c, range(6), n_before)
    bias = np.random.default_rng(seed + 2).normal(size=c.shape[1]) * 0.2
    v1, n1 = sample(rng, c, range(6), n_after, bias=bias)
    return np.vstack([v0, v1]), np.concatenate([n0, n1])


def _monitor(path, **cfg):
    return DriftMonitor(KEY, path, config=replace(DriftConfig(), **cfg), clock=lambda: 0.0)


def _tail(mon):
    b = mon.reference.basis
    return b.tail, b.tail_mean, b.axes


def test_the_scan_is_fitted_again_at_the_set_event_whatever_the_batching(tmp_path):
    v, n = _stream(41)
    mon = _monitor(tmp_path / "a")
    feed(mon, v[:3999], n[:3999], batch=250)
    assert mon.status()["shift_refit"] == {"state": "pending", "at": 4000}
    warm_tail, _, warm_axes = _tail(mon)
    feed(mon, v[3999:4000], n[3999:4000])  # flushed: the 4000th event
    assert mon.status()["shift_refit"] == {"state": "done", "at": None}
    tail, tail_mean, axes = _tail(mon)
    # only the scan's projection is new; every other signal keeps the warm-up's fit
    assert tail.shape == warm_tail.shape and not np.allclose(tail, warm_tail) and tail_mean is not None
    assert np.array_equal(axes, warm_axes)
    rest = feed(mon, v[4000:], n[4000:], batch=250)

    # the same stream in other batch sizes: the same fit, the same alerts
    for batch in (7, 1000):
        other = _monitor(tmp_path / f"b{batch}")
        alerts = feed(other, v, n, batch=batch)
        assert other.status()["shift_refit"]["state"] == "done"
        assert all(np.array_equal(x, y) for x, y in zip(_tail(other), (tail, tail_mean, axes)))
        assert alerts == rest
    # the offset at 5000 is seen by the scan
    assert rest and rest[0].signals == ["shift"] and 5000 <= rest[0].event_index < 5200


def test_a_restart_before_the_second_fit_keeps_its_vectors(tmp_path):
    v, n = _stream(43, n_after=0)
    straight = _monitor(tmp_path / "straight")
    feed(straight, v[:4500], n[:4500])
    first = _monitor(tmp_path / "restarted")
    feed(first, v[:3000], n[:3000])
    first.close()
    arrays, meta = read_state(first.path)
    assert meta["refit_at"] == 4000 and len(arrays["refit_vectors"]) == 3000
    second = _monitor(tmp_path / "restarted")
    assert second.status()["shift_refit"] == {"state": "pending", "at": 4000}
    feed(second, v[3000:4500], n[3000:4500])
    assert second.status()["shift_refit"]["state"] == "done"
    assert all(np.array_equal(x, y) for x, y in zip(_tail(second), _tail(straight)))
    second.close()  # saved with its second fit; a third monitor loads that one
    third = _monitor(tmp_path / "restarted")
    assert third.status()["shift_refit"] == {"state": "done", "at": None}
    assert all(np.array_equal(x, y) for x, y in zip(_tail(third), _tail(straight)))


def test_no_second_fit_during_an_episode_nor_after_a_long_warm_up(tmp_path):
    # a topic switch at 3500 opens an episode that is still open at 4000: the scan keeps its fit
    c = centres(47)
    rng = np.random.default_rng(48)
    parts = [sample(rng, c, range(4), 3500), sample(rng, c, (4, 5), 1000)]
    v, n = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    mon = _monitor(tmp_path / "episode")
    alerts = feed(mon, v, n)
    assert alerts and 3500 <= alerts[0].event_index < 3600
    assert mon.status()["shift_refit"] == {"state": "skipped", "at": None}
    assert mon.reference.basis.tail_mean is None
    # a warm-up as long as shift_refit, or shift_refit=0: nothing to do
    for path, cfg in (("long", {"warmup": 4000}), ("off", {"shift_refit": 0})):
        m = _monitor(tmp_path / path, **cfg)
        feed(m, v[:3400], n[:3400])
        feed(m, v[:1000], n[:1000])
        assert m.status()["shift_refit"] is None

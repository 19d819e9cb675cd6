from dataclasses import replace

import numpy as np
import pytest

from app.drift import DriftConfig
from app.drift.calibration import calibrate, drift_free_streams, injected_shift_delays, poisson_upper
from app.drift.detectors import DetectorSpec

from .synth import centres, sample


def test_poisson_upper_bound():
    assert poisson_upper(0) == pytest.approx(2.9957, abs=1e-3)  # -ln(0.05)
    assert poisson_upper(10) == pytest.approx(16.96, abs=0.02)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    return sample(rng, centres(0), range(6), 3000)


def test_calibrate_picks_least_strict_value_meeting_the_allowance(pool):
    v, n = pool
    cfg = replace(DriftConfig(), warmup=1000)
    base = {"min_instances": 30, "alpha": 1.0, "delta": 0.25}
    res = calibrate(v, n, base_params=base, grid=[1.0, 1.5, 2.0, 3.0, 4.0, 6.0], n_streams=2,
                    events_per_stream=20_000, config=cfg, target_per_100k=50.0, safety=1.0,
                    delay_signal=None, log=lambda *a: None)
    rows = {r["threshold"]: r["per_100k"] for r in res.grid}
    assert res.value in rows and res.params == {**base, "threshold": res.value}
    assert all(rate <= 50.0 for thr, rate in rows.items() if thr >= res.value)
    less_strict = [thr for thr in rows if thr < res.value]
    assert less_strict and rows[max(less_strict)] > 50.0  # the next value down was tried and fails
    assert res.verify["events"] == 40_000 and res.verify["per_100k_upper95"] >= res.verify["per_100k"]


def test_injected_shift_delays_shrink_with_the_shift(pool):
    v, n = pool
    cfg = replace(DriftConfig(), warmup=1000)
    streams = drift_free_streams(v, n, n_streams=1, events_per_stream=40_000, config=cfg, seed=3)
    spec = DetectorSpec("page_hinkley", {"min_instances": 30, "alpha": 1.0, "delta": 0.25, "threshold": 8.0})
    d = injected_shift_delays(streams, spec, 4, signal="centroid", shifts=(0.5, 1.0, 3.0), max_runs=4)
    assert d[0.5]["median_delay"] > d[1.0]["median_delay"] > d[3.0]["median_delay"]
    assert all(x["missed"] == 0 for x in d.values())

import numpy as np
import pytest

from app.drift import DriftConfig
from app.drift.calibration import null_rates, ph_table, poisson_upper

from .synth import centres, sample


def test_poisson_upper_bound():
    assert poisson_upper(0) == pytest.approx(2.9957, abs=1e-3)  # -ln(0.05)
    assert poisson_upper(10) == pytest.approx(16.96, abs=0.02)


def test_ph_table_picks_the_least_strict_threshold_meeting_the_target():
    # a small simulation (uniforms only): alarm counts fall as the threshold rises, and the chosen
    # value is the first one at or under the target
    res = ph_table([250], [3.0, 4.0, 5.0, 6.0], streams=20, events=20_000, target=2e-5, log=lambda *a: None)
    row = res["rows"][0]
    alarms = [g["alarms"] for g in row["grid"]]
    assert alarms == sorted(alarms, reverse=True) and alarms[0] > alarms[-1]
    ok = [g["threshold"] for g in row["grid"] if g["per_event"] <= 2e-5]
    assert row["chosen"] == min(ok)
    assert all(g["upper95"] >= g["per_event"] for g in row["grid"])


def test_null_rates_counts_real_monitors_on_a_pool():
    rng = np.random.default_rng(0)
    v, n = sample(rng, centres(0), range(6), 3000)
    r = null_rates(v, n, config=DriftConfig(warmup=1000), streams=2, events=20_000, seed=1)
    assert r["live_events"] == 40_000 and r["streams"] == 2
    assert r["raw_alarms"] == sum(r["alarms_by_signal"].values())
    assert r["raw_upper95_per_100k"] > r["raw_per_100k"]
    assert all(set(t) == {"page_hinkley", "shift"} for t in r["thresholds"])

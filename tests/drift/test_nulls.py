import numpy as np
import pytest
from river import drift

from app.drift.nulls import RankScores, _ph_stat, own_scores, ph_threshold, scan_threshold, simulate_ph_null


def test_rank_scores_do_not_depend_on_the_signal_distribution():
    # distribution-free: a monotone transform of the data (reference and live alike) gives the very
    # same scores, so the detectors' null behaviour is the same for every collection and signal
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 3))
    live = rng.normal(size=(2000, 3))
    a = RankScores(ref, [0, 1, 2]).scores(live, start=7)
    warped = lambda x: np.exp(3 * x) + x**3  # noqa: E731  strictly increasing
    b = RankScores(warped(ref), [0, 1, 2]).scores(warped(live), start=7)
    np.testing.assert_array_equal(a, b)
    # a replay draws the same tie-breaking uniforms
    np.testing.assert_array_equal(RankScores(ref, [0, 1, 2]).scores(live[5:9], start=12), a[5:9])


def test_rank_scores_are_uniform_with_ties_and_keep_nan():
    # a narrow collection: 5 distinct values, many ties. Over reference samples (each warm-up draws
    # its own), the randomised conformal p-values are uniform; NaN stays NaN
    from scipy.special import ndtr

    rng = np.random.default_rng(1)
    ps = []
    for k in range(200):
        ref = rng.integers(0, 5, size=(400, 1)).astype(float)
        live = rng.integers(0, 5, size=(1000, 1)).astype(float)
        live[::100] = np.nan
        s = RankScores(ref, [0]).scores(live, start=k * 1000)[:, 0]
        assert np.isnan(s[::100]).all()
        ps.append(ndtr(s[~np.isnan(s)]))
    p = np.sort(np.concatenate(ps))
    ks = np.max(np.abs(p - np.arange(1, len(p) + 1) / len(p)))
    assert ks < 0.01, ks


def test_own_scores_have_the_law_of_live_scores():
    rng = np.random.default_rng(2)
    x = rng.normal(size=200_000)
    s = own_scores(x, rng.random(len(x)))
    assert abs(s.mean()) < 0.01 and abs(s.std() - 1) < 0.01


def test_vectorised_pagehinkley_statistic_matches_river():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.5, size=20_000)
    x[15_000:] += 0.6
    det = drift.PageHinkley(min_instances=30, delta=0.25, threshold=6.75, alpha=1.0)
    first = next(i for i, v in enumerate(x) if (det.update(v), det.drift_detected)[1])
    stat = _ph_stat(x, 0.25, 30, 0)
    assert first == int(np.argmax(stat > 6.75)) == 15_018


def test_ph_null_simulation_and_table():
    r = simulate_ph_null(250, [5.0, 6.0], streams=10, events=50_000, seed=1)
    assert r["alarms"][0] >= r["alarms"][1] and r["events"] > 0
    assert ph_threshold(125) == 7.0 and ph_threshold(500) == ph_threshold(100_000) == 6.75
    assert ph_threshold(180) == pytest.approx(7.0 - 0.25 * np.log(180 / 125) / np.log(2))


def test_scan_threshold_is_a_chi_square_tail():
    from scipy.stats import chi2

    for nu in (20, 200):
        exact = (chi2.isf(1e-6, nu) - nu) / np.sqrt(2 * nu)
        assert scan_threshold(nu, 1e-6) == pytest.approx(exact, rel=0.03)
    assert scan_threshold(50, 1e-7) > scan_threshold(50, 1e-6) > scan_threshold(500, 1e-6)

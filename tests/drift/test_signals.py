from dataclasses import replace

import numpy as np
import pytest

from app.drift.reference import learn_reference
from app.drift.signals import fit_basis, spherical_kmeans

from .synth import centres, sample


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return sample(rng, centres(seed), range(6), n)


def test_names_and_shape():
    v, n = _data()
    basis = fit_basis(v, n, n_axes=3, n_whiten=8, n_clusters=4, windows=(16, 24))
    assert basis.names == ("centroid", "axis1", "axis2", "axis3", "mahal", "nearest", "shift", "lognorm")
    out = basis.transform(v[:40], n[:40])
    assert out.shape == (40, 8)
    # without a carried state, `shift` needs a full shortest window (16 rows) of the same batch
    assert np.isnan(out[:15, 6]).all() and np.isfinite(np.delete(out, 6, axis=1)).all()
    assert np.isfinite(out[15:]).all()
    assert fit_basis(v, n, windows=()).names == ("centroid", "axis1", "axis2", "mahal", "nearest", "lognorm")


def test_signal_definitions():
    v, n = _data()
    basis = fit_basis(v, n, n_axes=2, n_whiten=8, n_clusters=4, windows=())
    out = basis.transform(v[:50], n[:50])
    c = v.astype(np.float64).mean(0)
    c /= np.linalg.norm(c)
    np.testing.assert_allclose(out[:, 0], 1 - v[:50] @ c, atol=1e-5)
    np.testing.assert_allclose(out[:, 4], 1 - (v[:50] @ basis.clusters.T).max(1), atol=1e-5)
    np.testing.assert_allclose(out[:, -1], np.log(n[:50]), rtol=1e-6)
    # whitened axes: unit variance and uncorrelated on the fitting data
    z = basis.transform(v, n)[:, 1:3]
    np.testing.assert_allclose(z.std(0, ddof=1), 1, rtol=1e-3)
    assert abs(np.corrcoef(z.T)[0, 1]) < 1e-3
    # mahal = mean squared whitened coordinate over the 8 axes: mean 1 on the fitting data
    assert basis.transform(v)[:, 3].mean() == pytest.approx(1.0, rel=1e-3)


def test_missing_norms_give_nan_and_no_norm_basis():
    v, n = _data()
    with_norm = fit_basis(v, n)
    assert np.isnan(with_norm.transform(v[:5])[:, -1]).all()
    without = fit_basis(v)
    assert "lognorm" not in without.names
    assert without.transform(v[:5], n[:5]).shape == (5, len(without.names))


def _scan_by_definition(units, keys, m, n_hist, trace, tau2, collision, windows, t):
    """max over W of the normalised U-statistic of the last W rows, pair by pair (DRIFT.md section 2)."""
    best = -np.inf
    for w in windows:
        if t + 1 < w:
            continue
        u = units[t - w + 1 : t + 1] - m
        k = keys[t - w + 1 : t + 1]
        g = u @ u.T
        distinct = k[:, None] != k[None, :]
        total = (g[distinct].sum()) / 2
        pairs = w * (w - 1) / 2
        mean0 = pairs * (trace / n_hist - collision)
        var = pairs * tau2 * (1 + 2 * (w - 1) / n_hist + 2 * pairs / n_hist**2)
        best = max(best, (total - mean0) / np.sqrt(var))
    return best


def test_shift_scan_is_batch_invariant_and_matches_definition():
    v, n = _data(3000)
    v[1500:1510] = v[1400:1410]  # duplicates inside the windows: left out of the statistic
    ref, _ = learn_reference(v[:1000], n[:1000], n_whiten=8, windows=(16, 32))
    basis = ref.basis
    col = basis.names.index("shift")
    whole_scan = basis.new_window()
    whole = basis.transform(v[1000:], n[1000:], whole_scan)[:, col]
    win = basis.new_window()
    cuts = [(1000, 1001), (1001, 1040), (1040, 1300), (1300, 1301), (1301, 3000)]
    parts = [basis.transform(v[s:e], n[s:e], win)[:, col] for s, e in cuts]
    # (float32 products differ in the last bits with the batch shape; nothing else may differ)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)
    assert np.isnan(whole[:15]).all() and np.isfinite(whole[15:]).all()
    # definition, on the unit (spatial-sign) whitened tail rows, before the first refresh of the
    # running mean and moments (rows 0 .. wmax + block - 1): the held-out rows' mean and moments
    tail = v[1000:].astype(np.float64) @ basis.tail.astype(np.float64) - basis.mean.astype(np.float64) @ basis.tail
    units = tail / np.linalg.norm(tail, axis=1, keepdims=True)
    got_units, keys = basis.tail_units(v[1000:])
    np.testing.assert_allclose(got_units, units, rtol=1e-4, atol=1e-6)
    assert len(set(keys[500:510].tolist()) & set(keys[400:410].tolist())) == 10  # duplicates share keys
    assert len(set(keys.tolist())) == 3000 - 1000 - 10
    null = basis.scan_null
    scan = basis.new_window()
    for t in (15, 20, 31, 200, 287):
        expect = _scan_by_definition(got_units, keys, null.mean, null.hist_n, null.trace, null.tau2, null.collision,
                                     (16, 32), t)
        assert whole[t] - scan.threshold + scan.thr == pytest.approx(expect, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("w", [32, 162])
def test_shift_is_standardised_on_drift_free_streams(w):
    # each window's statistic has mean 0 and sd 1 without drift, whatever the collection: averaged
    # over 6 seeded collections (one stream's mean moves with its warm-up's estimates: sd ~0.1 at
    # W=32, ~0.35 at W=162 over the first 1000 events, measured: the mean of 6 has sd ~0.15)
    means, sds = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        v, n = sample(rng, centres(seed), range(6), 5000)
        ref, _ = learn_reference(v[:2000], n[:2000], fit_fraction=0.75)
        one = replace(ref.basis, windows=(w,))
        scan = one.new_window()
        z = one.transform(v[2000:], n[2000:], scan)[:, one.names.index("shift")] - scan.threshold + scan.thr
        means.append(np.nanmean(z))
        sds.append(np.nanstd(z))
    assert abs(np.mean(means)) < 0.3 and 0.9 < np.mean(sds) < 1.1, (means, sds)


def test_scan_null_isotropic_and_too_small():
    from app.drift.scan import ScanNull

    rng = np.random.default_rng(2)
    u = rng.normal(size=(4000, 50))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    null = ScanNull.from_sample(u, np.arange(4000, dtype=np.uint64))
    assert null.trace == pytest.approx(1.0, rel=0.01) and null.tau2 == pytest.approx(1 / 50, rel=0.1)
    assert null.collision == 0.0
    with pytest.raises(ValueError):
        ScanNull.from_sample(u[:5], np.arange(5, dtype=np.uint64))


def test_shift_reacts_to_a_small_mean_shift():
    rng = np.random.default_rng(5)
    c = centres(5)
    v, n = sample(rng, c, range(6), 4000)
    ref, _ = learn_reference(v[:1000], n[:1000], n_whiten=8, windows=(16, 32))
    basis = ref.basis
    col = basis.names.index("shift")
    bias = rng.normal(size=v.shape[1]) * 0.25  # small next to the clusters spread (noise sd 1)
    v2, n2 = sample(rng, c, range(6), 3000, bias=bias)
    win = basis.new_window()
    before = basis.transform(v[1000:], n[1000:], win)[:, col]
    after = basis.transform(v2, n2, win)[:, col]
    assert np.nanmean(after[100:]) > np.nanmean(before) + 3.0
    # (the running mean absorbs the shifted rows as they leave the windows: the statistic decays later)
    assert np.nanmax(before) < win.threshold < np.nanmedian(after[40:300])


def test_projection_has_the_same_bits_in_any_batch():
    # live (1-3 events per batch) and replay (1000) must give identical alerts: a row's products
    # may not depend on the batch it came in (a plain BLAS product does, in the last bits)
    from app.drift.signals import project

    v, _ = _data(300)
    proj = np.random.default_rng(1).normal(size=(v.shape[1], 457)).astype(np.float32)
    whole = project(v, proj)
    for s, e in [(0, 1), (3, 40), (7, 8), (100, 300), (299, 300)]:
        np.testing.assert_array_equal(project(v[s:e], proj), whole[s:e])


def test_dimension_and_shape_errors():
    v, n = _data()
    basis = fit_basis(v, n)
    with pytest.raises(ValueError, match="dimension"):
        basis.transform(np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        basis.transform(v[0])
    with pytest.raises(ValueError, match="norms"):
        basis.transform(v[:3], n[:2])


def test_arrays_round_trip():
    v, n = _data()
    basis = fit_basis(v, n)
    from app.drift.signals import SignalBasis

    again = SignalBasis.from_arrays(basis.to_arrays())
    np.testing.assert_array_equal(again.transform(v[:20], n[:20]), basis.transform(v[:20], n[:20]))


def test_kmeans_deterministic_and_unit():
    v, _ = _data()
    a = spherical_kmeans(v, 6, seed=3)
    b = spherical_kmeans(v, 6, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-5)

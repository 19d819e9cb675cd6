from dataclasses import replace

import numpy as np
import pytest

from app.drift.reference import learn_reference
from app.drift.signals import fit_basis, shift_null_moments, spherical_kmeans

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


def _scan_by_definition(units, c, tau2, windows, t):
    """max over W of sum_{t-W < i < j <= t} (u_i . u_j - c) / sqrt(W (W - 1) / 2 * tau2), pair by pair."""
    best = -np.inf
    for w in windows:
        if t + 1 < w:
            continue
        u = units[t - w + 1 : t + 1]
        g = u @ u.T
        pairs = w * (w - 1) / 2
        total = (g.sum() - np.trace(g)) / 2 - pairs * c
        best = max(best, total / np.sqrt(pairs * tau2))
    return best


def test_shift_scan_is_batch_invariant_and_matches_definition():
    v, n = _data(3000)
    ref, _ = learn_reference(v[:1000], n[:1000], n_whiten=8, windows=(16, 32))
    basis = ref.basis
    col = basis.names.index("shift")
    whole = basis.transform(v[1000:], n[1000:], basis.new_window())[:, col]
    win = basis.new_window()
    parts = [basis.transform(v[s:e], n[s:e], win)[:, col] for s, e in [(1000, 1001), (1001, 1040), (1040, 3000)]]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-5)
    assert np.isnan(whole[:15]).all() and np.isfinite(whole[15:]).all()
    # definition, on the unit (spatial-sign) whitened tail rows
    tail = v[1000:].astype(np.float64) @ basis.tail.astype(np.float64) - basis.mean.astype(np.float64) @ basis.tail
    units = tail / np.linalg.norm(tail, axis=1, keepdims=True)
    np.testing.assert_allclose(basis.tail_units(v[1000:]), units, rtol=1e-4, atol=1e-6)
    for t in (15, 20, 31, 500, 1999):
        assert whole[t] == pytest.approx(_scan_by_definition(units, basis.shift_c, basis.shift_tau2, (16, 32), t),
                                         rel=1e-3, abs=1e-3)
    # one window: ~N(0, 1) on fresh drift-free rows (normalised with the held-out moments)
    one = replace(basis, windows=(32,))
    t32 = one.transform(v[1000:], n[1000:], one.new_window())[:, col]
    assert abs(np.nanmean(t32)) < 0.2 and 0.8 < np.nanstd(t32) < 1.25


def test_shift_null_moments_isotropic():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(4000, 50))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    c, tau2 = shift_null_moments(u)
    assert abs(c) < 2e-3 and tau2 == pytest.approx(1 / 50, rel=0.1)
    with pytest.raises(ValueError):
        shift_null_moments(u[:3])


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
    assert np.nanmax(before) < 6.0 < np.nanmedian(after[40:])


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

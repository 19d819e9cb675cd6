import numpy as np
import pytest

from app.drift.signals import fit_basis, spherical_kmeans

from .synth import centres, sample


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return sample(rng, centres(seed), range(6), n)


def test_names_and_shape():
    v, n = _data()
    basis = fit_basis(v, n, n_axes=3, n_whiten=8, n_clusters=4, window=16)
    assert basis.names == ("centroid", "axis1", "axis2", "axis3", "mahal", "nearest", "shift", "lognorm")
    out = basis.transform(v[:40], n[:40])
    assert out.shape == (40, 8)
    # without a carried window, `shift` needs 16 earlier rows of the same batch
    assert np.isnan(out[:16, 6]).all() and np.isfinite(np.delete(out, 6, axis=1)).all()
    assert np.isfinite(out[16:]).all()
    assert fit_basis(v, n, window=0).names == ("centroid", "axis1", "axis2", "mahal", "nearest", "lognorm")


def test_signal_definitions():
    v, n = _data()
    basis = fit_basis(v, n, n_axes=2, n_whiten=8, n_clusters=4, window=0)
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


def test_shift_window_is_batch_invariant_and_matches_definition():
    v, n = _data(3000)
    basis = fit_basis(v[:1000], n[:1000], n_whiten=8, window=32)
    col = basis.names.index("shift")
    whole = basis.transform(v[1000:], n[1000:], basis.new_window())[:, col]
    win = basis.new_window()
    parts = [basis.transform(v[s:e], n[s:e], win)[:, col] for s, e in [(1000, 1001), (1001, 1040), (1040, 3000)]]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-6)
    assert np.isnan(whole[:32]).all() and np.isfinite(whole[32:]).all()
    # definition: projection of row t on the direction of the mean of rows t-32 .. t-1 (whitened tail)
    tail = v[1000:].astype(np.float64) @ basis.tail.astype(np.float64) - basis.mean.astype(np.float64) @ basis.tail
    t = 500
    m = tail[t - 32 : t].mean(0)
    assert whole[t] == pytest.approx(tail[t] @ m / np.linalg.norm(m), rel=1e-4)


def test_shift_reacts_to_a_small_mean_shift():
    rng = np.random.default_rng(5)
    c = centres(5)
    v, n = sample(rng, c, range(6), 4000)
    basis = fit_basis(v[:1000], n[:1000], n_whiten=8, window=32)
    col = basis.names.index("shift")
    bias = rng.normal(size=v.shape[1]) * 0.25  # small next to the clusters spread (noise sd 1)
    v2, n2 = sample(rng, c, range(6), 3000, bias=bias)
    win = basis.new_window()
    before = basis.transform(v[1000:], n[1000:], win)[:, col]
    after = basis.transform(v2, n2, win)[:, col]
    assert np.nanmean(after[100:]) > np.nanmean(before) + 1.0


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

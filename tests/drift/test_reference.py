import numpy as np
import pytest

from app.drift.reference import MonitorKey, Reference, learn_reference, read_state, state_path, write_state

from .synth import centres, sample


def test_holdout_is_standardised_and_split():
    rng = np.random.default_rng(0)
    v, n = sample(rng, centres(0), range(6), 1000)
    ref, z = learn_reference(v, n, fit_fraction=0.5, windows=(32,))
    assert (ref.n_fit, ref.n_std) == (500, 500)
    j = ref.names.index("shift")
    # the held-out rows are the scan's null and starting history: no `shift` value of their own
    assert np.isnan(z[:, j]).all()
    # `shift` is normalised analytically (held-out moments of its pairwise products), the others
    # by their held-out mean and sd
    assert (ref.signal_mean[j], ref.signal_std[j]) == (0.0, 1.0)
    others = np.delete(z, j, axis=1)
    np.testing.assert_allclose(np.nanmean(others, 0), 0, atol=1e-9)
    np.testing.assert_allclose(np.nanstd(others, 0, ddof=1), 1, rtol=1e-9)
    # out-of-sample: on fresh vectors the signals stay near mean 0 / sd 1 (`shift`: see test_signals)
    v2, n2 = sample(rng, centres(0), range(6), 4000)
    z2 = np.delete(ref.signals(v2, n2, ref.new_window())[31:], j, axis=1)
    assert np.all(np.abs(z2.mean(0)) < 0.15)
    assert np.all(np.abs(z2.std(0) - 1) < 0.15)


def test_too_small_warmup():
    with pytest.raises(ValueError, match="too small"):
        learn_reference(np.eye(3, dtype=np.float32))


def test_state_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    v, n = sample(rng, centres(0), range(6), 600)
    ref, _ = learn_reference(v, n)
    key = MonitorKey("all-MiniLM-L6-v2:int8:abc", "my docs/2024")
    path = state_path(tmp_path, key)
    assert path.parent == tmp_path and "/" not in path.name and path.suffix == ".npz"
    write_state(path, ref.to_arrays(), {"hello": [1, 2]})
    arrays, meta = read_state(path)
    assert meta["hello"] == [1, 2]
    again = Reference.from_arrays(arrays)
    np.testing.assert_array_equal(again.signals(v[:9], n[:9]), ref.signals(v[:9], n[:9]))
    assert read_state(tmp_path / "missing.npz") is None
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_key_slug_distinguishes_keys():
    a = MonitorKey("fp1", "docs").slug()
    b = MonitorKey("fp2", "docs").slug()
    assert a != b and a.startswith("docs-")
    assert MonitorKey("fp", "c").kafka_key == b"fp/c"

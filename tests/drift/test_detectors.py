import numpy as np
import pytest

from app.drift.detectors import DetectorBank, DetectorSpec

PH = DetectorSpec("page_hinkley", {"min_instances": 30, "alpha": 1.0, "delta": 0.25, "threshold": 5.0})


def _stream(seed=0, n=6000, change=4000, mu=1.0, col=1):
    z = np.random.default_rng(seed).normal(size=(n, 3))
    z[change:, col] += mu
    return z


def test_exact_alarm_index_on_seeded_shift():
    alarms = DetectorBank(["a", "b", "c"], [PH], block=4).update(_stream(), 0)
    assert [(a.index, a.signal, a.detector) for a in alarms] == [(4023, "b", "PageHinkley")]


def test_block_one_and_adwin():
    ph1 = DetectorSpec("page_hinkley", {"min_instances": 30, "alpha": 1.0, "delta": 0.5, "threshold": 12.0})
    bank = DetectorBank(["a", "b", "c"], [ph1, DetectorSpec("adwin", {"delta": 0.002, "clock": 8})], block=1)
    alarms = bank.update(_stream(), 0)
    assert [(a.index, a.signal, a.detector) for a in alarms] == [(4023, "b", "PageHinkley"), (4031, "b", "ADWIN")]


def test_batching_does_not_change_alarms():
    z = _stream(seed=3)
    whole = DetectorBank(["a", "b", "c"], [PH], block=4).update(z, 100)
    bank = DetectorBank(["a", "b", "c"], [PH], block=4)
    pieces = []
    cuts = [0, 1, 7, 250, 251, 3999, 4005, 6000]
    for s, e in zip(cuts, cuts[1:]):
        pieces += bank.update(z[s:e], 100 + s)
    assert pieces == whole and whole


def test_nan_values_are_skipped_per_signal():
    z = _stream()
    z[::2, 0] = np.nan  # signal a: only every other event has a value; it shifts like b
    z[4000:, 0] += 1.0
    alarms = DetectorBank(["a", "b", "c"], [PH], block=4).update(z, 0)
    # a's blocks take twice as many events to fill, so it fires later than b
    assert [(a.index, a.signal) for a in alarms] == [(4023, "b"), (4055, "a")]
    # an all-NaN column never alarms, whatever its "values"
    z2 = _stream(mu=5.0, col=2)
    z2[:, 2] = np.nan
    assert DetectorBank(["a", "b", "c"], [PH], block=4).update(z2, 0) == []


def test_validation():
    with pytest.raises(ValueError, match="unknown detector"):
        DetectorSpec("cusum9000")
    with pytest.raises(ValueError, match="block"):
        DetectorBank(["a"], [PH], block=0)
    with pytest.raises(ValueError, match="expected"):
        DetectorBank(["a"], [PH]).update(np.zeros((4, 2)), 0)
    assert DetectorSpec.from_dict(PH.to_dict()) == PH


def test_threshold_rule_alarms_once_per_upcrossing_and_is_batch_invariant():
    z = _stream(seed=5, mu=0.0)
    x = np.zeros(len(z))
    x[[100, 101, 102, 500, 2000, 2001]] = 7.0  # three excursions above 6
    x[1500] = np.nan  # skipped
    z[:, 2] = x
    bank = DetectorBank(["a", "b", "c"], [PH], block=4, thresholds={"c": 6.0})
    whole = bank.update(z, 10)
    assert [(a.index, a.signal, a.detector) for a in whole] == [
        (110, "c", "Threshold"), (510, "c", "Threshold"), (2010, "c", "Threshold")]
    bank = DetectorBank(["a", "b", "c"], [PH], block=4, thresholds={"c": 6.0})
    pieces = []
    cuts = [0, 101, 102, 501, 2001, 6000]  # a batch boundary inside an excursion: no second alarm
    for s, e in zip(cuts, cuts[1:]):
        pieces += bank.update(z[s:e], 10 + s)
    assert pieces == whole
    # a fresh rule primed on a value above the threshold stays disarmed until the value drops
    bank = DetectorBank(["c"], [PH], thresholds={"c": 6.0})
    bank.update(np.array([[7.0]]), 0)
    assert bank.update(np.array([[7.0], [1.0], [7.0]]), 1) == [(3, "c", "Threshold")]

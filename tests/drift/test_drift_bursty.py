"""The bursty-stream diagnostic (load/drift_bursty.py) on synthetic vectors: it must tell the
i.i.d. control (the scan's null holds) from a bursty stream (it does not)."""
import doctest
import json

from load import drift_bursty


def test_module_examples():
    assert doctest.testmod(drift_bursty).failed == 0


def test_iid_control_matches_the_null_and_bursty_stream_does_not(tmp_path):
    out = tmp_path / "bursty.json"
    assert drift_bursty.main(["--synthetic", "--events", "20000", "--streams", "2", "--pools", "reuters",
                              "--out", str(out)]) == 0
    res = json.loads(out.read_text())["pools"]["reuters"]
    assert res["stretches_per_100k"][str(drift_bursty.STRETCHES[0])] > 0
    for w in res["iid"]["windows"]:  # standardised statistic: mean 0, sd 1, tr(Omega^2) = tr(C^2)
        assert abs(w["T_mean"]) < 0.3 and 0.85 < w["T_sd"] < 1.15 and 0.8 < w["spread_vs_iid"] < 1.25, w
    assert res["iid"]["up_per_100k"]["scan"] == 0
    for w in res["bursty"]["windows"]:
        assert w["T_sd"] > 2 and w["spread_vs_iid"] > 2, w
    assert res["bursty"]["up_per_100k"]["scan"] > 50

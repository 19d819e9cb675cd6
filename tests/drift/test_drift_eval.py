"""Smoke test of the evaluation harness on synthetic vectors (no corpus, no model)."""
import json

from load import drift_eval


def test_harness_quick_synthetic(tmp_path, capsys):
    out = tmp_path / "drift.json"
    rc = drift_eval.main(["--synthetic", "--quick", "--runs", "2", "--free-events", "5000", "--lead", "1000",
                          "--horizon", "1500", "--ramp", "1000", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in doc["results"]}
    assert {"drift-free", "topic:corporate->macro", "encoder:fp32->int8", "tokenizer:trunc16",
            "domain:reuters->fortunes", "boilerplate:100%"} <= set(rows)
    # strong synthetic changes are found in every run
    for name in ("topic:corporate->macro", "tokenizer:trunc16", "domain:reuters->fortunes"):
        assert rows[name]["detected"] == 2 and rows[name]["missed"] == 0, rows[name]
    assert 4900 <= rows["drift-free"]["events"] <= 5000  # live events (the batch ending the warm-up is not timed)
    assert doc["summary"]["us_per_vector"] > 0
    assert "scenario" in capsys.readouterr().out

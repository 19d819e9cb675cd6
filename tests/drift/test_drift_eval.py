"""Smoke test of the evaluation harness on synthetic vectors (no corpus, no model)."""
import json

from load import drift_eval, drift_split


def test_harness_quick_synthetic(tmp_path, capsys):
    out = tmp_path / "drift.json"
    rc = drift_eval.main(["--synthetic", "--quick", "--runs", "2", "--free-events", "5000", "--lead", "1000",
                          "--horizon", "1500", "--ramp", "1000", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in doc["results"]}
    assert {"free:reuters", "free-topic:reuters:earn", "free-pool1000:reuters", "topic:reuters:corporate->macro",
            "encoder:reuters:fp32->int8", "tokenizer:reuters:trunc16", "domain:reuters->fortunes",
            "boilerplate:reuters:100%"} <= set(rows)
    # strong synthetic changes are found in every run
    for name in ("topic:reuters:corporate->macro", "tokenizer:reuters:trunc16", "domain:reuters->fortunes"):
        assert rows[name]["detected"] == 2 and rows[name]["missed"] == 0, rows[name]
    assert 4900 <= rows["free:reuters"]["events"] <= 5000  # live events (the batch ending the warm-up is not timed)
    assert doc["summary"]["us_per_vector"] > 0
    assert "scenario" in capsys.readouterr().out


def test_scenarios_of_the_held_out_part_use_every_pool():
    from load.drift_data import synthetic_pools

    pools = synthetic_pools(n_docs=3000)
    pools["20ng"] = pools["reuters"]
    names = [s.name for s in drift_eval.scenarios(pools, 1000)]
    assert "free-topic:20ng:earn" in names and "encoder:20ng:int8->fp32" in names
    assert len(names) == len(set(names))
    # the parts' stream seeds differ (fixed in load/drift_split.py before tuning)
    assert drift_eval._seed("holdout", 0) == drift_split.HOLDOUT_RUN_SEED != drift_eval._seed("tune", 0)

import json

from sherman.experiments import EXPERIMENTS
from sherman.experiments.asyncthink import CLAIM, run


def test_asyncthink_experiment_smoke(tmp_path):
    assert EXPERIMENTS["asyncthink"] == "sherman.experiments.asyncthink"
    r = run("smoke", tmp_path)
    assert r["name"] == "asyncthink" and r["claim"] == CLAIM
    assert r["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    pre = r["metrics"]["precondition"]
    assert set(pre) == {"countdown", "arith2", "arith3"} and not pre["countdown"]["passed"]  # 3-number Countdown: tags dominate
    assert r["rows"][1]["verdict"] == "not testable here"
    assert len(r["rows"]) == 4 and all(set(row) == {"claim", "paper", "ours", "verdict"} for row in r["rows"])
    assert (tmp_path / r["plots"][0]).stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    ev = saved["metrics"]["eval"]
    assert {"sft/countdown", "rl_lam0.5/heldout_arith4"} <= set(ev)
    for methods in ev.values():
        for m in methods.values():
            assert 0 <= m["acc"] <= 1 and m["latency_p50"] <= m["latency_p90"] and m["eta"] >= 0

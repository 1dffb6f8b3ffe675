"""Smoke run of the RPT reproduction (budget 'smoke') and its pure helpers."""

import json
import math

from sherman.experiments import EXPERIMENTS
from sherman.experiments import rpt as exp


def test_rpt_experiment_smoke(tmp_path):
    out = exp.run("smoke", tmp_path)
    assert out["name"] in EXPERIMENTS and out["claim"] == exp.CLAIM
    assert out["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert len(out["rows"]) == 3 and all(set(r) >= {"claim", "paper", "ours", "verdict", "precondition"} for r in out["rows"])
    assert all(r["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here") for r in out["rows"])
    for p in out["plots"]:
        assert (tmp_path / p).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["verdict"] == out["verdict"]
    for s in out["metrics"]["seeds"]:
        assert s["rpt_cost"]["flops"] > 0 and s["ntp_cost"]["NTP-docs"]["steps"] >= 1
        assert len(s["reward_curve"]) == exp.BUDGETS["smoke"]["rpt_steps"]


def test_power_law_fit_recovers_parameters():
    c = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    y = [-0.3 / x**0.7 + 0.5 for x in c]  # accuracy rising to P* = 0.5
    f = exp.fit_power_law(c, y)
    assert math.isclose(f["A"], -0.3, abs_tol=1e-3) and math.isclose(f["alpha"], 0.7, abs_tol=1e-3)
    assert math.isclose(f["P*"], 0.5, abs_tol=1e-3) and f["r2"] > 0.9999


def test_paired_verdict_rule():
    assert exp.paired_verdict([0.05, 0.06, 0.04], 0.02) == "reproduced"
    assert exp.paired_verdict([0.10, -0.08, 0.04], 0.02) == "not reproduced"  # inside the seed spread
    assert exp.paired_verdict([0.01, 0.01, 0.01], 0.02) == "not reproduced"  # below the effect threshold

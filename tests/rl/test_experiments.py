"""Smoke runs of the OPO and RSPO reproductions (budget 'smoke')."""

import json

import pytest

from sherman.experiments import EXPERIMENTS, opo, rspo


@pytest.mark.parametrize("mod", [opo, rspo])
def test_experiment_smoke(mod, tmp_path):
    out = mod.run("smoke", tmp_path)
    assert out["name"] in EXPERIMENTS and out["claim"] == mod.CLAIM
    assert out["verdict"] in ("reproduced", "partly", "not reproduced")
    assert out["rows"] and all(set(r) >= {"claim", "paper", "ours", "verdict"} for r in out["rows"])
    for p in out["plots"]:
        assert (tmp_path / p).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"] == out["verdict"]
    for runs in out["metrics"]["arms"].values():
        assert all(r["opt_steps"] > 0 for r in runs)


def test_opo_arms_are_what_the_paper_compares():
    a = opo.arms(opo.BUDGETS["smoke"])
    assert a["grpo_offpolicy"].updates_per_batch == 4 and a["grpo_offpolicy"].kl_coef == 0.0
    assert a["onpolicy_mean"].updates_per_batch == 1 and a["onpolicy_mean"].advantage == "mean"
    assert a["opo"].updates_per_batch == 1 and a["opo"].advantage == "opo"


def test_rspo_collapse_rule_and_arms():
    assert rspo.collapsed([0.5, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1])
    assert not rspo.collapsed([0.5, 0.5, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3])
    a = rspo.arms(rspo.BUDGETS["smoke"])
    assert a["rspo"].router_shift and a["rspo"].ratio_type == "geometric"
    assert a["grpo+rs"].router_shift and a["grpo+rs"].ratio_type == "token"
    assert not a["grpo"].router_shift and all(c.updates_per_batch == 8 for c in a.values())

"""Smoke runs of the OPO and RSPO reproductions (budget 'smoke')."""

import json

import pytest

from sherman.experiments import EXPERIMENTS, opo, rspo


@pytest.mark.parametrize("mod", [opo, rspo])
def test_experiment_smoke(mod, tmp_path):
    out = mod.run("smoke", tmp_path)
    assert out["name"] in EXPERIMENTS and out["claim"] == mod.CLAIM
    assert out["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert out["rows"] and all(set(r) >= {"claim", "paper", "ours", "verdict"} for r in out["rows"])
    for p in out["plots"]:
        assert (tmp_path / p).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"] == out["verdict"]
    for runs in out["metrics"]["arms"].values():
        assert all(r["opt_steps"] > 0 for r in runs)


def test_opo_arms_differ_from_the_reference_in_exactly_one_thing():
    for budget in opo.BUDGETS.values():
        a = opo.arms(budget)
        ref = a[opo.REF]
        assert ref.updates_per_batch == 1 and ref.advantage == "opo" and ref.loss_agg == "token_mean" and ref.kl_coef == 0.0
        assert set(a) == {opo.REF, "offpolicy", "mean_baseline", "grpo_std"}
        # off-policy: each batch reused for OFF_EPOCHS steps, iterations divided so optimizer steps match
        assert opo.config_diff(a["offpolicy"], ref) == {"epochs", "steps"}
        assert a["offpolicy"].updates_per_batch == opo.OFF_EPOCHS > 1 and a["offpolicy"].mini_batches == 1
        assert a["offpolicy"].steps * a["offpolicy"].updates_per_batch == ref.steps
        assert opo.config_diff(a["mean_baseline"], ref) == {"advantage"} and a["mean_baseline"].advantage == "mean"
        assert opo.config_diff(a["grpo_std"], ref) == {"advantage"} and a["grpo_std"].advantage == "grpo"
    assert opo.BUDGETS["quick"]["rl_steps"] >= 150 and len(opo.BUDGETS["quick"]["seeds"]) == 5


def test_paired_interval_by_hand():
    from sherman.experiments.rl_common import below, distinct_n, mean_ci, paired

    m, h = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert m == 2.0 and abs(h - 4.303 / 3**0.5) < 1e-9
    assert paired([1.0, 2.0, 3.0], [0.5, 1.0, 1.5]) == mean_ci([0.5, 1.0, 1.5])
    assert below([0.0, 0.1, 0.0], [1.0, 1.0, 1.1]) and not below([0.0, 2.0, 0.0], [1.0, 1.0, 1.0])
    assert distinct_n(["abab"], 2) == 2 / 3 and distinct_n(["a"], 2) == 0.0


def test_rspo_arms_and_collapse_band():
    b = rspo.BUDGETS["quick"]
    assert b["n_experts"] >= 32 and b["top_k"] >= 4 and b["n_layers"] >= 3 and b["rl_steps"] >= 60 and len(b["seeds"]) == 5
    a = rspo.arms(b)
    base = a[rspo.BASE]
    assert 2 <= base.updates_per_batch <= 4 and base.kl_coef == 0.0 and base.ratio_type == "token" and not base.router_shift
    # the dense twin runs the same config (the model is what differs); each control / plug-in changes one field
    assert opo.config_diff(a["dense_grpo"], base) == set()
    assert opo.config_diff(a["moe_grpo_frozen"], base) == {"freeze_router"}
    assert opo.config_diff(a["moe_grpo_replay"], base) == {"routing_replay"}
    assert opo.config_diff(a["moe_grpo+rs"], base) == {"router_shift"}
    assert opo.config_diff(a["moe_gspo+rs"], a["moe_gspo"]) == {"router_shift"}
    assert opo.config_diff(a["moe_rspo"], a["moe_gmpo"]) == {"router_shift"} and a["moe_rspo"].ratio_type == "geometric"
    assert all(c.updates_per_batch == base.updates_per_batch and c.lr == base.lr for c in a.values())
    # band: mean - 2 max(sd, floor); sd of [0.5, 0.6, 0.7] = 0.1 -> 0.6 - 0.2
    assert abs(rspo.collapse_band([0.5, 0.6, 0.7]) - 0.4) < 1e-12
    assert abs(rspo.collapse_band([0.5, 0.5]) - (0.5 - 2 * rspo.SD_FLOOR)) < 1e-12
    assert rspo.count_collapses([0.1, 0.45], [0.5, 0.6, 0.7]) == [True, False]


def test_rspo_skips_method_arms_when_the_precondition_fails(tmp_path, monkeypatch):
    # one seed: no seed spread, so "MoE less stable than dense" can never be "reproduced" -> precondition fails
    monkeypatch.setitem(rspo.BUDGETS, "smoke", dict(rspo.BUDGETS["smoke"], skip_untestable=True))
    out = rspo.run("smoke", tmp_path)
    m = out["metrics"]
    assert not m["preconditions"]["moe_less_stable"]
    assert set(m["arms"]) == {*rspo.REFERENCE_ARMS, rspo.BASE}
    assert set(m["skipped_arms"]) == set(rspo.arms(rspo.BUDGETS["smoke"])) - set(m["arms"])
    assert [r["verdict"] for r in out["rows"]] == ["not testable here"] * 4 and out["verdict"] == "not testable here"
    assert "not run" in out["rows"][1]["ours"]


def test_rspo_quick_budget_trim_keeps_what_makes_the_claim_testable():
    q, f = rspo.BUDGETS["quick"], rspo.BUDGETS["full"]
    assert q["skip_untestable"] and not f["skip_untestable"] and not rspo.BUDGETS["smoke"]["skip_untestable"]
    assert q["group"] == 8 and q["prompts"] >= 3 and rspo.OFF_POLICY["epochs"] * rspo.OFF_POLICY["mini_batches"] == 4
    assert set(rspo.REFERENCE_ARMS) == {"dense_grpo", "moe_grpo_frozen"}
    assert rspo.MIN_COLLAPSE_GAIN == 0.4 and rspo.MIN_TAIL_GAIN > 0

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
    from sherman.experiments.rl_common import distinct_n, mean_ci, paired

    m, h = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert m == 2.0 and abs(h - 4.303 / 3**0.5) < 1e-9
    assert paired([1.0, 2.0, 3.0], [0.5, 1.0, 1.5]) == mean_ci([0.5, 1.0, 1.5])
    assert distinct_n(["abab"], 2) == 2 / 3 and distinct_n(["a"], 2) == 0.0


def test_opo_noninferiority_and_edge_flag_by_hand():
    from sherman.experiments import verdict as V

    # a - b = [0.01, -0.01, 0.03]: mean 0.01, sd 0.02, 2 s.e. = 2 * 0.02 / sqrt(3) = 0.023094
    a, b = [0.51, 0.49, 0.53], [0.5, 0.5, 0.5]
    v = opo.noninferior(a, b, 0.03)  # 0.01 + 0.03 = 0.04 > 0.0231: comparable
    assert v.verdict == V.REPRODUCED and abs(v.effect - 0.04) < 1e-12 and abs(v.spread - 0.04 / 3**0.5) < 1e-12
    assert opo.noninferior(a, b, 0.0).verdict == V.NOT_REPRODUCED  # 0.01 < 0.0231: inside the spread
    assert opo.noninferior([0.3, 0.2, 0.35], b, 0.03).verdict == V.NOT_REPRODUCED  # clearly worse
    # edge: effect within EDGE_SE = 0.5 s.e. (0.5 * 0.011547 = 0.005774) of the 2-s.e. spread 0.023094
    assert opo.EDGE_SE == 0.5
    assert opo.at_edge(V.compare([x + 0.015 for x in a], b, 0.0), 0.0)  # effect 0.025, |0.025 - 0.0231| = 0.0019
    assert opo.at_edge(V.compare([x + 0.01 for x in a], b, 0.0), 0.0)  # effect 0.020 (not reproduced), 0.0031 below
    assert not opo.at_edge(V.compare([x + 0.03 for x in a], b, 0.0), 0.0)  # effect 0.040, 0.0169 above
    assert not opo.at_edge(V.compare(a, b, 0.0), 0.0)  # effect 0.010, 0.0131 below
    # near the effect threshold (reproduced vs partly): effect 0.040, threshold 0.043 -> within 0.0058
    assert opo.at_edge(V.compare([x + 0.03 for x in a], b, 0.043), 0.043)
    assert not opo.at_edge(V.compare([x + 0.03 for x in a], b, 0.1), 0.1)
    assert not opo.at_edge(V.compare([0.5], [0.4], 0.0), 0.0)  # one seed: no spread, no edge
    assert "AT THE EDGE" in opo.vtxt(V.compare([x + 0.015 for x in a], b, 0.0)) and "AT THE EDGE" not in opo.vtxt(V.compare(a, b, 0.0))


def _opo_results(pass_opo=(0.2, 0.21, 0.22), clip=0.02):
    def run(kl, ent, p1, kl_top):
        return {"kl": kl, "held/entropy": ent, "held/pass@1": p1, "held/distinct3": 0.5, "clip_frac": clip, "ratio_var": 0.0,
                "kl_curve": [kl_top * i / 19 for i in range(20)], "reward_curve": [0.3] * 20}

    return {
        "opo": [run(k, e, p, 0.2) for k, e, p in zip((0.1, 0.12, 0.11), (0.5, 0.52, 0.51), pass_opo)],
        "offpolicy": [run(k, e, p, 1.0) for k, e, p in zip((0.5, 0.6, 0.55), (0.3, 0.31, 0.33), (0.2, 0.2, 0.2))],
        "mean_baseline": [run(0.1, 0.5, p, 0.2) for p in (0.15, 0.16, 0.14)],
        "grpo_std": [run(0.1, 0.5, p, 0.2) for p in (0.15, 0.17, 0.15)],
    }


def _opo_variance():
    per = {"opo_length": [1.0, 1.1, 0.9], "mean": [2.0, 2.0, 2.1]}
    return {"per_prompt": per, "var/corr_len_gradnorm2": 0.5, **{f"var/{k}": 1.0 for k in ("none", "mean", "opo_length", "optimal_group", "optimal_pooled")}}


def test_opo_judge_on_hand_made_results():
    from sherman.experiments import verdict as V

    b = opo.BUDGETS["smoke"]
    j = opo.judge(_opo_results(), {"pass@1": 0.2, "entropy": 0.6}, _opo_variance(), b)
    assert [r["verdict"] for r in j["rows"]] == [V.REPRODUCED] * 5 and j["verdict"] == V.REPRODUCED and j["at_edge"] == []
    # the KL sub-claim is verdict.compare on the per-seed values, lower is better, threshold 10% of the off-policy KL
    want = V.compare([0.1, 0.12, 0.11], [0.5, 0.6, 0.55], 0.1 * 0.55, higher_is_better=False)
    assert j["sub_verdicts"]["kl"]["effect"] == want.effect and j["sub_verdicts"]["kl"]["spread"] == want.spread
    # no learnable signal at the warm start: every row is untestable
    j = opo.judge(_opo_results(), {"pass@1": 0.0, "entropy": 0.6}, _opo_variance(), b)
    assert {r["verdict"] for r in j["rows"]} == {V.NOT_TESTABLE} and j["verdict"] == V.NOT_TESTABLE
    # off-policy arm not off-policy (no clipping, ratio variance 0): the three on/off rows are untestable, the rest stand
    j = opo.judge(_opo_results(clip=0.0), {"pass@1": 0.2, "entropy": 0.6}, _opo_variance(), b)
    assert [r["verdict"] for r in j["rows"]] == [V.NOT_TESTABLE] * 3 + [V.REPRODUCED] * 2 and j["verdict"] == V.PARTLY
    # pass@1 OPO - off = [-0.0175, -0.0225, -0.0125] (mean -0.0175, sd 0.005, 2 s.e. 0.00577): + margin 0.03 -> effect 0.0125,
    # reproduced, 0.0067 above the spread (> 0.5 s.e. = 0.00144): not at the edge
    j = opo.judge(_opo_results(pass_opo=(0.1825, 0.1775, 0.1875)), {"pass@1": 0.2, "entropy": 0.6}, _opo_variance(), b)
    assert j["sub_verdicts"]["pass@1"]["verdict"] == V.REPRODUCED and "pass@1" not in j["at_edge"]
    # mean diff -0.0255: effect 0.0045 vs 2 s.e. 0.00577 -> not reproduced, 0.0013 below the spread (< 0.5 s.e.): at the edge
    j = opo.judge(_opo_results(pass_opo=(0.1745, 0.1695, 0.1795)), {"pass@1": 0.2, "entropy": 0.6}, _opo_variance(), b)
    assert j["sub_verdicts"]["pass@1"]["verdict"] == V.NOT_REPRODUCED and "pass@1" in j["at_edge"]
    assert "AT THE EDGE" in j["rows"][2]["ours"] and j["rows"][2]["verdict"] == V.PARTLY  # matched-KL reward still holds


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


def test_rspo_stages_are_stored_reused_and_recomputed_when_stale(tmp_path, count_calls):
    """The full budget is built from stages (warm starts + one per arm x seed): a resumed run recomputes nothing and
    reports the same; a damaged or stale stage is recomputed, never used."""
    st = tmp_path / "stages"
    first = rspo.run("smoke", tmp_path / "a", stage_dir=st)
    plain = rspo.run("smoke", tmp_path / "plain")  # no stages: the same numbers as the staged run
    assert plain["rows"] == first["rows"]
    files = sorted(p.name for p in (st / "smoke").iterdir())
    assert "warm_moe.safetensors" in files and "warm_dense.safetensors" in files and "moe_rspo_seed0.json" in files
    assert len(files) == 2 + len(rspo.arms(rspo.BUDGETS["smoke"])) * len(rspo.BUDGETS["smoke"]["seeds"])
    calls = count_calls(rspo, {"run_arm": "arm", "warm_start_to_target": "warm"})
    second = rspo.run("smoke", tmp_path / "b", stage_dir=st)
    assert calls == [] and second["rows"] == first["rows"]
    (st / "smoke" / "moe_gmpo_seed0.json").write_text("{truncated")  # unreadable: recomputed
    rec = json.loads((st / "smoke" / "dense_grpo_seed0.json").read_text())
    (st / "smoke" / "dense_grpo_seed0.json").write_text(json.dumps({**rec, "key": "0" * 64}))  # stale key: recomputed
    third = rspo.run("smoke", tmp_path / "c", stage_dir=st)
    assert calls == ["arm", "arm"] and third["rows"] == first["rows"]

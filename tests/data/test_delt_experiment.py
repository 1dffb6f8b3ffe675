import math

import numpy as np

from sherman.data.corpus import GradedConfig, make_graded_corpus
from sherman.experiments import EXPERIMENTS
from sherman.experiments.delt import (
    ARMS_FULL,
    ARMS_QUICK,
    BASE,
    BUDGETS,
    CLAIM,
    Arm,
    arm_order,
    claims,
    eval_split,
    judge,
    late_mix,
    lr_precondition,
    paired_ci,
    run,
    t975,
)


def test_paired_ci_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, half-width t(2) * 1 / sqrt(3) = 4.303 / 1.732 = 2.484
    m, lo, hi = paired_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(hi - m, 4.303 / math.sqrt(3), rel_tol=1e-9) and math.isclose(m - lo, hi - m)
    assert t975(4) == 2.776



def test_judge_is_the_shared_rule_at_the_95_t_interval():
    # differences 1, 2, 3 (above): mean 2 but the 95% half-width 2.484 crosses 0 -> inside the spread, 0
    assert judge([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], 0.5) == 0
    # differences 1.0, 1.1, 1.1: mean 1.0667, sd 0.0577, half-width 4.303 * 0.0577 / sqrt(3) = 0.143 -> outside the spread
    a, b = [2.0, 2.1, 2.2], [1.0, 1.0, 1.1]
    assert judge(a, b, 0.5) == 1 and judge(b, a, 0.5) == -1
    assert judge(a, b, 2.0) == 0  # outside the spread but below the effect threshold: never a win
    assert judge([1.0], [0.0], 0.1) == 0  # one seed: no spread to judge against


def test_lr_precondition():
    ok, gap = lr_precondition([1.0, 1.0], [1.04, 1.04], 0.05)
    assert ok and math.isclose(gap, 0.04)
    ok, gap = lr_precondition([1.007], [0.673], 0.05)  # the review's starved run: 33% apart
    assert not ok and gap > 0.3


def _fake(val: dict[str, list[float]], acc: float = 0.5) -> dict:
    return {a: [{"val_loss": v, "cloze_acc": acc, "mean_corruption_seen": 0.5} for v in vs] for a, vs in val.items()}


def test_failed_precondition_gives_not_testable():
    b = BUDGETS["smoke"]
    good = [1.0, 1.01, 0.99, 1.0, 1.02]
    val = {a.name: [x - 0.1 for x in good] for a in ARMS_QUICK}  # every arm clearly better than the baseline ...
    val[BASE.name] = good
    val["shuffle/constant"] = [0.7] * 5  # ... but the schedule alone moves the baseline by 30%
    rows, verdicts, pre = claims(_fake(val), b)
    assert verdicts == ["not testable here"] * 3 and "FAILED" in pre
    val["shuffle/constant"] = good
    rows, verdicts, pre = claims(_fake(val), b)
    assert "not testable here" not in verdicts and verdicts[0] in ("reproduced", "partly")
    rows, verdicts, pre = claims(_fake(val, acc=0.1), b)  # at chance: nothing was learned
    assert verdicts == ["not testable here"] * 3


def test_arm_orders_and_compute_matching():
    n = 64
    scores = {k: np.random.default_rng(1).standard_normal(n) for k in ("lqs", "pds", "loss")}
    full = arm_order(Arm("x"), scores, 0, 3, 4)
    assert sorted(full.tolist()) == list(range(n))
    passes = arm_order(Arm("p", ratio=0.5), scores, 0, 3, 4)
    steps = arm_order(Arm("s", ratio=0.5, passes=2), scores, 0, 3, 4)
    assert len(passes) == n // 2 and len(steps) == n  # equal passes = r x steps; equal steps = 1/r passes
    assert set(steps.tolist()) == set(passes.tolist()) == set(np.argsort(-scores["lqs"])[: n // 2].tolist())
    assert sorted(steps[: n // 2].tolist()) == sorted(steps[n // 2 :].tolist()) and not np.array_equal(steps[: n // 2], steps[n // 2 :])
    assert {a.name for a in ARMS_QUICK} <= {a.name for a in ARMS_FULL}


def test_eval_split_keeps_target_out():
    c = make_graded_corpus(GradedConfig(n_entities=6, n_train=40, n_target=6, n_valid=6, n_cloze_per_hop=1))
    valid, cloze = eval_split(c)
    assert not set(valid) & set(c.target) and len(cloze) == 4
    c.valid.append(c.target[0])  # a leak must be refused
    try:
        eval_split(c)
    except AssertionError as e:
        assert "target" in str(e)
    else:
        raise AssertionError("leak not detected")


def test_quick_budget_meets_the_issue_scale():
    q = BUDGETS["quick"]
    assert q.corpus.n_train >= 8000 and q.batch >= 32 and q.corpus.n_train // q.batch >= 250
    assert 1000 <= q.proxy_docs <= 2000 and len(q.seeds) >= 3 and len(BUDGETS["full"].seeds) == 5 and q.window > 1


def test_smoke_run(tmp_path):
    assert EXPERIMENTS["delt"] == "sherman.experiments.delt"
    res = run("smoke", tmp_path)
    assert res["name"] == "delt" and res["claim"] == CLAIM
    assert res["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert len(res["rows"]) == 3 and all(set(r) >= {"claim", "paper", "ours", "verdict"} for r in res["rows"])
    assert (tmp_path / "delt.png").exists() and (tmp_path / "results.json").exists()
    s = res["metrics"]["summary"]
    assert s["lqs/fold/r0.5/equal-steps"]["steps"][0] == s[BASE.name]["steps"][0] == 2 * s["lqs/fold/r0.5/equal-passes"]["steps"][0]
    assert all(v["val_loss"][0] < math.log(32) for v in s.values())  # below the uniform guess


def test_late_mix_reads_the_last_tenth_of_the_order():
    meta = {"corrupt": np.linspace(0.0, 0.9, 10), "hops": np.array([1, 1, 1, 1, 1, 1, 1, 1, 4, 2])}
    order = np.arange(20) % 10  # 20 documents trained; the last 10% = the last 2 = documents 8, 9
    out = late_mix(order, meta)
    assert math.isclose(out["late_hops"], 3.0) and math.isclose(out["late_corruption"], (0.8 + 0.9) / 2)
    assert late_mix(np.array([3]), {"corrupt": meta["corrupt"]}) == {"late_corruption": meta["corrupt"][3]}  # at least 1


def test_scores_and_arm_seed_stages_resume(tmp_path, count_calls):
    """The full budget's stages: the corpus scores (safetensors) and one JSON per arm x seed; a resumed run scores and
    trains nothing and reports the same; an arm x seed whose key went stale is retrained."""
    from sherman.experiments import delt
    from tests.conftest import make_stale

    st = tmp_path / "stages"
    first = delt.run("smoke", tmp_path / "a", stage_dir=st)
    plain = delt.run("smoke", tmp_path / "plain")
    assert plain["rows"] == first["rows"]
    names = sorted(p.name for p in (st / "smoke").iterdir())
    assert "scores.safetensors" in names and len(names) == 1 + len(delt.BUDGETS["smoke"].arms) * len(delt.BUDGETS["smoke"].seeds)
    calls = count_calls(delt, {"run_arm": "arm", "score_lqs": "lqs"})
    second = delt.run("smoke", tmp_path / "b", stage_dir=st)
    assert calls == [] and second["rows"] == first["rows"]
    make_stale(st / "smoke" / "shuffle_seed1.json")
    third = delt.run("smoke", tmp_path / "c", stage_dir=st)
    assert calls == ["arm"] and third["rows"] == first["rows"]

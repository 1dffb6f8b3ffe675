import json
from dataclasses import replace

import torch

from sherman.experiments import EXPERIMENTS
from sherman.experiments.planning import ARMS, BUDGETS, PG_ABLATIONS, run


def test_planning_experiment_smoke(tmp_path, monkeypatch):
    assert EXPERIMENTS["planning"] == "sherman.experiments.planning"
    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(tmp_path / "artifacts"))
    threads = torch.get_num_threads()
    res = run("smoke", tmp_path / "out")
    assert not (tmp_path / "artifacts").exists()  # the smoke budget stores no stages outside its output directory
    tmp_path = tmp_path / "out"
    assert torch.get_num_threads() == threads  # restored
    assert res["name"] == "planning" and res["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert [r["claim"][:3] for r in res["rows"]] == ["(1)", "(2)", "(3)", "(4)", "(5)"]
    for row in res["rows"][:4]:
        assert set(row) == {"claim", "paper", "ours", "verdict"} and "ER:" in row["ours"] and "BW:" in row["ours"]
    assert "BW" in res["rows"][4]["ours"] and "stuck" in res["rows"][4]["ours"] and "acc_greedy" in res["rows"][4]["ours"]
    for name in res["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["metrics"]["results"]
    assert set(runs) == {"er", "bw"} and set(runs["er"][0]["arms"]) == set(ARMS)
    assert set(runs["bw"][0]["arms"]) == set(ARMS) | set(PG_ABLATIONS)
    last = runs["bw"][0]["arms"]["pg_step_cost"][-1]
    assert {"stuck/test", "len/test", "acc_greedy/test"} <= set(last)
    # the quick budget's skipped arms are read by no takeaway: dropping them leaves every row unchanged
    from sherman.experiments.planning import takeaways

    skip = BUDGETS["quick"].skip_arms
    assert skip and set(skip) <= set(ARMS) and not BUDGETS["full"].skip_arms and not BUDGETS["smoke"].skip_arms
    trimmed = {t: [dict(r, arms={a: h for a, h in r["arms"].items() if a not in skip}) for r in rs] for t, rs in runs.items()}
    assert takeaways(trimmed) == takeaways(runs) == res["rows"]
    # a reduced run (SFT checkpoint, continual SFT and PG KL 0 only): rows (1)-(2) unchanged, the rest "not run here"
    keep = ("sft", "pg_kl0")
    reduced = {t: [dict(r, arms={a: h for a, h in r["arms"].items() if a in keep}) for r in rs] for t, rs in runs.items()}
    rows = takeaways(reduced)
    assert rows[:2] == res["rows"][:2] and [r["claim"] for r in rows] == [r["claim"] for r in res["rows"]]
    assert all(r["verdict"] == "not testable here" and "not run here" in r["ours"] for r in rows[2:])
    steps = [h["step"] for h in runs["bw"][0]["arms"]["q_process"]]
    assert steps == [0, 2, 4] == list(range(0, BUDGETS["smoke"].arm_steps + 1, BUDGETS["smoke"].eval_every))
    assert [r.get("counts", True) for r in res["rows"]] == [True] * 4 + [False]  # (5) is ours: not in the verdict
    # the same stages computed in a pool of 2 spawned processes: the same results, in the same order
    pooled = run("smoke", tmp_path.parent / "pooled", workers=1)
    assert json.loads((tmp_path.parent / "pooled" / "results.json").read_text())["metrics"]["results"] == runs
    assert pooled["rows"] == res["rows"] and torch.get_num_threads() == threads


def test_plan_cli_smoke_and_bad_input(tmp_path, capsys):
    from sherman.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = ["plan", "--task", "blocksworld", "--blocks", "3", "--arm", "q-process", "--sft-steps", "5", "--steps", "2", "--eval-every", "1",
            "--out", str(tmp_path)]
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "loss/bellman" in rows[-1]
    assert main(["plan", "--arm", "dqn"]) == 2
    assert main(["plan", "--task", "er", "--nodes", "1"]) == 2
    assert "error" in capsys.readouterr().err


def test_pg_ablations_change_one_field_each():
    from dataclasses import fields, replace

    from sherman.rl.planning import ArmConfig

    base = ArmConfig()
    assert (base.pg_baseline, base.pg_gamma, base.pg_step_cost) == ("none", 1.0, 0.0)  # the paper's REINFORCE
    for kw in PG_ABLATIONS.values():
        arm = replace(base, **kw)
        assert [f.name for f in fields(base) if getattr(arm, f.name) != getattr(base, f.name)] == list(kw)


def test_stages_are_stored_reused_and_recomputed_when_stale(tmp_path, monkeypatch):
    import sherman.experiments.planning as P

    calls = []
    orig = P.run_seed
    monkeypatch.setattr(P, "run_seed", lambda task, b, seed: calls.append((task, seed)) or orig(task, b, seed))
    stages = tmp_path / "stages"
    first = P.run("smoke", tmp_path / "a", stage_dir=stages)
    assert calls == [("er", 0), ("bw", 0)] and first["metrics"]["stages_reused"] == 0
    er = P.stage_path(stages, "smoke", "er", 0)
    rec = json.loads(er.read_text())
    assert rec["key"] == P.stage_key("er", BUDGETS["smoke"], 0) and rec["cpu_s"] > 0
    calls.clear()
    second = P.run("smoke", tmp_path / "b", stage_dir=stages)  # a resumed run: nothing recomputed, the same report
    assert calls == [] and second["metrics"]["stages_reused"] == 2
    assert second["rows"] == first["rows"] and "2 of 2 task-seed stages reused" in second["notes"]
    assert second["metrics"]["cpu_s"] == first["metrics"]["cpu_s"]  # counted at their stored cost
    er.write_text(json.dumps({**rec, "key": "0" * 64}))  # stale: another code / budget / torch
    P.stage_path(stages, "smoke", "bw", 0).write_text("{truncated")  # unreadable
    P.run("smoke", tmp_path / "c", stage_dir=stages)
    assert calls == [("er", 0), ("bw", 0)]
    assert P.stage_key("er", BUDGETS["smoke"], 1) != P.stage_key("er", BUDGETS["smoke"], 0) != P.stage_key("bw", BUDGETS["smoke"], 0)
    assert P.stage_key("er", replace(BUDGETS["smoke"], sft_steps=31), 0) != P.stage_key("er", BUDGETS["smoke"], 0)


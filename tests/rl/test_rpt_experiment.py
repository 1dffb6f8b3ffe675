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
        assert len(s["reward_curve"]) == exp.BUDGETS["smoke"].rpt_steps


def test_power_law_fit_recovers_parameters():
    c = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    y = [-0.3 / x**0.7 + 0.5 for x in c]  # accuracy rising to P* = 0.5
    f = exp.fit_power_law(c, y)
    assert math.isclose(f["A"], -0.3, abs_tol=1e-3) and math.isclose(f["alpha"], 0.7, abs_tol=1e-3)
    assert math.isclose(f["P*"], 0.5, abs_tol=1e-3) and f["r2"] > 0.9999


def test_span_rounds_fresh_placements_per_epoch():
    """'spans' mode pre-training data: ceil(steps * batch / docs) copies of the corpus (capped at 64), each with its own
    span positions, so the epochs of the pre-training do not repeat one placement."""
    import dataclasses
    import random

    import torch

    from sherman.rl import rpt

    cfg = rpt.RPTConfig(min_context=2, threshold=0.0, quantile=None)
    texts = rpt.generate_corpus(10, seed=0)
    tok = rpt.corpus_tokenizer(texts, 320, cfg)
    docs = rpt.tokenize_corpus(texts, tok, 96)
    task = rpt.RPTTask(tok, docs, rpt.select_positions([torch.ones(len(d)) for d in docs], cfg), cfg)
    b = dataclasses.replace(exp.BUDGETS["smoke"], base_steps=7, batch=4, spans=3)  # 28 sequences over 10 documents -> 3 rounds
    data = exp.span_rounds(task, docs, b, random.Random(0))
    assert len(data) == 30
    opener = tok.encode(cfg.answer_open)[0]
    assert all(x.ids.count(opener) == 3 for x in data)
    assert data[0].ids != data[10].ids  # the same document, other span positions
    assert [i for i, m in zip(data[0].ids, data[0].mask) if m] != []
    b = dataclasses.replace(b, base_steps=10_000)
    assert len(exp.span_rounds(task, docs, b, random.Random(0))) == 64 * 10


def test_fit_plot_from_first_rpt_evaluation(tmp_path):
    """The curve's first point is S at C = 0; the fit and its plotted line start at the first RPT evaluation (no division
    by C = 0: numpy warnings are errors here)."""
    import warnings

    curve = [{"step": 0, "flops": 0.0, "reason/all": 0.5}] + [{"step": k, "flops": 1e9 * k, "reason/all": 0.6 - 0.1 / k} for k in (1, 2, 4, 8)]
    for p in curve:
        p.update({f"reason/{s}": p["reason/all"] for s in ("easy", "medium", "hard")})
    ev = {f"{m}/{s}": 0.5 for m in ("ntp", "reason") for s in ("easy", "medium", "hard", "all")}
    res = [{"seed": 0, "curve": curve, "ntp_cost": {"NTP-docs": {"flops": 8e9}, "NTP-positions": {"flops": 8e9}}, "evals": {"NTP-docs": ev, "NTP-positions": ev}}]
    fit = exp.fit_power_law([p["flops"] for p in curve[1:]], [p["reason/all"] for p in curve[1:]])
    assert fit["r2"] > 0.999
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = exp._plots(res, [fit], tmp_path, exp.BUDGETS["smoke"])
    assert all((tmp_path / n).stat().st_size > 0 for n in names)


def test_s_stage_cache_trains_once_reuses_and_retrains_stale(tmp_path, monkeypatch):
    """S is trained into the cache once, reused bit for bit by the next call (with its training CPU time, for the cold-run
    estimate), retrained when the data it was trained on changes, when its weights file is damaged, and for another seed."""
    import dataclasses

    import torch

    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(tmp_path / "art"))
    b = dataclasses.replace(exp.BUDGETS["smoke"], base_steps=4)
    shared = exp.setup(b, None)
    root = exp.s_cache_root()
    assert root == tmp_path / "art" / "rpt"
    first = exp.s_stage(b, shared, 0, root)
    assert first["status"] == "trained (new)" and first["train_cpu_s"] > 0
    again = exp.s_stage(b, shared, 0, root)
    assert again["status"] == "reused" and again["train_cpu_s"] == first["train_cpu_s"]
    assert all(torch.equal(first["state"][k], again["state"][k]) for k in first["state"]) and again["eval"] == first["eval"]
    assert again["base"] == first["base"]
    other = exp.s_stage(b, shared, 1, root)  # another seed: its own S
    k0 = next(iter(first["state"]))
    assert other["status"] == "trained (new)" and not torch.equal(other["state"][k0], first["state"][k0])
    shared2 = {**shared, "train_docs": shared["train_docs"][1:]}  # other training data: stale
    stale = exp.s_stage(b, shared2, 0, root)
    assert stale["status"].startswith("trained (stale")
    d = next(p for p in root.iterdir()) / "S_seed0"
    for w in d.glob("weights-*.safetensors"):
        w.write_bytes(b"not safetensors")
    broken = exp.s_stage(b, shared2, 0, root)
    assert broken["status"].startswith("trained (unreadable")
    assert exp.s_stage(b, shared2, 0, root)["status"] == "reused"
    files = sorted(p.name for p in d.iterdir())
    assert files[0] == "manifest.json" and len(files) == 2 and files[1].endswith(".safetensors")  # JSON + safetensors only


def test_idle_wall_estimate_hand_values():
    """Setup 10 s; seed 0's S in the main process (100 s train + 5 s eval, arms 50 s); seeds 1-2 in the worker (its setup
    8 s, each S 100 s; main loads + evaluates each in 5 s, arms 50 s). Worker: S1 ready at 10 + 8 + 100 = 118, S2 at 218.
    Main: 10 + 105 + 50 = 165 -> S1 ready, + 5 + 50 = 220 -> S2 ready (218), + 5 + 50 = 275."""
    order = [{"bg": False, "train_cpu_s": 100.0, "stage_cpu_s": 5.0, "arms_cpu_s": 50.0},
             {"bg": True, "train_cpu_s": 100.0, "stage_cpu_s": 5.0, "arms_cpu_s": 50.0},
             {"bg": True, "train_cpu_s": 100.0, "stage_cpu_s": 5.0, "arms_cpu_s": 50.0}]  # fmt: skip
    assert exp.idle_wall_estimate(10.0, order, 8.0) == 275.0
    order[0]["arms_cpu_s"] = 200.0  # main slower than the worker: no waiting, 10 + 105 + 200 + 55 + 55
    assert exp.idle_wall_estimate(10.0, order, 8.0) == 425.0
    assert exp.idle_wall_estimate(10.0, [dict(o, bg=False) for o in order], 0.0) == 10.0 + 3 * 105.0 + 300.0  # all in one process: every S, then every arm


def test_experiment_with_background_s_worker_then_warm(tmp_path, monkeypatch):
    """With the cache and one background worker: seed 0's S trains in the main process, seeds 1-2 in the worker; a second
    run reuses all three (same results), and both report a cold-run estimate."""
    import dataclasses

    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(tmp_path / "art"))
    b = dataclasses.replace(exp.BUDGETS["smoke"], s_workers=1, base_steps=6, rpt_steps=2, held_positions=12)
    monkeypatch.setitem(exp.BUDGETS, "tiny", b)
    out = exp.run("tiny", tmp_path / "a")
    s = out["metrics"]["times"]["S"]
    assert s["0"]["status"] == "trained (new)"
    assert s["1"]["status"] == s["2"]["status"] == "trained (new) in a background worker"
    tot = out["metrics"]["times"]["total"]
    assert tot["processes"] == 2 and tot["cold_cpu_estimate_s"] > tot["cpu_s"] and tot["idle_wall_estimate_s"] > 0
    shared = exp.setup(b, None)
    root = exp.s_cache_root()
    assert all(exp.s_cached(b, shared, sd, root) for sd in b.seeds)  # a second run reuses all three, with no worker
    assert not exp.s_cached(dataclasses.replace(b, spans=b.spans + 1), shared, 0, root)
    st = exp.s_stage(b, shared, 1, root)
    assert st["status"] == "reused" and st["eval"] == out["metrics"]["s"]["1"]["eval"]


def test_arm_stages_resume_and_follow_s(tmp_path, monkeypatch):
    """Each seed's arms are a JSON stage keyed by S's weights (among others): a resumed run reruns no arm and reports the
    same; a stage whose key went stale is rerun."""
    import dataclasses
    import json

    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(tmp_path / "art"))
    b = dataclasses.replace(exp.BUDGETS["smoke"], s_workers=0, base_steps=6, rpt_steps=2, held_positions=12)
    monkeypatch.setitem(exp.BUDGETS, "tiny", b)
    first = exp.run("tiny", tmp_path / "a")
    arms = sorted(p.name for p in (tmp_path / "art" / "rpt" / "tiny").iterdir())
    assert arms == [f"arms_seed{s}.json" for s in b.seeds]
    calls = []
    real = exp.run_seed
    monkeypatch.setattr(exp, "run_seed", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = exp.run("tiny", tmp_path / "b")
    assert calls == [] and second["rows"] == first["rows"]
    path = tmp_path / "art" / "rpt" / "tiny" / "arms_seed1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "key": "0" * 64}))
    third = exp.run("tiny", tmp_path / "c")
    assert calls == [1] and third["rows"] == first["rows"]


def test_s_training_cut_off_resumes_to_the_unbroken_weights(tmp_path, monkeypatch):
    """With `ckpt_every`, S's training killed after its step-4 checkpoint and rerun resumes there (it runs only the
    remaining steps) and stores the unbroken run's weights; the checkpoint directory is removed once S is stored, and
    the stored CPU seconds cover both calls."""
    import dataclasses

    import pytest
    import torch

    from sherman.rl import rpt as rpt_mod

    b = dataclasses.replace(exp.BUDGETS["smoke"], base_steps=6, ckpt_every=2)
    shared = exp.setup(b, None)
    plain = exp.s_stage(b, shared, 0, None)  # no cache, no checkpoints

    class Killed(Exception):
        pass

    real = rpt_mod.ntp_train
    steps_run = []

    def dying(*a, callback=None, **kw):
        def cb(step, row):
            steps_run.append(step)
            if callback is not None:
                callback(step, row)
            if step == 5:
                raise Killed
        return real(*a, callback=cb, **kw)

    root = tmp_path / "art"
    monkeypatch.setattr(rpt_mod, "ntp_train", dying)
    with pytest.raises(Killed):
        exp.s_stage(b, shared, 0, root)
    ck = list(root.glob("*/S_seed0_ckpt_*"))
    assert len(ck) == 1 and (ck[0] / "cpu_s.json").is_file()
    monkeypatch.setattr(rpt_mod, "ntp_train", real)

    def counting(*a, callback=None, **kw):
        def cb(step, row):
            steps_run.append(step)
            if callback is not None:
                callback(step, row)
        return real(*a, callback=cb, **kw)

    steps_run.clear()
    monkeypatch.setattr(rpt_mod, "ntp_train", counting)
    got = exp.s_stage(b, shared, 0, root)
    assert steps_run == [5, 6]  # resumed at the step-4 checkpoint
    assert got["status"] == "trained (new)" and got["train_cpu_s"] > 0
    assert all(torch.equal(plain["state"][k], got["state"][k]) for k in plain["state"]) and got["base"] == plain["base"]
    assert not list(root.glob("*/S_seed0_ckpt_*"))  # removed once S is stored

import asyncio
import json
import random

import pytest
import torch

from sherman.cli import main
from sherman.core.generate import SamplingParams
from sherman.core.model import ModelConfig, Transformer
from sherman.experiments import EXPERIMENTS
from sherman.experiments.asyncthink import (
    BUDGETS,
    CAPACITY,
    CLAIM,
    MAX_GT_RATIO,
    SUBQUERY,
    curve_mean_acc,
    make_tasks,
    run,
    score_fields,
    sft_accuracy_row,
    truncated_parallel,
    truncated_sequential,
)
from sherman.think.backends import LocalBackend
from sherman.think.baselines import BaselineConfig, sequential
from sherman.think.train import latency_precondition, make_tokenizer


def test_asyncthink_experiment_smoke(tmp_path, capsys):
    assert EXPERIMENTS["asyncthink"] == "sherman.experiments.asyncthink"
    r = run("smoke", tmp_path)
    assert r["name"] == "asyncthink" and r["claim"] == CLAIM
    assert r["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    pre = r["metrics"]["precondition"]
    assert set(pre) == {"claim_task", "countdown3"}
    assert pre["claim_task"]["passed"] and not pre["countdown3"]["passed"]  # the task is chosen so that the latency claim is testable
    claims = [row["claim"] for row in r["rows"]]
    assert len(r["rows"]) == 8 and all(set(row) == {"claim", "paper", "ours", "verdict"} for row in r["rows"])
    assert any("no RL" in c for c in claims) and any("lambda = 0" in c for c in claims) and any("topology" in c for c in claims)
    assert all((tmp_path / p).stat().st_size > 1000 for p in r["plots"])
    saved = json.loads((tmp_path / "results.json").read_text())
    b = BUDGETS["smoke"]
    per_seed = saved["metrics"]["per_seed"]
    assert [s["seed"] for s in per_seed] == list(b.seeds)
    ev = per_seed[0]["eval"]
    assert {"sft/claim", "rl_lam0.5/claim", "rl_lam0/claim", "rl_lam0.5/heldout", "topo_fork_all/claim", "topo_interleaved/claim"} <= set(ev)
    for key, methods in ev.items():
        for meth, m in methods.items():
            assert 0 <= m["acc"] <= 1 and m["latency_p50"] <= m["latency_p90"] and m["eta"] >= 0
            if key in ("sft/claim", "rl_lam0.5/claim"):  # one curve point per budget, latency capped by it
                assert [p["budget"] for p in m["curve"]] == list(b.budgets)
                assert all(p["latency_mean"] <= p["budget"] for p in m["curve"]) or meth == "asyncthink"
            else:  # the other models are evaluated at the top budget only
                assert "curve" not in m
    # the saved organizer is what `sherman think --ckpt` reads (README): run it end to end
    org = tmp_path / "organizer"
    assert (org / "config.json").is_file() and (org / "model.safetensors").is_file() and (org / "tokenizer.json").is_file()
    question = make_tasks()[1].sample(random.Random(0)).prompt
    capsys.readouterr()
    code = main(["think", question, "--backend", "local", "--ckpt", str(org), "--max-org-tokens", "24", "--max-worker-tokens", "8"])
    out, err = capsys.readouterr()
    assert code in (0, 1) and "latency" in out and "organizer  (" in out and "error" not in err, err  # 1 = no answer from the tiny model


def test_claim_task_passes_the_latency_precondition_and_countdown_does_not():
    train_tasks, claim, heldout, countdown = make_tasks()
    tok = make_tokenizer(*train_tasks, countdown)
    assert heldout.cfg.n_expressions not in {t.cfg.n_expressions for t in train_tasks}  # the held-out shape is never trained on
    pre = latency_precondition(claim, tok, 20, CAPACITY, max_ratio=MAX_GT_RATIO, subquery=SUBQUERY)
    assert pre["passed"] and pre["fork_all_ratio"] <= MAX_GT_RATIO < pre["interleaved_ratio"]
    assert not latency_precondition(countdown, tok, 10, CAPACITY, max_ratio=MAX_GT_RATIO)["passed"]


def test_score_fields_by_hand():
    traces = ["14+93=4370,1901=107<RETURN>107</RETURN>", "43+23=3360,4260=66<RETURN>66</RETURN>"]
    outs = ["14+93=4370,1900=7<RETURN>107</RETURN>",  # wrong steps, right result: counts for `worker`
            "43+28=3880,4271=71<RETURN>71</RETURN>"]  # wrong copy, wrong result
    org = ["<ANSWER>107;66</ANSWER>", "<ANSWER>107;66", "<ANSWER>93</ANSWER>"]  # right, unclosed, wrong
    f = score_fields(outs, traces, org, ["107;66"] * 3)
    assert f == {"worker": 0.5, "worker_copy": 0.5, "organizer_copy": pytest.approx(1 / 3)}
    assert score_fields(["14+93=4370"], traces[:1], org[:1], ["107;66"])["worker"] == 0.0  # no return: wrong


def test_sft_accuracy_row_by_hand():
    def ev(a_sft, p_sft, s_sft, p_rl, s_rl):
        acc = lambda a, p, s: {"asyncthink": {"acc": a}, "parallel": {"acc": p}, "sequential": {"acc": s}}  # noqa: E731
        return {"sft/claim": acc(a_sft, p_sft, s_sft), "rl_lam0.5/claim": acc(0.9, p_rl, s_rl)}

    evals = [ev(0.8, 0.4, 0.3, 0.2, 0.1), ev(0.6, 0.3, 0.2, 0.1, 0.1), ev(0.7, 0.5, 0.4, 0.3, 0.1)]
    row = sft_accuracy_row(evals, "rl_lam0.5")
    # async - parallel per seed 0.4, 0.3, 0.2: mean 0.3, 2 s.e. = 2 * sqrt(0.01 / 3) = 0.115 -> reproduced (0.3 - 0.115 > 0.02)
    assert row["verdict"] == "reproduced"
    assert "async 0.70 | parallel 0.40 | sequential 0.30" in row["ours"]
    assert "+0.300 ± 0.115" in row["ours"] and "0.80/0.40, 0.60/0.30, 0.70/0.50" in row["ours"]
    assert "rl_lam0.5 weights: parallel 0.20, sequential 0.10" in row["ours"]
    failed = sft_accuracy_row([ev(0.0, 0.0, 0.0, 0.0, 0.0)] * 3, "rl_lam0.5")
    assert failed["verdict"] == "not testable here" and "both arms failed" in failed["ours"]


def test_truncated_baselines_by_hand():
    # a sample of 10 tokens answers under a cap of 10 or more, not under 9; latency is the capped length
    assert truncated_sequential(10, "5", 10) == ("5", 10.0)
    assert truncated_sequential(10, "5", 9) == (None, 9.0)
    assert truncated_sequential(4, None, 8) == (None, 4.0)  # stopped (eos) without an answer
    samples = [(6, "7"), (12, "8"), (9, "8")]
    assert truncated_parallel(samples, 12) == ("8", 12.0)  # vote 8, 8 over 7
    assert truncated_parallel(samples, 10) == ("7", 10.0)  # only 6 and 9 closed: tie, first seen (7) wins
    assert truncated_parallel(samples, 8) == ("7", 8.0)
    assert truncated_parallel(samples, 5) == (None, 5.0)
    assert truncated_parallel([(3, "1;2"), (4, "2;3")], 4, how="union") == ("1;2;3", 4.0)
    assert curve_mean_acc([{"acc": 0.2}, {"acc": 0.6}]) == pytest.approx(0.4)


def test_truncation_equals_a_capped_run():
    """A sequential sample capped at B has exactly the first B tokens of the same-seed uncapped sample, so cutting the
    uncapped run after the fact (`truncated_sequential`) gives what a B-capped run gives."""
    train_tasks, claim, _, countdown = make_tasks()
    tok = make_tokenizer(*train_tasks, countdown)
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)).eval()
    q = claim.sample(random.Random(0)).prompt

    def once(cap):
        be = LocalBackend(m, tok, SamplingParams(temperature=1.0), generator=torch.Generator().manual_seed(3))

        async def go():
            try:
                return await sequential(be, q, BaselineConfig(max_tokens=cap, k=1))
            finally:
                await be.aclose()

        return asyncio.run(go())

    full, short = once(30), once(12)
    assert [t.ids for t in short.tokens] == [t.ids for t in full.tokens][:12]
    assert truncated_sequential(full.org_tokens, full.answer, 12) == (short.answer, short.latency)


def test_asyncthink_stages_are_stored_reused_and_recomputed_when_stale(tmp_path, monkeypatch):
    """The full budget (~12 CPU-hours) is built from stages: each trained model (safetensors) and each model's evaluation
    (JSON). A resumed run trains and evaluates nothing and reports the same; a stale stage is recomputed."""
    import sherman.experiments.asyncthink as A

    st = tmp_path / "stages"
    first = run("smoke", tmp_path / "a", stage_dir=st)
    plain = run("smoke", tmp_path / "plain")  # no stages: the same models and numbers
    assert plain["rows"] == first["rows"]
    names = sorted(p.name for p in (st / "smoke").iterdir() if p.is_file())
    per_seed = 1 + len(BUDGETS["smoke"].lambdas) + 2  # sft, RL per lambda, two topology arms
    assert len(names) == 2 * per_seed * len(BUDGETS["smoke"].seeds)
    assert "seed0_sft.safetensors" in names and "eval_seed1_rl_lam0.5.json" in names
    calls = []
    real_sft, real_eval = A._sft, A.evaluate
    monkeypatch.setattr(A, "_sft", lambda *a, **k: calls.append("sft") or real_sft(*a, **k))
    monkeypatch.setattr(A, "evaluate", lambda *a, **k: calls.append("eval") or real_eval(*a, **k))
    second = run("smoke", tmp_path / "b", stage_dir=st)
    assert calls == [] and second["rows"] == first["rows"]
    (st / "smoke" / "seed1_topo_fork_all.safetensors").write_bytes(b"truncated")  # unreadable: retrained
    rec = json.loads((st / "smoke" / "eval_seed0_sft.json").read_text())
    (st / "smoke" / "eval_seed0_sft.json").write_text(json.dumps({**rec, "key": "0" * 64}))  # stale: re-evaluated
    third = run("smoke", tmp_path / "c", stage_dir=st)
    # the retrained topology model has the same weights (same seed, same machine), so its evaluation's key still holds
    assert sorted(calls) == ["eval", "eval", "sft"] and third["rows"] == first["rows"]


def test_only_seeds_computes_one_seeds_stages_that_the_full_run_reuses(tmp_path, monkeypatch):
    """`only_seeds` (seeds of a long budget run in parallel processes): it stores that seed's stages only and writes no
    report; the run over all seeds then trains only the other seed, reuses the rest, and reports what an unsplit run does."""
    import sherman.experiments.asyncthink as A

    st = tmp_path / "stages"
    part = run("smoke", tmp_path / "p", stage_dir=st, only_seeds=(1,))
    assert part["seeds"] == [1] and not (tmp_path / "p" / "results.json").exists()
    names = sorted(p.name for p in (st / "smoke").iterdir() if p.is_file())
    assert names and all("seed1" in n for n in names)
    calls = []
    real_sft = A._sft
    monkeypatch.setattr(A, "_sft", lambda *a, **k: calls.append(a[3]) or real_sft(*a, **k))  # a[3]: the seed
    whole = run("smoke", tmp_path / "w", stage_dir=st)
    assert set(calls) == {0}  # seed 1's SFT and topology models were reused
    assert whole["rows"] == run("smoke", tmp_path / "plain")["rows"]
    with pytest.raises(ValueError, match="not seeds"):
        run("smoke", tmp_path / "x", stage_dir=st, only_seeds=(7,))


def test_sft_stage_cut_off_resumes_to_the_unbroken_weights(tmp_path):
    """An SFT stage with `sft_ckpt_every`, killed after its step-4 checkpoint and rerun, resumes there (it runs only
    steps 5-6) and stores the unbroken run's weights and loss curve; its keyed checkpoint directory is removed once the
    stage is stored, and the CPU seconds of the cut-off call are counted."""
    import dataclasses

    import sherman.experiments.asyncthink as A

    b = dataclasses.replace(BUDGETS["smoke"], sft_steps=6, sft_ckpt_every=2)
    train_tasks, _, _, countdown = A.make_tasks()
    tok = A.make_tokenizer(*train_tasks, countdown)
    plain, plain_loss = A._sft(tok, train_tasks, b, 0, 6, A.TRAIN_TOPOLOGIES)

    class Killed(Exception):
        pass

    seen = []

    def compute(run_dir, on_step, die_at=None):
        def cb(step, row):
            on_step(step, row)
            seen.append(step)
            if step == die_at:
                raise Killed

        m, loss = A._sft(tok, train_tasks, b, 0, 6, A.TRAIN_TOPOLOGIES, run_dir=run_dir, on_step=cb)
        return m, {"loss": loss}

    with pytest.raises(Killed):
        A.model_stage(tmp_path, "smoke", "seed0_sft", b, tok, {"seed": 0}, lambda rd, cb: compute(rd, cb, die_at=5), ckpt_every=2)
    assert len(list((tmp_path / "smoke" / "sft_ckpt").glob("seed0_sft_*"))) == 1
    seen.clear()
    m, extra, cpu = A.model_stage(tmp_path, "smoke", "seed0_sft", b, tok, {"seed": 0}, compute, ckpt_every=2)
    assert seen == [5, 6]  # resumed at the step-4 checkpoint
    assert extra["loss"] == plain_loss and len(plain_loss) == 6
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in plain.state_dict().items())
    assert not list((tmp_path / "smoke" / "sft_ckpt").glob("seed0_sft_*"))
    assert extra["cpu_s_earlier"] > 0 and cpu == extra["cpu_s"] + extra["cpu_s_earlier"]

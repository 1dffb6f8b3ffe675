"""AsyncThink vs parallel vs sequential thinking on one tiny model family (arXiv 2510.26658, Sec. 4, Table 1, Fig. 4-5).

What runs:
1. One tokenizer and one model family. Format SFT (`think.train.sft_examples`) on a mixture of
   organizer/worker traces with randomized topologies (AsyncThink) and sequential traces (`<SEQ>` prompts,
   the baselines' format), for multi-solution Countdown and multi-expression arithmetic (2-3 expressions).
2. RL of the organizer and workers with the AsyncThink reward (accuracy + lambda * min(eta/c, tau)/tau,
   format penalty), one run per lambda in the sweep (one optimizer, resumable), each from the SFT weights.
3. Evaluation with the local backend (one batched forward per step for all agents of all questions):
   AsyncThink, sequential thinking (same per-sample token budget as the organizer) and parallel
   thinking (k = c - 1 samples, majority vote; set union for multi-solution Countdown), all at one temperature.
   Accuracy, critical-path latency (mean, p50, p90), eta, total tokens, wall time.
4. Generalization: arithmetic with 4 expressions, a shape never trained on.
5. Precondition (`think.train.latency_precondition`): on 20 ground-truth traces per training task, replayed
   through the engine one tokenizer token per step, the fork-join critical path must be <= 0.7x the
   parallel-thinking latency (one whole sequential trace). Where Countdown fails it, the latency claim is
   "not testable here". Measured: 3-number Countdown 1.24x, 3-expression 1-digit sums 1.36x (fail);
   3-expression 3-digit products 0.57x, 2-3 digit products 0.65x (pass); 4-number 3-solution Countdown
   without a search trace 0.83x (fail).

Claims checked (paper -> ours): higher accuracy than both baselines on multi-solution Countdown;
~28% lower latency than parallel thinking at equal or better accuracy; generalization to an unseen task;
and (ablation) the concurrency reward raises eta.

Before the fixes of issue 15 (answers no worker returned, eight fresh optimizers of one step each) the quick
budget gave Countdown accuracy async 0.33 / parallel 0.46 / sequential 0.40 at equal latency (36.9 vs 36.6
steps). RL is now one run per lambda (one AdamW over every step, checkpointed and resumed through
`core.checkpoint`, G = 8); the new quick budget has not been measured yet.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sherman.core.checkpoint import save_checkpoint
from sherman.core.common import seed_everything
from sherman.core.generate import SamplingParams
from sherman.core.model import ModelConfig, Transformer
from sherman.core.progress import progress
from sherman.core.train import TrainConfig, train
from sherman.experiments.verdict import PARTLY, REPRODUCED, compare, overall
from sherman.tasks.arithmetic import Arithmetic
from sherman.tasks.countdown import Countdown
from sherman.think.backends import LocalBackend
from sherman.think.baselines import BaselineConfig, parallel, sequential
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.train import RLConfig, latency_precondition, make_tokenizer, rl_train, sft_examples

CLAIM = ("AsyncThink learns to organize asynchronous thinking: on multi-solution Countdown it is more accurate than sequential and "
         "parallel thinking with about 28% lower latency than parallel thinking, and it generalizes to unseen tasks (arXiv 2510.26658, Sec. 4).")


@dataclass
class Budget:
    n_sft: int
    """Training questions per task (each gives an organizer, its workers and a sequential example)."""
    sft_steps: int
    rl_steps: int
    lambdas: tuple[float, ...]
    """lambda values of the RL sweep (the first RL model is the one compared in the claims)."""
    n_eval: int
    """Test questions per task."""
    dim: int
    n_layers: int
    seeds: tuple[int, ...] = (0,)
    log_every: int = 0
    """Print SFT progress every N steps (0 = silent)."""
    rl_questions: int = 4
    """Questions per RL update."""
    group: int = 8
    """RL group size G."""
    save_every: int = 25
    """RL checkpoint interval (steps)."""
    eval_temperature: float = 1.0
    """One sampling temperature for every method at evaluation (AsyncThink, sequential, parallel)."""


BUDGETS = {
    "smoke": Budget(n_sft=8, sft_steps=4, rl_steps=1, lambdas=(0.5, 0.0), n_eval=2, dim=32, n_layers=1, rl_questions=1, group=2),
    "quick": Budget(n_sft=800, sft_steps=2000, rl_steps=30, lambdas=(0.5, 0.0), n_eval=40, dim=128, n_layers=2, log_every=250),
    "full": Budget(n_sft=3000, sft_steps=2500, rl_steps=300, lambdas=(0.5, 0.1, 0.0), n_eval=200, dim=192, n_layers=4, seeds=(0, 1, 2)),
}

MIN_ACC_GAIN = 0.02
"""Effect threshold of an accuracy win (2 points), beyond the spread over seeds (`experiments/verdict.py`)."""
MIN_ETA_GAIN = 0.05
"""Effect threshold of the concurrency-reward ablation on eta (average active threads)."""

CAPACITY = 4
TAU = 0.5


def make_tasks():
    countdown = Countdown(n_solutions=2, min_numbers=3, max_numbers=3, max_number=9, max_target=30)
    arith = [Arithmetic(n_expressions=n, min_digits=1, max_digits=1, ops="+-") for n in (2, 3)]
    heldout = Arithmetic(n_expressions=4, min_digits=1, max_digits=1, ops="+-")
    return countdown, arith, heldout


def evaluate(model, tok, task, exs, think: ThinkConfig, base: BaselineConfig, seed: int, temperature: float = 1.0) -> dict[str, dict]:
    """Run the three methods on the same questions, at one temperature -> {method: metrics}."""
    import asyncio

    out = {}
    for method in ("asyncthink", "sequential", "parallel"):
        backend = LocalBackend(model, tok, SamplingParams(temperature=temperature), generator=torch.Generator().manual_seed(seed))

        async def main(method=method, backend=backend):
            try:
                if method == "asyncthink":
                    eng = AsyncThinkEngine(backend, think)
                    return await asyncio.gather(*[eng.run(e.prompt) for e in exs])
                fn = sequential if method == "sequential" else parallel
                return await asyncio.gather(*[fn(backend, e.prompt, base) for e in exs])
            finally:
                await backend.aclose()

        t0 = time.perf_counter()
        rs = asyncio.run(main())
        wall = time.perf_counter() - t0
        acc = [task.reward(e, "#" + r.answer) if r.answer is not None else 0.0 for e, r in zip(exs, rs)]
        lat = np.array([r.latency for r in rs], dtype=float)
        out[method] = {
            "acc": float(np.mean(acc)),
            "latency_mean": float(lat.mean()),
            "latency_p50": float(np.percentile(lat, 50)),
            "latency_p90": float(np.percentile(lat, 90)),
            "eta": float(np.mean([r.eta for r in rs])),
            "total_tokens": float(np.mean([r.total_tokens for r in rs])),
            "format_ok": float(np.mean([not r.errors for r in rs])),
            "forks": float(np.mean([len(r.workers) for r in rs])) if method == "asyncthink" else 0.0,
            "wall_s": wall,
        }
    return out


def run(budget: str, out_dir: Path) -> dict:
    """The quick budget runs with one intra-op thread (`sherman reproduce --threads 1`, the default); not yet timed after the RL fix."""
    return _run(budget, out_dir)


def _run(budget: str, out_dir: Path) -> dict:
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    countdown, arith, heldout = make_tasks()
    tok = make_tokenizer(countdown, *arith)
    think = ThinkConfig(capacity=CAPACITY, max_org_tokens=96, max_worker_tokens=48)
    base_cd = BaselineConfig(max_tokens=96, k=CAPACITY - 1, aggregate="union")
    base_ar = BaselineConfig(max_tokens=96, k=CAPACITY - 1, aggregate="vote")
    per_seed = []
    rl_curves: dict[str, list] = {}
    t_start = time.perf_counter()
    # precondition (issue 15): on ground-truth traces the fork-join critical path must be <= 0.7x parallel's
    pre = {"countdown": latency_precondition(countdown, tok, 20, CAPACITY),
           **{f"arith{t.cfg.n_expressions}": latency_precondition(t, tok, 20, CAPACITY) for t in arith}}
    prog = progress(len(b.seeds), "seeds (SFT, RL per lambda, evaluation)")
    for seed in b.seeds:
        prog.set(seed=seed)
        seed_everything(seed)
        rng = random.Random(seed)
        data = []
        for t in [countdown, *arith]:
            data += sft_examples(t, tok, b.n_sft, rng, capacity=CAPACITY, think=think)
            data += sft_examples(t, tok, b.n_sft, rng, sequential=True)
        model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=b.dim, n_layers=b.n_layers, n_heads=4, n_kv_heads=2,
                                        ffn_dim=int(b.dim * 8 / 3) // 8 * 8, max_seq_len=512))
        sft = train(model, data, TrainConfig(steps=b.sft_steps, batch_size=32, lr=3e-3, warmup_steps=min(20, b.sft_steps // 5), seed=seed,
                                                        log_every=b.log_every))
        sft_loss = [h["loss/train"] for h in sft.history if "loss/train" in h]
        models = {"sft": model}
        for lam in b.lambdas:  # RL on the mixture of training tasks, one run per lambda
            m = copy.deepcopy(model)
            hist = rl_train(m, tok, [countdown, *arith], think, RLConfig(steps=b.rl_steps, questions=b.rl_questions, group=b.group, lr=2e-4, lam=lam,
                                                                          tau=TAU, seed=seed, save_every=b.save_every),
                            run_dir=out_dir / "rl" / f"seed{seed}_lam{lam:g}")  # one run, one optimizer, resumable
            models[f"rl_lam{lam:g}"] = m
            rl_curves[f"seed{seed}_lam{lam:g}"] = hist
        if seed == b.seeds[0]:  # the trained organizer: `sherman think "3+4;5-2=" --backend local --ckpt OUT/organizer`
            save_checkpoint(out_dir / "organizer", models[f"rl_lam{b.lambdas[0]:g}" if b.lambdas else "sft"], extra={"seed": seed})
            tok.save(out_dir / "organizer" / "tokenizer.json")
        eval_rng = random.Random(10_000 + seed)
        sets = {"countdown": (countdown, [countdown.sample(eval_rng) for _ in range(b.n_eval)], base_cd),
                "arithmetic": (arith[1], [arith[1].sample(eval_rng) for _ in range(b.n_eval)], base_ar),
                "heldout_arith4": (heldout, [heldout.sample(eval_rng) for _ in range(b.n_eval)], base_ar)}
        res = {}
        for mname, m in models.items():
            for sname, (task, exs, base) in sets.items():
                res[f"{mname}/{sname}"] = evaluate(m, tok, task, exs, think, base, seed, b.eval_temperature)
        per_seed.append({"seed": seed, "sft_loss_first": sft_loss[0], "sft_loss_last": sft_loss[-1], "eval": res})
        prog.advance()
    prog.close()
    # aggregate over seeds
    keys = per_seed[0]["eval"].keys()
    agg = {k: {meth: {m: float(np.mean([s["eval"][k][meth][m] for s in per_seed])) for m in per_seed[0]["eval"][k][meth]}
               for meth in per_seed[0]["eval"][k]} for k in keys}
    main_model = f"rl_lam{b.lambdas[0]:g}" if b.lambdas else "sft"
    cd, ho = agg[f"{main_model}/countdown"], agg[f"{main_model}/heldout_arith4"]
    rows = []
    a, s, p = cd["asyncthink"]["acc"], cd["sequential"]["acc"], cd["parallel"]["acc"]

    def per(key: str, meth: str, metric: str) -> list[float]:  # one value per seed (the shared rule's spread)
        return [e["eval"][key][meth][metric] for e in per_seed]

    cdk = f"{main_model}/countdown"
    # shared rule: a win needs MIN_ACC_GAIN and a seed spread (one seed: at most 'partly'); 0 vs 0 is two failures
    v1 = str(overall([compare(per(cdk, "asyncthink", "acc"), per(cdk, other, "acc"), MIN_ACC_GAIN, fail_at=0.0) for other in ("sequential", "parallel")]))
    rows.append({"claim": "Countdown (multi-solution) accuracy: AsyncThink > parallel and > sequential",
                 "paper": "AsyncThink highest (Table 1)", "ours": f"async {a:.2f} | parallel {p:.2f} | sequential {s:.2f}", "verdict": v1})
    red = 1 - cd["asyncthink"]["latency_mean"] / max(cd["parallel"]["latency_mean"], 1e-9)
    # the paper's -28% is the effect threshold (relative to parallel's mean latency); outside the spread but smaller: partly;
    # parallel more accurate beyond the spread means the latency was bought with accuracy: at most partly
    lat = compare(per(cdk, "asyncthink", "latency_mean"), per(cdk, "parallel", "latency_mean"), 0.28 * cd["parallel"]["latency_mean"],
                  higher_is_better=False)  # fmt: skip
    worse = compare(per(cdk, "parallel", "acc"), per(cdk, "asyncthink", "acc"), MIN_ACC_GAIN).verdict == REPRODUCED
    v2 = PARTLY if lat.verdict == REPRODUCED and worse else lat.verdict
    if not pre["countdown"]["passed"]:  # fork-join cannot be faster even on ground-truth traces here
        v2 = "not testable here"
    rows.append({"claim": "Countdown latency vs parallel thinking at equal or better accuracy",
                 "paper": "-28% latency", "ours": f"{-100 * red:+.0f}% latency (async {cd['asyncthink']['latency_mean']:.1f} vs parallel "
                 f"{cd['parallel']['latency_mean']:.1f} steps), acc {a:.2f} vs {p:.2f}; precondition: ground-truth fork-join / parallel "
                 f"= {pre['countdown']['best_ratio']:.2f} (needs <= 0.70)", "verdict": v2})
    ha, hs = ho["asyncthink"]["acc"], ho["sequential"]["acc"]
    per_ho = [s["eval"][f"{main_model}/heldout_arith4"] for s in per_seed]  # shared rule: 0.00 vs 0.00 is two failures
    v3 = compare([e["asyncthink"]["acc"] for e in per_ho], [e["sequential"]["acc"] for e in per_ho], min_effect=0.0, fail_at=0.0).verdict
    rows.append({"claim": "Generalization to an unseen task (4-expression arithmetic, trained on 2-3)",
                 "paper": "AsyncThink generalizes (Sudoku, Sec. 4.3)",
                 "ours": f"async acc {ha:.2f} (format ok {ho['asyncthink']['format_ok']:.2f}, eta {ho['asyncthink']['eta']:.2f}) vs sequential {hs:.2f}",
                 "verdict": v3})
    if len(b.lambdas) > 1 and 0.0 in b.lambdas:  # ablation (Sec. 4.4): the concurrency reward raises eta
        lam_on = f"rl_lam{b.lambdas[0]:g}/countdown"
        e_on, e_off = agg[lam_on]["asyncthink"]["eta"], agg["rl_lam0/countdown"]["asyncthink"]["eta"]
        f_on, f_off = agg[lam_on]["asyncthink"]["forks"], agg["rl_lam0/countdown"]["asyncthink"]["forks"]
        v4 = compare(per(lam_on, "asyncthink", "eta"), per("rl_lam0/countdown", "asyncthink", "eta"), MIN_ETA_GAIN).verdict
        rows.append({"claim": f"Concurrency reward (lambda={b.lambdas[0]:g} vs 0) raises eta on Countdown",
                     "paper": "removing it lowers concurrency (ablation, Sec. 4.4)",
                     "ours": f"eta {e_on:.2f} vs {e_off:.2f}; forks/question {f_on:.2f} vs {f_off:.2f}", "verdict": v4})
    verdict = overall([r["verdict"] for r in rows])
    plots = _plot(agg, out_dir) + _plot_rl(rl_curves, out_dir)
    notes = (f"budget {budget}, seeds {list(b.seeds)}; model dim {b.dim} x {b.n_layers} layers, char tokenizer with protocol tags; "
             f"SFT {b.sft_steps} steps on {b.n_sft} questions/task; RL {b.rl_steps} steps per lambda in {list(b.lambdas)} (tau {TAU}, c {CAPACITY}); "
             f"{b.n_eval} test questions per task; claims use model '{main_model}'. Latency is the fork-join critical path in decode steps; "
             f"parallel = {CAPACITY - 1} samples (union on Countdown, vote on arithmetic); every method at T={b.eval_temperature:g}, "
             f"per-sample budget {think.max_org_tokens} tokens (organizer, sequential and each parallel sample). "
             f"Total wall {time.perf_counter() - t_start:.0f}s.")
    result = {"name": "asyncthink", "claim": CLAIM, "verdict": verdict, "rows": rows, "plots": plots, "notes": notes,
              "metrics": {"eval": agg, "per_seed": per_seed, "rl": rl_curves, "precondition": pre}}
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _plot(agg: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({k.split("/")[1] for k in agg})
    models = sorted({k.split("/")[0] for k in agg})
    cols = min(2, len(tasks))  # at most 2 panels per row: legible at the report's width
    fig, axes = plt.subplots(-(-len(tasks) // cols), cols, figsize=(6 * cols, 4.4 * -(-len(tasks) // cols)), squeeze=False)
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    axes = [list(axes.ravel())]
    colors = {"asyncthink": "tab:red", "parallel": "tab:blue", "sequential": "tab:green"}
    markers = ["o", "s", "^", "D", "v"]
    for ax, t in zip(axes[0], tasks):
        for mi, m in enumerate(models):
            for meth, c in colors.items():
                r = agg[f"{m}/{t}"][meth]
                ax.scatter(r["latency_mean"], r["acc"], color=c, marker=markers[mi % len(markers)], label=f"{meth} ({m})")
        ax.set_title(t)
        ax.set_xlabel("critical-path latency (decode steps)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "asyncthink_acc_vs_latency.png", dpi=110)
    plt.close(fig)
    return ["asyncthink_acc_vs_latency.png"]


def _plot_rl(curves: dict[str, list], out_dir: Path) -> list[str]:
    """RL training curves (reward, accuracy, eta, latency per step) of every (seed, lambda) run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["rollout/reward_mean", "rollout/acc_mean", "rollout/eta_mean", "rollout/latency_mean"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.4))  # 2 x 2: each panel legible at the report's width
    axes = [list(axes.ravel())]
    for ax, k in zip(axes[0], keys):
        for name, hist in curves.items():
            ax.plot([h["step"] for h in hist], [h[k] for h in hist], label=name, lw=1)
        ax.set_title(k.split("/")[1])
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "asyncthink_rl_curves.png", dpi=110)
    plt.close(fig)
    return ["asyncthink_rl_curves.png"]

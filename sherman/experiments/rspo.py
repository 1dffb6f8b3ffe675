"""RSPO reproduction: router-aware importance sampling stabilises off-policy RL on Mixture-of-Experts models
(arXiv 2510.23027).

Paper (Sec. 3): in an MoE policy the router itself drifts between the rollout policy and the policy being updated,
so token importance ratios become noisy and clipping-based methods (GRPO) can collapse. RSPO rescales each token's
ratio by the router-shift weight `gamma = exp(-mean_{layers, top-k old experts} |log p_new(e) - log p_old(e)|)`
(stop-gradient, floored) on top of GMPO's geometric-mean objective; the paper reports stabler training curves.

Setup here (CPU, tiny scale): a tiny MoE model (8 experts, top-2, 2 MoE layers) SFT-warmed on Countdown over 3
numbers with a scratchpad (reward 1 iff the expression is valid and hits the target), then RL in a deliberately
off-policy regime: `epochs * mini_batches` = 2 x 4 = 8 optimizer steps per rollout batch at twice the OPO
experiment's learning rate. Arms: grpo, grpo+rs (the router-shift switch on GRPO), gspo, gmpo, rspo (= gmpo + rs); no KL term
in any arm; several seeds per arm (RL seeds; the warm start is shared).

Measured per run: rollout-reward curve, held-out pass@1 at the end, collapse (the mean rollout reward over the last
quarter of training falls below half of the mean over the first two iterations), clip fraction, router-shift
statistics (gamma mean / 5th percentile, fraction of routing decisions whose top-k set changed), router entropy.

Run: `sherman reproduce rspo --budget quick`.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from sherman.core.tokenizer import CharTokenizer
from sherman.experiments.opo import _tail_mean, fmt, mean_sd, plot_curves, run_arm, warm_start
from sherman.rl.grpo import evaluate, preset_config
from sherman.tasks import get_task

CLAIM = (
    "RSPO (arXiv 2510.23027, Sec. 3-4): rescaling importance ratios by the router shift between the old and new MoE "
    "router stabilises off-policy RL on MoE models where GRPO collapses."
)

BUDGETS = {
    "smoke": dict(sft_steps=10, rl_steps=2, prompts=2, group=4, seeds=(0,), eval_prompts=2, eval_samples=4, max_new=12, dim=32),
    "quick": dict(sft_steps=400, rl_steps=30, prompts=8, group=8, seeds=(0, 1, 2), eval_prompts=96, eval_samples=4, max_new=24, dim=64),
    "full": dict(sft_steps=1000, rl_steps=120, prompts=16, group=8, seeds=(0, 1, 2, 3, 4), eval_prompts=300, eval_samples=8, max_new=24, dim=96),
}  # fmt: skip

TASK_NAME = "countdown"
TASK_CFG = dict(min_numbers=3, max_numbers=3, max_number=9, scratchpad=True)
N_EXPERTS, TOP_K = 8, 2
RL_LR = 6e-4
OFF_POLICY = dict(mini_batches=4, epochs=2)
GAMMA_MIN = 0.0


def arms(b: dict) -> dict:
    common = dict(
        steps=b["rl_steps"], prompts_per_step=b["prompts"], group_size=b["group"], max_new_tokens=b["max_new"], lr=RL_LR, kl_coef=0.0,
        gamma_min=GAMMA_MIN, **OFF_POLICY,
    )  # fmt: skip
    return {
        "grpo": preset_config("grpo", **common),
        "grpo+rs": preset_config("grpo", router_shift=True, **common),
        "gspo": preset_config("gspo", **common),
        "gmpo": preset_config("gmpo", **common),
        "rspo": preset_config("rspo", **common),
    }


def collapsed(curve: list[float]) -> bool:
    """Mean reward over the last quarter < half the mean over the first two iterations."""
    start = statistics.fmean(curve[: min(2, len(curve))])
    end = statistics.fmean(curve[-max(1, len(curve) // 4) :])
    return start > 0 and end < 0.5 * start


def run(budget: str, out_dir: Path) -> dict:
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    return _run(budget, Path(out_dir))  # thread count: `sherman reproduce --threads` (default 1)


def _run(budget: str, out_dir: Path) -> dict:
    b = BUDGETS[budget]
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    task = get_task(TASK_NAME, **TASK_CFG)
    tok = CharTokenizer(task.alphabet())
    model0 = warm_start(task, tok, b, n_experts=N_EXPERTS, top_k=TOP_K)
    rng = random.Random(777)
    held = [task.sample(rng) for _ in range(b["eval_prompts"])]
    k = b["eval_samples"]
    init_eval = evaluate(model0, task, tok, held, n_samples=k, ks=(1, k), max_new_tokens=b["max_new"])

    results: dict[str, list[dict]] = {}
    for arm, cfg in arms(b).items():
        runs = []
        for s in b["seeds"]:
            r = run_arm(model0, task, tok, cfg, s, held, b)
            r["collapsed"] = collapsed(r["reward_curve"])
            for key in ("moe/gamma_mean", "moe/gamma_p5", "moe/topk_changed_frac", "moe/router_entropy"):
                r[key] = _tail_mean(r["history"], key)
            r["final_reward"] = statistics.fmean(r["reward_curve"][-max(1, len(r["reward_curve"]) // 4) :])
            runs.append(r)
        results[arm] = runs

    def col(arm: str, key: str) -> list[float]:
        return [float(r[key]) for r in results[arm]]

    def crate(arm: str) -> str:
        c = sum(r["collapsed"] for r in results[arm])
        return f"{c}/{len(results[arm])}"

    summary = "; ".join(
        f"{a}: collapsed {crate(a)}, final reward {fmt(col(a, 'final_reward'))}, pass@1 {fmt(col(a, 'pass@1'))}, "
        f"clip {fmt(col(a, 'clip_frac'))}, gamma mean {fmt(col(a, 'moe/gamma_mean'))} p5 {fmt(col(a, 'moe/gamma_p5'))}, "
        f"top-k changed {fmt(col(a, 'moe/topk_changed_frac'))}"
        for a in results
    )
    n_collapse = {a: sum(r["collapsed"] for r in results[a]) for a in results}
    fr = {a: statistics.fmean(col(a, "final_reward")) for a in results}
    p1 = {a: statistics.fmean(col(a, "pass@1")) for a in results}

    def better(a: str, b: str) -> bool:
        """a beats b: at least 2 fewer collapsed seeds, or no more collapses and a final reward higher by more than the
        noise, max(0.02, either arm's seed std). (With 3 seeds a single collapse more or less is not evidence.)"""
        margin = max(0.02, mean_sd(col(a, "final_reward"))[1], mean_sd(col(b, "final_reward"))[1])
        return n_collapse[b] - n_collapse[a] >= 2 or (n_collapse[a] <= n_collapse[b] and fr[a] - fr[b] > margin)

    grpo_collapses = n_collapse["grpo"] > 0
    rspo_stable = better("rspo", "grpo") and fr["rspo"] >= fr["grpo"]
    rs_helps_grpo = better("grpo+rs", "grpo")
    rs_helps_gmpo = better("rspo", "gmpo")
    rows = [
        {
            "claim": "GRPO collapses on an MoE model in an off-policy regime; RSPO does not (fewer collapses, higher final reward)",
            "paper": "GRPO unstable / collapses on MoE; RSPO trains stably (Figs. 1, 3)",
            "ours": (
                f"collapsed GRPO {crate('grpo')}, RSPO {crate('rspo')}; final rollout reward GRPO {fmt(col('grpo', 'final_reward'))}, "
                f"RSPO {fmt(col('rspo', 'final_reward'))}; held-out pass@1 GRPO {p1['grpo']:.3f}, RSPO {p1['rspo']:.3f} "
                f"(warm start {init_eval['eval/pass@1']:.3f})"
            ),
            "verdict": "reproduced" if grpo_collapses and rspo_stable else "partly" if rspo_stable else "not reproduced",
        },
        {
            "claim": "the router-shift weight alone stabilises GRPO (GRPO+RS vs GRPO)",
            "paper": "router-aware IS helps GRPO/GSPO as a plug-in",
            "ours": f"collapsed GRPO {crate('grpo')} vs GRPO+RS {crate('grpo+rs')}; final reward {fr['grpo']:.3f} vs {fr['grpo+rs']:.3f}",
            "verdict": "reproduced" if rs_helps_grpo else "not reproduced",
        },
        {
            "claim": "router shift improves over GMPO without it (RSPO vs GMPO)",
            "paper": "RSPO > GMPO (ablation)",
            "ours": f"collapsed GMPO {crate('gmpo')} vs RSPO {crate('rspo')}; final reward {fr['gmpo']:.3f} vs {fr['rspo']:.3f}",
            "verdict": "reproduced" if rs_helps_gmpo else "not reproduced",
        },
    ]
    n_ok = sum(r["verdict"] == "reproduced" for r in rows)
    n_part = sum(r["verdict"] == "partly" for r in rows)
    verdict = "reproduced" if n_ok == len(rows) else "not reproduced" if n_ok + n_part == 0 else "partly"
    curves = [("reward_curve", "rollout reward"), ("kl_curve", "KL to init (k3)"), ("entropy_curve", "token entropy")]
    plot_curves(
        results, curves, out_dir / "rspo_curves.png", f"MoE ({N_EXPERTS} experts, top-{TOP_K}) off-policy RL, seeds {list(b['seeds'])}"
    )
    notes = (
        f"Tiny MoE (dim {b['dim']}, 2 layers, {N_EXPERTS} experts, top-{TOP_K}) SFT-warmed {b['sft_steps']} steps on {TASK_NAME} {TASK_CFG}; "
        f"RL {b['rl_steps']} iterations x {b['prompts']} prompts x G={b['group']}, {OFF_POLICY['epochs'] * OFF_POLICY['mini_batches']} "
        f"optimizer steps per batch, lr {RL_LR}, gamma_min {GAMMA_MIN}, no KL; seeds {list(b['seeds'])}. Per arm: {summary}. "
        f"Wall time {time.time() - t_start:.0f} s."
    )
    metrics = {
        "init_eval": init_eval,
        "arms": {a: [{kk: v for kk, v in r.items() if kk != "history"} for r in runs] for a, runs in results.items()},
        "budget": budget,
    }
    out = {
        "name": "rspo",
        "claim": CLAIM,
        "verdict": verdict,
        "rows": rows,
        "plots": ["rspo_curves.png"],
        "notes": notes,
        "metrics": metrics,
    }
    (out_dir / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out

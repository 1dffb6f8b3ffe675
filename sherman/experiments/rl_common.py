"""Shared pieces of the RL reproductions (`opo`, `rspo`): warm start, held-out metrics, seed statistics, plots.

Statistics: per-arm values are shown as `mean ± half-width of the 95% t interval` over seeds (`mean_ci`), per-seed
paired differences `d_s = x_s(arm) - x_s(ref)` (same seed, same warm start, same prompt streams) likewise (`paired`).
Verdicts are not decided here: every claim goes through `sherman.experiments.verdict` (an effect threshold and 2
standard errors of the paired difference).
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import torch

from sherman.core.common import seed_everything
from sherman.core.model import Transformer
from sherman.rl import core as C
from sherman.rl.grpo import SamplingParams, rollout, sft_warm_start, shared_prompt_logprobs, stop_ids, tiny_model_config

# two-sided 95% Student t quantiles by degrees of freedom (n - 1)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def warm_start(task, tok, dim: int, sft_steps: int, n_layers: int = 2, n_experts: int = 0, top_k: int = 2, seed: int = 0,
               moe_ffn_dim: int | None = None, ffn_dim: int | None = None, lr: float = 3e-3) -> Transformer:  # fmt: skip
    """A tiny model SFT-trained on the task's traces (the shared starting point of every arm); widths overridable."""
    seed_everything(seed)
    cfg = tiny_model_config(tok.vocab_size, dim, n_layers, n_experts=n_experts, top_k=top_k)
    if moe_ffn_dim is not None:
        cfg.moe_ffn_dim = moe_ffn_dim
    if ffn_dim is not None:
        cfg.ffn_dim = ffn_dim
    model = Transformer(cfg)
    sft_warm_start(model, task, tok, sft_steps, n_examples=4000, batch_size=32, lr=lr, seed=seed)
    return model


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of completions (characters = tokens of the char tokenizer)."""
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def held_out_metrics(model: Transformer, task, tok, held: list, n_samples: int, max_new: int, seed: int = 4321) -> dict[str, float]:
    """On held-out prompts, `n_samples` completions each at T = 1: pass@1, pass@n, the policy's mean token entropy
    along its own samples, and distinct-2/3 among the samples of a prompt (averaged over prompts)."""
    was = model.training
    model.eval()
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, stop_token_ids=stop_ids(tok))
    ro = rollout(model, task, tok, held, n_samples, params, torch.Generator().manual_seed(seed))
    _, logits, _ = shared_prompt_logprobs(model, ro.shared, 1.0, False)  # (B, T, V)
    ent = float(C.masked_mean(C.entropy_from_logits(logits), ro.shared.comp_mask))
    model.train(was)
    ok = (ro.rewards >= 1.0).float().view(len(held), n_samples)  # (P, n)
    groups = [ro.texts[i : i + n_samples] for i in range(0, len(ro.texts), n_samples)]
    return {
        "pass@1": float(ok.mean()),
        f"pass@{n_samples}": float(ok.amax(-1).mean()),
        "entropy": ent,
        "distinct2": statistics.fmean(distinct_n(g, 2) for g in groups),
        "distinct3": statistics.fmean(distinct_n(g, 3) for g in groups),
        "len": float(ro.lengths.mean()),
    }


def held_out_prompts(task, n: int, seed: int = 777) -> list:
    """Prompts drawn from a stream no RL run uses (RL streams are seeded '<seed>-<rank>-<step>')."""
    rng = random.Random(seed)
    return [task.sample(rng) for _ in range(n)]


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% t interval (0 with one value)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, _T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Per-seed paired difference a - b: (mean, 95% CI half-width)."""
    assert len(a) == len(b), "paired differences need the same seeds"
    return mean_ci([x - y for x, y in zip(a, b)])


def fmt_ci(xs: list[float], p: int = 3) -> str:
    m, h = mean_ci(xs)
    return f"{m:.{p}f} ± {h:.{p}f}"


def smooth(xs: list[float], w: int = 5) -> list[float]:
    """Trailing moving average (window w)."""
    return [statistics.fmean(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]


def tail_mean(xs: list[float], frac: float = 0.25) -> float:
    vals = [x for x in xs if x == x]
    return statistics.fmean(vals[-max(1, int(len(vals) * frac)) :]) if vals else float("nan")


def plot_curves(curves: dict[str, list[list[float]]], xs: dict[str, list[float]] | None, path: Path, title: str, ylabel: str,
                xlabel: str = "optimizer step") -> None:  # fmt: skip
    """One line per arm (mean over seeds) with a min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for arm, runs in curves.items():
        n = min(len(c) for c in runs)
        mean = [statistics.fmean(c[i] for c in runs) for i in range(n)]
        lo = [min(c[i] for c in runs) for i in range(n)]
        hi = [max(c[i] for c in runs) for i in range(n)]
        x = xs[arm][:n] if xs else list(range(1, n + 1))
        line = ax.plot(x, mean, label=arm)[0]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""RPT reproduction at tiny scale (Reinforcement Pre-Training, arXiv 2506.08007, Secs. 3-4).

Setup (per seed; every arm starts from the same checkpoint S of that seed):
- corpus: `rpt.generate_corpus` (arithmetic worked examples, partly computable, mixed with a fixed fact table,
  memorised), split by document into train documents (pre-training, proxy, RPT positions) and held-out documents
  (evaluation only); a byte-level BPE trained on the train documents.
- proxy: a smaller model (half the width) pre-trained on the train documents; its top-16 entropy selects the RPT
  training positions (above the median) and labels held-out positions easy / medium / hard. At this scale the
  proxy's entropies do not sit on the paper's 0.5 / 1.0 / 1.5 nats, so the split edges are the tertiles of the
  held-out positions' entropies (stated in the notes).
- S: a policy pre-trained with NTP on the train documents, then a format SFT (prompt -> `\\boxed{next token}`) on train
  positions, mixed 1:1 with NTP replay (alone it collapses the tiny policy to one constant prediction): the paper starts from a reasoning model that already writes the format; ours does not.
- arms: RPT (GRPO on-policy, G = 8, T = 0.8, no KL: `rpt.PRESET`, think_tokens = 0, the paper's no-thinking
  ablation, since a tiny model has nothing to think with); NTP on the same documents and NTP on the same selected
  positions, each with the FLOPs of the RPT run (2N per rollout token, 6N per trained token; tokens are counted too);
  and S itself (next-token reasoning without RPT training).

Claims: (1) RPT beats NTP at matched compute on held-out next-token accuracy, most on hard positions; (2) RPT's
accuracy rises with compute along P(C) = A / C^alpha + P* (fit, R^2); (3) an RPT model is a better start for later
RL than a continued-NTP model of equal compute (arithmetic task, same SFT + RL budget for both).
Precondition of claims 1-2: S writes parsable predictions, RPT's rollouts earn some reward, and the format is nearly
free (S's next-token-reasoning accuracy is within `FORMAT_COST_MAX` of the pre-trained model's argmax accuracy before
the format SFT); otherwise RPT starts from a model that lost its next-token knowledge to the format and NTP wins by
relearning plain text, so the comparison cannot test RPT.
Verdict rule: a claim is "reproduced" only when the paired difference over seeds exceeds both the effect threshold
and its spread (sd over seeds); a failed precondition gives "not testable here".
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from sherman.core.model import Transformer
from sherman.rl import rpt
from sherman.rl.evaluation import evaluate, sft_warm_start, tiny_model_config
from sherman.rl.grpo import preset_config, rl_train

CLAIM = (
    "RPT (next-token prediction trained as RL with a verifiable prefix-matching reward) improves next-token accuracy over "
    "standard next-token prediction, most on hard tokens, scales with training compute, and gives a better start for "
    "later RL (Dong et al., arXiv 2506.08007, Table 1, Fig. 5 and the RL fine-tuning comparison)"
)

BUDGETS = {
    "smoke": dict(seeds=(0, 1, 2), docs=60, vocab=330, dim=32, proxy_dim=16, base_steps=20, proxy_steps=10, fmt_steps=8,
                  rpt_steps=3, prompts=4, group=4, eval_every=1, held_positions=24, rl_sft_steps=4, rl_steps=1, rl_eval=4,
                  batch=8),
    "quick": dict(seeds=(0, 1, 2), docs=400, vocab=400, dim=64, proxy_dim=32, base_steps=300, proxy_steps=200, fmt_steps=600,
                  rpt_steps=30, prompts=8, group=8, eval_every=6, held_positions=150, rl_sft_steps=60, rl_steps=12, rl_eval=48,
                  batch=16),
    "full": dict(seeds=(0, 1, 2, 3, 4), docs=2000, vocab=600, dim=128, proxy_dim=64, base_steps=1500, proxy_steps=800, fmt_steps=1500,
                 rpt_steps=200, prompts=16, group=8, eval_every=20, held_positions=600, rl_sft_steps=200, rl_steps=60, rl_eval=128,
                 batch=32),
}  # fmt: skip

LR = 3e-3
"""Learning rate of pre-training, format SFT and the NTP arms."""
RPT_LR = 1e-3
"""Learning rate of RPT."""
FORMAT_COST_MAX = 0.05
"""Precondition: the format SFT may cost at most this much held-out next-token accuracy (pre-trained argmax -> S by
next-token reasoning); beyond it the claims are not testable here."""
RL_TASK = dict(min_digits=1, max_digits=2, ops="+")
"""Arithmetic task of claim 3."""


def mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float], p: int = 3) -> str:
    m, s = mean_sd(xs)
    return f"{m:.{p}f} ± {s:.{p}f}"


def paired_verdict(diffs: list[float], threshold: float) -> str:
    """'reproduced' when the mean paired difference exceeds the threshold and its sd over seeds, else 'not reproduced'."""
    m, s = mean_sd(diffs)
    return "reproduced" if m > threshold and m > s else "not reproduced"


def fit_power_law(c: list[float], p: list[float]) -> dict:
    """Fit P(C) = A / C^alpha + P* (least squares, scipy) -> {A, alpha, P*, r2}; C normalised by its first value."""
    import numpy as np
    from scipy.optimize import curve_fit

    x = np.asarray(c, dtype=float) / c[0]
    y = np.asarray(p, dtype=float)

    def f(x, a, alpha, pstar):
        return a / np.power(x, alpha) + pstar

    try:
        (a, alpha, pstar), _ = curve_fit(f, x, y, p0=(y[0] - y[-1], 0.5, y[-1]), bounds=([-2, 0.0, -1], [2, 5.0, 2]), maxfev=20000)
    except (RuntimeError, ValueError):
        return {"A": float("nan"), "alpha": float("nan"), "P*": float("nan"), "r2": float("nan")}
    res = y - f(x, a, alpha, pstar)
    tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (res**2).sum() / tot if tot > 0 else float("nan")
    return {"A": float(a), "alpha": float(alpha), "P*": float(pstar), "r2": float(r2)}


def _model(vocab: int, dim: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_model_config(vocab, dim=dim, n_layers=2, n_heads=4 if dim >= 32 else 2, n_kv_heads=2 if dim >= 32 else 1, max_seq_len=160))


def _eval(model, task: rpt.RPTTask, held_idx: list[int], cfg: rpt.RPTConfig) -> dict:
    out = rpt.reasoning_accuracy(model, task, held_idx)
    out.update(rpt.ntp_accuracy(model, task.tok, task.docs, [task.positions[i] for i in held_idx], cfg))
    return out


def _best(e: dict, split: str) -> float:
    """An arm's accuracy in its better mode (plain argmax NTP or next-token reasoning)."""
    vals = [v for v in (e[f"ntp/{split}"], e[f"reason/{split}"]) if not math.isnan(v)]
    return max(vals) if vals else float("nan")


def run_seed(seed: int, b: dict, shared: dict) -> dict:
    tok, train_docs, held_task, train_pos, cfg = shared["tok"], shared["train_docs"], shared["held_task"], shared["train_pos"], shared["cfg"]
    held_idx = shared["held_idx"]
    # S: NTP pre-training then format SFT on train positions
    s_model = _model(tok.vocab_size, b["dim"], seed)
    rpt.ntp_train(s_model, rpt.lm_data(train_docs, tok.bos_id), b["base_steps"], b["batch"], LR, seed, tok.pad_id)
    base = rpt.ntp_accuracy(s_model, tok, held_task.docs, [held_task.positions[i] for i in held_idx], cfg)  # before the format SFT
    task = rpt.RPTTask(tok, train_docs, train_pos, cfg)
    rng = random.Random(seed)
    # format SFT mixed 1:1 with NTP replay on the train documents: alone, it collapses the tiny policy to the most
    # frequent token after the opener (measured: reasoning accuracy 0.06 vs 0.78 argmax before it); the replay keeps
    # the next-token knowledge the format must carry (one pass over distinct positions: nothing repeats to memorise)
    fmt_idx = rng.sample(range(len(train_pos)), min(len(train_pos), max(1, b["fmt_steps"] * b["batch"] // 2)))
    fmt_data = rpt.format_sft_data(task, fmt_idx)
    replay = rpt.lm_data(train_docs, tok.bos_id)
    rng.shuffle(replay)
    fmt_data += [replay[i % len(replay)] for i in range(len(fmt_data))]
    rng.shuffle(fmt_data)
    rpt.ntp_train(s_model, fmt_data, b["fmt_steps"], b["batch"], LR, seed, tok.pad_id, warmup=0)
    s_state = {k: v.clone() for k, v in s_model.state_dict().items()}
    n = rpt.n_params(s_model)
    evals = {"S": _eval(s_model, held_task, held_idx, cfg), "base": base}

    # RPT, with an accuracy-vs-compute curve
    policy = _model(tok.vocab_size, b["dim"], seed)
    policy.load_state_dict(s_state)
    cost = {"flops": 0.0, "tokens": 0}
    curve: list[dict] = []
    seen = {"prompt": 0}

    def on_step(step: int, row: dict) -> None:
        p_tok = task.prompt_tokens_seen - seen["prompt"]  # each group's prompt runs once in prefill and in the log-prob pass
        seen["prompt"] = task.prompt_tokens_seen
        c_tok = int(row["rollout/len_mean"] * b["prompts"] * b["group"])
        f, t = rpt.rpt_step_cost(n, p_tok, c_tok)
        cost["flops"] += f
        cost["tokens"] += t
        if step % b["eval_every"] == 0 or step == b["rpt_steps"]:
            curve.append({"step": step, "flops": cost["flops"], "tokens": cost["tokens"], **_eval(policy, held_task, held_idx, cfg)})

    rc = preset_config("opo", **{**rpt.PRESET, "steps": b["rpt_steps"], "prompts_per_step": b["prompts"], "group_size": b["group"],
                                 "max_new_tokens": cfg.max_new_tokens, "lr": RPT_LR, "track_kl_to_init": False, "seed": seed})  # fmt: skip
    res = rl_train(policy, task, tok, rc, callback=on_step)
    evals["RPT"] = curve[-1]
    reward_curve = [r["rollout/reward_mean"] for r in res.history]

    # NTP baselines at the RPT run's FLOPs
    arms_cost = {}
    for arm, data in (("NTP-docs", rpt.lm_data(train_docs, tok.bos_id)), ("NTP-positions", rpt.lm_data(train_docs, tok.bos_id, train_pos))):
        tokens_per_step = b["batch"] * statistics.fmean(len(x.ids) - 1 for x in data)
        steps = max(1, round(cost["flops"] / rpt.ntp_step_cost(n, int(tokens_per_step))[0]))
        m = _model(tok.vocab_size, b["dim"], seed)
        m.load_state_dict(s_state)
        rpt.ntp_train(m, data, steps, b["batch"], LR, seed, tok.pad_id, warmup=0)
        f, t = rpt.ntp_step_cost(n, int(tokens_per_step * steps))
        arms_cost[arm] = {"steps": steps, "flops": f, "tokens": t}
        evals[arm] = _eval(m, held_task, held_idx, cfg)
        if arm == "NTP-docs":
            ntp_model = m

    # claim 3: the same SFT + RL budget on arithmetic from the RPT and NTP-docs models
    from sherman.tasks import get_task

    ar = get_task("arithmetic", **RL_TASK)
    held_rng = random.Random(5000 + seed)
    held_ar = [ar.sample(held_rng) for _ in range(b["rl_eval"])]
    later = {}
    for arm, m in (("RPT", policy), ("NTP-docs", ntp_model)):
        sft_warm_start(m, ar, tok, b["rl_sft_steps"], n_examples=500, batch_size=b["batch"], lr=LR, seed=seed)
        before = evaluate(m, ar, tok, held_ar, n_samples=4, ks=(1,), max_new_tokens=24, seed=seed)["eval/pass@1"]
        rl_cfg = preset_config("opo", steps=b["rl_steps"], prompts_per_step=b["prompts"], group_size=b["group"], max_new_tokens=24,
                               lr=RPT_LR, track_kl_to_init=False, seed=seed)  # fmt: skip
        rl_train(m, ar, tok, rl_cfg)
        after = evaluate(m, ar, tok, held_ar, n_samples=4, ks=(1,), max_new_tokens=24, seed=seed)["eval/pass@1"]
        later[arm] = {"before_rl": before, "after_rl": after}

    return {"seed": seed, "evals": evals, "curve": curve, "reward_curve": reward_curve, "rpt_cost": dict(cost), "ntp_cost": arms_cost,
            "later_rl": later, "malformed": dict(task.malformed), "n_params": n}  # fmt: skip


def _plots(results: list[dict], fits: list[dict], out_dir: Path, b: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.4))  # 2 x 2: each panel legible at the report's width
    axes = axes.ravel()
    for ax, split in zip(axes, ("easy", "medium", "hard", "all")):
        for r in results:
            c = [p["flops"] for p in r["curve"]]
            ax.plot(c, [p[f"reason/{split}"] for p in r["curve"]], "o-", color="C0", alpha=0.6, label="RPT" if r is results[0] else None)
            for arm, col in (("NTP-docs", "C1"), ("NTP-positions", "C2")):
                ax.plot([r["ntp_cost"][arm]["flops"]], [_best(r["evals"][arm], split)], "s", color=col, label=arm if r is results[0] else None)
        ax.set_title(f"{split} positions")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("held-out next-token accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"RPT vs NTP at matched FLOPs, seeds {list(b['seeds'])}")
    fig.tight_layout()
    fig.savefig(out_dir / "rpt_accuracy_vs_compute.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for r, f in zip(results, fits):
        c = np.array([p["flops"] for p in r["curve"]])
        y = [p["reason/all"] for p in r["curve"]]
        ax.plot(c, y, "o", label=f"seed {r['seed']}")
        if not math.isnan(f["r2"]):
            xs = np.linspace(c[0], c[-1], 50)
            ax.plot(xs, f["A"] / np.power(xs / c[0], f["alpha"]) + f["P*"], "-", alpha=0.7)
    ax.set_xlabel("RPT training FLOPs")
    ax.set_ylabel("held-out accuracy (all splits)")
    ax.set_title("P(C) = A / C^alpha + P*")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "rpt_fit.png", dpi=110)
    plt.close(fig)
    return ["rpt_accuracy_vs_compute.png", "rpt_fit.png"]


def run(budget: str, out_dir: Path) -> dict:
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    cfg = rpt.RPTConfig(think_tokens=0, max_pred_tokens=3, min_context=2, threshold=None, quantile=0.5, context_tokens=128)
    texts = rpt.generate_corpus(b["docs"], seed=100)
    n_train = int(0.8 * len(texts))
    tok = rpt.corpus_tokenizer(texts[:n_train], b["vocab"], cfg)
    docs = rpt.tokenize_corpus(texts, tok, 150)
    train_docs, held_docs = docs[:n_train], docs[n_train:]
    # proxy: a smaller model pre-trained on the train documents
    proxy = _model(tok.vocab_size, b["proxy_dim"], 1234)
    rpt.ntp_train(proxy, rpt.lm_data(train_docs, tok.bos_id), b["proxy_steps"], b["batch"], LR, 1234, tok.pad_id)
    ents = rpt.cached_entropies(proxy, docs, tok.bos_id, cfg.top_k, out_dir / "entropy_cache")
    train_pos = rpt.select_positions(ents[:n_train], cfg)
    held_all = [(d - n_train, t, e) for d, t, e in rpt.select_positions(ents, cfg, docs=range(n_train, len(docs)))]
    rng = random.Random(99)
    held_all = rng.sample(held_all, min(len(held_all), b["held_positions"]))
    edges = rpt.quantile_edges([e for _, _, e in held_all])
    cfg = dataclasses.replace(cfg, split_edges=edges)
    held_task = rpt.RPTTask(tok, held_docs, held_all, cfg)
    shared = {"tok": tok, "train_docs": train_docs, "train_pos": train_pos, "held_task": held_task, "held_idx": list(range(len(held_all))), "cfg": cfg}

    results = [run_seed(s, b, shared) for s in b["seeds"]]
    fits = []
    for r in results:
        c = [p["flops"] for p in r["curve"]]
        y = [p["reason/all"] for p in r["curve"]]
        fits.append(fit_power_law(c, y) if len(c) >= 4 else {"A": float("nan"), "alpha": float("nan"), "P*": float("nan"), "r2": float("nan")})

    def col(arm: str, key: str) -> list[float]:
        return [r["evals"][arm][key] for r in results]

    def best_col(arm: str, split: str) -> list[float]:
        return [_best(r["evals"][arm], split) for r in results]

    # precondition: S writes parsable predictions and RPT's rollouts carry a learning signal
    s_wellformed = [1 - r["evals"]["S"]["reason/malformed"] for r in results]
    signal = [max(r["reward_curve"]) > 0 for r in results]
    # ... and the format is nearly free: S predicts by next-token reasoning about as well as the pre-trained model did by
    # argmax before the format SFT (else RPT would start from a model that lost its next-token knowledge to the format,
    # and NTP would win by relearning plain text, whatever RPT does)
    base_acc, s_reason = col("base", "ntp/all"), col("S", "reason/all")
    format_cost = [a - r for a, r in zip(base_acc, s_reason)]
    pre_fmt = statistics.fmean(format_cost) <= FORMAT_COST_MAX
    pre1 = statistics.fmean(s_wellformed) >= 0.5 and all(signal) and pre_fmt
    rows = []
    thr = 0.02
    diffs = {s: [a - max(bd, bp) for a, bd, bp in zip(col("RPT", f"reason/{s}"), best_col("NTP-docs", s), best_col("NTP-positions", s))] for s in ("easy", "medium", "hard", "all")}
    v1 = paired_verdict(diffs["all"], thr)
    if v1 == "reproduced" and mean_sd(diffs["hard"])[0] < max(mean_sd(diffs["easy"])[0], mean_sd(diffs["medium"])[0]):
        v1 = "partly"
    rows.append({
        "claim": "RPT beats NTP at matched FLOPs on held-out next-token accuracy, most on hard positions",
        "paper": "R1-Distill-14B: NTP 20.43 vs RPT 23.75 on hard (Table 1)",
        "ours": (f"all: RPT {fmt(col('RPT', 'reason/all'))} vs NTP-docs {fmt(best_col('NTP-docs', 'all'))}, NTP-positions "
                 f"{fmt(best_col('NTP-positions', 'all'))}, S {fmt(best_col('S', 'all'))}; hard: RPT {fmt(col('RPT', 'reason/hard'))} vs "
                 f"NTP-docs {fmt(best_col('NTP-docs', 'hard'))}, NTP-positions {fmt(best_col('NTP-positions', 'hard'))}; paired RPT - best NTP: "
                 + ", ".join(f"{s} {fmt(diffs[s])}" for s in ("easy", "medium", "hard", "all"))),
        "verdict": v1 if pre1 else "not testable here",
        "precondition": (f"S well-formed >= 0.5 ({fmt(s_wellformed)}), RPT rollout reward > 0 in every seed ({signal}), and the format costs <= "
                         f"{FORMAT_COST_MAX} accuracy (pre-trained argmax {fmt(base_acc)} -> S by reasoning {fmt(s_reason)}: cost {fmt(format_cost)}): {pre1}"),
    })  # fmt: skip
    r2 = [f["r2"] for f in fits]
    rises = [r["curve"][-1]["reason/all"] - r["curve"][0]["reason/all"] for r in results]
    pre2 = all(len(r["curve"]) >= 4 for r in results) and pre1
    m_r2 = mean_sd(r2)[0]
    v2 = "reproduced" if (paired_verdict(rises, thr) == "reproduced" and not math.isnan(m_r2) and m_r2 >= 0.8) else "not reproduced"
    rows.append({
        "claim": "RPT accuracy rises with training compute along P(C) = A / C^alpha + P*",
        "paper": "accuracy follows the fitted power law closely on every split (Fig. 5)",
        "ours": f"accuracy rise first -> last eval {fmt(rises)}; fit R^2 {fmt(r2)}, alpha {fmt([f['alpha'] for f in fits])}, P* {fmt([f['P*'] for f in fits])}",
        "verdict": v2 if pre2 else "not testable here",
        "precondition": f">= 4 evaluation points per seed and claim 1's precondition: {pre2}",
    })  # fmt: skip
    l_rpt = [r["later_rl"]["RPT"]["after_rl"] for r in results]
    l_ntp = [r["later_rl"]["NTP-docs"]["after_rl"] for r in results]
    d3 = [a - c for a, c in zip(l_rpt, l_ntp)]
    pre3 = any(r["later_rl"][a]["before_rl"] > 0 for r in results for a in ("RPT", "NTP-docs"))
    rows.append({
        "claim": "an RPT model is a better start for later RL than a continued-NTP model of equal compute",
        "paper": "RL from RPT-14B ends higher than RL from the base model and from continued NTP (its RL fine-tuning table)",
        "ours": (f"arithmetic pass@1 after the same SFT + RL: RPT {fmt(l_rpt)} vs NTP-docs {fmt(l_ntp)} (paired {fmt(d3)}); before RL: RPT "
                 f"{fmt([r['later_rl']['RPT']['before_rl'] for r in results])}, NTP {fmt([r['later_rl']['NTP-docs']['before_rl'] for r in results])}"),
        "verdict": paired_verdict(d3, thr) if pre3 else "not testable here",
        "precondition": f"some arm solves an arithmetic prompt before RL (reward signal): {pre3}",
    })  # fmt: skip
    for r in rows:  # the report shows `ours`: the precondition goes with it
        r["ours"] += f" [precondition: {r['precondition']}]"
    vs = [r["verdict"] for r in rows]
    if all(v == "reproduced" for v in vs):
        verdict = "reproduced"
    elif "reproduced" in vs or "partly" in vs:
        verdict = "partly"
    elif all(v == "not testable here" for v in vs):
        verdict = "not testable here"  # every precondition failed: nothing was tested
    else:
        verdict = "not reproduced"
    plots = _plots(results, fits, out_dir, b)
    mal = sum((Counter(r["malformed"]) for r in results), Counter())
    notes = (
        f"Budget {budget}; seeds {list(b['seeds'])}; policy dim {b['dim']} x 2 layers ({results[0]['n_params']} params excluding the input embedding), "
        f"proxy dim {b['proxy_dim']}; corpus {b['docs']} generated documents (80% train / 20% held out by document), byte-level BPE "
        f"vocab {tok.vocab_size}; {len(train_pos)} train positions (proxy top-16 entropy >= median), {len(held_all)} held-out positions, "
        f"split edges (held-out entropy tertiles) {tuple(round(e, 3) for e in edges)} nats. S = {b['base_steps']} NTP steps + "
        f"{b['fmt_steps']} format-SFT steps. RPT {b['rpt_steps']} iterations x {b['prompts']} prompts x G={b['group']}, T=0.8, lr {RPT_LR}, "
        f"think_tokens=0. NTP arms matched on FLOPs (2N/token rollout, 6N/token training): steps "
        f"{[r['ntp_cost']['NTP-docs']['steps'] for r in results]} (docs), {[r['ntp_cost']['NTP-positions']['steps'] for r in results]} "
        f"(positions); tokens processed RPT {[r['rpt_cost']['tokens'] for r in results]} vs NTP-docs "
        f"{[r['ntp_cost']['NTP-docs']['tokens'] for r in results]}. NTP arms are scored in their better mode (argmax or reasoning). "
        f"Malformed RPT rollouts: {dict(mal)}. Wall time {time.time() - t_start:.0f} s."
    )
    out = {"name": "rpt", "claim": CLAIM, "verdict": verdict, "rows": rows, "plots": plots, "notes": notes,
           "metrics": {"budget": budget, "seeds": results, "fits": fits, "split_edges": edges}}  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out


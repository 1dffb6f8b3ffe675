"""planning: SFT vs policy gradient vs Q-learning on graph path-finding and Blocksworld (arXiv 2509.22613).

For each task (an Erdős–Rényi DAG and the n-block Blocksworld state graph) and each seed: one SFT
checkpoint of the paper's transformer (1 layer, 1 head, width 120, one token per node), then six
arms from that checkpoint (`sherman.rl.planning`): continual SFT; policy gradient with KL
coefficient 0 / small / large; Q-learning with outcome / process reward. Every arm logs train and
test accuracy, diversity (distinct correct paths among N samples per pair), path entropy and
adjacency recovery; the SFT checkpoint is also probed for transitivity (test pairs whose source
never lies on an SFT path to that target). The four takeaways of the paper are checked one by one.
On Blocksworld three PG ablations run as well (row (5), not part of the overall verdict): a mean baseline, a
discount gamma = 0.9 and a per-step cost 0.05 (`rl/planning.py` `pg_token_weights`), each against PG with KL 0,
reporting test accuracy (sampled and greedy), the stuck fraction and path lengths.

Run: `sherman reproduce planning --budget quick`. Cost measured at be975a4 (1 thread, shared 2-core Intel Xeon at load
3-8): 2149 s CPU, 4019 s wall, for 3 seeds x 2 tasks with every arm; PG costs ~0.12-0.18 s of CPU per step, Q-learning
~0.11-0.16, so training (not evaluation: 0.4-0.8 s per RL-arm eval) dominates. To fit issue 16's bound (opo + rspo +
planning quick within 45 min on an idle 2-core machine) the quick budget skips `pg_kl_small` (no takeaway reads it;
its 6 runs cost 319 s CPU there), leaving ~1830 s CPU; the RL arms are evaluated on the train/test splits only.
Measured at b6f4d43 on the near-idle Intel Xeon (C++ decode kernels, zero-advantage skip, stages in 2 processes): 505 s
CPU, 280 s wall; `reproduce opo rspo planning --budget quick` 8m01s wall in all.
The full budget runs every arm: estimated from the measured step and eval times ~3.6 h of CPU (5 seeds, SFT 1500 steps,
arms 1000 steps, 200 pairs x 16 samples per eval). It is built from ten stages, one per task x seed (`stage`): each
finished stage is stored as JSON (`stage_root()`, or $SHERMAN_ARTIFACTS/planning) under a key of its code, budget
and torch version, so a run cut off by a session's end resumes where it stopped; the repository keeps the finished
full-budget stages in `stages/` (`SHERMAN_ARTIFACTS=stages sherman reproduce planning --budget full` resumes them on
a fresh machine; a stage whose code changed is recomputed, never reused).

Verdicts: every sub-claim goes through `sherman.experiments.verdict` on per-seed values, paired by seed (threshold
named in the code, 2 standard errors); a row is `verdict.overall` of its sub-claims, per task.

What the quick budget showed (be975a4, 3 seeds, means, verdicts by `verdict.py`): (1) SFT solves observed test pairs
far better than unobserved ones (ER 0.90 vs 0.68, Blocksworld 0.42 vs 0.32; adjacency precision 0.98-0.99):
reproduced; (2) PG vs continual SFT on test pairs: ER 0.75 vs 0.74 (+0.007, inside the 2 s.e. spread 0.066), Blocksworld
0.24 vs 0.34 (PG samples never reaching the target 0.70): not reproduced; (3) PG without KL halves diversity (ER 2.56 ->
1.09 distinct correct paths per pair, BW 1.41 -> 0.74), KL 1.0 keeps it (2.31, 1.26) but with no accuracy cost (train
accuracy is higher with KL, BW 0.80 vs 0.38): partly; (4) outcome-reward Q-learning is hacked (train accuracy ER 0.95 ->
0.01, BW 0.90 -> 0.07), process-reward Q-learning keeps diversity (2.27, 1.62) but loses accuracy within 300 steps (ER
0.85, BW 0.46): partly; (5) none of the Blocksworld PG ablations helps plain REINFORCE (test accuracy 0.24): mean
baseline 0.11 (stuck 0.82), discount 0.9 0.27 (+0.03, inside the spread 0.05), step cost 0.20; all stay below
continual SFT (0.34) and the stuck fraction stays 0.68-0.82.

Until e6073db continual SFT restarted AdamW (and its data stream) at every evaluation; since then one optimizer runs
the whole arm (`rl/planning.py` `run_continual_sft`). Rows (1)-(2), the ones that read continual SFT against PG, were
re-measured on a reduced quick run at b18356a (SFT checkpoint, continual SFT and PG KL 0 only, the other rows "not
run here"; 3 seeds, 1 thread, shared 2-core Intel Xeon at load 5.5-6.6: 1058 s wall, 480 s CPU): (1) unchanged,
reproduced (ER 0.90 vs 0.68, +0.22 ± 0.02; BW 0.42 vs 0.32, +0.10 ± 0.07); (2) not reproduced: ER PG 0.80 vs continual
SFT 0.75 (+0.044 inside the 2 s.e. spread 0.069), BW 0.25 vs 0.36 (the other way; PG samples never reaching the target
0.71). Continual SFT moved little (ER 0.74 -> 0.75, BW 0.34 -> 0.36, fix and new numerics together); PG on ER moved more (0.75 -> 0.80)
because the core's numerics changed since be975a4 (the SFT checkpoint's loss differs in the 6th digit), a new draw of
the noise. Rows (3)-(5) are from be975a4 (they read no continual-SFT numbers except (5)'s gap to it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sherman.core.common import print0
from sherman.core.progress import progress
from sherman.experiments import stages
from sherman.experiments import verdict as V
from sherman.experiments.runner import dump_results
from sherman.rl.planning import (
    ArmConfig,
    EvalConfig,
    Evaluator,
    PlanModelConfig,
    planning_model,
    pretrain_sft,
    run_continual_sft,
    run_pg,
    run_q_learning,
)
from sherman.tasks.blocksworld import blocksworld_graph
from sherman.tasks.graphs import DataConfig, GraphConfig, PlanningData, erdos_renyi_dag, make_planning_data

CLAIM = (
    "Wang et al. 2025 (arXiv 2509.22613): on graph path-finding and Blocksworld, SFT learns co-occurrence rather than "
    "transitivity; policy gradient generalises better through exploration but collapses output diversity unless "
    "KL-regularised; Q-learning with process reward plans correctly and keeps diversity while outcome-only reward is hacked."
)


@dataclass
class PlanBudget:
    seeds: int
    """Independent seeds (graph draw, split, init, rollouts)."""
    er_nodes: int
    """Nodes of the Erdős–Rényi DAG."""
    er_edge_prob: float
    """Edge probability of the DAG."""
    blocks: int
    """Blocks of the Blocksworld task."""
    paths_per_pair: int
    """SFT paths per train pair."""
    sft_steps: int
    """Steps of the shared SFT checkpoint (batch 64)."""
    arm_steps: int
    """Steps of every arm from the checkpoint."""
    eval_every: int
    """Evaluation interval of the arms."""
    eval_pairs: int
    """Pairs per evaluated split."""
    eval_samples: int
    """Samples per pair (accuracy, diversity, entropy)."""
    dim: int = 120
    """Model width (the paper's 120)."""
    kl_small: float = 0.1
    """'Small' KL coefficient."""
    kl_large: float = 1.0
    """'Larger' KL coefficient."""
    skip_arms: tuple[str, ...] = ()
    """Arms not run (each arm has its own random streams, so the others' numbers do not change); none a takeaway reads."""


BUDGETS: dict[str, PlanBudget] = {
    "smoke": PlanBudget(seeds=1, er_nodes=20, er_edge_prob=0.25, blocks=3, paths_per_pair=2, sft_steps=30, arm_steps=4, eval_every=2,
                        eval_pairs=8, eval_samples=2, dim=32),
    "quick": PlanBudget(seeds=3, er_nodes=100, er_edge_prob=0.1, blocks=4, paths_per_pair=5, sft_steps=600, arm_steps=300, eval_every=50,
                        eval_pairs=64, eval_samples=8, skip_arms=("pg_kl_small",)),
    "full": PlanBudget(seeds=5, er_nodes=100, er_edge_prob=0.1, blocks=4, paths_per_pair=5, sft_steps=1500, arm_steps=1000, eval_every=100,
                       eval_pairs=200, eval_samples=16),
}

ARMS = ("sft", "pg_kl0", "pg_kl_small", "pg_kl_large", "q_outcome", "q_process")
PG_ABLATIONS = {  # Blocksworld only: each changes one field of PG (KL 0) against `pg_kl0`
    "pg_mean_baseline": dict(pg_baseline="mean"),
    "pg_discount": dict(pg_gamma=0.9),
    "pg_step_cost": dict(pg_step_cost=0.05),
}
LABELS = {"sft": "continual SFT", "pg_kl0": "PG, KL 0", "pg_kl_small": "PG, KL small", "pg_kl_large": "PG, KL large",
          "q_outcome": "Q, outcome reward", "q_process": "Q, process reward", "pg_mean_baseline": "PG, mean baseline",
          "pg_discount": "PG, discount 0.9", "pg_step_cost": "PG, step cost 0.05"}


def make_task(task: str, b: PlanBudget, seed: int) -> PlanningData:
    if task == "er":
        g = erdos_renyi_dag(GraphConfig(n_nodes=b.er_nodes, edge_prob=b.er_edge_prob, seed=seed))
        return make_planning_data(g, DataConfig(paths_per_pair=b.paths_per_pair, path_mode="reach", seed=seed))
    g = blocksworld_graph(b.blocks)
    return make_planning_data(g, DataConfig(paths_per_pair=b.paths_per_pair, path_mode="shortest", seed=seed))


def run_arm(arm: str, base, data: PlanningData, cfg: ArmConfig, ev: Evaluator, b: PlanBudget) -> list[dict]:
    model = copy.deepcopy(base)
    if arm == "sft":
        return run_continual_sft(model, data, cfg, ev)
    if arm in PG_ABLATIONS:
        return run_pg(model, base, data, replace(cfg, **PG_ABLATIONS[arm]), 0.0, ev)
    if arm.startswith("pg"):
        coef = {"pg_kl0": 0.0, "pg_kl_small": b.kl_small, "pg_kl_large": b.kl_large}[arm]
        return run_pg(model, base, data, cfg, coef, ev)
    return run_q_learning(model, data, cfg, arm.split("_")[1], ev)


def run_seed(task: str, b: PlanBudget, seed: int) -> dict:
    """SFT checkpoint + every arm on one task and seed; returns {'sft0': metrics, 'arms': {arm: history}, ...}."""
    data = make_task(task, b, seed)
    max_len = 16
    ev = Evaluator(data, EvalConfig(n_samples=b.eval_samples, max_pairs=b.eval_pairs), max_len=max_len, seed=seed)
    base = planning_model(data.vocab_size, PlanModelConfig(dim=b.dim, ffn_dim=4 * b.dim), seed=seed)
    t0, c0 = time.time(), time.process_time()
    sft_hist = pretrain_sft(base, data, b.sft_steps, seed=seed)
    sft0 = ev(base, 1.0)
    print0(f"  [{task} seed {seed}] SFT {b.sft_steps} steps loss {sft_hist[-1]['loss/train']:.3f} "
           f"({time.time() - t0:.0f}s wall, {time.process_time() - c0:.0f}s cpu): "
           f"train {sft0['acc/train']:.2f} test {sft0['acc/test']:.2f}")
    cfg = ArmConfig(steps=b.arm_steps, eval_every=b.eval_every, max_len=max_len, seed=seed)
    ev_rl = ev.only(("train", "test"))  # the takeaways read test_obs / test_unobs only from SFT; ~half the RL arms' eval time
    arms = {}
    for arm in [a for a in ARMS + (tuple(PG_ABLATIONS) if task == "bw" else ()) if a not in b.skip_arms]:
        t0, c0 = time.time(), time.process_time()
        arms[arm] = run_arm(arm, base, data, cfg, ev if arm == "sft" else ev_rl, b)
        last = arms[arm][-1]
        print0(f"  [{task} seed {seed}] {arm:<12} ({time.time() - t0:.0f}s wall, {time.process_time() - c0:.0f}s cpu): train {last['acc/train']:.2f} test {last['acc/test']:.2f} "
               f"div {last['div/train']:.2f}")
    info = {"nodes": data.graph.n_nodes, "edges": data.graph.n_edges, "train_pairs": len(data.train_pairs),
            "test_pairs": len(data.test_pairs), "unobserved_test_pairs": len(data.unobserved_test_pairs()), "sft_paths": len(data.sft_paths)}
    return {"sft0": sft0, "sft_loss": sft_hist[-1]["loss/train"], "arms": arms, "data": info}


# ----------------------------------------------------------------------------- summaries and verdicts


def mean_over_seeds(runs: list[dict], arm: str, key: str, at: int = -1) -> float:
    return float(np.mean([r["arms"][arm][at][key] for r in runs]))


def per_seed(runs: list[dict], arm: str, key: str, at: int = -1) -> list[float]:
    """One value per seed of an arm's metric at evaluation `at` (seed order is the run order, so lists pair by seed)."""
    return [float(r["arms"][arm][at][key]) for r in runs]


def sft0_seed(runs: list[dict], key: str) -> list[float]:
    """One value per seed of the SFT checkpoint's metric."""
    return [float(r["sft0"].get(key, np.nan)) for r in runs]


def _finite(*xs: list[float]) -> bool:
    return all(np.isfinite(x).all() for x in xs)


def compare(a: list[float], b: list[float], min_effect: float) -> V.Verdict:
    """`verdict.compare` (a beats b by >= min_effect, paired by seed); a metric missing on some seed (e.g. no unobserved test
    pair in that split) makes the sub-claim untestable instead of silently comparing NaNs."""
    if not _finite(a, b):
        return V.Verdict(V.NOT_TESTABLE, float("nan"), float("nan"), "metric missing on some seed (empty split)")
    return V.compare(a, b, min_effect)


def reaches(x: list[float], target: float) -> V.Verdict:
    """`verdict.reaches` with the same NaN guard as `compare`."""
    if not _finite(x):
        return V.Verdict(V.NOT_TESTABLE, float("nan"), float("nan"), "metric missing on some seed (empty split)")
    return V.reaches(x, target)


def combine(vs: list[V.Verdict]) -> str:
    """A row's verdict from its sub-claims (each through `verdict.py`): `verdict.overall` of them."""
    return V.overall(vs)


def _vtxt(v: V.Verdict) -> str:
    return f"[{v.verdict}: {v.reason}]"


ROWS = {  # takeaway -> (claim, paper's statement, arms its numbers read)
    "(1)": ("(1) SFT learns co-occurrence (observed reachability), fails on pairs needing transitivity",
            "SFT solves pairs whose nodes co-occur in training paths, not their transitive closure", ()),
    "(2)": ("(2) PG beats continual SFT on test pairs (exploration)", "PG test accuracy > SFT test accuracy", ("sft", "pg_kl0")),
    "(3)": ("(3) PG without KL collapses diversity after train accuracy saturates; KL keeps diversity at some accuracy cost",
            "diversity falls under PG even at 100% train accuracy; KL preserves it, lower accuracy", ("pg_kl0", "pg_kl_large")),
    "(4)": ("(4) Q-learning: outcome-only reward is hacked and degrades; process reward plans correctly and keeps diversity",
            "outcome reward: degrades; process reward: correct planning with diversity preserved", ("q_outcome", "q_process", "pg_kl0")),
    "(5)": ("(5) Blocksworld: PG with a mean baseline, a discount (0.9) or a step cost (0.05) wanders less than plain "
            "REINFORCE (shorter paths, fewer stuck samples) and so narrows the gap to continual SFT",
            "(not in the paper) PG = REINFORCE without baseline or length cost; BW test acc PG < continual SFT",
            ("sft", "pg_kl0", *PG_ABLATIONS)),
}  # fmt: skip


OURS_ONLY = ("(5)",)
"""Rows that are our ablations, not claims of the paper: shown, but left out of the experiment's verdict (`counts`)."""


def _row(key: str, ours: str, verdict: str) -> dict:
    claim, paper, _ = ROWS[key]
    row = {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict}
    return {**row, "counts": False} if key in OURS_ONLY else row


def takeaways(results: dict[str, list[dict]]) -> list[dict]:
    """One row per takeaway (1)-(4) plus the Blocksworld PG ablations (5), each sub-claim judged per task on per-seed
    values with the shared rule (`sherman.experiments.verdict`: an effect threshold and 2 standard errors of the
    paired per-seed difference); a row's verdict is `verdict.overall` of its sub-claims. Numbers are means over seeds."""
    rows = []
    names = {"er": "ER", "bw": "BW"}

    def ran(key: str, tasks: tuple[str, ...]) -> bool:
        """Every arm the row reads was run on every task it reads (a reduced run may skip some)."""
        return all(a in results[t][0]["arms"] for t in tasks if t in results for a in ROWS[key][2])

    def not_run(key: str) -> dict:
        return _row(key, f"not run here: the row reads arms {list(ROWS[key][2])}, some of which this run skipped", V.NOT_TESTABLE)

    # (1) SFT: co-occurrence, not transitivity -- accuracy on unobserved test pairs well below observed ones (>= 0.1)
    vs, txt = [], []
    for task, runs in results.items():
        obs, unobs = sft0_seed(runs, "acc/test_obs"), sft0_seed(runs, "acc/test_unobs")
        has = "sft" in runs[0]["arms"] and "acc/test_unobs" in runs[0]["arms"]["sft"][-1]
        cont = mean_over_seeds(runs, "sft", "acc/test_unobs") if has else float("nan")
        prec = float(np.mean([r["sft0"]["adj/precision"] for r in runs]))
        v = compare(obs, unobs, 0.1)
        vs.append(v)
        txt.append(f"{names[task]}: SFT test acc observed {np.mean(obs):.2f} vs unobserved {np.mean(unobs):.2f} {_vtxt(v)} "
                   f"(after continual SFT {cont:.2f}); adjacency precision {prec:.2f}")
    rows.append(_row("(1)", "; ".join(txt), combine(vs)))

    # (2) PG beats continual SFT on test pairs (by >= 0.02)
    if not ran("(2)", tuple(results)):
        rows.append(not_run("(2)"))
    else:
        vs, txt = [], []
        for task, runs in results.items():
            pg, sft = per_seed(runs, "pg_kl0", "acc/test"), per_seed(runs, "sft", "acc/test")
            start = float(np.mean([r["sft0"]["acc/test"] for r in runs]))
            v = compare(pg, sft, 0.02)
            vs.append(v)
            stuck = mean_over_seeds(runs, "pg_kl0", "stuck/test") if "stuck/test" in runs[0]["arms"]["pg_kl0"][-1] else float("nan")
            txt.append(f"{names[task]}: test acc PG {np.mean(pg):.2f} vs continual SFT {np.mean(sft):.2f} {_vtxt(v)} (checkpoint {start:.2f}; "
                       f"PG samples never reaching the target {stuck:.2f})")
        rows.append(_row("(2)", "; ".join(txt), combine(vs)))

    # (3) PG without KL collapses diversity (by >= 30% of the start); KL keeps it (>= 20% of the start more); at some accuracy cost
    if not ran("(3)", tuple(results)):
        rows.append(not_run("(3)"))
    else:
        vs, txt = [], []
        for task, runs in results.items():
            d0 = per_seed(runs, "pg_kl0", "div/train", at=0)
            d_nokl, d_kl = per_seed(runs, "pg_kl0", "div/train"), per_seed(runs, "pg_kl_large", "div/train")
            a_nokl, a_kl = per_seed(runs, "pg_kl0", "acc/train"), per_seed(runs, "pg_kl_large", "acc/train")
            sub = [compare(d0, d_nokl, 0.3 * float(np.mean(d0))), compare(d_kl, d_nokl, 0.2 * float(np.mean(d0))), compare(a_nokl, a_kl, 0.01)]
            vs += sub
            txt.append(f"{names[task]}: distinct correct paths/pair {np.mean(d0):.2f} -> {np.mean(d_nokl):.2f} (KL 0) {_vtxt(sub[0])} vs "
                       f"{np.mean(d_kl):.2f} (KL large) {_vtxt(sub[1])}; train acc {np.mean(a_nokl):.2f} (KL 0) vs {np.mean(a_kl):.2f} (KL large) "
                       f"{_vtxt(sub[2])}")
        rows.append(_row("(3)", "; ".join(txt), combine(vs)))

    # (4) Q-learning: outcome reward degrades (by >= 0.2); process reward keeps accuracy (within 0.05) and diversity (>= 80%)
    if not ran("(4)", tuple(results)):
        rows.append(not_run("(4)"))
    else:
        vs, txt = [], []
        for task, runs in results.items():
            a0 = sft0_seed(runs, "acc/train")
            d0 = per_seed(runs, "q_process", "div/train", at=0)
            a_out, a_proc = per_seed(runs, "q_outcome", "acc/train"), per_seed(runs, "q_process", "acc/train")
            d_proc, d_pg = per_seed(runs, "q_process", "div/train"), mean_over_seeds(runs, "pg_kl0", "div/train")
            sub = [compare(a0, a_out, 0.2), reaches([p - a for p, a in zip(a_proc, a0)], -0.05),
                   reaches([d - 0.8 * s for d, s in zip(d_proc, d0)], 0.0)]
            vs += sub
            txt.append(f"{names[task]}: train acc checkpoint {np.mean(a0):.2f} -> Q outcome {np.mean(a_out):.2f} {_vtxt(sub[0])}, Q process "
                       f"{np.mean(a_proc):.2f} (change vs checkpoint >= -0.05: {_vtxt(sub[1])}); distinct correct paths Q process "
                       f"{np.mean(d_proc):.2f} (start {np.mean(d0):.2f}, Q process - 0.8 x start >= 0: {_vtxt(sub[2])}; PG KL 0 {d_pg:.2f})")
        rows.append(_row("(4)", "; ".join(txt), combine(vs)))

    # (5) Blocksworld PG ablations: does a baseline / discount / step cost stop the wandering?
    if "bw" in results and not ran("(5)", ("bw",)):
        rows.append(not_run("(5)"))
    elif "bw" in results:
        runs = results["bw"]
        keys = ("acc/test", "acc_greedy/test", "stuck/test", "len/test", "len_correct/test")

        def stats(arm: str, key: str) -> str:
            v = np.array([r["arms"][arm][-1][key] for r in runs], dtype=float)
            return f"{np.nanmean(v):.2f}±{np.nanstd(v):.2f}"

        parts = [f"{LABELS[a]}: " + ", ".join(f"{k.split('/')[0]} {stats(a, k)}" for k in keys) for a in ("sft", "pg_kl0", *PG_ABLATIONS)]
        pg = per_seed(runs, "pg_kl0", "acc/test")
        # an ablation helps when its test accuracy beats PG KL 0 by >= 0.02 outside the seed spread
        helps = {a: compare(per_seed(runs, a, "acc/test"), pg, 0.02) for a in PG_ABLATIONS}
        gap = {a: compare(per_seed(runs, a, "acc/test"), per_seed(runs, "sft", "acc/test"), 0.0) for a in PG_ABLATIONS}
        rows.append(_row("(5)", "BW (mean±sd over seeds, last eval; acc = sampled, acc_greedy = temperature 0, stuck = never reached the target, "
                         "len = actions per sample, len_correct = per correct sample): " + "; ".join(parts)
                         + "; test acc vs PG KL 0 (>= +0.02): " + "; ".join(f"{LABELS[a]} {_vtxt(v)}" for a, v in helps.items())
                         + "; vs continual SFT: " + "; ".join(f"{LABELS[a]} {_vtxt(v)}" for a, v in gap.items()),
                         combine(list(helps.values()))))

    return rows


def plot(results: dict[str, list[dict]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    panels = [("acc/train", "train accuracy"), ("acc/test", "test accuracy"), ("div/train", "distinct correct paths / pair (train)"),
              ("entropy/train", "path entropy, nats (train)")]
    titles = {"er": "Erdős–Rényi DAG", "bw": "Blocksworld"}
    for task, runs in results.items():
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))  # 2 x 2 so that each panel is legible at report width
        axes = axes.ravel()
        for ax, (key, label) in zip(axes, panels):
            for arm in [a for a in ARMS if a in runs[0]["arms"]]:
                steps = [h["step"] for h in runs[0]["arms"][arm]]
                vals = np.array([[h[key] for h in r["arms"][arm]] for r in runs])  # (seeds, evals)
                line = ax.plot(steps, vals.mean(0), marker=".", label=LABELS[arm])[0]
                if len(runs) > 1:
                    ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15)
            ax.set(xlabel="RL / continual-SFT step", ylabel=label)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{titles[task]}: mean over {len(runs)} seed(s), band = min..max")
        fig.tight_layout()
        name = f"planning_{task}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        files.append(name)
    return files


# ----------------------------------------------------------------------------- stages (one task x seed each)

STAGE_FORMAT = 1
"""Version of a stage file's layout; part of its key."""


def stage_root() -> Path:
    """Where finished task-seed stages are kept: $SHERMAN_ARTIFACTS/planning, else $SHERMAN_CACHE/planning (default
    ~/.cache/sherman/planning). The full budget (~3.6 h CPU) is ten stages of ~15-30 min CPU: a run that stops (a
    session's end) resumes with the stages not yet done."""
    return stages.stage_root("planning")


_STAGE_CODE: str | None = None


def stage_code_digest() -> str:
    """sha256 over the code that computes a stage: `run_seed`, `run_arm`, `make_task` and the modules of the RL arms,
    the model and the tasks (computed once per process, so an edit during a run does not change the key mid-run)."""
    global _STAGE_CODE
    if _STAGE_CODE is None:
        from sherman.core import attention, linear, model, train

        mods = {sys.modules[f.__module__] for f in (planning_model, blocksworld_graph, erdos_renyi_dag)} | {attention, linear, model, train}
        _STAGE_CODE = stages.source_digest((run_seed, run_arm, make_task), mods)
    return _STAGE_CODE


def stage_key(task: str, b: PlanBudget, seed: int) -> str:
    """The key a stage file must carry to be reused: format, task, seed, every budget field, the code digest and the
    torch version. Anything else (a changed arm, budget or model code) recomputes the stage, never reuses it."""
    import torch

    return stages.stage_key({"format": STAGE_FORMAT, "task": task, "seed": seed, "budget": asdict(b), "code": stage_code_digest(),
                             "torch": torch.__version__})


def stage_path(root: Path, budget: str, task: str, seed: int) -> Path:
    return Path(root) / budget / f"{task}_seed{seed}.json"


def stage(task: str, b: PlanBudget, seed: int, budget: str, root: Path | None) -> dict:
    """`run_seed(task, b, seed)`, or its stored result from `root` when the key matches; a computed stage is written
    atomically (temp file + rename) with its CPU and wall seconds and the machine (`experiments/stages.py`). Returns
    the stage record {'result', 'cpu_s', 'wall_s', 'machine', 'status'}."""
    path = stage_path(root, budget, task, seed) if root is not None else None
    key = stage_key(task, b, seed) if root is not None else ""
    return stages.json_stage(path, key, lambda: run_seed(task, b, seed), f"{task} seed {seed}", {"task": task, "seed": seed, "budget": budget})


WORKERS = {"smoke": 0, "quick": 1, "full": 1}
"""Extra processes per budget: the task x seed stages run in a pool of 1 + WORKERS spawned processes (each at the
caller's torch thread count), so the quick budget uses both cores of a 2-core machine (issue 16's 45-minute bound
for `reproduce opo rspo planning`). A stage's result does not depend on the process that computes it (it seeds its
own model, data and samplers; tested), and this count is not part of the stage key."""


def run(budget: str, out_dir: Path, stage_dir: Path | None = None, workers: int | None = None) -> dict:
    """Every task x seed stage (reused from `stage_dir`, default `stage_root()`; none for the smoke budget), computed in
    1 + `workers` processes (default `WORKERS[budget]`), then the report. The report's CPU seconds count every stage
    (summed over the processes), reused ones at their stored cost."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose from {sorted(BUDGETS)}")
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = stage_dir if stage_dir is not None else (None if budget == "smoke" else stage_root())
    import torch

    t0 = time.time()  # thread count: `sherman reproduce --threads` (default 1)
    prog, results, cpu, reused = progress(2 * b.seeds, "task-seed stages (SFT + every arm)"), {"er": [], "bw": []}, 0.0, 0
    jobs = [(task, seed) for task in ("er", "bw") for seed in range(b.seeds)]
    n_proc = min(len(jobs), 1 + (WORKERS.get(budget, 0) if workers is None else workers))
    with contextlib.ExitStack() as stack:
        if n_proc > 1:  # every stage in a pool of n_proc spawned processes, each at this process's thread count
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                n_proc, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)))
            futures = [pool.submit(stage, task, b, seed, budget, root) for task, seed in jobs]
            records = (f.result() for f in futures)  # in job order: results pair by seed whatever finishes first
        else:
            records = (stage(task, b, seed, budget, root) for task, seed in jobs)
        for (task, seed), rec in zip(jobs, records):
            prog.set(task=task, seed=seed)
            results[task].append(rec["result"])
            cpu += rec["cpu_s"]
            reused += rec["status"] == "reused"
            prog.advance()
    prog.close()
    return report(results, budget, out_dir, time.time() - t0, cpu, reused=reused, stage_dir=root)


def report(results: dict[str, list[dict]], budget: str, out_dir: Path, wall: float, cpu: float, reused: int = 0,
           stage_dir: Path | None = None) -> dict:  # fmt: skip
    """Verdicts, plots and results.json from the per-seed results (also usable on a saved results.json). `reused`
    stages came from `stage_dir`: `wall` is this run's, `cpu` counts them at their stored cost."""
    b = BUDGETS[budget]
    rows = takeaways(results)
    plots = plot(results, out_dir)
    verdict = V.overall(V.counted(rows))  # not row (5), our ablation (`OURS_ONLY`)
    info = {task: runs[0]["data"] for task, runs in results.items()}
    notes = (
        f"Budget {budget}, {b.seeds} seed(s), {wall:.0f}s wall, {cpu:.0f}s cpu"
        + (f" ({reused} of {2 * b.seeds} task-seed stages reused from {stage_dir}, counted at their stored CPU cost)" if reused else "")
        + f". ER DAG {b.er_nodes} nodes, p={b.er_edge_prob} "
        f"({info['er']['train_pairs']} train / {info['er']['test_pairs']} test pairs, seed 0); Blocksworld {b.blocks} blocks "
        f"({info['bw']['nodes']} states, {info['bw']['train_pairs']} train / {info['bw']['test_pairs']} test pairs). "
        f"Model: core Transformer, 1 layer, 1 head, width {b.dim}; SFT {b.sft_steps} steps on {b.paths_per_pair} paths per train pair "
        f"(random reaching walks on the DAG, random shortest paths on Blocksworld). Arms: {b.arm_steps} steps from the SFT checkpoint, "
        f"32 train pairs x 2 rollouts per step, Adam lr 1e-3 (Q-learning 1e-4); PG = REINFORCE with 0/1 outcome reward and exact KL to the SFT model "
        f"(coefficients 0, {b.kl_small}, {b.kl_large}); Q-learning on the logits with rewards +-10 (see rl/planning.py). All policies "
        f"sampled at temperature 1; accuracy = valid path ending at the target, {b.eval_samples} samples per pair on up to "
        f"{b.eval_pairs} pairs per split. 'Unobserved' test pairs: the source never lies on an SFT path to that target. "
        f"Arms not run: {', '.join(b.skip_arms) or 'none'}."
    )
    res = {
        "name": "planning",
        "claim": CLAIM,
        "verdict": verdict,
        "rows": rows,
        "plots": plots,
        "notes": notes,
        "metrics": {"budget": asdict(b), "wall_s": wall, "cpu_s": cpu, "stages_reused": reused, "data": info, "results": results},
    }
    return dump_results(res, out_dir)

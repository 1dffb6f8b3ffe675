"""AsyncThink vs parallel vs sequential thinking on one tiny model family (arXiv 2510.26658, Sec. 4, Table 1, Fig. 4-5).

The task is chosen by the latency precondition (issue 15). On 3-number Countdown the ground-truth fork-join
critical path is 1.19x parallel thinking's latency (fork, join and answer tokens outweigh 6-14-token workers), and
4-number 3-solution Countdown without a search trace 0.83x, so the paper's "-28% latency" cannot show there. The
experiment therefore trains and tests on 3-expression 2-digit sums ("55+41;30+70;58+11="), each expression worked
with the digit-wise scratchpad (`tasks.arithmetic`, style "digits": copy "55+41=", then per place, units first,
"a_i b_i s_i c_i", then "=96"); each worker does one expression (~20 tokens), the organizer forks it by its position in
the question (sub-query "b" = the second: one token, `think.train.SUBQUERIES`, mode 'letter'; copying the expression as
the sub-query costs 7 more tokens per fork and fails the precondition, 0.85x), and the ground-truth fork-all trace is 0.63x the sequential trace
(interleaved 0.83x). Why digit-wise: with the place-value scratchpad ("55+40=95,95+1=96", 0.68x) a 2-layer model had
0% accuracy after 600 SFT steps (1eb23df); probing the SFT stage alone (issue 15 notes) showed that it learned neither
the worker's sub-task (3% of returned results right, 10% of first operands copied from the right expression) nor the
organizer's copy of the joined results into its answer (0% even on true joins); units-first digit steps turn the
arithmetic into one-digit sums at fixed offsets (loss 0.39 vs 0.54 at 600 steps), leaving the copying from the
question and from the joins as what a tiny model has to learn. A digit index ("2") looks like the question's digits, so
attention cannot find it by content once the worker has written a few tokens; a letter can be found from any position
(600-step probes, seed 0, 32 test questions, greedy: first operand copied from the right expression 0.79 vs 0.31,
returned result right 0.25 vs 0.03; the organizer's copy of the joins stayed at 0.00 in every probe, also at 900
steps and with 3 layers). Countdown's ground-truth
ratio is still measured and shown.

Why 2400 format-SFT steps at quick (800 until 1ee3d3d, where the SFT workers were right on 0.97 / 0.77 / 0.11 of the
expressions of seeds 0/1/2 but the organizer copied the joins into its answer 0.12 / 0.00 / 0.00, so every method had
0% accuracy). Not a train/inference mismatch: the organizer's SFT example is token-identical to the context the engine
builds at inference for the same trace (every resume prompt after a join, the rollout's ids and mask; test
`test_sft_contexts_equal_the_engines_runtime_contexts`), and its answer tokens are in the loss (6.6% of the loss
targets; sequential answers 6.6%, worker thinking 43%, sequential thinking 36%, organizer tags 8%). It is training
length: the copy of the joined results (2- or 3-digit results, so found by content, unlike the worker's copy of its
expression from the fixed-layout question) forms late and abruptly, after the workers' skill. Probes (1ee3d3d's
`sherman.think.train` data, seed 0, one 2000-step cosine schedule, 32 test questions, greedy on true contexts, steps
500/1000/1500/2000): organizer answer-token loss 1.00 / 0.35 / 0.08 / 0.03, organizer copies the joins 0.00 / 0.16 /
0.91 / 0.97, workers right 0.08 / 0.68 / 0.93 / 1.00; the 800-step schedule ends at answer loss 0.60 (per-token
0.77: near-copies, 143 -> 134) and copy 0.00. Sequential answers (the baselines' copy of "=138;...") track the
organizer's loss step for step. Seed 2 learns later (at 2000: copy 0.69, workers 0.34, loss 0.13 vs 0.02): the
same cause as the old seeds 1/2 workers. Hence 2400 steps, about what the 25-minute quick budget holds.

What runs, per seed (3 seeds at quick):
1. One char tokenizer with the protocol tags as single tokens, one model family. Format SFT
   (`think.train.sft_examples`) on organizer/worker traces with randomized fork-join topologies (interleaved and
   fork-all-then-join-all) and on sequential traces (`<SEQ>` prompts, the baselines' format).
2. RL of the organizer and its workers (`think.train.rl_train`: one run, one AdamW over all steps, resumable, G = 8)
   with the AsyncThink reward (format penalty, else accuracy + lambda * min(eta / c, tau) / tau), one run per lambda:
   lambda = 0.5 (the compared model) and lambda = 0 (the concurrency-reward ablation), both from the SFT weights.
3. Evaluation with the local backend (one batched forward per step for all agents of all questions) on held-out
   3-expression questions: AsyncThink, sequential thinking and parallel thinking (k = c - 1 samples, majority vote),
   all at ONE temperature and over a grid of per-sample token budgets B (every decoding stream capped at B: the
   organizer, each worker, the sequential sample, each parallel sample). AsyncThink is run at every B; sequential
   and parallel are run once at the largest B and cut at each smaller B (`truncated_sequential`,
   `truncated_parallel`: a sample that closed its answer within B tokens is exactly what a B-capped run samples, one
   that did not has no answer under the cap). Accuracy vs critical-path latency, one point per budget, is the curve.
4. Generalization: 4-expression questions, a shape never trained on.
5. Ablations: no RL (the format-SFT model), lambda = 0, and fork-all-then-join-all vs interleaved traces (the seed's
   format-SFT model trained `Budget.topo_sft_steps` more steps on one topology each, same data otherwise; no RL;
   AsyncThink only; until 254928b these were fresh models of 150 steps, which answered nothing).
   Diagnostics (`field_accuracy`): each agent's part alone, greedy, on true contexts: the worker's returned result and
   its copy of the expression given sub-query k, the organizer's answer given the true joins.
   The accuracy claim is also judged on the format-SFT weights (`sft_accuracy_row`): RL trains only the AsyncThink
   protocol, so on the RL weights the baselines (which share them) drift the longer RL runs; format SFT trained every
   format alike, so there the arms differ in the protocol alone.
6. Precondition (`think.train.latency_precondition`): on ground-truth traces of the claim task, replayed through the
   engine one token per step, the fork-join critical path must be <= 0.7x the parallel-thinking latency (one whole
   sequential trace); else the latency claim is "not testable here".

Why SFT at lr 1e-3 with 100 warmup steps (since 91578d9; 3e-3 with 20 before). At 3e-3 some seeds never learned the
worker's copy of its expression: at full (3000 steps) seeds 0 and 2 ended with SFT loss 0.21 / 0.22 and workers right
on 0.22 / 0.07 of true contexts (3000 more steps at 1e-3 in the topology arms did not rescue them), at quick seed 2
(0.09 accuracy at ea7b634). Probes (full-size model, 1000-step schedules, 32 test questions, greedy on true contexts):
seed 0 at 3e-3 / 20 warmup: loss 0.352, workers 0.01, copies 0.00, organizer 0.00; at 1e-3 / 100 warmup: loss 0.008,
all three 1.00; seed 2 at 1e-3: loss 0.009, all 1.00; quick-size seed 2 at 1e-3, 2400 steps: loss 0.007, all 1.00.
With every seed trained, every method answers nearly every 3-expression question at the top budget (accuracy at the
ceiling), so the accuracy claim shows only where the budget binds (the budget-curve row); two arms both at 1.0 are
"not testable here" (`verdict.compare(ceiling=...)`), as two at 0 are.

Full budget, run once (stages at 91578d9-12c34a4, report at fb67044; 3 seeds in parallel 1-thread processes, Intel
Xeon, 8473 CPU s): every seed learned (SFT loss 0.015 / 0.001 / 0.012); accuracy AsyncThink / parallel / sequential
0.96 / 0.95 / 0.95 (+0.010 +- 0.017, near the ceiling: not reproduced), on the SFT weights 1.00 / 1.00 / 1.00; critical
path 43.9 vs 69.5 (0.63x): reproduced; budget-grid accuracy 0.77 vs 0.16 (+0.607 +- 0.039): reproduced; held-out 0.00
everywhere: not testable; no RL 1.00 vs 0.96 after RL (RL shortens the path 46.6 -> 43.9 and costs accuracy): not
reproduced; lambda eta 2.12 vs 2.11: partly; topology 43.9 vs 56.0: reproduced.

Quick (stages trained at 12c34a4, report rebuilt at fb67044; 3 seeds, 1 thread, Intel Xeon beside four other 1-thread jobs: 1072 CPU s, 2244 s wall): every seed
learned (greedy on true contexts 1.00 / 1.00 / 1.00); accuracy AsyncThink / parallel / sequential 1.00 / 0.99 / 0.99
(+0.010 +- 0.021: not reproduced, at the ceiling), on the SFT weights 1.00 everywhere (not testable); critical path
44.1 vs 69.5 (0.63x): reproduced; budget-grid accuracy 0.79 vs 0.16 (+0.627 +- 0.009; from budget 24 AsyncThink
answers, no baseline below 96): reproduced; held-out 0.00 everywhere: not testable; no-RL accuracy at the ceiling (RL
lowers the critical path 47.0 -> 44.1); lambda eta 2.12 vs 2.08 (+0.042 +- 0.021): partly; topology 43.9 vs 58.4: reproduced.

Before the LR change: full budget, run once (stages on the code of d5674d9; 3 seeds, 1 thread, Intel Xeon then AMD
EPYC, 15733 CPU s): only seed 1 learned the sub-skills in 3000 SFT steps; on it AsyncThink / parallel / sequential
0.855 / 0.45 / 0.42 on the SFT weights, 0.835 / 0.235 / 0.255 after RL, at 0.63x parallel's critical path; seeds 0 and
2 scored 0% with every method. Quick at ea7b634 (AMD EPYC, 966 s): accuracy 0.63/0.56, 1.00/0.19, 0.09/0.03
(async/parallel, seeds 0/1/2), paired +0.31 +- 0.50: not reproduced; latency 0.64x, budget curve and topology reproduced.

Measured (quick on the code of d5674d9, 3 seeds, 1 torch thread, Intel Xeon (Sapphire Rapids) beside one nice'd job:
782 s wall, 778 CPU s; per seed SFT 217-222 s, RL 12 s, eval 12 s, topology 16-17 s). Workers right on true contexts
0.96 / 0.72 / 0.76, organizer copies the joins 1.00. AsyncThink / parallel / sequential accuracy 0.78 / 0.59 / 0.69,
0.34 / 0.13 / 0.13, 0.25 / 0.03 / 0.00 (seeds 0/1/2); paired async - parallel +0.208 +- 0.021, every seed the same sign:
reproduced; critical path 0.64x; budget curve, topology ablation reproduced; no-RL and lambda ablations not; held-out
not testable. The run below, of nearly the same recipe on another machine (the code between them changed the
per-machine GEMM choice and the zero-advantage skip, the same update up to fp32 order), had seeds that disagreed and
the accuracy claim not reproduced: which seeds learn which skill in 2400 steps is a draw of the fp noise, so the
accuracy verdict at quick is fragile.
Earlier (quick at 253eb98, 3 seeds, 1 torch thread, nice'd on the shared 2-core AMD EPYC: 953 CPU s, 2674 s wall
at 35% of a core; per seed SFT 242-279 s, RL 18-23 s, eval 20-23 s, topology 17-21 s). With 2400 SFT steps each skill
forms, but at seed-dependent steps, so the seeds disagree. Greedy on true contexts (SFT model): workers right 1.00 /
0.99 / 0.38 (seeds 0/1/2), organizer copies the joins 0.97 / 1.00 / 1.00; the sequential format (the baselines) copies
the question's operands wrong on seed 0 (0/32 traces right, first error at the 2nd operand, "14+91" for "14+93").
Claim task, RL lambda 0.5 model, budget 96, T 0.5: AsyncThink / parallel / sequential accuracy 0.88 / 0.00 / 0.00
(seed 0), 0.94 / 0.97 / 0.97 (seed 1, every skill learned), 0.06 / 0.03 / 0.03 (seed 2); mean 0.62 vs 0.33,
paired +0.29 +- 0.58: not reproduced. Critical path 44.4 vs 69.6 steps (0.64x, paired -25.2 +- 0.4): reproduced
(at 0.62 vs 0.33 mean accuracy; on seed 1, where every method works, 44.4 vs 69.6 at 0.94 vs 0.97). Accuracy over
the budget grid 0.49 vs 0.06 (+0.44 +- 0.40): reproduced (below budget 96 no baseline sample closes its ~70-token
trace). Held-out 4 expressions: 0.00 everywhere (AsyncThink format ok 0.05): not testable here. No RL vs RL 0.65 vs
0.62, lambda 0.5 vs 0 eta 2.11 vs 2.07 (+0.045 +- 0.052): not reproduced (10 RL steps); fork-all vs interleaved
latency 43.9 vs 58.8 (-14.8 +- 4.1): reproduced.
Probe after that run (seed 2, one 3600-step schedule, steps 900/1800/2700/3600): workers right 0.03 / 0.95 / 0.99 /
1.00, organizer copies 0.00 / 0.94 / 0.97 / 1.00, but greedy sequential traces exact 0.00 at every step (teacher-forced
sequential-thinking token accuracy 0.95): more steps fix the AsyncThink agents, not the sequential format's lookup of the
k-th expression (each worker gets it from a one-token letter cue), so the full budget (3000 steps) may leave the
baselines behind for this reason.
Full budget (dim 192 x 4 layers, 2000 SFT steps, 300 RL steps x 3 lambdas, 600 topology steps per arm, 200 test
questions, 3 seeds; ~2700 CPU s per seed at 1 thread): the seeds can run in parallel processes (`run(only_seeds=...)`).
It is built from stages (`experiments/stages.py`, under `stages.stage_root('asyncthink')` = $SHERMAN_ARTIFACTS/asyncthink):
each trained model (format SFT, RL per lambda, each topology arm) is a safetensors file keyed by the budget, seed,
lambda or topology, a digest of the weights it starts from, the code and torch; each model's evaluation is a JSON
record keyed by that model's weights digest. An RL stage cut off mid-run resumes from its newest checkpoint (every
`save_every` steps, one optimizer state; `<root>/<budget>/rl/`, not kept in the repository), and so does an SFT stage
(the main model and each topology arm: every `sft_ckpt_every` = 100 steps under
`<root>/<budget>/sft_ckpt/`, keyed by the stage's key, removed once the stage is stored; tested). So
`SHERMAN_ARTIFACTS=stages sherman reproduce asyncthink --budget full`, repeated across sessions, finishes it.

Verdicts go through `experiments/verdict.py` (effect threshold and 2 s.e. of the paired per-seed differences).
Compute matching: every method of one model sees the same questions at the same per-sample token cap and the same
temperature; the RL arms take the same number of steps of the same size; the topology arms the same SFT steps.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sherman.core.checkpoint import save_checkpoint
from sherman.core.common import seed_everything
from sherman.core.generate import SamplingParams
from sherman.core.model import ModelConfig, Transformer
from sherman.core.progress import progress
from sherman.core.resumable import train_losses, train_resumable
from sherman.core.train import TrainConfig, train
from sherman.experiments import stages
from sherman.experiments.verdict import NOT_TESTABLE, PARTLY, REPRODUCED, compare, overall
from sherman.tasks.arithmetic import Arithmetic
from sherman.tasks.countdown import Countdown
from sherman.think.backends import LocalBackend
from sherman.think.baselines import BaselineConfig, aggregate, parallel, sequential
from sherman.think.engine import AsyncThinkEngine, ThinkConfig, ThinkResult
from sherman.think.train import RLConfig, latency_precondition, make_tokenizer, rl_train, sft_examples

CLAIM = ("AsyncThink learns to organize asynchronous thinking: it is more accurate than sequential and parallel thinking "
         "with about 28% lower latency than parallel thinking, and it generalizes to unseen tasks (arXiv 2510.26658, Sec. 4).")


@dataclass
class Budget:
    n_sft: int
    """Training questions per task shape (each gives an organizer, its workers and a sequential example)."""
    sft_steps: int
    """Format-SFT steps of the main model."""
    rl_steps: int
    """RL steps of each lambda run (one optimizer each)."""
    lambdas: tuple[float, ...]
    """lambda values of the RL sweep; the first is the compared model, 0 (if present) the ablation."""
    n_eval: int
    """Test questions per evaluation set."""
    dim: int
    """Model width."""
    n_layers: int
    """Decoder layers."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds: each trains its own SFT, RL and ablation models and evaluates on its own questions."""
    budgets: tuple[int, ...] = (16, 24, 32, 48, 64, 96)
    """Per-sample token budgets of the accuracy-latency curves; the largest is the budget of every claim row."""
    topo_sft_steps: int = 0
    """SFT steps of each topology-ablation arm (the seed's format-SFT model trained further on fork-all-only or on
    interleaved-only traces); 0 = ablation not run."""
    log_every: int = 0
    """Print SFT progress every N steps (0 = silent)."""
    rl_questions: int = 4
    """Questions per RL update."""
    group: int = 8
    """RL group size G."""
    sft_ckpt_every: int = 0
    """Every SFT stage (the main model and each topology arm) checkpoints every this many steps (0: none) under
    `<root>/<budget>/sft_ckpt/<name>_<stage key>` while it trains and resumes there when cut off, so an SFT longer
    than a session finishes across sessions; the directory is removed once the stage is stored."""
    save_every: int = 25
    """RL checkpoint interval (steps)."""
    eval_temperature: float = 0.5
    """One sampling temperature for every method at evaluation (our choice: low enough that a tiny model's long exact
    answers survive sampling, high enough that parallel samples differ)."""
    rl_temperature: float = 1.0
    """RL rollout temperature."""
    rl_max_tokens: int = 64
    """Cap on each agent's tokens in RL rollouts (the ground-truth organizer and worker traces are ~20-30 tokens)."""
    sft_lr: float = 3e-3
    """Peak SFT learning rate (warmup + cosine). Quick and full use 1e-3 (with `sft_warmup` 100): at 3e-3 the worker's
    copy of its expression never formed on some seeds (full seeds 0 and 2, quick seed 2; see the module docstring)."""
    sft_warmup: int = 20
    """Linear warmup steps of every SFT run (capped at a fifth of its steps)."""
    sft_batch: int = 32
    """SFT batch (sequences per step)."""
    topo_lr: float = 1e-3
    """Peak learning rate of the topology-ablation fine-tunes (each continues the seed's format-SFT model)."""
    rl_lr: float = 2e-4
    """RL learning rate (AdamW)."""


BUDGETS = {
    "smoke": Budget(n_sft=6, sft_steps=3, rl_steps=1, lambdas=(0.5, 0.0), n_eval=2, dim=32, n_layers=1, seeds=(0, 1), budgets=(8, 16), rl_max_tokens=12,
                    topo_sft_steps=2, rl_questions=1, group=2),
    "quick": Budget(n_sft=4000, sft_steps=2400, rl_steps=10, lambdas=(0.5, 0.0), n_eval=32, dim=128, n_layers=2, topo_sft_steps=80,
                    log_every=100, sft_lr=1e-3, sft_warmup=100),
    "full": Budget(n_sft=12000, sft_steps=2000, rl_steps=300, lambdas=(0.5, 0.1, 0.0), n_eval=200, dim=192, n_layers=4, topo_sft_steps=600,
                   sft_ckpt_every=100, sft_lr=1e-3, sft_warmup=100),
}

MIN_ACC_GAIN = 0.02
"""Effect threshold of an accuracy win (2 points), beyond the spread over seeds (`experiments/verdict.py`)."""
ACC_CEILING = 1.0
"""Best accuracy: two arms both at it cannot differ, so their comparison is "not testable here" (like two at 0)."""
MIN_ETA_GAIN = 0.05
"""Effect threshold of the concurrency-reward ablation on eta (average active threads)."""
LATENCY_CUT = 0.28
"""The paper's latency reduction vs parallel thinking (the effect threshold of the latency row)."""
MAX_GT_RATIO = 0.7
"""Precondition: ground-truth fork-join critical path <= this fraction of parallel thinking's latency."""
MIN_TOPO_LATENCY_GAIN = 0.10
"""Effect threshold of the topology ablation: fork-all latency at least 10% below interleaved's."""

CAPACITY = 4
TAU = 0.5
SUBQUERY = "letter"
DIGITS = 2
"""Digits of every operand (see the module docstring for why 2)."""
STYLE = "digits"
"""Scratchpad of every expression (`tasks.arithmetic`): digit-wise, units first (see the module docstring)."""
TRAIN_TOPOLOGIES = ("interleaved", "fork_all")


def make_tasks():
    """(training task shapes, claim task, held-out task, Countdown for its precondition number only)."""
    train_tasks = [Arithmetic(n_expressions=3, min_digits=DIGITS, max_digits=DIGITS, ops="+", style=STYLE)]
    heldout = Arithmetic(n_expressions=4, min_digits=DIGITS, max_digits=DIGITS, ops="+", style=STYLE)
    countdown = Countdown(n_solutions=2, min_numbers=3, max_numbers=3, max_number=9, max_target=30)
    return train_tasks, train_tasks[0], heldout, countdown


# ---------------------------------------------------------------------------------------------------
# per-sample budgets applied after the fact to the baselines (exact: see the module docstring)


def truncated_sequential(n_tokens: int, answer: str | None, budget: int) -> tuple[str | None, float]:
    """A sequential sample that decoded n_tokens (its answer closed at the last one) under a cap of `budget` tokens:
    (its answer if n_tokens <= budget else None, latency min(n_tokens, budget))."""
    return (answer if n_tokens <= budget else None), float(min(n_tokens, budget))


def truncated_parallel(samples: list[tuple[int, str | None]], budget: int, how: str = "vote", sep: str = ";") -> tuple[str | None, float]:
    """k parallel samples [(n_tokens, answer)] each under a cap of `budget`: (aggregate of the answers closed within the
    cap, latency = the longest capped sample)."""
    answers = [truncated_sequential(n, a, budget)[0] for n, a in samples]
    return aggregate(answers, how, sep), float(max(min(n, budget) for n, _ in samples))


def _run_method(model, tok, method: str, exs, think: ThinkConfig, base: BaselineConfig, seed: int, temperature: float) -> tuple[list[ThinkResult], float]:
    backend = LocalBackend(model, tok, SamplingParams(temperature=temperature), generator=torch.Generator().manual_seed(seed))

    async def main():
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
    return rs, time.perf_counter() - t0


def _metrics(task, exs, rs: list[ThinkResult], method: str, wall: float) -> dict:
    acc = [task.reward(e, "#" + r.answer) if r.answer is not None else 0.0 for e, r in zip(exs, rs)]
    lat = np.array([r.latency for r in rs], dtype=float)
    return {"acc": float(np.mean(acc)), "latency_mean": float(lat.mean()), "latency_p50": float(np.percentile(lat, 50)),
            "latency_p90": float(np.percentile(lat, 90)), "eta": float(np.mean([r.eta for r in rs])),
            "total_tokens": float(np.mean([r.total_tokens for r in rs])), "format_ok": float(np.mean([not r.errors for r in rs])),
            "forks": float(np.mean([len(r.workers) for r in rs])) if method == "asyncthink" else 0.0, "wall_s": wall}  # fmt: skip


def _baseline_curve(task, exs, rs: list[ThinkResult], method: str, budgets, how: str) -> list[dict]:
    out = []
    for bud in budgets:
        acc, lat = [], []
        for e, r in zip(exs, rs):
            if method == "sequential":
                a, lt = truncated_sequential(r.org_tokens, r.answer, bud)
            else:
                a, lt = truncated_parallel([(w.tokens, w.returned) for w in r.workers.values()], bud, how)
            acc.append(task.reward(e, "#" + a) if a is not None else 0.0)
            lat.append(lt)
        out.append({"budget": bud, "acc": float(np.mean(acc)), "latency_mean": float(np.mean(lat))})
    return out


def evaluate(model, tok, task, exs, seed: int, temperature: float, budgets=(), methods=("asyncthink", "sequential", "parallel"),
             how: str = "vote") -> dict[str, dict]:  # fmt: skip
    """The methods on the same questions at one temperature -> {method: metrics at max(budgets), with "curve": one
    {budget, acc, latency_mean} per budget when len(budgets) > 1}."""
    top = max(budgets)
    out = {}
    for method in methods:
        think = ThinkConfig(capacity=CAPACITY, max_org_tokens=top, max_worker_tokens=top)
        base = BaselineConfig(max_tokens=top, k=CAPACITY - 1, aggregate=how)
        rs, wall = _run_method(model, tok, method, exs, think, base, seed, temperature)
        out[method] = _metrics(task, exs, rs, method, wall)
        if len(budgets) < 2:
            continue
        if method == "asyncthink":  # the protocol reacts to a cap (a truncated worker returns nothing): run each budget
            curve = []
            for bud in budgets:
                r_b = rs if bud == top else _run_method(model, tok, method, exs, ThinkConfig(capacity=CAPACITY, max_org_tokens=bud,
                                                                                           max_worker_tokens=bud), base, seed, temperature)[0]
                m = _metrics(task, exs, r_b, method, 0.0)
                curve.append({"budget": bud, "acc": m["acc"], "latency_mean": m["latency_mean"]})
            out[method]["curve"] = curve
        else:
            out[method]["curve"] = _baseline_curve(task, exs, rs, method, budgets, how)
    return out


def field_accuracy(model, tok, task, exs) -> dict:
    """Greedy accuracy of each agent's part on ground-truth contexts (what format SFT taught, one part at a time):
    `worker` = the returned result of expression k given the worker prompt with sub-query k; `worker_copy` = the
    expression copied from the question at the start of its thinking; `organizer_copy` = the final answer given the
    true fork-all context up to <ANSWER> (the joined results copied into the answer)."""
    from sherman.core.generate import generate
    from sherman.think.train import organizer_trace, plan

    think = ThinkConfig(capacity=CAPACITY)

    def greedy(prompts: list[str], stop: str, n: int) -> list[str]:
        params = SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=tok.encode(stop))
        out = generate(model, [tok.encode(p, bos=True) for p in prompts], params)
        return [tok.decode(t, skip_special=False) for t in out.tokens]

    w_prompts, w_traces, o_prompts = [], [], []
    for ex in exs:
        p = plan(task, ex, SUBQUERY)
        for q, tr in zip(p.subqueries, p.worker_traces):
            w_prompts.append(think.worker_template.format(question=ex.prompt, query=q))
            w_traces.append(tr)
        segs = organizer_trace(p, "fork_all", CAPACITY, random.Random(0))
        o_prompts.append(think.organizer_template.format(question=ex.prompt) + "".join(t for t, _ in segs[:-1]))
    return score_fields(greedy(w_prompts, "</RETURN>", 48), w_traces, greedy(o_prompts, "</ANSWER>", 32), [ex.answer for ex in exs])


def _inner(text: str, tag: str) -> str | None:
    body = text.split(f"<{tag}>", 1)
    return body[1].split(f"</{tag}>", 1)[0] if len(body) == 2 and f"</{tag}>" in body[1] else None


def score_fields(worker_out: list[str], worker_traces: list[str], org_out: list[str], answers: list[str]) -> dict:
    """`field_accuracy`'s scores from the decoded texts (tags kept): worker = returned result equals the true one,
    worker_copy = the text before the first '=' equals the true trace's, organizer_copy = answer equals the truth."""
    return {"worker": float(np.mean([_inner(o, "RETURN") == _inner(t, "RETURN") for o, t in zip(worker_out, worker_traces)])),
            "worker_copy": float(np.mean([o.split("=", 1)[0] == t.split("=", 1)[0] for o, t in zip(worker_out, worker_traces)])),
            "organizer_copy": float(np.mean([_inner(o, "ANSWER") == a for o, a in zip(org_out, answers)]))}  # fmt: skip


def _new_model(tok, b: Budget) -> Transformer:
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=b.dim, n_layers=b.n_layers, n_heads=4, n_kv_heads=2,
                                   ffn_dim=int(b.dim * 8 / 3) // 8 * 8, max_seq_len=512))  # fmt: skip


def _sft(tok, train_tasks, b: Budget, seed: int, steps: int, topologies, init: Transformer | None = None,
         lr: float | None = None, run_dir: Path | None = None, on_step=None) -> tuple[Transformer, list[float]]:
    """Format SFT on organizer/worker traces of `topologies` plus sequential traces (seeded data): a fresh model, or a
    copy of `init` trained further (the topology ablation). With `run_dir`: checkpointed every `b.sft_ckpt_every`
    steps there and resumed from the newest checkpoint (`core.resumable`), with the unbroken run's weights and loss."""
    seed_everything(seed)
    rng = random.Random(seed)
    data = []
    for t in train_tasks:
        data += sft_examples(t, tok, b.n_sft, rng, capacity=CAPACITY, topologies=topologies, subquery=SUBQUERY)
        data += sft_examples(t, tok, b.n_sft, rng, sequential=True)
    model = _new_model(tok, b) if init is None else copy.deepcopy(init)
    tc = TrainConfig(steps=steps, batch_size=b.sft_batch, lr=lr or b.sft_lr, warmup_steps=min(b.sft_warmup, steps // 5), seed=seed, log_every=b.log_every)
    if run_dir is not None:
        train_resumable(model, data, tc, run_dir, b.sft_ckpt_every, callback=on_step)
        model.eval()
        return model, train_losses(run_dir)
    res = train(model, data, tc)
    model.eval()
    return model, [h["loss/train"] for h in res.history if "loss/train" in h]


# ----------------------------------------------------------------------------- stages (`experiments/stages.py`)

STAGE_FORMAT = 1
"""Version of the stage records' layout; part of every key."""
_STAGE_CODE: str | None = None


def stage_code_digest() -> str:
    """sha256 over the code that trains and evaluates a stage's model: this module's training and evaluation functions and
    the modules of the protocol, the RL loop, the model and the tasks (once per process: an edit mid-run changes no key)."""
    global _STAGE_CODE
    if _STAGE_CODE is None:
        import sys

        from sherman.core import attention, decoder, generate, kv_cache, linear, model, resumable
        from sherman.core import train as core_train
        from sherman.rl import core as rl_core
        from sherman.think import backends, baselines, engine
        from sherman.think import train as think_train

        mods = {attention, decoder, generate, kv_cache, linear, model, resumable, core_train, rl_core, backends, baselines, engine, think_train,
                sys.modules[Arithmetic.__module__], sys.modules[Countdown.__module__]}
        fns = (_new_model, _sft, make_tasks, _run_method, _metrics, _baseline_curve, evaluate, field_accuracy, score_fields, truncated_sequential,
               truncated_parallel)
        _STAGE_CODE = stages.source_digest(fns, mods)
    return _STAGE_CODE


def _key(b: Budget, **body) -> str:
    return stages.stage_key({"format": STAGE_FORMAT, "budget": asdict(b), "code": stage_code_digest(), "torch": torch.__version__, **body})


def model_stage(root: Path | None, budget: str, name: str, b: Budget, tok, key: dict, compute, ckpt_every: int = 0) -> tuple[Transformer, dict, float]:
    """A trained model (`compute() -> (model, JSON extras)`), or its stored weights `root/budget/<name>.safetensors` when
    the key matches. Returns (model in eval mode, extras, CPU seconds it cost when computed). With a root and
    `ckpt_every`, `compute(run_dir, on_step)` trains resumably in `root/budget/sft_ckpt/<name>_<key>` (keyed: a stale
    one is never resumed; removed once the stage is stored) and `on_step(step, row)` keeps its CPU tally at every
    checkpoint, so the stored CPU seconds cover every call that trained it."""
    k = _key(b, name=name, **key)
    run_dir = stages.checkpoint_dir(Path(root) / budget / "sft_ckpt", name, k) if root is not None and ckpt_every else None

    def run() -> tuple[dict, dict]:
        if run_dir is None:
            m, extra = compute()
            return m.state_dict(), extra
        (m, extra), earlier = stages.run_checkpointed(run_dir, ckpt_every, lambda on_step: compute(run_dir, on_step))
        return m.state_dict(), {**extra, "cpu_s_earlier": earlier}

    path = Path(root) / budget / f"{name}.safetensors" if root is not None else None
    state, extra, _ = stages.tensor_stage(path, k, run, f"asyncthink {name}")
    if run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)  # the stage file holds the trained weights
    model = _new_model(tok, b)
    model.load_state_dict(state)
    return model.eval(), extra, float(extra["cpu_s"]) + float(extra.get("cpu_s_earlier", 0.0))


def eval_stage(root: Path | None, budget: str, name: str, b: Budget, model: Transformer, compute) -> tuple[dict, float]:
    """`compute()` (a JSON dict of evaluations of `model`), or its stored record `root/budget/eval_<name>.json` when the key
    (the model's weights digest, the budget, the code) matches. Returns (result, CPU seconds it cost)."""
    path = Path(root) / budget / f"eval_{name}.json" if root is not None else None
    key = _key(b, name=name, weights=stages.weights_digest(model.state_dict())) if root is not None else ""
    rec = stages.json_stage(path, key, compute, f"asyncthink eval {name}")
    return rec["result"], float(rec["cpu_s"])


def run(budget: str, out_dir: Path, stage_dir: Path | None = None, only_seeds: tuple[int, ...] | None = None) -> dict:
    """Runs with one intra-op thread (`sherman reproduce --threads 1`, the default). Every trained model and every
    evaluation is a stage (reused from `stage_dir`, default `stages.stage_root('asyncthink')`; none for the smoke budget).
    `only_seeds`: compute (or reuse) the stages of these seeds only and write no report, so that seeds of a long budget
    can run in parallel processes over one stage directory (each seed's stages are its own); the run without it then
    reuses them all and writes the report. Returns {"seeds": [...], "cpu_s": [one {stage: CPU s} per seed]} in that mode."""
    b = BUDGETS[budget]
    bad = sorted(set(only_seeds or ()) - set(b.seeds))
    if bad:
        raise ValueError(f"seeds {bad} are not seeds of the {budget} budget {list(b.seeds)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = stage_dir if stage_dir is not None else (None if budget == "smoke" else stages.stage_root("asyncthink"))
    train_tasks, claim_task, heldout, countdown = make_tasks()
    tok = make_tokenizer(*train_tasks, countdown)
    top = max(b.budgets)
    t_start, c_start = time.perf_counter(), time.process_time()
    # precondition (issue 15): on ground-truth traces of the claim task the fork-join critical path must be <= 0.7x parallel's
    pre = {"claim_task": latency_precondition(claim_task, tok, 40, CAPACITY, max_ratio=MAX_GT_RATIO, subquery=SUBQUERY),
           "countdown3": latency_precondition(countdown, tok, 20, CAPACITY, max_ratio=MAX_GT_RATIO)}
    main_model = f"rl_lam{b.lambdas[0]:g}" if b.lambdas else "sft"
    think_rl = ThinkConfig(capacity=CAPACITY, max_org_tokens=b.rl_max_tokens, max_worker_tokens=b.rl_max_tokens)
    per_seed, rl_curves = [], {}
    n_models = 1 + len(b.lambdas) + (2 if b.topo_sft_steps else 0)
    prog = progress(len(b.seeds) * n_models, "models trained and evaluated (SFT, RL per lambda, topology ablation)")

    def one_seed(seed: int) -> dict:
        """SFT, RL per lambda, evaluations and the topology ablation of one seed, each a stage."""
        prog.set(seed=seed)
        cpu = {"sft": 0.0, "rl": 0.0, "eval": 0.0, "topology": 0.0}  # CPU seconds per stage (stored cost when reused)

        def sft_fit(steps: int, topologies, init: Transformer | None = None, lr: float | None = None, run_dir=None, on_step=None):
            m, loss = _sft(tok, train_tasks, b, seed, steps, topologies, init=init, lr=lr, run_dir=run_dir, on_step=on_step)
            return m, {"loss": loss}

        sft_model, extra, c = model_stage(root, budget, f"seed{seed}_sft", b, tok, {"seed": seed},
                                          lambda *ck: sft_fit(b.sft_steps, TRAIN_TOPOLOGIES, None, None, *ck), ckpt_every=b.sft_ckpt_every)
        sft_loss = extra["loss"]
        cpu["sft"] += c
        models = {"sft": sft_model}
        sft_digest = stages.weights_digest(sft_model.state_dict())
        for lam in b.lambdas:  # RL on the training shapes, one run (one optimizer, resumable) per lambda

            def rl_fit(lam=lam):
                m = copy.deepcopy(sft_model)
                run_dir = (Path(root) / budget / "rl" if root is not None else out_dir / "rl") / f"seed{seed}_lam{lam:g}"
                hist = rl_train(m, tok, train_tasks, think_rl, RLConfig(steps=b.rl_steps, questions=b.rl_questions, group=b.group, lr=b.rl_lr,
                                                                        lam=lam, tau=TAU, seed=seed, save_every=b.save_every,
                                                                        temperature=b.rl_temperature),
                                run_dir=run_dir)  # fmt: skip
                return m, {"history": hist}

            m, extra, c = model_stage(root, budget, f"seed{seed}_rl_lam{lam:g}", b, tok, {"seed": seed, "lam": lam, "init": sft_digest}, rl_fit)
            models[f"rl_lam{lam:g}"] = m
            rl_curves[f"seed{seed}_lam{lam:g}"] = extra["history"]
            cpu["rl"] += c
        if seed == b.seeds[0]:  # the trained organizer: `sherman think "123+456;789+12=" --backend local --ckpt OUT/organizer`
            save_checkpoint(out_dir / "organizer", models[f"rl_lam{b.lambdas[0]:g}" if b.lambdas else "sft"], extra={"seed": seed})
            tok.save(out_dir / "organizer" / "tokenizer.json")
        eval_rng = random.Random(10_000 + seed)  # test questions: a stream no training step draws from
        claim_exs = [claim_task.sample(eval_rng) for _ in range(b.n_eval)]
        held_exs = [heldout.sample(eval_rng) for _ in range(b.n_eval)]
        res, fields = {}, {}
        for mname, m in models.items():  # curves for the format-SFT model and the compared RL model, the top budget for the rest

            def ev(m=m, mname=mname):
                grid = b.budgets if mname in ("sft", main_model) else (top,)
                out = {"claim": evaluate(m, tok, claim_task, claim_exs, seed, b.eval_temperature, grid),
                       "heldout": evaluate(m, tok, heldout, held_exs, seed, b.eval_temperature, (top,))}
                if mname in ("sft", main_model):
                    out["fields"] = field_accuracy(m, tok, claim_task, claim_exs)
                return out

            out, c = eval_stage(root, budget, f"seed{seed}_{mname}", b, m, ev)
            res[f"{mname}/claim"], res[f"{mname}/heldout"] = out["claim"], out["heldout"]
            if "fields" in out:
                fields[mname] = out["fields"]
            cpu["eval"] += c
            prog.advance()
        topo_loss = {}
        if b.topo_sft_steps:  # ablation: fork-all-then-join-all vs interleaved traces (the same SFT model, same steps, no RL)
            for topo in ("fork_all", "interleaved"):
                m, extra, c = model_stage(root, budget, f"seed{seed}_topo_{topo}", b, tok, {"seed": seed, "topo": topo, "init": sft_digest},
                                          lambda *ck, topo=topo: sft_fit(b.topo_sft_steps, (topo,), sft_model, b.topo_lr, *ck),
                                          ckpt_every=b.sft_ckpt_every)
                out, c2 = eval_stage(root, budget, f"seed{seed}_topo_{topo}", b, m,
                                     lambda m=m: evaluate(m, tok, claim_task, claim_exs, seed, b.eval_temperature, (top,), methods=("asyncthink",)))
                res[f"topo_{topo}/claim"] = out
                topo_loss[topo] = extra["loss"][-1]
                cpu["topology"] += c + c2
                prog.advance()
        return {"seed": seed, "cpu_s": cpu, "sft_loss_first": sft_loss[0], "sft_loss_last": sft_loss[-1], "topo_sft_loss_last": topo_loss,
                "fields": fields, "eval": res}  # fmt: skip

    for seed in b.seeds if only_seeds is None else [s for s in b.seeds if s in only_seeds]:
        per_seed.append(one_seed(seed))
    prog.close()
    if only_seeds is not None:
        return {"seeds": [x["seed"] for x in per_seed], "cpu_s": [x["cpu_s"] for x in per_seed]}
    rows = _rows(per_seed, b, pre)
    agg = _aggregate(per_seed)
    plots = _plot_curves(per_seed, out_dir) + _plot_rl(rl_curves, out_dir)
    notes = (f"budget {budget}, seeds {list(b.seeds)}; model dim {b.dim} x {b.n_layers} layers, char tokenizer with the protocol tags as "
             f"single tokens; task: {claim_task.cfg.n_expressions}-expression {claim_task.cfg.min_digits}-digit sums ({b.n_sft} training "
             f"questions, {claim_task.cfg.style} scratchpad), held out: {heldout.cfg.n_expressions} expressions; organizer sub-query = the "
             f"expression's position ({SUBQUERY}). SFT {b.sft_steps} steps (traces: {', '.join(TRAIN_TOPOLOGIES)}); RL {b.rl_steps} steps x "
             f"{b.rl_questions} questions x G={b.group} per lambda in {list(b.lambdas)} (tau {TAU}, c {CAPACITY}); topology ablation "
             f"{b.topo_sft_steps} further SFT steps per arm from the seed's SFT model; {b.n_eval} test questions per set; claims use '{main_model}'. Latency = fork-join "
             f"critical path in decode steps; parallel = {CAPACITY - 1} samples, majority vote; every method at T={b.eval_temperature:g}; "
             f"per-sample budgets {list(b.budgets)} (claims at {top}). Total wall {time.perf_counter() - t_start:.0f}s, CPU "
             f"{time.process_time() - c_start:.0f}s (per seed and stage: " + "; ".join(
                 f"seed {x['seed']}: " + ", ".join(f"{k} {v:.0f}s" for k, v in x["cpu_s"].items()) for x in per_seed) + ").")
    result = {"name": "asyncthink", "claim": CLAIM, "verdict": overall([r["verdict"] for r in rows]), "rows": rows, "plots": plots,
              "notes": notes, "metrics": {"eval": agg, "per_seed": per_seed, "rl": rl_curves, "precondition": pre}}  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every scalar metric: {model/set: {method: {metric: mean}}}."""
    first = per_seed[0]["eval"]
    return {k: {meth: {m: float(np.mean([s["eval"][k][meth][m] for s in per_seed])) for m, v in first[k][meth].items() if m != "curve"}
                for meth in first[k]} for k in first}  # fmt: skip


def curve_mean_acc(curve: list[dict]) -> float:
    """Mean accuracy over the budget grid (the area under accuracy vs budget index)."""
    return float(np.mean([p["acc"] for p in curve]))


def pm(v) -> str:
    """A verdict's effect and spread as the report prints them."""
    if v.verdict == NOT_TESTABLE:
        return f"{v.effect:+.3f}, both arms " + ("at the ceiling" if "ceiling" in v.reason else "failed")
    return f"{v.effect:+.3f} ± {v.spread:.3f}" if v.spread == v.spread else f"{v.effect:+.3f} (one seed)"


def sft_accuracy_row(evals: list[dict], main_model: str) -> dict:
    """The accuracy claim on the format-SFT model, one dict of evaluations per seed (`{model/set: {method: metrics}}`).

    Why this row: RL (`think.train.rl_train`) trains the organizer and its workers only, never the `<SEQ>` format, yet
    the claim row evaluates all three methods with the RL weights; the longer the RL, the more the baselines drift
    (at full, seed 1: parallel 0.45 with the SFT weights, 0.24 after 300 RL steps). Format SFT trained both formats on
    the same questions for the same steps, so on its weights the comparison changes one thing, the protocol."""
    per = {m: [e["sft/claim"][m]["acc"] for e in evals] for m in ("asyncthink", "parallel", "sequential")}
    vs = [compare(per["asyncthink"], per[o], MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING) for o in ("parallel", "sequential")]
    drift = {m: float(np.mean([e[f"{main_model}/claim"][m]["acc"] for e in evals])) for m in ("parallel", "sequential")}

    return {"claim": "Accuracy on the format-SFT weights (both formats trained alike; RL trains only the AsyncThink protocol): AsyncThink > both",
            "paper": "AsyncThink highest (Table 1)",
            "ours": f"async {np.mean(per['asyncthink']):.2f} | parallel {np.mean(per['parallel']):.2f} | sequential "
            f"{np.mean(per['sequential']):.2f}; paired async - parallel {pm(vs[0])}, async - sequential {pm(vs[1])}; per seed async/parallel "
            + ", ".join(f"{a:.2f}/{p:.2f}" for a, p in zip(per["asyncthink"], per["parallel"]))
            + f"; the same baselines on the {main_model} weights: parallel {drift['parallel']:.2f}, sequential {drift['sequential']:.2f}",
            "verdict": overall(vs)}  # fmt: skip


def _rows(per_seed: list[dict], b: Budget, pre: dict) -> list[dict]:
    main_model = f"rl_lam{b.lambdas[0]:g}" if b.lambdas else "sft"
    ck, hk = f"{main_model}/claim", f"{main_model}/heldout"

    def per(key: str, meth: str, metric: str) -> list[float]:  # one value per seed (the shared rule's spread)
        return [s["eval"][key][meth][metric] for s in per_seed]

    def mean(key: str, meth: str, metric: str) -> float:
        return float(np.mean(per(key, meth, metric)))

    rows = []
    fields_text = "".join(
        f"; {name} greedy on true contexts: worker {np.mean([x['fields'][name]['worker'] for x in per_seed]):.2f} (copies its "
        f"expression {np.mean([x['fields'][name]['worker_copy'] for x in per_seed]):.2f}), organizer copies the joins "
        f"{np.mean([x['fields'][name]['organizer_copy'] for x in per_seed]):.2f}"
        for name in dict.fromkeys(("sft", main_model)) if all(name in x.get("fields", {}) for x in per_seed))
    a, s, p = (mean(ck, m, "acc") for m in ("asyncthink", "sequential", "parallel"))
    vs = [compare(per(ck, "asyncthink", "acc"), per(ck, o, "acc"), MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING) for o in ("parallel", "sequential")]
    rows.append({"claim": "Accuracy: AsyncThink > parallel and > sequential thinking (same model, temperature and per-sample budget)",
                 "paper": "AsyncThink highest (Table 1)",
                 "ours": f"async {a:.2f} | parallel {p:.2f} | sequential {s:.2f}; paired async - parallel {pm(vs[0])}, async - sequential {pm(vs[1])}"
                 + fields_text,
                 "verdict": overall(vs)})  # fmt: skip
    if main_model != "sft":  # the same comparison where both formats had the same training (see `sft_accuracy_row`)
        rows.append(sft_accuracy_row([s["eval"] for s in per_seed], main_model))
    pc = pre["claim_task"]
    lat_a, lat_p = mean(ck, "asyncthink", "latency_mean"), mean(ck, "parallel", "latency_mean")
    lat = compare(per(ck, "asyncthink", "latency_mean"), per(ck, "parallel", "latency_mean"), LATENCY_CUT * lat_p, higher_is_better=False)
    worse = compare(per(ck, "parallel", "acc"), per(ck, "asyncthink", "acc"), MIN_ACC_GAIN).verdict == REPRODUCED
    v2 = PARTLY if lat.verdict == REPRODUCED and worse else lat.verdict  # latency bought with accuracy: at most partly
    if not pc["passed"] or max(a, p) <= 0.0:  # no room for fork-join even on ground truth, or both methods fail (at the ceiling it stays testable)
        v2 = NOT_TESTABLE
    rows.append({"claim": "Latency: AsyncThink's critical path <= 0.72x parallel thinking's at equal or better accuracy",
                 "paper": "-28% latency", "ours": f"async {lat_a:.1f} vs parallel {lat_p:.1f} steps ({lat_a / max(lat_p, 1e-9):.2f}x; paired "
                 f"{-lat.effect:+.1f} ± {lat.spread:.1f}), acc {a:.2f} vs {p:.2f}; precondition: ground-truth fork-all / parallel = "
                 f"{pc['fork_all_ratio']:.2f}, interleaved {pc['interleaved_ratio']:.2f} (needs <= {MAX_GT_RATIO:.2f}; 3-number Countdown "
                 f"{pre['countdown3']['best_ratio']:.2f})", "verdict": v2})  # fmt: skip
    if "curve" in per_seed[0]["eval"][ck]["asyncthink"]:
        cv = {m: [curve_mean_acc(s["eval"][ck][m]["curve"]) for s in per_seed] for m in ("asyncthink", "parallel", "sequential")}
        vc = [compare(cv["asyncthink"], cv[o], MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING) for o in ("parallel", "sequential")]
        pts = "; ".join(f"B={pt['budget']}: " + ", ".join(
            f"{m[:3]} {np.mean([s['eval'][ck][m]['curve'][i]['acc'] for s in per_seed]):.2f}@{np.mean([s['eval'][ck][m]['curve'][i]['latency_mean'] for s in per_seed]):.0f}"
            for m in ("asyncthink", "parallel", "sequential")) for i, pt in enumerate(per_seed[0]["eval"][ck]["asyncthink"]["curve"]))  # fmt: skip
        rows.append({"claim": "Accuracy over matched per-sample token budgets (mean over the budget grid): AsyncThink above both",
                     "paper": "better accuracy-latency trade-off (Fig. 4)",
                     "ours": f"mean acc async {np.mean(cv['asyncthink']):.2f} | parallel {np.mean(cv['parallel']):.2f} | sequential "
                     f"{np.mean(cv['sequential']):.2f}; paired vs parallel {pm(vc[0])}; points acc@latency: {pts}",
                     "verdict": overall(vc)})  # fmt: skip
    vh = [compare(per(hk, "asyncthink", "acc"), per(hk, o, "acc"), MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING) for o in ("parallel", "sequential")]
    rows.append({"claim": "Generalization to an unseen shape (4 expressions; trained on 3): AsyncThink above both baselines",
                 "paper": "AsyncThink generalizes (Sudoku, Sec. 4.3)",
                 "ours": f"async {mean(hk, 'asyncthink', 'acc'):.2f} (format ok {mean(hk, 'asyncthink', 'format_ok'):.2f}) | parallel "
                 f"{mean(hk, 'parallel', 'acc'):.2f} | sequential {mean(hk, 'sequential', 'acc'):.2f}", "verdict": overall(vh)})  # fmt: skip
    if b.lambdas:  # ablation: no RL (format SFT only)
        v = compare(per(ck, "asyncthink", "acc"), per("sft/claim", "asyncthink", "acc"), MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING)
        rows.append({"claim": f"Ablation, no RL: RL (lambda={b.lambdas[0]:g}) raises AsyncThink's accuracy over format SFT only",
                     "paper": "RL improves over the cold-start model (Sec. 4.4)",
                     "ours": f"acc {a:.2f} vs {mean('sft/claim', 'asyncthink', 'acc'):.2f} (paired {pm(v)}); latency {lat_a:.1f} vs "
                     f"{mean('sft/claim', 'asyncthink', 'latency_mean'):.1f}; format ok {mean(ck, 'asyncthink', 'format_ok'):.2f} vs "
                     f"{mean('sft/claim', 'asyncthink', 'format_ok'):.2f}", "verdict": v.verdict})  # fmt: skip
    if len(b.lambdas) > 1 and 0.0 in b.lambdas:  # ablation: the concurrency reward raises eta
        k0 = "rl_lam0/claim"
        v = compare(per(ck, "asyncthink", "eta"), per(k0, "asyncthink", "eta"), MIN_ETA_GAIN)
        rows.append({"claim": f"Ablation, lambda = 0: the concurrency reward (lambda={b.lambdas[0]:g}) raises eta",
                     "paper": "removing it lowers concurrency (Sec. 4.4)",
                     "ours": f"eta {mean(ck, 'asyncthink', 'eta'):.2f} vs {mean(k0, 'asyncthink', 'eta'):.2f} (paired {pm(v)}); latency "
                     f"{lat_a:.1f} vs {mean(k0, 'asyncthink', 'latency_mean'):.1f}; acc {a:.2f} vs {mean(k0, 'asyncthink', 'acc'):.2f}",
                     "verdict": v.verdict})  # fmt: skip
    if "topo_fork_all/claim" in per_seed[0]["eval"]:  # ablation: fork-all-then-join-all vs interleaved traces
        fa, il = "topo_fork_all/claim", "topo_interleaved/claim"
        vl = compare(per(fa, "asyncthink", "latency_mean"), per(il, "asyncthink", "latency_mean"),
                     MIN_TOPO_LATENCY_GAIN * mean(il, "asyncthink", "latency_mean"), higher_is_better=False)  # fmt: skip
        va = compare(per(fa, "asyncthink", "acc"), per(il, "asyncthink", "acc"), MIN_ACC_GAIN, fail_at=0.0, ceiling=ACC_CEILING)
        rows.append({"claim": "Ablation, trace topology: fork-all-then-join-all traces give a shorter critical path than interleaved ones "
                     f"(the format-SFT model trained {b.topo_sft_steps} more steps on one topology each, no RL)", "paper": "(ablation asked by issue 15; the paper mixes structures, Sec. 3.1)",
                     "ours": f"latency {mean(fa, 'asyncthink', 'latency_mean'):.1f} vs {mean(il, 'asyncthink', 'latency_mean'):.1f} "
                     f"(paired {-vl.effect:+.1f} ± {vl.spread:.1f}); acc {mean(fa, 'asyncthink', 'acc'):.2f} vs "
                     f"{mean(il, 'asyncthink', 'acc'):.2f} (paired {pm(va)}; accuracy verdict: {va.verdict}); ground truth "
                     f"{pc['fork_all_latency']:.1f} vs {pc['interleaved_latency']:.1f}", "verdict": vl.verdict})  # fmt: skip
    return rows


def _plot_curves(per_seed: list[dict], out_dir: Path) -> list[str]:
    """Accuracy vs critical-path latency over the per-sample budgets (mean over seeds), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = per_seed[0]["eval"]
    keys = [k for k in ev if k.endswith("/claim") and "curve" in ev[k]["asyncthink"]]
    cols = min(2, len(keys))  # at most 2 panels per row: legible at the report's width
    nrow = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(6 * cols, 4.4 * nrow), squeeze=False)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    colors = {"asyncthink": "tab:red", "parallel": "tab:blue", "sequential": "tab:green"}
    for ax, k in zip(axes.ravel(), keys):
        for meth, c in colors.items():
            n = len(ev[k][meth]["curve"])
            lat = [np.mean([s["eval"][k][meth]["curve"][i]["latency_mean"] for s in per_seed]) for i in range(n)]
            acc = [np.mean([s["eval"][k][meth]["curve"][i]["acc"] for s in per_seed]) for i in range(n)]
            ax.plot(lat, acc, "-o", color=c, label=meth, ms=4)
            for i, pt in enumerate(ev[k][meth]["curve"]):
                ax.annotate(str(pt["budget"]), (lat[i], acc[i]), fontsize=6, color=c, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{k.split('/')[0]}: accuracy vs latency over per-sample budgets")
        ax.set_xlabel("critical-path latency (decode steps)")
        ax.set_ylabel(f"accuracy (mean of {len(per_seed)} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
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
    for ax, k in zip(axes.ravel(), keys):
        for name, hist in curves.items():
            ax.plot([h["step"] for h in hist], [h[k] for h in hist], label=name, lw=1)
        ax.set_title(k.split("/")[1])
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "asyncthink_rl_curves.png", dpi=110)
    plt.close(fig)
    return ["asyncthink_rl_curves.png"]

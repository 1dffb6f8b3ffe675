"""AsyncThink training: format SFT on programmatic organizer/worker traces, then RL (arXiv 2510.26658, Sec. 3).

Stage 1, cold-start format fine-tuning (Sec. 3.1). The paper synthesises organizer-worker traces with a
strong model; we build them programmatically from the task's ground truth, with randomized topologies
(Sec. 3.1 "diverse fork-join structures"):
    interleaved      fork, fork, join, fork, join, join ...    (never more than c - 1 workers open)
    fork_all         fork every sub-query, then join them all   (capped by c - 1 at a time)
    no_fork          the organizer solves everything itself (sequential thinking inside the protocol)
Joined text (`takeaways</JOIN-i>`) is inserted by the engine at inference, so it is masked from the loss.
Workers are trained on `question<WORK>sub-query<WORK>` -> `thinking<RETURN>takeaways</RETURN>`; the sequential baseline
on `question<SEQ>` -> `thinking<ANSWER>answer</ANSWER>` (same data budget, same model family).

Stage 2, RL (Sec. 3.2): rollouts with the engine; reward = format penalty on any format error, else
accuracy + lambda * min(eta / c, tau) / tau; the group-relative advantage of a rollout is shared by every
token the organizer and its workers decoded (inserted text and prompts are masked); the policy loss and
the advantages are `sherman.rl.core`'s.

Tasks: multi-expression arithmetic (sub-query = one expression, worked with the place-value scratchpad) and
multi-solution Countdown (sub-query `{op}{rank}` = "the rank-th solution whose top-level operator is op", so
workers search disjoint spaces and every solution in the organizer's answer is one a worker returned;
thinking = the expression's steps "3*7=21,21+5=26" before it is returned). Sequential thinking works the
same steps one after the other.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import torch

from sherman.core.tokenizer import CharTokenizer
from sherman.core.train import SeqExample
from sherman.tasks.arithmetic import Arithmetic
from sherman.tasks.base import Example
from sherman.tasks.countdown import Countdown, solutions, steps
from sherman.tasks.parsing import parse_expr
from sherman.think.engine import AsyncThinkEngine, ThinkConfig, ThinkResult
from sherman.think.protocol import protocol_specials, thinking_reward

MAX_FORKS = 8
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", *protocol_specials(MAX_FORKS))
TOPOLOGIES = ("interleaved", "fork_all", "no_fork")


INDEX_LETTERS = "abcdefgh"
"""Sub-queries of the 'letter' mode: the k-th expression is named by the k-th letter (letters never occur in a question)."""


def make_tokenizer(*tasks) -> CharTokenizer:
    """Char tokenizer over the tasks' alphabets (+ the index letters), with the protocol tags as single tokens."""
    return CharTokenizer("".join(t.alphabet() for t in tasks) + "?" + INDEX_LETTERS, specials=SPECIALS)


# ---------------------------------------------------------------------------------------------------
# decomposition of each task into sub-queries (ground truth, for traces)


@dataclass
class Plan:
    subqueries: list[str]
    """What the organizer forks."""
    worker_traces: list[str]
    """Each worker's completion (thinking + <RETURN>...</RETURN>)."""
    solo: str
    """The organizer's own thinking when it does not fork (no_fork) and the sequential trace's thinking."""
    answer: str
    """Final answer body, given the workers' takeaways."""
    solo_answer: str = ""
    """Answer after the solo thinking (no_fork / sequential); empty = `answer`."""


def top_op(expr: str) -> str:
    e = parse_expr(expr)
    return e.op if e is not None and e.op != "n" else "?"


SUBQUERIES = ("expr", "index", "letter")
"""How an arithmetic organizer names a sub-problem: 'expr' copies the expression ("47*85="), 'index' gives its
position in the question ("2" = the second expression; workers see the question, so one token says which), 'letter'
the same position as a letter ("b" = the second): one token whose content occurs nowhere else in the worker's prompt,
so attention can find it from any position (a digit index looks like the question's digits)."""


def plan(task, ex: Example, subquery: str = "expr") -> Plan:
    """Ground-truth decomposition of one question. subquery: see SUBQUERIES (arithmetic only; Countdown's sub-query
    is always `{op}{rank}`)."""
    if subquery not in SUBQUERIES:
        raise ValueError(f"subquery must be one of {SUBQUERIES}, got {subquery!r}")
    if isinstance(task, Arithmetic):
        subs, traces = [], []
        for k, ((a, op, b), res) in enumerate(zip(ex.meta["exprs"], ex.meta["results"]), start=1):
            subs.append(f"{a}{op}{b}=" if subquery == "expr" else str(k) if subquery == "index" else INDEX_LETTERS[k - 1])
            traces.append(f"{task.think(a, op, b)}<RETURN>{res}</RETURN>")
        solo = ";".join(task.think(a, op, b) for a, op, b in ex.meta["exprs"])
        return Plan(subs, traces, solo, ex.answer)
    if isinstance(task, Countdown):
        return _countdown_plan(task, ex)
    raise TypeError(f"no AsyncThink decomposition for task {type(task).__name__}")


def countdown_assignments(task: Countdown, ex: Example) -> list[tuple[str, int, str]]:
    """The n solutions an organizer collects, as (top operator, rank among that operator's solutions, expression).

    Solutions are grouped by top-level operator (disjoint search spaces) in canonical order; the n required
    ones are taken round-robin over the operators (every operator's 1st, then every operator's 2nd, ...), so a
    question where one operator holds every solution gets workers `*1`, `*2`, ... of that operator. Each
    assignment is one worker's sub-query `{op}{rank}` ("the rank-th solution with top operator op"), whose
    returned result is exactly that expression: every answer comes from some worker."""
    nums, target, n = ex.meta["numbers"], ex.meta["target"], ex.meta["n_solutions"]
    table = solutions(tuple(sorted(nums)), task.cfg.ops).get(target, {})
    by_op: dict[str, list[str]] = {}
    for k in sorted(table):
        by_op.setdefault(top_op(table[k]), []).append(table[k])
    ops = [o for o in "+-*/" if o in by_op]
    out: list[tuple[str, int, str]] = []
    for rank in range(max((len(v) for v in by_op.values()), default=0)):
        for o in ops:
            if rank < len(by_op[o]) and len(out) < n:
                out.append((o, rank + 1, by_op[o][rank]))
    return out


def _countdown_plan(task: Countdown, ex: Example) -> Plan:
    def think(e: str) -> str:
        return ",".join(steps(parse_expr(e)))

    assign = countdown_assignments(task, ex)
    subs = [f"{o}{rank}" for o, rank, _ in assign]
    traces = [f"{think(e)}<RETURN>{e}</RETURN>" for _, _, e in assign]
    answer = ";".join(e for _, _, e in assign)
    return Plan(subs, traces, ";".join(think(e) for _, _, e in assign), answer)


def organizer_trace(p: Plan, topology: str, capacity: int, rng: random.Random) -> list[tuple[str, bool]]:
    """Organizer completion as (text, is_model_text) segments; inserted join text has is_model_text=False."""
    segs: list[tuple[str, bool]] = []
    k = len(p.subqueries)
    if topology == "no_fork" or k == 0 or capacity < 2:
        return [(p.solo + f"<ANSWER>{p.solo_answer or p.answer}</ANSWER>", True)]
    takeaways = [t.split("<RETURN>", 1)[1].split("</RETURN>", 1)[0] for t in p.worker_traces]
    order = list(range(k))
    open_: list[int] = []
    nxt = 0
    while nxt < k or open_:
        room = capacity - 1 - len(open_)
        if topology == "fork_all":
            fork_now = nxt < k and room > 0
        else:  # interleaved: fork while there is room, joining at random moments
            fork_now = nxt < k and room > 0 and (not open_ or rng.random() < 0.6)
        if fork_now:
            i = order[nxt] + 1
            segs.append((f"<FORK-{i}>{p.subqueries[order[nxt]]}</FORK-{i}>", True))
            open_.append(i)
            nxt += 1
        else:
            i = open_.pop(0)
            segs.append((f"<JOIN-{i}>", True))
            segs.append((f"{takeaways[i - 1]}</JOIN-{i}>", False))
    segs.append((f"<ANSWER>{p.answer}</ANSWER>", True))
    return segs


def replay_trace(task, ex: Example, tok, topology: str, capacity: int, rng: random.Random, subquery: str = "expr") -> ThinkResult:
    """Play the ground-truth trace through the real engine, one token of `tok` per decode step (the organizer's
    text from `organizer_trace`, each worker's from the plan): its latency is the fork-join critical path."""
    import re

    from sherman.think.backends import ScriptedBackend

    p = plan(task, ex, subquery)
    org = "".join(t for t, learn in organizer_trace(p, topology, capacity, rng) if learn)
    workers = dict(zip(p.subqueries, p.worker_traces))

    def script(prompt: str) -> str:
        if "<ORG>" in prompt:
            done = re.sub(r"(<JOIN-(\d+)>).*?</JOIN-\2>", r"\1", prompt.split("<ORG>", 1)[1], flags=re.S)
            return org[len(done):]
        return workers[prompt.split("<WORK>")[1]]

    cfg = ThinkConfig(capacity=capacity, max_org_tokens=10**5, max_worker_tokens=10**5)
    return AsyncThinkEngine(ScriptedBackend(script, tokenizer=tok), cfg).run_sync(ex.prompt)


def sequential_length(task, ex: Example, tok) -> int:
    """Tokens of the ground-truth sequential trace: the latency of parallel thinking, whose k samples each
    solve the whole question (the critical path of k parallel samples is the longest one)."""
    p = plan(task, ex)
    return len(tok.encode(p.solo + f"<ANSWER>{p.solo_answer or p.answer}</ANSWER>"))


def latency_precondition(task, tok, n: int, capacity: int, seed: int = 0, max_ratio: float = 0.7,
                         topologies=("interleaved", "fork_all"), subquery: str = "expr") -> dict:
    """On n ground-truth traces per topology: mean fork-join critical path / mean parallel-thinking latency.
    The paper's latency claim is testable on `task` only if some topology reaches ratio <= max_ratio."""
    rng = random.Random(seed)
    exs = [task.sample(rng) for _ in range(n)]
    par = sum(sequential_length(task, ex, tok) for ex in exs) / n
    out: dict = {"parallel_latency": par, "max_ratio": max_ratio}
    for topo in topologies:
        fj = sum(replay_trace(task, ex, tok, topo, capacity, rng, subquery).latency for ex in exs) / n
        out[f"{topo}_latency"] = fj
        out[f"{topo}_ratio"] = fj / max(par, 1e-9)
    out["best_ratio"] = min(out[f"{t}_ratio"] for t in topologies)
    out["passed"] = out["best_ratio"] <= max_ratio
    return out


def _example(tok: CharTokenizer, prompt: str, segs: list[tuple[str, bool]]) -> SeqExample:
    ids = tok.encode(prompt, bos=True)
    mask = [0] * len(ids)
    for text, learn in segs:
        t = tok.encode(text)
        ids += t
        mask += [1 if learn else 0] * len(t)
    return SeqExample(ids, mask)


def organizer_example(tok: CharTokenizer, think: ThinkConfig, question: str, segs: list[tuple[str, bool]]) -> SeqExample:
    """The organizer's SFT example: its prompt as the engine builds it (`think.organizer_template`, <bos> as the local
    backend encodes it), then `organizer_trace` segments, the joined text masked (the engine inserts it)."""
    return _example(tok, think.organizer_template.format(question=question), segs)


def worker_example(tok: CharTokenizer, think: ThinkConfig, question: str, query: str, trace: str) -> SeqExample:
    """A worker's SFT example: the prompt the engine gives a forked worker, then its thinking and return."""
    return _example(tok, think.worker_template.format(question=question, query=query), [(trace, True)])


def sft_examples(task, tok: CharTokenizer, n: int, rng: random.Random, capacity: int = 4, topologies=TOPOLOGIES,
                 think: ThinkConfig | None = None, sequential: bool = False, subquery: str = "expr") -> list[SeqExample]:
    """n questions -> organizer + worker examples (or sequential examples with sequential=True)."""
    think = think or ThinkConfig(capacity=capacity)
    out: list[SeqExample] = []
    for _ in range(n):
        ex = task.sample(rng)
        p = plan(task, ex, subquery)
        if sequential:
            body = p.solo + f"<ANSWER>{p.solo_answer or p.answer}</ANSWER>"
            out.append(_example(tok, f"{ex.prompt}<SEQ>", [(body, True)]))
            continue
        topo = rng.choice(list(topologies))
        segs = organizer_trace(p, topo, capacity, rng)
        out.append(organizer_example(tok, think, ex.prompt, segs))
        if topo != "no_fork":
            for q, tr in zip(p.subqueries, p.worker_traces):
                out.append(worker_example(tok, think, ex.prompt, q, tr))
    return out


# ---------------------------------------------------------------------------------------------------
# RL


@dataclass
class RLConfig:
    steps: int = 200
    """RL updates of the one run (one optimizer whose state is kept across steps and checkpoints)."""
    questions: int = 4
    """Questions per update (tasks of a mixture are cycled, one task per update)."""
    group: int = 8
    """Rollouts per question (G): the advantage is group-relative ; default G = 8."""
    lr: float = 3e-4
    """AdamW learning rate."""
    lam: float = 0.5
    """lambda: weight of the concurrency reward."""
    tau: float = 0.5
    """tau: the concurrency reward saturates at eta / c = tau."""
    format_penalty: float = -1.0
    """Reward of a rollout with any format error."""
    temperature: float = 1.0
    """Rollout sampling temperature."""
    clip: float = 0.2
    """PPO clip (one update per batch, so the ratio is 1 at the start; kept for parity with rl/)."""
    seed: int = 0
    """Step t samples its questions and rollouts from seeds derived from (seed, t): resume is exact."""
    save_every: int = 0
    """Checkpoint (weights + optimizer state + history) every N steps into run_dir (0 = only at the end)."""
    keep: int = 2
    """Checkpoints kept in run_dir."""


def rollout_reward(task, ex: Example, r: ThinkResult, capacity: int, cfg: RLConfig) -> tuple[float, float]:
    """(reward, accuracy) of one engine rollout."""
    acc = task.reward(ex, "#" + r.answer) if r.answer is not None else 0.0
    return thinking_reward(r.errors, acc, r.eta, capacity, cfg.lam, cfg.tau, cfg.format_penalty), acc


def rollout_sequences(r: ThinkResult, tok: CharTokenizer) -> list[tuple[list[int], list[int], list[float]]]:
    """Every agent's (ids, mask, old_logp aligned with ids) of a rollout; mask = 1 on decoded tokens only."""
    seqs = []
    for log in [r.organizer, *r.worker_logs.values()]:
        ids, mask, lps = [], [], []
        for s in log.segments:
            if s.kind == "prompt":
                t = tok.encode(s.text, bos=True)
                ids += t
                mask += [0] * len(t)
                lps += [0.0] * len(t)
            elif s.kind == "gen":
                ids += s.ids
                mask += [1] * len(s.ids)
                lps += s.logps
            else:
                t = tok.encode(s.text)
                ids += t
                mask += [0] * len(t)
                lps += [0.0] * len(t)
        if sum(mask) > 0:
            seqs.append((ids, mask, lps))
    return seqs


def run_many(backend, think: ThinkConfig, questions: list[str]) -> list[ThinkResult]:
    """Run the engine on many questions concurrently over one backend (one batcher: one forward per step)."""

    async def main():
        eng = AsyncThinkEngine(backend, think)
        try:
            return await asyncio.gather(*[eng.run(q) for q in questions])
        finally:
            if hasattr(backend, "aclose"):
                await backend.aclose()

    return asyncio.run(main())


def policy_update(model, opt, tok, results: list[ThinkResult], adv: list[float], clip: float = 0.2) -> float:
    """One policy-gradient step: every decoded token of rollout j (organizer and workers) gets advantage adv[j].
    Returns the loss (0.0 and no step when every advantage is 0)."""
    from sherman.rl.core import policy_loss

    rows, row_adv = [], []
    for j, r in enumerate(results):
        for s in rollout_sequences(r, tok):
            rows.append(s)
            row_adv.append(float(adv[j]))  # shared by the organizer and every worker of rollout j
    if not rows or all(a == 0 for a in row_adv):
        return 0.0
    model.train()
    t = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), t), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), t)
    old = torch.zeros(len(rows), t)
    for i, (a, m, lp) in enumerate(rows):
        ids[i, : len(a)] = torch.tensor(a)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        old[i, : len(lp)] = torch.tensor(lp)
    logits = model(ids[:, :-1]).logits  # (B, T-1, V)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    loss, _ = policy_loss(logp, old[:, 1:], torch.tensor(row_adv), mask[:, 1:], clip_low=clip, clip_high=clip)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    model.eval()
    return float(loss.detach())


def rl_train(model, tok, tasks, think: ThinkConfig, cfg: RLConfig, log=None, run_dir=None) -> list[dict]:
    """GRPO-style RL of the organizer and workers with the AsyncThink reward, as ONE run with ONE AdamW.

    `tasks`: a task or a list (a mixture, one task per step in turn). With `run_dir`, the run checkpoints
    (`core.checkpoint`: weights, optimizer state, step, history; no pickle) and resumes from the newest
    checkpoint there, continuing the same optimizer state. Returns the per-step metrics of the whole run."""
    from sherman.core.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, step_dir
    from sherman.core.generate import SamplingParams
    from sherman.rl.core import grpo_advantages
    from sherman.think.backends import LocalBackend

    tasks = list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    history: list[dict] = []
    start = 0
    if run_dir is not None and (ck := latest_checkpoint(run_dir)) is not None:
        start, extra = load_checkpoint(ck, model, opt, restore_rng=False)
        history = list(extra.get("history", []))[:start]
    for step in range(start, cfg.steps):
        task = tasks[step % len(tasks)]
        rng = random.Random(cfg.seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        exs = [task.sample(rng) for _ in range(cfg.questions)]
        model.eval()
        backend = LocalBackend(model, tok, SamplingParams(temperature=cfg.temperature), generator=gen)
        results = run_many(backend, think, [ex.prompt for ex in exs for _ in range(cfg.group)])
        rewards, accs = [], []
        for j, r in enumerate(results):
            rew, acc = rollout_reward(task, exs[j // cfg.group], r, think.capacity, cfg)
            rewards.append(rew)
            accs.append(acc)
        adv = grpo_advantages(torch.tensor(rewards), cfg.group)  # (Q * G,) one per rollout
        loss_v = policy_update(model, opt, tok, results, adv.tolist(), cfg.clip)
        row = {
            "step": step,
            "task": getattr(task, "name", type(task).__name__),
            "rollout/reward_mean": sum(rewards) / len(rewards),
            "rollout/acc_mean": sum(accs) / len(accs),
            "rollout/format_ok": sum(1 for r in results if not r.errors) / len(results),
            "rollout/eta_mean": sum(r.eta for r in results) / len(results),
            "rollout/latency_mean": sum(r.latency for r in results) / len(results),
            "loss/policy": loss_v,
            "updates": sum(1 for h in history if h["loss/policy"] != 0.0) + (loss_v != 0.0),
        }
        history.append(row)
        if log is not None:
            log(row)
        last = step + 1 == cfg.steps
        if run_dir is not None and (last or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
            save_checkpoint(step_dir(run_dir, step + 1), model, opt, step + 1, extra={"history": history})
            prune_checkpoints(run_dir, cfg.keep)
    model.eval()
    return history

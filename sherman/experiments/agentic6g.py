"""Agentic AI for 6G: does retrieval + collaborative planning + reflection beat a single agent on real numeric tools?

Papers: arXiv 2505.22311 Sec. IV (agentic system: planner, knowledge base, tools, memory) and CommLLM
(arXiv 2312.07850, multi-agent data retrieval, collaborative planning, reflective evaluation). Here every score is
computed by `sherman.agents.tools` (no LLM judge).

Recipe: seeded multi-user MISO downlink scenarios (users, antennas, power, cell size, fading, min-rate target); the
oracle is the best feasible configuration over WMMSE and every precoder x power policy. Arms, all with the scripted
expert policy (`agents.scripted`): a fixed pipeline (ZF + water-filling; RZF when M < K), a single ReAct agent,
k = 3 parallel single agents with different perspectives (best by the evaluator), and the multi-agent pipeline.
Success on a scenario = meets every user's minimum rate and reaches >= 95% of the oracle's sum rate. Each seed is an
independent scenario set; verdicts use the paired difference multi - single over seeds.

Precondition: the configuration choice matters (the fixed pipeline fails on at least 10% of scenarios whose oracle
is feasible); otherwise no agent can beat it and the claim is not testable here.

The +planner arms repeat single and multi with the tiny planner trained by the project (format SFT on expert
traces, then exactly-on-policy RL with the tool score as reward; `agents.planner`) making the planning decisions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from sherman.agents.agents import AgentConfig, run_episode
from sherman.agents.knowledge import KnowledgeBase
from sherman.agents.memory import Memory
from sherman.agents.planner import PlannerBackend, PlannerTrainConfig, train_planner
from sherman.agents.scripted import expert_backend
from sherman.agents.tools import CommEnv, Scenario, sample_scenario
from sherman.experiments.runner import dump_results

CLAIM = (
    "Retrieval, collaborative planning and reflective evaluation together beat a single agent on communication "
    "system design (arXiv 2505.22311 Sec. IV; CommLLM, arXiv 2312.07850)."
)
SIZES = {"smoke": (4, 2), "quick": (200, 5), "full": (1000, 5)}
"""budget -> (scenarios per seed, seeds)."""
ARMS = ("fixed", "single", "parallel", "multi")
PLANNER_ARMS = ("single+planner", "multi+planner")
"""The same arms with the tiny trained planner making the planning decisions (other roles stay scripted)."""
PLANNER = {"smoke": dict(sft_steps=20, sft_examples=64, rl_steps=1, dim=32), "quick": dict(sft_steps=300, rl_steps=30), "full": dict(sft_steps=1500, rl_steps=200)}
EFFECT = 0.03
"""Smallest success-rate difference counted as an effect (3 points)."""


def question(sc: Scenario) -> str:
    return f"{sc.users} users, {sc.antennas} antennas, {sc.power_dbm:g} dBm, min rate {sc.min_rate:g} bit/s/Hz"


def fixed_pipeline(env: CommEnv) -> dict:
    return env.evaluate("zf" if env.sc.antennas >= env.sc.users else "rzf", "water_filling")


def success(res: dict | None, oracle: dict) -> bool:
    return res is not None and res["feasible"] and res["sum_rate"] >= 0.95 * oracle["sum_rate"]


def run_seed(n: int, seed: int, cfg: AgentConfig, make_backend=expert_backend, planner=None) -> dict:
    """All arms on n seeded scenarios; `make_backend()` gives a fresh policy backend per episode; with a
    `PlannerBackend`, the planner arms run too."""
    rng = np.random.default_rng(seed)
    kb = KnowledgeBase()
    arms = ARMS + (PLANNER_ARMS if planner is not None else ())
    memories = {arm: Memory() for arm in arms}  # each arm learns only from its own episodes
    per = {arm: {"success": [], "violations": [], "tool_calls": [], "critical_tokens": [], "tokens": [], "wall_s": [], "ungrounded": 0} for arm in arms}
    feasible = 0
    for i in range(n):
        sc = sample_scenario(rng, seed * 100_000 + i)
        env = CommEnv(sc)
        oracle = env.oracle()
        if not oracle["feasible"]:
            continue  # no configuration meets the target: nothing to win
        feasible += 1
        t0 = time.perf_counter()
        fx = fixed_pipeline(env)
        outs = {"fixed": (fx, 1, 0.0, 0.0, time.perf_counter() - t0, 0)}
        for arm in arms[1:]:
            kind, _, with_planner = arm.partition("+")
            ep = run_episode(kind, planner if with_planner else make_backend(), question(sc), env, kb, memories[arm], cfg)
            outs[arm] = (ep.best, len(ep.calls), ep.critical_tokens, ep.tokens, ep.wall_s, len(ep.ungrounded))
        for arm, (best, calls, crit, toks, wall, ung) in outs.items():
            p = per[arm]
            p["success"].append(success(best, oracle))
            p["violations"].append(0 if best is None else best["violations"])
            p["tool_calls"].append(calls)
            p["critical_tokens"].append(crit)
            p["tokens"].append(toks)
            p["wall_s"].append(wall)
            p["ungrounded"] += ung
    summary = {arm: {k: (float(np.mean(v)) if isinstance(v, list) and v else v) for k, v in p.items()} for arm, p in per.items()}
    return {"seed": seed, "scenarios": n, "feasible": feasible, "arms": summary}


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and half-width of a t 95% interval of the paired differences a - b."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return float(d.mean()), float("inf")
    t = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}.get(len(d) - 1, 2.0)
    return float(d.mean()), float(t * d.std(ddof=1) / math.sqrt(len(d)))


def verdict_of(mean: float, half: float) -> str:
    if mean >= EFFECT and mean - half > 0:
        return "reproduced"
    if mean >= EFFECT:
        return "partly"
    return "not reproduced"


def run(budget: str, out_dir: Path, seed: int = 0) -> dict:
    n, n_seeds = SIZES[budget]
    cfg = AgentConfig()
    t0 = time.perf_counter()
    model, tok, phist = train_planner(PlannerTrainConfig(seed=seed, **PLANNER[budget]), Path(out_dir) / "planner")
    train_s = time.perf_counter() - t0
    planner = PlannerBackend(model, tok)
    seeds = [run_seed(n, seed + s, cfg, planner=planner) for s in range(n_seeds)]
    arms = ARMS + PLANNER_ARMS
    succ = {arm: [s["arms"][arm]["success"] for s in seeds] for arm in arms}
    mean = {arm: float(np.mean(v)) for arm, v in succ.items()}
    fixed_fail = 1.0 - mean["fixed"]
    pre_ok = fixed_fail >= 0.10
    d_ms, h_ms = paired(succ["multi"], succ["single"])
    d_mp, h_mp = paired(succ["multi"], succ["parallel"])
    v1 = verdict_of(d_ms, h_ms) if pre_ok else "not testable here"
    v2 = verdict_of(d_mp, h_mp) if pre_ok else "not testable here"
    d_pl, h_pl = paired(succ["multi+planner"], succ["single+planner"])
    v3 = verdict_of(d_pl, h_pl) if pre_ok else "not testable here"
    metric = {arm: {k: float(np.mean([s["arms"][arm][k] for s in seeds])) for k in ("violations", "tool_calls", "critical_tokens", "tokens", "wall_s")} for arm in arms}
    ungrounded = {arm: int(sum(s["arms"][arm]["ungrounded"] for s in seeds)) for arm in arms}
    rl_rewards = [h.get("rollout/reward_mean", 0.0) for h in phist["rl"]]
    plots = _plot(mean, succ, metric, out_dir)
    spread = ", ".join(f"{a} {mean[a]:.3f} (seeds {', '.join(f'{x:.2f}' for x in succ[a])})" for a in arms)
    res = {
        "name": "agentic6g",
        "claim": CLAIM,
        "verdict": v1,
        "rows": [
            {"claim": "precondition: the configuration choice matters (fixed ZF + water-filling fails on >= 10% of feasible scenarios)",
             "paper": "-", "ours": f"fixed pipeline fails on {fixed_fail:.1%}", "verdict": "holds" if pre_ok else "fails"},
            {"claim": "multi-agent (retrieval + collaborative planning + reflection) beats a single agent (success within 95% of the oracle, constraints met)",
             "paper": "CommLLM: multi-agent beats single-agent prompting (LLM-judged)",
             "ours": f"{mean['multi']:.3f} vs {mean['single']:.3f}; paired diff {d_ms:+.3f} ± {h_ms:.3f} (95% t, {n_seeds} seeds)", "verdict": v1},
            {"claim": "the multi-agent pipeline beats k = 3 parallel single agents at the evaluator's pick",
             "paper": "-", "ours": f"{mean['multi']:.3f} vs {mean['parallel']:.3f}; paired diff {d_mp:+.3f} ± {h_mp:.3f}", "verdict": v2},
            {"claim": "with the tiny trained planner (SFT + RL on the tool score): multi-agent beats a single agent",
             "paper": "-",
             "ours": f"{mean['multi+planner']:.3f} vs {mean['single+planner']:.3f}; paired diff {d_pl:+.3f} ± {h_pl:.3f}; planner RL reward "
                     f"{(rl_rewards[0] if rl_rewards else float('nan')):.3f} -> {(float(np.mean(rl_rewards[-5:])) if rl_rewards else float('nan')):.3f}",
             "verdict": v3},
            {"claim": "cost: tool calls and critical-path tokens (multi vs single vs parallel)",
             "paper": "-",
             "ours": "; ".join(f"{a}: {metric[a]['tool_calls']:.1f} calls, {metric[a]['critical_tokens']:.0f} critical tokens" for a in ("single", "parallel", "multi")),
             "verdict": "measured"},
        ],
        "plots": plots,
        "notes": (
            f"{n} seeded scenarios per seed x {n_seeds} seeds (scenario sets {seed}..{seed + n_seeds - 1}); success rates: {spread}. "
            f"Feasible scenarios per seed: {[s['feasible'] for s in seeds]}. Guardrail findings (numbers not in the tool log): {ungrounded}. "
            "The first four arms use the deterministic scripted expert policy, so they differ in pipeline structure only; the "
            f"+planner arms let the tiny trained planner ({PLANNER[budget]}, trained in {train_s:.0f} s) make the planning decisions. "
            "Oracle: best feasible configuration over WMMSE and every precoder x power policy."
        ),
        "metrics": {"planner_rl_reward": rl_rewards, "planner_train_s": train_s, "success": succ, "mean_success": mean, "cost": metric, "ungrounded": ungrounded, "per_seed": seeds},
    }
    return dump_results(res, out_dir)


def _plot(mean: dict, succ: dict, metric: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(mean)
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = np.arange(len(names))
    ax[0].bar(xs, [mean[a] for a in names], color="#7aa6c2")
    for i, a in enumerate(names):
        ax[0].scatter([i] * len(succ[a]), succ[a], color="k", s=12, zorder=3)
    ax[0].set_xticks(xs, names, rotation=20)
    ax[0].set_ylabel("success (>= 95% oracle, constraints met)")
    ax[0].set_ylim(0, 1)
    ax[1].bar(xs, [metric[a]["critical_tokens"] for a in names], color="#c29a7a")
    ax[1].set_xticks(xs, names, rotation=20)
    ax[1].set_ylabel("critical-path tokens")
    fig.tight_layout()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(out_dir) / "agentic6g.png", dpi=120)
    plt.close(fig)
    return ["agentic6g.png"]

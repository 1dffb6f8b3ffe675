"""Agents of the agentic 6G system: a single ReAct agent and the CommLLM multi-agent pipeline.

Papers: "From Large AI Models to Agentic AI" (arXiv 2505.22311), Sec. IV (an LLM core with planner, knowledge base,
tools and memory), and CommLLM (arXiv 2312.07850), Sec. III: multi-agent data retrieval (condensing + inference
agents), collaborative planning (several planning agents, different perspectives) and reflective evaluation
(evaluator, reflexion with short-term memory for fine fixes, refinement with long-term memory for coarse ones).

How Sherman differs from CommLLM's code: the evaluator's score is computed by the numeric tools
(`agents.tools`), never by an LLM judge; the planning agents run concurrently through the AsyncThink fork/join
engine (`think.engine`), so its critical-path clock measures the planning stage; a guardrail checks that every
number in the final answer appears in the tool-call log.

Every agent is a text-in / text-out policy over a `think.backends.Backend` (a local Sherman model, any
OpenAI-compatible server, or `ScriptedBackend`). Tool calls are JSON inside tags, so any completion endpoint works:
    <tool>{"name": "evaluate", "args": {"precoder": "zf", "power": "water_filling"}}</tool>
    <answer>...</answer>
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sherman.agents.knowledge import KnowledgeBase
from sherman.agents.memory import Memory
from sherman.agents.tools import POWERS, PRECODERS, CommEnv, ToolResult, call_tool, numbers_in
from sherman.think.backends import Backend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig

TOOL_RE = re.compile(r"<tool>(.*?)</tool>", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
PROPOSAL_RE = re.compile(r"\{[^{}]*\}")
PERSPECTIVES = ("throughput", "fairness", "robustness")


@dataclass
class AgentConfig:
    max_steps: int = 8
    """Cap on a ReAct agent's tool-calling turns."""
    max_tokens: int = 256
    """Cap on each completion's tokens."""
    planners: int = 3
    """Collaborative planning: number of planning agents (perspectives, in order: throughput, fairness, robustness)."""
    rounds: int = 3
    """Reflective evaluation: cap on reflexion/refinement rounds."""
    retrieve_k: int = 3
    """Passages retrieved per query."""
    tolerance: float = 1e-6
    """Guardrail: a number in the answer is grounded if it matches a logged number to its printed precision."""


@dataclass
class Message:
    agent: str
    role: str
    """'prompt', 'completion', 'tool' or 'note'."""
    text: str


@dataclass
class Episode:
    """Everything one run did: messages, tool calls, the chosen configuration and its tool-computed metrics."""

    scenario: dict[str, Any]
    messages: list[Message] = field(default_factory=list)
    calls: list[ToolResult] = field(default_factory=list)
    best: dict[str, Any] | None = None
    answer: str = ""
    citations: list[str] = field(default_factory=list)
    tokens: int = 0
    """Tokens decoded by every agent."""
    critical_tokens: float = 0.0
    """Tokens on the critical path (sequential stages add up; concurrent planners count by the fork-join clock)."""
    wall_s: float = 0.0
    tool_s: float = 0.0
    ungrounded: list[float] = field(default_factory=list)
    """Numbers in the answer that no tool returned (the guardrail's finding)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "best": self.best, "answer": self.answer, "citations": self.citations,
            "tool_calls": len(self.calls), "tool_errors": sum(not c.ok for c in self.calls), "tokens": self.tokens,
            "critical_tokens": self.critical_tokens, "wall_s": round(self.wall_s, 4), "tool_s": round(self.tool_s, 4),
            "ungrounded": self.ungrounded, "messages": [m.__dict__ for m in self.messages],
        }


async def complete(backend: Backend, prompt: str, max_tokens: int) -> tuple[str, int]:
    """One completion from any backend (the engine's streaming interface), with its token count."""
    pieces = [p.text async for p in backend.stream(prompt, max_tokens)]
    return "".join(pieces), len(pieces)


def parse_tool_call(text: str) -> tuple[Any, Any] | str | None:
    """(name, args) of the first <tool> call, an error string when it is malformed, or None when there is none."""
    m = TOOL_RE.search(text)
    if m is None:
        return None
    try:
        obj = json.loads(m.group(1))
    except json.JSONDecodeError as e:
        return f"tool call is not valid JSON: {e.msg} at position {e.pos}"
    if not isinstance(obj, dict) or "name" not in obj:
        return 'tool call must be a JSON object {"name": ..., "args": {...}}'
    return obj["name"], obj.get("args", {})


def guard_numbers(answer: str, calls: list[ToolResult], question: str, tol: float = 1e-6) -> list[float]:
    """Numbers in the answer that appear neither in a successful tool result nor in the question (to the precision
    printed in the answer). Returns the ungrounded ones; an empty list means the answer passes."""
    logged = [x for c in calls if c.ok for x in numbers_in(c.content)] + numbers_in(question)
    answer = re.sub(r"\[[^\]]*#[^\]]*\]", "", answer)  # citation lists ("[downlink#pathloss-3gpp]") hold ids, not figures
    bad = []
    for tok in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", answer):
        x = float(tok)
        decimals = len(tok.split(".")[1]) if "." in tok and "e" not in tok.lower() else 0
        half = 0.5 * 10.0**-decimals + tol
        if not any(abs(x - y) <= half for y in logged):
            bad.append(x)
    return bad


def format_answer(best: dict[str, Any], citations: list[str]) -> str:
    cite = f" [{', '.join(citations)}]" if citations else ""
    return (
        f"Use {best['precoder']} precoding with {best['power']} power: sum rate {best['sum_rate']} bit/s/Hz, "
        f"minimum rate {best['min_rate']} bit/s/Hz, Jain fairness {best['jain']}, violations {best['violations']}.{cite}"
    )


class Toolbox:
    """Runs tool calls for one episode: validates, executes, logs to the episode and to short-term memory."""

    def __init__(self, env: CommEnv, ep: Episode, memory: Memory, episode_id: str):
        self.env, self.ep, self.memory, self.episode_id = env, ep, memory, episode_id

    def __call__(self, agent: str, name: Any, args: Any) -> ToolResult:
        res = call_tool(self.env, name, args)
        self.ep.calls.append(res)
        self.ep.tool_s += res.seconds
        self.ep.messages.append(Message(agent, "tool", f"{name} {json.dumps(args, sort_keys=True, default=str)} -> {res.text()}"))
        score = res.content.get("score") if res.ok else None
        self.memory.record(self.episode_id, agent, str(name), args if isinstance(args, dict) else {"_": str(args)}, res.content if res.ok else {"error": res.error}, score)
        return res


def _best(calls: list[ToolResult]) -> dict[str, Any] | None:
    evals = [c.content for c in calls if c.ok and "score" in c.content]
    return max(evals, key=lambda r: r["score"]) if evals else None


# ---------------------------------------------------------------------------------------------- single agent

REACT_PROMPT = (
    "You configure a multi-user MISO downlink. Tools: describe_scenario(), evaluate(precoder in mrt|zf|rzf, "
    "power in equal|water_filling|max_min), outage(precoder, power, rate_threshold, trials), wmmse(iters). "
    "Call one tool per turn as <tool>{{\"name\": ..., \"args\": {{...}}}}</tool>; finish with <answer>...</answer> "
    "quoting only numbers the tools returned. Every user needs at least the minimum rate.\n"
    "Task: {question}\n{perspective}"
)


async def react_agent(backend: Backend, question: str, box: Toolbox, cfg: AgentConfig, name: str = "agent", perspective: str = "") -> int:
    """ReAct loop: completion -> tool call -> observation, until an answer or the step cap. Returns tokens decoded."""
    prompt = REACT_PROMPT.format(question=question, perspective=f"Perspective: {perspective}\n" if perspective else "")
    box.ep.messages.append(Message(name, "prompt", prompt))
    tokens = 0
    for _ in range(cfg.max_steps):
        text, n = await complete(backend, prompt, cfg.max_tokens)
        tokens += n
        box.ep.messages.append(Message(name, "completion", text))
        prompt += text
        if ANSWER_RE.search(text):
            break
        call = parse_tool_call(text)
        if call is None:
            obs = "error: reply with one <tool> call or an <answer>"
        elif isinstance(call, str):
            obs = f"error: {call}"
            box.ep.calls.append(ToolResult("?", {}, False, error=call))
        else:
            res = box(name, *call)
            obs = res.text() if res.ok else f"error: {res.error}"
        prompt += f"\nObservation: {obs}\n"
    return tokens


# ---------------------------------------------------------------------------------------------- multi-agent

CONDENSE_PROMPT = "Condense these passages into the facts that matter for the task.\nTask: {question}\nFeatures: {features}\n{passages}\nFacts:"
INFER_PROMPT = "From the facts and the scenario features, infer which precoders and power policies should win.\nFeatures: {features}\nFacts: {facts}\nInsights:"
PLAN_ORG = "Coordinate planners for the task; fork one per perspective, join all, answer with their proposals.\nTask: {question}\nInsights: {insights}\nPerspectives: {perspectives}\n"
PLAN_WORKER = "Propose one configuration as JSON {{\"precoder\": ..., \"power\": ...}} inside <RETURN>...</RETURN>.\nTask: {question}\nPlanner perspective: {query}\n"
REFLECT_PROMPT = (
    "Reflect on the evaluated configurations (short-term memory) and propose a fine fix as JSON {{\"precoder\": ..., \"power\": ...}}, "
    "or NONE.\nMin rate: {min_rate}\nEvaluations: {history}\nFix:"
)
REFINE_PROMPT = "Long-term memory holds the best configuration of a similar scenario; propose a coarse fix as JSON or NONE.\nFeatures: {features}\nRecalled: {recalled}\nFix:"


def parse_proposals(text: str) -> list[dict[str, str]]:
    """Every valid {"precoder": ..., "power": ...} object in a text (invalid ones are dropped)."""
    out = []
    for m in PROPOSAL_RE.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("precoder") in PRECODERS and obj.get("power") in POWERS:
            out.append({"precoder": obj["precoder"], "power": obj["power"]})
    return out


async def multi_agent(backend: Backend, question: str, box: Toolbox, kb: KnowledgeBase, memory: Memory, cfg: AgentConfig) -> None:
    """Retrieval -> collaborative planning (fork/join engine) -> reflective evaluation, on one episode."""
    ep = box.ep
    features = box("retriever", "describe_scenario", {}).content
    fjson = json.dumps(features, sort_keys=True)

    # 1. data retrieval: BM25 passages -> condensing agent -> inference agent
    query = f"{question} precoder power allocation SNR {features['mean_snr_db']:.0f} dB minimum rate fairness"
    passages = kb.search(query, cfg.retrieve_k) + kb.search("choosing a configuration rules of thumb", 1)
    seen: dict[str, str] = {p.id: p.text for p in passages}
    ep.citations = list(seen)
    ptext = "\n".join(f"[{pid}] {t}" for pid, t in seen.items())
    facts, n1 = await complete(backend, CONDENSE_PROMPT.format(question=question, features=fjson, passages=ptext), cfg.max_tokens)
    ep.messages.append(Message("condenser", "completion", facts))
    insights, n2 = await complete(backend, INFER_PROMPT.format(features=fjson, facts=facts), cfg.max_tokens)
    ep.messages.append(Message("inference", "completion", insights))

    # 2. collaborative planning: planners forked and joined by the AsyncThink engine
    persp = list(PERSPECTIVES[: cfg.planners])
    tcfg = ThinkConfig(
        capacity=cfg.planners + 1, max_org_tokens=cfg.max_tokens * 2, max_worker_tokens=cfg.max_tokens,
        organizer_template=PLAN_ORG.replace("{perspectives}", ", ".join(persp)).replace("{insights}", insights.replace("{", "{{").replace("}", "}}")),
        worker_template=PLAN_WORKER,
    )
    res = await AsyncThinkEngine(backend, tcfg).run(f"{question}\nFeatures: {fjson}")  # planners see the features
    ep.messages.append(Message("planning-organizer", "completion", res.organizer.generated))
    for i, log in res.worker_logs.items():
        ep.messages.append(Message(f"planner-{i}", "completion", log.generated))
    proposals = parse_proposals(res.answer or "") or [p for w in res.workers.values() for p in parse_proposals(w.returned or "")]
    recalled = memory.recall(features)
    if recalled is not None:
        proposals.append(recalled["config"])
    plan_tokens = res.total_tokens + res.org_tokens
    ep.critical_tokens += n1 + n2 + res.latency
    ep.tokens += n1 + n2 + plan_tokens

    # 3. reflective evaluation: evaluator (tools) -> reflexion (short-term) -> refinement (long-term), to a round cap
    tried: set[tuple[str, str]] = set()
    for _ in range(cfg.rounds):
        fresh = list({(p["precoder"], p["power"]): p for p in proposals if (p["precoder"], p["power"]) not in tried}.values())
        if not fresh:
            break
        for p in fresh:
            tried.add((p["precoder"], p["power"]))
            box("evaluator", "evaluate", p)
        best = _best(ep.calls)
        history = json.dumps([{k: c.content[k] for k in ("precoder", "power", "score", "min_rate", "violations")} for c in ep.calls if c.ok and "score" in c.content])
        fix, n3 = await complete(backend, REFLECT_PROMPT.format(min_rate=features["min_rate"], history=history), cfg.max_tokens)
        ep.messages.append(Message("reflexion", "completion", fix))
        recalled = memory.recall(features)
        coarse, n4 = await complete(backend, REFINE_PROMPT.format(features=fjson, recalled=json.dumps(recalled)), cfg.max_tokens)
        ep.messages.append(Message("refinement", "completion", coarse))
        ep.tokens += n3 + n4
        ep.critical_tokens += max(n3, n4)  # reflexion and refinement are independent: they run side by side
        proposals = parse_proposals(fix) + parse_proposals(coarse)
        if best is not None and best["feasible"] and not proposals:
            break


# ---------------------------------------------------------------------------------------------- runners


def run_episode(arm: str, backend: Backend, question: str, env: CommEnv, kb: KnowledgeBase, memory: Memory, cfg: AgentConfig | None = None,
                parallel: int = 3) -> Episode:
    """Run one arm on one scenario: 'single', 'multi' or 'parallel' (k independent single agents, best by the evaluator)."""
    cfg = cfg or AgentConfig()
    ep = Episode(scenario=env.features())
    box = Toolbox(env, ep, memory, f"{arm}-{uuid.uuid4().hex[:12]}")
    t0 = time.perf_counter()

    async def go() -> None:
        if arm == "single":
            n = await react_agent(backend, question, box, cfg)
            ep.tokens += n
            ep.critical_tokens += n
        elif arm == "parallel":
            ns = await asyncio.gather(*(react_agent(backend, question, box, cfg, f"agent-{i}", PERSPECTIVES[i % 3]) for i in range(parallel)))
            ep.tokens += sum(ns)
            ep.critical_tokens += max(ns)
        elif arm == "multi":
            await multi_agent(backend, question, box, kb, memory, cfg)
        else:
            raise ValueError(f"unknown arm {arm!r} (single, multi, parallel)")

    asyncio.run(go())
    ep.best = _best(ep.calls)
    said = [m.text for m in ep.messages if m.role == "completion" and ANSWER_RE.search(m.text)]
    if ep.best is not None:
        ep.answer = ANSWER_RE.search(said[-1]).group(1).strip() if arm == "single" and said else format_answer(ep.best, ep.citations)
        memory.remember(ep.scenario, {"precoder": ep.best["precoder"], "power": ep.best["power"]}, ep.best["score"])
    else:
        ep.answer = "no configuration was evaluated"
    ep.ungrounded = guard_numbers(ep.answer, ep.calls, question, cfg.tolerance)
    ep.wall_s = time.perf_counter() - t0
    return ep

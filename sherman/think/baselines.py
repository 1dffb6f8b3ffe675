"""Baselines of AsyncThink (arXiv 2510.26658, Sec. 4 "baselines"): sequential and parallel thinking, on the same clock.

- Sequential thinking: one agent thinks with a token budget, then answers `<ANSWER>a</ANSWER>`.
  Clock: L = its token count, eta = 1.
- Parallel thinking: k independent sequential samples started at step 0, aggregated by majority vote over
  answers, or by set union of ';'-separated items for multi-solution tasks. Clock: the k samples are
  workers forked at step 0 and joined at the end, so L = the longest sample, eta = total tokens / L.

Both return `engine.ThinkResult`s, so the experiment measures all methods with one set of functions.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass

from sherman.think.backends import Backend
from sherman.think.engine import AgentLog, ThinkResult, TokenRecord, WorkerInfo
from sherman.think.protocol import Answer, ClockTrace, FormatError, StreamParser, concurrency, critical_path


@dataclass
class BaselineConfig:
    max_tokens: int = 256
    """Token budget of each sequential sample."""
    k: int = 4
    """Parallel samples."""
    template: str = "{question}<SEQ>"
    """Prompt of a sequential thinker; {question} is replaced."""
    aggregate: str = "vote"
    """'vote' (majority over answers) or 'union' (distinct ';'-separated items of all answers)."""
    sep: str = ";"
    """Item separator for 'union'."""

    def __post_init__(self) -> None:
        if self.aggregate not in ("vote", "union"):
            raise ValueError(f"aggregate must be 'vote' or 'union', got {self.aggregate!r}")
        if self.k < 1 or self.max_tokens < 1:
            raise ValueError("k and max_tokens must be >= 1")


async def _sample(backend: Backend, prompt: str, max_tokens: int, agent: str, t0: float, start: float, tokens: list[TokenRecord]):
    """One sequential thinker -> (answer or None, AgentLog, n tokens)."""
    log = AgentLog(agent)
    log.add("prompt", prompt)
    p = StreamParser("organizer")
    answer, n = None, 0
    async with aclosing(backend.stream(prompt, max_tokens)) as pieces:
        async for piece in pieces:
            n += 1
            tokens.append(TokenRecord(agent, start + n, time.perf_counter() - t0, piece.text, piece.ids, piece.logp))
            log.add("gen", piece.text, piece.ids, piece.logp)
            for ev in p.feed(piece.text):
                if isinstance(ev, Answer):
                    answer = ev.text
            if answer is not None or n >= max_tokens:
                break
    return answer, log, n


def aggregate(answers: list[str | None], how: str, sep: str = ";") -> str | None:
    """Majority vote (ties: first seen) or ordered set union of items; None answers are ignored."""
    got = [a.strip() for a in answers if a is not None and a.strip()]
    if not got:
        return None
    if how == "vote":
        return Counter(got).most_common(1)[0][0]
    items: dict[str, None] = {}
    for a in got:
        for x in a.split(sep):
            if x.strip():
                items[x.strip()] = None
    return sep.join(items)


async def sequential(backend: Backend, question: str, cfg: BaselineConfig) -> ThinkResult:
    t0 = time.perf_counter()
    tokens: list[TokenRecord] = []
    answer, log, n = await _sample(backend, cfg.template.format(question=question), cfg.max_tokens, "org", t0, 0, tokens)
    trace = ClockTrace().decode(n)
    errors = [] if answer is not None else [FormatError("no_answer", "no <ANSWER>")]
    return ThinkResult(question, answer, errors, log, {}, {}, tokens, trace, float(n), concurrency(trace), n, n, time.perf_counter() - t0)


async def parallel(backend: Backend, question: str, cfg: BaselineConfig) -> ThinkResult:
    t0 = time.perf_counter()
    tokens: list[TokenRecord] = []
    prompt = cfg.template.format(question=question)
    outs = await asyncio.gather(*[_sample(backend, prompt, cfg.max_tokens, f"w{i + 1}", t0, 0, tokens) for i in range(cfg.k)])
    trace = ClockTrace()
    workers, logs = {}, {}
    for i, (ans, log, n) in enumerate(outs, start=1):
        trace.fork(i)
        trace.workers[i] = n
        workers[i] = WorkerInfo(i, prompt, 0.0, n, ans)
        logs[i] = log
    for i in workers:
        trace.join(i)
    cr = critical_path(trace)
    for i in workers:
        workers[i].join_step = cr.join_at[i]
    answer = aggregate([a for a, _, _ in outs], cfg.aggregate, cfg.sep)
    errors = [] if answer is not None else [FormatError("no_answer", "no sample answered")]
    org = AgentLog("org")
    return ThinkResult(question, answer, errors, org, workers, logs, tokens, trace, cr.latency, concurrency(trace), 0, cr.total_tokens, time.perf_counter() - t0)

"""AsyncThink engine: the organizer and its workers run concurrently (asyncio) over one backend.

Paper: AsyncThink (arXiv 2510.26658), Sec. 2.2 (the organizer-worker thinking protocol and its
Fork / Join execution) and Sec. 3.2 (format errors, critical-path latency, concurrency eta).

The organizer streams tokens; the incremental parser (`protocol.StreamParser`) turns them into
actions. `<FORK-i>q</FORK-i>` starts worker i at once on the prompt `worker_template.format(question=Q, query=q)`
while the organizer keeps decoding; `<JOIN-i>` stops the organizer's stream, waits for worker i, and
resumes it on its exact previous context plus `takeaways</JOIN-i>` (a byte-identical prefix, so a
prefix cache hits); `<ANSWER>a</ANSWER>` ends it. The pool holds the organizer and at most c - 1 workers;
a worker holds its slot from its Fork until its Join (our reading of "active"). Every decoded token is
recorded as (agent, logical step, wall time); logical steps follow the fork-join clock of
`protocol.critical_path`, so latency and eta do not depend on the backend's speed.

Malformed or adversarial model output never raises: it becomes a recorded `FormatError`. The engine
always terminates: the organizer decodes at most `max_org_tokens`, each worker at most
`max_worker_tokens`, and the number of forks is bounded by the organizer's tokens.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from sherman.think.backends import Backend
from sherman.think.protocol import (
    Answer,
    ClockTrace,
    Fork,
    FormatError,
    Join,
    Malformed,
    Return,
    StreamParser,
    check_answer,
    check_fork,
    check_join,
    concurrency,
    critical_path,
)


@dataclass
class ThinkConfig:
    capacity: int = 4
    """c: the pool holds the organizer plus at most c - 1 active workers."""
    max_org_tokens: int = 256
    """Cap on the organizer's decoded tokens."""
    max_worker_tokens: int = 128
    """Cap on each worker's decoded tokens."""
    insert_cost: float = 0.0
    """Clock charge per inserted (joined) token; the paper charges nothing for inserted text."""
    organizer_template: str = "{question}<ORG>"
    """Organizer prompt; {question} is replaced."""
    worker_template: str = "{question}<WORK>{query}<WORK>"
    """Worker prompt; {query} is the forked sub-query, {question} the organizer's question (our choice: workers see
    the question, so a sub-query can be a short instruction such as "find one with top-level operator *")."""
    stop_on_format_error: bool = False
    """Stop the organizer at its first format error (saves compute in RL; the reward is the penalty anyway)."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.max_org_tokens < 1 or self.max_worker_tokens < 1:
            raise ValueError("token caps must be >= 1")
        if self.insert_cost < 0:
            raise ValueError("insert_cost must be >= 0")


@dataclass
class TokenRecord:
    agent: str
    """'org' or 'w<i>'."""
    step: float
    """Logical step (fork-join clock) at which the token was decoded."""
    wall: float
    """Seconds since the run started."""
    text: str
    ids: tuple[int, ...] = ()
    logp: float = 0.0


@dataclass
class Segment:
    kind: str
    """'prompt', 'gen' (decoded by the model) or 'insert' (joined text written by the engine)."""
    text: str
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)


@dataclass
class AgentLog:
    name: str
    segments: list[Segment] = field(default_factory=list)

    def add(self, kind: str, text: str, ids=(), logp: float | None = None) -> None:
        if self.segments and self.segments[-1].kind == kind and kind != "prompt":
            s = self.segments[-1]
            s.text += text
        else:
            s = Segment(kind, text)
            self.segments.append(s)
        s.ids.extend(ids)
        if logp is not None and ids:
            s.logps.append(logp)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def generated(self) -> str:
        return "".join(s.text for s in self.segments if s.kind != "prompt")


@dataclass
class WorkerInfo:
    index: int
    query: str
    fork_step: float
    tokens: int = 0
    returned: str | None = None
    join_step: float | None = None


@dataclass
class ThinkResult:
    question: str
    answer: str | None
    errors: list[FormatError]
    organizer: AgentLog
    workers: dict[int, WorkerInfo]
    worker_logs: dict[int, AgentLog]
    tokens: list[TokenRecord]
    trace: ClockTrace
    latency: float
    eta: float
    org_tokens: int
    total_tokens: int
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.errors and self.answer is not None

    def tree(self) -> str:
        """A plain-text fork-join tree with logical steps."""
        lines = [f"organizer  ({self.org_tokens} tokens)"]
        for i, w in sorted(self.workers.items()):
            join = f"joined @{w.join_step:g}" if w.join_step is not None else "never joined"
            ret = (w.returned or "").replace("\n", " ")
            lines.append(f"  FORK-{i} @{w.fork_step:g}: {w.query!r} -> {w.tokens} tokens, {join}, returned {ret!r}")
        lines.append(f"ANSWER: {self.answer!r}")
        lines.append(f"latency {self.latency:g} steps | eta {self.eta:.2f} | total {self.total_tokens} tokens | wall {self.wall_s:.2f}s")
        for e in self.errors:
            lines.append(f"format error [{e.agent}] {e.kind}: {e.detail}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "errors": [e.__dict__ for e in self.errors],
            "organizer": self.organizer.generated,
            "workers": {i: {"query": w.query, "fork_step": w.fork_step, "tokens": w.tokens, "returned": w.returned, "join_step": w.join_step} for i, w in self.workers.items()},
            "latency": self.latency,
            "eta": self.eta,
            "org_tokens": self.org_tokens,
            "total_tokens": self.total_tokens,
            "wall_s": self.wall_s,
        }


class AsyncThinkEngine:
    def __init__(self, backend: Backend, cfg: ThinkConfig | None = None):
        self.backend = backend
        self.cfg = cfg or ThinkConfig()

    def run_sync(self, question: str) -> ThinkResult:
        return asyncio.run(self.run(question))

    async def run(self, question: str) -> ThinkResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        errors: list[FormatError] = []
        tokens: list[TokenRecord] = []
        trace = ClockTrace()
        workers: dict[int, WorkerInfo] = {}
        wlogs: dict[int, AgentLog] = {}
        tasks: dict[int, asyncio.Task] = {}
        joined: set[int] = set()
        org = AgentLog("org")
        ctx = cfg.organizer_template.format(question=question)
        org.add("prompt", ctx)
        parser = StreamParser("organizer")
        clock = 0.0
        n_org = 0
        answer: str | None = None
        stop = False

        async def run_worker(i: int, query: str, fork_step: float) -> str:
            log = wlogs[i]
            prompt = cfg.worker_template.format(question=question, query=query)
            log.add("prompt", prompt)
            wp = StreamParser("worker")
            returned = None
            n = 0
            async with aclosing(self.backend.stream(prompt, cfg.max_worker_tokens)) as pieces:
                async for piece in pieces:
                    n += 1
                    workers[i].tokens = n
                    tokens.append(TokenRecord(f"w{i}", fork_step + n, time.perf_counter() - t0, piece.text, piece.ids, piece.logp))
                    log.add("gen", piece.text, piece.ids, piece.logp)
                    for ev in wp.feed(piece.text):
                        if isinstance(ev, Return):
                            returned = ev.text
                        elif isinstance(ev, Malformed):
                            errors.append(FormatError("malformed", ev.reason, f"w{i}"))
                    if returned is not None or n >= cfg.max_worker_tokens:
                        break
            if returned is None:
                for ev in wp.close():
                    if isinstance(ev, Malformed):
                        errors.append(FormatError("malformed", ev.reason, f"w{i}"))
                errors.append(FormatError("worker_no_return", f"worker {i} ended without <RETURN>", f"w{i}"))
                returned = ""
            trace.workers[i] = n
            workers[i].returned = returned
            return returned

        def handle(ev) -> int | None:
            """Apply one organizer event; returns a worker index to join, if any."""
            nonlocal answer, stop
            if isinstance(ev, Fork):
                active = sum(1 for j in workers if j not in joined)
                err = check_fork(ev.index, set(workers), active, cfg.capacity)
                trace.fork(ev.index)
                if err is not None:
                    errors.append(err)
                    return None
                workers[ev.index] = WorkerInfo(ev.index, ev.query, clock)
                wlogs[ev.index] = AgentLog(f"w{ev.index}")
                tasks[ev.index] = asyncio.ensure_future(run_worker(ev.index, ev.query, clock))
            elif isinstance(ev, Join):
                return ev.index
            elif isinstance(ev, Answer):
                answer = ev.text
                stop = True
            elif isinstance(ev, Malformed):
                errors.append(FormatError("malformed", ev.reason, "org"))
            return None

        try:
            while not stop and n_org < cfg.max_org_tokens:
                to_join: list[int] = []
                ended = True
                async with aclosing(self.backend.stream(ctx, cfg.max_org_tokens - n_org)) as pieces:
                    async for piece in pieces:
                        n_org += 1
                        clock += 1
                        trace.decode(1)
                        tokens.append(TokenRecord("org", clock, time.perf_counter() - t0, piece.text, piece.ids, piece.logp))
                        org.add("gen", piece.text, piece.ids, piece.logp)
                        ctx += piece.text
                        for ev in parser.feed(piece.text):
                            j = handle(ev)
                            if j is not None:
                                to_join.append(j)
                        if cfg.stop_on_format_error and errors:
                            stop = True
                        if to_join or stop or n_org >= cfg.max_org_tokens:
                            ended = not to_join and not stop
                            break
                if to_join:
                    for j in to_join:
                        err = check_join(j, set(workers), joined)
                        if err is None:
                            takeaways = await tasks[j]
                            joined.add(j)
                            clock = max(clock, workers[j].fork_step + workers[j].tokens)
                        else:
                            errors.append(err)
                            takeaways = ""
                        insert = takeaways + f"</JOIN-{j}>"
                        n_ins = self.backend.count_tokens(insert)
                        trace.join(j, n_ins)
                        clock += cfg.insert_cost * n_ins
                        if j in workers and err is None:
                            workers[j].join_step = clock
                        ctx += insert
                        org.add("insert", insert)
                    if cfg.stop_on_format_error and errors:
                        stop = True
                    continue
                if ended or stop:
                    break
            if answer is None:
                for ev in parser.close():
                    if isinstance(ev, Malformed):
                        errors.append(FormatError("malformed", ev.reason, "org"))
            errors.extend(check_answer(answer is not None, set(workers), joined))
            if tasks:  # unjoined workers run to their cap: token counts stay deterministic
                await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for tk in tasks.values():
                if not tk.done():
                    tk.cancel()
        for i in workers:  # every worker's length is final now (unjoined ones included)
            trace.workers[i] = workers[i].tokens
        cr = critical_path(trace, cfg.insert_cost)
        return ThinkResult(
            question=question,
            answer=answer,
            errors=errors,
            organizer=org,
            workers=workers,
            worker_logs=wlogs,
            tokens=tokens,
            trace=trace,
            latency=cr.latency,
            eta=concurrency(trace, cfg.insert_cost),
            org_tokens=n_org,
            total_tokens=cr.total_tokens,
            wall_s=time.perf_counter() - t0,
        )

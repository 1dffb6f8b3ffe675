"""AsyncThink protocol: incremental tag parser, format validators, critical-path clock and concurrency.

Paper: "The Era of Agentic Organization: Learning to Organize with Language Models" (AsyncThink,
arXiv 2510.26658), Sec. 2 (organizer-worker protocol: Fork / Join actions) and Sec. 3.2 (reward:
format errors, accuracy and the concurrency ratio eta; latency as the critical path of the fork-join
graph).

One model plays the organizer and the workers. The organizer writes free text and actions:

    <FORK-i>sub-query</FORK-i>   hand sub-query i to a worker, which starts at once
    <JOIN-i>                     wait for worker i; its takeaways are inserted as
                                 <JOIN-i>takeaways</JOIN-i>
    <ANSWER>final answer</ANSWER>  (our choice of answer delimiter; the paper only says the organizer
                                 must end with a final answer)

A worker thinks about its sub-query alone and ends with `<RETURN>takeaways</RETURN>`.

The parser is incremental over arbitrary text chunks (tags may be split anywhere) and never raises:
garbage, nested, stray or unclosed tags become `Malformed` events, which the engine records as format
errors. Anything that looks like `<` but can no longer become a known tag is plain text. Fork / join
indices are ASCII digits only (1 to MAX_INDEX_DIGITS of them). The parse does not depend on how the text
is chunked (the events are the same up to how plain text is split into Think pieces), and `feed` is
linear: it scans each character once and keeps back at most one partial tag (< MAX_TAG_LEN characters)
between calls.

The clock (Sec. 3.2, "critical-path latency"): the organizer clock advances one per organizer token;
a worker forked at clock t_f that decodes n tokens finishes at t_f + n; `<JOIN-i>` sets the clock to
max(clock, finish_i); inserted (joined) text costs `insert_cost` decode steps per token (0 in the
paper's accounting). Latency is the organizer clock when it answers (or stops). Concurrency
eta = (1 / L) * sum over steps t in (0, L] of |active agents at t|, i.e. the mean number of agents
decoding per step along the critical path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------------
# events

ORGANIZER_TAGS = ("FORK", "JOIN", "ANSWER")
WORKER_TAGS = ("RETURN",)
INDEXED = ("FORK", "JOIN")
ALL_TAGS = ("FORK", "JOIN", "ANSWER", "RETURN")
MAX_INDEX_DIGITS = 6
MAX_TAG_LEN = len("</FORK-") + MAX_INDEX_DIGITS + 1
"""Longest known tag, e.g. '</FORK-123456>'."""


@dataclass(frozen=True)
class Think:
    text: str


@dataclass(frozen=True)
class Fork:
    index: int
    query: str


@dataclass(frozen=True)
class Join:
    index: int


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Return:
    text: str


@dataclass(frozen=True)
class Malformed:
    reason: str
    text: str = ""


Event = Think | Fork | Join | Answer | Return | Malformed

_TAG_RE = re.compile(r"<(/?)(FORK|JOIN|ANSWER|RETURN)(?:-([0-9]{1,%d}))?>" % MAX_INDEX_DIGITS)  # ASCII digits only


def _could_become_tag(s: str) -> bool:
    """True if `s` (starting with '<', no '>') is a proper prefix of some known tag."""
    body = s[1:]
    if body.startswith("/"):
        body = body[1:]
    for name in ALL_TAGS:
        full = name + "-" if name in INDEXED else name
        if full.startswith(body):
            return True
        if name in INDEXED and body.startswith(full):
            digits = body[len(full) :]
            if digits.isascii() and digits.isdigit() and len(digits) <= MAX_INDEX_DIGITS:
                return True
    return False


def _match_tag(s: str, pos: int = 0) -> tuple[str, bool, int | None, int] | None:
    """Match a complete known tag at s[pos:] -> (name, closing, index, end position in s) or None."""
    m = _TAG_RE.match(s, pos)
    if m is None:
        return None
    closing, name, idx = m.group(1) == "/", m.group(2), m.group(3)
    if (name in INDEXED) != (idx is not None):
        return None
    return name, closing, (int(idx) if idx is not None else None), m.end()


def format_tag(name: str, index: int | None = None, closing: bool = False) -> str:
    """format_tag("FORK", 2) -> "<FORK-2>"; format_tag("RETURN", closing=True) -> "</RETURN>"."""
    return "<" + ("/" if closing else "") + name + (f"-{index}" if index is not None else "") + ">"


def protocol_specials(max_forks: int) -> tuple[str, ...]:
    """Every protocol tag for indices 1..max_forks, plus the role markers: register them as special tokens of
    any tokenizer (`CharTokenizer(specials=...)`, `train_bpe(specials=...)`, the HF export keeps them as added
    special tokens) so each tag costs ONE decode step, as in the paper's token-level clock."""
    tags = [format_tag(n, None, c) for n in ("ANSWER", "RETURN") for c in (False, True)]
    tags += [format_tag(n, i, c) for n in ("FORK", "JOIN") for c in (False, True) for i in range(1, max_forks + 1)]
    return ("<ORG>", "<WORK>", "<SEQ>", *tags)


class StreamParser:
    """Incremental parser for one agent's output. `feed(chunk) -> events`, then `close() -> events`.

    role "organizer": Fork, Join, Answer, Think, Malformed. role "worker": Return, Think, Malformed.
    After the agent's final action (Answer / Return) the parser is `done` and ignores further text.
    """

    def __init__(self, role: str = "organizer"):
        if role not in ("organizer", "worker"):
            raise ValueError(f"role must be 'organizer' or 'worker', got {role!r}")
        self.role = role
        self.allowed = ORGANIZER_TAGS if role == "organizer" else WORKER_TAGS
        self.buf = ""
        """Unconsumed tail of the input: at most one partial tag (shorter than MAX_TAG_LEN)."""
        self.mode = "text"  # text | fork | answer | return | done
        self.open_index: int | None = None
        self._body: list[str] = []
        self.done = False
        self.scanned = 0
        """Characters examined by feed() so far (each input character once, plus the kept-back tail again)."""

    @property
    def body(self) -> str:
        """Text of the open FORK / ANSWER / RETURN so far."""
        return "".join(self._body)

    def feed(self, chunk: str) -> list[Event]:
        if self.done:
            return []
        s = self.buf + chunk  # buf is at most one partial tag: O(len(chunk)) per call
        self.scanned += len(s)
        out: list[Event] = []
        text: list[str] = []  # plain text since the last tag
        i, n = 0, len(s)
        while i < n and not self.done:
            j = s.find("<", i)
            if j < 0:
                text.append(s[i:])
                i = n
                break
            if j > i:
                text.append(s[i:j])
                i = j
            m = _match_tag(s, i)  # the regex reads at most MAX_TAG_LEN characters
            if m is None:
                if n - i < MAX_TAG_LEN and ">" not in s[i:] and _could_become_tag(s[i:]):
                    break  # a partial tag: wait for more text
                text.append("<")  # a literal '<'
                i += 1
                continue
            name, closing, idx, end = m
            self._text("".join(text), out)
            text = []
            self._tag(name, closing, idx, s[i:end], out)
            i = end
        self._text("".join(text), out)
        self.buf = "" if self.done else s[i:]
        return out

    def close(self) -> list[Event]:
        """End of stream: flush text; an open FORK / ANSWER / RETURN becomes Malformed."""
        out: list[Event] = []
        if self.done:
            return out
        if self.buf:
            self._text(self.buf, out)
            self.buf = ""
        if self.mode == "fork":
            out.append(Malformed(f"unclosed <FORK-{self.open_index}>", self.body))
        elif self.mode in ("answer", "return"):
            out.append(Malformed(f"unclosed <{self.mode.upper()}>", self.body))
        self.mode, self.done = "done", True
        return out

    # -- internals -----------------------------------------------------------------------------------

    def _text(self, text: str, out: list[Event]) -> None:
        if not text:
            return
        if self.mode == "text":
            if out and isinstance(out[-1], Think):
                out[-1] = Think(out[-1].text + text)
            else:
                out.append(Think(text))
        else:
            self._body.append(text)

    def _tag(self, name: str, closing: bool, idx: int | None, tag: str, out: list[Event]) -> None:
        if name not in self.allowed:
            out.append(Malformed(f"tag {tag} not allowed for the {self.role}", tag))
            return
        if self.mode == "text":
            if closing:
                out.append(Malformed(f"stray closing tag {tag}", tag))
            elif name == "FORK":
                self.mode, self.open_index, self._body = "fork", idx, []
            elif name == "JOIN":
                out.append(Join(idx))
            else:  # ANSWER / RETURN open
                self.mode, self._body = name.lower(), []
            return
        # inside an open FORK / ANSWER / RETURN body
        if self.mode == "fork" and closing and name == "FORK" and idx == self.open_index:
            out.append(Fork(idx, self.body))
            self.mode, self.open_index, self._body = "text", None, []
        elif self.mode in ("answer", "return") and closing and name == self.mode.upper():
            out.append(Answer(self.body) if self.mode == "answer" else Return(self.body))
            self.mode, self._body, self.done = "done", [], True
        else:
            out.append(Malformed(f"tag {tag} inside open <{self.mode.upper()}>", tag))


def parse_all(text: str, role: str = "organizer", chunk: int = 0) -> list[Event]:
    """Parse a complete text (optionally in chunks of `chunk` chars) and close the stream."""
    p = StreamParser(role)
    ev: list[Event] = []
    if chunk <= 0:
        ev += p.feed(text)
    else:
        for i in range(0, len(text), chunk):
            ev += p.feed(text[i : i + chunk])
    return ev + p.close()


# ---------------------------------------------------------------------------------------------------
# format validators (Sec. 3.2: duplicate fork index, fork with a full pool, join of an unknown index,
# ending without an answer; plus an unjoined worker at Answer)

FORMAT_ERRORS = ("duplicate_fork", "pool_full", "join_unknown", "no_answer", "unjoined_worker", "malformed", "worker_no_return")


@dataclass(frozen=True)
class FormatError:
    kind: str
    """One of FORMAT_ERRORS."""
    detail: str = ""
    agent: str = "org"


def check_fork(index: int, forked: set[int], n_active: int, capacity: int) -> FormatError | None:
    """A fork is invalid if index i was forked before, or if c - 1 workers are already active."""
    if index in forked:
        return FormatError("duplicate_fork", f"<FORK-{index}> was already used")
    if n_active >= capacity - 1:
        return FormatError("pool_full", f"<FORK-{index}> with {n_active} of {capacity - 1} workers active")
    return None


def check_join(index: int, forked: set[int], joined: set[int]) -> FormatError | None:
    """A join is invalid if no worker was forked with index i (or it was joined already)."""
    if index not in forked:
        return FormatError("join_unknown", f"<JOIN-{index}> of a worker never forked")
    if index in joined:
        return FormatError("join_unknown", f"<JOIN-{index}> of a worker already joined")
    return None


def check_answer(answered: bool, forked: set[int], joined: set[int]) -> list[FormatError]:
    """At the end: an answer must exist, and every forked worker must have been joined."""
    errs = []
    if not answered:
        errs.append(FormatError("no_answer", "the organizer ended without <ANSWER>"))
    for i in sorted(forked - joined):
        errs.append(FormatError("unjoined_worker", f"worker {i} was never joined"))
    return errs


# ---------------------------------------------------------------------------------------------------
# critical-path clock and concurrency


@dataclass
class ClockTrace:
    """The organizer's actions in order and every worker's decoded length: all the clock needs.

    organizer ops: ("decode", n) n organizer tokens; ("fork", i); ("join", i, n_inserted_tokens).
    """

    organizer: list[tuple] = field(default_factory=list)
    workers: dict[int, int] = field(default_factory=dict)
    """worker index -> number of tokens it decoded."""

    def decode(self, n: int = 1) -> ClockTrace:
        if self.organizer and self.organizer[-1][0] == "decode":
            self.organizer[-1] = ("decode", self.organizer[-1][1] + n)
        else:
            self.organizer.append(("decode", n))
        return self

    def fork(self, i: int) -> ClockTrace:
        self.organizer.append(("fork", i))
        return self

    def join(self, i: int, n_inserted: int = 0) -> ClockTrace:
        self.organizer.append(("join", i, n_inserted))
        return self


@dataclass
class ClockResult:
    latency: float
    """Organizer clock at the end: critical-path length in decode steps."""
    org_tokens: int
    total_tokens: int
    """Organizer plus all worker tokens."""
    fork_at: dict[int, float]
    finish_at: dict[int, float]
    join_at: dict[int, float]
    """Organizer clock right after each join."""
    wait: float
    """Steps the organizer spent blocked on joins."""
    org_intervals: list[tuple[float, float]]
    """(start, end] intervals in which the organizer is active (decoding or inserting)."""


def critical_path(trace: ClockTrace, insert_cost: float = 0.0) -> ClockResult:
    """Run the fork-join clock over a trace (see module docstring). Forks of unknown workers are ignored,
    joins of workers never forked do not wait (they are format errors elsewhere)."""
    t = 0.0
    org_tokens = 0
    fork_at: dict[int, float] = {}
    finish_at: dict[int, float] = {}
    join_at: dict[int, float] = {}
    wait = 0.0
    active: list[tuple[float, float]] = []
    for op in trace.organizer:
        if op[0] == "decode":
            n = int(op[1])
            if n > 0:
                active.append((t, t + n))
            t += n
            org_tokens += n
        elif op[0] == "fork":
            i = op[1]
            if i in trace.workers and i not in fork_at:
                fork_at[i] = t
                finish_at[i] = t + trace.workers[i]
        elif op[0] == "join":
            i, n_ins = op[1], op[2] if len(op) > 2 else 0
            if i in finish_at and finish_at[i] > t:
                wait += finish_at[i] - t
                t = finish_at[i]
            if insert_cost > 0 and n_ins > 0:
                active.append((t, t + insert_cost * n_ins))
                t += insert_cost * n_ins
            join_at[i] = t
        else:
            raise ValueError(f"unknown clock op {op!r}")
    total = org_tokens + sum(trace.workers[i] for i in fork_at)
    return ClockResult(t, org_tokens, total, fork_at, finish_at, join_at, wait, active)


def concurrency(trace: ClockTrace, insert_cost: float = 0.0) -> float:
    """eta = mean number of agents active per step over (0, L], L the critical-path latency."""
    r = critical_path(trace, insert_cost)
    if r.latency <= 0:
        return 0.0
    busy = sum(max(0.0, min(b, r.latency) - a) for a, b in r.org_intervals)
    for i, t0 in r.fork_at.items():
        busy += max(0.0, min(r.finish_at[i], r.latency) - t0)
    return busy / r.latency


# ---------------------------------------------------------------------------------------------------
# reward (Sec. 3.2)


def thinking_reward(errors: list[FormatError], accuracy: float, eta: float, capacity: int, lam: float, tau: float, format_penalty: float = -1.0) -> float:
    """R = format_penalty if any format error, else accuracy + lam * min(eta / c, tau) / tau."""
    if errors:
        return format_penalty
    assert tau > 0, "tau must be > 0"
    return accuracy + lam * min(eta / capacity, tau) / tau

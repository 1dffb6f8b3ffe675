"""Countdown: reach a target with + - * / over given numbers, each used at most once (as in TinyZero / the RL papers).

Prompt "3,5,7>26:" (numbers, then target) ; trace "(3+5)*... " i.e. an expression, optionally preceded by a short
scratchpad of its steps: "3*7=21,21+5=26#3*7+5". The answer is the text after the last "#" (or the whole completion),
cut at "<eos>". Valid iff it parses (integers, + - * /, parentheses; no unary minus), uses each given number at most
once (a number listed twice may be used twice), every division is exact, and the value equals the target.

The generator guarantees solvability: the target is built from a random expression over 2..all of the numbers with
non-negative intermediates and exact divisions, kept in [1, max_target] and different from every given number.

Multi-solution variant (`n_solutions = N > 1`): prompt "3,5,7>26|3:" asks for N distinct expressions separated by
";". Distinct means different normal forms under commutativity and associativity of + and * (see
`parsing.canonical`: "3+5", "5+3" and "(5)+3" are one solution). Reward = min(#valid distinct, N) / N. The generator
picks a target that has at least N distinct solutions (exhaustive search over the numbers, cached).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from sherman.core.common import ShermanError
from sherman.tasks.base import Example
from sherman.tasks.parsing import Expr, canonical, evaluate, final_answer, parse_expr, to_str


@dataclass
class CountdownConfig:
    min_numbers: int = 3
    """Fewest given numbers."""
    max_numbers: int = 4
    """Most given numbers (the multi-solution search is exhaustive, so keep this <= 5)."""
    max_number: int = 9
    """Given numbers are drawn from 1..max_number (small by default so tiny models can learn)."""
    max_target: int = 50
    """Targets lie in 1..max_target."""
    ops: str = "+-*/"
    """Operators the generator builds targets with (the reward accepts all four)."""
    n_solutions: int = 1
    """Distinct expressions asked for; > 1 is the multi-solution variant."""
    scratchpad: bool = False
    """Single-solution traces show the expression's steps ("3*7=21,21+5=26") before '#expr'."""

    def __post_init__(self):
        if not 2 <= self.min_numbers <= self.max_numbers <= 6:
            raise ShermanError(f"countdown: need 2 <= min_numbers <= max_numbers <= 6, got {self.min_numbers}, {self.max_numbers}")
        if self.max_number < 1 or self.max_target < 1:
            raise ShermanError("countdown: max_number and max_target must be >= 1")
        if not self.ops or any(o not in "+-*/" for o in self.ops):
            raise ShermanError(f"countdown: ops must be a non-empty subset of '+-*/', got {self.ops!r}")
        if self.n_solutions < 1:
            raise ShermanError(f"countdown: n_solutions must be >= 1, got {self.n_solutions}")
        if self.n_solutions > 1 and self.max_numbers > 5:
            raise ShermanError("countdown: the multi-solution search is exhaustive; use max_numbers <= 5 with n_solutions > 1")


def combine(a: Expr, va: int, op: str, b: Expr, vb: int) -> tuple[Expr, int] | None:
    """a op b when it keeps intermediates non-negative and divisions exact (the generator's rules)."""
    if op == "-" and va < vb:
        return None
    if op == "/" and (vb == 0 or va % vb):
        return None
    v = va + vb if op == "+" else va - vb if op == "-" else va * vb if op == "*" else va // vb
    return Expr(op, left=a, right=b), v


def random_expression(numbers: list[int], ops: str, rng: random.Random) -> tuple[Expr, int] | None:
    """Combine a random subset (size >= 2) of `numbers` with random ops in a random order."""
    k = rng.randint(2, len(numbers))
    pool = [(Expr("n", value=n), n) for n in rng.sample(numbers, k)]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (a, va), (b, vb) = pool[i], pool[j]
        out = combine(a, va, rng.choice(ops), b, vb)
        if out is None:
            return None
        pool = [p for t, p in enumerate(pool) if t not in (i, j)] + [out]
    return pool[0]


@lru_cache(maxsize=2048)
def solutions(numbers: tuple[int, ...], ops: str) -> dict[int, dict[str, str]]:
    """Every value reachable from >= 2 of `numbers` -> {canonical form: an expression string}, generator rules."""
    out: dict[int, dict[str, str]] = {}

    def search(pool: list[tuple[Expr, int]]) -> None:
        for i in range(len(pool)):
            for j in range(len(pool)):
                if i == j:
                    continue
                rest = [p for t, p in enumerate(pool) if t not in (i, j)]
                for op in ops:
                    if op in "+*" and i > j:  # commutative: one order suffices
                        continue
                    got = combine(*pool[i], op, *pool[j])
                    if got is None:
                        continue
                    e, v = got
                    out.setdefault(v, {}).setdefault(canonical(e), to_str(e))
                    if rest:
                        search(rest + [got])

    search([(Expr("n", value=n), n) for n in numbers])
    return out


def steps(e: Expr) -> list[str]:
    """Scratchpad lines "a op b = v" for each node, bottom-up."""
    if e.op == "n":
        return []
    return steps(e.left) + steps(e.right) + [f"{evaluate(e.left)}{e.op}{evaluate(e.right)}={evaluate(e)}"]


class Countdown:
    """See the module docstring. Built as `Countdown(min_numbers=3, n_solutions=1, ...)`."""

    name = "countdown"

    def __init__(self, cfg: CountdownConfig | None = None, **kwargs):
        self.cfg = cfg or CountdownConfig(**kwargs)

    def sample(self, rng: random.Random) -> Example:
        c = self.cfg
        for _ in range(10_000):
            numbers = [rng.randint(1, c.max_number) for _ in range(rng.randint(c.min_numbers, c.max_numbers))]
            if c.n_solutions == 1:
                got = random_expression(numbers, c.ops, rng)
                if got is None or not 1 <= got[1] <= c.max_target or got[1] in numbers:
                    continue
                target, sols = got[1], [to_str(got[0])]
            else:
                table = solutions(tuple(sorted(numbers)), c.ops)
                ok = [t for t in sorted(table) if 1 <= t <= c.max_target and t not in numbers and len(table[t]) >= c.n_solutions]
                if not ok:
                    continue
                target = rng.choice(ok)
                sols = [table[target][k] for k in sorted(table[target])]
                sols = rng.sample(sols, c.n_solutions)
            suffix = f"|{c.n_solutions}" if c.n_solutions > 1 else ""
            prompt = ",".join(map(str, numbers)) + f">{target}{suffix}:"
            return Example(prompt, ";".join(sols), {"numbers": numbers, "target": target, "n_solutions": c.n_solutions})
        raise ShermanError(f"countdown: no solvable problem found for config {c}; widen max_target or max_number")

    def check(self, ex: Example, text: str) -> str | None:
        """Canonical form of `text` if it is a valid solution of `ex`, else None."""
        e = parse_expr(text)
        if e is None or Counter(e.literals()) - Counter(ex.meta["numbers"]):  # malformed, or a number used too often
            return None
        return canonical(e) if evaluate(e) == ex.meta["target"] else None

    def reward(self, ex: Example, completion: str) -> float:
        n = ex.meta["n_solutions"]
        parts = final_answer(completion).split(";")[: 4 * n]  # bounded work on runaway output
        found = {c for c in (self.check(ex, p) for p in parts) if c is not None}
        return min(len(found), n) / n

    def trace(self, ex: Example, rng: random.Random | None = None) -> str:
        if self.cfg.scratchpad and ex.meta["n_solutions"] == 1:
            return ",".join(steps(parse_expr(ex.answer))) + "#" + ex.answer
        return "#" + ex.answer

    def alphabet(self) -> str:
        return "0123456789+-*/()=,;>|:#"

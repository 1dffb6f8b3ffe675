"""Multi-digit arithmetic (+, -, *) with a place-value scratchpad, single or several expressions per prompt.

Prompt "47*85=" ; trace "47*5=235,47*80=3760,235+3760=3995#3995" ; reward 1.0 iff the final answer (after the last
"#", cut at "<eos>") is exactly the true result. The scratchpad splits the second operand by place value (highest
first for + and -, lowest first for *), so its length grows with the number of digits.

Multi-expression mode (`n_expressions > 1`, for AsyncThink-style decomposition): the prompt lists independent
expressions separated by ";" ("12+5;7*8="), the trace works each one in turn separated by ";", and the answer is all
results in order ("#17;56"). The reward is 1.0 only when every result is right.

Digit-wise scratchpad (`style="digits"`, addition only): the expression is copied, then one 4-token step per digit
place, units first, "a_i b_i s_i c_i" (digits of the operands, the sum digit and the carry out), then the result:
"47+85=" "7521," "4831" "=132". Every token is a one-digit sum or a copy at an offset that depends only on the
operands' lengths, the form small transformers learn from few examples (units-first digit order, as in reversed-digit
addition); the place-value style writes multi-digit partial sums, whose offsets vary with the carries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sherman.core.common import ShermanError
from sherman.tasks.base import Example
from sherman.tasks.parsing import final_answer

OPS = "+-*"
STYLES = ("place", "digits")


@dataclass
class ArithmeticConfig:
    min_digits: int = 1
    """Fewest digits of an operand."""
    max_digits: int = 3
    """Most digits of an operand."""
    ops: str = "+-*"
    """Operators to draw from (any of '+', '-', '*')."""
    n_expressions: int = 1
    """Expressions per prompt; > 1 is the multi-expression mode (answer = all results in order, ';'-separated)."""
    nonneg_sub: bool = True
    """Order subtraction operands so results are never negative."""
    scratchpad: bool = True
    """Traces show partial results before '#answer'; False gives just '#answer'."""
    style: str = "place"
    """Scratchpad form: 'place' (place-value partial results) or 'digits' (digit-wise, units first; ops '+' only)."""

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits:
            raise ShermanError(f"arithmetic: need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if not self.ops or any(o not in OPS for o in self.ops):
            raise ShermanError(f"arithmetic: ops must be a non-empty subset of {OPS!r}, got {self.ops!r}")
        if self.style not in STYLES:
            raise ShermanError(f"arithmetic: style must be one of {STYLES}, got {self.style!r}")
        if self.style == "digits" and self.ops != "+":
            raise ShermanError(f"arithmetic: style 'digits' supports ops '+' only, got {self.ops!r}")
        if self.n_expressions < 1:
            raise ShermanError(f"arithmetic: n_expressions must be >= 1, got {self.n_expressions}")


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def place_parts(b: int) -> list[int]:
    """Nonzero place-value components of b >= 0, highest first: 305 -> [300, 5]."""
    s = str(b)
    return [int(d) * 10 ** (len(s) - 1 - i) for i, d in enumerate(s) if d != "0"]


def scratchpad(a: int, op: str, b: int) -> str:
    """Partial results: a running sum/difference over b's place values, or partial products then their sum."""
    parts = place_parts(b)
    if len(parts) <= 1:
        return f"{a}{op}{b}={apply(a, op, b)}"
    steps = []
    if op in "+-":
        acc = a
        for p in parts:
            steps.append(f"{acc}{op}{p}={apply(acc, op, p)}")
            acc = apply(acc, op, p)
        return ",".join(steps)
    prods = [a * p for p in reversed(parts)]
    steps = [f"{a}*{p}={q}" for p, q in zip(reversed(parts), prods)]
    acc = prods[0]
    for q in prods[1:]:
        steps.append(f"{acc}+{q}={acc + q}")
        acc += q
    return ",".join(steps)


def digit_scratchpad(a: int, b: int) -> str:
    """a+b worked digit by digit, units first: copy "a+b=", then per place "a_i b_i s_i c_i" (0 for a missing digit),
    then "=" and the sum: 47+85 -> "47+85=7521,4831=132"."""
    x, y = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(x), len(y))):
        da, db = int(x[i]) if i < len(x) else 0, int(y[i]) if i < len(y) else 0
        t = da + db + carry
        carry = t // 10
        steps.append(f"{da}{db}{t % 10}{carry}")
    return f"{a}+{b}=" + ",".join(steps) + f"={a + b}"


class Arithmetic:
    """See the module docstring. Built as `Arithmetic(min_digits=1, max_digits=3, ...)`."""

    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig | None = None, **kwargs):
        self.cfg = cfg or ArithmeticConfig(**kwargs)

    def think(self, a: int, op: str, b: int) -> str:
        """The worked steps of one expression in this task's scratchpad style."""
        return digit_scratchpad(a, b) if self.cfg.style == "digits" else scratchpad(a, op, b)

    def _number(self, rng: random.Random) -> int:
        d = rng.randint(self.cfg.min_digits, self.cfg.max_digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)

    def sample(self, rng: random.Random) -> Example:
        exprs = []
        for _ in range(self.cfg.n_expressions):
            a, op, b = self._number(rng), rng.choice(self.cfg.ops), self._number(rng)
            if op == "-" and self.cfg.nonneg_sub and a < b:
                a, b = b, a
            exprs.append((a, op, b))
        results = [apply(*e) for e in exprs]
        prompt = ";".join(f"{a}{op}{b}" for a, op, b in exprs) + "="
        return Example(prompt, ";".join(map(str, results)), {"exprs": exprs, "results": results})

    def reward(self, ex: Example, completion: str) -> float:
        return 1.0 if final_answer(completion) == ex.answer else 0.0

    def trace(self, ex: Example, rng: random.Random | None = None) -> str:
        if not self.cfg.scratchpad:
            return "#" + ex.answer
        return ";".join(self.think(a, op, b) for a, op, b in ex.meta["exprs"]) + "#" + ex.answer

    def alphabet(self) -> str:
        return "0123456789+-*=,;#"

"""Parsing model output for the tasks: the final answer of a completion, and a small safe arithmetic parser.

Conventions shared by every task:
- a completion may end with "<eos>" (and anything after it is ignored);
- a worked trace writes its final answer after a "#" ("...scratchpad...#answer"); the answer is the text after
  the LAST "#", or the whole completion when it has none.

The expression parser never calls eval(): it reads integers, + - * / and parentheses with a recursive-descent
grammar, bounded in length, nesting and literal size, and returns None for anything malformed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

EOS = "<eos>"
MAX_EXPR_CHARS = 256
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 9


def final_answer(completion: str) -> str:
    """Text after the last '#' (or all of it), cut at the first '<eos>', stripped of whitespace."""
    text = completion.split(EOS, 1)[0]
    return text.rsplit("#", 1)[-1].strip()


@dataclass(frozen=True)
class Expr:
    """A parsed expression tree: a literal (op == "n", value set) or a binary node (op in "+-*/")."""

    op: str
    value: int = 0
    left: Expr | None = None
    right: Expr | None = None

    def literals(self) -> list[int]:
        if self.op == "n":
            return [self.value]
        return self.left.literals() + self.right.literals()


class _Malformed(Exception):
    pass


def _tokenize(text: str) -> list[str]:
    toks, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "+-*/()":
            toks.append(c)
            i += 1
        elif "0" <= c <= "9":
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise _Malformed
            toks.append(text[i:j])
            i = j
        else:
            raise _Malformed
    return toks


def parse_expr(text: str) -> Expr | None:
    """Parse `text` as integers with + - * / and parentheses (no unary minus). None if malformed."""
    if len(text) > MAX_EXPR_CHARS:
        return None
    try:
        toks = _tokenize(text)
        pos = 0

        def peek() -> str | None:
            return toks[pos] if pos < len(toks) else None

        def take() -> str:
            nonlocal pos
            if pos >= len(toks):
                raise _Malformed
            pos += 1
            return toks[pos - 1]

        def expr(depth: int) -> Expr:  # expr := term (('+'|'-') term)*
            node = term(depth)
            while peek() in ("+", "-"):
                op = take()
                node = Expr(op, left=node, right=term(depth))
            return node

        def term(depth: int) -> Expr:  # term := factor (('*'|'/') factor)*
            node = factor(depth)
            while peek() in ("*", "/"):
                op = take()
                node = Expr(op, left=node, right=factor(depth))
            return node

        def factor(depth: int) -> Expr:  # factor := INT | '(' expr ')'
            if depth > MAX_DEPTH:
                raise _Malformed
            t = take()
            if t == "(":
                node = expr(depth + 1)
                if take() != ")":
                    raise _Malformed
                return node
            if not t.isdigit():
                raise _Malformed
            return Expr("n", value=int(t))

        tree = expr(0)
        if pos != len(toks):
            raise _Malformed
        return tree
    except _Malformed:
        return None


def evaluate(e: Expr) -> int | None:
    """Integer value of `e`; None when a division is by zero or not exact."""
    if e.op == "n":
        return e.value
    a, b = evaluate(e.left), evaluate(e.right)
    if a is None or b is None:
        return None
    if e.op == "+":
        return a + b
    if e.op == "-":
        return a - b
    if e.op == "*":
        return a * b
    if b == 0 or a % b != 0:
        return None
    return a // b


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "n": 3}


def to_str(e: Expr) -> str:
    """Print with the fewest parentheses that keep the exact tree (parse_expr(to_str(e)) == e)."""
    if e.op == "n":
        return str(e.value)
    p = _PREC[e.op]
    left = to_str(e.left)
    right = to_str(e.right)
    if _PREC[e.left.op] < p:
        left = f"({left})"
    if _PREC[e.right.op] <= p:  # left-associative parsing: a right operand of equal precedence needs parentheses
        right = f"({right})"
    return f"{left}{e.op}{right}"


def canonical(e: Expr) -> str:
    """A normal form equal for expressions that differ only by commutativity/associativity of + and *, or by no-ops.

    Sums are flattened to sorted positive and negative terms (a-(b-c) == a+c-b), products to sorted numerator and
    denominator factors (a/(b/c) == a*c/b). No-ops are removed so they cannot pass as new solutions: terms worth 0 and
    factors worth 1 are dropped (by value, so "(6-5)*8" is "8"), a term (factor) both added and subtracted (multiplied
    and divided) cancels, and a product with a factor worth 0 is 0. So "7*4", "4*7", "7/1*4", "7*4+2-2" and "(3-2)*7*4"
    are one solution; "2*3" and "3+3" are two.
    """
    if e.op == "n":
        return str(e.value)
    is_sum = e.op in "+-"
    pos: list[str] = []
    neg: list[str] = []

    def collect(node: Expr, sign: bool) -> None:
        if node.op != "n" and (node.op in "+-") == is_sum:
            collect(node.left, sign)
            collect(node.right, sign if node.op in "+*" else not sign)
        else:
            v = evaluate(node)
            (pos if sign else neg).append(str(v) if v in (0, 1) else canonical(node))

    collect(e, True)
    # no-ops by value: a term worth 0 in a sum, a factor worth 1 in a product; a product with a factor worth 0 is 0
    unit, zero = ("0", None) if is_sum else ("1", "0")
    if zero is not None and zero in pos:
        return zero
    pos = [t for t in pos if t != unit]
    neg = [t for t in neg if t != unit]
    common = Counter(pos) & Counter(neg)
    pos = sorted((Counter(pos) - common).elements())
    neg = sorted((Counter(neg) - common).elements())
    if not pos and not neg:
        return unit
    if len(pos) == 1 and not neg:
        return pos[0]
    op, inv = ("+", "-") if is_sum else ("*", "/")
    return "(" + op.join(pos) + "".join(inv + t for t in neg) + ")"

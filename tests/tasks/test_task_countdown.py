import random
from collections import Counter

import pytest

from sherman.core.common import ShermanError
from sherman.core.tokenizer import CharTokenizer
from sherman.tasks.base import Example
from sherman.tasks.countdown import Countdown, solutions
from sherman.tasks.parsing import Expr, canonical, evaluate, parse_expr, to_str


def value(text):
    e = parse_expr(text)
    return None if e is None else evaluate(e)


def test_parser_hand_examples():
    assert value("3+4*2") == 11
    assert value("(3+4)*2") == 14
    assert value("10-4-3") == 3  # left associative
    assert value("24/4/2") == 3
    assert value(" 8 / ( 4 / 2 ) ") == 4
    assert value("7/2") is None  # not exact
    assert value("5/(3-3)") is None  # division by zero
    for bad in ["", "-3+4", "3+", "(3+4", "3+4)", "3 4", "3**4", "2^3", "eval('1')", "3.0+1", "()", "1e3", "٣+1", "1" * 10]:
        assert parse_expr(bad) is None, bad
    assert parse_expr("(" * 40 + "1" + ")" * 40) is None  # nesting bound, no RecursionError
    assert parse_expr("1+" * 200 + "1") is None  # length bound
    assert to_str(parse_expr("(3-(4-2))*(6/(3/1))")) == "(3-(4-2))*(6/(3/1))"
    assert to_str(parse_expr("((3*4))+(2-1)")) == "3*4+(2-1)"
    assert to_str(parse_expr("((3*4))+2-(1)")) == "3*4+2-1"
    rng = random.Random(0)
    for _ in range(200):  # printing keeps the exact tree
        e = parse_expr(rng.choice(["1", "2"]))
        for _ in range(rng.randint(1, 5)):
            leaf = parse_expr(str(rng.randint(1, 9)))
            e = Expr(rng.choice("+-*/"), left=e, right=leaf) if rng.random() < 0.5 else Expr(rng.choice("+-*/"), left=leaf, right=e)
        assert parse_expr(to_str(e)) == e


def test_canonical_forms():
    same = [["3+5", "5+3", "(5)+3"], ["7*(9-5)", "(9-5)*7", "7/1*(9-5)", "(9-5)*7+2-2"], ["9-(1*2-1)", "9+1-2"], ["8/(4/2)", "8*2/4"]]
    for group in same:
        assert len({canonical(parse_expr(s)) for s in group}) == 1, group
    assert canonical(parse_expr("2*3")) != canonical(parse_expr("3+3"))
    assert canonical(parse_expr("9-5")) != canonical(parse_expr("5-9"))
    assert canonical(parse_expr("8/4")) != canonical(parse_expr("4/8"))


def test_reward_hand_examples():
    task = Countdown()
    ex = Example("3,5,7>26:", "3*7+5", {"numbers": [3, 5, 7], "target": 26, "n_solutions": 1})
    assert task.reward(ex, "3*7+5") == 1.0
    assert task.reward(ex, "3*7=21,21+5=26#5+7*3<eos>") == 1.0
    assert task.reward(ex, "#3*7+5<eos>junk") == 1.0
    assert task.reward(ex, "#3*7+5+0") == 0.0  # 0 is not a given number
    assert task.reward(ex, "#3*7+5*1") == 0.0  # neither is 1
    assert task.reward(ex, "#3*7+3+2") == 0.0
    assert task.reward(ex, "#7*3+7-2") == 0.0  # 7 used twice
    assert task.reward(ex, "#26") == 0.0
    assert task.reward(ex, "#3*7+6") == 0.0
    assert task.reward(ex, "#3*7+5)") == 0.0
    assert task.reward(ex, "#__import__('os')") == 0.0
    assert task.reward(ex, "") == 0.0
    assert task.reward(ex, "#" + "(" * 5000) == 0.0
    dup = Example("2,2,3>12:", "", {"numbers": [2, 2, 3], "target": 12, "n_solutions": 1})
    assert task.reward(dup, "#2*2*3") == 1.0  # a number listed twice may be used twice
    assert task.reward(dup, "#2*2*3*2/2") == 0.0
    frac = Example("", "", {"numbers": [7, 2, 4], "target": 14, "n_solutions": 1})
    assert task.reward(frac, "#7/2*4") == 0.0  # 7/2 is not exact


def test_multi_solution_reward():
    task = Countdown(n_solutions=3)
    ex = Example("1,2,3,4>10|3:", "", {"numbers": [1, 2, 3, 4], "target": 10, "n_solutions": 3})
    assert task.reward(ex, "#1+2+3+4;4+3+2+1;(1+2)+(3+4)") == pytest.approx(1 / 3)  # one distinct solution
    assert task.reward(ex, "#3*4-2;3*4-2*1;(3*4-2)/1") == pytest.approx(1 / 3)  # *1, /1 variants are not new
    assert task.reward(ex, "#2*4+3-1;2*4+(3-1)*1") == pytest.approx(1 / 3)
    assert task.reward(ex, "#2*(1+4);4*2+2") == pytest.approx(1 / 3)  # 2 used twice
    assert task.reward(ex, "#2*(1+4);2*(4+1)+3-3;9+1") == pytest.approx(1 / 3)
    assert task.reward(ex, "#2*(1+4);1+2+3+4") == pytest.approx(2 / 3)
    assert task.reward(ex, "#2*(1+4);1+2+3+4;1+2+3+4") == pytest.approx(2 / 3)
    assert task.reward(ex, "#2*(1+4);1+2+3+4;3*4-2") == 1.0
    assert task.reward(ex, "#2*(1+4);1+2+3+4;3*4-2;2+4*(3-1)") == 1.0  # capped at N
    assert task.reward(ex, "#2*(1+4);;1+2+3+4;garbage;3*4-2") == 1.0
    assert task.reward(ex, "#;;;") == 0.0
    assert task.reward(ex, "2*(1+4)") == pytest.approx(1 / 3)


def test_solver_hand_example():
    table = solutions((1, 2, 3, 4), "+-*/")
    expected = ["1+2+3+4", "3*4-2", "4+3*2", "2*(1+4)", "2*4+3-1", "2+4*(3-1)"]
    assert set(table[10]) == {canonical(parse_expr(s)) for s in expected}
    for v, forms in table.items():
        for form, expr in forms.items():
            e = parse_expr(expr)
            assert evaluate(e) == v and canonical(e) == form and len(e.literals()) >= 2
            assert not Counter(e.literals()) - Counter([1, 2, 3, 4])


def _check_trace(task, n=300, seed=0):
    tok = CharTokenizer(task.alphabet())
    rng = random.Random(seed)
    for _ in range(n):
        ex = task.sample(rng)
        tr = task.trace(ex, rng)
        assert task.reward(ex, tr) == 1.0, (ex, tr)
        assert tok.decode(tok.encode(ex.prompt + tr + "<eos>")) == ex.prompt + tr
        nums, t = ex.meta["numbers"], ex.meta["target"]
        assert 3 <= len(nums) <= 4 and all(1 <= x <= task.cfg.max_number for x in nums)
        assert 1 <= t <= task.cfg.max_target and t not in nums
        assert ex.prompt.startswith(",".join(map(str, nums)) + f">{t}")


@pytest.mark.parametrize("cfg", [{}, {"scratchpad": True}, {"max_number": 20, "max_target": 200, "ops": "+*"}])
def test_trace_always_correct_single(cfg):
    _check_trace(Countdown(**cfg))


@pytest.mark.parametrize("n", [2, 4])
def test_trace_always_correct_multi_and_distinct(n):
    task = Countdown(n_solutions=n)
    _check_trace(task, n=100)
    rng = random.Random(3)
    for _ in range(50):
        ex = task.sample(rng)
        parts = task.trace(ex, rng).lstrip("#").split(";")
        assert len(parts) == n and len({canonical(parse_expr(p)) for p in parts}) == n
        assert ex.prompt.endswith(f"|{n}:")
        assert task.reward(ex, "#" + ";".join(parts[:-1])) == pytest.approx((n - 1) / n)
        assert task.reward(ex, "#" + ";".join(parts + parts)) == 1.0


def test_deterministic_and_config_errors():
    for cfg in [{}, {"n_solutions": 3}]:
        task = Countdown(**cfg)
        a = [task.sample(random.Random(11)) for _ in range(3)]
        assert [(e.prompt, e.answer) for e in a] == [(e.prompt, e.answer) for e in [task.sample(random.Random(11)) for _ in range(3)]]
    with pytest.raises(ShermanError, match="ops"):
        Countdown(ops="+%")
    with pytest.raises(ShermanError, match="max_numbers <= 5"):
        Countdown(n_solutions=2, max_numbers=6)
    with pytest.raises(ShermanError, match="min_numbers"):
        Countdown(min_numbers=1)
    with pytest.raises(ShermanError, match="no solvable"):
        Countdown(max_number=1, max_target=1, min_numbers=2, max_numbers=2).sample(random.Random(0))

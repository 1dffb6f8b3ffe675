import random

import pytest

from sherman.core.common import ShermanError
from sherman.core.tokenizer import CharTokenizer
from sherman.tasks import TASKS, get_task
from sherman.tasks.arithmetic import Arithmetic, digit_scratchpad, place_parts, scratchpad
from sherman.tasks.base import Example
from sherman.tasks.parsing import final_answer


def test_final_answer_convention():
    assert final_answer("1+2=3#3") == "3"
    assert final_answer("a#b#  42 <eos>#7") == "42"  # after the last '#' before eos
    assert final_answer("  17 ") == "17"
    assert final_answer("#") == ""


def test_scratchpad_hand_examples():
    assert place_parts(305) == [300, 5] and place_parts(0) == []
    assert scratchpad(47, "*", 85) == "47*5=235,47*80=3760,235+3760=3995"
    assert scratchpad(47, "+", 85) == "47+80=127,127+5=132"
    assert scratchpad(85, "-", 47) == "85-40=45,45-7=38"
    assert scratchpad(5, "-", 40) == "5-40=-35"
    assert scratchpad(12, "*", 0) == "12*0=0"
    assert scratchpad(3, "*", 102) == "3*2=6,3*100=300,6+300=306"


def test_digit_scratchpad_hand_examples():
    # per place, units first: operand digits, sum digit, carry out; then the sum
    assert digit_scratchpad(47, 85) == "47+85=7521,4831=132"  # 7+5=12 -> 2 carry 1; 4+8+1=13 -> 3 carry 1
    assert digit_scratchpad(43, 23) == "43+23=3360,4260=66"
    assert digit_scratchpad(5, 97) == "5+97=5721,0901=102"  # a missing digit is 0
    assert digit_scratchpad(999, 1) == "999+1=9101,9001,9001=1000"
    task = Arithmetic(n_expressions=2, min_digits=2, max_digits=2, ops="+", style="digits")
    ex = Example("47+85;43+23=", "132;66", {"exprs": [(47, "+", 85), (43, "+", 23)], "results": [132, 66]})
    assert task.trace(ex) == "47+85=7521,4831=132;43+23=3360,4260=66#132;66"
    with pytest.raises(ShermanError, match="style"):
        Arithmetic(ops="+*", style="digits")
    with pytest.raises(ShermanError, match="style"):
        Arithmetic(style="bogus")


def test_reward_hand_examples():
    task = Arithmetic()
    ex = Example("47*85=", "3995", {})
    assert task.reward(ex, "47*5=235,47*80=3760,235+3760=3995#3995") == 1.0
    assert task.reward(ex, "#3995<eos>") == 1.0
    assert task.reward(ex, "3995") == 1.0
    assert task.reward(ex, "#3995<eos>#12") == 1.0  # text after eos is ignored
    assert task.reward(ex, "#3994") == 0.0
    assert task.reward(ex, "#3995#3994") == 0.0  # the last '#' wins
    assert task.reward(ex, "#03995") == 0.0  # not the canonical integer
    assert task.reward(ex, "#3995 3995") == 0.0
    assert task.reward(ex, "") == 0.0
    assert task.reward(ex, "#<eos>") == 0.0
    assert task.reward(ex, "\x00\udcff#" * 50) == 0.0
    multi = Example("12+5;7*8=", "17;56", {})
    assert task.reward(multi, "12+5=17;7*8=56#17;56") == 1.0
    assert task.reward(multi, "#56;17") == 0.0
    assert task.reward(multi, "#17") == 0.0
    assert task.reward(multi, "#17;56;1") == 0.0


def test_sample_deterministic_and_in_range():
    task = Arithmetic(min_digits=2, max_digits=3, ops="-")
    a = [task.sample(random.Random(5)) for _ in range(3)]
    b = [task.sample(random.Random(5)) for _ in range(3)]
    assert [(e.prompt, e.answer) for e in a] == [(e.prompt, e.answer) for e in b]
    rng = random.Random(0)
    for _ in range(200):
        ex = task.sample(rng)
        ((x, op, y),) = ex.meta["exprs"]
        assert op == "-" and 10 <= y <= x <= 999 and int(ex.answer) == x - y >= 0
        assert ex.prompt == f"{x}-{y}="


@pytest.mark.parametrize("cfg", [{}, {"max_digits": 5, "nonneg_sub": False}, {"n_expressions": 3, "ops": "+*"}, {"scratchpad": False},
                                 {"n_expressions": 3, "ops": "+", "style": "digits"}])
def test_trace_always_correct_and_tokenizable(cfg):
    task = Arithmetic(**cfg)
    tok = CharTokenizer(task.alphabet())
    rng = random.Random(1)
    lengths = set()
    for _ in range(300):
        ex = task.sample(rng)
        tr = task.trace(ex, rng)
        assert task.reward(ex, tr) == 1.0 and task.reward(ex, tr + "<eos>") == 1.0
        assert tok.decode(tok.encode(ex.prompt + tr, eos=True)) == ex.prompt + tr
        lengths.add(len(tr))
        if len(ex.meta["results"]) == 3:
            assert ex.prompt.count(";") == 2 and ex.answer.count(";") == 2
    assert len(lengths) > 3  # traces have variable length


def test_config_errors_and_registry():
    with pytest.raises(ShermanError, match="ops"):
        Arithmetic(ops="/")
    with pytest.raises(ShermanError, match="min_digits"):
        Arithmetic(min_digits=3, max_digits=2)
    with pytest.raises(ShermanError, match="unknown task"):
        get_task("nope")
    for name in TASKS:
        task = get_task(name)
        assert task.name == name
        ex = task.sample(random.Random(0))
        assert task.reward(ex, task.trace(ex, random.Random(0))) == 1.0

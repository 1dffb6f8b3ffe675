"""Rewards never raise and stay in [0, 1] on arbitrary model output, and only the right answer scores."""

import random

import pytest

from sherman.tasks import TASKS, get_task

JUNK = "0123456789+-*/()=,;#:?<>|eos abc\n\t\x00é✓"


@pytest.mark.parametrize("name,cfg", [(n, {}) for n in TASKS] + [("countdown", {"n_solutions": 3}), ("arithmetic", {"n_expressions": 2})])
def test_reward_total_on_random_output(name, cfg):
    task = get_task(name, **cfg)
    rng = random.Random(0)
    for _ in range(100):
        ex = task.sample(rng)
        tr = task.trace(ex, rng)
        variants = ["".join(rng.choice(JUNK) for _ in range(rng.randint(0, 60))) for _ in range(5)]
        # corruptions of the correct trace: a character changed, dropped, or the answer truncated
        i = rng.randrange(len(tr))
        variants += [tr[:i] + rng.choice(JUNK) + tr[i + 1 :], tr[:i] + tr[i + 1 :], tr[:-1], tr + "<eos>" + tr[:i]]
        for v in variants:
            r = task.reward(ex, v)
            assert 0.0 <= r <= 1.0
        assert task.reward(ex, tr[:-1] + "<eos>") < 1.0  # a truncated answer is wrong

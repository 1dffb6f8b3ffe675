"""The tiny planner: its task on the shared interface, SFT + RL through the project's loops, and its backend."""

import json
import random

import pytest
import torch

from sherman.agents.agents import AgentConfig, run_episode
from sherman.agents.knowledge import KnowledgeBase
from sherman.agents.memory import Memory
from sherman.agents.planner import PlannerBackend, PlannerTask, PlannerTrainConfig, planner_prompt, proposal_json, train_planner
from sherman.agents.tools import CommEnv, Scenario


def test_planner_prompt_and_reward():
    task = PlannerTask()
    ex = task.sample(random.Random(0))
    env = ex.meta["env"]
    assert ex.prompt == planner_prompt(env.features(), ex.meta["perspective"]) and ex.prompt.endswith(">")
    assert set(ex.prompt + ex.answer) <= set(task.alphabet())
    assert task.reward(ex, "no json here") == 0.0
    assert task.reward(ex, '{"precoder": "qr", "power": "equal"}') == 0.0
    # the reward is the tool's sum rate over the best configuration's, when the target is met
    for pc in env.valid_precoders():
        for pw in ("equal", "water_filling", "max_min"):
            r = env.evaluate(pc, pw)
            want = min(1.0, r["sum_rate"] / ex.meta["best_sum_rate"]) if r["feasible"] else 0.0
            assert task.reward(ex, proposal_json(pc, pw) + "<eos>junk") == pytest.approx(want)
    assert max(task.reward(ex, proposal_json(pc, pw)) for pc in env.valid_precoders() for pw in ("equal", "water_filling", "max_min")) == 1.0


def test_train_planner_smoke(tmp_path):
    torch.manual_seed(0)
    model, tok, hist = train_planner(PlannerTrainConfig(sft_steps=30, sft_examples=64, rl_steps=2, dim=32), tmp_path / "planner")
    assert hist["sft"][-1]["loss/train"] < hist["sft"][0]["loss/train"]
    assert len(hist["rl"]) == 2 and (tmp_path / "planner" / "tokenizer.json").exists()
    b = PlannerBackend(model, tok)
    env = CommEnv(Scenario(users=4, antennas=8, power_dbm=20.0, min_rate=1.0, seed=2))
    # planning prompts go to the model; the other roles stay with the scripted expert
    ep = run_episode("multi", b, "4 users, 8 antennas, 20 dBm, min rate 1 bit/s/Hz", env, KnowledgeBase(), Memory(), AgentConfig(rounds=1))
    assert b.calls == 3  # one per collaborative planner
    assert any(m.agent == "planner-1" for m in ep.messages)
    react = b.reply("You configure ...\nTask: x\nObservation: " + json.dumps(env.features()) + "\n")
    assert react.startswith('<tool>{"name": "evaluate", "args": ') and b.calls == 4

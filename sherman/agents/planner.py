"""The tiny planner trained by the project: format SFT on programmatic expert traces, then RL with the tool score.

The planning decision of the agentic pipeline (which precoder and power policy to propose, from the scenario's
features and a planner's perspective) is learned by a small Sherman decoder so the whole pipeline runs locally on a
CPU. `PlannerTask` is a task of the shared interface (`sherman.tasks.base`), so the one SFT warm start
(`rl.evaluation.sft_warm_start`) and the one RL loop (`rl.grpo.rl_train`, preset `opo`) train it unchanged.

Prompt (compact, character-tokenized):  "K4 M8 S27 L8 R2 r T>"  = users, antennas, mean / weakest-user SNR in dB,
min rate, fading (r/c), perspective (T throughput, F fairness, R robustness). Completion: the proposal as JSON,
'{"precoder": "zf", "power": "max_min"}'. Trace (SFT target): the best configuration within the perspective's power
family, by the evaluation tool's score. Reward (RL): the proposal's tool-computed sum rate over the best
non-WMMSE configuration's, when every user meets the minimum rate; 0 when it violates it or does not parse.

`PlannerBackend` plugs the model into the pipeline: planning prompts (the collaborative planners, and a ReAct
agent's first choice of configuration) go to the model; every other role stays with the scripted expert.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sherman.agents.scripted import _features, expert_script
from sherman.agents.tools import POWERS, CommEnv, Scenario, sample_scenario
from sherman.tasks.base import Example
from sherman.think.backends import Piece

CODES = {"throughput": "T", "fairness": "F", "robustness": "R"}
MAX_NEW = 48
"""Generation cap of a proposal (the longest JSON proposal is 45 characters, plus <eos>)."""
FAMILY = {"throughput": ("water_filling", "equal"), "fairness": ("max_min",), "robustness": POWERS}


def planner_prompt(features: dict[str, Any], perspective: str) -> str:
    f = features
    return (f"K{f['users']} M{f['antennas']} S{round(f['mean_snr_db'])} L{round(f['min_snr_db'])} R{f['min_rate']:g} "
            f"{'c' if f['fading'] == 'rician' else 'r'} {CODES[perspective]}>")  # fmt: skip


def proposal_json(precoder: str, power: str) -> str:
    return json.dumps({"precoder": precoder, "power": power})


def best_in(evals: list[dict[str, Any]], powers: tuple[str, ...]) -> dict[str, Any]:
    return max((r for r in evals if r["power"] in powers), key=lambda r: r["score"])


class PlannerTask:
    """Seeded scenarios x perspectives as a verifiable task (prompt, tool-scored reward, expert trace)."""

    name = "agent_planner"

    def sample(self, rng: random.Random) -> Example:
        while True:  # scenarios where some configuration meets the target (elsewhere every proposal earns 0)
            seed = rng.getrandbits(31)
            sc = sample_scenario(np.random.default_rng(seed), seed)
            env = CommEnv(sc)
            evals = [env.evaluate(pc, pw) for pc in env.valid_precoders() for pw in POWERS]
            top = best_in(evals, POWERS)
            if top["feasible"]:
                break
        persp = rng.choice(sorted(CODES))
        best = best_in(evals, FAMILY[persp])
        return Example(planner_prompt(env.features(), persp), proposal_json(best["precoder"], best["power"]),
                       {"scenario": sc.__dict__, "perspective": persp, "best_sum_rate": top["sum_rate"], "env": env})  # fmt: skip

    def reward(self, example: Example, completion: str) -> float:
        from sherman.agents.agents import parse_proposals

        props = parse_proposals(completion.split("<eos>")[0])
        if not props:
            return 0.0
        env = example.meta.get("env") or CommEnv(Scenario(**example.meta["scenario"]))
        try:
            r = env.evaluate(props[0]["precoder"], props[0]["power"])
        except ValueError:  # ZF with fewer antennas than users
            return 0.0
        return float(min(1.0, r["sum_rate"] / example.meta["best_sum_rate"])) if r["feasible"] else 0.0

    def trace(self, example: Example, rng: random.Random) -> str:
        return example.answer

    def alphabet(self) -> str:
        return "0123456789-. KMSLRrcTF>" + '{}":,_ abcdefghijklmnopqrstuvwxyz'


@dataclass
class PlannerTrainConfig:
    sft_steps: int = 300
    """Format SFT steps on expert traces."""
    sft_examples: int = 800
    """Distinct expert traces for SFT."""
    rl_steps: int = 40
    """RL iterations (opo preset: exactly on-policy, length-weighted baseline)."""
    dim: int = 64
    """Model width (2 layers)."""
    lr_rl: float = 3e-4
    """RL learning rate."""
    seed: int = 0
    """Seed of the model init, the data and the rollouts."""


def train_planner(cfg: PlannerTrainConfig, out_dir: Path | None = None) -> tuple[Any, Any, dict]:
    """SFT then RL; returns (model, tokenizer, history) and saves a checkpoint directory if out_dir is given."""
    import torch

    from sherman.core.checkpoint import save_checkpoint
    from sherman.core.model import Transformer
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.config import preset_config
    from sherman.rl.evaluation import sft_warm_start, tiny_model_config
    from sherman.rl.grpo import rl_train

    task = PlannerTask()
    tok = CharTokenizer(task.alphabet())
    torch.manual_seed(cfg.seed)
    model = Transformer(tiny_model_config(tok.vocab_size, dim=cfg.dim, max_seq_len=96))
    sft = sft_warm_start(model, task, tok, cfg.sft_steps, n_examples=cfg.sft_examples, seed=cfg.seed)
    rl = rl_train(model, task, tok, preset_config("opo", steps=cfg.rl_steps, prompts_per_step=8, group_size=8, max_new_tokens=MAX_NEW,
                                                  lr=cfg.lr_rl, seed=cfg.seed)) if cfg.rl_steps > 0 else None  # fmt: skip
    hist = {"sft": sft, "rl": [] if rl is None else rl.history}
    if out_dir is not None:
        save_checkpoint(Path(out_dir), model)
        tok.save(Path(out_dir))
    return model, tok, hist


class PlannerBackend:
    """Planning prompts to the trained model (greedy), all other roles to the scripted expert."""

    def __init__(self, model, tok, chunk: int = 4):
        self.model, self.tok, self.chunk = model, tok, chunk
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return -(-len(text) // self.chunk)

    def propose(self, features: dict[str, Any], perspective: str) -> str:
        import torch

        from sherman.core.generate import SamplingParams, generate

        self.calls += 1
        ids = self.tok.encode(planner_prompt(features, perspective), bos=True)
        out = generate(self.model, [ids], SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, stop_token_ids=[self.tok.eos_id]), generator=torch.Generator())
        return self.tok.decode([t for t in out.tokens[0] if t != self.tok.eos_id])

    def reply(self, prompt: str) -> str:
        text = expert_script(prompt)
        f = _features(prompt)
        if f is None:
            return text
        if prompt.startswith("Propose one configuration"):
            m = re.search(r"Planner perspective: (\w+)", prompt)
            persp = m.group(1) if m and m.group(1) in CODES else "robustness"
            return f"From the {persp} perspective: <RETURN>{self.propose(f, persp)}</RETURN>"
        if prompt.startswith("You configure") and '"score"' not in prompt and '"name": "evaluate"' in text:
            m = re.search(r"Perspective: (\w+)", prompt)
            persp = m.group(1) if m and m.group(1) in CODES else "robustness"
            return f'<tool>{{"name": "evaluate", "args": {self.propose(f, persp)}}}</tool>'
        return text

    async def stream(self, prompt: str, max_tokens: int):
        import asyncio

        text = self.reply(prompt)
        for n, i in enumerate(range(0, len(text), self.chunk)):
            if n >= max_tokens:
                return
            await asyncio.sleep(0)
            yield Piece(text[i : i + self.chunk])

"""The task interface shared by RL, AsyncThink, planning and the experiments (see DESIGN.md, "Tasks").

A task is a small object with:
    name: str
    sample(rng: random.Random) -> Example          a fresh problem
    reward(example, completion: str) -> float      verifiable reward in [0, 1] for a model completion
    trace(example, rng) -> str                     a correct worked completion (for SFT data)
    alphabet() -> str                              every character prompts and traces can contain
                                                   (so a CharTokenizer can be built for the task)

Completions are plain text after the prompt; answers are parsed from the text, never trusted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Example:
    prompt: str
    """Text given to the model."""
    answer: str
    """A reference answer (for display and exact-match metrics; `reward` is the judge)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task-specific data the reward needs (numbers, target, required count, ...)."""


class Task(Protocol):
    name: str

    def sample(self, rng: random.Random) -> Example: ...

    def reward(self, example: Example, completion: str) -> float: ...

    def trace(self, example: Example, rng: random.Random) -> str: ...

    def alphabet(self) -> str: ...

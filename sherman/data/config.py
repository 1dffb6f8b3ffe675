"""`LQSConfig`: the options of Learnability-Quality Scoring (`sherman.data.scoring`, which re-exports it).

Kept apart from the scoring code so that building the `sherman data score` parser imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LQSConfig:
    proxy_steps: int = 20
    """T: SGD steps of the proxy run."""
    lr: float = 0.02
    """eta: SGD step size of the proxy run (also the factor in the costate and the score)."""
    batch_size: int = 32
    """Documents per proxy SGD step, drawn uniformly without replacement within a step."""
    delta: int = 5
    """Delta: scoring checkpoints every Delta steps; the learnability denominator looks Delta steps ahead."""
    max_target: int = 32
    """Target-set documents used for grad J (the first max_target)."""
    chunk: int = 32
    """Documents per vmap call when computing per-document gradients."""
    max_len: int = 0
    """Truncate documents to this many tokens (0 = no limit)."""
    clip: float = 3.0
    """Clip of the z-normalized scores."""
    eps: float = 1e-8
    """Added to the gradient norm in the LQS denominator."""
    warmup_steps: int = 100
    """AdamW steps on uniform minibatches of the proxy sample before the SGD trajectory (theta_0 = the warmed-up model)."""
    warmup_lr: float = 3e-3
    """AdamW learning rate of the warm-up."""
    seed: int = 0
    """Seed of the proxy run's batch sampling."""

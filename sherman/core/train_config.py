"""`TrainConfig`: the options of the LM / SFT loop (`sherman.core.train.train`).

Kept apart from the loop so that building the `sherman train` parser (`core/train_cli.py`) imports no torch.
`sherman.core.train` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from sherman.core.config import Alias, check


@dataclass
class TrainConfig:
    steps: int = 200
    """Optimizer steps; 0 = exactly one epoch over the data."""
    batch_size: int = 16
    """Global batch (sequences per optimizer step, over all ranks and micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (batch_size must be divisible by grad_accum * world size)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    schedule: str = "cosine"
    """'cosine' (warmup then cosine decay to min_lr_ratio * lr) or 'constant' (warmup then flat)."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    shuffle: bool = True
    """Reshuffle each epoch with the seed; False consumes the data exactly in the given order."""
    seed: int = 0
    """Seed for init-independent randomness (data order, dropout-free here)."""
    max_len: int = 0
    """Truncate sequences to this many tokens; 0 = no truncation."""
    eval_every: int = 0
    """Call eval_fn (and eval loss) every N steps and at the end; 0 = only at the end if given."""
    ckpt_every: int = 0
    """Write out_dir/step_<7-digit step> every N steps (and at the end); 0 = only at the end when out_dir is set."""
    keep_ckpts: int = 2
    """Keep only the newest N periodic checkpoints (0 keeps all)."""
    out_dir: str | None = None
    """Run directory for checkpoints and metrics.jsonl; None = nothing written."""
    resume: bool = False
    """Resume from the latest checkpoint under out_dir if one exists (a finished run: 'already complete', or on to a larger steps)."""
    trust_pickle: Annotated[bool, Alias("--trust-pickle")] = False
    """Also resume from an old pickled state.pt. RISK: unpickling runs any code the file contains; use only on checkpoints you wrote."""
    log_every: int = 0
    """Print metrics every N steps on rank 0; 0 = silent."""

    def __post_init__(self) -> None:
        check(self.schedule in ("cosine", "constant"), "schedule", f"must be 'cosine' or 'constant', got {self.schedule!r}")
        check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.batch_size % self.grad_accum == 0, "grad_accum",
              f"batch size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")  # fmt: skip
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(self.max_len >= 0, "max_len", f"must be >= 0, got {self.max_len}")
        for name in ("eval_every", "ckpt_every", "keep_ckpts", "log_every"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")

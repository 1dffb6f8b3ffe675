"""A `core.train` run that survives being cut off: checkpointed every `every` steps under a run directory and resumed
from its newest checkpoint, ending with exactly the unbroken run's weights and loss curve.

Long experiment stages (an SFT or pre-training run longer than a session) use it with a directory keyed by the
stage's key, so a stale directory is never resumed; the stage removes the directory once its result is stored.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from sherman.core import checkpoint
from sherman.core.common import seed_everything
from sherman.core.train import SeqExample, TrainConfig, TrainResult, train


def train_resumable(model, data: Sequence[SeqExample], cfg: TrainConfig, run_dir: str | Path, every: int,
                    callback: Callable[[int, dict], None] | None = None, pad_id: int = 0) -> TrainResult:
    """`train(model, data, cfg)` with checkpoints every `every` steps (and at the end; one kept) in `run_dir`, resumed
    from the newest one there. A fresh run seeds as `train` does without a run directory, so checkpointed and plain
    runs give the same numbers; the returned history holds only the steps this call ran (`train_losses` reads all)."""
    if checkpoint.latest_checkpoint(run_dir) is None:
        seed_everything(cfg.seed)  # what a fresh train() does first (its resume path restores the checkpoint's state)
    return train(model, data, replace(cfg, out_dir=str(run_dir), resume=True, ckpt_every=every, keep_ckpts=1), callback=callback, pad_id=pad_id)


def train_losses(run_dir: str | Path) -> list[float]:
    """The training loss of every step of a `train_resumable` run, read from its metrics.jsonl (a step re-run after a
    resume keeps its later row, the same value; a line cut by a kill is skipped)."""
    rows: dict[int, float] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss/train" in r:
            rows[int(r["step"])] = float(r["loss/train"])
    return [rows[s] for s in sorted(rows)]


class CpuTally:
    """CPU seconds of a stage summed over the calls that trained it: what earlier (cut-off) calls saved in
    `run_dir/cpu_s.json` plus this process' CPU time since the tally was made. `save()` it at each checkpoint."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "cpu_s.json"
        self.earlier = float(json.loads(self.path.read_text())["cpu_s"]) if self.path.is_file() else 0.0
        self.c0 = time.process_time()

    def total(self) -> float:
        return self.earlier + time.process_time() - self.c0

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cpu_s": self.total()}))
        tmp.replace(self.path)

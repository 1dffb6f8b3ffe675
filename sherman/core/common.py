"""Small shared helpers: device, seeding, distributed rank helpers, rank-0 printing, a metrics sink.

Nothing here knows about models; everything in Sherman may import it.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sherman.core.errors import ShermanError  # noqa: F401 - re-exported: `from sherman.core.common import ShermanError`


def get_device(name: str | None = None) -> torch.device:
    """Resolve a device name; `None` or "auto" picks CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_rank0() -> bool:
    return rank() == 0


def init_distributed_from_env() -> bool:
    """Initialise torch.distributed when launched by `torchrun` (WORLD_SIZE > 1). Returns True if distributed."""
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(_destroy_process_group)  # a group left alive at interpreter exit can abort the process
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_distributed(code: int) -> None:
    """End a torchrun worker: destroy the process group, flush, and leave with `os._exit(code)`.

    A gloo worker that returns normally sometimes dies in interpreter finalization ("terminate called without
    an active exception", exit -6, ~1 run in 4 on the 2-core CI box even after destroying the group), which
    torchrun reports as a failure of a run that finished. Skipping finalization avoids it; everything worth
    keeping (checkpoints, metrics) is written and closed before. No-op when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if code == 0:
        dist.barrier()
    _destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def print0(*args: Any, **kwargs: Any) -> None:
    """`print` on rank 0 only."""
    if is_rank0():
        print(*args, **kwargs)
        sys.stdout.flush()


def adamw(params, **kwargs: Any) -> torch.optim.AdamW:
    """torch AdamW, with the fused (single-kernel) implementation where every parameter allows it: measured 3.8x
    faster than the default for-each implementation on a 2.7M-parameter model on CPU (same update rule)."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MetricLogger:
    """Append-only JSONL sink for namespaced metrics (`loss/train`, `perf/tok_per_s`, ...), rank 0 only."""

    def __init__(self, path: str | Path | None, echo: bool = False):
        self.path = Path(path) if path else None
        self.echo = echo
        self.history: list[dict[str, Any]] = []
        if self.path is not None and is_rank0():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": time.time(), **{k: _to_py(v) for k, v in metrics.items()}}
        self.history.append(row)
        if not is_rank0():
            return
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.echo:
            shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "time")
            print(shown)


def _to_py(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v

"""Checkpoints: atomic, complete, exactly resumable, and loud (in one line) when damaged.

A checkpoint is a directory:
    config.json         {"model": ModelConfig dict, "step": int, "extra": {...}}
    model.safetensors   weights (tied embeddings stored once)
    state.pt            optimizer + scheduler state and RNG states (Python, NumPy, torch; CUDA if present)

Every file is written to a temporary name in the same directory, flushed and fsynced, then renamed
over the final name, and the directory itself is fsynced; `save_checkpoint(run_dir / "step_000100")`
builds a full temporary directory first and renames it into place, so a crash never leaves a
half-written checkpoint under a final name. `latest_checkpoint(run_dir)` returns the newest complete
`step_*` directory. A truncated or corrupted file raises `CheckpointError` (a ShermanError) whose
message names the file.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sherman.core.common import ShermanError
from sherman.core.model import ModelConfig, Transformer

CONFIG, WEIGHTS, STATE = "config.json", "model.safetensors", "state.pt"


class CheckpointError(ShermanError):
    """A checkpoint file is missing, truncated or corrupted."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write_fn) -> None:
    """Call write_fn(tmp_path), fsync the file, rename it over `path`, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the tied head duplicate, contiguous, detached."""
    sd = unwrap(model).state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    scheduler: Any = None,
) -> Path:
    """Write a complete checkpoint directory atomically (build in a temp dir, then rename into place)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    base = unwrap(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt_dir.name}.", dir=ckpt_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        cfg = {"model": base.cfg.to_dict(), "step": int(step), "extra": extra or {}}
        atomic_write_text(tmp / CONFIG, json.dumps(cfg, indent=2))
        atomic_write(tmp / WEIGHTS, lambda p: save_file(model_state(base), p))
        state = {"step": int(step), "rng": rng_state()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        atomic_write(tmp / STATE, lambda p: torch.save(state, p))
        if ckpt_dir.exists():
            old = ckpt_dir.with_name(f".{ckpt_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt_dir, old)
            os.replace(tmp, ckpt_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, ckpt_dir)
        _fsync_dir(ckpt_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_dir


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (is {Path(ckpt_dir)} a Sherman checkpoint directory?)")
    try:
        cfg = json.loads(path.read_text())
        ModelConfig.from_dict(cfg["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: corrupted checkpoint config ({type(e).__name__}: {str(e)[:120]})") from None
    return cfg


def load_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(ckpt_dir) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupted weights ({str(e).splitlines()[0][:120]})") from None


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Build a Transformer from a checkpoint directory (config + weights)."""
    cfg = read_config(ckpt_dir)
    model = Transformer(ModelConfig.from_dict(cfg["model"]))
    sd = load_weights(ckpt_dir)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(ckpt_dir) / WEIGHTS}: weights do not match the config ({str(e).splitlines()[0][:160]})") from None
    model = model.to(device)
    return model.to(dtype) if dtype is not None else model


def load_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Load weights (+ optimizer, scheduler, RNG) into existing objects. Returns (step, extra)."""
    cfg = read_config(ckpt_dir)
    sd = load_weights(ckpt_dir)
    try:
        unwrap(model).load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(ckpt_dir) / WEIGHTS}: weights do not match the model ({str(e).splitlines()[0][:160]})") from None
    path = Path(ckpt_dir) / STATE
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: truncated or corrupted training state ({str(e).splitlines()[0][:120]})") from None
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        if restore_rng and "rng" in state:
            set_rng_state(state["rng"])
    elif optimizer is not None:
        raise CheckpointError(f"{path}: missing training state (optimizer/RNG); cannot resume exactly")
    return int(cfg.get("step", 0)), cfg.get("extra", {})


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete `step_*` checkpoint under run_dir (temp and half-written directories are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    cands = [p for p in run_dir.glob("step_*") if p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()]
    return max(cands, key=lambda p: int(p.name.split("_")[1]), default=None)


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:07d}"


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` `step_*` checkpoint directories under run_dir (keep <= 0: delete none)."""
    if keep <= 0:
        return
    steps = sorted((p for p in Path(run_dir).glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for p in steps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)

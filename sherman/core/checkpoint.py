"""Checkpoints: atomic, complete, exactly resumable, and loud (in one line) when damaged.

A checkpoint is a directory:
    config.json         {"model": ModelConfig dict, "step": int, "extra": {...}}
    model.safetensors   weights (tied embeddings stored once)
    state.json          training state manifest: step, optimizer + scheduler state dicts and RNG states (Python,
                        NumPy, torch; CUDA if present) as JSON, every tensor replaced by a reference into
    state.safetensors   the tensors of the training state (optimizer moments, step counters, RNG byte states)

Nothing is loaded through pickle: loading a checkpoint reads JSON and raw tensor bytes only, so a checkpoint
from anywhere can at worst hold wrong numbers, never run code. The manifest encoding (`encode_tree` /
`decode_tree`) covers exactly what the state dicts hold: None, bool, int, float (inf/nan tagged), str, list,
tuple (tagged), dict (non-string keys tagged as pairs), torch tensors, NumPy arrays and scalars; anything else
is refused at save time. Checkpoints written before this format carry a pickled `state.pt`; it is read only
when the caller passes `trust_pickle=True` (`--trust-pickle` on `sherman train` / `sherman rl`), because
unpickling a file can execute arbitrary code.

Every file is written to a temporary name in the same directory, flushed and fsynced, then renamed
over the final name, and the directory itself is fsynced; `save_checkpoint(run_dir / "step_000100")`
builds a full temporary directory first and renames it into place, so a crash never leaves a
half-written checkpoint under a final name. `latest_checkpoint(run_dir)` returns the newest complete
`step_*` directory. A truncated or corrupted file raises `CheckpointError` (a ShermanError) whose
message names the file. Pruning renames a checkpoint to a hidden `.step_*` name before deleting it, and
`remove_stale(run_dir)` (called on resume) deletes such leftovers of killed saves or prunes.
"""

from __future__ import annotations

import json
import math
import os
import pickle  # only for the error type of the --trust-pickle legacy path
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sherman.core.common import ShermanError
from sherman.core.model import ModelConfig, Transformer

CONFIG, WEIGHTS = "config.json", "model.safetensors"
STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"
STATE = STATE_JSON
LEGACY_STATE = "state.pt"
STATE_FORMAT = "sherman-training-state"


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


# ---------------------------------------------------------------------------------------------------
# pickle-free state: JSON manifest + safetensors


def encode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj`; tensors move into `tensors` (key "t<n>") and are referenced by key."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        arr = obj.astype(np.int64) if obj.dtype.kind == "u" else obj  # torch/safetensors lack some unsigned types
        tensors[key] = torch.from_numpy(np.ascontiguousarray(arr).copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return {"__npscalar__": encode_tree(obj.item(), tensors), "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[encode_tree(k, tensors), encode_tree(v, tensors)] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint's training state (pickle-free format)")


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of encode_tree. Builds only plain containers, numbers, strings, tensors and arrays."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) in (1, 2):
        tag = next(iter(obj))
        if tag == "__float__" and len(obj) == 1:
            return float(obj[tag])  # 'inf', '-inf' or 'nan'
        if tag == "__tensor__" and len(obj) == 1:
            return tensors[obj[tag]]
        if tag == "__ndarray__":
            return tensors[obj[tag]].numpy().astype(np.dtype(obj["dtype"]))
        if tag == "__npscalar__":
            return np.dtype(obj["dtype"]).type(decode_tree(obj[tag], tensors))
        if tag == "__tuple__" and len(obj) == 1:
            return tuple(decode_tree(v, tensors) for v in obj[tag])
        if tag == "__dict__" and len(obj) == 1:
            return {_hashable(decode_tree(k, tensors)): decode_tree(v, tensors) for k, v in obj[tag]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


def _hashable(k: Any) -> Any:
    if isinstance(k, (list, dict, torch.Tensor, np.ndarray)):
        raise ValueError(f"unhashable dict key of type {type(k).__name__}")
    return k


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies for tensors that share storage with an earlier one (safetensors stores each tensor on its own)."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        out[k] = t.clone() if ptr in seen else t
        if ptr != -1:
            seen.add(ptr)
    return out


TREE_KEY = "sherman_tree"


def save_tree_file(path: str | Path, tree: Any) -> Path:
    """Atomically write `tree` (nested dicts / lists of numbers, strings, tensors, arrays) as ONE safetensors file:
    the tensors as its tensors, the rest as JSON in its header metadata. The pickle-free replacement of torch.save."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {TREE_KEY: json.dumps(encode_tree(tree, tensors))}
    atomic_write(path, lambda p: save_file(_unshare(tensors), p, metadata=meta))
    return Path(path)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(2)


def load_tree_file(path: str | Path) -> Any:
    """Read a save_tree_file file. Raises CheckpointError (one line) for a missing, corrupted or pickled file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        hint = " (an old pickled file? Sherman no longer unpickles these: re-create it)" if _head(path) in (b"PK", b"\x80\x02") else ""
        raise CheckpointError(f"{path}: not a readable safetensors file{hint} ({str(e).splitlines()[0][:100]})") from None
    if TREE_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a Sherman manifest ({TREE_KEY!r} metadata)")
    try:
        return decode_tree(json.loads(meta[TREE_KEY]), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupted manifest ({type(e).__name__}: {str(e)[:120]})") from None


def save_state(ckpt_dir: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (state dicts, RNG states, numbers) as state.safetensors + state.json, atomically per file."""
    ckpt_dir = Path(ckpt_dir)
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree(state, tensors)
    atomic_write(ckpt_dir / STATE_TENSORS, lambda p: save_file(_unshare(tensors), p))
    manifest = {"format": STATE_FORMAT, "version": 1, "tensors": STATE_TENSORS, "state": tree}
    atomic_write_text(ckpt_dir / STATE_JSON, json.dumps(manifest, indent=1))


def load_state(ckpt_dir: str | Path, trust_pickle: bool = False) -> dict[str, Any] | None:
    """The training state of a checkpoint directory, or None when it has none.

    Reads the pickle-free state.json + state.safetensors. An old pickled state.pt is read only with
    trust_pickle=True; otherwise it is a one-line CheckpointError saying why and how.
    """
    ckpt_dir = Path(ckpt_dir)
    manifest_path, tensors_path, legacy = ckpt_dir / STATE_JSON, ckpt_dir / STATE_TENSORS, ckpt_dir / LEGACY_STATE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != STATE_FORMAT:
                raise ValueError(f"not a {STATE_FORMAT} manifest")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{manifest_path}: corrupted training state manifest ({type(e).__name__}: {str(e)[:120]})") from None
        if not tensors_path.is_file():
            raise CheckpointError(f"{tensors_path}: missing training state tensors")
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{tensors_path}: truncated or corrupted training state ({str(e).splitlines()[0][:120]})") from None
        try:
            state = decode_tree(manifest["state"], tensors)
            if not isinstance(state, dict):
                raise ValueError("the state is not an object")
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{manifest_path}: corrupted training state manifest ({type(e).__name__}: {str(e)[:120]})") from None
        return state
    if legacy.is_file():
        if not trust_pickle:
            raise CheckpointError(
                f"{legacy}: old pickled training state; unpickling can run arbitrary code, so it is not loaded. "
                "If you wrote this checkpoint yourself, rerun with --trust-pickle (the next save is pickle-free)"
            )
        try:  # explicitly trusted by the user (--trust-pickle): the only pickle load in Sherman
            return torch.load(legacy, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError) as e:
            raise CheckpointError(f"{legacy}: truncated or corrupted training state ({str(e).splitlines()[0][:120]})") from None
    return None


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
        save_state(tmp, state)
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
    trust_pickle: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Load weights (+ optimizer, scheduler, RNG) into existing objects. Returns (step, extra).

    trust_pickle: also read an old pickled state.pt (can execute code from the file; only for your own runs)."""
    cfg = read_config(ckpt_dir)
    sd = load_weights(ckpt_dir)
    try:
        unwrap(model).load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(ckpt_dir) / WEIGHTS}: weights do not match the model ({str(e).splitlines()[0][:160]})") from None
    state = load_state(ckpt_dir, trust_pickle=trust_pickle)
    if state is not None:
        try:
            if optimizer is not None and "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and "scheduler" in state:
                scheduler.load_state_dict(state["scheduler"])
            if restore_rng and "rng" in state:
                set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{Path(ckpt_dir) / STATE_JSON}: training state does not fit ({type(e).__name__}: {str(e)[:120]})") from None
    elif optimizer is not None:
        raise CheckpointError(f"{Path(ckpt_dir) / STATE_JSON}: missing training state (optimizer/RNG); cannot resume exactly")
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


def _delete_dir(p: Path) -> None:
    """Rename `p` to a hidden name first, then delete it: a kill mid-delete never leaves a half checkpoint under a final name."""
    gone = p.with_name(f".{p.name}.deleting")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(p, gone)
    _fsync_dir(p.parent)
    shutil.rmtree(gone, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` `step_*` checkpoint directories under run_dir (keep <= 0: delete none)."""
    if keep <= 0:
        return
    steps = sorted((p for p in Path(run_dir).glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for p in steps[:-keep]:
        _delete_dir(p)


def remove_stale(run_dir: str | Path) -> list[Path]:
    """Delete leftovers of killed saves and prunes under run_dir: hidden `.step_*` / `.init.*` directories
    (temporary checkpoints, `.old` copies, half-deleted prunes). An `.old` copy whose final name is missing (a kill
    between the two renames of an overwrite) is complete: it is renamed back instead. Call only when no save is
    running. Returns the deleted paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    for old in [*run_dir.glob(".step_*.old"), *run_dir.glob(".init.old")]:  # killed between the two renames of an overwrite
        final = run_dir / old.name[1 : -len(".old")]
        if old.is_dir() and not final.exists() and (old / CONFIG).is_file() and (old / WEIGHTS).is_file():
            os.replace(old, final)  # put the complete previous version back under its name
    stale = [p for pat in (".step_*", ".init.*") for p in run_dir.glob(pat) if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale

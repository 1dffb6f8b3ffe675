"""Resumable stages of long experiment runs (the `full` budgets).

A `full` budget can take hours of CPU, longer than a session, so it is built from stages: units of work (a task x
seed, an arm x seed, a warm-start model) that each finish well within an hour. A finished stage is stored under
`stage_root(name)` with a key: the sha256 of everything that computes it (format, budget fields, seeds, the source of
the functions and modules that run it, the torch version, and for stages that start from a trained model a digest of
its weights). A later run with the same key reuses the stored result; any other key recomputes it, never reuses it.
Writes are atomic (temp file + rename), so a run killed mid-write leaves the previous record or none.

Two kinds of record:
    <name>.json          a JSON result: {"key", "result", "cpu_s", "wall_s", "machine", "created", ...}
    <name>.safetensors   a state dict + a JSON tree of extras (pickle-free; `core.checkpoint.save_tree_file`)

The repository keeps finished full-budget stages in `stages/` (`SHERMAN_ARTIFACTS=stages sherman reproduce NAME
--budget full` resumes them on a fresh machine).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from sherman.core.checkpoint import atomic_write_text, load_tree_file, save_tree_file
from sherman.core.common import print0


def stage_root(name: str) -> Path:
    """Where an experiment's finished stages are kept: $SHERMAN_ARTIFACTS/<name>, else $SHERMAN_CACHE/<name>
    (default ~/.cache/sherman/<name>)."""
    env = os.environ.get("SHERMAN_ARTIFACTS")
    if env:
        return Path(env) / name
    return Path(os.environ.get("SHERMAN_CACHE", Path.home() / ".cache" / "sherman")) / name


def source_digest(functions: Iterable[Callable] = (), modules: Iterable[Any] = ()) -> str:
    """sha256 over the source of `functions` (in the order given) and the files of `modules` (sorted by name)."""
    h = hashlib.sha256()
    for f in functions:
        h.update(inspect.getsource(f).encode())
    for m in sorted(set(modules), key=lambda m: m.__name__):
        h.update(m.__name__.encode() + Path(m.__file__).read_bytes())
    return h.hexdigest()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def stage_key(body: dict) -> str:
    """The key a stored stage must carry to be reused: sha256 of the sorted JSON of `body`."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def load_record(path: Path, key: str) -> tuple[dict | None, str]:
    """(JSON stage record, 'reused') when `path` holds a readable record with this key, else (None, why not)."""
    if not path.is_file():
        return None, "new"
    try:
        rec = json.loads(path.read_text())
        assert isinstance(rec, dict) and isinstance(rec.get("result"), dict), "not a stage record"
    except (OSError, ValueError, AssertionError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if rec.get("key") != key:
        return None, "stale (code, budget or torch changed)"
    return rec, "reused"


def json_stage(path: Path | None, key: str, compute: Callable[[], dict], label: str, fields: dict | None = None) -> dict:
    """`compute()` (a JSON-able dict), or its stored record at `path` when the key matches; a computed record is
    written atomically with its CPU and wall seconds, the machine and `fields`. `path` None: compute, store nothing.
    Returns the record with 'status' ('reused' or 'computed'); its result is in the stored JSON form either way, so a
    report reads the same types from a computed stage as from a reused one."""
    from sherman.core.linear import machine_key

    if path is not None:
        rec, why = load_record(path, key)
        if rec is not None:
            print0(f"  [{label}] reusing {path} (computed {rec.get('created')}, {rec.get('cpu_s', 0):.0f}s cpu)")
            return {**rec, "status": "reused"}
        if why != "new":
            print0(f"  [{label}] {path} is {why}; recomputing")
    t0, c0 = time.time(), time.process_time()
    result = json.loads(json.dumps(compute()))  # the stored form (lists, string keys) whether computed now or reused later
    rec = {"key": key, **(fields or {}), "result": result, "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0,
           "machine": machine_key(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rec) + "\n")
    return {**rec, "status": "computed"}


def tensor_stage(path: Path | None, key: str, compute: Callable[[], tuple[dict[str, torch.Tensor], dict]], label: str
                 ) -> tuple[dict[str, torch.Tensor], dict, str]:
    """`compute()` -> (state dict, JSON extras), or the stored pair at `path` (a safetensors tree file) when its key
    matches. Returns (state, extras, status); the extras carry 'cpu_s' and 'created' of the computation."""
    if path is not None and path.is_file():
        why = ""
        try:
            tree = load_tree_file(path)
            if tree.get("key") == key and isinstance(tree.get("state"), dict):
                extra = tree.get("extra", {})
                print0(f"  [{label}] reusing {path} (computed {extra.get('created')}, {extra.get('cpu_s', 0):.0f}s cpu)")
                return tree["state"], extra, "reused"
            why = "stale (code, budget or torch changed)"
        except Exception as e:  # unreadable: recompute, never use
            why = f"unreadable ({type(e).__name__})"
        print0(f"  [{label}] {path} is {why}; recomputing")
    c0 = time.process_time()
    state, extra = compute()
    extra = {**extra, "cpu_s": time.process_time() - c0, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tree_file(path, {"key": key, "state": state, "extra": extra})
    return state, extra, "computed"


def checkpoint_dir(parent: Path, name: str, key: str) -> Path:
    """`parent/<name>_<key[:16]>`: where a stage keyed by `key` that trains longer than a session keeps its training
    checkpoints (`core.resumable`); a directory of another key (a stale stage) is never resumed."""
    return Path(parent) / f"{name}_{key[:16]}"


def run_checkpointed(run_dir: Path, every: int, compute: Callable[[Callable[[int, dict], None]], Any]) -> tuple[Any, float]:
    """`compute(on_step)` for a stage that trains resumably in `run_dir` (a `checkpoint_dir`): removes the directories
    of the same stage under other keys first, and counts CPU over the calls a cut-off run takes (`CpuTally`, saved
    by `on_step(step, row)` at every `every`-th step). Returns (compute's result, CPU seconds of the earlier calls).
    The caller removes `run_dir` once its stage is stored."""
    import shutil

    from sherman.core.resumable import CpuTally

    for old in run_dir.parent.glob(f"{run_dir.name[:-17]}_*"):
        if old != run_dir and old.is_dir():
            shutil.rmtree(old)
    tally = CpuTally(run_dir)
    return compute(lambda step, row: tally.save() if step % every == 0 else None), tally.earlier

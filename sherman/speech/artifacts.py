"""Train once, reuse: cached trained models (tokenizers, LMs) in directories keyed by a hash of config + data.

VibeVoice (arXiv 2508.19205, Sec. 2.1) trains its tokenizers first and freezes them before the LM is trained;
at CPU scale the acoustic tokenizer alone is hours of training, so a stage's result is stored once per machine
and reused by later runs (`sherman reproduce vibevoice`, `sherman tts train-tokenizer`).

A directory holds:
    manifest.json                 {"format", "kind", "hash", "config", "data", "weights", "train_s", "created"}
    weights-<hash16>.safetensors  the state dict + a JSON tree of extras (history, snapshots), no pickle

`hash` = sha256 of the stable JSON of {kind, format, config, data digest}; stage configs also carry a `code_digest`
of the source files that define and train the model, so editing them makes the artifact stale. `cached(...)` loads
the directory when its manifest's hash equals the expected one, the weights read back and (given `check`) they
load into a freshly built model; otherwise (absent, stale, corrupt or not fitting) it
trains, says why, and writes the new artifact atomically: the weights file first (temp file + rename), then the
manifest (temp file + rename: the commit point), then it removes the other weights files. A crash at any point
leaves either the old artifact or the new one, never a manifest that names missing or foreign weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sherman.core.checkpoint import atomic_write_text, load_tree_file, save_tree_file
from sherman.core.common import print0

FORMAT = 1
"""Artifact format version; part of the hash, so a format change retrains."""
EXCLUDED_FIELDS = ("history", "callback")
"""Config fields that do not change what is trained (outputs, hooks) and are left out of the hash."""


def artifact_root() -> Path:
    """Default root of cached artifacts: $SHERMAN_ARTIFACTS, else <speech cache>/artifacts."""
    from sherman.speech.data import default_cache_dir

    env = os.environ.get("SHERMAN_ARTIFACTS")
    return Path(env) if env else default_cache_dir() / "artifacts"


def config_dict(cfg: Any) -> Any:
    """A JSON-able view of a (nested) config: dataclasses as dicts without `EXCLUDED_FIELDS`, tuples as lists."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {k: config_dict(v) for k, v in asdict(cfg).items() if k not in EXCLUDED_FIELDS}
    if isinstance(cfg, dict):
        return {str(k): config_dict(v) for k, v in cfg.items() if k not in EXCLUDED_FIELDS}
    if isinstance(cfg, (list, tuple)):
        return [config_dict(v) for v in cfg]
    if cfg is None or isinstance(cfg, (bool, int, float, str)):
        return cfg
    raise TypeError(f"config value of type {type(cfg).__name__} cannot be hashed: {cfg!r}")


def stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def data_digest(audios: Sequence[np.ndarray], labels: Any = None) -> str:
    """sha256 over every waveform (float32 bytes and length, in order) and the JSON of `labels`."""
    h = hashlib.sha256()
    for a in audios:
        b = np.ascontiguousarray(a, dtype=np.float32)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b.tobytes())
    h.update(stable_json(labels).encode())
    return h.hexdigest()


def code_digest(*modules: Any) -> str:
    """sha256 over the source files of `modules` (module objects): put it in a stage's config, so an edit to the code
    that trains or defines the model makes its cached artifacts stale instead of silently reused."""
    h = hashlib.sha256()
    for mod in modules:
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def artifact_hash(kind: str, config: Any, data: str) -> str:
    return hashlib.sha256(stable_json({"kind": kind, "format": FORMAT, "config": config_dict(config), "data": data}).encode()).hexdigest()


@dataclass
class Artifact:
    state: dict[str, torch.Tensor]
    """The trained model's state dict."""
    extra: dict
    """JSON tree stored beside it (training history, snapshots of state dicts, ...)."""
    manifest: dict
    """The directory's manifest."""
    status: str
    """'reused', 'trained (new)', 'trained (stale: ...)' or 'trained (unreadable: ...)'."""

    @property
    def reused(self) -> bool:
        return self.status == "reused"


def read_manifest(directory: str | Path) -> dict | None:
    p = Path(directory) / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def load_artifact(directory: str | Path, expected_hash: str) -> tuple[Artifact | None, str]:
    """(artifact, 'reused') when the directory's manifest hash equals `expected_hash` and its weights read back,
    else (None, why not)."""
    d = Path(directory)
    m = read_manifest(d)
    if m is None:
        return None, "new"
    if m.get("hash") != expected_hash:
        return None, f"stale: manifest hash {str(m.get('hash'))[:12]} != expected {expected_hash[:12]}"
    try:
        tree = load_tree_file(d / str(m["weights"]))
        state, extra = tree["state"], tree.get("extra", {})
        assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values()), "state is not a dict of tensors"
    except Exception as e:  # missing / corrupt weights: retrain, never use
        return None, f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    return Artifact(state, extra, m, "reused"), "reused"


def save_artifact(directory: str | Path, kind: str, key: str, config: Any, data: str, state: dict[str, torch.Tensor],
                  extra: dict | None = None, train_s: float = 0.0) -> dict:
    """Atomically write weights then manifest (the commit point), then drop stale weights files. Returns the manifest."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights = f"weights-{key[:16]}.safetensors"
    save_tree_file(d / weights, {"state": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "extra": extra or {}})
    manifest = {"format": FORMAT, "kind": kind, "hash": key, "config": config_dict(config), "data": data, "weights": weights,
                "train_s": round(train_s, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(d / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for old in d.glob("weights-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return manifest


def cached(directory: str | Path, kind: str, config: Any, data: str,
           train: Callable[[], tuple[dict[str, torch.Tensor], dict]], log: Callable[[str], None] = print0,
           check: Callable[[dict[str, torch.Tensor]], Any] | None = None) -> Artifact:
    """Reuse the artifact in `directory` when its hash matches (kind, config, data) and `check(state)` (e.g. loading it
    into a freshly built model) does not raise; else run `train()` -> (state dict, extra tree), save it atomically and
    return it. Never returns a stale artifact."""
    key = artifact_hash(kind, config, data)
    art, why = load_artifact(directory, key)
    if art is not None and check is not None:
        try:
            check(art.state)
        except Exception as e:
            art, why = None, f"unreadable: weights do not fit the model ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
    if art is not None:
        log(f"{kind}: reusing {directory} (hash {key[:12]}, trained {art.manifest.get('created')}, {art.manifest.get('train_s')} s)")
        return art
    if why != "new":
        log(f"{kind}: {directory} is {why}; retraining")
    t = time.time()
    state, extra = train()
    train_s = time.time() - t
    manifest = save_artifact(directory, kind, key, config, data, state, extra, train_s)
    return Artifact({k: v.detach().cpu() for k, v in state.items()}, extra, manifest, f"trained ({why})")

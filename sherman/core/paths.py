"""One answer to "what does this checkpoint path mean", shared by every command that reads a model.

A path given to `generate`, `convert --to-hf`, `think --ckpt`, `serve`, `rl --init` or `seer train` may be
- a run directory (what `sherman train` / `sherman rl` write: `tokenizer.json` and `step_*/` checkpoints):
  its newest complete step is used, with the run's tokenizer;
- a step directory (`RUN/step_0000200`, or any Sherman checkpoint: `config.json` with a "model" entry and
  `model.safetensors`): its tokenizer is `tokenizer.json` beside it, else the one of its run directory;
- a Hugging Face folder (`config.json` with "model_type" / "architectures", safetensors, `tokenizer.json`).
Anything else is a `ShermanError` with one line saying what was expected. Resolving reads only small JSON
files; loading (`load_model_and_tokenizer`) imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sherman.core.errors import ShermanError

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
EXPECTED = "a run directory (step_*/ inside), a step_* checkpoint or a Hugging Face folder"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path
    """The directory holding the weights and config.json."""
    format: str
    """'sherman' or 'hf'."""
    tokenizer: Path | None
    """tokenizer.json of the checkpoint, else of its run directory; None when there is none."""
    given: Path
    """The path as the user gave it."""

    @property
    def name(self) -> str:
        """A readable model name: the run directory's name for a step checkpoint, else the folder's."""
        p = self.path.resolve()
        return p.parent.name if p.name.startswith("step_") else p.name


def _newest_step(run_dir: Path) -> Path | None:
    cands = []
    for p in run_dir.glob("step_*"):
        tail = p.name[len("step_") :]
        if p.is_dir() and tail.isdigit() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file():
            cands.append((int(tail), p))
    return max(cands)[1] if cands else None


def _format_of(d: Path) -> str | None:
    try:
        cfg = json.loads((d / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShermanError(f"{d / CONFIG}: unreadable config ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(cfg, dict):
        return None
    if isinstance(cfg.get("model"), dict):
        return "sherman"
    if "model_type" in cfg or "architectures" in cfg:
        return "hf"
    return None


def resolve_checkpoint(path: str | Path, *, need_tokenizer: bool = False, hf: bool | None = None) -> ResolvedCheckpoint:
    """Resolve a user-given checkpoint path (see the module docstring). `hf=True/False` insists on a format."""
    given = Path(path)
    if not given.exists():
        raise ShermanError(f"{given}: no such checkpoint directory (expected {EXPECTED})")
    if given.is_file():
        raise ShermanError(f"{given}: is a file (expected {EXPECTED})")
    d, fmt = given, None
    if (given / CONFIG).is_file():
        fmt = _format_of(given)
        if fmt is None:
            raise ShermanError(f"{given / CONFIG}: neither a Sherman checkpoint config nor a Hugging Face config")
    else:
        step = _newest_step(given)
        if step is None:
            raise ShermanError(f"{given}: no config.json and no complete step_* checkpoint inside (expected {EXPECTED})")
        d, fmt = step, "sherman"
    if hf is True and fmt != "hf":
        raise ShermanError(f"{given}: --hf given, but this is a Sherman checkpoint (drop --hf)")
    if hf is False and fmt != "sherman":
        raise ShermanError(f"{given}: a Hugging Face folder; this command needs a Sherman checkpoint (convert it with `sherman convert --from-hf`)")
    tok = next((c for c in (d / TOKENIZER, d.parent / TOKENIZER) if c.is_file()), None) if fmt == "sherman" else d / TOKENIZER
    if tok is not None and not tok.is_file():
        tok = None
    if need_tokenizer and tok is None:
        where = f"{d} or its run directory {d.parent}" if fmt == "sherman" else str(d)
        raise ShermanError(f"{given}: no {TOKENIZER} in {where}")
    return ResolvedCheckpoint(path=d, format=fmt, tokenizer=tok, given=given)


def load_model_and_tokenizer(path: str | Path, device=None, hf: bool | None = None, need_tokenizer: bool = True):
    """(model in eval mode, tokenizer or None, ResolvedCheckpoint) for any path `resolve_checkpoint` accepts."""
    from sherman.core.common import get_device
    from sherman.core.tokenizer import load_tokenizer

    r = resolve_checkpoint(path, need_tokenizer=need_tokenizer, hf=hf)
    dev = get_device(device)
    if r.format == "hf":
        from sherman.core.hf import load_hf

        model = load_hf(r.path).to(dev)
    else:
        from sherman.core.checkpoint import load_model

        model = load_model(r.path, device=dev)
    tok = load_tokenizer(r.tokenizer) if r.tokenizer is not None else None
    return model.eval(), tok, r

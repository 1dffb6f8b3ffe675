"""`sherman convert`: checkpoints between Hugging Face and Sherman formats (`sherman.core.hf`).

    sherman convert --from-hf HF_DIR --out CKPT_DIR
    sherman convert --to-hf CKPT_DIR --out HF_DIR [--arch auto|llama|qwen2|qwen3|qwen3_moe|mixtral|qwen2_moe] [--chat-template plain|roles]

--to-hf exports the checkpoint's tokenizer.json when there is one; --from-hf imports the folder's tokenizer. Only the
options live here (no torch at import), so `--help` and flag errors only parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sherman.core.config import ConfigError, parse, parse_size
from sherman.core.errors import ShermanError


@dataclass
class ConvertArgs:
    """Convert checkpoints between Hugging Face and Sherman formats (give exactly one of --from-hf / --to-hf)."""

    out: str
    """Output directory (a Sherman checkpoint for --from-hf, a Hugging Face folder for --to-hf)."""
    from_hf: str | None = None
    """Hugging Face model folder (config.json + safetensors) to import."""
    to_hf: str | None = None
    """Sherman checkpoint directory to export."""
    arch: Literal["auto", "llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "qwen2_moe"] = "auto"
    """Hugging Face architecture for --to-hf; auto picks the one that represents the model exactly."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weight dtype; auto keeps the source's."""
    max_shard_size: str = "5GB"
    """--to-hf: split weights into shards of at most this size (with an index file), e.g. 500MB, 2GB."""
    chat_template: Literal["plain", "roles"] = "plain"
    """--to-hf: the exported chat template, as `sherman serve --chat-template` renders messages."""
    force: bool = False
    """Write into --out even when it already exists and is not empty (files of the same name are replaced)."""

    def __post_init__(self) -> None:
        try:
            parse_size(self.max_shard_size)
        except ShermanError as e:
            raise ConfigError("max_shard_size", str(e)) from None


def main(argv: list[str]) -> int:
    args = parse(ConvertArgs, argv, prog="sherman convert", description=__doc__)
    if (args.from_hf is None) == (args.to_hf is None):
        raise ShermanError("give exactly one of --from-hf HF_DIR or --to-hf CKPT_DIR")
    out_path = Path(args.out)
    if out_path.exists() and not out_path.is_dir():
        raise ShermanError(f"--out: {out_path} exists and is a file")
    if out_path.is_dir() and any(out_path.iterdir()) and not args.force:
        raise ShermanError(f"--out: {out_path} exists and is not empty; pass --force to overwrite it")
    from sherman.core.checkpoint import load_model, save_checkpoint
    from sherman.core.hf import _resolve_dtype, load_hf, save_hf
    from sherman.core.paths import resolve_checkpoint
    from sherman.core.tokenizer import load_tokenizer

    if args.from_hf is not None:
        hf_src = resolve_checkpoint(args.from_hf, hf=True)
        model = load_hf(hf_src.path, dtype=args.dtype)
        tok = load_tokenizer(hf_src.path) if hf_src.tokenizer is not None else None
        save_checkpoint(args.out, model, extra={"source": {"hf": str(Path(args.from_hf).resolve())}})
        if tok is not None:
            tok.save(Path(args.out) / "tokenizer.json")
        print(f"converted {args.from_hf} ({model.cfg.n_layers} layers, {sum(p.numel() for p in model.parameters()):,} params"
              f"{', tokenizer' if tok is not None else ''}) -> {args.out}")
        return 0
    resolved = resolve_checkpoint(args.to_hf, hf=False)  # a run directory means its newest step, with the run's tokenizer
    src = resolved.path
    model = load_model(src)
    tok = load_tokenizer(resolved.tokenizer) if resolved.tokenizer is not None else None
    dt = None if args.dtype == "auto" else _resolve_dtype(args.dtype, {})
    out = save_hf(model, args.out, arch=args.arch, max_shard_bytes=args.max_shard_size, dtype=dt, tokenizer=tok,
                  chat_template=args.chat_template)
    note = " with tokenizer, chat template and generation config" if tok is not None else " (no tokenizer.json in the checkpoint: weights and config only)"
    print(f"exported {src} as {json.loads((out / 'config.json').read_text())['architectures'][0]}{note} -> {out}")
    return 0

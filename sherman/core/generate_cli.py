"""`sherman generate CKPT --prompt TEXT ...`: sample completions from a Sherman checkpoint (or --hf DIR).

The checkpoint directory holds the model (see core/checkpoint.py) and its `tokenizer.json`
(written by `sherman train`); a Hugging Face directory holds config.json + safetensors + tokenizer.json.
Prompts come from --prompt (repeatable) or a file with one prompt per line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sherman.core import paths
from sherman.core.config import Append, Positional, check, parse
from sherman.core.errors import ShermanError


@dataclass
class GenerateArgs:
    ckpt: Positional[str]
    """Run directory (its newest step_*), step_* checkpoint or Hugging Face folder."""
    prompt: Append[list[str]] = field(default_factory=list)
    """Prompt text; repeat the flag for a batch."""
    prompts_file: str | None = None
    """A file with one prompt per line (added to --prompt)."""
    hf: bool = False
    """Insist that CKPT is a Hugging Face folder (detected without it)."""
    max_new_tokens: int = 64
    """Tokens to generate per prompt."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus mass."""
    stop: Append[list[str]] = field(default_factory=list)
    """Stop strings (repeatable)."""
    seed: int = 0
    """Sampling seed."""
    attn: Literal["dense", "quest", "seer", "resa"] = "dense"
    """Attention backend: dense (exact), quest (block-sparse, min/max block scores), seer (block-sparse, learned gates), resa (quest with periodic dense rectification)."""
    budget: float = 1.0
    """Sparse backends: fraction of KV blocks kept per step."""
    block_size: int = 64
    """Sparse backends: KV block size in tokens."""
    rectify_every: int = 32
    """ReSA only: dense rectification period in tokens."""
    gates: str | None = None
    """Seer only: trained gates (`sherman seer train` output: a checkpoint directory or seer_gates.pt); default: beside CKPT."""
    threshold: float | None = None
    """Seer only: select blocks whose gate probability exceeds this instead of a token budget."""
    impl: Literal["torch", "cpp"] = "torch"
    """Sparse kernels: 'torch' (pure PyTorch) or 'cpp' (fused C++ extension, compiled on first use)."""
    json_out: bool = False
    """Print one JSON object per prompt instead of plain text."""

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(0 < self.budget <= 1, "budget", f"must be in (0, 1], got {self.budget}")
        check(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")
        check(self.rectify_every >= 1, "rectify_every", f"must be >= 1, got {self.rectify_every}")


def resolve_checkpoint(path: str | Path) -> Path:
    """The Sherman checkpoint directory a user path means (see `sherman.core.paths`)."""
    return paths.resolve_checkpoint(path, hf=False).path


def load_for_inference(path: str | Path, hf: bool = False):
    """(model, tokenizer) from a Sherman run/step directory or a Hugging Face folder (see `sherman.core.paths`)."""
    model, tok, _ = paths.load_model_and_tokenizer(path, hf=True if hf else None)
    return model, tok


def main(argv: list[str]) -> int:
    args = parse(GenerateArgs, argv, prog="sherman generate", description=__doc__)
    import torch

    from sherman.core.attention import AttnContext
    from sherman.core.generate import SamplingParams, generate

    prompts = list(args.prompt)
    if args.prompts_file:
        pf = Path(args.prompts_file)
        if not pf.is_file():
            raise ShermanError(f"{pf}: no such prompts file")
        prompts += [line.rstrip("\n") for line in pf.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ShermanError("give at least one --prompt or --prompts-file")
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, stop_strings=tuple(args.stop))
    except ValueError as e:
        raise ShermanError(str(e)) from None
    model, tok = load_for_inference(args.ckpt, args.hf)
    try:
        ids = [tok.encode(p, bos=True) for p in prompts]
    except ValueError as e:
        raise ShermanError(f"prompt cannot be encoded: {e}") from None
    options: dict = {"budget": args.budget, "block_size": args.block_size, "impl": args.impl}
    if args.attn == "resa":
        options["rectify_every"] = args.rectify_every
    if args.attn == "seer":
        options["gates"] = args.gates or str(resolve_checkpoint(args.ckpt) if not args.hf else args.ckpt)
        options["threshold"] = args.threshold
    attn = AttnContext(backend=args.attn, options=options)
    stops = [tok.eos_id] if getattr(tok, "eos_id", None) is not None else []
    params.stop_token_ids = tuple(stops)
    t0 = time.time()
    try:
        out = generate(model, ids, params, tokenizer=tok, generator=torch.Generator().manual_seed(args.seed), attn=attn)
    except (ValueError, FileNotFoundError) as e:  # e.g. gates trained with another block size, missing gates file
        raise ShermanError(str(e)) from None
    dt = time.time() - t0
    for p, text, toks, why in zip(prompts, out.texts, out.tokens, out.finish_reasons):
        if args.json_out:
            print(json.dumps({"prompt": p, "completion": text, "n_tokens": len(toks), "finish_reason": why}))
        else:
            print(f"{p}{text}")
    n = sum(len(t) for t in out.tokens)
    if not args.json_out:
        print(f"[{n} tokens in {dt:.2f}s, {n / max(dt, 1e-9):.1f} tok/s, attention={args.attn}]")
    return 0

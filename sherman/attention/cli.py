"""`sherman seer train CKPT`: self-distil SeerAttention-R gates on a frozen checkpoint and save them beside it.

CKPT is a Sherman checkpoint (or run directory) or, with --hf, a Hugging Face directory (config.json +
safetensors). Training sequences are random windows of --data (a text file, tokenized with the checkpoint's
tokenizer.json) or, without --data, sequences sampled from the model itself (temperature 1, from BOS).
The gates are written to CKPT/seer_gates.pt (or --out) and used by `sherman generate CKPT --attn seer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sherman.core.config import Positional, check, parse
from sherman.core.errors import ShermanError

if TYPE_CHECKING:  # torch is imported once the options are valid (`--help` only parses)
    import torch

USAGE = "usage: sherman seer train CKPT [--hf] [--data FILE] [--steps N] [--seq-len N] [--block-size N] ...  (sherman seer train --help)"


@dataclass
class SeerTrainArgs:
    ckpt: Positional[str]
    """Sherman checkpoint / run directory, or a Hugging Face directory with --hf."""
    hf: bool = False
    """Treat CKPT as a Hugging Face checkpoint directory."""
    data: str | None = None
    """A text file to draw training windows from; default: sequences sampled from the model."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 4
    """Sequences per step."""
    seq_len: int = 1024
    """Tokens per sequence."""
    block_size: int = 64
    """KV block size of the gate."""
    gate_dim: int = 0
    """Gate width (0 = head_dim)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seed for the gate init and the data windows."""
    out: str | None = None
    """Where to write the gates (default CKPT/seer_gates.pt)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "block_size"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.seq_len >= 2 * self.block_size, "seq_len", f"{self.seq_len} must be at least 2 blocks of --block-size ({self.block_size})")
        check(self.gate_dim >= 0 and self.gate_dim % 2 == 0, "gate_dim", f"must be even and >= 0 (RoPE), got {self.gate_dim}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


def _load(args: SeerTrainArgs):
    """(model, tokenizer or None, directory to save beside), for any path `sherman.core.paths` accepts."""
    from sherman.core.paths import load_model_and_tokenizer

    model, tok, where = load_model_and_tokenizer(args.ckpt, hf=True if args.hf else None, need_tokenizer=args.data is not None)
    return model, tok, where.path


def _text_batches(ids: torch.Tensor, batch: int, seq_len: int, g: torch.Generator):
    import torch

    while True:
        starts = torch.randint(0, ids.numel() - seq_len + 1, (batch,), generator=g)
        yield torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def _sampled_batches(model, batch: int, seq_len: int, bos: int, g: torch.Generator):
    import torch

    from sherman.core.generate import SamplingParams, generate

    while True:
        out = generate(model, [[bos]] * batch, SamplingParams(max_new_tokens=seq_len - 1, temperature=1.0), generator=g)
        yield torch.tensor([[bos] + t + [bos] * (seq_len - 1 - len(t)) for t in out.tokens])


def train_main(argv: list[str]) -> int:
    args = parse(SeerTrainArgs, argv, prog="sherman seer train", description=__doc__)
    import torch

    from sherman.attention.seer import GATES_FILE, SeerConfig, SeerGates, SeerTrainConfig, train_gates
    from sherman.core.common import seed_everything

    seed_everything(args.seed)
    model, tok, where = _load(args)
    g = torch.Generator().manual_seed(args.seed)
    if args.data is not None:
        dp = Path(args.data)
        if not dp.is_file():
            raise ShermanError(f"{dp}: no such data file")
        ids = torch.tensor(tok.encode(dp.read_text()), dtype=torch.long)
        if ids.numel() < args.seq_len:
            raise ShermanError(f"{dp}: {ids.numel()} tokens, fewer than --seq-len {args.seq_len}")
        batches = _text_batches(ids, args.batch_size, args.seq_len, g)
    else:
        bos = 1 if model.cfg.vocab_size > 1 else 0
        batches = _sampled_batches(model, args.batch_size, args.seq_len, bos, g)
    gates = SeerGates(SeerConfig.for_model(model, block_size=args.block_size, gate_dim=args.gate_dim))
    t0 = time.time()
    hist = train_gates(model, gates, batches, SeerTrainConfig(steps=args.steps, lr=args.lr, log_every=max(1, args.steps // 10)))
    out = Path(args.out) if args.out else where / GATES_FILE
    gates.save(out)
    print(f"seer gates: KL {hist[0]:.4f} -> {hist[-1]:.4f} in {args.steps} steps ({time.time() - t0:.1f}s); saved {out}")
    return 0


def main(argv: list[str]) -> int:
    """`sherman seer <subcommand>`; the only subcommand is `train`."""
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv:
        raise ShermanError(f"missing subcommand; {USAGE}")
    if argv[0] != "train":
        raise ShermanError(f"unknown seer subcommand {argv[0]!r}; {USAGE}")
    return train_main(argv[1:])

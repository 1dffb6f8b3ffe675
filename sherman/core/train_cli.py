"""`sherman train`: SFT on a task's worked traces, or plain LM training on a text file (`sherman.core.train.train`).

Only the options live here (no torch at import): `sherman train --help` and flag errors only parse; the training
loop, the model and the tokenizers are imported once the options are valid.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from sherman.core.config import check, parse
from sherman.core.errors import ShermanError
from sherman.core.train_config import TrainConfig


@dataclass
class TrainArgs:
    out: str = "runs/train"
    """Run directory (checkpoints, metrics.jsonl, tokenizer.json)."""
    task: str | None = "arithmetic"
    """Task to SFT on (its worked traces, prompt masked from the loss); ignored when --text is given."""
    text: str | None = None
    """A .txt (one document per line) or .jsonl ({"text": ...} per line) file for plain LM training."""
    n_examples: int = 2000
    """Task examples to generate for SFT."""
    vocab_size: int = 512
    """BPE vocabulary size for --text training."""
    dim: int = 128
    """Model width."""
    n_layers: int = 2
    """Model depth."""
    n_heads: int = 4
    """Query heads."""
    n_kv_heads: int = 2
    """Key/value heads."""
    n_experts: int = 0
    """MoE experts per layer (0 = dense)."""
    hf: str | None = None
    """Start from a Hugging Face checkpoint directory instead of a fresh model (--text training)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""

    def __post_init__(self) -> None:
        for name in ("n_examples", "dim", "n_layers", "n_heads", "n_kv_heads"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.dim % self.n_heads == 0, "n_heads", f"{self.n_heads} does not divide --dim {self.dim}")
        check((self.dim // self.n_heads) % 2 == 0, "n_heads", f"head width --dim / --n-heads = {self.dim / self.n_heads:g} must be even (RoPE)")
        check(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", f"{self.n_kv_heads} does not divide --n-heads {self.n_heads}")
        check(self.n_experts >= 0, "n_experts", f"must be >= 0, got {self.n_experts}")
        check(self.n_experts == 0 or self.n_experts >= 2, "n_experts", f"an MoE model needs >= 2 experts (top-2 routing), got {self.n_experts}")
        check(self.vocab_size >= 256 + 3, "vocab_size", f"BPE needs 256 byte tokens + 3 specials, so >= 259; got {self.vocab_size}")


def main(argv: list[str]) -> int:
    default = TrainArgs(train=TrainConfig(log_every=20))  # the CLI prints every 20 steps unless told (0 = silent)
    args = parse(TrainArgs, argv, prog="sherman train", description=__doc__, default=default, exclude=("train.out_dir",))
    from sherman.core.common import print0, seed_everything
    from sherman.core.model import ModelConfig, Transformer
    from sherman.core.train import SeqExample, build_sft_data, read_documents, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.train.out_dir = str(out)
    if args.text:
        from sherman.core.tokenizer import load_tokenizer, train_bpe

        path = Path(args.text)
        if not path.is_file():
            raise ShermanError(f"{path}: no such file")
        docs = read_documents(path)
        if args.hf:
            from sherman.core.hf import load_hf

            tok = load_tokenizer(args.hf)
            model = load_hf(args.hf)
        else:
            tok = train_bpe(docs, args.vocab_size)
            model = None
        data = [SeqExample(ids=tok.encode(d, bos=True, eos=True)) for d in docs]
        data = [d for d in data if len(d.ids) > 1]
        if not data:
            raise ShermanError(f"{path}: no usable documents")
    else:
        from sherman.core.tokenizer import CharTokenizer
        from sherman.tasks import get_task

        task = get_task(args.task)
        tok = CharTokenizer(task.alphabet())
        data = build_sft_data(task, tok, args.n_examples, args.train.seed)
        model = None
    tok.save(out / "tokenizer.json")
    if model is None:
        seed_everything(args.train.seed)
        mcfg = ModelConfig(
            vocab_size=tok.vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
            n_kv_heads=args.n_kv_heads, ffn_dim=int(args.dim * 8 / 3), n_experts=args.n_experts,
            moe_ffn_dim=max(16, args.dim // 2),
        )  # fmt: skip
        model = Transformer(mcfg)
    res = train(model, data, args.train)
    if res.already_complete:
        print0(f"already complete: {res.step} steps; checkpoints in {out}")
        return 0
    print0(f"done: {res.step} steps; final train loss {res.history[-1]['loss/train']:.4f}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

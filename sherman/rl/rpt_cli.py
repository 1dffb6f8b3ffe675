"""`sherman rpt entropy|train|eval`: Reinforcement Pre-Training (`sherman.rl.rpt`) on a corpus.

  sherman rpt entropy CORPUS --proxy CKPT [--out entropies.safetensors]   per-position top-k entropies of the proxy
  sherman rpt train CKPT --data CORPUS [--proxy CKPT] [--steps 50] ...    RPT through the RL loop (rl_train)
  sherman rpt eval CKPT --data CORPUS [--proxy CKPT]                      next-token accuracy per entropy split

CKPT is a Sherman checkpoint directory or a Hugging Face folder (config.json + safetensors + tokenizer.json); its
tokenizer.json is the policy's tokenizer (byte-level BPE for exact byte rewards). CORPUS is a .txt (one document per
line) or .jsonl ({"text": ...} per line). Without --proxy the policy scores its own entropies.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sherman.core.config import Positional, parse
from sherman.core.errors import ShermanError
from sherman.rl.config import RLConfig, preset_config
from sherman.rl.rpt_config import PRESET, RPTConfig

SUBCOMMANDS = ("entropy", "train", "eval")


@dataclass
class EntropyArgs:
    corpus: Positional[str]
    """Corpus file (.txt or .jsonl)."""
    proxy: str = ""
    """Proxy checkpoint (Sherman directory or Hugging Face folder)."""
    out: str = "entropies.safetensors"
    """Output: one tensor per document (`doc_<i>`: entropy of predicting token t) and a JSON summary beside it."""
    top_k: int = 16
    """Entropy over the top-k logits (the paper: 16)."""
    max_tokens: int = 1024
    """Documents are cut to this many tokens."""


@dataclass
class TrainArgs:
    ckpt: Positional[str]
    """Policy checkpoint (Sherman directory or Hugging Face folder)."""
    data: str = ""
    """Corpus file (.txt or .jsonl)."""
    proxy: str | None = None
    """Proxy checkpoint for position selection (default: the policy itself)."""
    out: str = "runs/rpt"
    """Run directory (checkpoints, metrics.jsonl, tokenizer.json, entropy cache)."""
    max_tokens: int = 1024
    """Documents are cut to this many tokens."""
    rpt: RPTConfig = field(default_factory=RPTConfig)
    """RPT options (template, delimiters, reward, selection)."""
    rl: RLConfig = field(default_factory=lambda: preset_config("opo", **PRESET, log_every=5))
    """RL options (default: the paper's GRPO on-policy, G = 8, T = 0.8, no KL; the CLI logs every 5 iterations, 0 = silent)."""


@dataclass
class EvalArgs:
    ckpt: Positional[str]
    """Checkpoint to evaluate (Sherman directory or Hugging Face folder)."""
    data: str = ""
    """Corpus file (.txt or .jsonl)."""
    proxy: str | None = None
    """Proxy checkpoint for the easy / medium / hard splits (default: the evaluated model)."""
    positions: int = 200
    """Positions evaluated (a seeded sample of the selected ones)."""
    max_tokens: int = 1024
    """Documents are cut to this many tokens."""
    seed: int = 0
    """Sampling seed for the position sample."""
    rpt: RPTConfig = field(default_factory=lambda: RPTConfig(quantile=None, threshold=0.0))
    """RPT options (template, delimiters, split edges; by default every position with context is eligible)."""


def load_any(path: str):
    """(model, tokenizer) from any checkpoint path `sherman.core.paths` accepts (run, step or Hugging Face directory)."""
    from sherman.core.paths import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(path)
    return model.train(), tok


def _corpus(path: str, tok, max_tokens: int) -> list[list[int]]:
    from sherman.rl import rpt

    if not path:
        raise ShermanError("--data CORPUS is required")
    docs = rpt.tokenize_corpus(rpt.load_corpus(path), tok, max_tokens)
    if not docs:
        raise ShermanError(f"{path}: no document has 2 or more tokens")
    return docs


def _parse(cls, argv: list[str], prog: str):
    return parse(cls, argv, prog=prog, description=__doc__, flatten=("rpt", "rl"), exclude=("rl.out_dir",))


def entropy_main(argv: list[str]) -> int:
    args = _parse(EntropyArgs, argv, "sherman rpt entropy")
    from sherman.rl import rpt

    if not args.proxy:
        raise ShermanError("--proxy CKPT is required")
    proxy, tok = load_any(args.proxy)
    docs = _corpus(args.corpus, tok, args.max_tokens)
    ents = rpt.proxy_entropies(proxy, docs, tok.bos_id, args.top_k)
    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({f"doc_{i}": e.contiguous() for i, e in enumerate(ents)}, str(tmp), metadata={"top_k": str(args.top_k), "corpus": args.corpus})
    tmp.replace(out)
    flat = [float(x) for e in ents for x in e]
    summary = {"documents": len(docs), "positions": len(flat), "top_k": args.top_k, "mean": sum(flat) / len(flat),
               "quantiles": {q: float(sorted(flat)[int(q * (len(flat) - 1))]) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}}  # fmt: skip
    rpt.save_json(out.with_suffix(".json"), summary)
    print(f"{len(flat)} positions in {len(docs)} documents: mean top-{args.top_k} entropy {summary['mean']:.3f} nats -> {out}")
    return 0


def _entropies(proxy_path: str | None, model, tok, docs, cfg: RPTConfig, cache_dir: Path | None):
    from sherman.rl import rpt

    proxy = model
    if proxy_path:
        proxy, _ = load_any(proxy_path)
        rpt.check_vocab(proxy, model, tok)
    return rpt.cached_entropies(proxy, docs, tok.bos_id, cfg.top_k, cache_dir)


def train_main(argv: list[str]) -> int:
    args = _parse(TrainArgs, argv, "sherman rpt train")
    from sherman.core.common import print0, seed_everything
    from sherman.rl import rpt
    from sherman.rl.grpo import rl_train

    model, tok = load_any(args.ckpt)
    docs = _corpus(args.data, tok, args.max_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ents = _entropies(args.proxy, model, tok, docs, args.rpt, out / "entropy_cache")
    pos = rpt.select_positions(ents, args.rpt)
    task = rpt.RPTTask(tok, docs, pos, args.rpt)
    cfg = dataclasses.replace(args.rl, out_dir=str(out), max_new_tokens=args.rpt.max_new_tokens)  # --log-every 0 is silent
    seed_everything(cfg.seed)
    tok.save(out / "tokenizer.json")
    print0(f"RPT: {len(pos)} positions selected of {sum(map(len, docs))} in {len(docs)} documents; {cfg.steps} iterations x "
           f"{cfg.prompts_per_step} x G={cfg.group_size}")  # fmt: skip
    res = rl_train(model, task, tok, cfg)
    print0(f"done: {res.step} iterations; malformed completions {task.malformed_frac():.3f} ({dict(task.malformed)}); checkpoints in {out}")
    return 0


def eval_main(argv: list[str]) -> int:
    args = _parse(EvalArgs, argv, "sherman rpt eval")
    from sherman.rl import rpt

    model, tok = load_any(args.ckpt)
    docs = _corpus(args.data, tok, args.max_tokens)
    ents = _entropies(args.proxy, model, tok, docs, args.rpt, None)
    pos = rpt.select_positions(ents, args.rpt)
    pos = random.Random(args.seed).sample(pos, min(len(pos), args.positions))
    task = rpt.RPTTask(tok, docs, pos, args.rpt)
    res = rpt.reasoning_accuracy(model, task, list(range(len(pos))))
    res.update(rpt.ntp_accuracy(model, tok, docs, pos, args.rpt))
    for mode in ("reason", "ntp"):
        print(f"{mode:>6}: " + "  ".join(f"{s}={res[f'{mode}/{s}']:.3f}" for s in ("easy", "medium", "hard", "all")) + f"  (n={int(res[f'{mode}/n'])})")
    print(f"malformed completions: {res['reason/malformed']:.3f}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv:
        raise ShermanError(f"missing subcommand: sherman rpt {{{','.join(SUBCOMMANDS)}}} ... (see `sherman rpt --help`)")
    if argv[0] not in SUBCOMMANDS:
        raise ShermanError(f"unknown rpt subcommand {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
    fn = {"entropy": entropy_main, "train": train_main, "eval": eval_main}[argv[0]]
    return fn(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

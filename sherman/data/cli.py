"""`sherman data score|select|order|corpus`: DELT data scoring, selection and ordering on JSONL corpora.

    sherman data corpus runs/delt_corpus                                  # write the synthetic corpus (train/target/valid/cloze)
    sherman data score runs/delt_corpus/train.jsonl --target runs/delt_corpus/target.jsonl --out scores.jsonl
    sherman data select scores.jsonl --ratio 0.7 --out kept.jsonl          # keep the top 70% by score
    sherman data order kept.jsonl --method folding --folds 3 --out order.jsonl --corpus runs/delt_corpus/train.jsonl

A corpus is JSONL with one `{"text": ...}` object per line. `score` writes one row per document,
`{"index", "score", "lqs", "pds", "loss"}` (the `--scorer` column copied to "score"); `select` and `order`
read such rows (anything with "index" and "score") and write rows in the new order, with the text when
`--corpus` is given, so the output of `order` is the training stream.

Scoring is resumable (`--resume`): the proxy run is saved once under OUT.state/, and per-document gradient
statistics are appended there chunk by chunk; a restarted run skips finished documents. Under
`torchrun --nproc-per-node N -m sherman.cli data score ...` rank 0 trains the proxy, every rank scores the
chunks with index % N == rank, and rank 0 merges, normalizes and writes OUT.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sherman.core.config import Positional, parse
from sherman.core.errors import ShermanError
from sherman.data.config import LQSConfig
from sherman.data.corpus import CorpusConfig, make_corpus, read_jsonl, write_corpus, write_jsonl

if TYPE_CHECKING:  # numpy, torch and the scoring code are imported when a command runs (`--help` only parses)
    import numpy as np

    from sherman.data.scoring import ProxyRun

SCORERS = ("lqs", "pds", "loss", "random")


@dataclass
class ScoreArgs:
    corpus: Positional[str]
    """Corpus JSONL ({"text": ...} per line)."""
    target: str = ""
    """Target-set JSONL (the data whose loss J the scores should reduce); required for lqs and pds."""
    out: str = "scores.jsonl"
    """Output JSONL: {"index", "score", "lqs", "pds", "loss"} per document."""
    scorer: str = "lqs"
    """Column copied to "score": lqs | pds | loss | random."""
    tokenizer: str = ""
    """A tokenizer.json (char or Hugging Face); default: a character tokenizer over the corpus and target text."""
    dim: int = 64
    """Proxy model width."""
    n_layers: int = 2
    """Proxy model depth."""
    proxy_size: int = 0
    """Train the proxy on a uniform sample of this many documents (0 = the whole corpus)."""
    resume: bool = False
    """Reuse OUT.state/ from an interrupted run."""
    lqs: LQSConfig = field(default_factory=lambda: LQSConfig(max_len=256))
    """Proxy run and LQS settings."""


@dataclass
class SelectArgs:
    scores: Positional[str]
    """Scores JSONL (rows with "index" and "score")."""
    ratio: float = 0.7
    """Keep the top r fraction, r in (0, 1]."""
    out: str = "selected.jsonl"
    """Output JSONL of the kept rows, in corpus order."""
    corpus: str = ""
    """Corpus JSONL: when given, each output row carries its "text"."""


@dataclass
class OrderArgs:
    scores: Positional[str]
    """Scores JSONL (rows with "index" and "score"), e.g. the output of `select`."""
    method: str = "folding"
    """shuffle | ascending | descending | folding."""
    folds: int = 3
    """L, the number of folds of Folding ordering."""
    window: int = 0
    """Folding window jitter: shuffle inside consecutive windows of this many documents (0 or 1 = off; official DELT option)."""
    seed: int = 0
    """Seed of the shuffled order (and of the window jitter)."""
    out: str = "order.jsonl"
    """Output JSONL: the rows in training order, with "rank"."""
    corpus: str = ""
    """Corpus JSONL: when given, each output row carries its "text"."""


@dataclass
class CorpusArgs:
    out_dir: Positional[str]
    """Directory for train.jsonl, target.jsonl, valid.jsonl, cloze.jsonl."""
    seed: int = 0
    """Generator seed."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Corpus generator settings."""


# ----------------------------------------------------------------------------------------------- helpers


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(indices, scores, rows) of a scores JSONL; a malformed row is a one-line error."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ShermanError(f"no such scores file: {p}")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            r["index"], r["score"] = int(r["index"]), float(r["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ShermanError(f'{p}:{i}: expected an object with an integer "index" and a numeric "score"') from None
        rows.append(r)
    if not rows:
        raise ShermanError(f"{p}: no rows")
    idx = np.array([r["index"] for r in rows])
    if len(set(idx.tolist())) != len(idx):
        raise ShermanError(f"{p}: duplicate indices")
    return idx, np.array([r["score"] for r in rows]), rows


def attach_text(rows: list[dict], corpus: str) -> list[dict]:
    if not corpus:
        return rows
    texts = read_jsonl(corpus)
    bad = [r["index"] for r in rows if not 0 <= r["index"] < len(texts)]
    if bad:
        raise ShermanError(f"index {bad[0]} is outside the corpus {corpus} ({len(texts)} documents)")
    return [{**r, "text": texts[r["index"]]} for r in rows]


def build_tokenizer(path: str, texts: list[str]):
    from sherman.core.tokenizer import CharTokenizer, load_tokenizer

    if path:
        if not Path(path).exists():
            raise ShermanError(f"no such tokenizer: {path}")
        return load_tokenizer(path)
    return CharTokenizer("".join(sorted(set("".join(texts)))))


# ----------------------------------------------------------------------------------------------- score


def _save_run(run: ProxyRun, cfg: LQSConfig, path: Path) -> None:
    """Keep only what scoring needs: theta_s at the stat steps, lambda_{s+1}, theta_T, and the loss curves."""
    from sherman.core.checkpoint import save_tree_file
    from sherman.data.scoring import checkpoints

    T = len(run.batches)
    cks = checkpoints(T, cfg.delta)
    steps = sorted(set(cks) | {min(t + cfg.delta, T) for t in cks} | {T})
    state = {
        "T": T,
        "thetas": {s: run.thetas[s] for s in steps},
        "lambdas": {s + 1: run.lambdas[s + 1] for s in steps if s < T},
        "train_loss": run.train_loss,
        "target_loss": run.target_loss,
    }
    save_tree_file(path, state)  # safetensors + JSON header (no pickle), atomic


def _load_run(path: Path) -> ProxyRun:
    import numpy as np

    from sherman.core.checkpoint import load_tree_file
    from sherman.data.scoring import ProxyRun

    st = load_tree_file(path)
    T = st["T"]
    thetas = [st["thetas"].get(s) for s in range(T + 1)]
    lambdas = [st["lambdas"].get(s) for s in range(T + 1)]
    return ProxyRun(thetas, [np.zeros(0)] * T, lambdas, st["train_loss"], st["target_loss"])  # type: ignore[arg-type]


def score_main(a: ScoreArgs) -> int:
    import numpy as np
    import torch

    from sherman.core.common import init_distributed_from_env, is_dist, print0, rank, world_size
    from sherman.core.model import ModelConfig, Transformer
    from sherman.data.scoring import (
        FunctionalLM,
        costate,
        doc_losses,
        grad_stats,
        lqs_from_stats,
        pad_batch,
        proxy_train,
        random_scores,
        warmup,
        zclip,
    )

    if a.scorer not in SCORERS:
        raise ShermanError(f"--scorer must be one of {', '.join(SCORERS)}, got {a.scorer!r}")
    texts = read_jsonl(a.corpus)
    out = Path(a.out)
    if a.scorer == "random":
        s = random_scores(len(texts), a.lqs.seed)
        write_jsonl(out, [{"index": i, "score": float(v)} for i, v in enumerate(s)])
        print0(f"wrote {len(texts)} random scores to {out}")
        return 0
    if not a.target:
        raise ShermanError("--target TARGET.jsonl is required for the lqs, pds and loss scorers")
    target_texts = read_jsonl(a.target)
    tok = build_tokenizer(a.tokenizer, texts + target_texts)
    seqs = [tok.encode(t, bos=True, eos=True) for t in texts]
    target = [tok.encode(t, bos=True, eos=True) for t in target_texts]
    init_distributed_from_env()
    r, ws = rank(), world_size()
    state = Path(str(out) + ".state")
    state.mkdir(parents=True, exist_ok=True)
    run_path = state / "proxy.pt"
    if not a.resume and r == 0:
        for f in list(state.glob("stats.rank*.jsonl")) + [run_path]:
            f.unlink(missing_ok=True)
    torch.manual_seed(a.lqs.seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=a.dim, n_layers=a.n_layers, n_heads=4, n_kv_heads=2, ffn_dim=3 * a.dim, max_seq_len=max(256, a.lqs.max_len)))
    fl = FunctionalLM(model)
    if r == 0 and not run_path.exists():
        rng = np.random.default_rng(a.lqs.seed)
        sample = rng.choice(len(seqs), size=a.proxy_size, replace=False) if 0 < a.proxy_size < len(seqs) else np.arange(len(seqs))
        ids, mask = pad_batch([seqs[i] for i in sample], tok.pad_id, a.lqs.max_len)
        t_ids, t_mask = pad_batch(target[: a.lqs.max_target], tok.pad_id, a.lqs.max_len)
        print0(f"proxy run: {a.lqs.warmup_steps} warm-up + {a.lqs.proxy_steps} SGD steps on {len(sample)} documents")
        run = proxy_train(fl, warmup(fl, ids, mask, a.lqs), ids, mask, a.lqs)
        costate(fl, run, ids, mask, t_ids, t_mask, a.lqs.lr)
        _save_run(run, a.lqs, run_path)
        print0(f"proxy target loss {run.target_loss[0]:.4f} -> {run.target_loss[-1]:.4f}; saved {run_path}")
    if is_dist():
        torch.distributed.barrier()
    run = _load_run(run_path)
    T = len(run.batches)

    # per-document statistics, chunk by chunk, appended (resumable); rank r takes chunks c with c % ws == r
    stats_path = state / f"stats.rank{r}.jsonl"
    done = {json.loads(line)["index"] for line in stats_path.read_text().splitlines()} if stats_path.exists() else set()
    chunk = a.lqs.chunk
    my_chunks = [c for c in range(0, len(seqs), chunk) if (c // chunk) % ws == r]
    todo = [c for c in my_chunks if not all(i in done for i in range(c, min(c + chunk, len(seqs))))]
    print0(f"scoring {len(seqs)} documents ({len(done)} already done on rank {r}) on {ws} rank(s)")
    with open(stats_path, "a") as f:
        for k, c in enumerate(todo):
            part = seqs[c : c + chunk]
            st = grad_stats(fl, run, part, tok.pad_id, a.lqs)
            loss = doc_losses(fl, run.thetas[T], part, tok.pad_id, chunk, a.lqs.max_len)
            for j in range(len(part)):
                f.write(json.dumps({"index": c + j, "dots": {str(s): float(v[0][j]) for s, v in st.items()},
                                    "norms": {str(s): float(v[1][j]) for s, v in st.items()}, "loss": float(loss[j])}) + "\n")
            f.flush()
            print0(f"  chunk {k + 1}/{len(todo)}: documents {c}..{c + len(part) - 1}")
    if is_dist():
        torch.distributed.barrier()
    if r != 0:
        return 0
    rows: dict[int, dict] = {}
    for p in sorted(state.glob("stats.rank*.jsonl")):
        for line in p.read_text().splitlines():
            row = json.loads(line)
            rows[row["index"]] = row
    missing = [i for i in range(len(seqs)) if i not in rows]
    if missing:
        raise ShermanError(f"statistics missing for {len(missing)} documents (first {missing[0]}); rerun with --resume")
    steps = [int(s) for s in rows[0]["dots"]]
    stats = {s: (np.array([rows[i]["dots"][str(s)] for i in range(len(seqs))]), np.array([rows[i]["norms"][str(s)] for i in range(len(seqs))])) for s in steps}
    raw_lqs, raw_pds = lqs_from_stats(stats, T, a.lqs)
    cols = {"lqs": zclip(raw_lqs, a.lqs.clip), "pds": zclip(raw_pds, a.lqs.clip), "loss": -np.array([rows[i]["loss"] for i in range(len(seqs))])}
    write_jsonl(out, [{"index": i, "score": float(cols[a.scorer][i]), **{k: float(v[i]) for k, v in cols.items()}} for i in range(len(seqs))])
    print0(f"wrote {len(seqs)} scores ({a.scorer}) to {out}")
    return 0


def select_main(a: SelectArgs) -> int:
    from sherman.core.common import print0
    from sherman.data.selection import select_top

    if not 0.0 < a.ratio <= 1.0:
        raise ShermanError(f"--ratio must be in (0, 1], got {a.ratio}")
    _, s, rows = read_scores(a.scores)
    keep = select_top(s, a.ratio)
    kept = attach_text([rows[k] for k in keep], a.corpus)
    write_jsonl(a.out, kept)
    print0(f"kept {len(kept)} of {len(rows)} documents (top {a.ratio:g} by score) in {a.out}")
    return 0


def order_main(a: OrderArgs) -> int:
    from sherman.core.common import print0
    from sherman.data.ordering import ORDERS, make_order

    if a.method not in ORDERS:
        raise ShermanError(f"--method must be one of {', '.join(ORDERS)}, got {a.method!r}")
    if a.folds < 1:
        raise ShermanError(f"--folds must be >= 1, got {a.folds}")
    if a.window < 0:
        raise ShermanError(f"--window must be >= 0, got {a.window}")
    _, s, rows = read_scores(a.scores)
    perm = make_order(s, a.method, seed=a.seed, folds=a.folds, window=a.window)
    ordered = attach_text([{**rows[k], "rank": n} for n, k in enumerate(perm)], a.corpus)
    write_jsonl(a.out, ordered)
    print0(f"wrote {len(ordered)} documents in {a.method} order to {a.out}")
    return 0


def corpus_main(a: CorpusArgs) -> int:
    from sherman.core.common import print0

    paths = write_corpus(make_corpus(a.corpus, a.seed), a.out_dir)
    (Path(a.out_dir) / "config.json").write_text(json.dumps({"seed": a.seed, **asdict(a.corpus)}, indent=2))
    print0("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


COMMANDS = {"score": (ScoreArgs, score_main), "select": (SelectArgs, select_main), "order": (OrderArgs, order_main), "corpus": (CorpusArgs, corpus_main)}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv:
        raise ShermanError(f"missing subcommand: sherman data {{{','.join(COMMANDS)}}} ... (see `sherman data --help`)")
    if argv[0] not in COMMANDS:
        raise ShermanError(f"unknown data command {argv[0]!r}; known: {', '.join(COMMANDS)}")
    cls, fn = COMMANDS[argv[0]]
    args = parse(cls, argv[1:], prog=f"sherman data {argv[0]}")
    return fn(args)

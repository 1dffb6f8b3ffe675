"""Sparse decoding on long retrieval contexts: SeerAttention-R gate vs Quest vs oracle / random block selection across
block sizes, and ReSA rectification over 1K+ decoded tokens.

Papers: SeerAttention-R (arXiv 2506.08889, Sec. 3: a self-distilled block gate for decoding; its advantage over
Quest-style bounds is claimed at block sizes 64/128) and ReSA (arXiv 2506.04108, Sec. 2: block-sparse decode with
Quest-style group scores, densely re-encoding the last f tokens every f steps to bound error accumulation).

Task ("haystack" retrieval, built here): a context of 512-4K characters of filler (upper-case letters, never a key
or value) with `n_pairs` key-value pairs "kv," scattered in it (keys: distinct lower-case letters; values: digits),
then a query "?k" whose answer is "v". Retrieval is an induction step (find the earlier "k", copy the next token),
and at 10% of 64-token blocks the block holding the pair must be found among 64 blocks at 4K. A small core
Transformer is trained on it, then frozen. Recipe (`train_data`): `copy_steps` steps of copy sequences only ("s s",
loss on the second copy: the induction step with a target at every position), then retrieval sequences (a
context-length curriculum up to `train_len`, `n_queries` queries each) mixed with 20% copy sequences; 64 sequences
per step, RoPE base 1e6 and head width 32 (content matching over 4K positions needs slowly rotating channels). Then
a long-context phase (`long_data`, a second short AdamW run): `long_steps` steps of `long_batch` retrieval sequences
at the evaluation lengths (one length per step), each of their 8-24 pairs queried once.

Measured:
1. Seer gates self-distilled (`attention.seer.train_gates`) for block sizes 16, 32, 64, each over 3 gate seeds, on
   multi-query long sequences (most positions a sparse decoder serves are queries).
2. Attention recall at the answer position (share of each query head's true attention mass in the kept blocks plus
   the local block) at 10% kept, per block size and context length: Seer, Quest, oracle top-k (true block mass),
   random.
3. Exact match: the context is prefilled densely once, then "?", the key and the value are decoded through each
   backend (`core.generate.decode_forward`; the cache is rewound between backends) - Seer, Quest, oracle, random at
   10% kept - vs dense, per block size and context length.
4. ReSA drift: sequences of a `resa_ctx`-token context followed by >= 1K teacher-forced decoded tokens (queries and
   their answers), decoded through the quest backend at 10% with rectification every f in {none, 16, 64, 256}
   steps: KL(dense || sparse) of the next-token distribution and the perplexity of the answers, vs position. Beside
   them a per-step floor (`decode_forced_per_step`: every step sparse, its cache entries then rewritten densely):
   the error of a step's own block selection with nothing carried in the cache. Rectification repairs only the
   cache, so it can remove at most the gap between sparse-only decoding and that floor. The claim is measured at the
   answer positions (the retrieved values), first vs last 128 decoded positions, paired over 16 sequences; the KL
   over all positions is reported beside it. Why (probe on the quick model, 8 sequences): over all positions the KL
   is dominated by the separator "?" after each answer (KL 1.1 -> 3.3 from the first to the last window), where the
   per-step floor is as high (3.45): the step's own selection error, out of rectification's reach; at the answers
   sparse-only decoding sat at 0.32 in the last window, the floor at 0.19, rectification every 16 / 64 steps at 0.19.
5. Decode-attention speed at 16K tokens (our dense path vs the sparse step at 10%).

Preconditions (checked in code): the dense model retrieves (exact match >= 50% on every context length) for the
Seer claims; sparse-only decoding drifts measurably at the answers (late KL > `drift_floor`) and carries error in the
cache there (its late KL exceeds the per-step floor by at least the reduction the claim asks of rectification, beyond
the spread) for the ReSA claim.

Why this recipe (probes on the shared 2-core Intel Xeon, 1 thread, load 3.5-5, seed 0, dense exact match on 32
held-out prompts of 16 pairs per length): the previous quick recipe (16 sequences per step, 30% "x y x"
previous-token sequences, RoPE base 1e4) stayed at 6-34% at 64-512 tokens after 1500 steps (loss fell only on the
"x y x" targets), also with RoPE base 1e6 / head width 32, with distinct queries, and with pure key-value contexts
(no filler). Copy sequences alone at 16 per step did not form the induction step in 800 steps at lr 3e-3, 1e-2 or
3e-2; at 64 per step it formed at steps 300-400 (copy loss 3.5 -> 0.4). With the copy phase first (300 steps) then
retrieval, dense exact match was 100% / 84% / 72% at 128 / 512 / 1024 tokens at step 400 (90 CPU-s) and 100% / 94%
/ 81% at step 600 (174 CPU-s); the quick budget stops at 1000 steps. That short recipe alone (trained contexts <= 160
characters + 16 queries) does not carry to long contexts (2-core AMD EPYC, 64 held-out prompts per length): dense exact
match 100 / 100 / 86 / 50 / 41 / 12% at 128 / 256 / 512 / 1K / 2K / 4K, falling smoothly with length, as far-from-the-
query pairs and near ones alike. Its circuit: layer-0 heads at fixed offsets (-1 and -2 at the comma after a pair,
-4 / -35 / -66 elsewhere) and content matching in layer 1, whose attention at the query is sharp at 256 tokens (top
share 0.3-0.97) and diffuse at 4K (0.02-0.1: diluted by, and aliased with, distances it never saw). Length
extrapolation, not capacity: 20 steps x 4 sequences at 512-4K (26 CPU-s) lifted it to 100 / 100 / 100 / 97% at 512-4K,
40 steps to 100% at all four. Gates: 120 distillation steps x 2 x 512 tokens (on that model, block 64, gate seed 0: KL
0.44 at 60 steps, 0.41 at 150, 0.42 at 300; recall at the answer slot rose 0.34 -> 0.43 from 60 to 150 steps, mostly at
512-2K; gates distilled on 512-4K sequences reached 0.54 at 4K, at 7x the cost per step).

One model seed (training it dominates the cost); the spread is over 3 gate seeds for Seer (Quest, oracle and dense
are deterministic given the model; random takes the gate seed) and over sequences for ReSA.

Run: `sherman reproduce sparse_decoding --budget quick`. Stages (`run`): the LM, each gate, each evaluation length and
the ReSA drift are stored under $SHERMAN_ARTIFACTS/sparse_decoding (default ~/.cache/sherman/sparse_decoding) with
the prompt stream's state, so a run cut off by a session's end resumes with exactly the numbers of an unbroken run
(the smoke budget's staged, resumed and unstaged runs are equal, and equal the code before staging, tested); the
full budget in sessions: `SHERMAN_ARTIFACTS=stages sherman reproduce sparse_decoding --budget full`, repeated.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sherman.attention.resa import resa_context
from sherman.attention.seer import SeerConfig, SeerGates, SeerTrainConfig, capture_qk, gate_logits_dense, seer_context, train_gates
from sherman.attention.sparse import block_minmax, n_keep, quest_scores
from sherman.core.attention import AttnContext
from sherman.core.common import print0, seed_everything
from sherman.core.generate import decode_forward
from sherman.core.kv_cache import KVCache
from sherman.core.model import ModelConfig, Transformer
from sherman.core.progress import progress
from sherman.core.tokenizer import CharTokenizer
from sherman.core.train import SeqExample, TrainConfig, train
from sherman.experiments import stages
from sherman.experiments.delt import paired_ci, t975
from sherman.experiments.runner import dump_results
from sherman.experiments.verdict import NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED, compare, reaches
from sherman.experiments.verdict import overall as combine

CLAIM = (
    "SeerAttention-R (arXiv 2506.08889): a self-distilled block gate is near-lossless at a small budget with large "
    "blocks and beats Quest-style selection as blocks grow; ReSA (arXiv 2506.04108): periodic dense rectification "
    "bounds the error that sparse-only decoding accumulates over long generations."
)

KEYS = "abcdefghijklmnopqrstuvwxyz"
"""Key characters (distinct per context)."""
VALUES = "0123456789"
"""Value characters."""
FILLER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Filler characters (never a key or a value)."""
ALPHABET = KEYS + VALUES + FILLER + ",?"
FRAC = 0.10
"""Kept fraction of the complete blocks for every sparse method."""
METHODS = ("seer", "quest", "oracle", "random")

BUDGETS = {
    "smoke": dict(dim=32, layers=2, head_dim=16, rope_theta=1e6, steps=8, batch=4, lr=3e-3, copy_steps=2, train_len=(32, 96), warm_len=64,
                  warm_steps=3, pairs=(2, 6), pair_spacing=8, n_queries=4, aux_frac=0.3, aux_len=12,
                  long_steps=2, long_batch=2, long_lens=[128, 256], long_pairs=(4, 8), long_lr=3e-3, blocks=[16, 32], gate_seeds=[0, 1],
                  gate_steps=3, gate_batch=1, gate_len=128, lens=[128, 256], eval_pairs=6, n_eval=4, eval_batch=4, n_recall=2, resa_ctx=128,
                  resa_gen=96, resa_batch=2, resa_block=16, rect=[16, 64], window=32, speed=False),
    "quick": dict(dim=64, layers=2, head_dim=32, rope_theta=1e6, steps=1000, batch=64, lr=1e-2, copy_steps=300, train_len=(16, 160),
                  warm_len=96, warm_steps=400, pairs=(4, 16), pair_spacing=4, n_queries=16, aux_frac=0.2, aux_len=24,
                  long_steps=48, long_batch=4, long_lens=[512, 1024, 2048, 4096], long_pairs=(8, 24), long_lr=3e-3, blocks=[16, 32, 64],
                  gate_seeds=[0, 1, 2], gate_steps=120, gate_batch=2, gate_len=512, lens=[512, 1024, 2048, 4096], eval_pairs=16, n_eval=32,
                  eval_batch=4, n_recall=4, resa_ctx=512, resa_gen=1056, resa_batch=16, resa_block=16, rect=[16, 64, 256], window=128, speed=True, ckpt_every=250),
    "full": dict(dim=128, layers=4, head_dim=32, rope_theta=1e6, steps=4000, batch=64, lr=3e-3, copy_steps=600, train_len=(16, 512),
                 warm_len=128, warm_steps=1000, pairs=(4, 20), pair_spacing=4, n_queries=32, aux_frac=0.2, aux_len=32,
                 long_steps=400, long_batch=8, long_lens=[512, 1024, 2048, 4096], long_pairs=(8, 24), long_lr=1e-3,
                 blocks=[16, 32, 64, 128], gate_seeds=[0, 1, 2], gate_steps=600, gate_batch=4, gate_len=2048, lens=[512, 1024, 2048, 4096],
                 eval_pairs=20, n_eval=128, eval_batch=4, n_recall=32, resa_ctx=1024, resa_gen=2048, resa_batch=8, resa_block=16,
                 rect=[16, 64, 256], window=128, speed=True, ckpt_every=100),
}
LOSSLESS_TOL = 0.02
"""Seer counts as near-lossless when its exact match is within this of dense."""
DRIFT_FLOOR = 1e-3
"""Precondition of the ReSA claim: sparse-only decoding's late KL to dense must exceed this."""
DRIFT_MIN_REDUCTION = 0.25
"""Effect threshold of the ReSA claim: rectification must remove at least this fraction of sparse-only decoding's
late-window KL to dense (beyond the spread over sequences) to count as bounding the drift."""
SEER_MIN_GAIN = 0.01
"""Effect threshold of "Seer beats Quest" and of "its advantage grows with the block": one exact-match point."""
EM_CHANCE = 1 / len("0123456789")
"""Exact match of guessing the one-digit value: an arm at or below it failed (two failed arms are not compared)."""


# ----------------------------------------------------------------------------------------------------------------
# data


def haystack(n_pairs: int, length: int, rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A context of about `length` characters: filler with n_pairs "kv," pairs at random places (in order)."""
    assert n_pairs <= len(KEYS), f"at most {len(KEYS)} distinct keys"
    keys = rng.sample(KEYS, n_pairs)
    pairs = [(k, rng.choice(VALUES)) for k in keys]
    n_fill = max(0, length - 3 * n_pairs)
    cuts = sorted(rng.randint(0, n_fill) for _ in range(n_pairs))
    gaps = [b - a for a, b in zip([0] + cuts, cuts + [n_fill])]  # n_pairs + 1 filler runs
    parts = []
    for (k, v), gap in zip(pairs, gaps):
        parts.append("".join(rng.choice(FILLER) for _ in range(gap)) + f"{k}{v},")
    parts.append("".join(rng.choice(FILLER) for _ in range(gaps[-1])))
    return "".join(parts), pairs


def query_sequence(tok: CharTokenizer, n_pairs: int, length: int, n_queries: int, rng: random.Random, distinct: bool = False) -> SeqExample:
    """bos + context, then n_queries "?k" + "v" (loss on the values and the final eos). distinct: every pair queried at most
    once, in random order (min(n_queries, n_pairs) queries; none can be answered from an earlier query's answer)."""
    ctx, pairs = haystack(n_pairs, length, rng)
    ids = tok.encode(ctx, bos=True)
    mask = [0] * len(ids)
    queries = rng.sample(pairs, min(n_queries, n_pairs)) if distinct else [rng.choice(pairs) for _ in range(n_queries)]
    for k, v in queries:
        ids, mask = ids + tok.encode(f"?{k}") + tok.encode(v), mask + [0, 0, 1]
    return SeqExample(ids + [tok.eos_id], mask + [1])


def copy_sequence(tok: CharTokenizer, rng: random.Random, max_len: int) -> SeqExample:
    """Auxiliary copy task: bos + s + s for a random string s of 4..max_len key/value characters, loss on the second
    copy from its second token on (its first token is unpredictable). Predicting s[i] there needs the induction step
    itself (find the earlier s[i-1], copy the token after it) with a target on every position, so the circuit that
    retrieval needs forms from dense supervision (probed at 64 sequences per step: it forms in 300-400 steps)."""
    n = rng.randint(4, max_len)
    seg = tok.encode("".join(rng.choice(KEYS + VALUES) for _ in range(n)))
    return SeqExample([tok.bos_id] + seg + seg, [0] * (n + 2) + [1] * (n - 1))


def eval_batch(tok: CharTokenizer, n_pairs: int, length: int, n: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
    """(n, T) ids of bos + context + "?k" + "v" (equal lengths) and the answers."""
    rows, answers = [], []
    for _ in range(n):
        ctx, pairs = haystack(n_pairs, length, rng)
        k, v = rng.choice(pairs)
        rows.append(tok.encode(ctx + f"?{k}{v}", bos=True))
        answers.append(v)
    t = min(len(r) for r in rows)
    assert all(len(r) == t for r in rows), "haystack lengths differ"
    return torch.tensor(rows, dtype=torch.long), answers


# ----------------------------------------------------------------------------------------------------------------
# decoding through a backend


def sparse_ctx(method: str, bs: int, gates: SeerGates | None = None, gen: torch.Generator | None = None, rectify_every: int = 0) -> AttnContext | None:
    """The AttnContext of a method at FRAC kept: dense (None), seer, quest (= ReSA without rectification), oracle, random."""
    if method == "dense":
        return None
    if method == "seer":
        assert gates is not None and gates.cfg.block_size == bs
        return seer_context(gates, budget=FRAC)
    ctx = resa_context(budget=FRAC, block_size=bs, rectify_every=rectify_every)
    if method in ("oracle", "random"):
        ctx.options.update(select=method, generator=gen)
    return ctx


@torch.no_grad()
def prefill(model: Transformer, ids: torch.Tensor, n_prefix: int, chunk: int = 1024) -> tuple[KVCache, torch.Tensor]:
    """Dense prefill of ids[:, :n_prefix] in chunks; returns the cache (room for all of ids) and log p at the last slot."""
    cache = model.make_cache(ids.shape[0], ids.shape[1])
    for lo in range(0, n_prefix, chunk):
        out = model(ids[:, lo : min(n_prefix, lo + chunk)], cache=cache, compute_logits=False)
    return cache, torch.log_softmax(model.lm_logits(out.hidden[:, -1]).float(), -1)


@torch.no_grad()
def decode_forced(model: Transformer, cache: KVCache, first: torch.Tensor, ids: torch.Tensor, n_prefix: int, attn: AttnContext | None) -> torch.Tensor:
    """From a prefilled cache (rewound to n_prefix, extras cleared), feed ids[:, n_prefix:-1] one token per step through
    `decode_forward` (the generate step, with rectification). Returns log p of every next token (B, T - n_prefix, V)."""
    cache.rewind(n_prefix)
    cache.extras = {}
    b = ids.shape[0]
    logps = [first]
    toks = ids[:, n_prefix:]
    pos = torch.full((b,), n_prefix, dtype=torch.long)
    for step in range(toks.shape[1] - 1):
        hidden = decode_forward(model, cache, toks, step, pos, attn)  # (B, C)
        logps.append(torch.log_softmax(model.lm_logits(hidden).float(), -1))
        pos = pos + 1
    return torch.stack(logps, 1)


@torch.no_grad()
def decode_forced_per_step(model: Transformer, cache: KVCache, first: torch.Tensor, ids: torch.Tensor, n_prefix: int, attn: AttnContext) -> torch.Tensor:
    """As `decode_forced`, but every step's keys and values are re-encoded densely right after its sparse pass (the
    cache always holds dense entries): each step's log p carries only that step's own selection error, none carried
    in the cache. It is the floor that rectification (which repairs only the cache) can approach: if sparse-only
    decoding is no worse than this, there is no accumulated error to bound. (B, T - n_prefix, V)."""
    cache.rewind(n_prefix)
    cache.extras = {}
    b = ids.shape[0]
    logps = [first]
    toks = ids[:, n_prefix:]
    pos = torch.full((b,), n_prefix, dtype=torch.long)
    dense = AttnContext(backend=attn.backend, options={**attn.options, "rectify_every": 0, "dense": True})
    sparse = AttnContext(backend=attn.backend, options={**attn.options, "rectify_every": 0})
    for step in range(toks.shape[1] - 1):
        hidden = decode_forward(model, cache, toks, step, pos, sparse)  # (B, C) through the sparse step
        logps.append(torch.log_softmax(model.lm_logits(hidden).float(), -1))
        cache.rewind(cache.length - 1)
        decode_forward(model, cache, toks, step, pos, dense)  # overwrite this step's entries with dense ones
        pos = pos + 1
    return torch.stack(logps, 1)


def forced_logprobs(model: Transformer, ids: torch.Tensor, n_prefix: int, attn: AttnContext | None) -> torch.Tensor:
    """Dense prefill of ids[:, :n_prefix], then teacher-forced decoding of the rest through `attn` (B, T - n_prefix, V)."""
    cache, first = prefill(model, ids, n_prefix)
    return decode_forced(model, cache, first, ids, n_prefix, attn)


def kl_rows(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(ref || other) per row and position (B, T); ref, other (B, T, V) log-probs."""
    return (ref.exp() * (ref - other)).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# recall


def recall_at_query(model: Transformer, gates: dict[int, list[SeerGates]], ids: torch.Tensor, blocks: list[int], gen: torch.Generator) -> dict:
    """Mean attention recall at the last position of ids (B, T) at FRAC kept: {method: {bs: [per gate seed]}}."""
    cap = capture_qk(model, ids)
    t = ids.shape[1] - 1
    out: dict[str, dict[int, list[float]]] = {m: {bs: [] for bs in blocks} for m in METHODS}
    for bs in blocks:
        nc = t // bs
        kk = n_keep(FRAC, nc, bs, 1)
        per_seed: dict[str, list[list[float]]] = {m: [[] for _ in gates[bs]] for m in METHODS}
        for layer, (q, k, _) in sorted(cap.items()):
            b, hq, _, d = q.shape
            hkv = k.shape[1]
            g = hq // hkv
            qt = q[:, :, t : t + 1]  # (B, H_q, 1, D)
            s = torch.matmul(qt.reshape(b, hkv, g, d), k[:, :, : t + 1].transpose(-1, -2)) / math.sqrt(d)  # (B, H_kv, G, t+1)
            probs = torch.softmax(s, -1)
            mass = probs[..., : nc * bs].reshape(b, hkv, g, nc, bs).sum(-1)  # (B, H_kv, G, nc)
            local = probs[..., nc * bs :].sum(-1)  # (B, H_kv, G)
            kmax, kmin, has = block_minmax(k[:, :, : nc * bs].reshape(b, hkv, nc, bs, d), torch.ones(b, nc, bs, dtype=torch.bool))
            fixed = {"quest": quest_scores(qt, kmax, kmin, has), "oracle": mass.sum(2)}
            for i, gs in enumerate(gates[bs]):
                scores = dict(fixed, seer=gate_logits_dense(gs, cap, layer)[:, :, t, :nc], random=torch.rand(b, hkv, nc, generator=gen))
                for name in METHODS:
                    idx = scores[name].topk(kk, dim=-1).indices  # (B, H_kv, k)
                    kept = mass.gather(-1, idx[:, :, None, :].expand(b, hkv, g, kk)).sum(-1) + local  # (B, H_kv, G)
                    per_seed[name][i].append(float(kept.mean()))
        for name in METHODS:
            out[name][bs] = [float(np.mean(v)) for v in per_seed[name]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# run


def train_data(b: dict, tok: CharTokenizer, rng: random.Random) -> list[SeqExample]:
    """The training stream, consumed in order: `copy_steps` steps of copy sequences only (the induction step forms
    there, from dense targets), then retrieval sequences mixed with `aux_frac` copy sequences, their context length
    drawn up to `warm_len` for `warm_steps` steps and then up to `train_len[1]`."""
    data = []
    for i in range(b["steps"] * b["batch"]):
        step = i // b["batch"]
        if step < b["copy_steps"] or rng.random() < b["aux_frac"]:
            data.append(copy_sequence(tok, rng, b["aux_len"]))
            continue
        hi = b["warm_len"] if step < b["copy_steps"] + b["warm_steps"] else b["train_len"][1]
        length = rng.randint(b["train_len"][0], hi)
        n_pairs = rng.randint(b["pairs"][0], min(b["pairs"][1], max(b["pairs"][0], length // b["pair_spacing"])))
        data.append(query_sequence(tok, n_pairs, length, b["n_queries"], rng))
    return data


def long_data(b: dict, tok: CharTokenizer, rng: random.Random) -> list[SeqExample]:
    """The long-context phase's stream: per step `long_batch` retrieval sequences of one context length drawn from
    `long_lens` (the evaluation lengths; one length per step, so a batch pads nothing), `long_pairs` pairs each queried
    once (every target is a retrieval over the whole context)."""
    data = []
    for _ in range(b["long_steps"]):
        length = rng.choice(b["long_lens"])
        for _ in range(b["long_batch"]):
            n_pairs = rng.randint(*b["long_pairs"])
            data.append(query_sequence(tok, n_pairs, length, n_pairs, rng, distinct=True))
    return data


def build_model(b: dict, tok: CharTokenizer) -> Transformer:
    """The retrieval model of budget `b`, freshly initialised from the global torch RNG."""
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=b["dim"], n_layers=b["layers"], n_heads=4, n_kv_heads=2,
                                   head_dim=b["head_dim"], ffn_dim=2 * b["dim"], max_seq_len=8192, rope_theta=b["rope_theta"]))


def train_model(b: dict, tok: CharTokenizer, rng: random.Random, seed: int, ckpt_dir: Path | None = None
                ) -> tuple[Transformer, list[float], float]:
    """Train the retrieval model on `train_data` (one AdamW run, warm-up then cosine), then the long-context phase on
    `long_data` (a second, short AdamW run at the evaluation lengths). With `ckpt_dir` each phase checkpoints every
    `b['ckpt_every']` steps into `ckpt_dir/{main,long}` (model, optimizer, scheduler, RNG: `core.train`'s resume) and
    a rerun resumes from the last checkpoint with the numbers of an unbroken run (tested), so a training longer than a
    session is built from sessions."""
    t0 = time.time()
    data = train_data(b, tok, rng)
    model = build_model(b, tok)
    prog = progress(b["steps"] + b["long_steps"], "LM training steps (then gates and evaluation)")
    cfg = TrainConfig(steps=b["steps"], batch_size=b["batch"], lr=b["lr"], warmup_steps=max(1, b["steps"] // 20), seed=seed, shuffle=False)
    loss = _train_phase(model, data, cfg, ckpt_dir / "main" if ckpt_dir else None, b.get("ckpt_every", 0), prog, seed)
    if b["long_steps"]:
        cfg = TrainConfig(steps=b["long_steps"], batch_size=b["long_batch"], lr=b["long_lr"], warmup_steps=max(1, b["long_steps"] // 10),
                          seed=seed, shuffle=False)
        loss += _train_phase(model, long_data(b, tok, rng), cfg, ckpt_dir / "long" if ckpt_dir else None, b.get("ckpt_every", 0), prog, seed)
    prog.close()
    model.eval()
    return model, loss, time.time() - t0


def _train_phase(model: Transformer, data: list[SeqExample], cfg: TrainConfig, run_dir: Path | None, every: int, prog, seed: int) -> list[float]:
    """One `core.train` run; with `run_dir` checkpointed every `every` steps (and at the end) and resumed from there.
    Returns the training loss of every step (read back from the run's metrics.jsonl when checkpointed)."""
    if run_dir is None:
        res = train(model, data, cfg, callback=lambda step, row: prog.advance(seed=seed))
        return [r["loss/train"] for r in res.history]
    from dataclasses import replace as _replace

    from sherman.core import checkpoint

    if checkpoint.latest_checkpoint(run_dir) is None:
        seed_everything(cfg.seed)  # what a fresh train() does first (its resume path restores the checkpoint's RNG instead)
    train(model, data, _replace(cfg, out_dir=str(run_dir), resume=True, ckpt_every=every, keep_ckpts=1),
          callback=lambda step, row: prog.advance(seed=seed))
    rows: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: its step ran again after the resume
            continue
        rows[int(r["step"])] = float(r["loss/train"])  # steps re-run after a resume: the later row (the same value)
    return [rows[s] for s in sorted(rows)]


def resa_drift(model: Transformer, tok: CharTokenizer, b: dict, rng: random.Random) -> tuple[dict, int, int, int]:
    """ReSA drift: `resa_batch` sequences of a `resa_ctx`-token context then >= `resa_gen` teacher-forced decoded tokens
    (queries and their answers) through the quest step at FRAC kept, rectified every f in {none} + `rect` steps, plus the
    per-step floor and dense: `window_stats` of each. Returns (drift, prompt length, decoded tokens, block size)."""
    seqs = [query_sequence(tok, b["eval_pairs"], b["resa_ctx"], b["resa_gen"] // 3, rng) for _ in range(b["resa_batch"])]
    t_min = min(len(s.ids) for s in seqs)
    ids = torch.tensor([s.ids[:t_min] for s in seqs], dtype=torch.long)  # (B, T)
    mask = torch.tensor([s.mask[:t_min] for s in seqs], dtype=torch.bool)
    n_prefix = seqs[0].mask.index(1)  # context + the first query; everything after is decoded
    cache, first = prefill(model, ids, n_prefix)
    ref = decode_forced(model, cache, first, ids, n_prefix, None)
    tgt, tmask = ids[:, n_prefix:], mask[:, n_prefix:]
    rb = b["resa_block"]
    drift: dict[str, dict] = {}
    for f in [0] + b["rect"]:
        lp = decode_forced(model, cache, first, ids, n_prefix, resa_context(budget=FRAC, block_size=rb, rectify_every=f))
        kl = kl_rows(ref, lp)  # (B, G)
        nll = -lp.gather(-1, tgt[..., None]).squeeze(-1)  # (B, G)
        drift["none" if f == 0 else f"f={f}"] = window_stats(kl, nll, tmask, b["window"])
    lp = decode_forced_per_step(model, cache, first, ids, n_prefix, resa_context(budget=FRAC, block_size=rb, rectify_every=0))
    drift["per-step"] = window_stats(kl_rows(ref, lp), -lp.gather(-1, tgt[..., None]).squeeze(-1), tmask, b["window"])
    nll_ref = -ref.gather(-1, tgt[..., None]).squeeze(-1)
    drift["dense"] = window_stats(torch.zeros_like(nll_ref), nll_ref, tmask, b["window"])
    return drift, n_prefix, ids.shape[1] - n_prefix, rb


def gate_one(model: Transformer, tok: CharTokenizer, b: dict, bs: int, gs: int) -> tuple[SeerGates, list[float]]:
    """Seer gates for block size `bs`, gate seed `gs`, distilled on multi-query long sequences: (gates, KL per step)."""
    torch.manual_seed(100 + gs)
    g = SeerGates(SeerConfig.for_model(model, block_size=bs))
    grng = random.Random(1000 * bs + gs)

    def batches():
        while True:
            seqs = [query_sequence(tok, b["eval_pairs"], b["gate_len"], b["gate_len"] // 16, grng) for _ in range(b["gate_batch"])]
            t = min(len(s.ids) for s in seqs)
            yield torch.tensor([s.ids[:t] for s in seqs], dtype=torch.long)  # (B, T)

    return g, train_gates(model, g, batches(), SeerTrainConfig(steps=b["gate_steps"], lr=3e-3, warmup=5))


def eval_length(model: Transformer, gates: dict[int, list[SeerGates]], tok: CharTokenizer, b: dict, length: int, rng: random.Random,
                gen: torch.Generator) -> tuple[dict, dict]:
    """Attention recall and exact match at one context length for every method (dense prefill once per batch); draws
    its prompts from `rng` and random selection's recall scores from `gen`. Returns (recall {method: {bs: ...}}, em)."""
    ids, _ = eval_batch(tok, b["eval_pairs"], length, b["n_recall"], rng)
    parts = [recall_at_query(model, gates, ids[i : i + 2, :-1], b["blocks"], gen) for i in range(0, len(ids), 2)]
    recall = {m: {bs: np.mean([p[m][bs] for p in parts], axis=0).tolist() for bs in b["blocks"]} for m in METHODS}
    methods: list[tuple[str, AttnContext | None]] = [("dense", None)]
    for bs in b["blocks"]:
        for i, gs in enumerate(b["gate_seeds"]):
            methods.append((f"seer/bs{bs}/seed{gs}", sparse_ctx("seer", bs, gates=gates[bs][i])))
            methods.append((f"random/bs{bs}/seed{gs}", sparse_ctx("random", bs, gen=torch.Generator().manual_seed(gs))))
        methods += [(f"quest/bs{bs}", sparse_ctx("quest", bs)), (f"oracle/bs{bs}", sparse_ctx("oracle", bs))]
    hits: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(0, b["n_eval"], b["eval_batch"]):
        ids, _answers = eval_batch(tok, b["eval_pairs"], length, b["eval_batch"], rng)
        n_prefix = ids.shape[1] - 3  # "?", the key and the value are decoded through the backend
        cache, first = prefill(model, ids, n_prefix)
        for name, attn in methods:
            pred = decode_forced(model, cache, first, ids, n_prefix, attn)[:, -1].argmax(-1)  # (B,) predicted value
            hits[name].extend((pred == ids[:, -1]).float().tolist())
    return recall, {k: float(np.mean(v)) for k, v in hits.items()}


STAGE_FORMAT = 1
_STAGE_CODE: str | None = None


def stage_code_digest() -> str:
    """sha256 over the functions that compute a stage and the attention / model / train modules they run (computed once
    per process; this module's docstring and report code are not part of it, so a README-style edit keeps stages)."""
    global _STAGE_CODE
    if _STAGE_CODE is None:
        import sys

        from sherman.attention import resa, seer, sparse
        from sherman.core import attention, decoder, generate, kv_cache, linear, model, train

        fns = (haystack, query_sequence, copy_sequence, eval_batch, sparse_ctx, prefill, decode_forced, decode_forced_per_step, kl_rows,
               recall_at_query, train_data, long_data, build_model, train_model, _train_phase, gate_one, eval_length, resa_drift, window_stats)
        mods = {resa, seer, sparse, attention, decoder, generate, kv_cache, linear, model, train, sys.modules[CharTokenizer.__module__]}
        _STAGE_CODE = stages.source_digest(fns, mods)
    return _STAGE_CODE


def _rng_state(state) -> tuple:
    """A `random.Random` state from its JSON form (lists) or as given."""
    return (state[0], tuple(state[1]), state[2])


def run(budget: str, out_dir: Path, seed: int = 0, stage_dir: Path | None = None) -> dict:
    """The LM, each Seer gate, each evaluation length and the ReSA drift are stages (`experiments/stages.py`), stored
    under `stage_dir` (default `stage_root('sparse_decoding')`; none for the smoke budget) and reused when their key
    matches. The prompts of every stage come from one `random.Random(seed)` stream (and random selection's recall
    scores from one generator): each stage stores both states after it, and a reused stage restores them, so a staged,
    resumed run draws exactly what an unstaged one does (tested). A stage's key chains the key of the stage before it."""
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = stage_dir if stage_dir is not None else (None if budget == "smoke" else stages.stage_root("sparse_decoding"))
    base = Path(root) / budget / f"seed{seed}" if root is not None else None
    seed_everything(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tok = CharTokenizer(ALPHABET)
    t0 = time.time()
    cpu_s: dict[str, float] = {}  # CPU seconds per stage (reused stages at their stored cost: the idle-machine cost)

    def key(prev: str, **body) -> str:
        if base is None:
            return ""
        return stages.stage_key({"format": STAGE_FORMAT, "code": stage_code_digest(), "torch": torch.__version__, "budget": b,
                                 "seed": seed, "prev": prev, **body})

    def where(name: str, ext: str) -> Path | None:
        return base / f"{name}.{ext}" if base is not None else None

    # 0. the retrieval model (stage "lm")
    k_lm = key("", stage="lm")
    ckpt_dir = base / f"lm_ckpt_{k_lm[:16]}" if base is not None and b.get("ckpt_every") else None  # keyed: a stale one is never resumed

    def lm_compute() -> tuple[dict, dict]:
        if ckpt_dir is not None:
            for old in base.glob("lm_ckpt_*"):
                if old != ckpt_dir:
                    shutil.rmtree(old)
        model, loss, secs = train_model(b, tok, rng, seed, ckpt_dir)
        return model.state_dict(), {"train_loss": loss, "train_s": secs, "rng": rng.getstate()}

    state, extra, _ = stages.tensor_stage(where("lm", "safetensors"), k_lm, lm_compute, f"sparse_decoding LM seed {seed}")
    if ckpt_dir is not None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # the stage file holds the trained weights
    model = build_model(b, tok)
    model.load_state_dict(state)
    model.eval()
    rng.setstate(_rng_state(extra["rng"]))
    train_loss, train_s, cpu_s["lm"] = [float(x) for x in extra["train_loss"]], float(extra["train_s"]), float(extra["cpu_s"])
    print0(f"sparse_decoding: model ready ({train_s:.0f}s of training, final loss {train_loss[-1]:.3f})")

    # 1. Seer gates per block size and gate seed (one stage each; they draw from their own streams)
    gates: dict[int, list[SeerGates]] = {}
    gate_kl: dict[str, list[float]] = {}
    gate_keys = []
    cpu_s["gates"] = 0.0
    for bs in b["blocks"]:
        gates[bs] = []
        for gs in b["gate_seeds"]:
            def gate_compute(bs=bs, gs=gs) -> tuple[dict, dict]:
                g, kl = gate_one(model, tok, b, bs, gs)
                return g.state_dict(), {"kl": kl}

            k_g = key(k_lm, stage="gate", block=bs, gate_seed=gs)
            st, ex, _ = stages.tensor_stage(where(f"gate_bs{bs}_seed{gs}", "safetensors"), k_g, gate_compute, f"sparse_decoding gate bs {bs} seed {gs}")
            g = SeerGates(SeerConfig.for_model(model, block_size=bs))
            g.load_state_dict(st)
            gates[bs].append(g)
            gate_kl[f"bs{bs}/seed{gs}"] = [float(x) for x in ex["kl"]]
            gate_keys.append(k_g)
            cpu_s["gates"] += float(ex["cpu_s"])
    print0(f"sparse_decoding: {len(gate_kl)} Seer gates ready ({cpu_s['gates']:.0f}s CPU)")

    # 2-3. recall and exact match per context length (one stage each, chained: they share the prompt stream)
    recall: dict[int, dict] = {}
    em: dict[int, dict] = {}
    prev = stages.stage_key({"gates": gate_keys}) if base is not None else ""
    cpu_s["eval"] = 0.0
    for length in b["lens"]:
        def eval_compute(length=length) -> dict:
            rec, hits = eval_length(model, gates, tok, b, length, rng, gen)
            return {"recall": rec, "em": hits, "rng": rng.getstate(), "gen": gen.get_state().tolist()}

        prev = key(prev, stage="eval", length=length)
        r = stages.json_stage(where(f"eval_len{length}", "json"), prev, eval_compute, f"sparse_decoding eval length {length}")
        res = r["result"]
        recall[length] = {m: {int(bs): v for bs, v in d.items()} for m, d in res["recall"].items()}
        em[length] = res["em"]
        rng.setstate(_rng_state(res["rng"]))
        gen.set_state(torch.tensor(res["gen"], dtype=torch.uint8))
        cpu_s["eval"] += float(r["cpu_s"])
        print0(f"sparse_decoding: length {length}: dense EM {em[length]['dense']:.0%}, "
               + ", ".join(f"{m} {np.mean([v for k, v in em[length].items() if k.startswith(m)]):.0%}" for m in METHODS) + f" ({time.time() - t0:.0f}s)")

    # 4. ReSA drift over >= 1K decoded tokens (a stage)
    def resa_compute() -> dict:
        drift, n_prefix, n_gen, rb = resa_drift(model, tok, b, rng)
        return {"drift": drift, "n_prefix": n_prefix, "n_gen": n_gen, "block": rb}

    r = stages.json_stage(where("resa", "json"), key(prev, stage="resa"), resa_compute, "sparse_decoding ReSA drift")
    drift, n_prefix, n_gen, rb = r["result"]["drift"], r["result"]["n_prefix"], r["result"]["n_gen"], r["result"]["block"]
    cpu_s["resa"] = float(r["cpu_s"])
    c0 = time.process_time()
    speed = speed_ratio() if b["speed"] else None  # a timing: measured in every run, never stored
    cpu_s["speed"] = time.process_time() - c0
    gate_s, eval_s, resa_s = cpu_s["gates"], cpu_s["eval"], cpu_s["resa"]

    rows, pre = claims(b, em, recall, drift)
    plots = make_plots(out_dir, b, em, recall, drift)
    if speed is not None:
        # per repetition dense / sparse time (interleaved runs); the shared rule asks for 5x beyond the spread
        v = reaches(speed["speedups"], 5.0)
        if v.verdict == NOT_REPRODUCED and reaches(speed["speedups"], 2.0).verdict in (REPRODUCED, PARTLY):
            v = PARTLY
        rows.append({"claim": "block-sparse decode attention at 10% kept vs our dense path (16K tokens, 8/32 heads x 128)",
                     "paper": ">= 5x (issue target; ideal ~10x)",
                     "ours": f"{speed['speedup']:.1f}x median of {len(speed['speedups'])} interleaved repetitions ({speed['dense_ms']:.1f} ms -> "
                             f"{speed['sparse_ms']:.1f} ms; shared 2-core CPU)",
                     "verdict": str(v)})
    verdict = combine([r["verdict"] for r in rows])
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "name": "sparse_decoding",
        "claim": CLAIM,
        "verdict": verdict,
        "rows": rows,
        "plots": plots,
        "notes": (
            f"{n_params / 1e3:.0f}K-param model ({b['layers']} layers, width {b['dim']}, 4 query / 2 KV heads), {b['steps']} steps x batch "
            f"{b['batch']} on haystack retrieval ({b['pairs'][0]}-{b['pairs'][1]} pairs in {b['train_len'][0]}-{b['train_len'][1]} chars of filler "
            f"after {b['copy_steps']} steps of copy sequences only and {b['warm_steps']} curriculum steps up to {b['warm_len']}, "
            f"{b['n_queries']} queries per sequence, {b['aux_frac']:.0%} copy sequences; RoPE base {b['rope_theta']:g}, head width {b['head_dim']}), "
            f"then {b['long_steps']} long-context steps x {b['long_batch']} sequences at {b['long_lens']} tokens ({b['long_pairs'][0]}-"
            f"{b['long_pairs'][1]} pairs, each queried once, lr {b['long_lr']:g}) in {train_s:.0f}s, final train loss {train_loss[-1]:.3f}. Seer gates: block sizes {b['blocks']}, gate seeds "
            f"{b['gate_seeds']}, {b['gate_steps']} distillation steps x {b['gate_batch']} sequences of {b['gate_len']} tokens ({gate_s:.0f}s CPU). "
            f"Evaluation: {b['eval_pairs']} pairs in contexts of {b['lens']} tokens, {b['n_eval']} prompts per length for exact match, "
            f"{b['n_recall']} for recall; all sparse methods at {FRAC:.0%} of the complete blocks (at least 1) + the local block ({eval_s:.0f}s CPU). "
            f"ReSA: {b['resa_batch']} sequences, {n_prefix}-token prompt then {n_gen} decoded tokens, block {rb}, "
            f"windows of {b['window']} ({resa_s:.0f}s CPU). Preconditions: {pre}. Model seed {seed}, budget {budget}, total {time.time() - t0:.0f}s wall, "
            f"{sum(cpu_s.values()):.0f}s CPU ({', '.join(f'{k} {v:.0f}s' for k, v in cpu_s.items())})."
        ),
        "metrics": {"exact_match": {str(k): v for k, v in em.items()}, "recall": {str(k): {m: {str(bs): x for bs, x in d.items()} for m, d in v.items()}
                    for k, v in recall.items()}, "drift": drift, "gate_kl_first_last": {k: (v[0], v[-1]) for k, v in gate_kl.items()},
                    "speed": speed, "cpu_s": cpu_s, "train_loss": train_loss[:: max(1, len(train_loss) // 100)]},
    }
    return dump_results(result, out_dir)


def window_stats(kl: torch.Tensor, nll: torch.Tensor, mask: torch.Tensor, window: int) -> dict:
    """Per window of decoded positions: mean KL over all positions and over the answer positions (mask: the retrieved
    values), perplexity over the answer positions; plus the per-row mean KL of the first and the last `window` positions,
    over all positions and over the answers (for paired comparisons)."""
    g = kl.shape[1]
    starts = list(range(0, g, window))
    m = mask.float()

    def ans(lo: int, hi: int) -> torch.Tensor:  # (B,) mean KL over each row's answer positions in [lo, hi)
        return (kl[:, lo:hi] * m[:, lo:hi]).sum(1) / m[:, lo:hi].sum(1).clamp(min=1)

    kls = [float(kl[:, s : s + window].mean()) for s in starts]
    kl_ans = [float(ans(s, s + window).mean()) for s in starts]
    ppl = [float(math.exp(float((nll[:, s : s + window] * m[:, s : s + window]).sum() / m[:, s : s + window].sum().clamp(min=1)))) for s in starts]
    last = max(0, g - window)  # the last `window` positions (the last plotted window may be a short remainder)
    return {"start": starts, "kl": kls, "kl_answer": kl_ans, "ppl": ppl, "first_rows": kl[:, :window].mean(1).tolist(),
            "last_rows": kl[:, last:].mean(1).tolist(), "answer_first_rows": ans(0, window).tolist(), "answer_last_rows": ans(last, g).tolist()}


def _ms(x: list[float]) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def claims(b: dict, em: dict, recall: dict, drift: dict) -> tuple[list[dict], str]:
    """Verdict rows; returns (rows, precondition text)."""
    lens, blocks, seeds = b["lens"], b["blocks"], b["gate_seeds"]
    dense = {n: em[n]["dense"] for n in lens}
    learned = min(dense.values()) >= 0.5
    # the ReSA claim is measured at the answer positions (the retrieved values, the tokens the task scores): over all
    # positions the KL is dominated by the separators after each answer, whose error is the step's own selection (the
    # per-step floor equals sparse-only decoding there), which rectification cannot reach by design; both are reported
    A = "answer_"
    late_none = float(np.mean(drift["none"][A + "last_rows"]))
    n_seq = len(drift["none"][A + "last_rows"])
    k = t975(n_seq - 1) if n_seq >= 2 else 2.0  # the spread is the paired 95% t interval over sequences
    # rectification repairs only the cache, so it can remove at most the error carried there: sparse-only late KL minus
    # the per-step floor (every step sparse over a dense cache); the claim needs that carried part to be as large as
    # the reduction it asks of rectification
    late_step = float(np.mean(drift["per-step"][A + "last_rows"])) if "per-step" in drift else 0.0
    carried = (compare(drift["none"][A + "last_rows"], drift["per-step"][A + "last_rows"], DRIFT_MIN_REDUCTION * late_none, k=k)
               if "per-step" in drift else None)
    drifts = late_none > DRIFT_FLOOR and (carried is None or carried.verdict == REPRODUCED)
    pre = (f"dense exact match {', '.join(f'{n}: {dense[n]:.0%}' for n in lens)} (>= 50% at every length: {'ok' if learned else 'FAILED'}); "
           f"sparse-only late KL at the answers {late_none:.2g} (> {DRIFT_FLOOR:g}), of which carried in the cache (above the per-step floor "
           f"{late_step:.2g}) {late_none - late_step:+.2g} (>= {DRIFT_MIN_REDUCTION:.0%} of it beyond the spread): {'ok' if drifts else 'FAILED'}")
    d_mean = float(np.mean(list(dense.values())))

    def em_of(method: str, bs: int) -> list[float]:
        """Exact match averaged over lengths, per gate seed (one value for deterministic methods)."""
        if method in ("seer", "random"):
            return [float(np.mean([em[n][f"{method}/bs{bs}/seed{s}"] for n in lens])) for s in seeds]
        return [float(np.mean([em[n][f"{method}/bs{bs}"] for n in lens]))]

    def rec_of(method: str, bs: int) -> list[float]:
        return [float(np.mean([recall[n][method][bs][i] for n in lens])) for i in range(len(seeds))]

    rows = []
    big = max(blocks)
    s_big, q_big = _ms(em_of("seer", big)), em_of("quest", big)[0]
    table = "; ".join(f"bs {bs}: seer {_ms(em_of('seer', bs))[0]:.1%}±{_ms(em_of('seer', bs))[1]:.1%}, quest {em_of('quest', bs)[0]:.1%}, "
                      f"oracle {em_of('oracle', bs)[0]:.1%}, random {_ms(em_of('random', bs))[0]:.1%}" for bs in blocks)
    gap = d_mean - s_big[0]
    # non-inferiority: Seer's exact match is within LOSSLESS_TOL of dense beyond the spread over gate seeds (dense is
    # deterministic: one value, the same for every gate seed)
    n_gs = len(em_of("seer", big))
    lossless = compare([x + LOSSLESS_TOL for x in em_of("seer", big)], [d_mean] * n_gs, 0.0)
    near = compare([x + 3 * LOSSLESS_TOL for x in em_of("seer", big)], [d_mean] * n_gs, 0.0)
    above = compare(em_of("seer", big), [q_big] * n_gs, SEER_MIN_GAIN, fail_at=EM_CHANCE)  # Seer > Quest at the largest block
    v1 = REPRODUCED if lossless.verdict == REPRODUCED else PARTLY if REPRODUCED in (near.verdict, above.verdict) else NOT_REPRODUCED
    rows.append({"claim": f"Seer is near-lossless at {FRAC:.0%} kept with large blocks (exact match within {LOSSLESS_TOL:.0%} of dense, block {big})",
                 "paper": "near-lossless at a 4K-token budget, block 64 (SeerAttention-R Tab. 1)",
                 "ours": f"dense {d_mean:.1%} (mean over lengths {lens}); Seer block {big} below dense by {gap:+.1%} (2 s.e. over {n_gs} gate seeds "
                         f"{lossless.spread:.1%}); {table}", "verdict": v1 if learned else "not testable here"})
    gaps = {bs: (np.array(em_of("seer", bs)) - em_of("quest", bs)[0]) for bs in blocks}
    rgaps = {bs: (np.array(rec_of("seer", bs)) - np.array(rec_of("quest", bs))) for bs in blocks}
    small = min(blocks)
    grows = compare(gaps[big].tolist(), gaps[small].tolist(), SEER_MIN_GAIN, paired=False)  # ... by more than at the smallest
    v2 = NOT_TESTABLE if above.verdict == NOT_TESTABLE else combine([above, grows])  # both at chance: how the gap grows says nothing
    rows.append({"claim": "Seer beats Quest by more as blocks grow (exact match and attention recall, seer - quest)",
                 "paper": "gate advantage at block 64/128 (SeerAttention-R Sec. 4)",
                 "ours": "; ".join(f"bs {bs}: EM {_ms(gaps[bs].tolist())[0]:+.1%}±{_ms(gaps[bs].tolist())[1]:.1%}, recall "
                                   f"{_ms(rgaps[bs].tolist())[0]:+.3f} (seer {_ms(rec_of('seer', bs))[0]:.3f}, quest {rec_of('quest', bs)[0]:.3f}, "
                                   f"oracle {rec_of('oracle', bs)[0]:.3f}, random {_ms(rec_of('random', bs))[0]:.3f})" for bs in blocks),
                 "verdict": v2 if learned else "not testable here"})
    first_none = float(np.mean(drift["none"][A + "first_rows"]))
    accum = compare(drift["none"][A + "last_rows"], drift["none"][A + "first_rows"], 0.5 * first_none, k=k)  # last >= 1.5 x first window
    parts, bounded = [], []
    for f in b["rect"]:
        m, lo, hi = paired_ci(drift["none"][A + "last_rows"], drift[f"f={f}"][A + "last_rows"])  # paired over sequences, 95% t CI
        half = hi - m
        v = compare(drift[f"f={f}"][A + "last_rows"], drift["none"][A + "last_rows"], DRIFT_MIN_REDUCTION * late_none, higher_is_better=False, k=k)
        bounded.append(v.verdict)
        parts.append(f"f={f}: late KL {np.mean(drift[f'f={f}'][A + 'last_rows']):.3g} (none - f {m:+.3g} ± {half:.2g}: {v.verdict})")
    v3 = (REPRODUCED if accum.verdict == REPRODUCED and all(v == REPRODUCED for v in bounded) else
          PARTLY if any(v in (REPRODUCED, PARTLY) for v in bounded) else NOT_REPRODUCED)  # fmt: skip
    rows.append({"claim": "ReSA rectification bounds the drift that sparse-only decoding accumulates (KL to dense at the answers, last vs first window)",
                 "paper": "ReSA Fig. 3 / Tab. 2: rectification keeps long generations close to dense",
                 "ours": f"at the answers, none: KL first window {first_none:.3g} -> last {late_none:.3g} ({'accumulates' if accum.verdict == REPRODUCED else 'no clear accumulation'}); "
                         + (f"per-step floor (sparse step over a dense cache) last window {late_step:.3g}, so carried in the cache "
                            f"{late_none - late_step:+.3g} ± {carried.spread:.2g}; " if carried is not None else "")
                         + "; ".join(parts) + f"; answer ppl last window dense {drift['dense']['ppl'][-1]:.3f}, none {drift['none']['ppl'][-1]:.3f}, "
                         + ", ".join(f"f={f} {drift[f'f={f}']['ppl'][-1]:.3f}" for f in b["rect"])
                         + "; KL over all positions first -> last window: " + ", ".join(
                             f"{n} {np.mean(drift[n]['first_rows']):.3g} -> {np.mean(drift[n]['last_rows']):.3g}"
                             for n in ["none"] + [f"f={f}" for f in b["rect"]] + (["per-step"] if "per-step" in drift else [])),
                 "verdict": v3 if drifts else "not testable here"})
    return rows, pre


def make_plots(out_dir: Path, b: dict, em: dict, recall: dict, drift: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lens, blocks, seeds = b["lens"], b["blocks"], b["gate_seeds"]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.4))  # 2 x 2: each panel legible at the report's width
    ax = ax.ravel()
    for m in METHODS:
        ys, es = [], []
        for bs in blocks:
            keys = [f"{m}/bs{bs}/seed{s}" for s in seeds] if m in ("seer", "random") else [f"{m}/bs{bs}"]
            v = [np.mean([em[n][k] for n in lens]) for k in keys]
            ys.append(np.mean(v))
            es.append(np.std(v))
        ax[0].errorbar(blocks, ys, yerr=es, marker="o", label=m, capsize=3)
        ax[1].plot(blocks, [np.mean([np.mean(recall[n][m][bs]) for n in lens]) for bs in blocks], marker="o", label=m)
    ax[0].axhline(np.mean([em[n]["dense"] for n in lens]), color="k", ls="--", label="dense")
    ax[0].set(xscale="log", xticks=blocks, xticklabels=[str(x) for x in blocks], xlabel="block size", ylabel="exact match (mean over lengths)",
              ylim=(-0.02, 1.02), title=f"retrieval at {FRAC:.0%} kept")
    ax[1].set(xscale="log", xticks=blocks, xticklabels=[str(x) for x in blocks], xlabel="block size", ylabel="attention recall", title="recall at the answer slot")
    for a in ax[:2]:
        a.legend(fontsize=7)
    for k in ["none"] + [f"f={f}" for f in b["rect"]] + (["per-step"] if "per-step" in drift else []):
        ax[2].plot(drift[k]["start"], drift[k]["kl_answer"], marker=".", label=k)
        ax[3].plot(drift[k]["start"], drift[k]["ppl"], marker=".", label=k)
    ax[3].plot(drift["dense"]["start"], drift["dense"]["ppl"], color="k", ls="--", label="dense")
    ax[2].set(xlabel="decoded position", ylabel="KL(dense || sparse) at the answers", title=f"ReSA drift, block {b['resa_block']}, {FRAC:.0%} kept")
    ax[3].set(xlabel="decoded position", ylabel="answer perplexity", title="perplexity vs position")
    ax[2].legend(fontsize=7)
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "sparse_decoding.png", dpi=110)
    plt.close(fig)
    return ["sparse_decoding.png"]


def speed_ratio(reps: int = 5) -> dict:
    """Dense decode attention vs the quest step at 10% kept, 16K tokens, 8 KV / 32 query heads x 128: median ms of each and
    the per-repetition speedups (for the verdict's spread)."""
    from sherman.attention.dense import decode_attention
    from sherman.attention.sparse import quest_attention

    t, hkv, hq, d = 16384, 8, 32, 128
    cache = KVCache.allocate(1, 1, hkv, t, d)
    cache.k[0].normal_()
    cache.v[0].normal_()
    cache.reserve(t)
    q = torch.randn(1, hq, 1, d)
    ctx = AttnContext(backend="quest", q_start=t - 1, key_valid=cache.valid, cache=cache, options={"budget": 0.1, "block_size": 64})

    def once(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def run_dense():
        return decode_attention(q, cache.k[0], cache.v[0], None)

    def run_sparse():
        return quest_attention(q, cache.k[0], cache.v[0], ctx)

    run_dense(), run_sparse()  # warm-up
    pairs = [(once(run_dense), once(run_sparse)) for _ in range(reps)]  # interleaved, so a slow phase of the VM hits both
    dense = 1e3 * sorted(d for d, _ in pairs)[reps // 2]
    sparse = 1e3 * sorted(x for _, x in pairs)[reps // 2]
    return {"dense_ms": dense, "sparse_ms": sparse, "speedup": dense / sparse, "speedups": [d / x for d, x in pairs]}

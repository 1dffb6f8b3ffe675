"""Sparse decoding on long-context key-value retrieval: SeerAttention-R gate vs Quest scoring, and ReSA rectification.

A small Sherman model is trained by this experiment on `sherman.tasks.kv_retrieval` (1-character keys and values,
written without a separator: "k3,x7,...?x" -> "7"; training sequences append extra "?key value" queries about the
same context so that every sequence carries many retrieval targets; evaluation uses the task's own single-query
prompts). What makes retrieval learnable in ~1.5 minutes on one CPU thread (measured; before these choices the quick
model stayed at ~16% dense exact match, i.e. it only learned to copy *some* value from the context):

- no key-value separator (`sep=""`): the lookup is then a plain induction step (find the earlier occurrence of the
  queried key, copy the next token). With "k:v" it needs a 1-back and a 2-back positional head at once and did
  not leave the copy plateau in 3000 steps at any lr we tried (1e-3 .. 1e-2), width 128 or 3 layers;
- 30% auxiliary "x y x" sequences (`echo_sequence`), which reward a previous-token head directly; without them
  the induction head forms only after a long, seed-dependent plateau (once in ~2000 steps, mostly not at all);
- a curriculum: the first `warm_steps` steps draw 4-16 pairs, then 4-32 (data consumed in order, shuffle=False);
- answers decoded through the sparse backend: the context is prefilled densely and the query + answer are fed by
  decode steps (`exact_match`), since SeerAttention-R / ReSA sparsify decoding only (a 1-token answer read from the
  dense prefill would make every backend score the same).

Then, on the frozen model:

1. Seer gates are self-distilled (SeerAttention-R Sec. 3) on multi-query retrieval sequences (the paper distils on
   the model's own decoded text; here most decoded positions are queries; distilling on single-query prompts,
   where nearly every position is context, gave 78.0% instead of 81.8% exact match at 10%, seed 0).
2. Attention recall at the answer position: the share of each query head's true attention mass that falls in the
   blocks a method keeps (plus the always-attended local block), for budgets {5, 10, 20}% of the complete blocks:
   Seer gate, Quest scores (ReSA's group-mean form), oracle (true block mass), random, local window.
3. Exact match (greedy) over a depth x length grid, dense vs Seer vs Quest at each budget.
4. Teacher-forced perplexity drift: NLL of the retrieved values of long multi-query sequences (every query after
   the prompt decoded token by token through the sparse backend), relative to dense.
5. Divergence of sparse decoding from dense, token by token (teacher forced, KL(dense || sparse) of the
   next-token distribution), without rectification and with ReSA rectification every f in {16, 32, 64} tokens.
6. Decode-attention speed at 16K tokens, 8 KV / 32 query heads x 128 (our dense path vs the sparse step at 10%).

Teacher forcing goes through `core.generate.decode_forward`, the same step (and rectification) `generate` uses.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from sherman.attention.resa import resa_context
from sherman.attention.seer import SeerConfig, SeerGates, SeerTrainConfig, capture_qk, gate_logits_dense, seer_context, train_gates
from sherman.attention.sparse import block_minmax, n_keep, quest_scores
from sherman.core.attention import AttnContext
from sherman.core.common import seed_everything
from sherman.core.generate import decode_forward
from sherman.core.model import ModelConfig, Transformer
from sherman.core.progress import progress
from sherman.core.tokenizer import CharTokenizer
from sherman.core.train import SeqExample, TrainConfig, train
from sherman.experiments.runner import dump_results
from sherman.tasks.kv_retrieval import KVRetrieval

CLAIM = (
    "SeerAttention-R (arXiv 2506.08889): a self-distilled block gate keeps near-lossless accuracy at a small token budget; "
    "ReSA (arXiv 2506.04108): periodic dense rectification bounds the error accumulation of sparse decoding, "
    "and block-sparse decode is several times faster than dense at 10% kept."
)

BUDGETS = {
    "smoke": dict(dim=32, layers=2, steps=8, batch=8, lr=3e-3, train_pairs=(4, 8), n_queries=4, aux_frac=0.3, aux_len=30, warm_pairs=6,
                  warm_steps=4, block=4, gate_steps=4, gate_batch=2, grid_pairs=[8], depths=[0.0, 1.0], n_eval=4, n_recall=4, forced_pairs=8,
                  forced_queries=8, forced_batch=2, rect=[4, 8], speed=False),
    "quick": dict(dim=64, layers=2, steps=1500, batch=32, lr=5e-3, train_pairs=(4, 32), n_queries=32, aux_frac=0.3, aux_len=30, warm_pairs=16,
                  warm_steps=800, block=4, gate_steps=400, gate_batch=8, grid_pairs=[8, 16, 32], depths=[0.0, 0.5, 1.0], n_eval=64, n_recall=48,
                  forced_pairs=32, forced_queries=32, forced_batch=8, rect=[16, 32, 64], speed=True),
    "full": dict(dim=128, layers=4, steps=4000, batch=32, lr=3e-3, train_pairs=(4, 32), n_queries=12, aux_frac=0.3, aux_len=30, warm_pairs=16,
                 warm_steps=1500, block=4, gate_steps=300, gate_batch=8, grid_pairs=[8, 16, 24, 32], depths=[0.0, 0.25, 0.5, 0.75, 1.0], n_eval=64,
                 n_recall=128, forced_pairs=32, forced_queries=96, forced_batch=8, rect=[16, 32, 64], speed=True),
}
FRACS = [0.05, 0.10, 0.20]
TASK = dict(key_len=1, value_len=1, sep="", charset="abcdefghijklmnopqrstuvwxyz0123456789")


def make_task(n_pairs: int, depth: float | None = None) -> KVRetrieval:
    return KVRetrieval(n_pairs=n_pairs, depth=depth, **TASK)


def train_sequence(tok: CharTokenizer, ex, rng: random.Random, n_queries: int) -> SeqExample:
    """Prompt + answer, then n_queries - 1 extra '?key:value' queries on the same context; loss on the values + eos."""
    kl, sep = TASK["key_len"], TASK.get("sep", ":")
    pairs = [(p[:kl], p[kl + len(sep) :]) for p in ex.prompt.split("?")[0].split(",")]
    ids = tok.encode(ex.prompt, bos=True)
    mask = [0] * len(ids)
    ans = tok.encode(ex.answer)
    ids, mask = ids + ans, mask + [1] * len(ans)
    for _ in range(n_queries - 1):
        k, v = rng.choice(pairs)
        q, a = tok.encode(f"?{k}{sep}"), tok.encode(v)
        ids, mask = ids + q + a, mask + [0] * len(q) + [1] * len(a)
    return SeqExample(ids + [tok.eos_id], mask + [1])


def echo_sequence(tok: CharTokenizer, rng: random.Random, n_triples: int) -> SeqExample:
    """Auxiliary 'x y x' triples of random task characters, loss on each third token: it can only be predicted by
    attending to the previous token, so it directly rewards the previous-token head that retrieval needs."""
    ids, mask = [tok.bos_id], [0]
    for _ in range(n_triples):
        x, y = rng.choice(TASK["charset"]), rng.choice(TASK["charset"])
        ids, mask = ids + tok.encode(x + y + x), mask + [0, 0, 1]
    return SeqExample(ids, mask)


def full_sequences(tok: CharTokenizer, n_pairs: int, n: int, rng: random.Random) -> torch.Tensor:
    """(n, T) ids of prompt + answer, all of the same length (fixed n_pairs, fixed key/value lengths)."""
    task = make_task(n_pairs)
    seqs = [tok.encode(ex.prompt, bos=True) + tok.encode(ex.answer) for ex in (task.sample(rng) for _ in range(n))]
    return torch.tensor(seqs, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# measurements


def recall_at_query(model: Transformer, gates: SeerGates, ids: torch.Tensor, bs: int, fracs: list[float], gen: torch.Generator) -> dict:
    """Mean attention recall at the last position of each row of ids (B, T), per method and kept fraction."""
    cap = capture_qk(model, ids)
    t = ids.shape[1] - 1
    nc = t // bs
    out: dict[str, dict[float, list[float]]] = {}
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
        scores = {
            "seer": gate_logits_dense(gates, cap, layer)[:, :, t, :nc],
            "quest": quest_scores(qt, kmax, kmin, has),
            "oracle": mass.sum(2),
            "random": torch.rand(b, hkv, nc, generator=gen),
            "local": torch.arange(nc, dtype=torch.float32).expand(b, hkv, nc),
        }
        for frac in fracs:
            kk = n_keep(frac, nc, bs, 1)
            for name, sc in scores.items():
                idx = sc.topk(kk, dim=-1).indices  # (B, H_kv, k)
                kept = mass.gather(-1, idx[:, :, None, :].expand(b, hkv, g, kk)).sum(-1) + local  # (B, H_kv, G)
                out.setdefault(name, {}).setdefault(frac, []).append(float(kept.mean()))
    return {name: {f: sum(v) / len(v) for f, v in d.items()} for name, d in out.items()}


def exact_match(model, tok, task: KVRetrieval, examples, attn) -> float:
    """Greedy exact match with the query decoded through `attn`: the context (everything before '?') is prefilled
    densely, then '?', the key and the value are fed one token per step by `decode_forward` (the generate step), as
    when a reasoning model asks itself a question late in a long generation. Sparse backends act on decode steps only
    (SeerAttention-R and ReSA prefill densely), so prefilling the whole prompt would leave them nothing to select.
    Teacher-forced argmax over the value tokens equals greedy decoding whenever either is all correct."""
    ids = torch.tensor([tok.encode(ex.prompt, bos=True) + tok.encode(ex.answer) for ex in examples], dtype=torch.long)  # (B, T)
    n_prefix = tok.encode(examples[0].prompt, bos=True).index(tok.encode("?")[0])
    n_val = len(tok.encode(examples[0].answer))
    pred = forced_logprobs(model, ids, n_prefix, attn)[:, -n_val:].argmax(-1)  # (B, n_val): predictions of the value tokens
    return sum(task.reward(ex, tok.decode(p.tolist())) for ex, p in zip(examples, pred)) / len(examples)


@torch.no_grad()
def forced_logprobs(model: Transformer, ids: torch.Tensor, n_prefix: int, attn: AttnContext | None) -> torch.Tensor:
    """Teacher-forced decoding: prefill ids[:, :n_prefix], then feed ids[:, n_prefix:] one token per step through
    `decode_forward` (the generate step, with rectification). Returns log p of every next token (B, T - n_prefix, V)."""
    b, t = ids.shape
    cache = model.make_cache(b, t)
    out = model(ids[:, :n_prefix], cache=cache, attn=attn, compute_logits=False)
    logps = [torch.log_softmax(model.lm_logits(out.hidden[:, -1]).float(), -1)]
    toks = ids[:, n_prefix:]
    pos = torch.full((b,), n_prefix, dtype=torch.long)
    for step in range(toks.shape[1] - 1):
        hidden = decode_forward(model, cache, toks, step, pos, attn)  # (B, C)
        logps.append(torch.log_softmax(model.lm_logits(hidden).float(), -1))
        pos = pos + 1
    return torch.stack(logps, 1)


def nll(logps: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean -log p(target) over masked positions; logps (B, T, V), targets, mask (B, T)."""
    lp = logps.gather(-1, targets[..., None]).squeeze(-1)
    return float(-(lp * mask).sum() / mask.sum().clamp(min=1))


def kl_curve(ref: torch.Tensor, other: torch.Tensor) -> list[float]:
    """KL(ref || other) per position, averaged over rows; ref, other (B, T, V) log-probs."""
    return (ref.exp() * (ref - other)).sum(-1).mean(0).tolist()


def speed_ratio(reps: int = 5) -> dict:
    """Dense decode attention vs the quest step at 10% kept, 16K tokens, 8 KV / 32 query heads x 128 (ms, one run)."""
    from sherman.attention.dense import decode_attention
    from sherman.attention.sparse import quest_attention
    from sherman.core.kv_cache import KVCache

    t, hkv, hq, d = 16384, 8, 32, 128
    cache = KVCache.allocate(1, 1, hkv, t, d)
    cache.k[0].normal_()
    cache.v[0].normal_()
    cache.reserve(t)
    q = torch.randn(1, hq, 1, d)
    ctx = AttnContext(backend="quest", q_start=t - 1, key_valid=cache.valid, cache=cache, options={"budget": 0.1, "block_size": 64})

    def ms(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1e3 * sorted(ts)[len(ts) // 2]

    dense = ms(lambda: decode_attention(q, cache.k[0], cache.v[0], None))
    sparse = ms(lambda: quest_attention(q, cache.k[0], cache.v[0], ctx))
    return {"dense_ms": dense, "sparse_ms": sparse, "speedup": dense / sparse}


# ----------------------------------------------------------------------------------------------------------------


def run(budget: str, out_dir: Path, seed: int = 0) -> dict:
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    rng = random.Random(seed)
    tok = CharTokenizer(make_task(4).alphabet())
    bs = b["block"]
    t0 = time.time()

    # 1. the model
    data = []
    lo, hi = b["train_pairs"]
    for i in range(b["steps"] * b["batch"]):  # consumed in this order (shuffle=False): the curriculum comes first
        if rng.random() < b["aux_frac"]:
            data.append(echo_sequence(tok, rng, b["aux_len"]))
        else:
            n_pairs = rng.randint(lo, b["warm_pairs"]) if i < b["warm_steps"] * b["batch"] else rng.randint(lo, hi)
            data.append(train_sequence(tok, make_task(n_pairs).sample(rng), rng, b["n_queries"]))
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=b["dim"], n_layers=b["layers"], n_heads=4, n_kv_heads=2, ffn_dim=2 * b["dim"]))
    prog = progress(b["steps"], "LM training steps (then gates and evaluation)")
    res = train(model, data, TrainConfig(steps=b["steps"], batch_size=b["batch"], lr=b["lr"], warmup_steps=max(1, b["steps"] // 20), seed=seed,
                                      shuffle=False), callback=lambda step, row: prog.advance(seed=seed))
    prog.close()
    model.eval()
    train_s = time.time() - t0

    # 2. Seer gates, self-distilled on the frozen model
    gates = SeerGates(SeerConfig.for_model(model, block_size=bs))
    grng = random.Random(seed + 1)

    def gate_batches():  # multi-query sequences: the positions a sparse decoder serves are mostly retrieval queries
        while True:
            n_pairs = grng.randint(lo, hi)
            seqs = [train_sequence(tok, make_task(n_pairs).sample(grng), grng, b["n_queries"]) for _ in range(b["gate_batch"])]
            yield torch.tensor([q.ids for q in seqs], dtype=torch.long)  # (B, T), equal lengths (1-char keys and values)

    kl_hist = train_gates(model, gates, gate_batches(), SeerTrainConfig(steps=b["gate_steps"], lr=3e-3, warmup=2))

    # 3. attention recall at the answer position
    gen = torch.Generator().manual_seed(seed)
    rec_rows = []
    for n_pairs in b["grid_pairs"]:
        ids = full_sequences(tok, n_pairs, b["n_recall"], rng)[:, :-TASK["value_len"]]  # prompt only; last slot = the queried key
        rec_rows.append(recall_at_query(model, gates, ids, bs, FRACS, gen))
    recall = {m: {f: sum(r[m][f] for r in rec_rows) / len(rec_rows) for f in FRACS} for m in rec_rows[0]}

    # 4. exact match over depth x length
    em: dict[str, dict] = {"dense": {}}
    for frac in FRACS:
        em[f"seer@{frac:.2f}"], em[f"quest@{frac:.2f}"] = {}, {}
    for n_pairs in b["grid_pairs"]:
        for depth in b["depths"]:
            task = make_task(n_pairs, depth)
            exs = [task.sample(rng) for _ in range(b["n_eval"])]
            cell = f"{n_pairs}x{depth:.2f}"
            em["dense"][cell] = exact_match(model, tok, task, exs, None)
            for frac in FRACS:
                em[f"seer@{frac:.2f}"][cell] = exact_match(model, tok, task, exs, seer_context(gates, budget=frac))
                em[f"quest@{frac:.2f}"][cell] = exact_match(model, tok, task, exs, resa_context(budget=frac, block_size=bs, rectify_every=0))
    em_mean = {k: sum(v.values()) / len(v) for k, v in em.items()}

    # 5-6. teacher-forced perplexity drift and token-by-token divergence with / without rectification
    seqs = [train_sequence(tok, make_task(b["forced_pairs"]).sample(rng), rng, b["forced_queries"]) for _ in range(b["forced_batch"])]
    ids = torch.tensor([q.ids for q in seqs], dtype=torch.long)  # (B, T): context, then forced_queries '?k:v' queries
    mask = torch.tensor([q.mask for q in seqs], dtype=torch.bool)
    n_prefix = seqs[0].mask.index(1)  # the prompt (context + first query); every later token is teacher forced
    targets, tmask = ids[:, n_prefix:], mask[:, n_prefix:]  # NLL over the retrieved values (+ eos) only
    ref = forced_logprobs(model, ids, n_prefix, None)
    ppl = {"dense": math.exp(nll(ref, targets, tmask))}
    for frac in FRACS:
        ppl[f"seer@{frac:.2f}"] = math.exp(nll(forced_logprobs(model, ids, n_prefix, seer_context(gates, budget=frac)), targets, tmask))
        quest = resa_context(budget=frac, block_size=bs, rectify_every=0)
        ppl[f"quest@{frac:.2f}"] = math.exp(nll(forced_logprobs(model, ids, n_prefix, quest), targets, tmask))
    div_frac = 0.10
    curves = {"none": kl_curve(ref, forced_logprobs(model, ids, n_prefix, resa_context(budget=div_frac, block_size=bs, rectify_every=0)))}
    for f in b["rect"]:
        curves[f"f={f}"] = kl_curve(ref, forced_logprobs(model, ids, n_prefix, resa_context(budget=div_frac, block_size=bs, rectify_every=f)))
    n = len(curves["none"])
    last = {k: sum(v[n // 2 :]) / max(1, n - n // 2) for k, v in curves.items()}
    first = {k: sum(v[: n // 2]) / max(1, n // 2) for k, v in curves.items()}

    speed = speed_ratio() if b["speed"] else None

    # plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for m, d in recall.items():
        ax[0].plot([100 * f for f in FRACS], [d[f] for f in FRACS], marker="o", label=m)
    ax[0].set(xlabel="kept blocks (%)", ylabel="attention recall at the answer slot", title="block selection recall")
    ax[0].legend()
    ax[1].axhline(em_mean["dense"], color="k", ls="--", label="dense")
    for m in ("seer", "quest"):
        ax[1].plot([100 * f for f in FRACS], [em_mean[f"{m}@{f:.2f}"] for f in FRACS], marker="o", label=m)
    ax[1].set(xlabel="kept blocks (%)", ylabel="exact match (grid mean)", ylim=(-0.02, 1.02), title="retrieval accuracy")
    ax[1].legend()
    for k, v in curves.items():
        w = max(1, len(v) // 30)
        sm = [sum(v[i : i + w]) / len(v[i : i + w]) for i in range(0, len(v), w)]
        ax[2].plot([i * w for i in range(len(sm))], sm, label=k)
    ax[2].set(xlabel="decode step (teacher forced)", ylabel="KL(dense || sparse)", title=f"divergence, quest {div_frac:.0%} kept")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "sparse_decoding.png", dpi=110)
    plt.close(fig)

    # verdicts
    d_em, s_em, q_em = em_mean["dense"], em_mean["seer@0.10"], em_mean["quest@0.10"]
    learned = d_em >= 0.5
    if not learned:
        v1 = "not reproduced"
    else:
        v1 = "reproduced" if s_em >= d_em - 0.05 else "partly" if s_em >= q_em or recall["seer"][0.10] >= recall["quest"][0.10] else "not reproduced"
    rect_ok = [last[f"f={f}"] < last["none"] for f in b["rect"]]
    grows = last["none"] > first["none"]  # error accumulation without rectification
    v2 = "reproduced" if all(rect_ok) and grows else "partly" if any(rect_ok) else "not reproduced"
    rows = [
        {
            "claim": "Seer gate keeps near-lossless retrieval at a small budget (exact match, 10% of blocks)",
            "paper": "near-lossless at 4K-token budget on AIME (SeerAttention-R Tab. 1)",
            "ours": f"dense {d_em:.1%}; seer {s_em:.1%}; quest {q_em:.1%} (5%: seer {em_mean['seer@0.05']:.1%}, quest {em_mean['quest@0.05']:.1%}; "
            f"20%: seer {em_mean['seer@0.20']:.1%}, quest {em_mean['quest@0.20']:.1%})"
            + ("" if learned else "; the model did not learn retrieval (dense < 50%), so the claim is not testable at this budget"),
            "verdict": v1,
        },
        {
            "claim": "attention recall of the selected blocks at 10% (seer / quest / oracle / random / local)",
            "paper": "gate recall close to oracle (SeerAttention-R Sec. 4)",
            "ours": " / ".join(f"{recall[m][0.10]:.2f}" for m in ("seer", "quest", "oracle", "random", "local")),
            "verdict": "reproduced" if recall["seer"][0.10] >= recall["quest"][0.10] and recall["seer"][0.10] > recall["random"][0.10] else "partly",
        },
        {
            "claim": "dense rectification bounds the error accumulation of sparse decoding (KL to dense, 2nd half of steps)",
            "paper": "ReSA Fig. 3: rectification keeps sparse decoding close to dense",
            "ours": "none {:.3g}; ".format(last["none"]) + "; ".join(f"f={f}: {last[f'f={f}']:.3g}" for f in b["rect"])
            + " (1st half: none {:.3g}; {})".format(first["none"], "grows" if grows else "no accumulation without rectification at this scale"),
            "verdict": v2,
        },
        {
            "claim": "teacher-forced perplexity drift at 10% kept",
            "paper": "small (ReSA Tab. 2, SeerAttention-R)",
            "ours": f"dense ppl {ppl['dense']:.3f}; seer {ppl['seer@0.10']:.3f}; quest {ppl['quest@0.10']:.3f}",
            "verdict": "reproduced" if ppl["seer@0.10"] <= 1.05 * ppl["dense"] else "partly",
        },
    ]
    if speed is not None:
        rows.append({
            "claim": "block-sparse decode attention at 10% kept vs our dense path (16K tokens, 8/32 heads x 128)",
            "paper": ">= 5x (issue target; ideal ~10x)",
            "ours": f"{speed['speedup']:.1f}x ({speed['dense_ms']:.1f} ms -> {speed['sparse_ms']:.1f} ms; shared 2-core CPU)",
            "verdict": "reproduced" if speed["speedup"] >= 5 else "partly" if speed["speedup"] >= 2 else "not reproduced",
        })
    verdicts = [r["verdict"] for r in rows]
    verdict = "reproduced" if all(v == "reproduced" for v in verdicts) else "not reproduced" if all(v == "not reproduced" for v in verdicts) else "partly"
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "name": "sparse_decoding",
        "claim": CLAIM,
        "verdict": verdict,
        "rows": rows,
        "plots": ["sparse_decoding.png"],
        "notes": (
            f"{n_params / 1e3:.0f}K-param model ({b['layers']} layers, width {b['dim']}, 4 query / 2 KV heads), trained {b['steps']} steps on "
            f"kv_retrieval ({TASK}, {lo}-{hi} pairs after {b['warm_steps']} curriculum steps of {lo}-{b['warm_pairs']}, "
            f"{b['n_queries']} queries per training sequence, {b['aux_frac']:.0%} auxiliary 'x y x' previous-token sequences) in {train_s:.0f}s; "
            f"final train loss {res.history[-1]['loss/train']:.3f}. Block size {bs}; budgets are fractions of the complete blocks "
            f"(at least 1) plus the local block. Seer gates: {b['gate_steps']} distillation steps on multi-query sequences, "
            f"KL {kl_hist[0]:.3f} -> {kl_hist[-1]:.3f}. Grid: pairs {b['grid_pairs']} x depth {b['depths']}, {b['n_eval']} prompts per cell; "
            "the context is prefilled densely and the query and answer are decoded through the backend (greedy). "
            f"Perplexity and divergence: {b['forced_batch']} sequences of {ids.shape[1]} tokens ({b['forced_pairs']} pairs, then "
            f"{b['forced_queries']} retrieval queries teacher forced after a {n_prefix}-token prompt); perplexity over the retrieved values; "
            f"divergence with quest at {div_frac:.0%}. Seed {seed}, budget {budget}."
        ),
        "metrics": {
            "recall": {m: {str(f): v for f, v in d.items()} for m, d in recall.items()},
            "exact_match": em,
            "exact_match_mean": em_mean,
            "ppl": ppl,
            "kl_second_half": last,
            "kl_first_half": first,
            "kl_curves": curves,
            "gate_kl": kl_hist,
            "speed": speed,
            "train_loss": [r["loss/train"] for r in res.history],
        },
    }
    return dump_results(result, out_dir)

"""LQS scoring throughput: exact per-document gradients with torch.func.vmap(grad) vs a per-document loop.

Both compute the same per-document gradients of the core Transformer (checked equal in this run) on documents
of the DELT synthetic corpus; the loop is the usual alternative (one forward + `torch.autograd.grad` per
document). Also timed: one LQS scoring step as `grad_stats` runs it (gradients flattened, dot with the
costate, norms). Documents per second (best of --reps) and the ratio vmap / loop are printed, measured in one run.

Run: python benchmarks/bench_delt.py [--docs 128] [--chunk 32] [--dim 64] [--layers 2] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import _bench  # (this checkout's sherman first on sys.path)
import torch

from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.data.corpus import ALPHABET, CorpusConfig, make_corpus
from sherman.data.scoring import FunctionalLM, flat, pad_batch, per_sample_grads, per_sample_grads_loop


def timed(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(_bench.machine_line(torch.get_num_threads()))
    tok = CharTokenizer(ALPHABET)
    corpus = make_corpus(CorpusConfig(n_clean=a.docs), seed=0)
    seqs = [tok.encode(d.text, bos=True, eos=True) for d in corpus.train[: a.docs]]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=a.dim, n_layers=a.layers, n_heads=4, n_kv_heads=2, ffn_dim=3 * a.dim, max_seq_len=256))
    fl = FunctionalLM(model)
    params = fl.params()
    chunks = [pad_batch(seqs[i : i + a.chunk], tok.pad_id) for i in range(0, len(seqs), a.chunk)]
    lam = flat(params, fl.keys)

    def run_vmap():
        for ids, mask in chunks:
            g = flat(per_sample_grads(fl, params, ids, mask), fl.keys)  # (C, P)
            (g @ lam, g.norm(dim=1))

    def run_loop():
        for ids, mask in chunks:
            g = flat(per_sample_grads_loop(fl, params, ids, mask), fl.keys)
            (g @ lam, g.norm(dim=1))

    ids, mask = chunks[0]
    a_, b_ = per_sample_grads(fl, params, ids, mask), per_sample_grads_loop(fl, params, ids, mask)
    err = max(float((a_[k] - b_[k]).abs().max()) for k in fl.keys)
    run_vmap()  # warm up (functorch set-up)
    tv, tl = timed(run_vmap, a.reps), timed(run_loop, a.reps)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e3:.0f}K params (dim {a.dim}, {a.layers} layers); {len(seqs)} documents, mean {sum(map(len, seqs)) / len(seqs):.0f} tokens; "
          f"chunk {a.chunk}; threads {torch.get_num_threads()}; max |vmap - loop| = {err:.2e}")
    print(f"{'method':<34}{'docs/s':>10}")
    print(f"{'sherman vmap(grad) per-sample':<34}{len(seqs) / tv:>10.1f}")
    print(f"{'per-document autograd loop (peer)':<34}{len(seqs) / tl:>10.1f}")
    print(f"speed-up vmap / loop: {tl / tv:.2f}x")


if __name__ == "__main__":
    main()

"""Load check of `sherman serve`: N concurrent clients on loopback against a small random checkpoint (or --ckpt).

Prints throughput (requests/s, generated tokens/s), p50/p99 request latency and the failed-request count
for the server (continuous batching through `core.decoder.Decoder`), beside the peer: the same requests
answered one at a time by `core.generate.generate` in-process (no HTTP, no batching), measured in the same
run, and their ratio.

    python benchmarks/bench_serve.py [--ckpt DIR] [--clients 16] [--requests 4] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import _bench  # (this checkout's sherman first on sys.path)
import httpx
import numpy as np
import torch

from sherman.core.checkpoint import save_checkpoint
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve.app import ServeConfig, ServerThread, create_app, load_for_serving


def tiny_checkpoint(d: Path, dim: int, layers: int) -> Path:
    tok = CharTokenizer("0123456789+-*=;#", specials=("<pad>", "<bos>", "<eos>"))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=dim, n_layers=layers, n_heads=8, n_kv_heads=2, ffn_dim=dim * 8 // 3 // 8 * 8))
    save_checkpoint(d, model)
    tok.save(d)
    return d


async def client(url: str, prompts: list[str], max_tokens: int, lat: list[float], fails: list[str], ntok: list[int]) -> None:
    async with httpx.AsyncClient(timeout=300) as c:
        for p in prompts:
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/completions", json={"model": "bench", "prompt": p, "max_tokens": max_tokens, "temperature": 1.0})
                if r.status_code != 200:
                    fails.append(f"{r.status_code} {r.text[:100]}")
                    continue
                ntok.append(r.json()["usage"]["completion_tokens"])
            except httpx.HTTPError as e:
                fails.append(repr(e))
                continue
            lat.append(time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=512, help="width of the random checkpoint (without --ckpt)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the random checkpoint (without --ckpt)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 avoids oversubscription on a shared CPU)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(_bench.machine_line(torch.get_num_threads()))
    ckpt = Path(a.ckpt) if a.ckpt else tiny_checkpoint(Path(tempfile.mkdtemp()) / "bench", a.dim, a.layers)
    model, tok = load_for_serving(str(ckpt))
    rng = random.Random(0)
    prompts = [[f"{rng.randint(1, 99)}+{rng.randint(1, 99)}=" for _ in range(a.requests)] for _ in range(a.clients)]
    n_req = a.clients * a.requests

    # ours: the server under concurrent load (generation runs to max_tokens: eos is ignored by a random model rarely)
    lat: list[float] = []
    fails: list[str] = []
    ntok: list[int] = []
    app = create_app(model, tok, ServeConfig(model_name="bench", max_batch=64))
    stats = app.state.engine.batcher.stats
    with ServerThread(app) as s:
        async def load():
            await asyncio.gather(*[client(s.url, ps, a.max_tokens, lat, fails, ntok) for ps in prompts])

        asyncio.run(client(s.url, ["1+1="], a.max_tokens, [], [], []))  # warm-up
        stats.update(steps=0, rows=0)
        t0 = time.perf_counter()
        asyncio.run(load())
        wall = time.perf_counter() - t0
        steps, rows = stats["steps"], stats["rows"]
    # peer: one request at a time through core.generate, no HTTP, no batching
    gen = torch.Generator().manual_seed(0)
    generate(model, [tok.encode("1+1=", bos=True)], SamplingParams(max_new_tokens=a.max_tokens), generator=gen)  # warm-up
    peer_lat, peer_tok = [], 0
    t1 = time.perf_counter()
    for ps in prompts:
        for p in ps:
            t = time.perf_counter()
            out = generate(model, [tok.encode(p, bos=True)], SamplingParams(max_new_tokens=a.max_tokens, temperature=1.0, stop_token_ids=[tok.eos_id]),
                           generator=gen)
            peer_tok += len(out.tokens[0])
            peer_lat.append(time.perf_counter() - t)
    peer_wall = time.perf_counter() - t1
    ours_rps, peer_rps = len(lat) / wall, n_req / peer_wall
    ours_tps, peer_tps = sum(ntok) / wall, peer_tok / peer_wall
    print(f"{n_req} requests ({a.clients} concurrent clients x {a.requests}), max_tokens {a.max_tokens}, torch threads {torch.get_num_threads()}")
    print(f"{'':28}{'sherman serve':>16}{'sequential generate':>22}{'ratio':>8}")
    print(f"{'requests/s':28}{ours_rps:16.2f}{peer_rps:22.2f}{ours_rps / peer_rps:8.2f}")
    print(f"{'generated tokens/s':28}{ours_tps:16.1f}{peer_tps:22.1f}{ours_tps / peer_tps:8.2f}")
    if lat:
        print(f"{'latency p50 (s)':28}{np.percentile(lat, 50):16.3f}{np.percentile(peer_lat, 50):22.3f}")
        print(f"{'latency p99 (s)':28}{np.percentile(lat, 99):16.3f}{np.percentile(peer_lat, 99):22.3f}")
    print(f"server: {steps} batched decode steps in {wall:.2f} s, {rows / max(steps, 1):.1f} sequences per step")
    print(f"failed requests: {len(fails)}" + (f" (first: {fails[0]})" if fails else ""))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

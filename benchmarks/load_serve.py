"""Hardening load test of `sherman serve` with the official `openai` client on loopback (issue 13).

100 concurrent clients (by default), each sending a seeded mix of requests to one server over a small random
checkpoint whose window is `--window` tokens:

    short       /v1/completions, a few-token prompt, max_tokens 8 (half of them streamed)
    chat        /v1/chat/completions, streamed
    long        a prompt of window - max_tokens - 4 tokens (near the window), max_tokens 16
    invalid     one of: context_exceeded (prompt past the window), bad_max_tokens (-1), unknown_model,
                bad_type (temperature "hot"), bad_json, huge_int (5,000 digits), deep_nesting (100,000 '['),
                body_too_large (2 MB), bad_key (wrong API key)

Valid requests go through `openai.AsyncOpenAI` (no retries); the raw-body kinds (bad_json, huge_int, deep_nesting,
body_too_large), which the openai client cannot send, go through httpx. The run is bounded in count
(`--clients x --requests`) and in time (`--deadline` seconds; requests still running then count as failures).

Prints: requests sent, failures among valid requests (must be 0), the status codes per invalid kind (each must be
its 4xx), and the p50 / p99 latency of short requests that overlapped a long request, beside the same short
requests' latency on an idle server measured first in the same run (ratio = loaded / idle). No peer server is
run here (the peer comparison of the serve path is benchmarks/bench_serve.py).

    python benchmarks/load_serve.py [--clients 100] [--requests 4] [--window 256] [--deadline 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter, defaultdict

import httpx
import numpy as np
import torch

from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve.app import ServeConfig, ServerThread, create_app

KEY = "sk-load"
EXPECTED = {"context_exceeded": 400, "bad_max_tokens": 400, "unknown_model": 404, "bad_type": 400, "bad_json": 400,
            "huge_int": 400, "deep_nesting": 400, "body_too_large": 413, "bad_key": 401}  # fmt: skip
VALID = ("short", "chat", "long")


def build_server(window: int, dim: int, layers: int, seed: int):
    tok = CharTokenizer("0123456789+-*=;# ", specials=("<pad>", "<bos>", "<eos>"))
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, ffn_dim=dim * 8 // 3 // 8 * 8,
                                    max_seq_len=window))  # fmt: skip
    return create_app(model, tok, ServeConfig(api_key=KEY, model_name="load", max_tokens_limit=window, max_batch=128, seed=seed))


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789+-*=") for _ in range(n))


class Run:
    def __init__(self, url: str, window: int):
        import openai

        self.openai = openai
        self.url, self.window = url, window
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        self.bad_client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0, timeout=300)
        self.http = httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {KEY}"})
        self.records: list[tuple[str, float, float, bool]] = []  # (kind, start, end, ok)
        self.failures: list[str] = []
        self.invalid: dict[str, Counter] = defaultdict(Counter)
        self.n_bad = 0

    async def valid(self, kind: str, rng: random.Random) -> None:
        t0 = time.perf_counter()
        ok = False
        try:
            if kind == "short" and rng.random() < 0.5:
                r = await self.client.completions.create(model="load", prompt=digits(rng, 6), max_tokens=8, temperature=1.0)
                ok = len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
            elif kind == "short":
                stream = await self.client.completions.create(model="load", prompt=digits(rng, 6), max_tokens=8, temperature=1.0, stream=True)
                fins = [c.choices[0].finish_reason async for c in stream]
                ok = bool(fins) and fins[-1] in ("stop", "length")
            elif kind == "chat":
                stream = await self.client.chat.completions.create(model="load", messages=[{"role": "user", "content": digits(rng, 10)}],
                                                                   max_tokens=8, stream=True)  # fmt: skip
                fins = [c.choices[0].finish_reason async for c in stream if c.choices]
                ok = bool(fins) and fins[-1] in ("stop", "length")
            else:  # long: prompt + max_tokens a few tokens under the window (<bos> counts as one)
                n = self.window - 16 - 4
                r = await self.client.completions.create(model="load", prompt=digits(rng, n), max_tokens=16, temperature=1.0)
                ok = r.usage.prompt_tokens == n + 1
            if not ok:
                self.failures.append(f"{kind}: unexpected answer shape")
        except Exception as e:  # every exception of a valid request is a failure, reported by type
            self.failures.append(f"{kind}: {type(e).__name__}: {str(e)[:120]}")
        self.records.append((kind, t0, time.perf_counter(), ok))

    async def bad(self, kind: str, rng: random.Random) -> None:
        status = None
        try:
            if kind == "context_exceeded":
                await self.client.completions.create(model="load", prompt=digits(rng, self.window + 20), max_tokens=8)
            elif kind == "bad_max_tokens":
                await self.client.completions.create(model="load", prompt="1+1=", max_tokens=-1)
            elif kind == "unknown_model":
                await self.client.completions.create(model="gpt-9", prompt="1+1=", max_tokens=4)
            elif kind == "bad_type":
                await self.client.completions.create(model="load", prompt="1+1=", max_tokens=4, extra_body={"temperature": "hot"})
            elif kind == "bad_key":
                await self.bad_client.completions.create(model="load", prompt="1+1=", max_tokens=4)
            else:
                raw = {"bad_json": b'{"model": "load", "prompt": ',
                       "huge_int": b'{"model": "load", "prompt": "1", "max_tokens": ' + b"9" * 5000 + b"}",
                       "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
                       "body_too_large": b'{"model": "load", "prompt": "' + b"1" * 2_000_000 + b'"}'}[kind]  # fmt: skip
                r = await self.http.post(self.url + "/v1/completions", content=raw, headers={"Content-Type": "application/json"})
                status = r.status_code
        except self.openai.APIStatusError as e:
            status = e.status_code
        except Exception as e:
            status = type(e).__name__
        self.invalid[kind][status if status is not None else "200 (accepted!)"] += 1

    async def client_task(self, cid: int, n: int, seed: int) -> None:
        rng = random.Random(seed * 1_000_003 + cid)
        for _ in range(n):
            u = rng.random()
            if u < 0.45:
                await self.valid("short", rng)
            elif u < 0.6:
                await self.valid("chat", rng)
            elif u < 0.8:
                await self.valid("long", rng)
            else:  # the invalid kinds in turn over all clients, so each is sent
                self.n_bad += 1
                await self.bad(sorted(EXPECTED)[self.n_bad % len(EXPECTED)], rng)

    async def close(self) -> None:
        await self.client.close()
        await self.bad_client.close()
        await self.http.aclose()


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


async def amain(a) -> int:
    app = build_server(a.window, a.dim, a.layers, a.seed)
    with ServerThread(app) as server:
        # idle reference: short requests one at a time on the otherwise idle server
        idle = Run(server.url, a.window)
        rng = random.Random(a.seed)
        for _ in range(a.idle_requests):
            await idle.valid("short", rng)
        await idle.close()
        idle_lat = [e - s for k, s, e, ok in idle.records if ok]

        run = Run(server.url, a.window)
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(run.client_task(c, a.requests, a.seed)) for c in range(a.clients)]
        done, pending = await asyncio.wait(tasks, timeout=a.deadline)
        for t in pending:
            t.cancel()
        wall = time.perf_counter() - t0
        await run.close()
        stats = dict(app.state.engine.batcher.stats)

    longs = [(s, e) for k, s, e, ok in run.records if k == "long"]
    shorts = [(s, e) for k, s, e, ok in run.records if k == "short" and ok]
    overlapped = [e - s for s, e in shorts if any(ls < e and s < le for ls, le in longs)]
    n_valid = sum(1 for r in run.records if r[0] in VALID)
    n_invalid = sum(sum(c.values()) for c in run.invalid.values())
    unfinished = len(pending)
    print(f"load_serve: {a.clients} concurrent openai clients x {a.requests} requests, window {a.window} tokens, "
          f"model dim {a.dim} x {a.layers} layers, seed {a.seed}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"requests: {n_valid + n_invalid} sent in {wall:.1f} s ({n_valid} valid: "
          + ", ".join(f"{k} {sum(1 for r in run.records if r[0] == k)}" for k in VALID) + f"; {n_invalid} invalid)")
    print(f"failures (valid requests): {len(run.failures) + unfinished}" + (f"  (clients cut by the deadline: {unfinished})" if unfinished else ""))
    for f in run.failures[:10]:
        print(f"  {f}")
    bad_kinds = 0
    for kind in sorted(EXPECTED):
        got = run.invalid.get(kind, Counter())
        ok = bool(got) and set(got) == {EXPECTED[kind]}
        bad_kinds += 0 if ok else 1
        print(f"  invalid {kind:<17} expected {EXPECTED[kind]}  got {dict(got) or 'none sent'}")
    print(f"short-request latency while long requests run: p50 {pct(overlapped, 50) * 1e3:.0f} ms, p99 {pct(overlapped, 99) * 1e3:.0f} ms "
          f"(n={len(overlapped)})")  # fmt: skip
    print(f"short-request latency on the idle server:      p50 {pct(idle_lat, 50) * 1e3:.0f} ms, p99 {pct(idle_lat, 99) * 1e3:.0f} ms "
          f"(n={len(idle_lat)}); ratio loaded/idle p50 {pct(overlapped, 50) / pct(idle_lat, 50):.1f}x")  # fmt: skip
    print(f"batcher: {stats['steps']} forward steps, {stats['rows'] / max(1, stats['steps']):.1f} sequences per step on average")
    return 0 if not run.failures and not unfinished and bad_kinds == 0 else 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--window", type=int, default=256, help="the model's max_seq_len")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--idle-requests", type=int, default=20)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds for the loaded phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    return asyncio.run(amain(a))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

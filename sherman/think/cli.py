"""`sherman think "question" --backend local|URL`: run AsyncThink once and print the answer, the fork-join tree
and the critical-path latency.

    sherman think "12+5;7*8=" --backend local --ckpt runs/asyncthink/model
    sherman think "12+5;7*8=" --backend http://127.0.0.1:8000 --model tiny [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import torch

from sherman.core.common import ShermanError
from sherman.core.generate import SamplingParams
from sherman.think.engine import AsyncThinkEngine, ThinkConfig


def _first_model(url: str, api_key: str | None) -> str:
    import httpx

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base + "/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ShermanError(f"cannot reach {base}/models: {e}") from None
    if r.status_code != 200:
        raise ShermanError(f"{base}/models returned {r.status_code}: {r.text[:200]}")
    return r.json()["data"][0]["id"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sherman think", description="AsyncThink: organizer-worker asynchronous thinking")
    ap.add_argument("question")
    ap.add_argument("--backend", default="local", help="'local' (a Sherman checkpoint, --ckpt) or the URL of an OpenAI-compatible server")
    ap.add_argument("--ckpt", default=None, help="checkpoint directory with tokenizer.json (local backend)")
    ap.add_argument("--model", default=None, help="model id on the server (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--capacity", type=int, default=4, help="pool size c (organizer + c-1 workers)")
    ap.add_argument("--max-org-tokens", type=int, default=256)
    ap.add_argument("--max-worker-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    a = ap.parse_args(argv)
    try:
        cfg = ThinkConfig(capacity=a.capacity, max_org_tokens=a.max_org_tokens, max_worker_tokens=a.max_worker_tokens)
        params = SamplingParams(temperature=a.temperature)
    except ValueError as e:
        raise ShermanError(str(e)) from None
    if a.backend == "local":
        if not a.ckpt:
            raise ShermanError("--backend local needs --ckpt DIR")
        from sherman.serve.app import load_for_serving
        from sherman.think.backends import LocalBackend

        model, tok = load_for_serving(a.ckpt)
        try:
            tok.encode(a.question)
        except ValueError as e:
            raise ShermanError(f"question: {e}") from None
        backend = LocalBackend(model, tok, params, generator=torch.Generator().manual_seed(a.seed))
    elif a.backend.startswith(("http://", "https://")):
        from sherman.think.backends import OpenAIBackend

        backend = OpenAIBackend(a.backend, a.model or _first_model(a.backend, a.api_key), api_key=a.api_key, temperature=a.temperature)
    else:
        raise ShermanError(f"--backend must be 'local' or an http(s) URL, got {a.backend!r}")

    async def run():
        try:
            return await AsyncThinkEngine(backend, cfg).run(a.question)
        finally:
            await backend.aclose()

    try:
        r = asyncio.run(run())
    except RuntimeError as e:
        raise ShermanError(str(e)) from None
    if a.json:
        print(json.dumps(r.to_dict(), indent=1))
    else:
        print(r.tree())
    return 0 if r.answer is not None else 1

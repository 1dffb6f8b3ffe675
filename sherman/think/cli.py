"""`sherman think "question" --backend local|URL`: run AsyncThink once and print the answer, the fork-join tree
and the critical-path latency.

    sherman think "12+5;7*8=" --backend local --ckpt runs/asyncthink/organizer
    sherman think "12+5;7*8=" --backend http://127.0.0.1:8000 --model tiny [--api-key KEY]
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from sherman.core.config import Positional, check, parse
from sherman.core.errors import ShermanError


@dataclass
class ThinkArgs:
    question: Positional[str]
    """The question, in the task's format (e.g. "12+5;7*8=" for the arithmetic organizer)."""
    backend: str = "local"
    """'local' (a Sherman checkpoint given by --ckpt) or the URL of an OpenAI-compatible server (http://HOST:PORT)."""
    ckpt: str | None = None
    """Local backend: a checkpoint whose tokenizer knows the protocol tags, e.g. runs/asyncthink/organizer (written by `sherman reproduce asyncthink`); a run or step directory."""
    model: str | None = None
    """URL backend: model id on the server; default: the first of /v1/models."""
    api_key: str | None = None
    """URL backend: sent as `Authorization: Bearer KEY`."""
    capacity: int = 4
    """Pool size c: the organizer plus at most c - 1 concurrent workers."""
    max_org_tokens: int = 256
    """Cap on the organizer's decoded tokens."""
    max_worker_tokens: int = 128
    """Cap on each worker's decoded tokens."""
    temperature: float = 0.0
    """Sampling temperature of organizer and workers (0 = greedy)."""
    seed: int = 0
    """Sampling seed (local backend)."""
    json: bool = False
    """Print the full result (answer, tree, latency, concurrency) as JSON instead of the tree."""

    def __post_init__(self) -> None:
        check(self.capacity >= 1, "capacity", f"must be >= 1, got {self.capacity}")
        check(self.max_org_tokens >= 1, "max_org_tokens", f"must be >= 1, got {self.max_org_tokens}")
        check(self.max_worker_tokens >= 1, "max_worker_tokens", f"must be >= 1, got {self.max_worker_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(self.backend == "local" or self.backend.startswith(("http://", "https://")), "backend",
              f"must be 'local' or an http(s) URL, got {self.backend!r}")  # fmt: skip
        check(self.backend != "local" or bool(self.ckpt), "ckpt", "--backend local needs --ckpt DIR")


def check_protocol(tok, cfg, question: str) -> None:
    """ShermanError unless `tok` can encode the question in the organizer and worker prompts and every protocol tag
    (a checkpoint trained without the AsyncThink vocabulary cannot think asynchronously)."""
    from sherman.think.protocol import format_tag

    tags = "".join(format_tag(n, i, c) for n, i in (("FORK", 1), ("JOIN", 1), ("ANSWER", None), ("RETURN", None)) for c in (False, True))
    try:
        tok.encode(question)
    except ValueError as e:
        raise ShermanError(f"the question cannot be encoded with this checkpoint's tokenizer ({e})") from None
    try:
        tok.encode(cfg.organizer_template.format(question=question) + cfg.worker_template.format(question=question, query="") + tags)
    except ValueError as e:
        raise ShermanError(f"this checkpoint's tokenizer does not know the AsyncThink protocol ({e}); use an organizer "
                           "checkpoint such as runs/asyncthink/organizer from `sherman reproduce asyncthink`") from None  # fmt: skip


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
    a = parse(ThinkArgs, argv, prog="sherman think", description=__doc__)
    import torch

    from sherman.core.generate import SamplingParams
    from sherman.think.engine import AsyncThinkEngine, ThinkConfig

    cfg = ThinkConfig(capacity=a.capacity, max_org_tokens=a.max_org_tokens, max_worker_tokens=a.max_worker_tokens)
    params = SamplingParams(temperature=a.temperature)
    if a.backend == "local":
        from sherman.core.paths import load_model_and_tokenizer
        from sherman.think.backends import LocalBackend

        model, tok, _ = load_model_and_tokenizer(a.ckpt)
        check_protocol(tok, cfg, a.question)
        backend = LocalBackend(model, tok, params, generator=torch.Generator().manual_seed(a.seed))
    else:
        from sherman.think.backends import OpenAIBackend

        backend = OpenAIBackend(a.backend, a.model or _first_model(a.backend, a.api_key), api_key=a.api_key, temperature=a.temperature)

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

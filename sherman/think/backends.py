"""Backends for the AsyncThink engine: where agents' tokens come from.

A backend streams one agent's continuation of a text prompt as `Piece`s (one decoded token each):

    async for piece in backend.stream(prompt, max_tokens): ...      # break out to stop early
    backend.count_tokens(text) -> int                               # for the clock's insert charge

- `LocalBackend`: a Sherman model. Every stream joins the shared `serve.batcher.Batcher`, which advances
  the organizer and all active workers in ONE forward pass per step, each sequence with its own KV cache
  (`core.generate.Decoder`); a resumed prompt with a byte-identical prefix reuses its cache.
- `OpenAIBackend`: any OpenAI-compatible server (ours: `sherman serve`; vLLM, SGLang) through streaming
  `/v1/completions`. After a join the organizer resumes with its exact previous text plus the inserted
  text, so the server's prefix cache hits.
- `ScriptedBackend`: replays fixed texts (tests, property tests, demos of the protocol).
"""

from __future__ import annotations

import json
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Protocol

from sherman.core.generate import SamplingParams


@dataclass(frozen=True)
class Piece:
    text: str
    """Decoded text of this token."""
    ids: tuple[int, ...] = ()
    """Token ids (local backend); empty when the backend does not report them."""
    logp: float = 0.0
    """log p of the token under the sampling distribution (local backend)."""


class Backend(Protocol):
    def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]: ...

    def count_tokens(self, text: str) -> int: ...


class LocalBackend:
    """A Sherman model + tokenizer behind the shared continuous batcher."""

    def __init__(self, model, tokenizer, params: SamplingParams | None = None, *, batcher=None, generator=None, add_bos: bool = True):
        from sherman.serve.batcher import Batcher

        self.model = model
        self.tokenizer = tokenizer
        self.params = params or SamplingParams(temperature=1.0)
        self.batcher = batcher or Batcher(model, generator=generator)
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=self.add_bos)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]:
        ids = self.encode(prompt)
        eos = self.tokenizer.eos_id
        async with aclosing(self.batcher.stream(ids, self.params, max_tokens)) as toks:
            async for tok, lp in toks:
                if tok == eos:
                    return
                yield Piece(self.tokenizer.decode([tok], skip_special=False), (tok,), lp)

    async def aclose(self) -> None:
        await self.batcher.close()


class OpenAIBackend:
    """Streaming `/v1/completions` of an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
                 timeout: float = 60.0, count_tokens: Callable[[str], int] | None = None, client=None):
        import httpx

        self.url = base_url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.model = model
        self.temperature, self.top_p = temperature, top_p
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=timeout, headers=headers)
        self._count = count_tokens or len

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": self.temperature, "top_p": self.top_p,
                "skip_special_tokens": False}  # keep protocol tags that are special tokens (vLLM / sherman serve extension)
        async with self.client.stream("POST", f"{self.url}/completions", json=body) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"{self.url}/completions returned {r.status_code}: {detail}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"server error: {chunk['error']}")
                text = chunk["choices"][0].get("text", "")
                if text:
                    yield Piece(text)

    async def aclose(self) -> None:
        await self.client.aclose()


class ScriptedBackend:
    """Replays scripted outputs: `script(prompt) -> text`, streamed in chunks of `chunk` characters."""

    def __init__(self, script: Callable[[str], str], chunk: int = 1):
        self.script = script
        self.chunk = max(1, chunk)

    def count_tokens(self, text: str) -> int:
        return -(-len(text) // self.chunk)

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]:
        import asyncio

        text = self.script(prompt)
        for n, i in enumerate(range(0, len(text), self.chunk)):
            if n >= max_tokens:
                return
            await asyncio.sleep(0)
            yield Piece(text[i : i + self.chunk])

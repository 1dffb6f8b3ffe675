"""Backends for the AsyncThink engine: where agents' tokens come from.

A backend streams one agent's continuation of a text prompt as `Piece`s (one decoded token each):

    async for piece in backend.stream(prompt, max_tokens): ...      # break out to stop early
    backend.count_tokens(text) -> int                               # for the clock's insert charge

- `LocalBackend`: a Sherman model. Every stream joins the shared `core.decoder.Batcher`, which advances
  the organizer and all active workers in ONE forward pass per step, each sequence with its own KV cache
  (`core.decoder.Decoder`); a resumed prompt with a byte-identical prefix reuses its cache.
- `OpenAIBackend`: any OpenAI-compatible server (ours: `sherman serve`; vLLM, SGLang) through streaming
  `/v1/completions`. After a join the organizer resumes with its exact previous text plus the inserted
  text, so the server's prefix cache hits. It asks the server to keep special tokens in the returned text
  (`skip_special_tokens: false`, a vLLM/SGLang extension: AsyncThink's tags are special tokens, which servers strip
  by default) and for per-token log-probs (`logprobs: 0`) and final usage (`stream_options.include_usage`), and
  counts generated tokens from those (one `Piece` per token the server reports), not from text chunks, which merge
  or vanish (a stripped special token streams as an empty chunk). A server that rejects one of these fields with a
  4xx is asked again without it (remembered for later calls).
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
        from sherman.core.decoder import Batcher

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


OPTIONAL_FIELDS: dict[str, object] = {
    "skip_special_tokens": False,
    "logprobs": 0,
    "stream_options": {"include_usage": True},
}
"""Request fields beyond the basic completion API that `OpenAIBackend` sends while the server accepts them."""


def chunk_pieces(choice: dict) -> list[Piece]:
    """One streamed completion choice -> one Piece per generated token it reports.

    With `logprobs` (OpenAI's legacy shape: tokens, token_logprobs), every token is a Piece; the chunk's text goes to
    the first one when the token strings do not spell it (byte-level pieces, stripped specials), so the concatenated
    text is always the server's. Without logprobs, a chunk with text is one token."""
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    toks = lp.get("tokens") if isinstance(lp, dict) else None
    if not toks:
        return [Piece(text)] if text else []
    lps = lp.get("token_logprobs") or [0.0] * len(toks)
    if "".join(toks) == text:
        texts = list(toks)
    else:
        texts = [text] + [""] * (len(toks) - 1)
    return [Piece(t, (), float(x) if x is not None else 0.0) for t, x in zip(texts, lps)]


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
        self.optional = dict(OPTIONAL_FIELDS)
        """The optional fields still sent (a field the server rejected is dropped)."""

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def _drop_rejected(self, status: int, detail: str) -> bool:
        """After a 4xx: drop the optional fields the error names (all of them when it names none); False if none left."""
        if status not in (400, 422) or not self.optional:
            return False
        named = [k for k in self.optional if k in detail]
        for k in named or list(self.optional):
            del self.optional[k]
        return True

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]:
        base = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": self.temperature, "top_p": self.top_p}
        while True:
            body = {**base, **self.optional}
            async with self.client.stream("POST", f"{self.url}/completions", json=body) as r:
                if r.status_code != 200:
                    detail = (await r.aread()).decode(errors="replace")[:300]
                    if self._drop_rejected(r.status_code, detail):
                        continue
                    raise RuntimeError(f"{self.url}/completions returned {r.status_code}: {detail}")
                n = 0
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"server error: {chunk['error']}")
                    for choice in chunk.get("choices") or []:
                        for piece in chunk_pieces(choice):
                            n += 1
                            yield piece
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        for _ in range(min(usage["completion_tokens"], max_tokens) - n):  # tokens the text did not show
                            n += 1
                            yield Piece("")
                return

    async def aclose(self) -> None:
        await self.client.aclose()


class ScriptedBackend:
    """Replays scripted outputs: `script(prompt) -> text`, streamed in chunks of `chunk` characters, or one
    token of `tokenizer` per piece when one is given (then the clock counts that tokenizer's tokens and each piece
    carries its token id, as the local backend's do)."""

    def __init__(self, script: Callable[[str], str], chunk: int = 1, tokenizer=None):
        self.script = script
        self.chunk = max(1, chunk)
        self.tokenizer = tokenizer

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text))
        return -(-len(text) // self.chunk)

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[Piece]:
        import asyncio

        text = self.script(prompt)
        if self.tokenizer is not None:
            for n, i in enumerate(self.tokenizer.encode(text)):
                if n >= max_tokens:
                    return
                await asyncio.sleep(0)
                yield Piece(self.tokenizer.decode([i], skip_special=False), (i,))
            return
        for n, i in enumerate(range(0, len(text), self.chunk)):
            if n >= max_tokens:
                return
            await asyncio.sleep(0)
            yield Piece(text[i : i + self.chunk])

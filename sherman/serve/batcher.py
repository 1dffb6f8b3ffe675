"""Continuous batching over `core.generate.Decoder` for asyncio callers (the server and AsyncThink's local backend).

Every caller streams tokens with `async for tok, logp in batcher.stream(ids, params)`. A background
task waits until some stream asks for its next token, lets the event loop run once more so that every
other ready stream can ask too, then advances all asking sequences in ONE model forward pass (in a
worker thread, so the event loop keeps serving) and hands each its token. Decoding is demand-driven: a
sequence never runs ahead of its reader, so a reader that stops after a token (AsyncThink's organizer at
`<JOIN-i>`) leaves the model state exactly there.

Prefix reuse: when a stream ends, its sequence (with its KV cache) is parked, keyed by every token it has
seen. A later prompt that shares a prefix (of at least `min_reuse` tokens) with a parked sequence continues
that sequence: its cache is cut back to the shared prefix (tokens the server decoded ahead of a client that
disconnected are dropped) and only the new suffix is prefilled, the way server prefix caches serve a client
that resumes with a byte-identical prefix.
At most `max_parked` sequences are kept (least recently used dropped first).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import AsyncIterator, Sequence

import torch

from sherman.core.generate import Decoder, SamplingParams


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Batcher:
    def __init__(self, model, *, generator: torch.Generator | None = None, max_batch: int = 64, max_parked: int = 32, min_reuse: int = 4):
        self.decoder = Decoder(model, generator=generator)
        self.max_batch = max_batch
        self.max_parked = max_parked
        self.min_reuse = min_reuse
        self.known: dict[int, list[int]] = {}  # sid -> every token id the sequence has (prompt + sampled)
        self.parked: OrderedDict[int, None] = OrderedDict()
        self.demand: dict[int, tuple[asyncio.Future, SamplingParams]] = {}
        self.lock: asyncio.Lock | None = None
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.stats = {"steps": 0, "rows": 0, "reused_tokens": 0, "prefill_tokens": 0}

    # -- sequence bookkeeping (event loop thread; never during a step) -------------------------------

    def _open(self, ids: list[int]) -> int:
        best, best_len = None, 0
        for sid in self.parked:
            n = _common_prefix(self.known[sid], ids)
            if n > best_len:
                best, best_len = sid, n
        best_len = min(best_len, len(ids) - 1)  # keep >= 1 token to feed the next step
        if best is not None and best_len >= self.min_reuse:
            del self.parked[best]
            self.decoder.truncate(best, best_len)  # drop tokens the new prompt does not share (e.g. decoded ahead)
            self.decoder.extend(best, ids[best_len:])
            self.known[best] = list(ids)
            self.stats["reused_tokens"] += best_len
            self.stats["prefill_tokens"] += len(ids) - best_len
            return best
        sid = self.decoder.add(ids)
        self.known[sid] = list(ids)
        self.stats["prefill_tokens"] += len(ids)
        return sid

    def _park(self, sid: int) -> None:
        if self.max_parked <= 0:
            self._drop(sid)
            return
        self.parked[sid] = None
        while len(self.parked) > self.max_parked:
            old, _ = self.parked.popitem(last=False)
            self._drop(old)

    def _drop(self, sid: int) -> None:
        self.decoder.remove(sid)
        self.known.pop(sid, None)

    # -- the stepping loop ----------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self.task is None or self.task.done():
            self.lock = asyncio.Lock()
            self.wake = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            for _ in range(3):  # let every ready reader register its demand
                await asyncio.sleep(0)
            self.wake.clear()
            async with self.lock:  # the batch is taken under the lock: no stream opens, parks or drops meanwhile
                batch = list(self.demand.items())[: self.max_batch]
                if not batch:
                    continue
                sids = [s for s, _ in batch]
                params = {s: p for s, (_, p) in batch}
                try:
                    out = await asyncio.to_thread(self.decoder.step, sids, params)
                except Exception as e:  # a failing step fails its readers, not the loop
                    for s, (fut, _) in batch:
                        self.demand.pop(s, None)
                        if not fut.done():
                            fut.set_exception(e)
                    continue
            self.stats["steps"] += 1
            self.stats["rows"] += len(sids)
            for s, (fut, _) in batch:
                self.demand.pop(s, None)
                tok, lp = out[s]
                self.known[s].append(tok)
                if not fut.done():
                    fut.set_result((tok, lp))
            if self.demand:
                self.wake.set()

    async def stream(self, ids: Sequence[int], params: SamplingParams | None = None, max_tokens: int | None = None) -> AsyncIterator[tuple[int, float]]:
        """Yield (token, logp) one at a time, up to max_tokens (default params.max_new_tokens).
        Stopping is the caller's business: break out of the loop (the sequence is parked for reuse)."""
        params = params or SamplingParams()
        n = params.max_new_tokens if max_tokens is None else max_tokens
        self._ensure_loop()
        async with self.lock:
            sid = self._open([int(t) for t in ids])
        try:
            for _ in range(n):
                fut = asyncio.get_running_loop().create_future()
                self.demand[sid] = (fut, params)
                self.wake.set()
                yield await fut
        finally:
            self.demand.pop(sid, None)
            if self.lock is not None and self.lock.locked():
                # a step is running (or pending) in which this sequence may take part: park after it
                asyncio.get_running_loop().create_task(self._park_later(sid))
            else:
                self._park(sid)

    async def _park_later(self, sid: int) -> None:
        async with self.lock:
            self._park(sid)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None

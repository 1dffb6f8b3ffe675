"""Step-wise batched decoding (`Decoder`) and continuous batching over it for asyncio callers (`Batcher`).

Below both the server (`sherman/serve/app.py`) and AsyncThink's local backend (`sherman/think/backends.py`), so
neither imports the other. Sampling is `core.generate.sample_next` and one-token steps run
`Transformer.decode_step`: the same numbers as the one sampling loop, `core.generate.generate` (tests compare them).

Batcher: Every caller streams tokens with `async for tok, logp in batcher.stream(ids, params)`. A background
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

import sherman.core.generate as gen
from sherman.core.attention import AttnContext
from sherman.core.generate import SamplingParams, sample_next
from sherman.core.kv_cache import KVCache
from sherman.core.model import Transformer


class Decoder:
    """Step-wise batched decoding of many sequences, each with its own KV cache (AsyncThink agents, the server).

    `add(ids)` registers a sequence and returns its id; `extend(sid, ids)` appends tokens (e.g. text a
    program inserts); `step(sids)` advances the chosen sequences by one sampled token each in ONE forward
    pass; `truncate(sid, n)` forgets all but the first n tokens; `remove(sid)` frees a sequence. Pending
    tokens (a new prompt, inserted text, the last sampled token) are prefilled in the same pass as other
    rows' decode tokens.

    Each sequence owns a batch-1 `KVCache` whose per-layer keys and values are views of one contiguous
    buffer (n_layers, 2, 1, H_kv, T_cap, D), grown on demand. A step packs the chosen buffers left-padded
    into one batch `KVCache` (one copy per row) with per-row RoPE positions (as `generate` does for ragged
    prompts), runs the model once and writes each row's new keys/values back (one copy per row), so
    membership may change between any two steps at no extra cost. Sampling is `sample_next`, shared with
    `generate`; a step in which every row decodes one token runs `Transformer.decode_step`, the fast decode step
    `generate` uses (same numbers as the forward pass; test: tests/core/test_decoder.py).
    """

    def __init__(self, model: Transformer, *, generator: torch.Generator | None = None, attn: AttnContext | None = None, init_len: int = 256):
        self.model = model
        self.generator = generator
        self.attn = attn
        self.init_len = init_len
        self.caches: dict[int, KVCache] = {}
        self.bufs: dict[int, torch.Tensor] = {}
        self.pending: dict[int, list[int]] = {}
        self._next = 0

    def _fast(self) -> bool:
        """Whether one-token steps may use `Transformer.decode_step` (the rule `generate` applies: `FAST_DECODE`, no MoE
        layers, no module hooks, no ReSA rectification)."""
        rectify = self.attn is not None and self.attn.options.get("rectify_every")
        return gen.FAST_DECODE and self.model.cfg.n_experts == 0 and not rectify and not gen._has_hooks(self.model)

    def _alloc(self, cap: int) -> tuple[KVCache, torch.Tensor]:
        c = self.model.cfg
        buf = torch.zeros(c.n_layers, 2, 1, c.n_kv_heads, cap, c.head_dim, dtype=self.model.dtype, device=self.model.device)
        valid = torch.zeros(1, cap, dtype=torch.bool, device=self.model.device)
        return KVCache(k=[buf[i, 0] for i in range(c.n_layers)], v=[buf[i, 1] for i in range(c.n_layers)], valid=valid), buf

    def add(self, ids: Sequence[int]) -> int:
        if len(ids) == 0:
            raise ValueError("a sequence needs at least one token (e.g. a BOS id)")
        sid = self._next
        self._next += 1
        self.caches[sid], self.bufs[sid] = self._alloc(max(self.init_len, 2 * len(ids)))
        self.pending[sid] = [int(t) for t in ids]
        return sid

    def extend(self, sid: int, ids: Sequence[int]) -> None:
        self.pending[sid].extend(int(t) for t in ids)

    def truncate(self, sid: int, n: int) -> None:
        """Keep only the first n tokens of a sequence (cached or pending); later ones are forgotten."""
        c = self.caches[sid]
        assert 0 <= n <= self.length(sid), f"cannot truncate a sequence of {self.length(sid)} tokens to {n}"
        if n <= c.length:
            c.rewind(n)
            self.pending[sid] = []
        else:
            self.pending[sid] = self.pending[sid][: n - c.length]

    def remove(self, sid: int) -> None:
        self.caches.pop(sid, None)
        self.bufs.pop(sid, None)
        self.pending.pop(sid, None)

    def __contains__(self, sid: int) -> bool:
        return sid in self.caches

    def length(self, sid: int) -> int:
        """Tokens of the sequence so far (cached + pending)."""
        return self.caches[sid].length + len(self.pending[sid])

    def _grow(self, sid: int, need: int) -> None:
        c, buf = self.caches[sid], self.bufs[sid]
        if need <= c.max_len:
            return
        new, nbuf = self._alloc(max(need, 2 * c.max_len))
        nbuf[..., : c.length, :] = buf[..., : c.length, :]
        new.valid[:, : c.length] = c.valid[:, : c.length]
        new.length = c.length
        self.caches[sid], self.bufs[sid] = new, nbuf

    @torch.no_grad()
    def step(self, sids: Sequence[int] | None = None, params: dict[int, SamplingParams] | SamplingParams | None = None) -> dict[int, tuple[int, float]]:
        """Advance each sequence in `sids` (default all) by one token -> {sid: (token, logp)}.

        params: one SamplingParams for all rows or one per sid (temperature and top_p are used).
        """
        sids = list(self.caches) if sids is None else list(sids)
        if not sids:
            return {}
        model, dev, cfg = self.model, self.model.device, self.model.cfg
        was_training = model.training
        model.eval()
        lens = [self.caches[s].length for s in sids]
        pends = [self.pending[s] for s in sids]
        assert all(len(p) > 0 for p in pends), "every stepped sequence needs a pending token"
        b, lmax, pmax = len(sids), max(lens), max(len(p) for p in pends)
        big = torch.zeros(cfg.n_layers, 2, b, cfg.n_kv_heads, lmax + pmax, cfg.head_dim, dtype=model.dtype, device=dev)
        packed = KVCache(k=[big[i, 0] for i in range(cfg.n_layers)], v=[big[i, 1] for i in range(cfg.n_layers)],
                         valid=torch.zeros(b, lmax + pmax, dtype=torch.bool, device=dev))
        ids = torch.zeros(b, pmax, dtype=torch.long)
        new_valid = torch.zeros(b, pmax, dtype=torch.bool)
        pos = torch.zeros(b, pmax, dtype=torch.long)
        for r, (s, n, p) in enumerate(zip(sids, lens, pends)):
            if n:
                big[:, :, r, :, lmax - n : lmax] = self.bufs[s][:, :, 0, :, :n]  # (L, 2, H_kv, n, D)
                packed.valid[r, lmax - n : lmax] = self.caches[s].valid[0, :n]
            ids[r, pmax - len(p) :] = torch.tensor(p, dtype=torch.long)
            new_valid[r, pmax - len(p) :] = True
            pos[r, pmax - len(p) :] = torch.arange(n, n + len(p))
        packed.length = lmax
        ids, new_valid, pos = ids.to(dev), new_valid.to(dev), pos.to(dev)
        if pmax == 1 and self._fast():  # every row decodes one token: `generate`'s fast decode step
            hidden = model.decode_step(ids[:, 0], pos[:, 0], packed, self.attn)  # (B, C)
        else:  # some row prefills several tokens (a new prompt, inserted text): the general forward pass
            hidden = model(ids, positions=pos, cache=packed, key_valid=new_valid, attn=self.attn, compute_logits=False).hidden[:, -1]
        logits = model.lm_logits(hidden)  # (B, V)
        for r, (s, n, p) in enumerate(zip(sids, lens, pends)):
            self._grow(s, n + len(p))
            c = self.caches[s]
            self.bufs[s][:, :, 0, :, n : n + len(p)] = big[:, :, r, :, lmax + pmax - len(p) :]
            c.valid[0, n : n + len(p)] = True
            c.length = n + len(p)
        model.train(was_training)
        if not isinstance(params, dict):
            one = params or SamplingParams()
            params = {s: one for s in sids}
        groups: dict[tuple[float, float], list[int]] = {}
        for r, s in enumerate(sids):
            groups.setdefault((params[s].temperature, params[s].top_p), []).append(r)
        result: dict[int, tuple[int, float]] = {}
        for (temp, top_p), rows in groups.items():
            tok, lp = sample_next(logits[rows], temp, top_p, self.generator)
            for r, t, v in zip(rows, tok.tolist(), lp.tolist()):
                result[sids[r]] = (t, v)
                self.pending[sids[r]] = [t]
        return result


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

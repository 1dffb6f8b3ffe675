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
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import torch

import sherman.core.generate as gen
from sherman.core.attention import AttnContext
from sherman.core.generate import SamplingParams, sample_next
from sherman.core.kv_cache import KVCache
from sherman.core.linear import hold_packs, packed_weights
from sherman.core.model import Transformer


@dataclass
class _Resident:
    """The batch cache of the last step, kept for the next step of the same rows (`Decoder._resident_step`)."""

    sids: list[int]  # its row order
    big: torch.Tensor  # (L, 2, B, H_kv, cap, D): the keys/values `packed` views
    packed: KVCache
    since: int  # slots [since, packed.length) are not yet in the rows' own caches
    lens: dict[int, int]  # each row's own cache length at `since`


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

    Each step runs inside `packed_weights`, as `generate`'s loop does: the prepacked weights and, for fp32 CPU models,
    the C++ decode kernels (`core/cpu_decode.py`, whole layer loop in one call) and sampler. The packs are built on the
    first step and held (`hold_packs`) until `close()` (or garbage collection), rebuilt on the first step after a
    weight update, so steps do not re-pack (the same tokens as `generate`: tests).
    """

    def __init__(self, model: Transformer, *, generator: torch.Generator | None = None, attn: AttnContext | None = None, init_len: int = 256,
                 headroom: int = 64):  # fmt: skip
        self.model = model
        self.headroom = headroom  # free slots of a packed batch cache, for the in-place steps that follow
        self.generator = generator
        self.attn = attn
        self.init_len = init_len
        self.caches: dict[int, KVCache] = {}
        self.bufs: dict[int, torch.Tensor] = {}
        self.pending: dict[int, list[int]] = {}
        self._next = 0
        self._res: _Resident | None = None
        self._flat: dict[bool, torch.Tensor] = {}  # reused batch-cache storage (`_scratch`)
        self._free: dict[int, list[torch.Tensor]] = {}  # removed sequences' buffers by capacity, reused by `_alloc`
        self.max_free = 16
        self._release_packs = None  # set on the first step: releases the held inference packs (idempotent)

    def close(self) -> None:
        """Release the held inference packs (the model's extra packed copy of its weights); stepping again re-holds."""
        if self._release_packs is not None:
            self._release_packs()
            self._release_packs = None

    def _hold_packs(self) -> None:
        if self._release_packs is None:
            self._release_packs = hold_packs(self.model)
            weakref.finalize(self, self._release_packs)  # a Decoder dropped without close() releases them too

    def _fast(self) -> bool:
        """Whether one-token steps may use `Transformer.decode_step` (the rule `generate` applies: `FAST_DECODE`, no MoE
        layers, no module hooks, no ReSA rectification)."""
        rectify = self.attn is not None and self.attn.options.get("rectify_every")
        return gen.FAST_DECODE and self.model.cfg.n_experts == 0 and not rectify and not gen._has_hooks(self.model)

    def _alloc(self, cap: int) -> tuple[KVCache, torch.Tensor]:
        c = self.model.cfg
        free = self._free.get(cap)
        if free:  # a removed sequence's buffer, zeroed again: warm pages (a fresh MB-sized tensor costs its page faults)
            buf = free.pop().zero_()
        else:
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
        self._flush()
        c = self.caches[sid]
        assert 0 <= n <= self.length(sid), f"cannot truncate a sequence of {self.length(sid)} tokens to {n}"
        if n <= c.length:
            c.rewind(n)
            self.pending[sid] = []
        else:
            self.pending[sid] = self.pending[sid][: n - c.length]

    def remove(self, sid: int) -> None:
        if self._res is not None and sid in self._res.sids:
            self._flush()
        self.caches.pop(sid, None)
        buf = self.bufs.pop(sid, None)
        self.pending.pop(sid, None)
        if buf is not None and sum(len(v) for v in self._free.values()) < self.max_free:
            self._free.setdefault(buf.shape[-2], []).append(buf)

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
        self._hold_packs()
        with packed_weights(self.model):  # this (worker) thread's inference context; the held packs are reused
            return self._step(sids, params)

    def _step(self, sids: list[int], params: dict[int, SamplingParams] | SamplingParams | None) -> dict[int, tuple[int, float]]:
        model = self.model
        assert all(len(self.pending[s]) > 0 for s in sids), "every stepped sequence needs a pending token"
        was_training = model.training
        model.eval()
        try:
            one = [s for s in sids if len(self.pending[s]) == 1]
            many = [s for s in sids if len(self.pending[s]) > 1]
            if one and many:  # prefill rows apart: padding every decoding row to the longest prompt costs ~pmax x the step
                out = dict(zip(one, self._decode_rows(one)))
                out.update(zip(many, self._packed_step(many, resident=False)))
                hidden = torch.stack([out[s] for s in sids])  # (B, C)
            elif one:
                hidden = self._decode_rows(one)
            else:
                self._flush()
                hidden = self._packed_step(many)
            logits = model.lm_logits(hidden)  # (B, V)
        finally:
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

    def _scratch(self, resident: bool, shape: tuple[int, ...]) -> torch.Tensor:
        """A view of shape `shape` of one of two reused flat buffers (the resident batch cache's, and the one of prefill
        rows packed beside it), grown by half again when too small: a fresh multi-MB tensor per step costs its page
        faults (measured: a 5.7 MB zeros ~5 ms, the whole in-place step ~3 ms)."""
        n = 1
        for d in shape:
            n *= d
        buf = self._flat.get(resident)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n + n // 2, dtype=self.model.dtype, device=self.model.device)
            self._flat[resident] = buf
        return buf[:n].view(shape)

    def _decode_rows(self, sids: list[int]) -> torch.Tensor:
        """One token for each of `sids` (one pending token each) -> hidden (B, C): in place in the resident batch cache
        when it holds exactly these rows and has a free slot, else packed afresh (and resident from then on)."""
        res = self._res
        if res is not None and set(sids) == set(res.sids) and res.packed.length < res.packed.max_len:
            return self._resident_step(sids)
        self._flush()
        return self._packed_step(sids)

    def _packed_step(self, sids: list[int], resident: bool = True) -> torch.Tensor:
        """Pack the rows' caches left-padded into one batch cache (with `headroom` free slots), run the model over
        every row's pending tokens, write each row's new keys/values back -> hidden (B, C). With `resident` the batch
        cache stays for the following steps of the same rows (rows decoding in place must not be among `sids`
        otherwise: the caller flushes them first)."""
        model, dev, cfg = self.model, self.model.device, self.model.cfg
        lens = [self.caches[s].length for s in sids]
        pends = [self.pending[s] for s in sids]
        b, lmax, pmax = len(sids), max(lens), max(len(p) for p in pends)
        cap = lmax + pmax + self.headroom
        big = self._scratch(resident, (cfg.n_layers, 2, b, cfg.n_kv_heads, cap, cfg.head_dim)).zero_()  # (L, 2, B, H_kv, cap, D)
        packed = KVCache(k=[big[i, 0] for i in range(cfg.n_layers)], v=[big[i, 1] for i in range(cfg.n_layers)],
                         valid=torch.zeros(b, cap, dtype=torch.bool, device=dev))
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
        for r, (s, n, p) in enumerate(zip(sids, lens, pends)):
            self._grow(s, n + len(p))
            c = self.caches[s]
            self.bufs[s][:, :, 0, :, n : n + len(p)] = big[:, :, r, :, lmax + pmax - len(p) : lmax + pmax]
            c.valid[0, n : n + len(p)] = True
            c.length = n + len(p)
        if resident:
            self._res = _Resident(list(sids), big, packed, packed.length, {s: self.caches[s].length for s in sids})
        return hidden

    def _resident_step(self, sids: list[int]) -> torch.Tensor:
        """One token for each row of the resident batch cache, in place (no per-row copies): slot `packed.length` of
        every row; the new keys/values are written back to the rows' own caches when the batch changes (`_flush`)
        -> hidden (B, C) in the order of `sids`."""
        res, dev = self._res, self.model.device
        order = res.sids  # the batch cache's row order
        ids = torch.tensor([self.pending[s][0] for s in order], dtype=torch.long, device=dev)  # (B,)
        pos = torch.tensor([self.caches[s].length for s in order], dtype=torch.long, device=dev)  # (B,)
        if self._fast():
            hidden = self.model.decode_step(ids, pos, res.packed, self.attn)  # (B, C)
        else:
            hidden = self.model(ids[:, None], positions=pos[:, None], cache=res.packed, attn=self.attn, compute_logits=False).hidden[:, -1]
        for s in order:
            self.caches[s].length += 1  # the token is in the batch cache; its own cache gets it at `_flush`
        if order != list(sids):
            row = {s: r for r, s in enumerate(order)}
            hidden = hidden[torch.tensor([row[s] for s in sids], device=dev)]
        return hidden

    def _flush(self) -> None:
        """Write the tokens decoded in place in the resident batch cache back to each row's own cache; drop it."""
        res, self._res = self._res, None
        if res is None or res.packed.length == res.since:
            return
        a, z = res.since, res.packed.length
        for r, s in enumerate(res.sids):
            if s not in self.caches:
                continue
            n0, n = res.lens[s], self.caches[s].length  # n = n0 + z - a: the in-place steps counted the tokens already
            self.caches[s].length = n0  # what its own buffer holds (`_grow` copies that much)
            self._grow(s, n)
            c = self.caches[s]
            self.bufs[s][:, :, 0, :, n0:n] = res.big[:, :, r, :, a:z]
            c.valid[0, n0:n] = res.packed.valid[r, a:z]
            c.length = n


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
        self.decoder.close()

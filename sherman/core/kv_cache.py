"""Preallocated KV cache shared by every generation path.

Layout: one key and one value tensor per layer, `(B, H_kv, T_max, D)`, allocated once. Rows of a batch
share the slot index (prompts are left padded), and `valid` marks which slots hold real tokens, so a
padded slot is never attended. Because the time axis is contiguous per (batch, head), a block-major
view `(B, H_kv, T_max // bs, bs, D)` is a free reshape (sparse backends use it).

Sparse backends keep their own per-layer state (block summaries, gate caches) in `extras`, a plain
dict keyed by backend name, so the cache stays the one object that travels through `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class KVCache:
    k: list[torch.Tensor]  # per layer (B, H_kv, T_max, D)
    v: list[torch.Tensor]  # per layer (B, H_kv, T_max, D)
    valid: torch.Tensor  # (B, T_max) bool: slot holds a real (non-pad) token
    length: int = 0  # number of slots written so far (shared by all rows)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def allocate(
        cls,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (batch, n_kv_heads, max_len, head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        return cls(k=k, v=v, valid=valid)

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def reserve(self, n: int, valid: torch.Tensor | None = None) -> tuple[int, int]:
        """Mark the next `n` slots as written (valid per row if given, else all valid); returns (start, end).

        Called once per forward pass, before the layers write their keys and values into [start, end).
        """
        start, end = self.length, self.length + n
        assert end <= self.max_len, f"KV cache overflow: need {end} slots, have {self.max_len}"
        if valid is None:
            self.valid[:, start:end] = True
        else:
            self.valid[:, start:end] = valid
        self.length = end
        return start, end

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H_kv, n, D) keys/values at [start, start+n) and return views of all slots up to the end."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def rewind(self, length: int) -> None:
        """Forget every slot at or after `length` (used by rectification and speculative paths)."""
        assert 0 <= length <= self.length
        self.valid[:, length:] = False
        self.length = length

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the given batch rows, in that order (repeats allowed: `generate` copies a shared prompt's rows). `extras`
        are dropped."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
        self.valid = self.valid.index_select(0, rows)
        self.extras = {}

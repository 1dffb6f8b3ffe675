"""Long-context key-value retrieval, the needle-style probe for sparse attention (SeerAttention-R, ReSA).

Prompt: `n_pairs` random "key:value" pairs joined by ",", then "?" and one of the keys and ":", e.g.
"k3f9:a81c,zz01:7qpe,...?zz01:" ; the answer (and trace) is that key's value "7qpe". Keys are distinct; values are
random and may repeat. `depth` places the queried pair at a fraction of the context (0 = first pair, 1 = last), so an
experiment can sweep depth x length; None draws the position uniformly. Reward = exact match of the final answer
(text after the last "#" or the whole completion, cut at "<eos>").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sherman.core.common import ShermanError
from sherman.tasks.base import Example
from sherman.tasks.parsing import final_answer


@dataclass
class KVRetrievalConfig:
    n_pairs: int = 32
    """Key-value pairs in the context (context length ~ n_pairs * (key_len + value_len + 2) characters)."""
    key_len: int = 4
    """Characters per key."""
    value_len: int = 4
    """Characters per value."""
    depth: float | None = None
    """Position of the queried pair as a fraction of the context in [0, 1]; None = uniform at random."""
    charset: str = "abcdefghijklmnopqrstuvwxyz0123456789"
    """Characters keys (and, unless value_charset is set, values) are drawn from."""
    sep: str = ":"
    """Separator between a key and its value, in the pairs and after the queried key; "" = none ("k3v1,...?k3")."""
    value_charset: str | None = None
    """Characters values are drawn from; None = the same as charset (keys and values then share one vocabulary)."""

    def __post_init__(self):
        if self.n_pairs < 1 or self.key_len < 1 or self.value_len < 1:
            raise ShermanError("kv_retrieval: n_pairs, key_len and value_len must be >= 1")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ShermanError(f"kv_retrieval: depth must be in [0, 1] or None, got {self.depth}")
        if not self.charset or any(c in ",:?#" or c.isspace() for c in self.charset) or len(set(self.charset)) != len(self.charset):
            raise ShermanError(f"kv_retrieval: charset must be distinct chars without ',:?#' or spaces, got {self.charset!r}")
        if self.value_charset is not None and (
            not self.value_charset or any(c in ",:?#" or c.isspace() for c in self.value_charset) or len(set(self.value_charset)) != len(self.value_charset)
        ):
            raise ShermanError(f"kv_retrieval: value_charset must be distinct chars without ',:?#' or spaces, got {self.value_charset!r}")
        if self.sep not in ("", ":"):
            raise ShermanError(f"kv_retrieval: sep must be ':' or '', got {self.sep!r}")
        if len(self.charset) ** self.key_len < self.n_pairs:
            raise ShermanError(f"kv_retrieval: {len(self.charset)}^{self.key_len} keys is too few for {self.n_pairs} distinct keys")


class KVRetrieval:
    """See the module docstring. Built as `KVRetrieval(n_pairs=64, depth=0.5, ...)`."""

    name = "kv_retrieval"

    def __init__(self, cfg: KVRetrievalConfig | None = None, **kwargs):
        self.cfg = cfg or KVRetrievalConfig(**kwargs)

    def _word(self, rng: random.Random, n: int, charset: str | None = None) -> str:
        return "".join(rng.choice(charset or self.cfg.charset) for _ in range(n))

    def sample(self, rng: random.Random) -> Example:
        c = self.cfg
        keys: dict[str, None] = {}
        while len(keys) < c.n_pairs:
            keys[self._word(rng, c.key_len)] = None
        pairs = [(k, self._word(rng, c.value_len, c.value_charset)) for k in keys]
        pos = rng.randrange(c.n_pairs) if c.depth is None else round(c.depth * (c.n_pairs - 1))
        key, value = pairs[pos]
        prompt = ",".join(f"{k}{c.sep}{v}" for k, v in pairs) + f"?{key}{c.sep}"
        depth = pos / max(c.n_pairs - 1, 1)
        return Example(prompt, value, {"key": key, "value": value, "position": pos, "depth": depth, "n_pairs": c.n_pairs})

    def reward(self, ex: Example, completion: str) -> float:
        return 1.0 if final_answer(completion) == ex.answer else 0.0

    def trace(self, ex: Example, rng: random.Random | None = None) -> str:
        return ex.answer

    def alphabet(self) -> str:
        return "".join(dict.fromkeys(self.cfg.charset + (self.cfg.value_charset or ""))) + ",:?"

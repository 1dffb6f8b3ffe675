"""Data Selection (DELT, arXiv 2506.21545, Sec. 3 / 4.2): keep the top r fraction of documents by score.

Selection is the optional efficiency component of DELT: it removes data before ordering. Scores follow the
convention "higher is better" for every scorer in `scoring.py`.
"""

from __future__ import annotations

import math

import numpy as np


def n_keep(n: int, ratio: float) -> int:
    """Number of documents kept from `n` at ratio r: round(r * n), at least 1 when n > 0."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"selection ratio must be in (0, 1], got {ratio}")
    return min(n, max(1, math.floor(ratio * n + 0.5))) if n else 0


def select_top(scores: np.ndarray | list[float], ratio: float) -> np.ndarray:
    """Indices of the top `ratio` fraction by score, returned in their original corpus order.

    Ties are broken by position (earlier document wins), so the result is deterministic.
    """
    s = np.asarray(scores, dtype=np.float64)
    assert s.ndim == 1, "scores must be one float per document"
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    k = n_keep(len(s), ratio)
    best = np.argsort(-s, kind="stable")[:k]  # descending, stable on ties
    return np.sort(best)

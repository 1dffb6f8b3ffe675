"""Data Ordering (DELT, arXiv 2506.21545, Sec. 4.3): shuffled, ascending, descending and Folding Ordering.

Folding Ordering (Sec. 4.3.2, Fig. 4) sorts the documents by score (ascending) and then "folds" the sorted
list into L layers without duplication: layer i takes every L-th document starting at rank i, and the
layers are concatenated. Training therefore sweeps the score range L times, each sweep from low to high
score, which the paper argues mitigates forgetting (the model sees high- and low-score data in every
part of training) and distribution bias (each sweep covers the whole distribution), while keeping the
curriculum's easy-to-hard progression inside each sweep. Sorted orders break ties by position.

Every order is a permutation of `range(n)`, deterministic given its seed. The training loop must consume
it as given (`TrainConfig(shuffle=False)`).
"""

from __future__ import annotations

import numpy as np

ORDERS = ("shuffle", "ascending", "descending", "folding")


def ascending(scores: np.ndarray | list[float]) -> np.ndarray:
    """Indices sorted by score, lowest first (stable: ties keep corpus order)."""
    return np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")


def descending(scores: np.ndarray | list[float]) -> np.ndarray:
    """Indices sorted by score, highest first (stable: ties keep corpus order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def shuffled(n: int, seed: int) -> np.ndarray:
    """A uniformly random permutation of range(n) from `seed`."""
    return np.random.default_rng(seed).permutation(n)


def folding(scores: np.ndarray | list[float], folds: int = 3) -> np.ndarray:
    """Folding Ordering with L = `folds` layers: asc = ascending(scores); concat(asc[i::L] for i in range(L))."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    asc = ascending(scores)
    return np.concatenate([asc[i::folds] for i in range(folds)])


def make_order(scores: np.ndarray | list[float], method: str, seed: int = 0, folds: int = 3) -> np.ndarray:
    """Dispatch on `method` in ORDERS; returns a permutation of range(len(scores))."""
    n = len(scores)
    if method == "shuffle":
        return shuffled(n, seed)
    if method == "ascending":
        return ascending(scores)
    if method == "descending":
        return descending(scores)
    if method == "folding":
        return folding(scores, folds)
    raise ValueError(f"unknown order {method!r}; known: {', '.join(ORDERS)}")

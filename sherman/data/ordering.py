"""Data Ordering (DELT, arXiv 2506.21545, Sec. 4.3): shuffled, ascending, descending and Folding Ordering.

Folding Ordering (Sec. 4.3.2, Fig. 4) sorts the documents by score (ascending) and then "folds" the sorted
list into L layers without duplication: layer i takes every L-th document starting at rank i, and the
layers are concatenated. Training therefore sweeps the score range L times, each sweep from low to high
score, which the paper argues mitigates forgetting (the model sees high- and low-score data in every
part of training) and distribution bias (each sweep covers the whole distribution), while keeping the
curriculum's easy-to-hard progression inside each sweep. Sorted orders break ties by position.

Window jitter (the official DELT code, `data_ordering/folding.py`, option `window_size`): after folding, the
sequence is cut into consecutive windows of `window` documents and each window is shuffled (seeded), so the
order stays globally folded but is locally random; window <= 1 leaves it unchanged (the official default is 0).

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


def window_jitter(order: np.ndarray, window: int, seed: int = 0) -> np.ndarray:
    """Shuffle each consecutive block order[i : i + window] independently (seeded); window <= 1 is the identity."""
    order = np.asarray(order).copy()
    if window <= 1:
        return order
    rng = np.random.default_rng(seed)
    for lo in range(0, len(order), window):
        rng.shuffle(order[lo : lo + window])
    return order


def folding(scores: np.ndarray | list[float], folds: int = 3, window: int = 0, seed: int = 0) -> np.ndarray:
    """Folding Ordering with L = `folds` layers: asc = ascending(scores); concat(asc[i::L] for i in range(L)),
    then `window_jitter(., window, seed)`."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    asc = ascending(scores)
    return window_jitter(np.concatenate([asc[i::folds] for i in range(folds)]), window, seed)


def make_order(scores: np.ndarray | list[float], method: str, seed: int = 0, folds: int = 3, window: int = 0) -> np.ndarray:
    """Dispatch on `method` in ORDERS; returns a permutation of range(len(scores))."""
    n = len(scores)
    if method == "shuffle":
        return shuffled(n, seed)
    if method == "ascending":
        return ascending(scores)
    if method == "descending":
        return descending(scores)
    if method == "folding":
        return folding(scores, folds, window, seed)
    raise ValueError(f"unknown order {method!r}; known: {', '.join(ORDERS)}")

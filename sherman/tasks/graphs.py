"""Path-finding on directed graphs: the planning abstraction of arXiv 2509.22613 (Sec. 2, after ALPINE, arXiv 2405.09220).

A planning instance is a (source s, target t) pair of a directed graph; a plan is a path
s -> v1 -> ... -> t whose every step is an edge. A language model sees one token per node and is
trained on sequences `s t s v1 ... t` (source, target, then the path). This module holds the
task side only (no model): the graph, its reachability, the train/test split of reachable pairs,
SFT paths, the path checker, and the "observed reachability" bookkeeping the paper uses to explain
why SFT memorises co-occurrence instead of learning transitivity (Sec. 3).

Blocksworld (`sherman.tasks.blocksworld`) builds a `PathGraph` too, so every method runs on both.

    g = erdos_renyi_dag(GraphConfig(n_nodes=100, edge_prob=0.1, seed=0))
    data = make_planning_data(g, DataConfig(train_frac=0.2, paths_per_pair=5, seed=0))
    check_path(g, s, t, [s, v1, t])  # -> True / False
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PathGraph:
    """A directed graph on nodes 0..n_nodes-1 with per-node sorted out-neighbour lists."""

    n_nodes: int
    """Number of nodes (each is one token)."""
    adj: list[list[int]]
    """adj[u] = sorted out-neighbours of u."""
    names: list[str] = field(default_factory=list)
    """Optional human-readable node names (Blocksworld states); empty = str(index)."""

    def __post_init__(self) -> None:
        assert len(self.adj) == self.n_nodes, f"adj has {len(self.adj)} rows for {self.n_nodes} nodes"
        self._edges = {(u, v) for u, vs in enumerate(self.adj) for v in vs}
        for u, v in self._edges:
            assert 0 <= v < self.n_nodes and u != v, f"bad edge ({u}, {v})"

    def is_edge(self, u: int, v: int) -> bool:
        return (u, v) in self._edges

    @property
    def n_edges(self) -> int:
        return len(self._edges)

    def name(self, u: int) -> str:
        return self.names[u] if self.names else str(u)

    def adjacency_matrix(self) -> np.ndarray:
        """(N, N) bool, A[u, v] = edge u -> v."""
        a = np.zeros((self.n_nodes, self.n_nodes), dtype=bool)
        for u, vs in enumerate(self.adj):
            a[u, vs] = True
        return a


@dataclass
class GraphConfig:
    n_nodes: int = 100
    """Number of nodes of the random graph."""
    edge_prob: float = 0.1
    """Probability of each edge i -> j (i < j in the DAG)."""
    dag: bool = True
    """Erdős–Rényi DAG (edges only from lower to higher index) when True, else a general ER digraph."""
    seed: int = 0
    """Seed of the graph draw."""

    def __post_init__(self) -> None:
        if self.n_nodes < 2:
            raise ValueError(f"n_nodes must be >= 2, got {self.n_nodes}")
        if not 0.0 < self.edge_prob <= 1.0:
            raise ValueError(f"edge_prob must be in (0, 1], got {self.edge_prob}")


def erdos_renyi_dag(cfg: GraphConfig) -> PathGraph:
    """Erdős–Rényi random digraph; with cfg.dag each edge goes from a lower to a higher index."""
    rng = np.random.default_rng(cfg.seed)
    draw = rng.random((cfg.n_nodes, cfg.n_nodes)) < cfg.edge_prob  # (N, N)
    np.fill_diagonal(draw, False)
    if cfg.dag:
        draw = np.triu(draw, k=1)
    adj = [sorted(np.nonzero(draw[u])[0].tolist()) for u in range(cfg.n_nodes)]
    return PathGraph(cfg.n_nodes, adj)


def reachability(g: PathGraph) -> np.ndarray:
    """(N, N) bool, R[u, v] = a path of length >= 1 leads from u to v (BFS from every node)."""
    r = np.zeros((g.n_nodes, g.n_nodes), dtype=bool)
    for s in range(g.n_nodes):
        seen, queue = set(), deque(g.adj[s])
        while queue:
            v = queue.popleft()
            if v in seen:
                continue
            seen.add(v)
            queue.extend(g.adj[v])
        r[s, list(seen)] = True
    return r


def distances_to(g: PathGraph, t: int) -> np.ndarray:
    """(N,) shortest number of steps from each node to t (0 at t, -1 when t is unreachable)."""
    rev: list[list[int]] = [[] for _ in range(g.n_nodes)]
    for u, vs in enumerate(g.adj):
        for v in vs:
            rev[v].append(u)
    d = np.full(g.n_nodes, -1, dtype=np.int64)
    d[t] = 0
    queue = deque([t])
    while queue:
        v = queue.popleft()
        for u in rev[v]:
            if d[u] < 0:
                d[u] = d[v] + 1
                queue.append(u)
    return d


def check_path(g: PathGraph, s: int, t: int, path: list[int]) -> bool:
    """True iff `path` starts at s, ends at t, has at least one step, and every step is an edge."""
    if len(path) < 2 or path[0] != s or path[-1] != t:
        return False
    return all(g.is_edge(u, v) for u, v in zip(path[:-1], path[1:]))


def random_path(g: PathGraph, s: int, t: int, rng: random.Random, mode: str = "reach", dist: np.ndarray | None = None,
                reach: np.ndarray | None = None) -> list[int]:
    """A random path s -> t: each step picks uniformly among the successors allowed by `mode`.

    mode "reach": any successor that is t or reaches t (terminates on DAGs; the ALPINE data).
    mode "shortest": any successor one step closer to t (a uniformly-stepped shortest path; any graph).
    """
    if mode == "reach":
        reach = reachability(g) if reach is None else reach
        assert reach[s, t], f"{t} is not reachable from {s}"
        path = [s]
        while path[-1] != t:
            u = path[-1]
            options = [v for v in g.adj[u] if v == t or reach[v, t]]
            path.append(rng.choice(options))
            assert len(path) <= g.n_nodes + 1, "mode 'reach' needs an acyclic graph; use mode 'shortest'"
        return path
    if mode == "shortest":
        dist = distances_to(g, t) if dist is None else dist
        assert dist[s] > 0, f"{t} is not reachable from {s}"
        path = [s]
        while path[-1] != t:
            u = path[-1]
            path.append(rng.choice([v for v in g.adj[u] if dist[v] == dist[u] - 1]))
        return path
    raise ValueError(f"unknown path mode {mode!r}; use 'reach' or 'shortest'")


@dataclass
class DataConfig:
    train_frac: float = 0.2
    """Fraction of reachable (s, t) pairs used for training (the rest are test pairs)."""
    paths_per_pair: int = 5
    """K random SFT paths per train pair."""
    path_mode: str = "reach"
    """How SFT paths are drawn: 'reach' (random walk among successors reaching t; DAGs) or 'shortest'."""
    seed: int = 0
    """Seed of the split and of the SFT paths."""

    def __post_init__(self) -> None:
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"train_frac must be in (0, 1), got {self.train_frac}")
        if self.paths_per_pair < 1:
            raise ValueError(f"paths_per_pair must be >= 1, got {self.paths_per_pair}")
        if self.path_mode not in ("reach", "shortest"):
            raise ValueError(f"path_mode must be 'reach' or 'shortest', got {self.path_mode!r}")


@dataclass
class PlanningData:
    graph: PathGraph
    """The graph all pairs live on."""
    reach: np.ndarray
    """(N, N) bool true reachability."""
    train_pairs: list[tuple[int, int]]
    """(s, t) pairs seen in SFT and RL."""
    test_pairs: list[tuple[int, int]]
    """Held-out reachable pairs."""
    sft_paths: list[list[int]]
    """Node paths [s, ..., t] of the SFT data (K per train pair)."""
    observed: np.ndarray
    """(N, N) bool observed reachability: O[u, t] = u lies on some SFT path whose target is t (u != t)."""

    @property
    def vocab_size(self) -> int:
        """Nodes + one pad token."""
        return self.graph.n_nodes + 1

    @property
    def pad_id(self) -> int:
        return self.graph.n_nodes

    def sequences(self) -> list[list[int]]:
        """SFT token sequences `s t s v1 ... t` (prompt = first three tokens)."""
        return [[p[0], p[-1]] + p for p in self.sft_paths]

    def unobserved_test_pairs(self) -> list[tuple[int, int]]:
        """Test pairs needing transitivity: the source never appears on an SFT path with that target."""
        return [(s, t) for s, t in self.test_pairs if not self.observed[s, t]]


def observed_reachability(n_nodes: int, paths: list[list[int]]) -> np.ndarray:
    """(N, N) bool, O[u, t] = u appears (before the end) on some path that ends at target t."""
    o = np.zeros((n_nodes, n_nodes), dtype=bool)
    for p in paths:
        o[p[:-1], p[-1]] = True
    return o


def make_planning_data(g: PathGraph, cfg: DataConfig) -> PlanningData:
    """Split the reachable pairs of g into train/test and draw K SFT paths per train pair."""
    reach = reachability(g)
    pairs = [(int(s), int(t)) for s, t in zip(*np.nonzero(reach)) if s != t]
    if len(pairs) < 2:
        raise ValueError(f"graph has only {len(pairs)} reachable pairs; raise edge_prob or n_nodes")
    rng = random.Random(cfg.seed)
    rng.shuffle(pairs)
    n_train = max(1, min(len(pairs) - 1, round(cfg.train_frac * len(pairs))))
    train, test = sorted(pairs[:n_train]), sorted(pairs[n_train:])
    dists: dict[int, np.ndarray] = {}
    paths = []
    for s, t in train:
        if cfg.path_mode == "shortest" and t not in dists:
            dists[t] = distances_to(g, t)
        for _ in range(cfg.paths_per_pair):
            paths.append(random_path(g, s, t, rng, cfg.path_mode, dist=dists.get(t), reach=reach))
    return PlanningData(g, reach, train, test, paths, observed_reachability(g.n_nodes, paths))

import random

import numpy as np
import pytest

from sherman.tasks.blocksworld import all_states, blocksworld_graph, canonical, moves
from sherman.tasks.graphs import (
    DataConfig,
    GraphConfig,
    PathGraph,
    check_path,
    distances_to,
    erdos_renyi_dag,
    make_planning_data,
    observed_reachability,
    random_path,
    reachability,
)


def toy() -> PathGraph:
    # 0 -> 1 -> 3, 0 -> 2 -> 3, 3 -> 4
    return PathGraph(5, [[1, 2], [3], [3], [4], []])


def test_graph_is_seeded_and_reproducible():
    a = erdos_renyi_dag(GraphConfig(n_nodes=50, edge_prob=0.1, seed=3))
    b = erdos_renyi_dag(GraphConfig(n_nodes=50, edge_prob=0.1, seed=3))
    c = erdos_renyi_dag(GraphConfig(n_nodes=50, edge_prob=0.1, seed=4))
    assert a.adj == b.adj and a.adj != c.adj
    assert all(u < v for u, vs in enumerate(a.adj) for v in vs)  # a DAG: edges go up in index
    da = make_planning_data(a, DataConfig(seed=1))
    db = make_planning_data(b, DataConfig(seed=1))
    assert da.train_pairs == db.train_pairs and da.sft_paths == db.sft_paths
    n_pairs = len(da.train_pairs) + len(da.test_pairs)
    assert n_pairs == int(reachability(a).sum())
    assert abs(len(da.train_pairs) / n_pairs - 0.2) < 0.01
    assert not set(da.train_pairs) & set(da.test_pairs)
    assert len(da.sft_paths) == 5 * len(da.train_pairs)
    assert all(check_path(a, p[0], p[-1], p) for p in da.sft_paths)
    assert da.sequences()[0][:3] == [da.sft_paths[0][0], da.sft_paths[0][-1], da.sft_paths[0][0]]


def test_path_checker_on_hand_made_paths():
    g = toy()
    assert check_path(g, 0, 3, [0, 1, 3])
    assert check_path(g, 0, 4, [0, 2, 3, 4])
    assert not check_path(g, 0, 3, [0, 3])  # 0 -> 3 is not an edge
    assert not check_path(g, 0, 3, [0, 1])  # does not end at the target
    assert not check_path(g, 0, 3, [1, 3])  # does not start at the source
    assert not check_path(g, 0, 0, [0])  # no step
    assert not check_path(g, 0, 4, [0, 1, 3, 2, 3, 4])  # 3 -> 2 is not an edge


def test_reachability_distances_and_observed():
    g = toy()
    r = reachability(g)
    assert r[0].tolist() == [False, True, True, True, True]
    assert r[4].sum() == 0 and not r[3, 0]
    assert distances_to(g, 4).tolist() == [3, 2, 2, 1, 0]
    assert distances_to(g, 1).tolist() == [1, 0, -1, -1, -1]
    o = observed_reachability(5, [[0, 1, 3], [2, 3, 4]])
    assert {tuple(x) for x in np.argwhere(o)} == {(0, 3), (1, 3), (2, 4), (3, 4)}
    rng = random.Random(0)
    paths = {tuple(random_path(g, 0, 3, rng)) for _ in range(50)}
    assert paths == {(0, 1, 3), (0, 2, 3)}
    assert {tuple(random_path(g, 0, 4, rng, mode="shortest")) for _ in range(50)} == {(0, 1, 3, 4), (0, 2, 3, 4)}


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        GraphConfig(edge_prob=0.0)
    with pytest.raises(ValueError):
        DataConfig(train_frac=1.0)
    with pytest.raises(ValueError):
        DataConfig(path_mode="bfs")


def test_blocksworld_three_blocks_has_13_states_and_legal_moves():
    assert [len(all_states(n)) for n in range(1, 5)] == [1, 3, 13, 73]
    g = blocksworld_graph(3)
    assert g.n_nodes == 13
    states = all_states(3)
    for u, s in enumerate(states):
        for v in g.adj[u]:
            t = states[v]
            # exactly one block changed place: remove it from both, the rest is identical
            moved = [b for b in range(3) if _support(s, b) != _support(t, b)]
            assert len(moved) == 1, (s, t)
            b = moved[0]
            assert _is_top(s, b) and _is_top(t, b)  # it was clear before and is clear after
            assert g.is_edge(v, u)  # moves are reversible
    # all on the table: 6 moves (3 blocks x 2 destinations); one tower: only its top moves (to the table)
    assert len(g.adj[g.names.index("A|B|C")]) == 6
    assert [g.name(v) for v in g.adj[g.names.index("ABC")]] == ["AB|C"]
    assert canonical([(1,), (0, 2)]) == ((0, 2), (1,))
    assert moves(((0,), (1,))) == [((0, 1),), ((1, 0),)]
    # strongly connected
    assert reachability(g)[~np.eye(13, dtype=bool)].all()


def _support(state, b):
    for stack in state:
        if b in stack:
            i = stack.index(b)
            return "table" if i == 0 else stack[i - 1]
    raise AssertionError(b)


def _is_top(state, b):
    return any(stack[-1] == b for stack in state)

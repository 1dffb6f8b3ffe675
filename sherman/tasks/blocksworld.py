"""Blocksworld as a path-finding graph (arXiv 2509.22613, Sec. 6 "Blocksworld").

A state is an arrangement of n labelled blocks into stacks on a table; a move takes the top block
of one stack and puts it on the table or on top of another stack. States are the nodes, legal
moves the edges (every move is reversible, so the graph is symmetric and strongly connected), and
a plan from state s to state t is a path in this graph. The state counts are the numbers of
"forests of ordered lists": 1, 3, 13, 73, 501 for n = 1..5.

    g = blocksworld_graph(3)            # PathGraph with 13 nodes, names like "A|CB" (stacks bottom -> top)
    data = make_planning_data(g, DataConfig(path_mode="shortest"))
"""

from __future__ import annotations

import string
from collections import deque

from sherman.tasks.graphs import PathGraph

State = tuple[tuple[int, ...], ...]
"""Sorted tuple of stacks; each stack lists its blocks bottom -> top."""


def canonical(stacks) -> State:
    return tuple(sorted(tuple(s) for s in stacks if len(s) > 0))


def moves(state: State) -> list[State]:
    """All states reachable by one legal move (top block to the table or onto another stack's top)."""
    out = []
    for i, src in enumerate(state):
        block, rest = src[-1], src[:-1]
        others = [s for j, s in enumerate(state) if j != i]
        if rest:  # to the table (a no-op when the block is already alone on it)
            out.append(canonical(others + [rest, (block,)]))
        for j, dst in enumerate(others):
            out.append(canonical([s for k, s in enumerate(others) if k != j] + [rest, dst + (block,)]))
    return sorted(set(out))


def all_states(n_blocks: int) -> list[State]:
    """Every arrangement of n blocks, found by BFS from all blocks on the table; sorted."""
    if not 1 <= n_blocks <= 7:
        raise ValueError(f"n_blocks must be in 1..7, got {n_blocks}")
    start = canonical([(b,) for b in range(n_blocks)])
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in moves(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return sorted(seen)


def state_name(state: State) -> str:
    """'A|CB': stacks separated by '|', each written bottom -> top."""
    return "|".join("".join(string.ascii_uppercase[b] for b in s) for s in state)


def blocksworld_graph(n_blocks: int) -> PathGraph:
    """The state graph of n-block Blocksworld as a PathGraph (node i = i-th state in sorted order)."""
    states = all_states(n_blocks)
    index = {s: i for i, s in enumerate(states)}
    adj = [sorted(index[m] for m in moves(s)) for s in states]
    return PathGraph(len(states), adj, names=[state_name(s) for s in states])

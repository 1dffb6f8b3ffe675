import numpy as np
import pytest

from sherman.data.ordering import ORDERS, ascending, descending, folding, make_order, shuffled
from sherman.data.selection import n_keep, select_top


def test_folding_hand_derived():
    scores = [5.0, 1.0, 4.0, 2.0, 3.0, 0.0]
    # ascending by score: index 5 (0), 1 (1), 3 (2), 4 (3), 2 (4), 0 (5)
    assert ascending(scores).tolist() == [5, 1, 3, 4, 2, 0]
    # L=3 layers: ranks 0,3 -> [5, 4]; ranks 1,4 -> [1, 2]; ranks 2,5 -> [3, 0]
    assert folding(scores, 3).tolist() == [5, 4, 1, 2, 3, 0]
    # L=2 layers: ranks 0,2,4 -> [5, 3, 2]; ranks 1,3,5 -> [1, 4, 0]
    assert folding(scores, 2).tolist() == [5, 3, 2, 1, 4, 0]
    # L=1 is plain ascending; L >= n keeps ascending too (each layer holds one document)
    assert folding(scores, 1).tolist() == [5, 1, 3, 4, 2, 0]
    assert folding(scores, 6).tolist() == [5, 1, 3, 4, 2, 0]


def test_folding_uneven_layers():
    scores = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # already ascending
    assert folding(scores, 3).tolist() == [0, 3, 6, 1, 4, 2, 5]


def test_descending_and_ties_are_stable():
    scores = [1.0, 3.0, 1.0, 3.0]
    assert descending(scores).tolist() == [1, 3, 0, 2]
    assert ascending(scores).tolist() == [0, 2, 1, 3]


def test_every_order_is_a_deterministic_permutation():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(37)
    for method in ORDERS:
        o = make_order(scores, method, seed=3, folds=4)
        assert sorted(o.tolist()) == list(range(37)), method
        assert make_order(scores, method, seed=3, folds=4).tolist() == o.tolist()
    assert shuffled(37, 1).tolist() != shuffled(37, 2).tolist()
    with pytest.raises(ValueError, match="unknown order"):
        make_order(scores, "zigzag")
    with pytest.raises(ValueError):
        folding(scores, 0)


def test_select_top_exact():
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert select_top(scores, 0.6).tolist() == [1, 2, 3]  # top 3: 0.9 (1), 0.7 (3), 0.5 (2), in corpus order
    assert select_top(scores, 0.2).tolist() == [1]
    assert select_top(scores, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert n_keep(10, 0.5) == 5 and n_keep(10, 0.7) == 7 and n_keep(3, 0.5) == 2 and n_keep(3, 0.01) == 1
    with pytest.raises(ValueError):
        select_top(scores, 0.0)
    with pytest.raises(ValueError):
        select_top(scores, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        select_top([0.1, float("nan")], 0.5)


def test_select_top_keeps_exactly_top_r_on_random_scores():
    s = np.random.default_rng(1).standard_normal(1000)
    for r in (0.5, 0.7):
        keep = select_top(s, r)
        assert len(keep) == int(r * 1000)
        assert s[keep].min() >= np.delete(s, keep).max()

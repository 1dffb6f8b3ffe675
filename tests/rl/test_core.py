"""Numeric tests of sherman.rl.core against hand-derived values."""

import math

import pytest
import torch

from sherman.rl import core as C


def test_opo_baseline_hand_value():
    # b = (2*1 + 4*0 + 6*1) / (2 + 4 + 6) = 8/12
    r, lens = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2.0, 4.0, 6.0])
    b = C.opo_baseline(r, lens, 3)
    assert torch.allclose(b, torch.full((3,), 8 / 12))
    a = C.opo_advantages(r, lens, 3)
    assert torch.allclose(a, torch.tensor([1 - 8 / 12, -8 / 12, 1 - 8 / 12]))


def test_opo_two_groups_and_singleton_and_batch():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    lens = torch.tensor([1.0, 3.0, 5.0, 5.0])
    # group 1: (1*1)/(4) = 0.25; group 2: (5*1)/10 = 0.5
    assert torch.allclose(C.opo_baseline(r, lens, 2), torch.tensor([0.25, 0.25, 0.5, 0.5]))
    # singleton groups: baseline 0, advantage = reward
    assert torch.allclose(C.opo_advantages(r, lens, 1), r)
    # batch level: (1 + 5) / 14
    assert torch.allclose(C.opo_batch_advantages(r, lens), r - 6 / 14)


def test_grpo_and_mean_advantages():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    a = C.grpo_advantages(r, 3, eps=0.0)
    # group 1: mean 2/3, population std sqrt(2/9)
    s = math.sqrt(2 / 9)
    exp1 = torch.tensor([(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s])
    assert torch.allclose(a[:3], exp1, atol=1e-6)
    # a constant group has zero advantage (no division blow-up with eps)
    assert torch.allclose(C.grpo_advantages(r, 3)[3:], torch.zeros(3))
    # unbiased std: sqrt(1/3)
    au = C.grpo_advantages(r[:3], 3, eps=0.0, unbiased=True)
    assert torch.allclose(au, torch.tensor([1 / 3, -2 / 3, 1 / 3]) / math.sqrt(1 / 3), atol=1e-6)
    assert torch.allclose(C.mean_advantages(r, 3), torch.tensor([1 / 3, -2 / 3, 1 / 3, 0, 0, 0]))
    with pytest.raises(AssertionError):
        C.grpo_advantages(torch.zeros(5), 2)


def test_ratios():
    logp = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    old = torch.tensor([[math.log(0.25), math.log(0.4), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(C.token_ratio(logp, old), torch.tensor([[2.0, 0.5, 1.0]]))
    # GSPO: exp(mean(log 2, log 0.5)) = 1
    assert torch.allclose(C.sequence_ratio(logp, old, mask), torch.tensor([1.0]))
    logp2 = torch.tensor([[math.log(0.5), math.log(0.4)]])
    old2 = torch.tensor([[math.log(0.25), math.log(0.1)]])
    # ratios 2 and 4 -> geometric mean sqrt(8)
    assert torch.allclose(C.sequence_ratio(logp2, old2, torch.ones(1, 2)), torch.tensor([math.sqrt(8)]))


def test_clipped_surrogate_boundaries():
    ratio = torch.tensor([0.7, 0.8, 1.0, 1.28, 1.5])
    lo, hi = 0.2, 0.28
    # positive advantage: min(r, clip(r)) -> r below the cap, 1.28 above
    pos = C.clipped_surrogate(ratio, torch.tensor(1.0), lo, hi)
    assert torch.allclose(pos, -torch.tensor([0.7, 0.8, 1.0, 1.28, 1.28]))
    # negative advantage: -min(-r, -clip(r)) = max(r, clip(r)) -> 0.8 floor below, r above
    neg = C.clipped_surrogate(ratio, torch.tensor(-1.0), lo, hi)
    assert torch.allclose(neg, torch.tensor([0.8, 0.8, 1.0, 1.28, 1.5]))
    # clip active only strictly beyond the bounds in the direction of the advantage
    assert C.clip_active(ratio, torch.ones(5), lo, hi).tolist() == [False, False, False, False, True]
    assert C.clip_active(ratio, -torch.ones(5), lo, hi).tolist() == [True, False, False, False, False]
    # gradients: clipped tokens get zero gradient
    r = ratio.clone().requires_grad_(True)
    C.clipped_surrogate(r, torch.tensor(1.0), lo, hi).sum().backward()
    assert r.grad.tolist() == [-1.0, -1.0, -1.0, -1.0, 0.0]


def test_gmpo_sign_aware_clamp():
    log_r = torch.tensor([[0.6, -0.6, 0.1], [0.6, -0.6, 0.1]])
    adv = torch.tensor([1.0, -1.0])
    out = C.gmpo_clamped_log_ratio(log_r, adv, 0.4, 0.4)
    # A > 0: cap at +0.4, no floor; A < 0: floor at -0.4, no cap
    assert torch.allclose(out, torch.tensor([[0.4, -0.6, 0.1], [0.6, -0.4, 0.1]]))
    s = C.gmpo_sequence_ratio(log_r, adv, torch.ones(2, 3), 0.4, 0.4)
    assert torch.allclose(s, torch.exp(torch.tensor([(0.4 - 0.6 + 0.1) / 3, (0.6 - 0.4 + 0.1) / 3])))


def test_gmpo_asymmetric_bounds_both_signs():
    # GMPO Eq. 4 with eps_low = 0.2, eps_high = 0.28: per token min(r A, clip(r, e^-0.2, e^0.28) A), in log space
    lo, hi = 0.2, 0.28
    row = [0.5, -0.5, 0.25, -0.25, 0.1]
    log_r = torch.tensor([row, row])
    adv = torch.tensor([1.0, -1.0])
    out = C.gmpo_clamped_log_ratio(log_r, adv, lo, hi)
    # A > 0: min(log r, clamp) caps at +0.28 only; A < 0: max(log r, clamp) floors at -0.2 (= -clip_low) only
    assert torch.allclose(out, torch.tensor([[0.28, -0.5, 0.25, -0.25, 0.1], [0.5, -0.2, 0.25, -0.2, 0.1]]))
    logp = log_r.clone().requires_grad_(True)
    loss, st = C.policy_loss(logp, torch.zeros(2, 5), adv, torch.ones(2, 5), ratio_type="geometric", clip_low=lo, clip_high=hi)
    # seq 0: -exp((0.28 - 0.5 + 0.25 - 0.25 + 0.1) / 5) = -exp(-0.024); seq 1: +exp((0.5 - 0.2 + 0.25 - 0.2 + 0.1) / 5) = exp(0.09)
    assert loss.item() == pytest.approx((-math.exp(-0.024) + math.exp(0.09)) / 2, rel=1e-6)
    # clipped tokens: 1 of 5 for A > 0, 2 of 5 for A < 0
    assert st["clip_frac"].item() == pytest.approx(3 / 10)
    loss.backward()
    # d loss / d logp_t = -A exp(mean) / (5 B) on unclipped tokens, 0 on clipped ones
    g0, g1 = -math.exp(-0.024) / 10, math.exp(0.09) / 10
    expected = torch.tensor([[0.0, g0, g0, g0, g0], [g1, 0.0, g1, 0.0, g1]])
    assert torch.allclose(logp.grad, expected, atol=1e-7)


def test_aggregation_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert C.aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert C.aggregate_loss(loss, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert C.aggregate_loss(loss, mask, "seq_mean_token_sum_norm", norm_len=5).item() == pytest.approx((6 / 5 + 4 / 5) / 2)
    with pytest.raises(ValueError):
        C.aggregate_loss(loss, mask, "sum")


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert C.kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # k3 with d = log(0.25/0.5) = -log 2: 0.5 + log 2 - 1
    assert C.kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert C.kl_k3(ref, ref).item() == 0.0
    with pytest.raises(ValueError):
        C.kl_estimate(logp, ref, "k2")


def test_entropy():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert C.entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2))


def test_router_shift_hand_value():
    old = torch.log(torch.tensor([0.5, 0.3, 0.2])).view(1, 1, 3)
    new = torch.log(torch.tensor([0.4, 0.4, 0.2])).view(1, 1, 3)
    # old top-2 = experts {0, 1}: |log .4 - log .5| + |log .4 - log .3| = log(1.25 * 4/3); mean over k=2
    g = C.router_shift([new], [old], top_k=2)
    assert g.item() == pytest.approx(math.sqrt(0.6), rel=1e-5)
    # two layers, the second unchanged: mean over 4 terms -> (5/3) ** (-1/4)
    g2 = C.router_shift([new, old], [old, old], top_k=2)
    assert g2.item() == pytest.approx((5 / 3) ** -0.25, rel=1e-5)
    # floor and identity
    assert C.router_shift([new], [old], top_k=2, gamma_min=0.9).item() == pytest.approx(0.9)
    assert C.router_shift([old], [old], top_k=2).item() == pytest.approx(1.0)
    # stop-gradient
    n = new.clone().requires_grad_(True)
    assert not C.router_shift([n], [old], top_k=2).requires_grad


def test_topk_changed_and_router_entropy():
    old = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])).view(1, 2, 3)
    new = torch.log(torch.tensor([[0.3, 0.5, 0.2], [0.5, 0.1, 0.4]])).view(1, 2, 3)
    # token 0: same set {0,1} in a different order; token 1: {0,1} -> {0,2}
    assert C.topk_changed([new], [old], 2).tolist() == [[[0.0, 1.0]]]
    u = torch.zeros(1, 1, 4)
    assert C.router_entropy([u]).item() == pytest.approx(math.log(4))


def test_policy_loss_token_onpolicy_gradient_equals_reinforce():
    # at ratio 1 the clipped loss's gradient is -A * grad logp / (#tokens) under token_mean
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, st = C.policy_loss(logp, logp.detach(), adv, mask, loss_agg="token_mean")
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2 / 3, -2 / 3], [1 / 3, 0.0]]))
    assert loss.item() == pytest.approx(-(2 + 2 - 1) / 3)
    assert st["clip_frac"].item() == 0.0 and st["ratio_var"].item() == pytest.approx(0.0)


def test_policy_loss_router_shift_before_vs_after():
    logp = torch.log(torch.tensor([[1.1]]))
    old = torch.zeros(1, 1)
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 1)
    gamma = torch.tensor([[0.8]])
    # before: ratio 1.1 * 0.8 = 0.88, inside [0.8, 1.2] -> loss -0.88
    lb, _ = C.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.05, gamma=gamma, gamma_mode="before")
    assert lb.item() == pytest.approx(-0.88, rel=1e-5)
    # after: clip(1.1) at 1.05, then * 0.8 -> -0.84
    la, st = C.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.05, gamma=gamma, gamma_mode="after")
    assert la.item() == pytest.approx(-0.84, rel=1e-5)
    assert st["clip_frac"].item() == 1.0


def test_policy_loss_sequence_and_geometric():
    logp = torch.log(torch.tensor([[2.0, 2.0], [1.0, 1.0]]))
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    # GSPO: s = [2, 1]; seq 0 clipped at 1 + 0.1 -> -1.1; seq 1: -(-1) = 1 -> mean -0.05
    ls, st = C.policy_loss(logp, old, adv, mask, ratio_type="sequence", clip_low=0.1, clip_high=0.1)
    assert ls.item() == pytest.approx((-1.1 + 1.0) / 2, rel=1e-5)
    assert st["clip_frac"].item() == 0.5
    # GMPO: log r = log 2 = 0.693 capped at 0.4 for A > 0 -> exp(0.4); seq 1 ratio 1 -> +1
    lg, _ = C.policy_loss(logp, old, adv, mask, ratio_type="geometric", clip_low=0.4, clip_high=0.4)
    assert lg.item() == pytest.approx((-math.exp(0.4) + 1.0) / 2, rel=1e-5)
    # GMPO with router shift before: seq 0: log(2 * 0.5) = 0 -> ratio 1 -> -1;
    # seq 1 (A < 0): log(1 * 0.5) = -0.693 floored at -0.4 -> +exp(-0.4)
    g = torch.full((2, 2), 0.5)
    lgr, _ = C.policy_loss(logp, old, adv, mask, ratio_type="geometric", clip_low=0.4, clip_high=0.4, gamma=g)
    assert lgr.item() == pytest.approx((-1.0 + math.exp(-0.4)) / 2, rel=1e-5)


def test_kept_rows_weight_by_hand():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])  # 3 + 1 + 2 = 6 tokens
    keep = torch.tensor([0, 2])
    assert C.kept_rows_weight(mask, keep, "token_mean") == pytest.approx(5 / 6)
    assert C.kept_rows_weight(mask, keep, "seq_mean_token_mean") == pytest.approx(2 / 3)
    assert C.kept_rows_weight(mask, keep, "seq_mean_token_sum_norm") == pytest.approx(2 / 3)
    # the kept rows' aggregate times the weight = the aggregate over all rows when the other rows' loss is 0
    loss = torch.tensor([[0.5, -1.0, 2.0, 9.0], [0.0, 9.0, 9.0, 9.0], [3.0, 1.0, 9.0, 9.0]])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        full = C.aggregate_loss(loss, mask, mode, 4)
        kept = C.aggregate_loss(loss[keep], mask[keep], mode, 4) * C.kept_rows_weight(mask, keep, mode)
        assert float(kept) == pytest.approx(float(full))
    with pytest.raises(ValueError):
        C.kept_rows_weight(mask, keep, "nope")

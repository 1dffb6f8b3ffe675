"""`sample_next` draws exactly from the (nucleus-truncated) tempered distribution: frequency checks on many rows."""

from __future__ import annotations

import torch

from sherman.core.generate import sample_next

N = 40_000  # rows sampled in one call; a frequency's standard error is <= 0.0025


def freqs(logits: torch.Tensor, temperature: float, top_p: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok, lp = sample_next(logits.expand(N, -1), temperature, top_p, g)
    expected_lp = torch.log_softmax(logits / temperature, -1)[tok]
    assert torch.allclose(lp, expected_lp)  # log-probs are of the tempered, untruncated distribution
    return torch.bincount(tok, minlength=logits.shape[-1]).float() / N


def test_frequencies_match_tempered_softmax():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0, float("-inf"), 0.5])
    for temperature in (1.0, 0.5):
        p = torch.softmax(logits / temperature, -1)
        f = freqs(logits, temperature, 1.0)
        assert f[4] == 0  # zero-probability token never drawn
        assert (f - p).abs().max() < 0.01, (f, p)


def test_top_p_renormalises_the_nucleus():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    p = torch.softmax(logits, -1)  # [0.087, 0.644, 0.237, 0.032]: 0.7 needs tokens 1 and 2
    f = freqs(logits, 1.0, 0.7)
    assert f[0] == 0 and f[3] == 0
    assert abs(f[1] - p[1] / (p[1] + p[2])) < 0.01  # 0.731
    # top_p = 0.9: 0.644 + 0.237 = 0.881 < 0.9 so token 0 joins; token 3 (last 0.032) stays out
    f = freqs(logits, 1.0, 0.9)
    assert f[3] == 0 and abs(f[0] - p[0] / (1 - p[3])) < 0.01


def test_top_p_keeps_ties_and_the_generator_reproduces():
    logits = torch.tensor([1.0, 1.0, 1.0, 0.0])  # three tied tokens at 0.30 each; top_p 0.2 keeps all three
    f = freqs(logits, 1.0, 0.2)
    assert f[3] == 0 and (f[:3] - 1 / 3).abs().max() < 0.01
    a = sample_next(torch.randn(8, 50), 1.0, 0.9, torch.Generator().manual_seed(3))[0]
    assert a.shape == (8,) and a.dtype == torch.long
    torch.manual_seed(0)
    x = torch.randn(8, 50)
    assert torch.equal(sample_next(x, 1.0, 0.9, torch.Generator().manual_seed(3))[0], sample_next(x, 1.0, 0.9, torch.Generator().manual_seed(3))[0])


def test_keep_at_least_equals_the_masked_product():
    from sherman.core.generate import keep_at_least

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, 300, generator=g) * 4, -1)
    p[0, :5] = 0.0  # zeros
    p[1, 7] = 1e-42  # a denormal probability
    th = p.sort(-1).values[:, 150:151].clone()
    th[1, 0] = 1e-42  # the threshold equal to a denormal entry: kept
    th[2, 0] = p[2].max()  # only the largest kept
    assert torch.equal(keep_at_least(p, th), p * (p >= th))

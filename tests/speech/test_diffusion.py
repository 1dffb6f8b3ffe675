import math

import torch

from sherman.speech.diffusion import (
    DiffusionConfig,
    DiffusionHead,
    RegressionHead,
    add_noise,
    cfg_combine,
    cosine_alpha_bar,
    dpm_solver_pp,
    solver_timesteps,
    v_target,
    x0_from_v,
)


def test_cosine_schedule_values():
    ab = cosine_alpha_bar(torch.tensor([0.0, 500.0, 1000.0]))
    # f(500)/f(0) = cos^2((0.5 + 0.008) / 1.008 * pi/2) / cos^2(0.008 / 1.008 * pi/2)
    expect_mid = math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert abs(float(ab[0]) - 1.0) < 1e-12 and abs(float(ab[1]) - expect_mid) < 1e-9 and float(ab[2]) < 1e-12
    assert abs(expect_mid - 0.4938) < 1e-3
    assert solver_timesteps(4) == [999, 749, 500, 250, 0]


def test_v_parameterisation_roundtrip():
    x0, eps, ab = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5, 1)
    xt = add_noise(x0, eps, ab)
    v = v_target(x0, eps, ab)
    assert torch.allclose(x0_from_v(xt, v, ab), x0, atol=1e-6)
    # hand-worked: abar = 0.25 -> x_t = 0.5 x0 + sqrt(.75) eps; v = 0.5 eps - sqrt(.75) x0
    one = torch.ones(1, 1)
    assert abs(float(v_target(2 * one, one, 0.25 * one)) - (0.5 - math.sqrt(0.75) * 2)) < 1e-6


def _gaussian_v_fn(mu: torch.Tensor, s2: torch.Tensor):
    """Exact v for data x0 ~ N(mu, diag(s2)): E[x0|x_t] = mu + a s2 / (a^2 s2 + 1 - a^2) (x_t - a mu)."""

    def v_fn(x, t):
        ab = cosine_alpha_bar(t).float()[:, None]
        a, sig = ab.sqrt(), (1 - ab).sqrt()
        x0 = mu + a * s2 / (ab * s2 + 1 - ab) * (x - a * mu)
        return (a * x - x0) / sig

    return v_fn


def test_dpm_solver_recovers_gaussian_target():
    g = torch.Generator().manual_seed(0)
    mu, s2 = torch.tensor([1.5, -2.0]), torch.tensor([0.25, 4.0])
    noise = torch.randn(20000, 2, generator=g)
    # discretisation error shrinks with steps (measured var of dim 2: 10 steps 3.51, 20 steps 3.85, 50 steps 3.98)
    for steps, rtol in ((10, 0.15), (20, 0.05)):
        out = dpm_solver_pp(_gaussian_v_fn(mu, s2), noise, steps=steps)
        assert torch.allclose(out.mean(0), mu, atol=0.05), out.mean(0)
        assert torch.allclose(out.var(0), s2, rtol=rtol), out.var(0)
    err = [float((dpm_solver_pp(_gaussian_v_fn(mu, s2), noise, steps=n).var(0) - s2).abs().max()) for n in (5, 50)]
    assert err[1] < 0.2 * err[0]


def test_cfg_scale_one_equals_unguided_and_guidance_extrapolates():
    torch.manual_seed(0)
    head = DiffusionHead(DiffusionConfig(latent_dim=4, cond_dim=8, hidden=16, layers=2))
    for p in head.parameters():  # non-trivial outputs (adaLN gates start at zero)
        p.data.normal_(0, 0.2)
    cond, neg = torch.randn(3, 8), torch.randn(3, 8)
    plain = head.sample(cond, generator=torch.Generator().manual_seed(1), steps=5)
    guided1 = head.sample(cond, neg, cfg_scale=1.0, generator=torch.Generator().manual_seed(1), steps=5)
    guided2 = head.sample(cond, neg, cfg_scale=2.0, generator=torch.Generator().manual_seed(1), steps=5)
    assert torch.allclose(plain, guided1, atol=1e-5)
    assert (plain - guided2).abs().max() > 1e-3
    assert torch.equal(cfg_combine(torch.ones(2), torch.zeros(2), 1.3), torch.full((2,), 1.3))


def test_diffusion_head_learns_conditional_means():
    torch.manual_seed(0)
    cfg = DiffusionConfig(latent_dim=2, cond_dim=2, hidden=32, layers=2, batch_mul=4)
    head = DiffusionHead(cfg)
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    conds = torch.eye(2)  # two classes with different target means
    targets = torch.tensor([[2.0, 0.0], [-2.0, 1.0]])
    for _ in range(150):
        idx = torch.randint(0, 2, (32,))
        loss = head.loss(targets[idx] + 0.1 * torch.randn(32, 2), conds[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = head.sample(conds.repeat_interleave(200, 0), steps=10, generator=torch.Generator().manual_seed(0))
    means = out.view(2, 200, 2).mean(1)
    assert torch.allclose(means, targets, atol=0.3), means
    reg = RegressionHead(cfg)
    assert reg.sample(conds).shape == (2, 2)


def test_adaln_block_is_identity_at_init_and_gate_learns():
    from sherman.speech.diffusion import AdaLNBlock

    torch.manual_seed(0)
    blk = AdaLNBlock(8)
    x, c = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.equal(blk(x, c), x)  # adaLN-Zero: gate = 0 at init
    # the gate still receives a gradient (the MLP branch is non-zero), so the block can leave the identity
    blk(x, c).pow(2).sum().backward()
    assert blk.mod.weight.grad.abs().sum() > 0
    # a non-zero gate g scales the branch: out - x = g * MLP(norm(x) * (1 + scale) + shift)
    with torch.no_grad():
        blk.mod.bias[16:] = 0.5  # gate = 0.5, shift = scale = 0 (weights still zero)
    branch = blk.mlp(blk.norm(x))
    assert torch.allclose(blk(x, c) - x, 0.5 * branch, atol=1e-6)
    head = DiffusionHead(DiffusionConfig(latent_dim=4, cond_dim=8, hidden=16, layers=3))
    h = torch.randn(2, 16)
    for b in head.blocks:  # every block of a fresh head is the identity
        assert torch.equal(b(h, torch.randn(2, 16)), h)

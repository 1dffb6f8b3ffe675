"""Data Scoring for DELT (Data Efficacy for LM Training, arXiv 2506.21545, Sec. 4.1).

Every scorer returns one float per document, with the convention "higher is better" (kept by selection,
placed last by ascending order).

Learnability-Quality Scoring (LQS, Sec. 4.1.2, Eqs. 6-14) builds on PDS (Gu et al., "Data Selection via
Optimal Control"): a small proxy model is trained for T steps of SGD with step size eta on a uniform sample,

    theta_{t+1} = theta_t - eta * grad L(theta_t),      L = mean per-document loss of the step's batch,

and the "target vector" is the costate of the target-set loss J along that trajectory (Pontryagin):

    lambda_T = grad J(theta_T),
    lambda_t = lambda_{t+1} + grad J(theta_t) - eta * H(theta_t) lambda_{t+1},   H = Hessian of L (HVP).

PDS scores a document by its alignment with the costate, sum_t eta * lambda_{t+1} . grad l(x_n, theta_t)
(quality). LQS divides each checkpoint's term by the document's gradient norm Delta steps later,

    gamma_n = sum_{t in {0, Delta, 2 Delta, ...}} eta * lambda_{t+1} . grad l(x_n, theta_t) / ||grad l(x_n, theta_{t+Delta})||,

so a document whose gradient shrinks during proxy training (it is learnable) gains weight; the sum runs from
late to early checkpoints, and the scores are z-normalized and clipped to [-3, 3]. Gradients are exact:
per-document gradients with `torch.func.vmap(grad(...))`, Hessian-vector products forward-over-reverse
(`jvp` of `grad`), on a functional view (`torch.func.functional_call`) of the one core Transformer.

Details the paper leaves open, chosen here (fields of `LQSConfig`): the Hessian at step t is that of the
step-t minibatch loss (the loss SGD actually descended); for t + Delta > T the last checkpoint theta_T is
used; `||.|| + eps` guards against a zero gradient; the SGD trajectory starts from a model warmed up by
`warmup_steps` AdamW steps on the proxy sample (from a random init a tiny model barely moves under plain SGD
in T steps, and the costate then only carries unigram statistics).

Baselines: PDS (the numerator only), proxy-model loss (score = -mean token NLL of the proxy model, i.e.
lower perplexity is better) and random. An optional learned scorer (mean-pooled core Transformer + a linear
head, MSE, Sec. 4.1.2 "scorer") extends scores from the proxy sample to a larger corpus; its quality is the
Spearman correlation on a held-out split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from sherman.core.model import ModelConfig, Transformer
from sherman.data.config import LQSConfig  # noqa: F401 - re-exported: `from sherman.data.scoring import LQSConfig`

Params = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------- batching


def pad_batch(seqs: list[list[int]], pad_id: int, max_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> ids (N, T) and mask (N, T); mask[n, t] = 1 when token t is a loss target.

    Token 0 of every document is context only (it has nothing before it); `max_len` > 0 truncates.
    """
    assert seqs, "empty batch"
    seqs = [s[:max_len] if max_len > 0 else s for s in seqs]
    t = max(len(s) for s in seqs)
    assert t >= 2, "every document needs at least two tokens"
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)  # (N, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, 1 : len(s)] = 1
    return ids, mask


def zclip(x: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """z-normalize (mean 0, std 1) and clip to [-clip, clip]; a constant vector maps to zeros."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    z = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    return np.clip(z, -clip, clip)


def flat(g: Params, keys: list[str]) -> torch.Tensor:
    """Per-sample gradients (a `Batched` dict {name: (N, *shape)}) -> (N, P); a plain dict {name: shape} -> (P,)."""
    if isinstance(g, Batched):
        n = g[keys[0]].shape[0]
        return torch.cat([g[k].reshape(n, -1) for k in keys], dim=1)
    return torch.cat([g[k].reshape(-1) for k in keys])


class Batched(dict):
    """A dict of per-sample gradients {name: (N, *shape)} (marks the leading sample axis for `flat`)."""

    _batched = True


# ----------------------------------------------------------------------------------------------- functional LM


class FunctionalLM:
    """A functional view of a core Transformer: losses as pure functions of a parameter dict.

    All calls run attention through the math SDPA kernel: the fused CPU kernel has no forward-mode AD rule
    (needed by the forward-over-reverse HVP) and no vmap batching rule.
    """

    def __init__(self, model: Transformer):
        self.model = model
        self.buffers = {k: v for k, v in model.named_buffers()}
        self.keys = [k for k, _ in model.named_parameters()]

    def params(self) -> Params:
        """A detached copy of the model's current parameters."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def load(self, params: Params) -> None:
        """Copy `params` into the model."""
        with torch.no_grad():
            for k, p in self.model.named_parameters():
                p.copy_(params[k])

    def doc_losses(self, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, T) -> (B,) mean next-token NLL of each document over its masked targets."""
        logits = functional_call(self.model, (params, self.buffers), (ids[:, :-1],)).logits  # (B, T-1, V)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        m = mask[:, 1:].to(logp.dtype)  # (B, T-1)
        return -(logp * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    def doc_loss(self, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One document: ids, mask (T,) -> scalar loss l(x, theta)."""
        return self.doc_losses(params, ids[None], mask[None])[0]

    def batch_loss(self, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Uniformly weighted mean of per-document losses, L(theta) = (1/B) sum_n l(x_n, theta)."""
        return self.doc_losses(params, ids, mask).mean()


def batch_grad(fl: FunctionalLM, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> Params:
    """grad_theta of the mean per-document loss of a batch."""
    with sdpa_kernel(SDPBackend.MATH):
        return grad(fl.batch_loss)(params, ids, mask)


def per_sample_grads(fl: FunctionalLM, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> Batched:
    """Exact per-document gradients with vmap(grad): {name: (N, *shape)}."""
    with sdpa_kernel(SDPBackend.MATH):
        g = vmap(grad(fl.doc_loss), in_dims=(None, 0, 0))(params, ids, mask)
    return Batched(g)


def per_sample_grads_loop(fl: FunctionalLM, params: Params, ids: torch.Tensor, mask: torch.Tensor) -> Batched:
    """The same gradients from a Python loop of single-document backward passes (reference and baseline)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in fl.keys}
    with sdpa_kernel(SDPBackend.MATH):
        for i in range(ids.shape[0]):
            loss = fl.doc_loss(leaves, ids[i], mask[i])
            gs = torch.autograd.grad(loss, [leaves[k] for k in fl.keys])
            for k, g in zip(fl.keys, gs):
                outs[k].append(g)
    return Batched({k: torch.stack(v) for k, v in outs.items()})


def hvp(fl: FunctionalLM, params: Params, v: Params, ids: torch.Tensor, mask: torch.Tensor) -> Params:
    """Hessian-vector product H(theta) v of the batch loss, forward-over-reverse: jvp of grad."""
    with sdpa_kernel(SDPBackend.MATH):
        _, hv = jvp(lambda p: grad(fl.batch_loss)(p, ids, mask), (params,), (v,))
    return hv


# ----------------------------------------------------------------------------------------------- LQS / PDS


@dataclass
class ProxyRun:
    thetas: list[Params]
    """theta_0 .. theta_T."""
    batches: list[np.ndarray]
    """Indices (into the proxy sample) of the minibatch of each step t = 0 .. T-1."""
    lambdas: list[Params] = field(default_factory=list)
    """Costates lambda_0 .. lambda_T."""
    train_loss: list[float] = field(default_factory=list)
    """Minibatch loss at each step."""
    target_loss: list[float] = field(default_factory=list)
    """J(theta_t) for t = 0 .. T."""


def warmup(fl: FunctionalLM, ids: torch.Tensor, mask: torch.Tensor, cfg: LQSConfig) -> Params:
    """theta_0 for the proxy run: `cfg.warmup_steps` AdamW steps from the model's parameters (the model is left unchanged)."""
    rng = np.random.default_rng(cfg.seed + 1)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in fl.params().items()}
    opt = torch.optim.AdamW(list(theta.values()), lr=cfg.warmup_lr, weight_decay=0.0)
    for _ in range(cfg.warmup_steps):
        b = np.sort(rng.choice(ids.shape[0], size=min(cfg.batch_size, ids.shape[0]), replace=False))
        loss = fl.batch_loss(theta, *_trim(ids[b], mask[b]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in theta.items()}


def proxy_train(fl: FunctionalLM, params0: Params, ids: torch.Tensor, mask: torch.Tensor, cfg: LQSConfig) -> ProxyRun:
    """T steps of plain SGD, theta_{t+1} = theta_t - eta grad L_t(theta_t), on uniform minibatches of (ids, mask)."""
    rng = np.random.default_rng(cfg.seed)
    n = ids.shape[0]
    theta = {k: v.detach().clone() for k, v in params0.items()}
    run = ProxyRun([theta], [])
    for _ in range(cfg.proxy_steps):
        b = np.sort(rng.choice(n, size=min(cfg.batch_size, n), replace=False))
        bi, bm = _trim(ids[b], mask[b])
        g = batch_grad(fl, theta, bi, bm)
        with torch.no_grad():
            run.train_loss.append(float(fl.batch_loss(theta, bi, bm)))
        theta = {k: theta[k] - cfg.lr * g[k] for k in theta}
        run.thetas.append(theta)
        run.batches.append(b)
    return run


def costate(fl: FunctionalLM, run: ProxyRun, ids: torch.Tensor, mask: torch.Tensor, t_ids: torch.Tensor, t_mask: torch.Tensor, lr: float) -> None:
    """Fill run.lambdas with lambda_t = lambda_{t+1} + grad J(theta_t) - eta H_t lambda_{t+1}, lambda_T = grad J(theta_T)."""
    T = len(run.batches)
    lams: list[Params | None] = [None] * (T + 1)
    lams[T] = batch_grad(fl, run.thetas[T], t_ids, t_mask)
    with torch.no_grad():
        run.target_loss = [float(fl.batch_loss(th, t_ids, t_mask)) for th in run.thetas]
    for t in range(T - 1, -1, -1):
        bi, bm = _trim(ids[run.batches[t]], mask[run.batches[t]])
        gj = batch_grad(fl, run.thetas[t], t_ids, t_mask)
        hv = hvp(fl, run.thetas[t], lams[t + 1], bi, bm)
        lams[t] = {k: lams[t + 1][k] + gj[k] - lr * hv[k] for k in gj}
    run.lambdas = lams  # type: ignore[assignment]


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing all-pad columns of a right-padded batch."""
    t = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 2
    return ids[:, :t], mask[:, :t]


def checkpoints(T: int, delta: int) -> list[int]:
    """Scoring steps t in {0, Delta, 2 Delta, ...} with t < T."""
    assert delta >= 1 and T >= 1, "need proxy_steps >= 1 and delta >= 1"
    return list(range(0, T, delta))


def grad_stats(fl: FunctionalLM, run: ProxyRun, seqs: list[list[int]], pad_id: int, cfg: LQSConfig, progress: Callable[[int], None] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For every step s needed by the scores: (lambda_{s+1} . grad l(x_n, theta_s), ||grad l(x_n, theta_s)||) per document.

    Steps are the checkpoints t and their look-ahead min(t + Delta, T); the dot product is 0 at s = T.
    """
    T = len(run.batches)
    cks = checkpoints(T, cfg.delta)
    steps = sorted(set(cks) | {min(t + cfg.delta, T) for t in cks})
    lam_flat = {s: flat(run.lambdas[s + 1], fl.keys) for s in steps if s < T}
    dots = {s: np.zeros(len(seqs)) for s in steps}
    norms = {s: np.zeros(len(seqs)) for s in steps}
    for lo in range(0, len(seqs), cfg.chunk):
        ids, mask = pad_batch(seqs[lo : lo + cfg.chunk], pad_id, cfg.max_len)
        for s in steps:
            g = flat(per_sample_grads(fl, run.thetas[s], ids, mask), fl.keys)  # (C, P)
            norms[s][lo : lo + len(g)] = g.norm(dim=1).double().numpy()
            if s < T:
                dots[s][lo : lo + len(g)] = (g @ lam_flat[s]).double().numpy()
        if progress is not None:
            progress(min(lo + cfg.chunk, len(seqs)))
    return {s: (dots[s], norms[s]) for s in steps}


def lqs_from_stats(stats: dict[int, tuple[np.ndarray, np.ndarray]], T: int, cfg: LQSConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw (LQS, PDS) scores from per-step statistics, accumulated from the latest checkpoint to the earliest."""
    n = len(next(iter(stats.values()))[0])
    lqs, pds = np.zeros(n), np.zeros(n)
    for t in reversed(checkpoints(T, cfg.delta)):
        num = cfg.lr * stats[t][0]  # eta * lambda_{t+1} . grad l(x_n, theta_t)
        lqs += num / (stats[min(t + cfg.delta, T)][1] + cfg.eps)
        pds += num
    return lqs, pds


@dataclass
class ScoreResult:
    lqs: np.ndarray
    """LQS, z-normalized and clipped."""
    pds: np.ndarray
    """PDS (numerator only), z-normalized and clipped."""
    loss: np.ndarray
    """-(mean token NLL) of each document under the final proxy model theta_T (higher = lower perplexity)."""
    raw_lqs: np.ndarray
    """LQS before normalization."""
    raw_pds: np.ndarray
    """PDS before normalization."""
    run: ProxyRun
    """The proxy trajectory and costates."""


def score_lqs(
    model: Transformer,
    seqs: list[list[int]],
    target: list[list[int]],
    pad_id: int,
    cfg: LQSConfig,
    proxy_idx: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoreResult:
    """LQS, PDS and proxy-loss scores of every document in `seqs`.

    model: the proxy model; its current parameters are theta_0 (left unchanged).
    proxy_idx: the uniform sample the proxy is trained on (default: all documents).
    """
    fl = FunctionalLM(model)
    run = proxy_run(fl, seqs, target, pad_id, cfg, proxy_idx)
    stats = grad_stats(fl, run, seqs, pad_id, cfg, progress)
    raw_lqs, raw_pds = lqs_from_stats(stats, len(run.batches), cfg)
    loss = -doc_losses(fl, run.thetas[-1], seqs, pad_id, cfg.chunk, cfg.max_len)
    return ScoreResult(zclip(raw_lqs, cfg.clip), zclip(raw_pds, cfg.clip), loss, raw_lqs, raw_pds, run)


def proxy_run(fl: FunctionalLM, seqs: list[list[int]], target: list[list[int]], pad_id: int, cfg: LQSConfig, proxy_idx: np.ndarray | None = None) -> ProxyRun:
    """Proxy SGD run on the proxy sample, then the costate of J along it."""
    assert target, "LQS needs a non-empty target set"
    sample = [seqs[i] for i in (proxy_idx if proxy_idx is not None else range(len(seqs)))]
    ids, mask = pad_batch(sample, pad_id, cfg.max_len)
    t_ids, t_mask = pad_batch(target[: cfg.max_target], pad_id, cfg.max_len)
    theta0 = warmup(fl, ids, mask, cfg) if cfg.warmup_steps > 0 else fl.params()
    run = proxy_train(fl, theta0, ids, mask, cfg)
    costate(fl, run, ids, mask, t_ids, t_mask, cfg.lr)
    return run


@torch.no_grad()
def doc_losses(fl: FunctionalLM, params: Params, seqs: list[list[int]], pad_id: int, chunk: int = 64, max_len: int = 0) -> np.ndarray:
    """Mean token NLL of every document under `params`, (N,)."""
    out = []
    for lo in range(0, len(seqs), chunk):
        ids, mask = pad_batch(seqs[lo : lo + chunk], pad_id, max_len)
        out.append(fl.doc_losses(params, ids, mask).double().numpy())
    return np.concatenate(out)


def loss_scores(model: Transformer, seqs: list[list[int]], pad_id: int, chunk: int = 64, max_len: int = 0) -> np.ndarray:
    """Proxy-loss baseline: -(mean token NLL) under `model` (higher = lower perplexity = kept)."""
    fl = FunctionalLM(model)
    return -doc_losses(fl, fl.params(), seqs, pad_id, chunk, max_len)


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Random baseline: i.i.d. standard normal scores."""
    return np.random.default_rng(seed).standard_normal(n)


# ----------------------------------------------------------------------------------------------- learned scorer


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _rank(np.asarray(a, dtype=np.float64)), _rank(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # average the ranks of ties
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


@dataclass
class LearnedScorerConfig:
    dim: int = 64
    """Width of the scorer's Transformer encoder."""
    n_layers: int = 1
    """Encoder layers."""
    steps: int = 300
    """AdamW steps of MSE regression onto the scores."""
    lr: float = 3e-3
    """AdamW learning rate."""
    batch_size: int = 32
    """Documents per step."""
    holdout: float = 0.2
    """Fraction of the scored sample held out for the Spearman correlation."""
    max_len: int = 0
    """Truncate documents to this many tokens (0 = no limit)."""
    seed: int = 0
    """Seed of initialization, split and batches."""


class LearnedScorer(nn.Module):
    """Mean-pooled core Transformer encoder + linear head: tokens -> predicted score."""

    def __init__(self, vocab_size: int, cfg: LearnedScorerConfig):
        super().__init__()
        heads = max(1, cfg.dim // 32)
        self.encoder = Transformer(ModelConfig(vocab_size=vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=heads, n_kv_heads=heads, ffn_dim=2 * cfg.dim))
        self.head = nn.Linear(cfg.dim, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, T), mask (B, T) (1 = real token) -> (B,) scores."""
        h = self.encoder(ids, compute_logits=False).hidden  # (B, T, C)
        m = mask.to(h.dtype)[..., None]  # (B, T, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, C)
        return self.head(pooled)[:, 0]

    @torch.no_grad()
    def predict(self, seqs: list[list[int]], pad_id: int, chunk: int = 128, max_len: int = 0) -> np.ndarray:
        self.eval()
        out = []
        for lo in range(0, len(seqs), chunk):
            ids, mask = pad_batch(seqs[lo : lo + chunk], pad_id, max_len)
            mask[:, 0] = 1  # pooling counts the first token too
            out.append(self(ids, mask).double().numpy())
        return np.concatenate(out)


def fit_learned_scorer(seqs: list[list[int]], scores: np.ndarray, vocab_size: int, pad_id: int, cfg: LearnedScorerConfig) -> tuple[LearnedScorer, float]:
    """Regress `scores` from text (MSE); returns the scorer and its Spearman correlation on the held-out split."""
    assert len(seqs) == len(scores) and len(seqs) >= 5, "need at least 5 scored documents"
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(seqs))
    n_hold = max(2, int(round(cfg.holdout * len(seqs))))
    hold, fit = perm[:n_hold], perm[n_hold:]
    scorer = LearnedScorer(vocab_size, cfg)
    opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.lr, weight_decay=0.0)
    y = torch.tensor(np.asarray(scores), dtype=torch.float32)
    for _ in range(cfg.steps):
        b = rng.choice(fit, size=min(cfg.batch_size, len(fit)), replace=False)
        ids, mask = pad_batch([seqs[i] for i in b], pad_id, cfg.max_len)
        mask[:, 0] = 1
        loss = torch.nn.functional.mse_loss(scorer(ids, mask), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = scorer.predict([seqs[i] for i in hold], pad_id, max_len=cfg.max_len)
    return scorer, spearman(pred, np.asarray(scores)[hold])

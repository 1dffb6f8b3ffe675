import numpy as np
import pytest
import torch
from torch.func import grad
from torch.nn.attention import SDPBackend, sdpa_kernel

from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.data.corpus import ALPHABET, CorpusConfig, make_corpus
from sherman.data.scoring import (
    FunctionalLM,
    LearnedScorerConfig,
    LQSConfig,
    costate,
    fit_learned_scorer,
    flat,
    hvp,
    lqs_from_stats,
    pad_batch,
    per_sample_grads,
    per_sample_grads_loop,
    proxy_train,
    score_lqs,
    spearman,
    zclip,
)


def tiny_model(vocab=12, dim=16, seed=0, dtype=torch.float32) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, dim=dim, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=24, max_seq_len=64)
    return Transformer(cfg).to(dtype)


def random_docs(n: int, vocab=12, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_pad_batch_mask():
    ids, mask = pad_batch([[5, 6, 7], [8, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert mask.tolist() == [[0, 1, 1], [0, 1, 0]]


def test_zclip_hand_values():
    np.testing.assert_allclose(zclip(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-8)
    # 15 zeros and a one: mean 1/16, std sqrt(15)/16; z of the one = 15/16 / (sqrt(15)/16) = sqrt(15) = 3.87 -> clipped to 3
    z = zclip(np.array([0.0] * 15 + [1.0]))
    assert z[-1] == 3.0 and z[0] == pytest.approx(-1 / np.sqrt(15))
    assert zclip(np.ones(4)).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_lqs_from_stats_hand_example():
    # T = 4, Delta = 2: checkpoints t in {0, 2}; look-ahead steps 2 and 4
    stats = {
        0: (np.array([1.0, 2.0]), np.array([9.0, 9.0])),
        2: (np.array([3.0, -1.0]), np.array([2.0, 1.0])),
        4: (np.array([0.0, 0.0]), np.array([4.0, 2.0])),
    }
    cfg = LQSConfig(lr=0.5, delta=2, eps=0.0)
    lqs, pds = lqs_from_stats(stats, 4, cfg)
    # doc 0: 0.5*3/4 + 0.5*1/2 = 0.625; doc 1: 0.5*(-1)/2 + 0.5*2/1 = 0.75
    np.testing.assert_allclose(lqs, [0.625, 0.75])
    # PDS: 0.5*(3+1) = 2.0; 0.5*(-1+2) = 0.5
    np.testing.assert_allclose(pds, [2.0, 0.5])


def test_vmap_per_sample_grads_equal_python_loop():
    fl = FunctionalLM(tiny_model())
    params = fl.params()
    ids, mask = pad_batch(random_docs(5), pad_id=0)
    a, b = per_sample_grads(fl, params, ids, mask), per_sample_grads_loop(fl, params, ids, mask)
    for k in fl.keys:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # and each equals torch.func.grad of that single (unpadded) document
    doc = random_docs(5)[3]
    i1, m1 = pad_batch([doc], pad_id=0)
    single = grad(fl.doc_loss)(params, i1[0], m1[0])
    torch.testing.assert_close(flat(a, fl.keys)[3], torch.cat([single[k].reshape(-1) for k in fl.keys]), rtol=1e-5, atol=1e-6)


def test_hvp_matches_finite_difference():
    fl = FunctionalLM(tiny_model(dtype=torch.float64))
    params = fl.params()
    ids, mask = pad_batch(random_docs(4), pad_id=0)
    torch.manual_seed(1)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    hv = hvp(fl, params, v, ids, mask)
    eps = 1e-4  # the core RMSNorm computes in float32, which bounds the finite-difference accuracy
    with sdpa_kernel(SDPBackend.MATH):
        gp = grad(fl.batch_loss)({k: params[k] + eps * v[k] for k in params}, ids, mask)
        gm = grad(fl.batch_loss)({k: params[k] - eps * v[k] for k in params}, ids, mask)
    fd = torch.cat([((gp[k] - gm[k]) / (2 * eps)).reshape(-1) for k in fl.keys])
    ours = torch.cat([hv[k].reshape(-1) for k in fl.keys])
    assert (ours - fd).norm() / fd.norm() < 1e-4
    assert ours.abs().max() > 1e-3  # a non-trivial curvature


def test_costate_equals_gradient_through_the_unrolled_sgd_trajectory():
    # lambda_0 = d/d theta_0 of sum_{t=0..T} J(theta_t), with theta_{t+1} = theta_t - eta grad L_t(theta_t)
    fl = FunctionalLM(tiny_model(dtype=torch.float64))
    ids, mask = pad_batch(random_docs(6, seed=1), pad_id=0)
    t_ids, t_mask = pad_batch(random_docs(3, seed=2), pad_id=0)
    cfg = LQSConfig(proxy_steps=3, lr=0.5, batch_size=3, warmup_steps=0)
    run = proxy_train(fl, fl.params(), ids, mask, cfg)
    costate(fl, run, ids, mask, t_ids, t_mask, cfg.lr)

    def total_j(theta0):
        theta, tot = theta0, fl.batch_loss(theta0, t_ids, t_mask)
        for b in run.batches:
            bi, bm = ids[b], mask[b]
            bi, bm = bi[:, : int(bm.sum(0).nonzero().max()) + 1], bm[:, : int(bm.sum(0).nonzero().max()) + 1]
            g = grad(fl.batch_loss)(theta, bi, bm)
            theta = {k: theta[k] - cfg.lr * g[k] for k in theta}
            tot = tot + fl.batch_loss(theta, t_ids, t_mask)
        return tot

    with sdpa_kernel(SDPBackend.MATH):
        expect = grad(total_j)(run.thetas[0])
    torch.testing.assert_close(flat(run.lambdas[0], fl.keys), flat(expect, fl.keys), rtol=1e-4, atol=1e-6)  # float32 RMSNorm inside
    # lambda_T is grad J(theta_T)
    with sdpa_kernel(SDPBackend.MATH):
        gT = grad(fl.batch_loss)(run.thetas[-1], t_ids, t_mask)
    torch.testing.assert_close(flat(run.lambdas[-1], fl.keys), flat(gT, fl.keys))


def test_lqs_ranks_target_duplicate_above_random_characters():
    tok = CharTokenizer(ALPHABET)
    c = make_corpus(CorpusConfig(n_entities=6, n_clean=40, noise_frac=0.0, dup_frac=0.0, n_target=8), seed=0)
    rng = np.random.default_rng(0)
    dup = c.target[0]  # an exact copy of a target-set document
    noise = "".join(rng.choice(list(ALPHABET), size=len(dup)))  # random characters
    texts = [d.text for d in c.train] + [dup, noise]
    seqs = [tok.encode(t, bos=True, eos=True) for t in texts]
    target = [tok.encode(t, bos=True, eos=True) for t in c.target]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=256))
    before = [p.detach().clone() for p in model.parameters()]
    res = score_lqs(model, seqs, target, tok.pad_id, LQSConfig(proxy_steps=6, delta=3, warmup_steps=30, batch_size=8, lr=0.05))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "scoring must not change the model"
    assert res.lqs.shape == (len(texts),) and np.abs(res.lqs).max() <= 3.0
    assert res.lqs[-2] > res.lqs[-1]  # duplicate of a target document beats random characters
    assert res.lqs[-2] > np.median(res.lqs) > res.lqs[-1]
    assert res.pds[-2] > res.pds[-1] and res.loss[-2] > res.loss[-1]
    assert res.run.target_loss[-1] < res.run.target_loss[0]  # the proxy SGD run learns


def test_spearman_hand_value():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 40, 30])) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 1, 2]), np.array([1, 1, 2])) == pytest.approx(1.0)


def test_learned_scorer_extends_scores():
    tok = CharTokenizer(ALPHABET)
    rng = np.random.default_rng(0)
    texts, scores = [], []
    for _ in range(80):  # score = fraction of the letter 'a' (a property the scorer can read off the text)
        k = int(rng.integers(0, 12))
        t = "a" * k + "".join(rng.choice(list("bcdefg"), size=12 - k))
        texts.append(t)
        scores.append(k / 12)
    seqs = [tok.encode(t, bos=True) for t in texts]
    scorer, rho = fit_learned_scorer(seqs, np.array(scores), tok.vocab_size, tok.pad_id, LearnedScorerConfig(dim=16, steps=60, lr=1e-2, holdout=0.25))
    assert rho > 0.8
    assert scorer.predict(seqs[:3], tok.pad_id).shape == (3,)

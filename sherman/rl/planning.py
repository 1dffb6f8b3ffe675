"""SFT vs policy gradient vs Q-learning for path-finding (arXiv 2509.22613, "Benefits and Pitfalls of RL for LM Planning").

The paper abstracts planning as path-finding on a graph (Sec. 2): a small transformer with one token
per node reads `s t s` and continues with a path `v1 ... t`. From one SFT checkpoint it compares:

* continual SFT on the same paths (Sec. 3: SFT learns the *observed* adjacency and reachability,
  i.e. co-occurrence in the training paths, so it fails on pairs that need transitivity);
* policy gradient with a 0/1 outcome reward and a KL penalty to the SFT model (Sec. 4):
  loss = -E[r * sum_t log pi(a_t|s_t)] + beta * E[sum_t KL(pi(.|s_t) || pi_sft(.|s_t))].
  Vanilla REINFORCE without a baseline, as analysed in the paper: with a 0/1 reward it is SFT on the
  model's own correct paths, so exploration widens what it learns (better test accuracy), but without
  KL it keeps sharpening after train accuracy saturates (diversity collapse);
* Q-learning that reads the logits as Q-values (Sec. 5): Q(s_t, a) = logit_t[a] and the squared
  Bellman error to y_t = r_t + gamma * (1 - done_t) * max_a Q(s_{t+1}, a) (target detached), with
  (a) an outcome reward (1 at the end iff the whole path is valid and ends at t), which the paper
      shows can be hacked, or
  (b) a process reward (-1 and termination on a non-edge step, +1 and termination on reaching t),
      whose fixed point gives every valid successor on a route to t the same value, so the
      Boltzmann policy over Q keeps all routes (diversity preserved).

PG ablations (not in the paper; they test why PG wanders on the cyclic Blocksworld graph): a mean baseline
(`pg_baseline="mean"`: the batch-mean sequence return is subtracted), a discount (`pg_gamma` < 1: the terminal
reward reaches step t as gamma^(n-1-t) r, so shorter paths earn more) and a per-step cost (`pg_step_cost` c: every
action costs c, return G_t = gamma^(n-1-t) r - c sum_{j=t}^{n-1} gamma^(j-t)); `pg_token_weights` computes them.
With the defaults (no baseline, gamma 1, c 0) the weight is r at every step: plain REINFORCE.

Choices the paper leaves open (config fields below): Q-learning rewards are +-reward_scale (10, the
scale of the SFT logits it starts from; with +-1 the regression first squashes every logit into
[-1, 1], where softmax(Q) is near uniform over 100 nodes and the policy falls apart) and the
Q-policy is softmax(Q / q_temperature) with T = 1, like every other arm; Q-learning uses Adam at
q_lr = 1e-4 (1e-3 diverged) and, optionally, a DQN target network (target_every; off by default);
episodes cut by `max_len` are bootstrapped, not terminal; the PG KL is exact over the vocabulary at
every visited state, with the SFT checkpoint as reference. Rollouts use the one sampling loop
(`sherman.core.generate.generate`) and are cut at the first target token.

Metrics (`Evaluator`): accuracy (sampled path valid and ending at t), diversity (distinct correct
paths among N samples per pair), path entropy (Monte-Carlo -log p of the sampled paths), "stuck"
(samples that never emit t within max_len), mean path length (all samples / correct ones), greedy accuracy
(one temperature-0 path per pair), adjacency recovery (precision / recall of the successors
with mean next-token probability > 0.05 at `u t u`), and accuracy on test pairs whose source never lies
on an SFT path to that target (the transitivity probe) vs the other test pairs.

CLI: `sherman plan --task er|blocksworld --arm sft|pg|q-outcome|q-process [--kl 0.1]`.
Run: `sherman reproduce planning --budget quick` (see `sherman.experiments.planning`).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.train import SeqExample, TrainConfig, train
from sherman.tasks.graphs import PlanningData, check_path

# ----------------------------------------------------------------------------- model and data


@dataclass
class PlanModelConfig:
    dim: int = 120
    """Embedding width (the paper: 120)."""
    n_layers: int = 1
    """Transformer blocks (the paper: 1)."""
    n_heads: int = 1
    """Attention heads (the paper: 1)."""
    ffn_dim: int = 480
    """SwiGLU hidden width."""
    tie_embeddings: bool = False
    """Share input and output embeddings (the ALPINE analysis keeps them separate)."""


def planning_model(vocab_size: int, cfg: PlanModelConfig | None = None, seed: int = 0) -> Transformer:
    """The core Transformer at the paper's size: one token per node plus the pad token."""
    cfg = cfg or PlanModelConfig()
    torch.manual_seed(seed)
    mc = ModelConfig(vocab_size=vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads,
                     ffn_dim=cfg.ffn_dim, max_seq_len=64, tie_embeddings=cfg.tie_embeddings)
    return Transformer(mc)


def prompt(s: int, t: int) -> list[int]:
    """The prompt `s t s` (source, target, then the path starts at the source)."""
    return [s, t, s]


def sft_examples(data: PlanningData) -> list[SeqExample]:
    """SFT sequences `s t s v1 ... t` with the loss on the path tokens v1 ... t only."""
    return [SeqExample(ids=seq, mask=[0, 0, 0] + [1] * (len(seq) - 3)) for seq in data.sequences()]


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    s: int
    t: int
    actions: list[int]
    """Generated tokens after the prompt, cut at the first target token."""
    logp: float
    """Sum of the sampled tokens' log-probs under the (tempered) sampling policy."""

    @property
    def path(self) -> list[int]:
        return [self.s] + self.actions


def cut_at_target(tokens: list[int], t: int) -> list[int]:
    """Tokens up to and including the first occurrence of t (all of them when t never appears)."""
    return tokens[: tokens.index(t) + 1] if t in tokens else list(tokens)


def sample_paths(model: Transformer, pairs: list[tuple[int, int]], n: int, max_len: int, temperature: float,
                 generator: torch.Generator | None = None, pad_id: int = 0) -> list[Rollout]:
    """n sampled continuations per (s, t) pair (pair-major order), each cut at the first t."""
    prompts = [prompt(s, t) for s, t in pairs for _ in range(n)]
    out = generate(model, prompts, SamplingParams(max_new_tokens=max_len, temperature=temperature), generator=generator, pad_id=pad_id)
    rolls = []
    for p, toks, lps in zip(prompts, out.tokens, out.logprobs):
        acts = cut_at_target(toks, p[1])
        rolls.append(Rollout(p[0], p[1], acts, float(sum(lps[: len(acts)]))))
    return rolls


def batch_tensors(rolls: list[Rollout], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, 3 + T) = prompt + actions right-padded; action mask (B, T)."""
    t_max = max(max(len(r.actions) for r in rolls), 1)
    ids = torch.full((len(rolls), 3 + t_max), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rolls), t_max)
    for i, r in enumerate(rolls):
        ids[i, : 3 + len(r.actions)] = torch.tensor(prompt(r.s, r.t) + r.actions)
        mask[i, : len(r.actions)] = 1.0
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------- rewards (pure)


def outcome_reward(data: PlanningData, r: Rollout) -> float:
    """1 if the generated path is a valid s -> t path, else 0."""
    return float(check_path(data.graph, r.s, r.t, r.path))


def outcome_step_rewards(data: PlanningData, r: Rollout) -> tuple[list[float], list[float], int]:
    """Per-step (rewards, done, kept length) for outcome-only Q-learning: reward only when t is emitted."""
    n = len(r.actions)
    rew, done = [0.0] * n, [0.0] * n
    if n and r.actions[-1] == r.t:
        rew[-1], done[-1] = outcome_reward(data, r), 1.0
    return rew, done, n


def process_step_rewards(data: PlanningData, r: Rollout) -> tuple[list[float], list[float], int]:
    """Per-step (rewards, done, kept length): -1 and stop on a non-edge step, +1 and stop on reaching t, else 0."""
    rew, done = [], []
    u = r.s
    for v in r.actions:
        if not data.graph.is_edge(u, v):
            rew.append(-1.0)
            done.append(1.0)
            break
        if v == r.t:
            rew.append(1.0)
            done.append(1.0)
            break
        rew.append(0.0)
        done.append(0.0)
        u = v
    return rew, done, len(rew)


def q_targets(rewards: torch.Tensor, next_max: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """Bellman targets y_t = r_t + gamma * (1 - done_t) * max_a Q(s_{t+1}, a). All (B, T)."""
    return rewards + gamma * (1.0 - done) * next_max


def full_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(softmax(logits) || softmax(ref_logits)) over the last dim. (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), -1)
    ref = torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref)).sum(-1)


def pg_loss(logp: torch.Tensor, mask: torch.Tensor, reward: torch.Tensor, kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """REINFORCE with KL: mean over rollouts of -w_t * sum_t log pi(a_t) + beta * sum_t KL_t. logp, mask, kl (B, T);
    reward (B,) (the same weight r at every step) or per-step weights (B, T) from `pg_token_weights`."""
    w = reward[:, None] if reward.dim() == 1 else reward  # (B, 1) or (B, T)
    per_seq = -(w * logp * mask).sum(-1) + kl_coef * (kl * mask).sum(-1)  # (B,)
    return per_seq.mean()


def pg_token_weights(reward: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, step_cost: float = 0.0,
                     baseline: str = "none") -> torch.Tensor:  # fmt: skip
    """Per-step PG weights (B, T): the return from step t, `G_t = gamma^(n-1-t) r - c sum_{j=t}^{n-1} gamma^(j-t)`
    (r: terminal outcome reward, n: path length, c: step cost), minus the batch mean of G_0 when baseline='mean'.
    reward (B,), mask (B, T) with each row's n actions first; zero past each path."""
    assert baseline in ("none", "mean"), f"baseline must be 'none' or 'mean', got {baseline!r}"
    n = mask.sum(-1, keepdim=True)  # (B, 1)
    t = torch.arange(mask.shape[1], dtype=mask.dtype, device=mask.device)[None]  # (1, T)
    left = (n - t).clamp(min=0)  # steps from t to the end, inclusive (B, T)
    disc = torch.full_like(left, gamma).pow(left - 1)  # gamma^(n-1-t)
    cost = step_cost * (left if gamma == 1.0 else (1 - torch.full_like(left, gamma).pow(left)) / (1 - gamma))
    g = (reward[:, None] * disc - cost) * mask  # (B, T)
    if baseline == "mean":
        g = (g - g[:, 0].mean()) * mask
    return g


def distinct_correct(paths: list[list[int]], correct: list[bool]) -> int:
    """Number of distinct paths among the correct ones."""
    return len({tuple(p) for p, ok in zip(paths, correct) if ok})


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalConfig:
    n_samples: int = 8
    """Samples per pair for accuracy, diversity and path entropy."""
    max_pairs: int = 150
    """Pairs per evaluated split (a fixed random subset)."""
    adj_threshold: float = 0.05
    """A successor v is predicted for node u when the mean next-token probability at `u t u` exceeds this."""
    adj_targets: int = 8
    """Targets t (reachable from u) averaged over in the adjacency probe."""


class Evaluator:
    """Accuracy, diversity, path entropy, adjacency recovery and the transitivity probe on fixed pair subsets."""

    def __init__(self, data: PlanningData, cfg: EvalConfig, max_len: int, seed: int = 0):
        self.data, self.cfg, self.max_len, self.seed = data, cfg, max_len, seed
        rng = random.Random(seed)
        unobs = set(data.unobserved_test_pairs())

        def subset(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
            return sorted(rng.sample(pairs, min(cfg.max_pairs, len(pairs))))

        self.splits = {
            "train": subset(data.train_pairs),
            "test": subset(data.test_pairs),
            "test_unobs": subset(sorted(unobs)),
            "test_obs": subset([p for p in data.test_pairs if p not in unobs]),
        }
        self.splits = {k: v for k, v in self.splits.items() if v}
        # adjacency probe prompts: for each node with out-edges, up to adj_targets reachable targets
        self.adj_nodes, self.adj_prompts = [], []
        for u in range(data.graph.n_nodes):
            targets = np.nonzero(data.reach[u])[0].tolist()
            if data.graph.adj[u] and targets:
                ts = rng.sample(targets, min(cfg.adj_targets, len(targets)))
                self.adj_nodes.append((u, len(ts)))
                self.adj_prompts += [prompt(u, t) for t in ts]

    def only(self, names: tuple[str, ...]) -> "Evaluator":
        """The same evaluator on a subset of its splits. Each split's samples come from one generator seeded per call and
        the splits are sampled in a fixed order, so dropping later splits leaves the kept splits' numbers unchanged."""
        ev = copy.copy(self)
        keep = [k for k in self.splits if k in names]
        assert keep == list(self.splits)[: len(keep)], f"only a prefix of the splits {list(self.splits)} keeps the numbers, got {names}"
        ev.splits = {k: self.splits[k] for k in keep}
        return ev

    @torch.no_grad()
    def adjacency(self, model: Transformer, temperature: float) -> tuple[float, float]:
        """Micro precision / recall of the predicted successor sets vs the true out-edges."""
        ids = torch.tensor(self.adj_prompts, device=model.device)  # (P, 3)
        was = model.training
        model.eval()
        probs = torch.softmax(model(ids).logits[:, -1].float() / temperature, -1)  # (P, V)
        model.train(was)
        hit = pred = true = 0
        i = 0
        for u, k in self.adj_nodes:
            p = probs[i : i + k].mean(0)
            i += k
            predicted = set(torch.nonzero(p > self.cfg.adj_threshold).flatten().tolist())
            edges = set(self.data.graph.adj[u])
            hit, pred, true = hit + len(predicted & edges), pred + len(predicted), true + len(edges)
        return hit / max(pred, 1), hit / max(true, 1)

    @torch.no_grad()
    def __call__(self, model: Transformer, temperature: float = 1.0) -> dict[str, float]:
        gen = torch.Generator().manual_seed(self.seed + 12345)
        out: dict[str, float] = {}
        n = self.cfg.n_samples
        for name, pairs in self.splits.items():
            rolls = sample_paths(model, pairs, n, self.max_len, temperature, gen, self.data.pad_id)
            ok = [outcome_reward(self.data, r) > 0 for r in rolls]
            out[f"acc/{name}"] = float(np.mean(ok))
            if name in ("train", "test"):
                out[f"stuck/{name}"] = float(np.mean([not r.actions or r.actions[-1] != r.t for r in rolls]))  # never emitted t
                div = [distinct_correct([r.path for r in rolls[i : i + n]], ok[i : i + n]) for i in range(0, len(rolls), n)]
                out[f"div/{name}"] = float(np.mean(div))
                out[f"entropy/{name}"] = float(np.mean([-r.logp for r in rolls]))
                out[f"len/{name}"] = float(np.mean([len(r.actions) for r in rolls]))
                lens_ok = [len(r.actions) for r, k in zip(rolls, ok) if k]
                out[f"len_correct/{name}"] = float(np.mean(lens_ok)) if lens_ok else float("nan")
                greedy = sample_paths(model, pairs, 1, self.max_len, 0.0, gen, self.data.pad_id)
                out[f"acc_greedy/{name}"] = float(np.mean([outcome_reward(self.data, r) > 0 for r in greedy]))
        out["adj/precision"], out["adj/recall"] = self.adjacency(model, temperature)
        return out


# ----------------------------------------------------------------------------- arms


@dataclass
class ArmConfig:
    steps: int = 300
    """Optimizer steps of the arm."""
    batch_pairs: int = 32
    """Train pairs per step (RL arms) / sequences per step (continual SFT)."""
    samples_per_pair: int = 2
    """Rollouts per pair per step (RL arms)."""
    lr: float = 1e-3
    """Adam learning rate of continual SFT and PG, constant."""
    q_lr: float = 1e-4
    """Adam learning rate of Q-learning, constant (regressing logits onto +-reward_scale targets is unstable at 1e-3)."""
    max_len: int = 16
    """Maximum generated tokens per rollout."""
    gamma: float = 1.0
    """Q-learning discount (the paper's episodic, undiscounted setting)."""
    pg_baseline: str = "none"
    """PG baseline: 'none' (the paper's REINFORCE) or 'mean' (batch-mean sequence return subtracted)."""
    pg_gamma: float = 1.0
    """PG discount of the terminal reward per step (1 = the paper's undiscounted return)."""
    pg_step_cost: float = 0.0
    """PG cost per action (0 = none); with it, wandering paths earn less."""
    q_temperature: float = 1.0
    """Temperature of the Boltzmann policy softmax(Q / T) that Q-learning explores with and is evaluated with."""
    reward_scale: float = 10.0
    """Q-learning rewards are +-reward_scale (the SFT logits' scale), so softmax(Q) at T = 1 is a usable policy."""
    target_every: int = 0
    """Q-learning: refresh a frozen target network every N steps; 0 = bootstrap from the online model (detached)."""
    eval_every: int = 50
    """Evaluate every N steps (and at step 0 and the end)."""
    grad_clip: float = 1.0
    """Max global grad norm."""
    seed: int = 0
    """Seed of pair sampling and rollouts."""


EvalFn = Callable[[Transformer, float], dict]


def _log(history: list[dict], step: int, model: Transformer, eval_fn: EvalFn, temperature: float, extra: dict) -> None:
    history.append({"step": step, **extra, **eval_fn(model, temperature)})


def pretrain_sft(model: Transformer, data: PlanningData, steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> list[dict]:
    """The shared SFT checkpoint: next-token loss on the path tokens (core train loop, cosine schedule)."""
    res = train(model, sft_examples(data), TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=20, seed=seed), pad_id=data.pad_id)
    return res.history


def run_continual_sft(model: Transformer, data: PlanningData, cfg: ArmConfig, eval_fn: EvalFn) -> list[dict]:
    """Keep training on the same SFT paths (core train loop, constant lr), evaluating every eval_every steps.

    One `train` call for the whole arm, so one AdamW optimizer (moments and step count) and one data stream persist
    across the evaluations, as in the RL arms; evaluating is read-only (own generator, no update), so the trained
    weights do not depend on eval_every. The arm has no checkpoint/resume of its own (runs are minutes long)."""
    history: list[dict] = []
    _log(history, 0, model, eval_fn, 1.0, {})
    pending: dict = {}

    def evaluate(m: Transformer) -> dict:
        pending.update(eval_fn(m, 1.0))
        return {}  # kept out of train's row; recorded by `record` with the step's loss

    def record(step: int, row: dict) -> None:
        if pending:
            history.append({"step": step, "loss/train": row["loss/train"], **pending})
            pending.clear()

    tc = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_pairs * cfg.samples_per_pair, lr=cfg.lr, schedule="constant",
                     warmup_steps=0, grad_clip=cfg.grad_clip, seed=cfg.seed * 1000, eval_every=cfg.eval_every)
    train(model, sft_examples(data), tc, eval_fn=evaluate, callback=record, pad_id=data.pad_id)
    return history


def run_pg(model: Transformer, ref: Transformer, data: PlanningData, cfg: ArmConfig, kl_coef: float, eval_fn: EvalFn) -> list[dict]:
    """Policy gradient with 0/1 outcome reward and KL(pi || pi_sft) * kl_coef, on-policy rollouts at temperature 1."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    _log(history, 0, model, eval_fn, 1.0, {})
    for step in range(1, cfg.steps + 1):
        pairs = rng.sample(data.train_pairs, min(cfg.batch_pairs, len(data.train_pairs)))
        rolls = sample_paths(model, pairs, cfg.samples_per_pair, cfg.max_len, 1.0, gen, data.pad_id)
        reward = torch.tensor([outcome_reward(data, r) for r in rolls])  # (B,)
        ids, mask = batch_tensors(rolls, data.pad_id, model.device)  # (B, 3+T), (B, T)
        t = mask.shape[1]
        logits = model(ids).logits[:, 2 : 2 + t]  # (B, T, V) predicting the actions
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 3 : 3 + t, None]).squeeze(-1)  # (B, T)
        if kl_coef > 0:
            with torch.no_grad():
                ref_logits = ref(ids).logits[:, 2 : 2 + t]  # (B, T, V)
            kl = full_kl(logits, ref_logits)  # (B, T)
        else:
            kl = torch.zeros_like(logp)
        weights = pg_token_weights(reward.to(mask.device), mask, cfg.pg_gamma, cfg.pg_step_cost, cfg.pg_baseline)  # (B, T)
        loss = pg_loss(logp, mask, weights, kl, kl_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            kl_mean = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
            _log(history, step, model, eval_fn, 1.0, {"loss/policy": float(loss.detach()), "rollout/reward_mean": float(reward.mean()), "kl/mean": kl_mean})
    return history


def q_learning_loss(model: Transformer, data: PlanningData, rolls: list[Rollout], reward: str, gamma: float,
                    scale: float = 1.0, target: Transformer | None = None) -> tuple[torch.Tensor, float]:
    """Squared Bellman error of the logits-as-Q on a batch of episodes; returns (loss, mean episode return).

    target: a frozen copy whose logits give max_a Q(s_{t+1}, a) (DQN target network); None = the model itself, detached.
    """
    step_fn = process_step_rewards if reward == "process" else outcome_step_rewards
    per = [step_fn(data, r) for r in rolls]
    kept = [Rollout(r.s, r.t, r.actions[:n], r.logp) for r, (_, _, n) in zip(rolls, per)]
    ids, mask = batch_tensors(kept, data.pad_id, model.device)  # (B, 3+T), (B, T)
    t = mask.shape[1]
    rew = torch.zeros_like(mask)
    done = torch.zeros_like(mask)
    for i, (rw, dn, n) in enumerate(per):
        rew[i, :n], done[i, :n] = scale * torch.tensor(rw), torch.tensor(dn)
    logits = model(ids).logits.float()  # (B, 3+T, V)
    q = logits[:, 2 : 2 + t].gather(-1, ids[:, 3 : 3 + t, None]).squeeze(-1)  # (B, T) Q(s_t, a_t)
    if target is not None:
        with torch.no_grad():
            logits_next = target(ids).logits.float()  # (B, 3+T, V)
    else:
        logits_next = logits.detach()
    next_max = logits_next[:, 3 : 3 + t].max(-1).values  # (B, T) max_a Q(s_{t+1}, a)
    y = q_targets(rew, next_max, done, gamma)  # (B, T)
    loss = (((q - y) ** 2) * mask).sum() / mask.sum().clamp(min=1)
    return loss, float(rew.sum(-1).mean())


def run_q_learning(model: Transformer, data: PlanningData, cfg: ArmConfig, reward: str, eval_fn: EvalFn) -> list[dict]:
    """Q-learning on the logits with `reward` in {'outcome', 'process'}; Boltzmann exploration softmax(Q / q_temperature)."""
    if reward not in ("outcome", "process"):
        raise ValueError(f"reward must be 'outcome' or 'process', got {reward!r}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.q_lr)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    _log(history, 0, model, eval_fn, cfg.q_temperature, {})
    target = None
    for step in range(1, cfg.steps + 1):
        if cfg.target_every and (step - 1) % cfg.target_every == 0:
            target = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = rng.sample(data.train_pairs, min(cfg.batch_pairs, len(data.train_pairs)))
        rolls = sample_paths(model, pairs, cfg.samples_per_pair, cfg.max_len, cfg.q_temperature, gen, data.pad_id)
        loss, ret = q_learning_loss(model, data, rolls, reward, cfg.gamma, cfg.reward_scale, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            _log(history, step, model, eval_fn, cfg.q_temperature, {"loss/bellman": float(loss.detach()), "rollout/return_mean": ret})
    return history

"""LM / SFT training loop: loss masks, gradient accumulation, warmup + cosine schedule, periodic eval and
checkpoints, exact resume, and unchanged operation under `torchrun` (DDP; gloo on CPU).

Data order is a pure function of (seed, epoch): each optimizer step consumes the next
`batch_size` examples of that order (the GLOBAL batch), split into `grad_accum` micro-batches, each
split across ranks by stride. The loss of a step is the token mean over the whole global batch
(sum of per-token CE / number of target tokens in the global batch, a count every rank computes
locally), so 1 process and N processes with the same global batch take the same step, and resuming
from step s replays exactly the batches an uninterrupted run would have seen. With `shuffle=False`
the data is consumed in the given order (DELT orderings rely on this).

`TrainConfig` lives in `core/train_config.py` and the `sherman train` command in `core/train_cli.py` (both torch-free at
import, so `--help` only parses); run `sherman train --help` for the CLI (task SFT or plain-text LM training from a file).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from sherman.core import checkpoint as ckpt
from sherman.core.common import MetricLogger, adamw, init_distributed_from_env, is_dist, print0, rank, seed_everything, world_size
from sherman.core.config import check
from sherman.core.model import Transformer
from sherman.core.train_config import TrainConfig  # noqa: F401 - re-exported: `from sherman.core.train import TrainConfig`


@dataclass
class SeqExample:
    ids: list[int]
    """Token ids of the whole sequence (prompt + completion)."""
    mask: list[int] | None = None
    """mask[t] = 1 when token t is a loss target (predicted from ids[:t]); None = every token after the first."""


@dataclass
class TrainResult:
    step: int
    history: list[dict] = field(default_factory=list)
    final_eval: dict = field(default_factory=dict)
    already_complete: bool = False
    """True when resume found a checkpoint at (or past) the requested number of steps: nothing was trained."""


def lr_lambda(step: int, cfg: TrainConfig, total: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def collate(examples: Sequence[SeqExample], pad_id: int = 0, max_len: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to ids (B, T) and target mask (B, T) (mask[:, 0] is always 0: nothing predicts token 0)."""
    seqs = [(e.ids[:max_len] if max_len else e.ids) for e in examples]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), t)
    for i, (e, s) in enumerate(zip(examples, seqs)):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        if e.mask is None:
            mask[i, 1 : len(s)] = 1.0
        else:
            mask[i, : len(s)] = torch.as_tensor(e.mask[: len(s)], dtype=torch.float32)
    mask[:, 0] = 0.0
    return ids.to(device), mask.to(device)


def lm_loss_sum(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token CE over masked targets, number of targets). ids, mask (B, T)."""
    logits = model(ids[:, :-1]).logits  # (B, T-1, V)
    tgt, m = ids[:, 1:], mask[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), reduction="none")  # (B*(T-1),)
    return (ce * m.reshape(-1)).sum(), m.sum()


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over masked targets."""
    s, n = lm_loss_sum(model, ids, mask)
    return s / n.clamp(min=1)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, data: Sequence[SeqExample], batch_size: int = 32, max_len: int = 0) -> float:
    """Token-mean loss over a dataset (no grad, eval mode)."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0.0
    dev = next(model.parameters()).device
    for i in range(0, len(data), batch_size):
        ids, mask = collate(data[i : i + batch_size], max_len=max_len, device=dev)
        s, c = lm_loss_sum(model, ids, mask)
        tot, n = tot + float(s), n + float(c)
    model.train(was)
    return tot / max(n, 1.0)


def epoch_order(n: int, epoch: int, cfg: TrainConfig) -> list[int]:
    """Example indices for one epoch: identity when shuffle=False, else a seeded permutation."""
    idx = list(range(n))
    if cfg.shuffle:
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(idx)
    return idx


def batch_indices(step: int, n: int, cfg: TrainConfig) -> list[int]:
    """The global batch of optimizer step `step` (0-based): the next batch_size indices of the epoch stream."""
    out: list[int] = []
    pos = step * cfg.batch_size
    while len(out) < cfg.batch_size:
        epoch, off = divmod(pos, n)
        take = min(cfg.batch_size - len(out), n - off)
        out.extend(epoch_order(n, epoch, cfg)[off : off + take])
        pos += take
    return out


def train(
    model: Transformer,
    data: Sequence[SeqExample],
    cfg: TrainConfig,
    eval_fn: Callable[[Transformer], dict] | None = None,
    eval_data: Sequence[SeqExample] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    pad_id: int = 0,
) -> TrainResult:
    """Train `model` in place. Works alone or under torchrun (the model is wrapped in DDP internally)."""
    assert len(data) > 0, "train() needs at least one example"
    init_distributed_from_env()
    ws = world_size()
    per_micro = cfg.batch_size // cfg.grad_accum
    check(cfg.batch_size % (cfg.grad_accum * ws) == 0, "batch_size",
          f"{cfg.batch_size} must be divisible by grad_accum * world size = {cfg.grad_accum * ws}")  # fmt: skip
    total = cfg.steps if cfg.steps > 0 else math.ceil(len(data) / cfg.batch_size)
    dev = model.device
    base = model
    if is_dist():
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, find_unused_parameters=base.cfg.n_experts > 0)
    opt = adamw(base.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg, total))
    logger = MetricLogger(Path(cfg.out_dir) / "metrics.jsonl" if cfg.out_dir else None, echo=False)

    step = 0
    if cfg.resume and cfg.out_dir:
        if rank() == 0:
            for p in ckpt.remove_stale(cfg.out_dir):
                print0(f"removed stale temporary {p}")
        last = ckpt.latest_checkpoint(cfg.out_dir)
        if last is not None:
            step, _ = ckpt.load_checkpoint(last, base, opt, sched, trust_pickle=cfg.trust_pickle)
            if step >= total:
                print0(f"{last}: run already complete ({step} of {total} steps); nothing to do")
                return TrainResult(step=step, already_complete=True)
            print0(f"resumed from {last} at step {step}")
    else:
        seed_everything(cfg.seed)

    def run_eval() -> dict:
        out: dict = {}
        if eval_data:
            out["loss/eval"] = eval_loss(base, eval_data, max_len=cfg.max_len)
        if eval_fn is not None:
            out.update(eval_fn(base))
        return out

    def save(s: int) -> None:
        if cfg.out_dir and rank() == 0:
            ckpt.save_checkpoint(ckpt.step_dir(cfg.out_dir, s), base, opt, s, scheduler=sched)
            ckpt.prune_checkpoints(cfg.out_dir, cfg.keep_ckpts)
        if is_dist():
            torch.distributed.barrier()

    history: list[dict] = []
    final: dict = {}
    model.train()
    t0 = t_step = time.time()
    while step < total:
        idx = batch_indices(step, len(data), cfg)
        batch = [data[i] for i in idx]
        n_targets = float(collate(batch, pad_id, cfg.max_len)[1][:, 1:].sum().clamp(min=1))
        loss_sum = 0.0
        for a in range(cfg.grad_accum):
            micro = batch[a * per_micro : (a + 1) * per_micro][rank() :: ws]
            ids, mask = collate(micro, pad_id, cfg.max_len, dev)
            sync = contextlib.nullcontext() if (a == cfg.grad_accum - 1 or not is_dist()) else model.no_sync()
            with sync:
                s, _ = lm_loss_sum(model, ids, mask)
                (s * (ws / n_targets)).backward()  # DDP averages over ranks; * ws undoes it
            loss_sum += float(s.detach())
        if is_dist():
            t = torch.tensor([loss_sum])
            torch.distributed.all_reduce(t)
            loss_sum = float(t)
        gnorm = torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        row = {"step": step, "loss/train": loss_sum / n_targets, "lr": sched.get_last_lr()[0], "grad/norm": float(gnorm)}
        now = time.time()
        row["perf/step_s"] = now - t_step  # wall seconds of this optimizer step (incl. eval/logging of the previous one)
        row["perf/tok_per_s"] = n_targets / max(now - t_step, 1e-9)  # target tokens per second in this step
        row["time/elapsed_s"] = now - t0
        t_step = now
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            row.update(run_eval())
        if step == total:
            final = run_eval()
            row.update(final)
        history.append(row)
        logger.log(step, row)
        if cfg.log_every and step % cfg.log_every == 0:
            print0("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if callback is not None:
            callback(step, row)
        if cfg.out_dir and ((cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total):
            save(step)
    return TrainResult(step=step, history=history, final_eval=final)


def build_sft_data(task, tok, n: int, seed: int) -> list[SeqExample]:
    """Task traces -> SeqExamples with the prompt masked from the loss (prompt <bos>, completion <eos>)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = task.sample(rng)
        p = tok.encode(ex.prompt, bos=True)
        c = tok.encode(task.trace(ex, rng), eos=True)
        out.append(SeqExample(ids=p + c, mask=[0] * len(p) + [1] * len(c)))
    return out


def read_documents(path: Path) -> list[str]:
    """One document per line (.txt) or {"text": ...} per line (.jsonl); a bad line is a one-line error."""
    import json

    from sherman.core.common import ShermanError

    docs = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                    docs.append(str(obj["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ShermanError(f"{path}:{i}: expected a JSON object with a 'text' field") from None
            else:
                docs.append(line)
    return docs


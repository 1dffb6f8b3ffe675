import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sherman.core import checkpoint as ckpt
from sherman.core.model import ModelConfig, Transformer
from sherman.core.train import SeqExample, TrainConfig, batch_indices, lr_lambda, train


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=20, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, **kw))


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = 6 + i % 5
        start = int(torch.randint(3, 10, (1,), generator=g))
        ids = [1] + [(start + j) % 17 + 3 for j in range(L)]  # counting sequences: learnable
        out.append(SeqExample(ids=ids, mask=[0, 0] + [1] * (len(ids) - 2)))
    return out


def params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_loss_falls_and_schedule():
    m = tiny()
    res = train(m, data(), TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=4))
    first, last = res.history[0]["loss/train"], res.history[-1]["loss/train"]
    assert last < 0.5 * first, (first, last)
    cfg = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert lr_lambda(0, cfg, 10) == pytest.approx(0.5)
    assert lr_lambda(2, cfg, 10) == pytest.approx(1.0)
    assert lr_lambda(10, cfg, 10) == pytest.approx(0.1)
    assert lr_lambda(6, cfg, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine


def test_unshuffled_order_is_consumed_as_given():
    cfg = TrainConfig(batch_size=4, shuffle=False)
    assert batch_indices(0, 10, cfg) == [0, 1, 2, 3]
    assert batch_indices(2, 10, cfg) == [8, 9, 0, 1]  # wraps into the next epoch in the same order
    shuffled = TrainConfig(batch_size=10, shuffle=True, seed=3)
    assert sorted(batch_indices(0, 10, shuffled)) == list(range(10))
    assert batch_indices(0, 10, shuffled) != list(range(10))


def test_grad_accum_matches_full_batch():
    a, b = tiny(), tiny()
    train(a, data(), TrainConfig(steps=3, batch_size=8, grad_accum=1, lr=1e-2, grad_clip=0))
    train(b, data(), TrainConfig(steps=3, batch_size=8, grad_accum=4, lr=1e-2, grad_clip=0))
    assert torch.allclose(params(a), params(b), atol=1e-5)


class Kill(Exception):
    pass


@pytest.mark.parametrize("moe", [0, 4])
def test_resume_is_exact(tmp_path, moe):
    kw = {"n_experts": moe, "moe_ffn_dim": 16} if moe else {}
    ref = tiny(**kw)
    train(ref, data(), TrainConfig(steps=10, batch_size=8, lr=1e-2))
    m = tiny(**kw)
    cfg = TrainConfig(steps=10, batch_size=8, lr=1e-2, out_dir=str(tmp_path), ckpt_every=4, keep_ckpts=0)

    def die(step, row):
        if step == 6:
            raise Kill()

    with pytest.raises(Kill):
        train(m, data(), cfg, callback=die)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000004"
    m2 = tiny(seed=123, **kw)  # different init: everything must come from the checkpoint
    cfg.resume = True
    res = train(m2, data(), cfg)
    assert res.history[0]["step"] == 5
    assert torch.equal(params(ref), params(m2))


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    m = tiny()
    d = ckpt.save_checkpoint(tmp_path / "step_0000001", m, torch.optim.AdamW(m.parameters()), step=1)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="config.json"):
        ckpt.load_model(d)
    s = tmp_path / "b"
    ckpt.save_checkpoint(s, m, torch.optim.AdamW(m.parameters()), step=1)
    (s / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="state.safetensors"):
        ckpt.load_checkpoint(s, tiny(), torch.optim.AdamW(tiny().parameters()))
    # the CLI prints it as one line with a non-zero exit
    r = subprocess.run([sys.executable, "-m", "sherman.cli", "generate", str(d), "--prompt", "1+1="], capture_output=True, text=True)
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_roundtrip_and_atomic_overwrite(tmp_path):
    m = tiny()
    d = ckpt.save_checkpoint(tmp_path / "c", m, step=7, extra={"note": "x"})
    ckpt.save_checkpoint(tmp_path / "c", m, step=8)  # overwrite in place
    m2 = ckpt.load_model(d)
    assert torch.equal(params(m), params(m2))
    step, extra = ckpt.load_checkpoint(d, tiny(seed=5))
    assert step == 8 and extra == {}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(cmd, env, timeout):
    """Run in a new process group and kill the whole group on timeout (torchrun's workers included)."""
    import signal

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


DDP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from core.test_train import tiny, data
from sherman.core.train import TrainConfig, train
from sherman.core.common import rank
m = tiny(**{kw})
train(m, data(), TrainConfig(steps=4, batch_size=8, grad_accum=2, lr=1e-2))
if rank() == 0:
    torch.save([p.detach() for p in m.parameters()], {out!r})
from sherman.core.common import exit_distributed
exit_distributed(0)  # barrier, destroy the group, leave without interpreter finalization (it can abort gloo workers)
"""


@pytest.mark.parametrize("moe", [0, 4])
def test_torchrun_two_processes_match_one(tmp_path, moe):
    kw = {"n_experts": moe, "moe_ffn_dim": 16} if moe else {}
    script = tmp_path / "ddp.py"
    out = tmp_path / "p.pt"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parents[1]), kw=kw, out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(script)]
    r = run_group(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tiny(**kw)
    train(ref, data(), TrainConfig(steps=4, batch_size=8, grad_accum=2, lr=1e-2))
    got = torch.load(out)
    for a, b in zip(ref.parameters(), got):
        assert torch.allclose(a.detach(), b, atol=1e-5), (a - b).abs().max()

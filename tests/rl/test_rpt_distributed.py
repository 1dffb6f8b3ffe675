"""RPTTask through rl_train under torchrun: 2 CPU processes (gloo), MoE policy; replicas stay identical."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    import torch.distributed as dist
    from test_rpt import _model, _tiny_corpus
    from sherman.core.common import exit_distributed, rank, world_size
    from sherman.rl import rpt
    from sherman.rl.grpo import preset_config, rl_train
    docs, tok, cfg = _tiny_corpus(n=20)
    task = rpt.RPTTask(tok, docs, rpt.select_positions([torch.ones(len(d)) for d in docs], cfg), cfg)
    m = _model(tok.vocab_size, n_experts=4)
    rc = preset_config("opo", **{{**rpt.PRESET, "steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 3, "track_kl_to_init": False}})
    res = rl_train(m, task, tok, rc)
    s = torch.cat([p.detach().flatten() for p in m.parameters()]).sum().reshape(1)
    g = [torch.zeros(1) for _ in range(world_size())]
    dist.all_gather(g, s)
    assert world_size() == 2 and res.opt_steps == 2
    assert torch.allclose(g[0], g[1]), g
    if rank() == 0:
        print("OK", float(g[0]))
    exit_distributed(0)
    """
)


@pytest.mark.slow
def test_rpt_torchrun_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout

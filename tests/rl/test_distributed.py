"""The RL loop under torchrun: 2 CPU processes (gloo), MoE + router shift; replicas stay identical."""

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
    from test_grpo import TASK, TOK, _flat, grpo, small_cfg, tiny
    from sherman.core.common import rank, world_size
    m = tiny(4)
    res = grpo.rl_train(m, TASK, TOK, small_cfg("rspo", steps=2))
    s = _flat(m).sum().reshape(1)
    g = [torch.zeros(1) for _ in range(world_size())]
    dist.all_gather(g, s)
    assert world_size() == 2 and res.opt_steps == 8
    assert torch.allclose(g[0], g[1]), g
    if rank() == 0:
        print("OK", float(g[0]))
    from sherman.core.common import exit_distributed
    exit_distributed(0)
    """
)


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout

"""Pickle-free training state, the --trust-pickle escape hatch, and crash recovery of the train / RL loops (issue 13)."""

import json
import math
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from sherman.core import checkpoint as ckpt
from sherman.core.common import adamw
from sherman.core.train import TrainConfig, train

from .test_train import data, params, tiny


class Marker:
    """A pickle payload: unpickling it creates the marker file (a stand-in for any shell command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_checkpoint(tmp_path):
    """A real step checkpoint whose training state was swapped for a code-running pickle (old state.pt layout)."""
    run = tmp_path / "run"
    m = tiny()
    d = ckpt.save_checkpoint(ckpt.step_dir(run, 4), m, adamw(m.parameters()), step=4)
    (d / ckpt.STATE_JSON).unlink()
    (d / ckpt.STATE_TENSORS).unlink()
    marker = tmp_path / "pwned"
    with open(d / ckpt.LEGACY_STATE, "wb") as f:
        pickle.dump({"step": 4, "x": Marker(marker)}, f)
    return run, d, marker


def test_training_state_has_no_pickle_and_roundtrips_exactly(tmp_path):
    m = tiny()
    opt = adamw(m.parameters(), lr=1e-2, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    m(torch.randint(0, 20, (2, 5))).logits.sum().backward()
    opt.step()
    sched.step()
    random.random(), np.random.rand(), torch.rand(1)
    want_rng = ckpt.rng_state()
    d = ckpt.save_checkpoint(tmp_path / "c", m, opt, step=3, scheduler=sched)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "state.json", "state.safetensors"]
    manifest = json.loads((d / "state.json").read_text())  # plain JSON, strict (no NaN/Infinity literals)
    assert manifest["format"] == ckpt.STATE_FORMAT and manifest["state"]["step"] == 3
    state = ckpt.load_state(d)
    want = opt.state_dict()
    assert state["optimizer"]["param_groups"] == want["param_groups"]  # betas stay a tuple, ints stay ints
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)
    assert state["optimizer"]["state"].keys() == want["state"].keys()  # int keys survive JSON
    for k, st in want["state"].items():
        for name, v in st.items():
            got = state["optimizer"]["state"][k][name]
            assert got.dtype == v.dtype and torch.equal(got, v)
    assert state["scheduler"] == sched.state_dict()
    assert state["rng"]["python"] == want_rng["python"]
    np_want, np_got = want_rng["numpy"], state["rng"]["numpy"]
    assert np_got[0] == np_want[0] and np_got[1].dtype == np.uint32 and np.array_equal(np_got[1], np_want[1]) and np_got[2:] == np_want[2:]
    assert torch.equal(state["rng"]["torch"], want_rng["torch"])
    # restoring the RNG really restores the streams
    ckpt.set_rng_state(state["rng"])
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(want_rng)
    assert a == (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_encode_tree_edge_values():
    tree = {"inf": math.inf, "ninf": -math.inf, "nan": math.nan, "big": 10**30, "t": (1, (2.5, None)), 3: "int key",
            "__x": True, "np": np.float32(1.5), "arr": np.arange(4, dtype=np.uint32), "bf": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    tensors: dict = {}
    enc = json.loads(json.dumps(ckpt.encode_tree(tree, tensors), allow_nan=False))
    got = ckpt.decode_tree(enc, tensors)
    assert got["inf"] == math.inf and got["ninf"] == -math.inf and math.isnan(got["nan"]) and got["big"] == 10**30
    assert got["t"] == (1, (2.5, None)) and got[3] == "int key" and got["__x"] is True
    assert isinstance(got["np"], np.float32) and got["np"] == 1.5
    assert got["arr"].dtype == np.uint32 and list(got["arr"]) == [0, 1, 2, 3]
    assert got["bf"].dtype == torch.bfloat16 and torch.equal(got["bf"], tree["bf"])
    with pytest.raises(ckpt.CheckpointError, match="cannot store a set"):
        ckpt.encode_tree({"s": {1, 2}}, {})


def test_malicious_pickle_does_not_run(tmp_path):
    run, d, marker = malicious_checkpoint(tmp_path)
    m = tiny(seed=1)
    with pytest.raises(ckpt.CheckpointError, match="--trust-pickle") as e:
        ckpt.load_checkpoint(d, m, adamw(m.parameters()))
    assert "\n" not in str(e.value)
    assert not marker.exists()
    # through the CLI: one line, exit 2, no traceback, marker still absent
    cli = tmp_path / "cli"
    args = [sys.executable, "-m", "sherman.cli", "train", "--out", str(cli), "--task", "arithmetic", "--n-examples", "16",
            "--dim", "32", "--n-layers", "1", "--train.batch-size", "4"]  # fmt: skip
    assert subprocess.run(args + ["--train.steps", "2"], capture_output=True, text=True, timeout=300).returncode == 0
    last = ckpt.latest_checkpoint(cli)
    (last / ckpt.STATE_JSON).unlink()
    (last / ckpt.STATE_TENSORS).unlink()
    (last / ckpt.LEGACY_STATE).write_bytes((d / ckpt.LEGACY_STATE).read_bytes())
    r = subprocess.run(args + ["--train.steps", "4", "--train.resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "--trust-pickle" in r.stderr
    assert not marker.exists()
    r = subprocess.run(args + ["--help"], capture_output=True, text=True, timeout=300)
    assert "--trust-pickle" in r.stdout and "arbitrary" not in r.stderr
    # the flag really is the only way in: with it, the (here malicious) pickle is unpickled
    with pytest.raises(ckpt.CheckpointError):  # the payload returns a file object, not a state dict
        ckpt.load_checkpoint(d, m, adamw(m.parameters()), trust_pickle=True)
    assert marker.exists()


def test_rl_resume_refuses_pickle(tmp_path):
    run, d, marker = malicious_checkpoint(tmp_path)
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.grpo import RLConfig, rl_train
    from sherman.tasks import get_task

    task = get_task("arithmetic")
    tok = CharTokenizer(task.alphabet())
    m = tiny()
    cfg = RLConfig(steps=6, prompts_per_step=2, group_size=2, max_new_tokens=4, out_dir=str(run), resume=True)
    with pytest.raises(ckpt.CheckpointError, match="--trust-pickle"):
        rl_train(m, task, tok, cfg)
    assert not marker.exists()


def test_old_pickled_state_loads_with_trust_pickle(tmp_path):
    """A genuine old-format checkpoint (state.pt from torch.save) resumes exactly with trust_pickle=True."""
    m = tiny()
    opt = adamw(m.parameters(), lr=1e-2)
    m(torch.randint(0, 20, (2, 5))).logits.sum().backward()
    opt.step()
    d = ckpt.save_checkpoint(tmp_path / "c", m, opt, step=1)
    state = ckpt.load_state(d)
    (d / ckpt.STATE_JSON).unlink()
    (d / ckpt.STATE_TENSORS).unlink()
    torch.save(state, d / ckpt.LEGACY_STATE)
    m2 = tiny(seed=5)
    opt2 = adamw(m2.parameters(), lr=1e-2)
    assert ckpt.load_checkpoint(d, m2, opt2, trust_pickle=True)[0] == 1
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_corrupted_state_files_give_one_line_errors(tmp_path):
    m = tiny()
    d = ckpt.save_checkpoint(tmp_path / "c", m, adamw(m.parameters()), step=1)
    (d / "state.json").write_text("[" * 100_000)  # deeply nested: no RecursionError escapes
    with pytest.raises(ckpt.CheckpointError, match="state.json"):
        ckpt.load_checkpoint(d, tiny(), adamw(tiny().parameters()))
    d = ckpt.save_checkpoint(tmp_path / "c", m, adamw(m.parameters()), step=1)
    (d / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="state.safetensors"):
        ckpt.load_checkpoint(d, tiny(), adamw(tiny().parameters()))
    d = ckpt.save_checkpoint(tmp_path / "c", m, adamw(m.parameters()), step=1)
    man = json.loads((d / "state.json").read_text())
    man["state"]["optimizer"] = {"__tensor__": "t9999"}
    (d / "state.json").write_text(json.dumps(man))
    with pytest.raises(ckpt.CheckpointError, match="state.json"):
        ckpt.load_checkpoint(d, tiny(), adamw(tiny().parameters()))


# ------------------------------------------------------------------------------------------- recovery


def test_resume_of_finished_run_is_already_complete_then_extends_exactly(tmp_path):
    kw = dict(batch_size=8, lr=1e-2, schedule="constant", warmup_steps=2)  # lr(step) independent of the total
    ref = tiny()
    train(ref, data(), TrainConfig(steps=6, **kw))
    m = tiny()
    train(m, data(), TrainConfig(steps=4, out_dir=str(tmp_path), **kw))
    before = params(m).clone()
    m2 = tiny(seed=7)
    res = train(m2, data(), TrainConfig(steps=4, out_dir=str(tmp_path), resume=True, **kw))
    assert res.already_complete and res.step == 4 and res.history == []
    assert torch.equal(params(m2), before)  # the finished weights were loaded, nothing trained
    m3 = tiny(seed=8)
    res = train(m3, data(), TrainConfig(steps=6, out_dir=str(tmp_path), resume=True, **kw))
    assert not res.already_complete and [r["step"] for r in res.history] == [5, 6]
    assert torch.equal(params(m3), params(ref))


def test_cli_resume_of_finished_run_exits_zero(tmp_path):
    args = [sys.executable, "-m", "sherman.cli", "train", "--out", str(tmp_path), "--task", "arithmetic", "--n-examples", "16",
            "--dim", "32", "--n-layers", "1", "--train.steps", "2", "--train.batch-size", "4"]  # fmt: skip
    assert subprocess.run(args, capture_output=True, text=True, timeout=300).returncode == 0
    r = subprocess.run(args + ["--train.resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already complete" in r.stdout and "Traceback" not in r.stderr


def test_rl_resume_of_finished_run_is_already_complete(tmp_path):
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.grpo import RLConfig, rl_train
    from sherman.tasks import get_task

    task = get_task("arithmetic")
    tok = CharTokenizer(task.alphabet())
    torch.manual_seed(0)
    from sherman.core.model import Transformer
    from sherman.rl.grpo import tiny_model_config

    m = Transformer(tiny_model_config(tok.vocab_size, dim=32, n_layers=1))
    cfg = RLConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, out_dir=str(tmp_path))
    rl_train(m, task, tok, cfg)
    cfg.resume = True
    res = rl_train(Transformer(tiny_model_config(tok.vocab_size, dim=32, n_layers=1)), task, tok, cfg)
    assert res.already_complete and res.step == 1 and res.opt_steps == 0


def test_stale_temporaries_removed_on_resume(tmp_path):
    kw = dict(batch_size=8, lr=1e-2, out_dir=str(tmp_path))
    train(tiny(), data(), TrainConfig(steps=2, **kw))
    stale = [tmp_path / ".step_0000004.k3j2h1", tmp_path / ".step_0000002.old", tmp_path / ".step_0000001.deleting"]
    for p in stale:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "notes").mkdir()  # not ours: left alone
    res = train(tiny(), data(), TrainConfig(steps=3, resume=True, **kw))
    assert res.step == 3 and not any(p.exists() for p in stale) and (tmp_path / "notes").is_dir()


def test_prune_renames_before_deleting(tmp_path, monkeypatch):
    m = tiny()
    for s in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.step_dir(tmp_path, s), m, step=s)

    class Kill(Exception):
        pass

    seen = []

    def killed_rmtree(path, ignore_errors=False):
        seen.append(path.name)
        if path.name.endswith(".deleting") and path.exists():
            (path / "model.safetensors").unlink()  # half deleted ...
            raise Kill()  # ... then killed

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(Kill):
        ckpt.prune_checkpoints(tmp_path, 2)
    monkeypatch.undo()
    assert not ckpt.step_dir(tmp_path, 1).exists()  # never half-deleted under its final name
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000003"
    assert [p.name for p in ckpt.remove_stale(tmp_path)] == [".step_0000001.deleting"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000003"]


def test_tree_file_roundtrip_shared_tensors_and_pickled_file_refused(tmp_path):
    """The single-file format used by Seer gates, the VibeVoice bundle and DELT's proxy run."""
    w = torch.randn(3, 4)
    tree = {"config": {"dim": 4, "ratios": (2, 2)}, "sd": {"a": w, "b": w, "view": w[1]}, "curve": [0.5, 0.25], 7: np.ones(2)}
    p = ckpt.save_tree_file(tmp_path / "x.pt", tree)
    got = ckpt.load_tree_file(p)
    assert got["config"] == {"dim": 4, "ratios": (2, 2)} and got["curve"] == [0.5, 0.25] and list(got[7]) == [1.0, 1.0]
    assert torch.equal(got["sd"]["a"], w) and torch.equal(got["sd"]["b"], w) and torch.equal(got["sd"]["view"], w[1])
    marker = tmp_path / "pwned"
    torch.save({"x": Marker(marker)}, tmp_path / "old.pt")  # an old pickled file (here a malicious one)
    with pytest.raises(ckpt.CheckpointError, match="old pickled file") as e:
        ckpt.load_tree_file(tmp_path / "old.pt")
    assert "\n" not in str(e.value) and not marker.exists()


def test_remove_stale_restores_an_old_copy_left_by_a_killed_overwrite(tmp_path):
    m = tiny()
    d = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 5), m, step=5)
    d.rename(tmp_path / ".step_0000005.old")  # killed after moving the old version away, before the new one landed
    (tmp_path / ".step_0000005.x7q").mkdir()  # the unfinished new version
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert [p.name for p in ckpt.remove_stale(tmp_path)] == [".step_0000005.x7q"]
    assert ckpt.latest_checkpoint(tmp_path) == d and torch.equal(params(ckpt.load_model(d)), params(m))

import json

import numpy as np
import pytest
import torch

from sherman.speech import artifacts as art
from sherman.speech.tokenizer import TokTrainConfig


def _audios(seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal(100).astype(np.float32) for _ in range(3)]


class _Trainer:
    """Counts trainings; 'trains' a linear layer deterministically from the config."""

    def __init__(self):
        self.calls = 0

    def __call__(self, scale: float):
        def train():
            self.calls += 1
            torch.manual_seed(0)
            lin = torch.nn.Linear(3, 2)
            with torch.no_grad():
                lin.weight.mul_(scale)
            return lin.state_dict(), {"history": [{"step": 0, "loss": 1.5}], "snap": {"w": lin.weight * 0}}

        return train


def test_cache_reuse_does_not_retrain(tmp_path):
    tr, d = _Trainer(), tmp_path / "acoustic"
    cfg, data = {"lr": 1e-3, "steps": 10}, art.data_digest(_audios(), [[1, 2], [3], []])
    first = art.cached(d, "acoustic", cfg, data, tr(2.0), log=lambda s: None)
    assert tr.calls == 1 and not first.reused and first.status == "trained (new)"
    mtime = (d / "manifest.json").stat().st_mtime_ns
    again = art.cached(d, "acoustic", dict(cfg), data, tr(2.0), log=lambda s: None)
    assert tr.calls == 1 and again.reused  # second call: loaded, not trained
    assert (d / "manifest.json").stat().st_mtime_ns == mtime
    for k in first.state:
        assert torch.equal(first.state[k], again.state[k])
    assert again.extra["history"] == [{"step": 0, "loss": 1.5}] and torch.equal(again.extra["snap"]["w"], torch.zeros(2, 3))
    man = json.loads((d / "manifest.json").read_text())
    assert man["hash"] == art.artifact_hash("acoustic", cfg, data) and man["config"] == cfg and (d / man["weights"]).is_file()


def test_cache_invalidated_by_config_or_data_change(tmp_path):
    tr, d, msgs = _Trainer(), tmp_path / "tok", []
    data = art.data_digest(_audios(0))
    art.cached(d, "tok", {"lr": 1e-3}, data, tr(1.0), log=msgs.append)
    changed_cfg = art.cached(d, "tok", {"lr": 2e-3}, data, tr(3.0), log=msgs.append)
    assert tr.calls == 2 and changed_cfg.status.startswith("trained (stale") and "retraining" in msgs[-1]
    assert torch.allclose(art.cached(d, "tok", {"lr": 2e-3}, data, tr(9.0), log=msgs.append).state["weight"], changed_cfg.state["weight"])
    assert tr.calls == 2  # the retrained artifact replaced the stale one and is now reused
    audios = _audios(0)
    audios[1] = audios[1].copy()
    audios[1][5] += 1e-3  # one sample of the data changes
    assert art.data_digest(audios) != data
    assert art.data_digest(_audios(0), [[1]]) != art.data_digest(_audios(0), [[2]])  # labels count too
    art.cached(d, "tok", {"lr": 2e-3}, art.data_digest(audios), tr(1.0), log=msgs.append)
    assert tr.calls == 3
    assert len(list(d.glob("weights-*.safetensors"))) == 1  # stale weights removed


def test_dataclass_configs_hash_without_hooks_and_history():
    a = TokTrainConfig(steps=5)
    b = TokTrainConfig(steps=5, callback=lambda *x: None)
    b.history.append({"loss": 1.0})
    assert art.artifact_hash("k", a, "d") == art.artifact_hash("k", b, "d")
    assert art.artifact_hash("k", a, "d") != art.artifact_hash("k", TokTrainConfig(steps=6), "d")
    assert art.artifact_hash("k", a, "d") != art.artifact_hash("other", a, "d")
    with pytest.raises(TypeError):
        art.config_dict({"x": object()})


def test_atomic_write_and_corrupt_weights_retrain(tmp_path, monkeypatch):
    tr, d = _Trainer(), tmp_path / "a"
    data = art.data_digest(_audios())
    first = art.cached(d, "a", {"n": 1}, data, tr(1.0), log=lambda s: None)
    man_before = (d / "manifest.json").read_text()

    # a crash while the new weights are written leaves the old artifact intact and usable
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("sherman.core.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        art.cached(d, "a", {"n": 2}, data, tr(2.0), log=lambda s: None)
    monkeypatch.undo()
    assert (d / "manifest.json").read_text() == man_before
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp files left behind
    assert art.cached(d, "a", {"n": 1}, data, tr(5.0), log=lambda s: None).reused
    # corrupt weights under a matching manifest: retrained, never used
    (d / first.manifest["weights"]).write_bytes(b"garbage")
    redo = art.cached(d, "a", {"n": 1}, data, tr(1.0), log=lambda s: None)
    assert redo.status.startswith("trained (unreadable") and tr.calls == 3
    assert art.cached(d, "a", {"n": 1}, data, tr(1.0), log=lambda s: None).reused
    (d / "manifest.json").write_text("{not json")
    assert not art.cached(d, "a", {"n": 1}, data, tr(1.0), log=lambda s: None).reused and tr.calls == 4


def test_train_tokenizer_help_imports_no_torch():
    import subprocess
    import sys

    probe = ("import contextlib, io, sys, sherman.cli\n"
             "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
             "    code = sherman.cli.main(['tts', 'train-tokenizer', '--help'])\n"
             "print(code, 'torch' in sys.modules, 'budget' in buf.getvalue())")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["0", "False", "True"], res.stdout + res.stderr[-1000:]


def test_weights_that_do_not_fit_the_model_are_retrained_and_code_is_hashed(tmp_path):
    tr, d = _Trainer(), tmp_path / "m"
    data = art.data_digest(_audios())
    art.cached(d, "m", {"n": 1}, data, tr(1.0), log=lambda s: None)
    fits = art.cached(d, "m", {"n": 1}, data, tr(1.0), log=lambda s: None, check=lambda st: torch.nn.Linear(3, 2).load_state_dict(st))
    assert fits.reused and tr.calls == 1
    other = art.cached(d, "m", {"n": 1}, data, tr(1.0), log=lambda s: None, check=lambda st: torch.nn.Linear(4, 2).load_state_dict(st))
    assert other.status.startswith("trained (unreadable: weights do not fit") and tr.calls == 2
    from sherman.speech import dsp, tokenizer

    assert art.code_digest(tokenizer) == art.code_digest(tokenizer) != art.code_digest(tokenizer, dsp)

"""`experiments/stages.py`: keys, atomic records, reuse, and recomputation of stale or damaged stages."""

import json

import torch

from sherman.experiments import stages


def test_keys_and_weight_digests_change_with_what_computes_a_stage():
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    assert stages.weights_digest(a) == stages.weights_digest({"b": torch.zeros(3), "w": a["w"].clone()})  # order-free, by value
    assert stages.weights_digest(a) != stages.weights_digest({**a, "b": torch.tensor([0.0, 0.0, 1e-7])})
    assert stages.weights_digest(a) != stages.weights_digest({**a, "w": a["w"].reshape(3, 2)})  # shape counts
    assert stages.weights_digest(a) != stages.weights_digest({**a, "w": a["w"].double()})  # dtype counts
    assert stages.stage_key({"x": 1, "y": [1, 2]}) == stages.stage_key({"y": [1, 2], "x": 1})
    assert stages.stage_key({"x": 1}) != stages.stage_key({"x": 2})


def test_stage_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(tmp_path / "art"))
    assert stages.stage_root("rspo") == tmp_path / "art" / "rspo"
    monkeypatch.delenv("SHERMAN_ARTIFACTS")
    monkeypatch.setenv("SHERMAN_CACHE", str(tmp_path / "cache"))
    assert stages.stage_root("rspo") == tmp_path / "cache" / "rspo"


def test_json_and_tensor_stages_reuse_and_recompute(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5, "curve": [1.0, float("nan")]}

    path = tmp_path / "full" / "arm_seed0.json"
    first = stages.json_stage(path, "k1", compute, "t")
    assert first["status"] == "computed" and calls == [1] and path.is_file()
    again = stages.json_stage(path, "k1", compute, "t")
    assert again["status"] == "reused" and calls == [1] and again["result"]["acc"] == 0.5 and again["cpu_s"] == first["cpu_s"]
    assert stages.json_stage(path, "k2", compute, "t")["status"] == "computed" and calls == [1, 1]  # stale key
    assert json.loads(path.read_text())["key"] == "k2"
    path.write_text('{"key": "k2", "res')  # damaged
    assert stages.json_stage(path, "k2", compute, "t")["status"] == "computed" and calls == [1, 1, 1]
    assert stages.json_stage(None, "", compute, "t")["status"] == "computed"  # no path: nothing stored

    w = tmp_path / "full" / "warm.safetensors"
    made = []

    def train():
        made.append(1)
        return {"w": torch.ones(2, 2)}, {"sft_steps": 7}

    state, extra, status = stages.tensor_stage(w, "m1", train, "t")
    assert status == "computed" and extra["sft_steps"] == 7 and extra["cpu_s"] >= 0
    state2, extra2, status2 = stages.tensor_stage(w, "m1", train, "t")
    assert status2 == "reused" and made == [1] and torch.equal(state2["w"], state["w"]) and extra2["sft_steps"] == 7
    assert stages.tensor_stage(w, "m2", train, "t")[2] == "computed" and made == [1, 1]
    w.write_bytes(b"not safetensors")
    assert stages.tensor_stage(w, "m2", train, "t")[2] == "computed" and made == [1, 1, 1]


def test_core_lm_seed_stages_resume(tmp_path, monkeypatch):
    from sherman.experiments import core_lm

    st = tmp_path / "stages"
    for d in "ab":
        (tmp_path / d).mkdir()
    first = core_lm.run("smoke", tmp_path / "a", stage_dir=st)
    assert sorted(p.name for p in (st / "smoke").iterdir()) == ["seed0.json", "seed1.json"]
    calls = []
    real = core_lm.train_one
    monkeypatch.setattr(core_lm, "train_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = core_lm.run("smoke", tmp_path / "b", stage_dir=st)
    assert calls == [] and second["rows"] == first["rows"] and second["metrics"] == first["metrics"]

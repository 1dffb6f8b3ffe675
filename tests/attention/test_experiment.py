"""Smoke run of the sparse_decoding experiment (registered in EXPERIMENTS)."""

from sherman.experiments import EXPERIMENTS
from sherman.experiments.sparse_decoding import run


def test_sparse_decoding_smoke(tmp_path):
    assert EXPERIMENTS["sparse_decoding"] == "sherman.experiments.sparse_decoding"
    res = run("smoke", tmp_path)
    assert res["name"] == "sparse_decoding"
    assert res["verdict"] in ("reproduced", "partly", "not reproduced")
    assert {"claim", "paper", "ours", "verdict"} <= set(res["rows"][0])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "sparse_decoding.png").is_file()
    rec = res["metrics"]["recall"]
    assert set(rec) == {"seer", "quest", "oracle", "random", "local"}
    # the oracle keeps the most attention mass by construction
    for f in ("0.05", "0.1", "0.2"):
        assert all(rec["oracle"][f] >= rec[m][f] - 1e-6 for m in rec)

from sherman.experiments import EXPERIMENTS
from sherman.experiments.delt import CLAIM, Cond, grid, run


def test_grid_covers_the_issue_cells():
    conds = grid(True, ("lqs", "pds", "loss"), (0.5, 0.7, 1.0), (2, 3, 4))
    labels = {c.label for c in conds}
    assert "-/shuffle/r1/cosine" in labels and "-/shuffle/r1/constant" in labels
    for L in (2, 3, 4):
        assert f"lqs/fold{L}/r1/cosine" in labels and f"lqs/fold{L}/r1/constant" in labels
    assert {"pds/fold3/r1/cosine", "loss/ascending/r1/cosine", "loss/descending/r1/cosine"} <= labels
    assert {f"{s}/{o}/r{r}/cosine" for s in ("lqs", "pds", "loss") for o in ("shuffle", "fold3") for r in (0.5, 0.7)} <= labels
    assert len(labels) == len(conds)
    assert Cond("pds", "shuffle").label == "-/shuffle/r1/cosine"


def test_smoke_run(tmp_path):
    assert EXPERIMENTS["delt"] == "sherman.experiments.delt"
    res = run("smoke", tmp_path)
    assert res["name"] == "delt" and res["claim"] == CLAIM
    assert res["verdict"] in ("reproduced", "partly", "not reproduced")
    assert len(res["rows"]) == 3 and all(set(r) >= {"claim", "paper", "ours", "verdict"} for r in res["rows"])
    assert (tmp_path / "delt.png").exists() and (tmp_path / "results.json").exists()
    s = res["metrics"]["summary"]
    assert s["lqs/fold3/r0.5/cosine"]["noise_removed"][0] >= 0.5  # LQS selection removes most noise documents
    assert s["-/shuffle/r1/cosine"]["noise_removed"][0] == 0.0
    # the uniform guess (an untrained model) scores ln(32) = 3.47; every run must be below it, the full-data one clearly
    assert all(v["target_loss"][0] < 3.45 for v in s.values()) and s["-/shuffle/r1/cosine"]["target_loss"][0] < 3.3

import json
import random

from sherman.cli import main
from sherman.experiments import EXPERIMENTS
from sherman.experiments.asyncthink import CLAIM, make_tasks, run


def test_asyncthink_experiment_smoke(tmp_path, capsys):
    assert EXPERIMENTS["asyncthink"] == "sherman.experiments.asyncthink"
    r = run("smoke", tmp_path)
    assert r["name"] == "asyncthink" and r["claim"] == CLAIM
    assert r["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    pre = r["metrics"]["precondition"]
    assert set(pre) == {"countdown", "arith2", "arith3"} and not pre["countdown"]["passed"]  # 3-number Countdown: tags dominate
    assert r["rows"][1]["verdict"] == "not testable here"
    assert len(r["rows"]) == 4 and all(set(row) == {"claim", "paper", "ours", "verdict"} for row in r["rows"])
    assert (tmp_path / r["plots"][0]).stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    ev = saved["metrics"]["eval"]
    assert {"sft/countdown", "rl_lam0.5/heldout_arith4"} <= set(ev)
    for methods in ev.values():
        for m in methods.values():
            assert 0 <= m["acc"] <= 1 and m["latency_p50"] <= m["latency_p90"] and m["eta"] >= 0
    # the saved organizer is what `sherman think --ckpt` reads (README): run it end to end
    org = tmp_path / "organizer"
    assert (org / "config.json").is_file() and (org / "model.safetensors").is_file() and (org / "tokenizer.json").is_file()
    question = make_tasks()[1][0].sample(random.Random(0)).prompt
    capsys.readouterr()
    code = main(["think", question, "--backend", "local", "--ckpt", str(org), "--max-org-tokens", "24", "--max-worker-tokens", "8"])
    out, err = capsys.readouterr()
    assert code in (0, 1) and "latency" in out and "organizer  (" in out and "error" not in err, err  # 1 = no answer from the tiny model

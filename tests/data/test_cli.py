import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sherman.cli import main as sherman_main
from sherman.core.common import ShermanError
from sherman.data.cli import main
from sherman.data.selection import n_keep

TINY = ["--dim", "16", "--n-layers", "1", "--lqs.warmup-steps", "4", "--lqs.proxy-steps", "2", "--lqs.delta", "1", "--lqs.chunk", "8"]


def rows(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    assert main(["corpus", str(d), "--corpus.n-clean", "12", "--corpus.n-entities", "4", "--corpus.n-target", "4", "--corpus.n-valid", "2"]) == 0
    return d


def test_score_select_order_pipeline_and_resume(corpus, tmp_path):
    out = tmp_path / "s.jsonl"
    assert sherman_main(["data", "score", str(corpus / "train.jsonl"), "--target", str(corpus / "target.jsonl"), "--out", str(out), *TINY]) == 0
    first = rows(out)
    n = len((corpus / "train.jsonl").read_text().splitlines())
    assert [r["index"] for r in first] == list(range(n))
    lqs = np.array([r["lqs"] for r in first])
    assert abs(lqs.mean()) < 1e-6 and np.abs(lqs).max() <= 3.0 and all(r["score"] == r["lqs"] for r in first)

    # resume: drop the last statistics rows and the output, rerun, get the same scores
    stats = out.parent / "s.jsonl.state" / "stats.rank0.jsonl"
    lines = stats.read_text().splitlines()
    stats.write_text("\n".join(lines[:8]) + "\n")
    out.unlink()
    assert main(["score", str(corpus / "train.jsonl"), "--target", str(corpus / "target.jsonl"), "--out", str(out), "--resume", *TINY]) == 0
    again = rows(out)
    np.testing.assert_allclose([r["lqs"] for r in again], lqs, rtol=1e-5, atol=1e-6)

    kept = tmp_path / "k.jsonl"
    assert main(["select", str(out), "--ratio", "0.5", "--out", str(kept), "--corpus", str(corpus / "train.jsonl")]) == 0
    k = rows(kept)
    assert len(k) == n_keep(n, 0.5) and all("text" in r for r in k)
    assert min(r["score"] for r in k) >= np.sort(lqs)[::-1][len(k) - 1]

    order = tmp_path / "o.jsonl"
    assert main(["order", str(kept), "--method", "ascending", "--out", str(order)]) == 0
    o = rows(order)
    assert [r["rank"] for r in o] == list(range(len(k)))
    assert [r["score"] for r in o] == sorted(r["score"] for r in k)
    jit = tmp_path / "j.jsonl"
    assert main(["order", str(kept), "--method", "folding", "--folds", "2", "--window", "2", "--out", str(jit)]) == 0
    from sherman.data.ordering import folding

    expect = folding(np.array([r["score"] for r in k]), 2, window=2, seed=0)
    assert [r["index"] for r in rows(jit)] == [k[i]["index"] for i in expect]


def test_cli_errors(corpus, tmp_path):
    with pytest.raises(ShermanError, match="--target"):
        main(["score", str(corpus / "train.jsonl"), "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(ShermanError, match="no such corpus"):
        main(["score", str(tmp_path / "nope.jsonl"), "--target", str(corpus / "target.jsonl")])
    with pytest.raises(ShermanError, match="--scorer"):
        main(["score", str(corpus / "train.jsonl"), "--scorer", "magic"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0}\n')
    with pytest.raises(ShermanError, match='"score"'):
        main(["select", str(bad)])
    good = tmp_path / "good.jsonl"
    good.write_text('{"index": 0, "score": 1.0}\n{"index": 1, "score": 0.5}\n')
    with pytest.raises(ShermanError, match="ratio"):
        main(["select", str(good), "--ratio", "0"])
    with pytest.raises(ShermanError, match="method"):
        main(["order", str(good), "--method", "zigzag"])
    with pytest.raises(ShermanError, match="--window"):
        main(["order", str(good), "--window", "-1"])
    with pytest.raises(ShermanError, match="unknown data command"):
        main(["frobnicate"])
    assert sherman_main(["data", "select", str(good), "--ratio", "2"]) == 2  # one-line error, exit status 2
    assert main(["score", str(corpus / "train.jsonl"), "--scorer", "random", "--out", str(tmp_path / "r.jsonl")]) == 0
    assert len(rows(tmp_path / "r.jsonl")) == len((corpus / "train.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(corpus, tmp_path):
    common = [str(corpus / "train.jsonl"), "--target", str(corpus / "target.jsonl"), *TINY]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(["score", *common, "--out", str(one)]) == 0
    with socket.socket() as sk:  # a free port for the rendezvous
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "sherman.cli", "data", "score", *common, "--out", str(two)]
    p = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        assert p.wait(timeout=300) == 0
    finally:
        if p.poll() is None:  # kill torchrun and its workers together
            os.killpg(p.pid, signal.SIGKILL)
    assert len(list((tmp_path / "two.jsonl.state").glob("stats.rank*.jsonl"))) == 2
    np.testing.assert_allclose([r["lqs"] for r in rows(two)], [r["lqs"] for r in rows(one)], rtol=1e-5, atol=1e-6)

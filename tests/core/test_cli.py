"""Smoke tests of every core CLI command at tiny size, and their error paths (short message, exit 2)."""

import subprocess
import sys

import pytest

from sherman.cli import main


def sherman(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "sherman.cli", *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out), "--task", "arithmetic", "--n-examples", "64", "--dim", "32", "--n-layers", "1",
                 "--train.steps", "6", "--train.batch-size", "8", "--train.ckpt-every", "3"]) == 0  # fmt: skip
    return out


def test_train_writes_checkpoints_and_resumes(run_dir, capsys):
    assert (run_dir / "step_0000006" / "model.safetensors").is_file() and (run_dir / "tokenizer.json").is_file()
    assert main(["train", "--out", str(run_dir), "--n-examples", "64", "--dim", "32", "--n-layers", "1",
                 "--train.steps", "8", "--train.batch-size", "8", "--train.resume"]) == 0  # fmt: skip
    assert "resumed from" in capsys.readouterr().out
    assert (run_dir / "step_0000008").is_dir()


def test_generate_from_run_dir(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "12+3=", "--prompt", "7+8=", "--max-new-tokens", "8", "--json-out"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"prompt": "12+3="' in lines[0]


def test_convert_roundtrip(run_dir, tmp_path):
    ck = run_dir / "step_0000006"
    hf = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(ck), "--out", str(hf)]) == 0
    assert (hf / "config.json").is_file()
    back = tmp_path / "back"
    assert main(["convert", "--from-hf", str(hf), "--out", str(back)]) == 0
    import torch

    from sherman.core.checkpoint import load_model

    a, b = load_model(ck), load_model(back)
    x = torch.tensor([[1, 5, 6, 7]])
    assert torch.allclose(a(x).logits, b(x).logits, atol=1e-5)


def test_reproduce_smoke_writes_report_with_claim_table(tmp_path):
    r = sherman("reproduce", "core_lm", "--budget", "smoke", "--out", tmp_path)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<table id='claims'>" in html and "core_lm" in html and "data:image/png;base64," in html
    assert (tmp_path / "core_lm" / "results.json").is_file()
    assert "report:" in r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["nope"], "unknown command"),
        (["generate", "/does/not/exist", "--prompt", "x"], "no such checkpoint"),
        (["reproduce", "nope", "--budget", "smoke"], "unknown experiment"),
        (["train", "--text", "/does/not/exist.txt"], "no such file"),
        (["convert", "--out", "x"], "exactly one of"),
        (["train", "--task", "nope"], "unknown task"),
    ],
)
def test_bad_arguments_give_short_errors(args, needle):
    r = sherman(*args, ok=False)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_lists_commands():
    r = sherman("--help")
    for name in ("train", "generate", "convert", "reproduce"):
        assert name in r.stdout


@pytest.mark.parametrize("attn", ["quest", "resa", "seer"])
def test_generate_with_sparse_backends(run_dir, capsys, attn):
    ck = run_dir / "step_0000006"
    if attn == "seer" and not (ck / "seer_gates.pt").is_file():
        assert main(["seer", "train", str(ck), "--steps", "2", "--seq-len", "40", "--block-size", "8"]) == 0
    args = ["generate", str(ck), "--prompt", "12+3=", "--max-new-tokens", "6", "--attn", attn, "--block-size", "8", "--json-out"]
    assert main(args + ["--budget", "1.0"]) == 0
    assert '"n_tokens"' in capsys.readouterr().out


def test_generate_sparse_errors(run_dir):
    ck = run_dir / "step_0000006"
    r = sherman("generate", ck, "--prompt", "1+1=", "--attn", "seer", "--gates", "/does/not/exist.pt", ok=False)
    assert r.returncode == 2 and "exist" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = sherman("generate", ck, "--prompt", "1+1=", "--attn", "quest", "--budget", "0", ok=False)
    assert r.returncode == 2 and "--budget" in r.stderr

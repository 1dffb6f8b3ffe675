"""The one checkpoint resolver (`sherman.core.paths`) over a run directory, a step directory, a Hugging Face folder and
a wrong path, and the commands that use it."""

from __future__ import annotations

import json

import pytest
import torch

from sherman.cli import main
from sherman.core.checkpoint import save_checkpoint, step_dir
from sherman.core.errors import ShermanError
from sherman.core.hf import save_hf
from sherman.core.model import ModelConfig, Transformer
from sherman.core.paths import load_model_and_tokenizer, resolve_checkpoint
from sherman.core.tokenizer import CharTokenizer
from sherman.tasks import get_task


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    tok = CharTokenizer(get_task("arithmetic").alphabet())
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32))
    run = root / "run"
    for s in (3, 12, 7):  # the newest is step 12, whatever the order of writing
        save_checkpoint(step_dir(run, s), model, step=s)
    (run / ".step_0000099.tmp").mkdir()  # a temporary of an interrupted save is not a checkpoint
    (run / "step_0000050").mkdir()  # nor is a half-written directory without weights
    tok.save(run / "tokenizer.json")
    hf = root / "hf"
    save_hf(model, hf)
    tok.save(hf / "tokenizer.json")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("x")
    (root / "odd").mkdir()
    (root / "odd" / "config.json").write_text(json.dumps({"hello": 1}))
    return root, model, tok


def test_run_dir_means_newest_step_with_the_runs_tokenizer(dirs):
    root, _, _ = dirs
    r = resolve_checkpoint(root / "run", need_tokenizer=True)
    assert r.path == root / "run" / "step_0000012" and r.format == "sherman" and r.tokenizer == root / "run" / "tokenizer.json"
    assert r.name == "run"


def test_step_dir_finds_its_runs_tokenizer(dirs):
    root, _, _ = dirs
    r = resolve_checkpoint(root / "run" / "step_0000003", need_tokenizer=True)
    assert r.path == root / "run" / "step_0000003" and r.tokenizer == root / "run" / "tokenizer.json" and r.name == "run"


def test_hf_dir(dirs):
    root, model, _ = dirs
    r = resolve_checkpoint(root / "hf", need_tokenizer=True)
    assert r.format == "hf" and r.path == root / "hf" and r.tokenizer == root / "hf" / "tokenizer.json"
    loaded, tok, _ = load_model_and_tokenizer(root / "hf")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-6) and tok.vocab_size == len(get_task("arithmetic").alphabet()) + 3
    with pytest.raises(ShermanError, match="Hugging Face folder; this command needs a Sherman checkpoint"):
        resolve_checkpoint(root / "hf", hf=False)
    with pytest.raises(ShermanError, match="--hf given, but this is a Sherman checkpoint"):
        resolve_checkpoint(root / "run", hf=True)


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing", "no such checkpoint directory"),
        ("file.txt", "is a file"),
        ("empty", r"no config.json and no complete step_\* checkpoint inside"),
        ("odd", "neither a Sherman checkpoint config nor a Hugging Face config"),
    ],
)
def test_wrong_paths_are_one_line(dirs, name, message):
    root, _, _ = dirs
    with pytest.raises(ShermanError, match=message) as e:
        resolve_checkpoint(root / name)
    assert "\n" not in str(e.value)


def test_missing_tokenizer_is_named(dirs, tmp_path):
    _, model, _ = dirs
    save_checkpoint(tmp_path / "lone", model)
    assert resolve_checkpoint(tmp_path / "lone").tokenizer is None
    with pytest.raises(ShermanError, match="no tokenizer.json in .*lone or its run directory"):
        resolve_checkpoint(tmp_path / "lone", need_tokenizer=True)


def test_every_command_takes_a_run_dir(dirs, tmp_path, capsys):
    """generate, convert --to-hf, rl --init, seer train and think --ckpt all accept the run directory (serve is covered
    by tests/serve through `load_for_serving`)."""
    root, _, _ = dirs
    run = str(root / "run")
    assert main(["generate", run, "--prompt", "1+", "--max-new-tokens", "2"]) == 0
    assert main(["generate", str(root / "run" / "step_0000003"), "--prompt", "1+", "--max-new-tokens", "2"]) == 0
    assert main(["generate", str(root / "hf"), "--prompt", "1+", "--max-new-tokens", "2"]) == 0
    assert main(["convert", "--to-hf", run, "--out", str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["architectures"]
    assert main(["convert", "--to-hf", run, "--out", str(tmp_path / "exported")]) == 2  # exists: needs --force
    assert "pass --force" in capsys.readouterr().err
    assert main(["convert", "--to-hf", run, "--out", str(tmp_path / "exported"), "--force"]) == 0
    assert main(["rl", "--task", "countdown", "--init", run, "--out", str(tmp_path / "rl2")]) == 2  # alphabet lacks countdown's
    assert "cannot encode task 'countdown'" in capsys.readouterr().err
    assert main(["rl", "--task", "arithmetic", "--init", run, "--out", str(tmp_path / "rl"), "--steps", "1", "--prompts-per-step", "2",
                 "--group-size", "2", "--max-new-tokens", "2", "--eval-prompts", "0"]) == 0  # fmt: skip
    assert main(["seer", "train", run, "--steps", "1", "--batch-size", "1", "--seq-len", "8", "--block-size", "4",
                 "--out", str(tmp_path / "gates.pt")]) == 0  # fmt: skip
    from sherman.serve.app import load_for_serving

    model, tok = load_for_serving(run)
    assert tok.vocab_size == len(get_task("arithmetic").alphabet()) + 3 and not model.training
    capsys.readouterr()
    assert main(["think", "1+2=", "--backend", "local", "--ckpt", run]) == 2  # resolved, but its tokenizer lacks the protocol
    err = capsys.readouterr().err
    assert "does not know the AsyncThink protocol" in err and len(err.strip().splitlines()) == 1

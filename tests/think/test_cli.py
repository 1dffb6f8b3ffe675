import torch

from sherman.cli import main
from sherman.core.checkpoint import save_checkpoint
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.think.train import SPECIALS


def tiny_ckpt(tmp_path):
    tok = CharTokenizer("0123456789+-*=;#", specials=SPECIALS)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m", Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)))
    tok.save(tmp_path / "m")
    return str(tmp_path / "m")


def test_think_cli_local(tmp_path, capsys):
    d = tiny_ckpt(tmp_path)
    code = main(["think", "1+2=", "--backend", "local", "--ckpt", d, "--max-org-tokens", "12", "--max-worker-tokens", "5", "--temperature", "1"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "latency" in out and "organizer  (" in out


def test_think_cli_bad_input(tmp_path, capsys):
    d = tiny_ckpt(tmp_path)
    assert main(["think", "1+2=", "--backend", "ftp://x"]) == 2
    assert main(["think", "1+2=", "--backend", "local"]) == 2
    assert main(["think", "hello?", "--backend", "local", "--ckpt", d]) == 2  # not in the alphabet
    assert main(["think", "1", "--backend", "local", "--ckpt", d, "--capacity", "0"]) == 2
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "error" in capsys.readouterr().err

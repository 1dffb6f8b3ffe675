"""`sherman seer train CKPT` on a Sherman checkpoint and on a Hugging Face directory."""

import torch

from sherman.attention.seer import SeerGates, seer_context
from sherman.cli import main
from sherman.core.checkpoint import save_checkpoint
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()


def test_seer_train_on_sherman_checkpoint(tmp_path, capsys):
    model = _model()
    ck = save_checkpoint(tmp_path / "ck", model)
    code = main(["seer", "train", str(ck), "--steps", "3", "--seq-len", "32", "--block-size", "8", "--batch-size", "2"])
    assert code == 0
    gates = SeerGates.load(ck / "seer_gates.pt")
    assert gates.cfg.block_size == 8 and len(gates.layers) == 2
    out = generate(model, [list(range(1, 30))], SamplingParams(max_new_tokens=4, temperature=0.0), attn=seer_context(ck, budget=0.2))
    assert len(out.tokens[0]) == 4
    assert "saved" in capsys.readouterr().out


def test_seer_train_on_hf_checkpoint(tmp_path):
    import transformers  # a dev dependency: its absence is a failure, not a skip
    cfg = transformers.AutoConfig.for_model("llama", vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "hf")
    code = main(["seer", "train", str(tmp_path / "hf"), "--hf", "--steps", "2", "--seq-len", "16", "--block-size", "4", "--batch-size", "1"])
    assert code == 0 and (tmp_path / "hf" / "seer_gates.pt").is_file()


def test_seer_cli_bad_input(tmp_path, capsys):
    assert main(["seer", "fly"]) == 2
    assert main(["seer", "train", str(tmp_path / "nope")]) == 2
    ck = save_checkpoint(tmp_path / "ck", _model())
    assert main(["seer", "train", str(ck), "--seq-len", "8", "--block-size", "8"]) == 2
    assert main(["seer", "train", str(ck), "--data", str(tmp_path / "missing.txt"), "--seq-len", "16", "--block-size", "4"]) == 2
    assert "error" in capsys.readouterr().err

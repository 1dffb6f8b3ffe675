

def test_prune_checkpoints_keeps_the_newest(tmp_path):
    from sherman.core.checkpoint import prune_checkpoints, save_checkpoint, step_dir
    from sherman.core.model import ModelConfig, Transformer

    m = Transformer(ModelConfig(vocab_size=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=8))
    for s in (3, 12, 7, 100):
        save_checkpoint(step_dir(tmp_path, s), m, step=s)
    prune_checkpoints(tmp_path, 0)
    assert len(list(tmp_path.glob("step_*"))) == 4  # keep <= 0 deletes nothing
    prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000012", "step_0000100"]  # numeric, not lexical, order

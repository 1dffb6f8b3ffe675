"""`sherman.rl.grpo` re-exports the names of the modules it was split into (config, rollout, logprobs, evaluation, cli)."""

from sherman.rl import cli, config, evaluation, grpo, logprobs, rollout


def test_grpo_reexports_split_modules():
    pairs = [
        (config, ("RLConfig", "PRESETS", "preset_config", "ADVANTAGES", "RATIO_TYPES")),
        (rollout, ("Rollouts", "rollout", "stop_ids")),
        (logprobs, ("SharedPrompts", "share_prompts", "pack_groups", "forward_logprobs", "shared_prompt_logprobs", "unshared_logprobs",
                    "MAX_MASK_ELEMENTS", "model_dtype")),  # fmt: skip
        (evaluation, ("evaluate", "pass_at_k", "tiny_model_config", "sft_warm_start")),
    ]
    for mod, names in pairs:
        for n in names:
            assert getattr(grpo, n) is getattr(mod, n), f"grpo.{n} is not {mod.__name__}.{n}"
    # the CLI imports the loop lazily (its --help imports no torch), and it is grpo's loop, not a copy
    import inspect

    assert "from sherman.rl.grpo import rl_train" in inspect.getsource(cli.main)
    assert not hasattr(cli, "rl_train") or cli.rl_train is grpo.rl_train

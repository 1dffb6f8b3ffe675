"""Reinforcement learning for language models: `core` (pure tensor math), `config` (RLConfig, presets), `rollout`
(sampling a rollout batch), `logprobs` (prompt sharing/packing, the log-prob pass), `grpo` (the RL loop),
`evaluation` (pass@k, SFT warm start), `cli` (`sherman rl`)."""

"""Reinforcement learning for language models: `core` (pure tensor math), `grpo` (the RL loop and its presets)."""

"""RPT options: `RPTConfig`, the reward names and the paper's RLConfig overrides (`PRESET`).

Kept apart from `sherman.rl.rpt` (which re-exports them) so that building the `sherman rpt` parsers imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sherman.core.errors import ShermanError

REWARDS = ("prefix", "first_token", "dense", "conditional_dense")
SPLITS = ("easy", "medium", "hard")
PRESET: dict[str, Any] = dict(advantage="grpo", ratio_type="token", loss_agg="token_mean", mini_batches=1, epochs=1, kl_coef=0.0,
                              group_size=8, temperature=0.8)  # fmt: skip
"""RLConfig overrides of the paper's training setup (GRPO, exact on-policy, no KL, G = 8, T = 0.8)."""


@dataclass
class RPTConfig:
    template: str = "{context}"
    """Prompt template; `{context}` is the document prefix. Text around it is tokenized separately (token-exact contexts)."""
    think_open: str = "<think>"
    """Opens the chain of thought (ends the prompt when think_tokens > 0)."""
    think_close: str = "</think>"
    """Closes the chain of thought; the prediction is looked for after it."""
    answer_open: str = "\\boxed{"
    """Opens the prediction (ends the prompt when think_tokens = 0)."""
    answer_close: str = "}"
    """Closes the prediction."""
    think_tokens: int = 0
    """Thinking budget in tokens; 0 = predict directly (the paper's no-thinking ablation; the prompt ends with answer_open)."""
    max_pred_tokens: int = 4
    """Generation budget for the prediction and its closing delimiter (plus think_tokens)."""
    max_pred_bytes: int = 64
    """A longer prediction is malformed (reward 0)."""
    on_multiple: str = "reject"
    """Several predictions in one completion: 'reject' (malformed, reward 0) or 'last' (the paper's last \\boxed{})."""
    reward: str = "prefix"
    """prefix (Eq. 3), first_token, dense or conditional_dense (Appendix A)."""
    gt_tokens: int = 8
    """Tokens of the true continuation used as gt (a prediction may match up to this many whole tokens)."""
    context_tokens: int = 96
    """Longest context fed to the policy (the last tokens of the prefix)."""
    min_context: int = 4
    """Positions with fewer context tokens are never selected."""
    top_k: int = 16
    """Proxy entropy over the top-k logits (the paper: 16)."""
    threshold: float | None = None
    """Keep positions whose proxy entropy is >= this (nats)."""
    quantile: float | None = 0.5
    """Or keep positions at or above this quantile of the proxy entropies (used when threshold is None)."""
    split_edges: tuple[float, float, float] = (0.5, 1.0, 1.5)
    """Entropy edges of the easy / medium / hard evaluation splits (the paper's 0.5 / 1.0 / 1.5 nats)."""

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ShermanError(f"rpt: reward must be one of {REWARDS}, got {self.reward!r}")
        if self.on_multiple not in ("reject", "last"):
            raise ShermanError(f"rpt: on_multiple must be 'reject' or 'last', got {self.on_multiple!r}")
        if "{context}" not in self.template:
            raise ShermanError("rpt: template must contain '{context}'")
        if self.think_tokens < 0 or self.max_pred_tokens < 1 or self.gt_tokens < 1 or self.top_k < 1:
            raise ShermanError("rpt: need think_tokens >= 0, max_pred_tokens >= 1, gt_tokens >= 1, top_k >= 1")
        if self.quantile is not None and not 0.0 <= self.quantile < 1.0:
            raise ShermanError(f"rpt: quantile must be in [0, 1), got {self.quantile}")
        if not self.answer_open or not self.answer_close or (self.think_tokens and not self.think_close):
            raise ShermanError("rpt: delimiters must be non-empty")

    @property
    def max_new_tokens(self) -> int:
        return self.think_tokens + self.max_pred_tokens + (4 if self.think_tokens else 1)

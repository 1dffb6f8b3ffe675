"""The one sampling loop. RL rollouts, AsyncThink workers, the server and the experiments all call it.

`generate(model, prompts, SamplingParams(...))` takes ragged prompts (lists of token ids), left pads
them into one batch with per-row RoPE positions that count only real tokens (so a padded row computes
exactly what it would alone), prefills a preallocated `KVCache`, then decodes one token per row per
step until every row has stopped.

Sampling: temperature (0 = greedy), nucleus top-p, max new tokens, stop token ids and stop strings.
Returned log-probs are `log softmax(logits / T)` of the chosen token, before top-p truncation (at
T = 1 this is the policy's own log-prob, which is what RL needs). A row stops on the first stop token
id (kept in its output) or when its decoded text contains a stop string (the token that completed it
is kept; `texts` is cut before the stop string).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from sherman.core.attention import AttnContext
from sherman.core.model import Transformer, padded_positions


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    """Maximum tokens generated per row."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    stop_token_ids: Sequence[int] = ()
    """A row stops after emitting any of these ids (the id is kept in its output)."""
    stop_strings: Sequence[str] = ()
    """A row stops once its decoded text contains any of these (needs a tokenizer)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerateOutput:
    tokens: list[list[int]]
    """Generated ids per row (prompt excluded)."""
    logprobs: list[list[float]]
    """log p of each generated id under the tempered model distribution."""
    finish_reasons: list[str]
    """'stop' (stop id or string) or 'length' per row."""
    texts: list[str] | None = None
    """Decoded completions when a tokenizer was given (cut before a matched stop string)."""
    stats: dict = field(default_factory=dict)
    """Timing and counts: prefill_tokens, decode_steps."""

    def padded(self, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (B, T), logprobs (B, T), mask (B, T)) right padded to the longest completion."""
        b = len(self.tokens)
        t = max((len(x) for x in self.tokens), default=0)
        ids = torch.full((b, t), pad_id, dtype=torch.long)
        lp = torch.zeros(b, t)
        mask = torch.zeros(b, t)
        for i, (toks, lps) in enumerate(zip(self.tokens, self.logprobs)):
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            lp[i, : len(lps)] = torch.tensor(lps)
            mask[i, : len(toks)] = 1.0
        return ids, lp, mask


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> ids (B, P), valid (B, P) with padding on the left."""
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    p = max(len(x) for x in prompts)
    if p == 0:
        raise ValueError("every prompt is empty; give at least one token (e.g. a BOS id)")
    ids = torch.full((len(prompts), p), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), p, dtype=torch.bool)
    for i, x in enumerate(prompts):
        if len(x) == 0:
            raise ValueError(f"prompt {i} is empty; give at least one token (e.g. a BOS id)")
        ids[i, p - len(x) :] = torch.as_tensor(list(x), dtype=torch.long)
        valid[i, p - len(x) :] = True
    return ids.to(device), valid.to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> (token (B,), log p(token) (B,) under softmax(logits / T))."""
    logits = logits.float()
    if temperature == 0.0:
        tok = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
        return tok, logp
    logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (B, V)
    probs = logp_all.exp()
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        drop = (sp.cumsum(-1) - sp) > top_p  # keep the smallest prefix with mass >= top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return tok, logp_all.gather(-1, tok[:, None]).squeeze(-1)


def _find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    tokenizer=None,
    generator: torch.Generator | None = None,
    attn: AttnContext | None = None,
    pad_id: int = 0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> GenerateOutput:
    """Sample completions for a batch of ragged prompts. See the module docstring.

    tokenizer: needed for stop strings and `texts` (anything with `decode(list[int]) -> str`).
    generator: a torch.Generator for reproducible sampling.
    attn: attention backend and options (default dense); sparse backends read it.
    on_step: called as on_step(step, tokens (B,)) after each decode step (streaming hooks).
    """
    params = params or SamplingParams()
    if params.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer")
    was_training = model.training
    model.eval()
    dev = model.device
    ids, valid = left_pad(prompts, pad_id, dev)
    b, p = ids.shape
    n_new = params.max_new_tokens
    cache = model.make_cache(b, p + n_new)
    out = model(ids, positions=padded_positions(valid), cache=cache, key_valid=valid, attn=attn, compute_logits=False)
    logits = F.linear(out.hidden[:, -1], model.head_weight())  # (B, V)
    pos = valid.sum(-1)  # (B,) next RoPE position per row
    toks = torch.full((b, n_new), pad_id, dtype=torch.long, device=dev)
    lps = torch.zeros(b, n_new, device=dev)
    lengths = torch.full((b,), n_new, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    reasons = ["length"] * b
    stop_ids = torch.tensor(list(params.stop_token_ids), dtype=torch.long, device=dev)
    texts_cut: dict[int, str] = {}
    steps = 0
    for step in range(n_new):
        tok, lp = sample_next(logits, params.temperature, params.top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        toks[:, step], lps[:, step] = tok, lp
        steps = step + 1
        newly = ~done & torch.isin(tok, stop_ids) if stop_ids.numel() else torch.zeros_like(done)
        if params.stop_strings:
            for i in torch.nonzero(~done & ~newly).flatten().tolist():
                text = tokenizer.decode(toks[i, : step + 1].tolist())
                j = _find_stop(text, params.stop_strings)
                if j >= 0:
                    newly[i] = True
                    texts_cut[i] = text[:j]
        for i in torch.nonzero(newly).flatten().tolist():
            lengths[i] = step + 1
            reasons[i] = "stop"
        done |= newly
        if on_step is not None:
            on_step(step, tok)
        if bool(done.all()) or step == n_new - 1:
            break
        out = model(tok[:, None], positions=pos[:, None], cache=cache, attn=attn, compute_logits=False)
        logits = F.linear(out.hidden[:, -1], model.head_weight())
        pos = pos + 1
    model.train(was_training)
    toks_l, lps_l = toks.cpu().tolist(), lps.cpu().tolist()
    tokens = [toks_l[i][: min(int(lengths[i]), steps)] for i in range(b)]
    logprobs = [lps_l[i][: len(tokens[i])] for i in range(b)]
    texts = None
    if tokenizer is not None:
        texts = [texts_cut.get(i, tokenizer.decode(tokens[i])) for i in range(b)]
    stats = {"prefill_tokens": int(valid.sum()), "decode_steps": steps, "new_tokens": sum(len(t) for t in tokens)}
    return GenerateOutput(tokens=tokens, logprobs=logprobs, finish_reasons=reasons, texts=texts, stats=stats)

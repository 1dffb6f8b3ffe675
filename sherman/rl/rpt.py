"""RPT: Reinforcement Pre-Training (Dong et al., arXiv 2506.08007): next-token prediction as RL with a verifiable reward.

For a context x_<t of a plain-text document the policy writes a chain of thought and then a prediction of what
comes next (the paper: the content of the last `\\boxed{}` after `</think>`). The prefix-matching reward
(Eq. 3) works on BYTES: with gt the byte string of the true continuation x_>=t and L_gt the set of the
cumulative byte lengths of its tokens (the valid token boundaries), a prediction y of byte length l earns 1 iff
y == gt[:l] and l is in L_gt. So one or several whole tokens earn 1, a partial token earns 0, and a prediction need
not be a single vocabulary item. Appendix A's alternatives are config choices (`RPTConfig.reward`):
    first_token        1 iff the prediction starts with the first ground-truth token's bytes (later bytes ignored)
    dense              (whole gt tokens matched from the start) / (gt tokens the prediction's bytes reach into)
    conditional_dense  the dense reward, but only when the first token matches (else 0)
The exact formulas of the two dense variants are not printed in the paper; these are our readings (documented here).

Data filtering: a smaller proxy model computes at every position the entropy of its top-16 next-token
distribution (renormalised over the top k); positions below a threshold are dropped (`select_positions`, by an
absolute threshold or a quantile). Evaluation splits positions into easy / medium / hard by the proxy's
entropy (the paper: thresholds 0.5 / 1.0 / 1.5 nats; `RPTConfig.split_edges`). Entropies are computed in one forward
per document (`proxy_entropies`) and cached on disk as safetensors + JSON, keyed by a hash of the proxy's weights and
the tokenized corpus (`cached_entropies`).

Training is the project's one RL loop (`sherman.rl.grpo.rl_train`): `RPTTask` presents each selected position as an
`Example` of the shared task interface (its token-exact prompt ids in `meta["prompt_ids"]`), so every preset, dense
or MoE, runs it, under torchrun too. The paper's setting is GRPO with exact on-policy updates, no KL, G = 8,
temperature 0.8: `PRESET` below (the `opo` preset's update with the GRPO advantage).

How this differs from the paper at this scale: the paper starts from a reasoning model (R1-Distill-Qwen-14B) that
already writes `<think>...</think>` and `\\boxed{}`; a tiny model does not, so the tiny reproduction teaches it the
format, on positions outside every evaluation set, in one of two ways: a format SFT (`format_sft_data`: one prompt and
its one-token completion per sequence), or reasoning spans spliced into the NTP pre-training documents
(`format_span_data`: opener, true next token, closer, at random positions, with a loss weight), so that the format is
learnt with, and at the rate of, the next-token knowledge it must carry. `think_tokens = 0` (the paper's no-thinking
ablation) is the default at tiny scale.

CLI:  sherman rpt entropy CORPUS --proxy CKPT ;  sherman rpt train CKPT --data CORPUS ;  sherman rpt eval CKPT --data CORPUS
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from sherman.core.common import ShermanError
from sherman.core.generate import SamplingParams, generate
from sherman.rl.rpt_config import PRESET, REWARDS, SPLITS, RPTConfig  # noqa: F401 - re-exported (options without torch)
from sherman.tasks.base import Example

# ----------------------------------------------------------------------------------------- rewards (pure)


def boundaries(token_bytes: Sequence[bytes]) -> list[int]:
    """Cumulative byte lengths of the continuation's tokens: the valid prediction lengths L_gt."""
    out, n = [], 0
    for b in token_bytes:
        n += len(b)
        out.append(n)
    return out


def prefix_reward(pred: bytes, gt: bytes, bounds: Sequence[int]) -> float:
    """Eq. 3: 1 iff pred == gt[:len(pred)] and len(pred) is a token boundary of gt (an empty prediction earns 0)."""
    n = len(pred)
    return 1.0 if n > 0 and n in set(bounds) and gt[:n] == pred else 0.0


def first_token_reward(pred: bytes, gt: bytes, bounds: Sequence[int]) -> float:
    """Appendix A, first-token matching: 1 iff pred starts with the first gt token's bytes."""
    n1 = bounds[0] if bounds else 0
    return 1.0 if n1 > 0 and pred[:n1] == gt[:n1] else 0.0


def _dense_parts(pred: bytes, gt: bytes, bounds: Sequence[int]) -> tuple[int, int]:
    """(whole gt tokens pred matches from the start, gt tokens pred's bytes reach into; past gt counts as one more)."""
    matched = sum(1 for b in bounds if b <= len(pred) and pred[:b] == gt[:b])
    reach = sum(1 for i, b in enumerate(bounds) if len(pred) > (bounds[i - 1] if i else 0))
    reach += 1 if len(pred) > (bounds[-1] if bounds else 0) else 0
    return matched, reach


def dense_reward(pred: bytes, gt: bytes, bounds: Sequence[int]) -> float:
    """Appendix A, dense (our reading): whole tokens matched from the start / gt tokens the prediction reaches into."""
    matched, reach = _dense_parts(pred, gt, bounds)
    return matched / reach if reach else 0.0


def conditional_dense_reward(pred: bytes, gt: bytes, bounds: Sequence[int]) -> float:
    """Appendix A, conditional dense (our reading): the dense reward when the first token matches, else 0."""
    return dense_reward(pred, gt, bounds) if first_token_reward(pred, gt, bounds) else 0.0


REWARD_FNS = {"prefix": prefix_reward, "first_token": first_token_reward, "dense": dense_reward, "conditional_dense": conditional_dense_reward}


def extract_prediction(completion: str, cfg: RPTConfig) -> tuple[str | None, str]:
    """The prediction in a completion (the prompt's final delimiter is not part of it) -> (text | None, status).

    status: 'ok', or why the completion is malformed: 'no_think_close', 'multiple_think_close', 'no_answer',
    'multiple_answers', 'unclosed', 'empty', 'too_long'. A malformed completion earns reward 0.
    """
    if cfg.think_tokens > 0:
        n = completion.count(cfg.think_close)
        if n == 0:
            return None, "no_think_close"
        if n > 1:
            return None, "multiple_think_close"
        body = completion.split(cfg.think_close, 1)[1]
        parts = body.split(cfg.answer_open)
        if len(parts) < 2:
            return None, "no_answer"
        answers = parts[1:]
    else:
        answers = completion.split(cfg.answer_open)  # the prompt ended with answer_open: the completion opens a prediction
    if len(answers) > 1 and cfg.on_multiple == "reject":
        return None, "multiple_answers"
    ans = answers[-1]
    if cfg.answer_close not in ans:
        return None, "unclosed"
    pred = ans.split(cfg.answer_close, 1)[0]
    if not pred:
        return None, "empty"
    if len(pred.encode("utf-8")) > cfg.max_pred_bytes:
        return None, "too_long"
    return pred, "ok"


# ----------------------------------------------------------------------------------------- token bytes


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level map: printable char -> byte (the inverse of the map byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def token_bytes_fn(tok):
    """id -> the token's exact bytes. Byte-level BPE (ours or a Hugging Face tokenizer.json): from the vocabulary string
    through the byte-level map (a token may hold part of a UTF-8 character); otherwise the token's decoded text."""
    inner = getattr(tok, "tok", None)
    if inner is not None and type(inner.decoder).__name__ == "ByteLevel":
        added = {int(i) for i in inner.get_added_tokens_decoder()}
        cache: dict[int, bytes] = {}

        def fn(i: int) -> bytes:
            i = int(i)
            if i not in cache:
                s = inner.id_to_token(i) or ""
                byte_level = i not in added and all(c in _BYTE_DECODER for c in s)
                cache[i] = bytes(_BYTE_DECODER[c] for c in s) if byte_level else s.encode("utf-8")
            return cache[i]

        return fn
    return lambda i: tok.decode([int(i)], skip_special=False).encode("utf-8")


# ----------------------------------------------------------------------------------------- corpus


def load_corpus(path: str | Path) -> list[str]:
    """Documents of a .txt (one per non-empty line) or .jsonl ({"text": ...} per line) file; one-line errors for a
    missing, empty or non-UTF-8 file."""
    from sherman.core.train import read_documents

    p = Path(path)
    if not p.is_file():
        raise ShermanError(f"{p}: corpus file not found")
    if p.suffix not in (".txt", ".jsonl"):
        raise ShermanError(f"{p}: corpus must be a .txt or .jsonl file")
    try:
        p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShermanError(f"{p}: not UTF-8 text (byte {e.start})") from None
    docs = read_documents(p)
    if not docs:
        raise ShermanError(f"{p}: corpus is empty (no non-blank documents)")
    return docs


FACT_SUBJECTS = ("Arvel", "Bosk", "Cendra", "Dulm", "Evrin", "Fasso", "Gorven", "Hatla", "Ilsen", "Jorum", "Kesta", "Lomar")
FACT_RELATIONS = ("lives in", "keeps a", "paints with", "sings to")
FACT_OBJECTS = ("Tarn", "Vell", "Quorra", "Mistle", "Pell", "Ondra", "Rusk", "Zibe", "Yarrow", "Nim", "Sorrel", "Wend")


def fact_table(seed: int = 0) -> dict[tuple[str, str], str]:
    """A fixed vocabulary of made-up facts (subject, relation) -> object: the memorised part of the corpus."""
    rng = random.Random(f"facts-{seed}")
    return {(s, r): rng.choice(FACT_OBJECTS) for s in FACT_SUBJECTS for r in FACT_RELATIONS}


def generate_corpus(n_docs: int, seed: int = 0, facts_seed: int = 0) -> list[str]:
    """Documents whose next tokens are partly computable and partly memorised: arithmetic worked examples
    ("37+45: 7+5=12, carry 1; 3+4+1=8; so 37+45=82.") mixed with sentences of a fixed fact table
    ("Dulm lives in Tarn."), 3-6 sentences per document."""
    rng = random.Random(seed)
    facts = fact_table(facts_seed)
    keys = sorted(facts)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.5:
                s, r = rng.choice(keys)
                sents.append(f"{s} {r} {facts[(s, r)]}.")
            else:
                a, b = rng.randint(10, 99), rng.randint(10, 99)
                lo = a % 10 + b % 10
                c = lo // 10
                sents.append(f"{a}+{b}: {a % 10}+{b % 10}={lo}, carry {c}; {a // 10}+{b // 10}+{c}={a // 10 + b // 10 + c}; so {a}+{b}={a + b}.")
        docs.append(" ".join(sents))
    return docs


def corpus_tokenizer(docs: Sequence[str], vocab_size: int, cfg: RPTConfig):
    """A byte-level BPE trained on the documents (multi-character tokens exist), with the template's delimiters added
    as whole tokens (kept when decoding, unlike special tokens) so the tiny policy emits them in one step."""
    from sherman.core.tokenizer import train_bpe

    tok = train_bpe(docs, vocab_size)
    delims = [cfg.answer_open, cfg.answer_close] + ([cfg.think_open, cfg.think_close] if cfg.think_tokens else [])
    tok.tok.add_tokens(list(dict.fromkeys(delims)))
    return tok


def tokenize_corpus(docs: Sequence[str], tok, max_tokens: int) -> list[list[int]]:
    """Token ids per document (no bos), cut to max_tokens; documents with fewer than 2 tokens are dropped."""
    out = [tok.encode(d)[:max_tokens] for d in docs]
    return [x for x in out if len(x) >= 2]


# ----------------------------------------------------------------------------------------- proxy entropy


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy (nats) of softmax over the top-k logits, renormalised: (..., V) -> (...)."""
    top = logits.float().topk(min(k, logits.shape[-1]), dim=-1).values  # (..., k)
    logp = torch.log_softmax(top, -1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def proxy_entropies(proxy, docs: Sequence[Sequence[int]], bos_id: int, k: int = 16) -> list[torch.Tensor]:
    """Per document, the proxy's top-k entropy of the distribution predicting each token t from bos + doc[:t]: one
    forward per document (documents longer than the proxy's window are scored in windows). -> [(n_d,)]."""
    proxy.eval()
    win = proxy.cfg.max_seq_len
    out = []
    for d in docs:
        ids = [bos_id] + list(d)
        ent = torch.empty(len(d))
        start = 0
        while start < len(d):  # window [start - ctx, start + step): positions start.. get >= half a window of context
            lo = max(0, start - win // 2) if start else 0
            hi = min(len(ids) - 1, lo + win)
            x = torch.tensor([ids[lo:hi]], device=proxy.device)  # (1, w)
            logits = proxy(x).logits[0]  # (w, V): row j predicts ids[lo + j + 1] = d[lo + j]
            h = topk_entropy(logits, k).cpu()
            ent[start:hi] = h[start - lo : hi - lo]
            start = hi
        out.append(ent)
    return out


def _digest(proxy, docs: Sequence[Sequence[int]], k: int) -> str:
    h = hashlib.sha256()
    for name, t in sorted(proxy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    for d in docs:
        h.update(torch.tensor(list(d), dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    h.update(f"k={k}".encode())
    return h.hexdigest()[:20]


def cached_entropies(proxy, docs: Sequence[Sequence[int]], bos_id: int, k: int, cache_dir: str | Path | None) -> list[torch.Tensor]:
    """`proxy_entropies`, read from / written to `cache_dir/entropy_<hash>.safetensors` (hash of proxy weights + corpus ids
    + k; JSON metadata in the file header). Written atomically."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return proxy_entropies(proxy, docs, bos_id, k)
    key = _digest(proxy, docs, k)
    path = Path(cache_dir) / f"entropy_{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return [t[f"doc_{i}"] for i in range(len(docs))]
    ents = proxy_entropies(proxy, docs, bos_id, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {"key": key, "top_k": str(k), "n_docs": str(len(docs)), "n_positions": str(sum(len(e) for e in ents))}
    save_file({f"doc_{i}": e.contiguous() for i, e in enumerate(ents)}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return ents


def check_vocab(proxy, policy, tok) -> None:
    """The proxy scores the policy's tokens: same vocabulary size, and the tokenizer fits in it."""
    if proxy.cfg.vocab_size != policy.cfg.vocab_size:
        raise ShermanError(f"proxy vocabulary ({proxy.cfg.vocab_size}) differs from the policy's ({policy.cfg.vocab_size}); use a proxy with the policy's tokenizer")
    if tok.vocab_size > policy.cfg.vocab_size:
        raise ShermanError(f"tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {policy.cfg.vocab_size}")


# ----------------------------------------------------------------------------------------- positions


def entropy_threshold(ents: Sequence[torch.Tensor], cfg: RPTConfig) -> float:
    """The selection threshold: cfg.threshold, else the cfg.quantile of all entropies at eligible positions."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    if cfg.quantile is None:
        return -math.inf
    flat = torch.cat([e[cfg.min_context :] for e in ents]) if ents else torch.empty(0)
    if flat.numel() == 0:
        raise ShermanError(f"no position has at least min_context = {cfg.min_context} tokens of context")
    return float(torch.quantile(flat.float(), cfg.quantile))


def select_positions(ents: Sequence[torch.Tensor], cfg: RPTConfig, docs: Sequence[int] | None = None) -> list[tuple[int, int, float]]:
    """(document, position t, entropy) with at least min_context tokens of context and entropy >= the threshold
    (restricted to document indices `docs` if given). One-line error when nothing is selected."""
    thr = entropy_threshold(ents if docs is None else [ents[i] for i in docs], cfg)
    out = []
    for d in range(len(ents)) if docs is None else docs:
        e = ents[d]
        for t in range(cfg.min_context, len(e)):
            if float(e[t]) >= thr:
                out.append((d, t, float(e[t])))
    if not out:
        raise ShermanError(f"entropy threshold {thr:.4g} selects no position (max entropy {max(float(e.max()) for e in ents):.4g}); lower --threshold/--quantile")
    return out


def split_of(entropy: float, edges: Sequence[float]) -> str | None:
    """easy [e0, e1), medium [e1, e2), hard [e2, inf); None below e0."""
    if entropy >= edges[2]:
        return "hard"
    if entropy >= edges[1]:
        return "medium"
    if entropy >= edges[0]:
        return "easy"
    return None


# ----------------------------------------------------------------------------------------- the task


def prompt_tokens(tok, doc: Sequence[int], t: int, cfg: RPTConfig) -> list[int]:
    """bos + template around the last context_tokens tokens of doc[:t] + the opening delimiter (token-exact context)."""
    pre, post = cfg.template.split("{context}", 1)
    opener = cfg.think_open if cfg.think_tokens else cfg.answer_open
    ctx = list(doc[max(0, t - cfg.context_tokens) : t])
    return [tok.bos_id] + (tok.encode(pre) if pre else []) + ctx + tok.encode(post + opener)


def position_example(tok, doc: Sequence[int], t: int, entropy: float, cfg: RPTConfig, tb=None) -> Example:
    """An `Example` for position t of a document: prompt ids, gt bytes and token boundaries in meta."""
    tb = tb or token_bytes_fn(tok)
    gt_ids = list(doc[t : t + cfg.gt_tokens])
    pieces = [tb(i) for i in gt_ids]
    gt = b"".join(pieces)
    ids = prompt_tokens(tok, doc, t, cfg)
    meta = {"prompt_ids": ids, "gt": gt, "bounds": boundaries(pieces), "next_id": gt_ids[0], "entropy": entropy, "t": t}
    return Example(prompt=tok.decode(ids), answer=gt.decode("utf-8", errors="replace"), meta=meta)


@dataclass
class RPTTask:
    """Next-token reasoning on selected corpus positions, on the shared task interface (`rl_train` runs it)."""

    tok: Any
    """The policy's tokenizer."""
    docs: list[list[int]]
    """Tokenized documents."""
    positions: list[tuple[int, int, float]]
    """Selected (document, position, proxy entropy)."""
    cfg: RPTConfig = field(default_factory=RPTConfig)
    """Template, delimiters and reward."""
    name: str = "rpt"
    """Task name."""
    malformed: Counter = field(default_factory=Counter)
    """Completions scored so far, by extraction status ('ok' or why malformed)."""
    prompt_tokens_seen: int = 0
    """Prompt tokens of every sampled example (compute accounting)."""

    def __post_init__(self) -> None:
        if not self.positions:
            raise ShermanError("RPTTask needs at least one position")
        self._tb = token_bytes_fn(self.tok)

    def example(self, i: int) -> Example:
        d, t, e = self.positions[i]
        return position_example(self.tok, self.docs[d], t, e, self.cfg, self._tb)

    def sample(self, rng: random.Random) -> Example:
        ex = self.example(rng.randrange(len(self.positions)))
        self.prompt_tokens_seen += len(ex.meta["prompt_ids"])
        return ex

    def reward(self, ex: Example, completion: str) -> float:
        pred, status = extract_prediction(completion, self.cfg)
        self.malformed[status] += 1
        if pred is None:
            return 0.0
        return REWARD_FNS[self.cfg.reward](pred.encode("utf-8"), ex.meta["gt"], ex.meta["bounds"])

    def trace(self, ex: Example, rng: random.Random | None = None) -> str:
        """A well-formed completion predicting the true next token (format warm start)."""
        nxt = ex.meta["gt"][: ex.meta["bounds"][0]].decode("utf-8", errors="replace")
        think = f"{self.cfg.think_close}{self.cfg.answer_open}" if self.cfg.think_tokens else ""
        return f"{think}{nxt}{self.cfg.answer_close}"

    def alphabet(self) -> str:
        raise ShermanError("RPTTask uses the corpus' BPE tokenizer, not a character alphabet")

    def malformed_frac(self) -> float:
        n = sum(self.malformed.values())
        return 1.0 - self.malformed["ok"] / n if n else 0.0


def format_sft_data(task: RPTTask, indices: Sequence[int]) -> list:
    """SeqExamples teaching the output format: prompt ids (masked) + the well-formed completion of the true next
    token + eos, for the given positions (never evaluation positions)."""
    from sherman.core.train import SeqExample

    out = []
    for i in indices:
        ex = task.example(i)
        p = ex.meta["prompt_ids"]
        think = task.tok.encode(task.cfg.think_close + task.cfg.answer_open) if task.cfg.think_tokens else []
        c = think + [ex.meta["next_id"]] + task.tok.encode(task.cfg.answer_close) + [task.tok.eos_id]
        out.append(SeqExample(ids=p + c, mask=[0] * len(p) + [1] * len(c)))
    return out


def format_span_data(task: RPTTask, docs: Sequence[Sequence[int]], n_spans: int, rng: random.Random, weight: float = 1.0) -> list:
    """SeqExamples of next-token prediction on whole documents with `n_spans` next-token-reasoning spans spliced in:
    before a random token x_t (t >= min_context) the sequence holds the prompt's opener, then the well-formed
    completion predicting x_t (`format_sft_data`'s completion without eos), then the document goes on from x_t.

    Targets: every document token (plain NTP) and each span's completion (the true next token after the opener, then
    the closer); not the opener (the prompt gives it) nor the copy of x_t right after the closer. So the format is
    learnt where the next-token knowledge is learnt, with n_spans format targets per document instead of one per
    sequence. `weight` scales the span targets' loss-mask entries (the core loop's mask is a per-target weight and its
    loss the weighted mean), so the few reasoning targets are not drowned by the document's many NTP targets. Only for
    the bare template ('{context}'), whose prompts are bos + context + opener, token-exact."""
    from sherman.core.train import SeqExample

    if task.cfg.template != "{context}":
        raise ShermanError("rpt: format spans need the bare template '{context}'")
    cfg, tok = task.cfg, task.tok
    opener = tok.encode(cfg.think_open if cfg.think_tokens else cfg.answer_open)
    think = tok.encode(cfg.think_close + cfg.answer_open) if cfg.think_tokens else []
    closer = tok.encode(cfg.answer_close)
    out = []
    for d in docs:
        d = list(d)
        cand = range(cfg.min_context, len(d))
        at = set(rng.sample(cand, min(n_spans, len(cand))))
        ids, mask = [tok.bos_id], [0]
        for t, x in enumerate(d):
            if t in at:
                span = think + [x] + closer
                ids += opener + span
                mask += [0] * len(opener) + [weight] * len(span)
                ids.append(x)
                mask.append(0)  # the copy of x_t after the closer: the document resumes
            else:
                ids.append(x)
                mask.append(1)
        out.append(SeqExample(ids=ids, mask=mask))
    return out


# ----------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def ntp_accuracy(model, tok, docs: Sequence[Sequence[int]], positions: Sequence[tuple[int, int, float]], cfg: RPTConfig) -> dict[str, float]:
    """Standard next-token accuracy (greedy argmax == the true next token) per entropy split, one forward per
    document over its positions (context = the same last context_tokens tokens the policy sees)."""
    model.eval()
    hits: dict[str, list[int]] = {s: [] for s in SPLITS}
    by_doc: dict[int, list[tuple[int, float]]] = {}
    for d, t, e in positions:
        by_doc.setdefault(d, []).append((t, e))
    for d, pts in by_doc.items():
        doc = docs[d]
        whole = None
        if len(doc) <= cfg.context_tokens:  # every position sees its whole prefix: one forward for the document
            whole = model(torch.tensor([[tok.bos_id] + list(doc[:-1])], device=model.device)).logits[0]  # (n, V): row t predicts doc[t]
        for t, e in pts:
            s = split_of(e, cfg.split_edges)
            if s is None:
                continue
            if whole is not None:
                logits = whole[t]
            else:
                ctx = [tok.bos_id] + list(doc[max(0, t - cfg.context_tokens) : t])
                logits = model(torch.tensor([ctx], device=model.device)).logits[0, -1]
            hits[s].append(int(int(logits.argmax()) == doc[t]))
    return _split_summary(hits, "ntp")


@torch.no_grad()
def reasoning_accuracy(model, task: RPTTask, indices: Sequence[int], temperature: float = 0.0, seed: int = 0, batch: int = 128) -> dict[str, float]:
    """Next-token reasoning accuracy (prefix reward = 1 with greedy decoding by default) per entropy split, and the
    malformed fraction."""
    model.eval()
    gen = torch.Generator(device=model.device).manual_seed(seed)
    params = SamplingParams(max_new_tokens=task.cfg.max_new_tokens, temperature=temperature, stop_token_ids=list(getattr(task.tok, "eos_ids", None) or [task.tok.eos_id]))
    hits: dict[str, list[int]] = {s: [] for s in SPLITS}
    bad = 0
    for s0 in range(0, len(indices), batch):
        exs = [task.example(i) for i in indices[s0 : s0 + batch]]
        out = generate(model, [ex.meta["prompt_ids"] for ex in exs], params, generator=gen, pad_id=task.tok.pad_id)
        for ex, toks in zip(exs, out.tokens):
            pred, status = extract_prediction(task.tok.decode(toks), task.cfg)
            bad += status != "ok"
            r = prefix_reward(pred.encode("utf-8"), ex.meta["gt"], ex.meta["bounds"]) if pred is not None else 0.0
            s = split_of(ex.meta["entropy"], task.cfg.split_edges)
            if s is not None:
                hits[s].append(int(r >= 1.0))
    res = _split_summary(hits, "reason")
    res["reason/malformed"] = bad / max(1, len(indices))
    return res


def _split_summary(hits: dict[str, list[int]], prefix: str) -> dict[str, float]:
    res = {f"{prefix}/{s}": (sum(v) / len(v) if v else float("nan")) for s, v in hits.items()}
    allv = [x for v in hits.values() for x in v]
    res[f"{prefix}/all"] = sum(allv) / len(allv) if allv else float("nan")
    res[f"{prefix}/n"] = float(len(allv))
    return res


def quantile_edges(ents: Sequence[float], qs: Sequence[float] = (0.0, 1 / 3, 2 / 3)) -> tuple[float, float, float]:
    """Split edges at quantiles of the given entropies (for tiny proxies, whose entropies sit far from the paper's nats)."""
    x = torch.tensor(list(ents), dtype=torch.float64)
    return tuple(float(torch.quantile(x, q)) for q in qs)  # type: ignore[return-value]


def save_json(path: Path, obj: Any) -> None:
    """Atomic JSON write."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- pipeline pieces


def lm_data(docs: Sequence[Sequence[int]], bos_id: int, positions: Sequence[tuple[int, int, float]] | None = None) -> list:
    """Next-token-prediction SeqExamples of whole documents (bos + doc; every token a target), or, with `positions`,
    of the same documents with only the selected positions as targets (NTP on the RPT positions)."""
    from sherman.core.train import SeqExample

    if positions is None:
        return [SeqExample(ids=[bos_id] + list(d)) for d in docs]
    by_doc: dict[int, set[int]] = {}
    for d, t, _ in positions:
        by_doc.setdefault(d, set()).add(t)
    return [SeqExample(ids=[bos_id] + list(docs[d]), mask=[0] + [int(t in ts) for t in range(len(docs[d]))]) for d, ts in sorted(by_doc.items())]


def ntp_train(model, data: list, steps: int, batch_size: int, lr: float, seed: int, pad_id: int, warmup: int = 10,
              run_dir: str | Path | None = None, ckpt_every: int = 0, callback=None) -> list[dict]:
    """The core LM/SFT loop (`sherman.core.train.train`) on SeqExamples; constant learning rate after warmup. With
    `run_dir`: checkpointed every `ckpt_every` steps (and at the end, one kept) and resumed from the newest checkpoint
    there, ending with the unbroken run's weights; the returned history then holds only the steps this call ran.
    `callback(step, row)` after every step."""
    from sherman.core.resumable import train_resumable
    from sherman.core.train import TrainConfig, train

    if steps <= 0:
        return []
    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(warmup, steps), schedule="constant", seed=seed)
    if run_dir is not None:
        return train_resumable(model, data, tc, run_dir, ckpt_every, callback=callback, pad_id=pad_id).history
    return train(model, data, tc, pad_id=pad_id, callback=callback).history


def n_params(model) -> int:
    """Parameters that cost FLOPs per token (the N of the 2N / 6N rule): all but the input embedding table (with tied
    embeddings the table is the output head and counts)."""
    tied = getattr(model.cfg, "tie_embeddings", False)
    return sum(p.numel() for p in model.parameters()) - (0 if tied else model.cfg.vocab_size * model.cfg.dim)


def rpt_step_cost(n: int, prompt_tokens: int, completion_tokens: int) -> tuple[float, int]:
    """(FLOPs, tokens processed) of one RPT iteration: rollout forward (2N per prompt token prefilled once per group +
    per generated token) and the training pass (6N per prompt token, run once per group, + per completion token)."""
    toks = prompt_tokens + completion_tokens
    return 2.0 * n * toks + 6.0 * n * toks, 2 * toks


def ntp_step_cost(n: int, tokens: int) -> tuple[float, int]:
    """(FLOPs, tokens processed) of one NTP step over `tokens` tokens (forward + backward: 6N per token)."""
    return 6.0 * n * tokens, tokens

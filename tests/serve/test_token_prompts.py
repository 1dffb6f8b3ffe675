"""`sherman serve` accepts token-id prompts (a list of ints, or a list of such lists), as vLLM and the OpenAI API do."""

import httpx
import pytest
import torch

from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve.app import APIError, ServeConfig, ServerThread, create_app, token_prompts


@pytest.fixture(scope="module")
def server():
    tok = CharTokenizer("0123456789+-*=;#abc ")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64)).eval()
    with ServerThread(create_app(model, tok, ServeConfig(model_name="tiny"))) as s:
        s.model, s.tok = model, tok
        yield s


def greedy_text(server, ids, n):
    out = generate(server.model, [ids], SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=[server.tok.eos_id]))
    return server.tok.decode([t for t in out.tokens[0] if t != server.tok.eos_id])


def test_token_id_prompts_equal_their_text(server):
    ids = server.tok.encode("12+3=", bos=True)
    body = {"model": "tiny", "max_tokens": 12, "temperature": 0}
    as_text = httpx.post(server.url + "/v1/completions", json={**body, "prompt": "12+3="}, timeout=60).json()
    as_ids = httpx.post(server.url + "/v1/completions", json={**body, "prompt": ids}, timeout=60).json()
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"] == greedy_text(server, ids, 12)
    assert as_ids["usage"]["prompt_tokens"] == len(ids)
    # a list of id lists: one choice each; ids are used as given (no BOS added)
    two = [ids, server.tok.encode("7*8=")]
    j = httpx.post(server.url + "/v1/completions", json={**body, "prompt": two}, timeout=60).json()
    assert [c["text"] for c in j["choices"]] == [greedy_text(server, p, 12) for p in two]


@pytest.mark.parametrize("prompt, message", [
    ([], "'prompt' must be"), ([[]], "must not be empty"), ([1, 99999], "out of range"), ([1, -1], "out of range"),
    ([[1, 2], "x"], "'prompt' must be"), ([1, True], "'prompt' must be"),
])
def test_bad_token_prompts_are_400(server, prompt, message):
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_token_prompts_pure():
    assert token_prompts("text", 10) is None and token_prompts(["a", "b"], 10) is None
    assert token_prompts([1, 2], 10) == [[1, 2]] and token_prompts([[1], [2, 3]], 10) == [[1], [2, 3]]
    with pytest.raises(APIError, match="out of range"):
        token_prompts([[1], [10]], 10)

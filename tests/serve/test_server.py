"""`sherman serve` on loopback with a tiny checkpoint: OpenAI shapes, auth, 4xx paths, batching, AsyncThink through it."""

import asyncio
import json

import httpx
import pytest
import torch

from sherman.core.checkpoint import save_checkpoint
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve.app import ServeConfig, ServerThread, create_app, load_for_serving
from sherman.think.backends import OpenAIBackend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.train import SPECIALS

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    tok = CharTokenizer("0123456789+-*=;#abc ", specials=SPECIALS)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64))
    save_checkpoint(d, model)
    tok.save(d)
    model, tok = load_for_serving(str(d))
    app = create_app(model, tok, ServeConfig(api_key=KEY, model_name="tiny", max_tokens_limit=512))
    with ServerThread(app) as s:
        s.model, s.tok, s.app = model, tok, app
        yield s


def post(server, path, body, headers=AUTH, raw=None):
    return httpx.post(server.url + path, json=body if raw is None else None, content=raw, headers=headers, timeout=60)


def test_health_and_models(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.get(server.url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny", "tiny-asyncthink"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_401_without_the_key(server, headers):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "1+1="}, headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and set(err) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "body,status,param",
    [
        (None, 400, None),  # not JSON
        ([1, 2], 400, None),
        ({"prompt": "1"}, 400, "model"),
        ({"model": "gpt-9", "prompt": "1"}, 404, "model"),
        ({"model": "tiny"}, 400, "prompt"),
        ({"model": "tiny", "prompt": 5}, 400, "prompt"),
        ({"model": "tiny", "prompt": "1", "max_tokens": -1}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "1", "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "1", "temperature": "hot"}, 400, "temperature"),
        ({"model": "tiny", "prompt": "1", "top_p": 0}, 400, "top_p"),
        ({"model": "tiny", "prompt": "1", "n": 0}, 400, "n"),
        ({"model": "tiny", "prompt": "1", "stop": [1]}, 400, "stop"),
        ({"model": "tiny", "prompt": "ZZZ"}, 400, "prompt"),  # not in the alphabet
        ({"model": "tiny", "prompt": "1", "stream": "yes"}, 400, "stream"),
        ({"model": "tiny", "prompt": ["1"] * 65}, 400, "prompt"),  # more choices than max_batch
    ],
)
def test_completions_4xx_openai_error_shape(server, body, status, param):
    r = post(server, "/v1/completions", body, raw=b"{not json" if body is None else None)
    assert r.status_code == status
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["type"] and err["param"] == param


@pytest.mark.parametrize(
    "body",
    [{"model": "tiny"}, {"model": "tiny", "messages": []}, {"model": "tiny", "messages": [{"role": "wizard", "content": "1"}]},
     {"model": "tiny", "messages": [{"role": "user", "content": 3}]}],
)
def test_chat_4xx(server, body):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_unknown_route_404_error_shape(server):
    r = httpx.get(server.url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json()


def expected_greedy(server, prompt, n):
    ids = server.tok.encode(prompt, bos=True)
    out = generate(server.model, [ids], SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=[server.tok.eos_id]))
    toks = [t for t in out.tokens[0] if t != server.tok.eos_id]
    return server.tok.decode(toks)  # the server skips special tokens by default


def test_completion_greedy_matches_core_generate_and_streaming_matches(server):
    body = {"model": "tiny", "prompt": "12+3=", "max_tokens": 20, "temperature": 0}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200
    j = r.json()
    text = j["choices"][0]["text"]
    assert text == expected_greedy(server, "12+3=", 20)
    assert j["object"] == "text_completion" and j["usage"]["prompt_tokens"] == 6
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH, timeout=60) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[5:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_string_cuts_and_reports_stop(server):
    full = expected_greedy(server, "7*8=", 20)
    stop = full[5:7]
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "7*8=", "max_tokens": 20, "temperature": 0, "stop": stop})
    c = r.json()["choices"][0]
    assert c["text"] == full[: full.find(stop)] and c["finish_reason"] == "stop"


def test_chat_nonstream_and_stream(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "1+2="}], "max_tokens": 8, "temperature": 0}
    j = post(server, "/v1/chat/completions", body).json()
    content = j["choices"][0]["message"]["content"]
    assert content == expected_greedy(server, "1+2=", 8) and j["object"] == "chat.completion"
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH, timeout=60) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    chunks = [json.loads(ln[5:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content


def test_concurrent_requests_are_batched(server):
    eng = server.app.state.engine
    before = dict(eng.batcher.stats)

    async def main():
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as c:
            rs = await asyncio.gather(*[c.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": f"{i}+{i}=", "max_tokens": 16,
                                                                                   "temperature": 0.8}) for i in range(8)])
        return rs

    rs = asyncio.run(main())
    assert all(r.status_code == 200 for r in rs)
    steps = eng.batcher.stats["steps"] - before["steps"]
    rows = eng.batcher.stats["rows"] - before["rows"]
    assert rows > steps  # more than one sequence per forward pass on average


def test_asyncthink_engine_against_the_server(server):
    async def main():
        b = OpenAIBackend(server.url, "tiny", api_key=KEY, temperature=1.0)
        try:
            eng = AsyncThinkEngine(b, ThinkConfig(capacity=3, max_org_tokens=30, max_worker_tokens=10))
            return await asyncio.gather(*[eng.run("1+2;3*4=") for _ in range(4)])
        finally:
            await b.aclose()

    for r in asyncio.run(main()):
        assert 0 < r.org_tokens <= 30 and r.org_tokens <= r.latency <= r.total_tokens
        assert all(w.tokens <= 10 for w in r.workers.values())


def test_asyncthink_model_through_chat(server):
    body = {"model": "tiny-asyncthink", "messages": [{"role": "user", "content": "1+2="}], "temperature": 1.0}
    j = post(server, "/v1/chat/completions", body).json()
    assert j["model"] == "tiny-asyncthink" and "latency" in j["asyncthink"] and isinstance(j["choices"][0]["message"]["content"], str)


def test_think_cli_against_the_server(server, capsys):
    from sherman.cli import main

    code = main(["think", "1+2=", "--backend", server.url, "--api-key", KEY, "--max-org-tokens", "10", "--max-worker-tokens", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and out["org_tokens"] <= 10 and out["latency"] >= out["org_tokens"]


def test_resuming_with_a_byte_identical_prefix_hits_the_prefix_cache(server):
    """The OpenAI backend resumes after a join with prompt + seen text + inserted text; the server reuses the KV cache
    even though it had decoded ahead of the client that broke off."""
    stats = server.app.state.engine.batcher.stats

    async def main():
        b = OpenAIBackend(server.url, "tiny", api_key=KEY, temperature=0.0)
        try:
            prompt, seen = "12+34;5*6=<ORG>", ""
            async for piece in b.stream(prompt, 40):
                seen += piece.text
                if len(seen) >= 3:
                    break
            await asyncio.sleep(0.3)  # let the server notice the disconnect and park the sequence
            before = stats["reused_tokens"]
            out = [p.text async for p in b.stream(prompt + seen + "7", 3)]
            return before, out, seen
        finally:
            await b.aclose()

    before, out, seen = asyncio.run(main())
    n_prefix = len(server.tok.encode("12+34;5*6=<ORG>" + seen, bos=True))
    assert stats["reused_tokens"] - before == n_prefix
    assert "".join(out) == expected_greedy(server, "12+34;5*6=<ORG>" + seen + "7", 3)


def test_several_prompts_and_n_choices(server):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": ["1+1=", "2+2="], "n": 2, "max_tokens": 3, "temperature": 0})
    ch = r.json()["choices"]
    assert r.status_code == 200 and [c["index"] for c in ch] == [0, 1, 2, 3]
    assert ch[0]["text"] == ch[1]["text"] == expected_greedy(server, "1+1=", 3) and ch[2]["text"] == expected_greedy(server, "2+2=", 3)
    r0 = post(server, "/v1/completions", {"model": "tiny", "prompt": "1", "max_tokens": 0})
    assert r0.json()["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}

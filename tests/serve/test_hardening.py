"""The server's limits and failure paths (issue 13): context window, body cap, malformed JSON, errors mid-stream,
Connection: close after a 500, AsyncThink only when the tokenizer has the protocol, special tokens skipped,
constant-time key check, tokenization off the event loop."""

import json
import threading

import httpx
import pytest
import torch

from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve import app as app_mod
from sherman.serve.app import ServeConfig, ServerThread, create_app
from sherman.think.train import SPECIALS

KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
WINDOW = 64


def make(specials=SPECIALS, **cfg):
    tok = CharTokenizer("0123456789+-*=;#abc ", specials=specials)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=WINDOW))
    return model, tok, create_app(model, tok, ServeConfig(api_key=KEY, model_name="tiny", **cfg))


@pytest.fixture(scope="module")
def server():
    model, tok, app = make(max_body_bytes=20_000)
    with ServerThread(app) as s:
        s.tok, s.app, s.eng = tok, app, app.state.engine
        yield s


def post(server, path, body=None, raw=None, **kw):
    return httpx.post(server.url + path, json=body if raw is None else None, content=raw, headers=AUTH, timeout=60, **kw)


def sse_events(server, path, body):
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        return [ln[len("data: ") :] for ln in r.iter_lines() if ln.startswith("data: ")]


def test_context_window_is_enforced_before_any_work(server):
    stats = server.eng.batcher.stats
    before = dict(stats)
    cases = [
        ("/v1/completions", {"prompt": "1" * 100}, "prompt"),  # longer than the window by itself
        ("/v1/completions", {"prompt": "1" * 50, "max_tokens": 20}, "prompt"),  # 51 + 20 > 64
        ("/v1/completions", {"prompt": ["1", "2" * 70]}, "prompt"),  # any prompt of a list
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1" * 60}], "max_tokens": 10}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1" * 60}], "max_tokens": 10, "stream": True}, "messages"),
        ("/v1/chat/completions", {"model": "tiny-asyncthink", "messages": [{"role": "user", "content": "1" * 60}]}, "messages"),
    ]
    for path, body, param in cases:
        r = post(server, path, {"model": "tiny", **body})
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == param and f"maximum context length is {WINDOW}" in err["message"]
    assert stats["steps"] == before["steps"] and stats["prefill_tokens"] == before["prefill_tokens"]  # nothing decoded
    # exactly at the window: accepted; without max_tokens the default is cut to the room left
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "1" * 50, "max_tokens": 13, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 51
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "1" * 60, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= WINDOW - 61


@pytest.mark.parametrize(
    "raw,status",
    [
        (b'{"model": "tiny", "prompt": "1", "max_tokens": ' + b"9" * 5000 + b"}", 400),  # > 4300 digits: Python refuses it
        (b"[" * 100_000 + b"]" * 100_000, 413),  # over the 20 kB cap of this server
        (b"[" * 9_000 + b"]" * 9_000, 400),  # under the cap, deeper than the recursion limit
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),  # not UTF-8
        (b'{"model": "tiny", "prompt": "1", "temperature": NaN}', 400),
        (b'{"model": "tiny", "prompt": "1", "n": ' + b"9" * 4000 + b"}", 400),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', 404),  # (completions route)
        (b'{"model": "tiny", "prompt": "1", "skip_special_tokens": "no"}', 400),
        (b"x" * 30_000, 413),
    ],
)
def test_malformed_bodies_are_4xx(server, raw, status):
    r = post(server, "/v1/completions" if status != 404 else "/v1/nothing", raw=raw)
    assert r.status_code == status, r.text[:300]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_content_parts_with_non_string_text_is_400(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    assert post(server, "/v1/chat/completions", body).status_code == 400


def test_body_cap_without_content_length(server):
    def chunks():
        for _ in range(30):
            yield b" " * 1000

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers=AUTH, timeout=60)  # chunked transfer
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_error_mid_stream_sends_error_event_then_done(server, monkeypatch):
    dec = server.eng.batcher.decoder
    real, calls = dec.step, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("device lost")
        return real(*a, **k)

    monkeypatch.setattr(dec, "step", flaky)
    for path, body in [("/v1/completions", {"prompt": "1+1="}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1"}]})]:
        calls.clear()
        ev = sse_events(server, path, {"model": "tiny", "max_tokens": 20, **body})
        assert ev[-1] == "[DONE]"
        err = json.loads(ev[-2])["error"]
        assert err["type"] == "server_error" and "device lost" in err["message"]
        assert all("choices" in json.loads(e) for e in ev[:-2])  # the tokens before the failure came through


def test_500_closes_the_connection_and_the_pool_recovers(server, monkeypatch):
    async def broken(*a, **k):
        raise RuntimeError("boom")

    with httpx.Client(headers=AUTH, timeout=60) as client:
        ok = {"model": "tiny", "prompt": "1", "max_tokens": 2}
        assert client.post(server.url + "/v1/completions", json=ok).status_code == 200
        monkeypatch.setattr(server.eng, "encode_all", broken)
        r = client.post(server.url + "/v1/completions", json=ok)
        assert r.status_code == 500 and r.headers["connection"] == "close" and r.json()["error"]["type"] == "server_error"
        monkeypatch.undo()
        for _ in range(5):  # the next requests on the same client (pool) succeed
            assert client.post(server.url + "/v1/completions", json=ok).status_code == 200


def test_asyncthink_offered_only_with_protocol_tokens():
    _, _, app = make(specials=("<pad>", "<bos>", "<eos>"))
    with ServerThread(app) as s:
        ids = [m["id"] for m in httpx.get(s.url + "/v1/models", headers=AUTH).json()["data"]]
        assert ids == ["tiny"]
        body = {"model": "tiny-asyncthink", "messages": [{"role": "user", "content": "1+2="}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    _, _, app = make()
    assert app_mod.asyncthink_available(app.state.engine.tok)


def test_special_tokens_are_skipped_unless_asked(server, monkeypatch):
    tok = server.tok
    seq = [tok.bos_id, tok.encode("1")[0], tok.pad_id, tok.token_id("<FORK-1>"), tok.encode("2")[0], tok.eos_id]

    async def fake_stream(ids, params=None, max_tokens=None):
        for t in seq:
            yield t, 0.0

    monkeypatch.setattr(server.eng.batcher, "stream", fake_stream)
    body = {"model": "tiny", "prompt": "1", "max_tokens": 10}
    assert post(server, "/v1/completions", body).json()["choices"][0]["text"] == "12"
    assert post(server, "/v1/completions", {**body, "skip_special_tokens": False}).json()["choices"][0]["text"] == "<bos>1<pad><FORK-1>2"
    ev = sse_events(server, "/v1/completions", body)
    assert "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]) == "12"


def test_api_key_compared_in_constant_time(server, monkeypatch):
    calls = []
    real = app_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_mod.hmac, "compare_digest", spy)
    body = {"model": "tiny", "prompt": "1", "max_tokens": 1}
    assert post(server, "/v1/completions", body).status_code == 200
    for bad in ["Bearer sk-hardeninG", "Bearer x", "Bearer sk-hardening-and-more", "Bearer \u00e9"]:
        r = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": bad.encode("utf-8")}, timeout=60)
        assert r.status_code == 401
    assert len(calls) == 5 and all(b == f"Bearer {KEY}".encode() for _, b in calls)


def test_tokenization_runs_off_the_event_loop(server, monkeypatch):
    seen = []
    real = server.tok.encode

    def spy(text, *a, **k):
        seen.append(threading.get_ident())
        return real(text, *a, **k)

    monkeypatch.setattr(server.tok, "encode", spy)
    assert post(server, "/v1/completions", {"model": "tiny", "prompt": "1+2=", "max_tokens": 1}).status_code == 200
    assert seen and server.thread.ident not in seen[:1]  # the prompt was encoded in a worker thread, not the loop's

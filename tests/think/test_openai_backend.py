"""OpenAIBackend against fake OpenAI-compatible servers on loopback: it asks to keep special tokens, counts tokens from
the server's logprobs or usage (not text chunks), and falls back when a server rejects the extra fields."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sherman.serve.app import ServerThread
from sherman.think.backends import OpenAIBackend, chunk_pieces

TOKENS = ["4", "<FORK-1>", "x", "<JOIN-1>", "é"]  # what the fake model generates; tags are special tokens
SPECIAL = {"<FORK-1>", "<JOIN-1>"}


def fake_server(strict: bool, seen: list[dict]):
    """strict=True: rejects any field it does not know (as api.openai.com does) and reports usage only.
    strict=False: a vLLM-like server that strips special tokens unless skip_special_tokens is false."""
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = json.loads(await request.body())
        seen.append(body)
        known = {"model", "prompt", "max_tokens", "stream", "temperature", "top_p", "stream_options"}
        extra = sorted(set(body) - known) if strict else []
        if extra:
            return JSONResponse({"error": {"message": f"Unrecognized request argument supplied: {extra[0]}", "type": "invalid_request_error"}},
                                status_code=400)
        keep = body.get("skip_special_tokens", True) is False
        toks = TOKENS[: body["max_tokens"]]

        def sse():
            for i, t in enumerate(toks):
                text = t if (keep or t not in SPECIAL) else ""  # a stripped special token: an empty chunk
                choice = {"index": 0, "text": text, "finish_reason": None}
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {"tokens": [text], "token_logprobs": [-0.5 - i], "top_logprobs": None, "text_offset": [0]}
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 3, 'completion_tokens': len(toks), 'total_tokens': 3 + len(toks)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


async def collect(b: OpenAIBackend, max_tokens: int = 10):
    try:
        return [p async for p in b.stream("q", max_tokens)]
    finally:
        await b.aclose()


def test_vllm_like_server_keeps_special_tokens_and_counts_every_token():
    seen: list[dict] = []
    with ServerThread(fake_server(strict=False, seen=seen)) as s:
        pieces = asyncio.run(collect(OpenAIBackend(s.url, "m")))
    assert seen[0]["skip_special_tokens"] is False and seen[0]["logprobs"] == 0
    assert [p.text for p in pieces] == TOKENS  # the tags survive, one piece per token
    assert [p.logp for p in pieces] == [-0.5, -1.5, -2.5, -3.5, -4.5]


def test_strict_server_rejecting_the_fields_falls_back_and_counts_from_usage():
    seen: list[dict] = []
    with ServerThread(fake_server(strict=True, seen=seen)) as s:
        b = OpenAIBackend(s.url, "m")
        pieces = asyncio.run(collect(b))
    # first request rejected for logprobs, second for skip_special_tokens, third accepted (stream_options is known)
    assert [sorted(set(x) - {"model", "prompt", "max_tokens", "stream", "temperature", "top_p"}) for x in seen] == [
        ["logprobs", "skip_special_tokens", "stream_options"], ["skip_special_tokens", "stream_options"], ["stream_options"]]
    assert "".join(p.text for p in pieces) == "4xé"  # this server strips special tokens: nothing to do about that
    assert len(pieces) == len(TOKENS)  # 3 text chunks + 2 empty ones, counted from usage (not 3)
    assert b.optional == {"stream_options": {"include_usage": True}}


def test_chunk_pieces():
    assert chunk_pieces({"text": "ab"}) == chunk_pieces({"text": "ab", "logprobs": None})
    assert [p.text for p in chunk_pieces({"text": "ab"})] == ["ab"] and chunk_pieces({"text": ""}) == []
    two = chunk_pieces({"text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]}})
    assert [(p.text, p.logp) for p in two] == [("a", -1.0), ("b", -2.0)]
    # byte-level token strings that do not spell the text: the text rides on the first piece, the count stays 2
    odd = chunk_pieces({"text": "é", "logprobs": {"tokens": ["bytes:\\xc3", "bytes:\\xa9"], "token_logprobs": [-1.0, None]}})
    assert [(p.text, p.logp) for p in odd] == [("é", -1.0), ("", 0.0)]

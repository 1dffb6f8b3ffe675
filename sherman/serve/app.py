"""`sherman serve`: an OpenAI-compatible HTTP server over a Sherman checkpoint (FastAPI + uvicorn).

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both streaming over SSE and
non-streaming), `GET /v1/models`, `GET /health`. With an API key, every `/v1` request must carry
`Authorization: Bearer KEY` (else 401). Malformed requests get a 4xx with OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`; nothing a client sends crashes the server.

Limits and failure handling (see the README's security model):
- the request body is capped (`max_body_bytes`, 413 beyond it); a body that is not a JSON object, or that
  Python's parser refuses (integers of more than 4,300 digits, nesting deeper than the recursion limit), is a 400;
- prompts are tokenized in a worker thread, then prompt + max_tokens is checked against the model's
  `max_seq_len` before any decoding: beyond it, a 400 with code `context_length_exceeded` (OpenAI's shape). A
  request without max_tokens gets min(default_max_tokens, room left in the window);
- an error after a stream has started (HTTP 200 already sent) is sent as an SSE `{"error": ...}` event, then
  `data: [DONE]`; any 500 answer carries `Connection: close`, so a pooled client connection is not reused;
- returned text skips special tokens (`<bos>`, `<pad>`, ...) unless the request sets `skip_special_tokens: false`
  (vLLM's extension; the AsyncThink OpenAI backend uses it to see the protocol tags);
- the API key is compared in constant time (`hmac.compare_digest`).

Concurrent requests are batched: every choice of every request is a stream of the shared
`core.decoder.Batcher` (continuous batching over `core.decoder.Decoder`: one forward pass per step
for all live sequences; a prompt that extends a finished one reuses its KV cache).

AsyncThink is exposed as a second model, `<name>-asyncthink`, when the tokenizer can encode the protocol's
templates and tags (`<ORG>`, `<WORK>`, `<FORK-1>`, ...): a chat call to it runs the AsyncThink
engine (organizer + workers through the same batcher) on the last user message and returns the answer,
with the fork-join tree, latency and eta under the extra key `asyncthink`.

Chat template: Sherman's small checkpoints have none, so messages are rendered as the concatenation of
their contents (`chat_template` in ServeConfig can name another: "plain" or "roles").
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sherman.core.generate import SamplingParams


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    api_key: str | None = None
    """If set, /v1 requests need `Authorization: Bearer <api_key>`."""
    model_name: str = "sherman"
    """Model id reported by /v1/models and required in requests."""
    max_tokens_limit: int = 4096
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = 64
    """max_tokens when a request gives none."""
    max_batch: int = 64
    """Most sequences advanced in one forward pass."""
    max_n: int = 16
    """Most choices per request."""
    seed: int = 0
    """Seed of the server's sampling generator."""
    chat_template: str = "plain"
    """'plain': concatenated contents; 'roles': 'role: content' lines then 'assistant: '."""
    asyncthink: bool = True
    """Expose `<model_name>-asyncthink`."""
    think_capacity: int = 4
    """AsyncThink pool size c for the -asyncthink model."""
    think_max_org_tokens: int = 256
    """AsyncThink organizer token cap."""
    think_max_worker_tokens: int = 128
    """AsyncThink per-worker token cap."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (bytes); larger ones get a 413."""


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------
# request validation (pure)


def _short(v) -> str:
    r = repr(v) if not isinstance(v, int) or abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"
    return r if len(r) <= 60 else r[:57] + "..."


def _num(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    v = body.get(key, default)
    if v is None:
        v = default
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type:
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {_short(v)}", param=key)
    if not lo <= v <= hi:  # also false for NaN
        raise APIError(400, f"'{key}' must be in [{lo}, {hi}], got {_short(v)}", param=key)
    return v


def parse_sampling(body: dict, cfg: ServeConfig) -> tuple[SamplingParams, int, list[str], int]:
    """-> (params, max_tokens, stop strings, n) from an OpenAI request body."""
    max_tokens = _num(body, "max_tokens", cfg.default_max_tokens, 0, cfg.max_tokens_limit, integer=True)
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        max_tokens = _num(body, "max_completion_tokens", cfg.default_max_tokens, 0, cfg.max_tokens_limit, integer=True)
    temperature = float(_num(body, "temperature", 1.0, 0.0, 2.0))
    top_p = float(_num(body, "top_p", 1.0, 0.0, 1.0))
    if top_p == 0.0:
        raise APIError(400, "'top_p' must be > 0", param="top_p")
    n = _num(body, "n", 1, 1, cfg.max_n, integer=True)
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    stops = [s for s in stops if s]
    for key in ("stream", "skip_special_tokens"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise APIError(400, f"'{key}' must be a boolean", param=key)
    return SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p), max_tokens, stops, n


def render_chat(messages, template: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    parts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ("system", "user", "assistant", "developer", "tool"):
            raise APIError(400, "each message needs a 'role' of system, user, assistant, developer or tool", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        if not isinstance(content, str):
            raise APIError(400, "message 'content' must be a string or a list of text parts", param="messages")
        parts.append((m["role"], content))
    if template == "roles":
        return "".join(f"{r}: {c}\n" for r, c in parts) + "assistant: "
    return "".join(c for _, c in parts)


def last_user(messages) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    raise APIError(400, "the asyncthink model needs a user message", param="messages")


def context_error(n_prompt: int, max_tokens: int, window: int, param: str) -> APIError:
    where = "messages" if param == "messages" else "prompt"
    return APIError(
        400,
        f"This model's maximum context length is {window} tokens. However, you requested {n_prompt + max_tokens} tokens "
        f"({n_prompt} in the {where}, {max_tokens} in the completion). Please reduce the length of the {where} or completion.",
        param=param, code="context_length_exceeded",
    )  # fmt: skip


def fit_window(n_prompt: int, max_tokens: int, explicit: bool, window: int, param: str) -> int:
    """max_tokens that fits the context window: an explicit one must fit (else context_length_exceeded); the default
    is cut to the room left; a prompt that fills the window leaves no room either way."""
    if n_prompt + (max_tokens if explicit else 1) > window:
        raise context_error(n_prompt, max_tokens if explicit else 1, window, param)
    return max_tokens if explicit else min(max_tokens, window - n_prompt)


def asyncthink_available(tok, tcfg=None) -> bool:
    """True when the tokenizer can encode the AsyncThink templates and every protocol tag (else the model is not offered)."""
    from sherman.think.engine import ThinkConfig
    from sherman.think.protocol import format_tag

    tcfg = tcfg or ThinkConfig()
    probes = [tcfg.organizer_template.format(question="1"), tcfg.worker_template.format(question="1", query="1")]
    probes += [format_tag(n, 1, c) for n in ("FORK", "JOIN") for c in (False, True)]
    probes += [format_tag(n, None, c) for n in ("ANSWER", "RETURN") for c in (False, True)]
    return all(_encodable(tok, p) for p in probes)


def token_prompts(prompt, vocab_size: int) -> list[list[int]] | None:
    """`prompt` given as token ids, as vLLM and the OpenAI API accept: a list of ints (one prompt) or a non-empty list
    of such lists -> the id lists, used as they are (no BOS added: the client's ids are the prompt); None when `prompt`
    is not made of ints (text, handled by the caller). Ids outside [0, vocab_size) or an empty prompt are a 400."""
    if not isinstance(prompt, list) or not prompt:
        return None
    is_ids = lambda x: isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)  # noqa: E731
    if is_ids(prompt):
        rows = [prompt]
    elif all(isinstance(p, list) for p in prompt) and all(is_ids(p) for p in prompt):
        rows = prompt
    else:
        return None
    for r in rows:
        if not r:
            raise APIError(400, "a token-id prompt must not be empty", param="prompt")
        bad = next((i for i in r if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is out of range [0, {vocab_size})", param="prompt")
    return [list(r) for r in rows]


def find_stop(text: str, stops: list[str]) -> int:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


# ---------------------------------------------------------------------------------------------------
# the app


class Engine:
    """Model + tokenizer + batcher: turns (prompt text, sampling) into streamed text."""

    def __init__(self, model, tokenizer, cfg: ServeConfig):
        from sherman.core.decoder import Batcher

        self.model, self.tok, self.cfg = model.eval(), tokenizer, cfg
        self.window = int(model.cfg.max_seq_len)
        self.batcher = Batcher(model, generator=torch.Generator(device=model.device).manual_seed(cfg.seed), max_batch=cfg.max_batch)

    def encode(self, text: str, param: str = "prompt") -> list[int]:
        try:
            return self.tok.encode(text, bos=True)
        except Exception as e:  # any tokenizer failure on client text is the client's error
            raise APIError(400, f"{param} cannot be tokenized: {_short(str(e))}", param=param) from None

    async def encode_all(self, texts: list[str], param: str = "prompt") -> list[list[int]]:
        """Tokenize in a worker thread: a huge prompt does not hold up the event loop (other requests, the batcher)."""
        return await asyncio.to_thread(lambda: [self.encode(t, param) for t in texts])

    async def stream_text(self, ids: list[int], params: SamplingParams, max_tokens: int, stops: list[str], skip_special: bool = True):
        """Yield (text_delta, finish_reason or None); the last item has a finish reason."""
        eos = self.tok.eos_id
        gen: list[int] = []
        text, sent = "", 0
        hold = max((len(s) for s in stops), default=1) - 1
        finish = "length"
        if max_tokens == 0:
            yield "", "length"
            return
        async with aclosing(self.batcher.stream(ids, params, max_tokens)) as toks:
            async for tok, _ in toks:
                if tok == eos:
                    finish = "stop"
                    break
                gen.append(tok)
                text = self.tok.decode(gen, skip_special=skip_special)
                j = find_stop(text, stops) if stops else -1
                if j >= 0:
                    text, finish = text[:j], "stop"
                    break
                safe = len(text) - hold if stops else len(text)
                if safe > sent:
                    yield text[sent:safe], None
                    sent = safe
        yield text[sent:], finish


def _chunk_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def create_app(model, tokenizer, cfg: ServeConfig | None = None):
    cfg = cfg or ServeConfig()
    eng = Engine(model, tokenizer, cfg)
    think_name = f"{cfg.model_name}-asyncthink"
    think_ok = cfg.asyncthink and asyncthink_available(tokenizer)
    app = FastAPI(title="sherman serve")
    app.state.engine = eng
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        return JSONResponse(APIError(400, f"invalid request: {exc.errors()[:1]}").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        # close the connection: the client's pool must not reuse a connection whose request failed on our side
        body = APIError(500, f"internal error: {type(exc).__name__}: {_short(str(exc))}", "server_error").body()
        return JSONResponse(body, status_code=500, headers={"Connection": "close"})

    want_auth = f"Bearer {cfg.api_key}".encode() if cfg.api_key is not None else None

    def check_auth(request: Request) -> None:
        if want_auth is None:
            return
        got = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(got, want_auth):  # constant time: no key prefix leaks through timing
            raise APIError(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        limit = cfg.max_body_bytes
        too_big = APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limit:
                raise too_big
        try:
            body = json.loads(bytes(raw))
        except (ValueError, RecursionError):  # bad JSON or UTF-8, > 4300-digit integers, nesting too deep
            raise APIError(400, "request body is not valid JSON (or nests too deeply / holds a too-long number)") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        return body

    def error_event(exc: Exception) -> str:
        err = exc if isinstance(exc, APIError) else APIError(500, f"internal error: {type(exc).__name__}: {_short(str(exc))}", "server_error")
        return f"data: {json.dumps(err.body())}\n\n"

    def check_model(body: dict, allow_think: bool) -> str:
        name = body.get("model")
        if not isinstance(name, str):
            raise APIError(400, "'model' is required", param="model")
        known = [cfg.model_name] + ([think_name] if think_ok and allow_think else [])
        if name not in known:
            raise APIError(404, f"The model '{name}' does not exist; available: {known}", code="model_not_found", param="model")
        return name

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_name}

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        ids = [cfg.model_name] + ([think_name] if think_ok else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "sherman"} for i in ids]}

    async def run_choices(prompts: list[list[int]], params, max_tokens, stops, n, skip):
        async def one(ids):
            parts, finish = [], "length"
            async for delta, fin in eng.stream_text(ids, params, max_tokens, stops, skip):
                parts.append(delta)
                if fin is not None:
                    finish = fin
            return "".join(parts), finish

        jobs = [one(ids) for ids in prompts for _ in range(n)]
        return await asyncio.gather(*jobs)

    def usage(prompts, texts) -> dict:
        p = sum(len(x) for x in prompts)
        c = sum(len(tokenizer.encode(t)) if _encodable(tokenizer, t) else len(t) for t in texts)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        body = await read_body(request)
        name = check_model(body, allow_think=False)
        prompt = body.get("prompt")
        id_prompts = token_prompts(prompt, model.cfg.vocab_size)
        if id_prompts is not None:
            texts = id_prompts
        elif isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            texts = prompt
        else:
            raise APIError(400, "'prompt' must be a string, a non-empty list of strings, a list of token ids or a list of such lists",
                           param="prompt")
        params, max_tokens, stops, n = parse_sampling(body, cfg)
        skip = body.get("skip_special_tokens") is not False
        if len(texts) * n > cfg.max_batch:
            raise APIError(400, f"{len(texts)} prompts x n={n} exceeds the server's limit of {cfg.max_batch} choices", param="prompt")
        if body.get("stream") and len(texts) * n != 1:
            raise APIError(400, "streaming supports one prompt and n = 1", param="stream")
        prompts = id_prompts if id_prompts is not None else await eng.encode_all(texts)
        max_tokens = fit_window(max(len(p) for p in prompts), max_tokens, explicit_max_tokens(body), eng.window, "prompt")
        params.max_new_tokens = max_tokens
        rid = _chunk_id("cmpl")
        if body.get("stream"):

            async def sse():
                try:
                    async for delta, fin in eng.stream_text(prompts[0], params, max_tokens, stops, skip):
                        if delta or fin is not None:
                            chunk = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                                     "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": fin}]}
                            yield f"data: {json.dumps(chunk)}\n\n"
                except Exception as e:  # headers (200) are out: report in-band, then end the stream properly
                    yield error_event(e)
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        outs = await run_choices(prompts, params, max_tokens, stops, n, skip)
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(outs)]
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name, "choices": choices,
                "usage": usage(prompts, [t for t, _ in outs])}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_auth(request)
        body = await read_body(request)
        name = check_model(body, allow_think=True)
        messages = body.get("messages")
        prompt_text = render_chat(messages, cfg.chat_template)
        params, max_tokens, stops, n = parse_sampling(body, cfg)
        skip = body.get("skip_special_tokens") is not False
        rid = _chunk_id("chatcmpl")
        extra = None
        if name == think_name:
            question = last_user(messages)
            q_ids = (await eng.encode_all([question], "messages"))[0]
            fit_window(len(q_ids) + 1, cfg.think_max_org_tokens, True, eng.window, "messages")  # organizer: question + <ORG> + its tokens
            texts, extra = await run_asyncthink(question, params)
            outs = [(texts, "stop")]
            prompts = [q_ids]
        else:
            if body.get("stream") and n != 1:
                raise APIError(400, "streaming supports n = 1", param="stream")
            prompts = await eng.encode_all([prompt_text], "messages")
            max_tokens = fit_window(len(prompts[0]), max_tokens, explicit_max_tokens(body), eng.window, "messages")
            params.max_new_tokens = max_tokens
            if body.get("stream"):

                async def sse():
                    first = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                    yield f"data: {json.dumps(first)}\n\n"
                    try:
                        async for delta, fin in eng.stream_text(prompts[0], params, max_tokens, stops, skip):
                            if delta or fin is not None:
                                chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                                         "choices": [{"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": fin}]}
                                yield f"data: {json.dumps(chunk)}\n\n"
                    except Exception as e:  # headers (200) are out: report in-band, then end the stream properly
                        yield error_event(e)
                    yield "data: [DONE]\n\n"

                return StreamingResponse(sse(), media_type="text/event-stream")
            outs = await run_choices(prompts, params, max_tokens, stops, n, skip)
        if body.get("stream"):  # asyncthink: the whole answer as one delta
            async def sse_once():
                for i, (t, f) in enumerate(outs):
                    chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                             "choices": [{"index": i, "delta": {"role": "assistant", "content": t}, "finish_reason": f}]}
                    if extra is not None:
                        chunk["asyncthink"] = extra
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse_once(), media_type="text/event-stream")
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f} for i, (t, f) in enumerate(outs)]
        resp = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": name, "choices": choices,
                "usage": usage(prompts, [t for t, _ in outs])}
        if extra is not None:
            resp["asyncthink"] = extra
        return resp

    async def run_asyncthink(question: str, params: SamplingParams):
        from sherman.think.backends import LocalBackend
        from sherman.think.engine import AsyncThinkEngine, ThinkConfig

        backend = LocalBackend(model, tokenizer, params, batcher=eng.batcher)
        tcfg = ThinkConfig(capacity=cfg.think_capacity, max_org_tokens=cfg.think_max_org_tokens, max_worker_tokens=cfg.think_max_worker_tokens)
        r = await AsyncThinkEngine(backend, tcfg).run(question)
        extra = {"latency": r.latency, "eta": r.eta, "total_tokens": r.total_tokens, "errors": [e.kind for e in r.errors], "tree": r.tree()}
        return (r.answer or ""), extra

    return app


def explicit_max_tokens(body: dict) -> bool:
    return body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None


def _encodable(tok, text: str) -> bool:
    try:
        tok.encode(text)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------
# running


class ServerThread:
    """uvicorn in a background thread (tests, benchmarks): `with ServerThread(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sk:
                sk.bind((host, 0))
                port = sk.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load_for_serving(ckpt: str, device: str | None = None):
    """(model, tokenizer) from any checkpoint path `sherman.core.paths` accepts (run, step or Hugging Face directory)."""
    from sherman.core.paths import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(ckpt, device=device)
    return model, tok


def main(argv: list[str]) -> int:
    """`sherman serve`: parsing and start-up live in `sherman.serve.cli`."""
    from sherman.serve.cli import main as serve_main

    return serve_main(argv)

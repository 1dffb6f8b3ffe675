"""`sherman serve CKPT`: an OpenAI-compatible HTTP server over a Sherman checkpoint (see `sherman.serve.app`).

    sherman serve runs/train --port 8000 --api-key KEY
    curl http://127.0.0.1:8000/v1/completions -H 'Authorization: Bearer KEY' -d '{"model": "train", "prompt": "1+2="}'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sherman.core.config import Positional, check, parse
from sherman.core.errors import ShermanError


@dataclass
class ServeArgs:
    ckpt: Positional[str]
    """Run directory (its newest step_*), step_* checkpoint or Hugging Face folder, with a tokenizer.json."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for every interface)."""
    port: int = 8000
    """TCP port, 1-65535 (0 = any free port)."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every /v1 request."""
    name: str | None = None
    """Model id in /v1/models and requests; default: the run (or checkpoint) directory's name."""
    device: str | None = None
    """torch device (cpu, cuda, cuda:1); default: CUDA when available, else CPU."""
    seed: int = 0
    """Seed of the server's sampling generator."""
    max_batch: int = 64
    """Most sequences advanced in one forward pass (continuous batching)."""
    chat_template: Literal["plain", "roles"] = "plain"
    """Chat prompt: 'plain' concatenates the contents; 'roles' writes 'role: content' lines, then 'assistant: '."""
    asyncthink: bool = True
    """Also expose `<name>-asyncthink`, which answers with organizer-worker AsyncThink."""

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", f"must be in 0-65535, got {self.port}")
        check(self.max_batch >= 1, "max_batch", f"must be >= 1, got {self.max_batch}")


def main(argv: list[str]) -> int:
    a = parse(ServeArgs, argv, prog="sherman serve", description=__doc__)
    try:
        import uvicorn

        from sherman.serve import app
    except ImportError as e:
        raise ShermanError(f"sherman serve needs fastapi and uvicorn ({e}); pip install 'sherman[serve]'") from None
    from sherman.core.paths import load_model_and_tokenizer

    model, tok, where = load_model_and_tokenizer(a.ckpt, device=a.device)
    cfg = app.ServeConfig(host=a.host, port=a.port, api_key=a.api_key, model_name=a.name or where.name, seed=a.seed,
                          max_batch=a.max_batch, chat_template=a.chat_template, asyncthink=a.asyncthink)  # fmt: skip
    server = app.create_app(model, tok, cfg)
    print(f"sherman serve: {cfg.model_name} ({where.path}) on http://{a.host}:{a.port}/v1", flush=True)
    try:
        uvicorn.run(server, host=a.host, port=a.port, log_level="info")
    except OSError as e:  # port in use, permission denied for a port < 1024, unknown host
        raise ShermanError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}") from None
    return 0

"""`sherman serve CKPT`: entry point; see `sherman.serve.app` for the server."""

from __future__ import annotations

from sherman.core.common import ShermanError


def main(argv: list[str]) -> int:
    try:
        from sherman.serve import app
    except ImportError as e:
        raise ShermanError(f"sherman serve needs fastapi and uvicorn ({e}); pip install 'sherman[serve]'") from None
    return app.main(argv)

"""`adapt serve`: a chat run and a captioner behind an OpenAI-compatible HTTP API and a web page.

Needs the `serve` extra (`pip install "adapt[serve]"`: FastAPI, uvicorn, python-multipart); the
modules that import them are imported only when a server is made, so `adapt --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from adapt.serving.config import ServeConfig


def create_app(config: ServeConfig) -> Any:
    """The FastAPI app serving `config` (models loaded; the batch worker runs while the app runs)."""
    _need_serve_extra()
    from adapt.serving.app import create_app as make

    return make(config)


def serve(config: ServeConfig) -> None:
    """Load the models and serve them with uvicorn until interrupted (`adapt serve`)."""
    _need_serve_extra()
    import uvicorn

    from adapt.console import stderr_console

    with stderr_console().status(f"loading {config.run} and the captioner {config.captioner}…"):
        app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)


def _need_serve_extra() -> None:
    from importlib.util import find_spec

    from adapt.errors import UserError

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if find_spec(m) is None]
    if missing:
        raise UserError(f"adapt serve needs {', '.join(missing)}: pip install 'adapt[serve]'")


__all__ = ["ServeConfig", "create_app", "serve"]

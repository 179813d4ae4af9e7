"""The FastAPI app: routes, OpenAI-style errors for every mistake, the body limit, the worker's life.

Every error a client can cause is answered as `{"error": {"message", "type", "param", "code"}}`
with a 4xx status: FastAPI's validation errors (malformed JSON, a missing or mistyped field) become
400 instead of its usual 422, and Starlette's own errors (404, 405, 413 from the body limit) get
the same shape. The body limit counts bytes as they arrive,
so a body without Content-Length, or one that lies about it, is stopped at the limit too
(`adapt.serving.limits`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from adapt import __version__
from adapt.errors import UserError
from adapt.serving.batcher import Batcher
from adapt.serving.chat import chat_completion
from adapt.serving.config import ServeConfig
from adapt.serving.limits import BodyLimit
from adapt.serving.models import Served, answer_batch, caption_bytes, load_served
from adapt.serving.schemas import ApiError, CaptionRequest, ChatRequest, error_body, error_response

PAGE = "index.html"  # the web page, in adapt/serving/static/


def create_app(config: ServeConfig, served: Served | None = None) -> FastAPI:
    """The app for `config`; loads the models unless `served` is given. The worker thread runs
    while the app runs (its lifespan)."""
    served = served or load_served(config)
    batcher = Batcher(
        lambda jobs: answer_batch(served.target, jobs, batcher.complete),
        config.max_batch, config.batch_wait_ms / 1000, config.max_queue,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="adapt serve", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.served, app.state.batcher, app.state.config = served, batcher, config
    _error_handlers(app)
    _routes(app, served, config, batcher)
    return app


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """`('body', 'messages', 0, 'content', 'str')` → `messages.0.content` (None for the body
    itself); pydantic's tags for the members of a union (`str`, `list[TextPart]`) are left out."""
    parts = [str(p) for p in loc if p != "body"]
    parts = [p for p in parts if p.lower() not in _TYPE_TAGS and "[" not in p and not p[:1].isupper()]
    return ".".join(parts) or None


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors()) or [{"loc": (), "msg": "invalid request", "type": ""}]
        # a value in a union (`stop`: str or list) fails every member; the member whose failure is
        # not a plain type mismatch says what is wrong ("at most 4 items", not "a valid string")
        first = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0])
        param = None if first.get("type") == "json_invalid" else _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        elif param is None:
            message = f"the body must be a JSON object: {first['msg']}"
        else:
            message = f"{param}: {first['msg']}"
        code = "json_invalid" if first.get("type") == "json_invalid" else "invalid_value"
        return JSONResponse(error_body(400, message, param, code), 400)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_body(400, str(exc)), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}",
                   413: f"the request body is larger than the server's limit "
                        f"({app.state.config.max_body_mb:g} MB, --max-body-mb)"}.get(exc.status_code, str(exc.detail))  # fmt: skip
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code)
        return JSONResponse(error_body(exc.status_code, message, None, code), exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug, never a user's mistake
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}"), 500)


def _routes(app: FastAPI, served: Served, config: ServeConfig, batcher: Batcher) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        file = resources.files("adapt.serving").joinpath("static", PAGE)
        if not file.is_file():
            raise ApiError(404, f"the web page is missing from this installation ({PAGE})", code="not_found")
        return HTMLResponse(file.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = batcher.stats()
        return {"status": "ok", "model": served.chat_id, "captioner": served.caption_id,
                "max_batch": config.max_batch, "max_queue": config.max_queue, **vars(stats)}  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = [served.chat_id] + ([served.caption_id] if served.caption_id else [])
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "adapt"} for i in ids],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await json_body(request, ChatRequest)
        return await chat_completion(request, body, served, config, batcher)

    @app.post("/v1/captions")
    async def captions(request: Request) -> dict[str, Any]:
        data, field, name, model = await _image_of(request)
        if served.captioner is None:
            raise ApiError(
                404, "no captioner is served (started with --captioner none)", "model", "model_not_found"
            )
        if model is not None and model != served.caption_id:
            raise ApiError(
                404,
                f"model {model!r} not found; the captioner is {served.caption_id!r}",
                "model",
                "model_not_found",
            )
        try:
            caption = await run_in_threadpool(caption_bytes, served, data, name)
        except UserError as err:
            raise ApiError(400, f"{field}: {err}", field, "invalid_image") from None
        return {"caption": caption, "model": served.caption_id}


async def _image_of(request: Request) -> tuple[bytes, str, str, str | None]:
    """(image bytes, the field it came in, its name, `model` asked for) from a multipart `file` or
    JSON `{"image": base64}`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "file: send the image as the multipart field `file`", "file")
        model = form.get("model")
        data = await upload.read()
        return data, "file", upload.filename or "upload", model if isinstance(model, str) else None
    if kind in ("application/json", ""):
        body = await json_body(request, CaptionRequest)
        return _base64_image(body.image), "image", "image", body.model
    raise ApiError(400, 'send the image as multipart/form-data (field `file`) or JSON {"image": base64}')


async def json_body(request: Request, model: type[BaseModel]) -> Any:
    """The body read as JSON into `model`, whatever its Content-Type says (curl's `-d` sends
    form-urlencoded); a body that is not JSON, or not `model`, is a 400 naming the field."""
    try:
        return model.model_validate(json.loads(await request.body()))
    except json.JSONDecodeError as err:
        raise ApiError(400, f"the body is not valid JSON ({err.msg})", code="json_invalid") from None
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not valid JSON (not UTF-8)", code="json_invalid") from None
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None


def _base64_image(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL, as a browser's FileReader gives
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image: not valid base64", "image") from None
    if not data:
        raise ApiError(400, "image: empty", "image")
    return data

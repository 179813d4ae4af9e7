"""The API's request bodies (pydantic, checked strictly) and OpenAI-style error objects.

Requests follow OpenAI's chat completions where it has the field; fields this server does not use
(frequency_penalty, user, ...) are accepted and ignored, as OpenAI-compatible servers do, but a
field whose value would change the answer in a way not offered here (`n` > 1) is refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fa_adapt.generation import MIN_TEMPERATURE

MAX_TOKENS_LIMIT = 8192  # per answer; OpenAI refuses more than a model's context the same way
MAX_STOP_STRINGS = 4  # as OpenAI


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_overloaded",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """`err` as a JSON response."""
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), err.status, err.headers)


class TextPart(BaseModel):
    """A text part of a message's content (`[{"type": "text", "text": "..."}]`)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; `developer` (OpenAI's newer name for system) is read as `system`."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_chatml(self) -> dict[str, str]:
        """`{role, content}` as `fa_adapt.chatml` renders it."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. Unset sampling fields take the server's defaults (its flags)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:  # logits / 1e-300 overflow
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and any(s == "" for s in ([value] if isinstance(value, str) else value)):
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _one_limit(self) -> ChatRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; give one")
        return self

    @property
    def stops(self) -> list[str]:
        """`stop` as a list."""
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def limit(self) -> int | None:
        """The answer's token limit asked for, if any."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CaptionRequest(BaseModel):
    """`POST /v1/captions` as JSON: the image as base64 (a `data:image/...;base64,` prefix is allowed)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    image: str
    model: str | None = None

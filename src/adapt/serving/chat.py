"""`POST /v1/chat/completions`: a request becomes a `Job` for the batcher, and its answer comes
back as OpenAI's chat completion, or (`stream: true`) as server-sent chunks then `data: [DONE]`.

The worker thread hands text and the final answer to the request's coroutine through `Events`. A
client that goes away sets the job's `cancelled` flag: a waiting job is dropped, a running row
stops at the next token (`fa_adapt.streaming`), and the slot is free.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from adapt.errors import UserError
from adapt.serving.batcher import Batcher, Job, QueueFull, ShuttingDown
from adapt.serving.config import ServeConfig
from adapt.serving.models import Served
from adapt.serving.schemas import ApiError, ChatRequest, error_body
from fa_adapt.generation import Answer, as_messages, prompt_text

RETRY_AFTER_S = "1"  # a full queue drains in about a batch's time: ask clients to come back soon
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks that its client is there


class Events:
    """Text pieces and the final (answer, error) of one job, from the worker thread to asyncio."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down, nobody listens
            pass

    def emit(self, piece: str) -> None:
        self._put(("text", piece))

    def finish(self, answer: Answer | None, error: BaseException | None) -> None:
        self._put(("end", (answer, error)))


def _prompt_messages(body: ChatRequest, served: Served) -> list[dict[str, str]]:
    """The request's conversation, checked as `adapt generate` checks a prompt (400 naming `messages`)."""
    messages = [m.as_chatml() for m in body.messages]
    try:
        as_messages(messages, served.target.system)
    except UserError as err:
        raise ApiError(400, "messages: " + str(err).removeprefix("prompt: "), "messages") from None
    return messages


def _check_length(served: Served, messages: list[dict[str, str]], max_new_tokens: int) -> None:
    """Refuse a prompt that, with its answer, is longer than the model's positions (400)."""
    tok, limit = served.target.tokenizer, getattr(served.target.model.config, "max_position_embeddings", None)
    text = prompt_text(tok, as_messages(messages, served.target.system))
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    if limit and n + max_new_tokens > limit:
        raise ApiError(
            400, f"messages: the prompt is {n} tokens and max_tokens {max_new_tokens}; "
            f"this model takes at most {limit} together", "messages", "context_length_exceeded",
        )  # fmt: skip


def make_job(body: ChatRequest, served: Served, config: ServeConfig, events: Events) -> Job:
    """The batcher's job for a checked request; sampling settings not given are the server's."""
    if body.model is not None and body.model != served.chat_id:
        raise ApiError(
            404, f"model {body.model!r} not found; this server answers as {served.chat_id!r}",
            "model", "model_not_found",
        )  # fmt: skip
    gen = config.generation
    temperature = gen.temperature if body.temperature is None else body.temperature
    top_p = gen.top_p if body.top_p is None else body.top_p
    settings = {"max_new_tokens": gen.max_new_tokens, "no_repeat_ngram": gen.no_repeat_ngram,
                "temperature": temperature, "top_p": top_p}  # fmt: skip
    if temperature == 0:  # greedy: top_p and seed change nothing, so all greedy requests batch together
        key: Any = ("greedy", gen.no_repeat_ngram)
    else:  # a seeded request gets its own random stream: alone in its batch (key None)
        key = None if body.seed is not None else ("sample", temperature, top_p, gen.no_repeat_ngram)
    return Job(
        messages=_prompt_messages(body, served), key=key, settings=settings,
        max_new_tokens=body.limit or gen.max_new_tokens, stop=body.stops,
        seed=body.seed if temperature > 0 else None,
        emit=events.emit if body.stream else None, finish=events.finish,
    )  # fmt: skip


def _completion(answer: Answer, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer},
                "finish_reason": answer.finish,
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
    }


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.tokens,
        "total_tokens": answer.prompt_tokens + answer.tokens,
    }


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    return format_sse_event(data_str=json.dumps(body, ensure_ascii=False))


async def _stream(events: Events, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's chunks: the role, each piece of text, the finish reason, optionally usage, [DONE]."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    while True:
        kind, value = await events.queue.get()
        if kind == "end":
            break
        yield _chunk(cid, created, model, {"content": value})
    answer, error = value
    if error is not None or answer is None:  # the status is sent already: the error goes in the stream
        yield format_sse_event(data_str=json.dumps(error_body(500, f"generation failed: {error}")))
    else:
        yield _chunk(cid, created, model, {}, answer.finish)
        if include_usage:
            usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": _usage(answer)}  # fmt: skip
            yield format_sse_event(data_str=json.dumps(usage))
    yield format_sse_event(data_str="[DONE]")


class ChatStream(EventSourceResponse):
    """The SSE response; `on_close` runs however it ends (a client that left included)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _wait(request: Request, events: Events, job: Job) -> tuple[Answer | None, BaseException | None]:
    """The job's answer; a client that disconnects meanwhile cancels it."""
    while True:
        try:
            kind, value = await asyncio.wait_for(events.queue.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return None, None
            continue
        if kind == "end":
            return value


async def chat_completion(
    request: Request, body: ChatRequest, served: Served, config: ServeConfig, batcher: Batcher
) -> Any:
    """Answer one chat request (a JSON completion or a `ChatStream`)."""
    events = Events(asyncio.get_running_loop())
    job = make_job(body, served, config, events)
    await run_in_threadpool(_check_length, served, job.messages, job.max_new_tokens)
    try:
        batcher.submit(job)
    except QueueFull:
        raise ApiError(
            503, f"the server is busy ({config.max_queue} requests waiting); retry shortly",
            code="queue_full", headers={"Retry-After": RETRY_AFTER_S},
        ) from None  # fmt: skip
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ChatStream(_stream(events, served.chat_id, include_usage), job.cancelled.set)
    try:
        answer, error = await _wait(request, events, job)
    finally:
        job.cancelled.set()  # no-op once answered; frees the slot if this handler is cancelled
    if isinstance(error, ShuttingDown):
        raise ApiError(503, str(error), code="shutting_down", headers={"Retry-After": RETRY_AFTER_S})
    if error is not None:
        raise error
    if answer is None:  # the client left; nobody reads this
        raise ApiError(400, "client disconnected", code="client_disconnected")
    return _completion(answer, served.chat_id)

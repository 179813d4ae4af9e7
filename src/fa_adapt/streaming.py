"""Answers read while they are generated: one `RowStream` per prompt of a batch.

`generate_batch` hands every batch to `BatchStream`, which is at once the transformers streamer
(it receives each step's new token of every row) and a stopping criterion (it tells `generate`
which rows are finished). Each row keeps its own limits, so the rows of one batch may ask for
different `max_new_tokens` and stop strings, and a row whose reader went away (`cancelled`) stops
at the next step while the others go on. `adapt generate` streams through the same class (a batch
of one), and the non-streamed answers are read from it too: one code path.

Stop strings follow OpenAI's rule: the answer ends before the first one and never contains it.
While streaming, text that could be the start of a stop string is held back until it is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"  # what a half-decoded multi-byte (e.g. Persian) character decodes to


@dataclass
class Row:
    """One prompt's own limits in a batch; None = the batch's `max_new_tokens`."""

    max_new_tokens: int | None = None
    stop: Sequence[str] = ()
    emit: Callable[[str], None] | None = None  # receives each new piece of the answer
    cancelled: Callable[[], bool] | None = None  # True once nobody reads the answer any more
    on_finish: Callable[[RowStream], None] | None = None  # called once, as soon as the row ends


@dataclass
class RowStream:
    """The answer of one row as it grows: token ids, decoded text, and why it ended."""

    tokenizer: Any
    stop_ids: set[int]
    max_new_tokens: int
    stop: Sequence[str] = ()
    emit: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    on_finish: Callable[[RowStream], None] | None = None
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)  # the answer's tokens, the end token excluded
    end_id: int | None = None  # the stop token that ended it, if one did
    text: str = ""
    sent: int = 0  # characters of `text` already emitted
    finish: str | None = None  # "stop", "length" or "cancelled" once finished
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0  # from the start of the batch to the row's end

    def add(self, token: int) -> None:
        """Take the row's next generated token (ignored once the row is finished)."""
        if self.finish is not None:
            return
        if token in self.stop_ids:
            self.end_id = token
            self.end("stop")
            return
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.end("stop")
        elif len(self.ids) >= self.max_new_tokens:
            self.end("length")
        else:
            self._send()

    def check_cancelled(self) -> bool:
        """Finish the row as "cancelled" when its reader has gone; True when the row is done."""
        if self.finish is None and self.cancelled is not None and self.cancelled():
            self.end("cancelled")
        return self.finish is not None

    def end(self, reason: str) -> None:
        """Finish the row (once): emit what was held back, then tell `on_finish`."""
        if self.finish is not None:
            return
        self.finish, self.seconds = reason, time.perf_counter() - self.started
        if reason != "cancelled":
            self._send(final=True)
        if self.on_finish is not None:
            self.on_finish(self)

    @property
    def tokens(self) -> int:
        """Generated tokens, the end token included."""
        return len(self.ids) + (self.end_id is not None)

    def _held_back(self) -> int:
        """Characters at the end of `text` not to emit yet: a half-decoded character, or the
        beginning of a stop string (which would have to be taken back if the rest follows)."""
        if self.text.endswith(REPLACEMENT):
            return 1
        return max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)

    def _send(self, final: bool = False) -> None:
        end = len(self.text) if final else len(self.text) - self._held_back()
        if self.emit is not None and end > self.sent:
            self.emit(self.text[self.sent : end])
        self.sent = max(self.sent, end)


class BatchStream:
    """A transformers streamer and stopping criterion over the `RowStream`s of one batch."""

    def __init__(self, rows: Sequence[RowStream]) -> None:
        self.rows = list(rows)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        """Called by `generate` with the prompt first, then with each step's token of every row."""
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            row.add(int(token))

    def end(self) -> None:
        """Called by `generate` when it is done: a row still open ran into the batch's length limit."""
        for row in self.rows:
            row.end("length")

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        """Stopping criterion: which rows are finished (their limit, a stop string, cancelled)."""
        import torch

        done = [row.check_cancelled() for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

"""Micro-batching: one worker thread owns the model and answers queued chat requests in batches.

A request waits in a bounded queue. The worker takes the oldest one and, for up to
`--batch-wait-ms` after it arrived, gathers later ones that can share its `generate` call (the same
sampling settings: greedy rows with greedy rows, the same temperature and top-p together), up to
`--max-batch`. Each row keeps its own `max_tokens` and stop strings (`fa_adapt.streaming`). A full
queue refuses new requests at once (the caller answers 503) instead of growing without bound.

The worker thread talks to the asyncio side only through the callbacks a `Job` carries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds `--max-queue` requests already."""


class ShuttingDown(Exception):
    """The server stops: requests still waiting get this instead of an answer."""


@dataclass
class Job:
    """One chat request for the worker: its prompt, settings and where its answer goes."""

    messages: list[dict[str, str]]
    key: Hashable  # jobs with equal keys may share a batch (same sampling settings)
    settings: dict[str, Any]  # GenerationConfig's fields for this request
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    emit: Callable[[str], None] | None = None  # each new piece of text (streaming)
    finish: Callable[[Any, BaseException | None], None] = lambda answer, error: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    done: bool = False


@dataclass
class Stats:
    """What `/health` reports about the worker."""

    queued: int = 0
    in_flight: int = 0
    batches: int = 0  # model calls made
    rows: int = 0  # requests answered through them
    cancelled: int = 0  # rows stopped early because their client left
    largest_batch: int = 0


class Batcher:
    """The queue and the worker thread. `run(jobs)` answers one batch: one answer per job, each
    with a `finish` ("stop", "length" or "cancelled"); it may hand a job its answer earlier,
    through `complete`, when the job's row ends before the batch does."""

    def __init__(
        self, run: Callable[[list[Job]], list[Any]], max_batch: int, wait_s: float, max_queue: int
    ) -> None:
        self.run, self.max_batch, self.wait_s, self.max_queue = run, max_batch, wait_s, max_queue
        self.pending: deque[Job] = deque()
        self.current: list[Job] = []
        self.counts = Stats()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._work, name="adapt-serve-worker", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything waiting, let the running batch end, and stop the worker."""
        with self.cond:
            self.stopping = True
            for job in self.current:
                job.cancelled.set()
            waiting, self.pending = list(self.pending), deque()
            self.cond.notify_all()
        for job in waiting:
            self.complete(job, None, ShuttingDown("the server is shutting down"))
        self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `QueueFull`."""
        with self.cond:
            if len(self.pending) >= self.max_queue or self.stopping:
                raise QueueFull
            self.pending.append(job)
            self.cond.notify_all()

    def stats(self) -> Stats:
        """A snapshot: jobs cancelled while they wait or run no longer count as queued or in flight."""
        with self.cond:
            live = [j for j in self.current if not j.done and not j.cancelled.is_set()]
            queued = sum(not j.cancelled.is_set() for j in self.pending)
            c = self.counts
            return Stats(queued, len(live), c.batches, c.rows, c.cancelled, c.largest_batch)

    def _take_batch(self) -> list[Job]:
        """Wait for the oldest job, then gather jobs with its key until the window closes."""
        with self.cond:
            while not self.stopping:
                self._drop_cancelled()
                if self.pending:
                    break
                self.cond.wait()
            if self.stopping:
                return []
            first = self.pending.popleft()
            batch, deadline = [first], first.arrived + self.wait_s
            while len(batch) < self.max_batch:
                batch += self._matching(first.key, self.max_batch - len(batch))
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0 or self.stopping:
                    break
                self.cond.wait(left)
            self.current = batch
            return batch

    def _matching(self, key: Hashable, n: int) -> list[Job]:
        """Up to `n` waiting jobs with `key`, taken out of the queue in their order."""
        if key is None:  # a seeded sampled request is answered alone (its own random stream)
            return []
        taken = [j for j in self.pending if j.key == key and not j.cancelled.is_set()][:n]
        for job in taken:
            self.pending.remove(job)
        return taken

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.pending if j.cancelled.is_set()]:
            self.pending.remove(job)
            job.done = True
            job.finish(None, None)

    def complete(self, job: Job, answer: Any, error: BaseException | None = None) -> None:
        """Hand `job` its answer (once): called as soon as its row ends, even mid-batch."""
        with self.cond:
            if job.done:
                return
            job.done = True
            self.counts.cancelled += getattr(answer, "finish", None) == "cancelled"
        job.finish(answer, error)

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                answers, error = self.run(batch), None
            except Exception as err:  # a failed batch answers its requests; the server stays up
                answers, error = [None] * len(batch), err
            for job, answer in zip(batch, answers, strict=True):
                self.complete(job, answer, error)  # those whose rows ended early have theirs
            with self.cond:
                self.counts.batches += 1
                self.counts.rows += len(batch)
                self.counts.largest_batch = max(self.counts.largest_batch, len(batch))
                self.current = []

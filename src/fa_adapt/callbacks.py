"""Trainer callbacks: a Rich progress bar on stderr, and Ctrl-C / SIGTERM → checkpoint, then stop."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

from adapt.errors import UserError


class Interrupted(UserError):
    """Training was stopped by a signal after its checkpoint was saved."""

    exit_code = 130


class RichProgress(TrainerCallback):
    """Step progress with the latest train/validation loss, drawn on stderr by the main process only."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.losses = ""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]finetune"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, losses=""
        )

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, losses=self.losses)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.losses = f"loss {logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.losses += f"  val {logs['eval_loss']:.3f}"
        self.progress.update(self.task, losses=self.losses)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class InterruptCheckpoint(TrainerCallback):
    """On SIGINT/SIGTERM, finish the current step, save a checkpoint and stop training."""

    def __init__(self) -> None:
        self.stopped = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.stopped = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.stopped:
            control.should_save = True
            control.should_training_stop = True
        return control

"""Trainer callbacks: a Rich progress bar on stderr, Ctrl-C / SIGTERM → checkpoint, then stop, and
the record of the step-0 evaluation that `--resume` needs."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adapt.runio import write_json
from adapt.stopping import stop_signals


class RichProgress(TrainerCallback):
    """Step progress with the latest train/validation loss, drawn on stderr by the main process only."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.losses = self.train_loss = self.val_loss = ""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        from rich.progress import TextColumn

        from adapt.console import new_progress

        self.progress = new_progress(TextColumn("{task.fields[losses]}"), transient=False, remaining=True)
        self.progress.start()
        self.task = self.progress.add_task(
            "[bold]finetune", total=state.max_steps, completed=state.global_step, losses=""
        )

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, losses=self.losses)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.train_loss = f"loss {logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.val_loss = f"val {logs['eval_loss']:.3f}"
        self.losses = "  ".join(part for part in (self.train_loss, self.val_loss) if part)
        self.progress.update(self.task, losses=self.losses)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.close()

    def close(self) -> None:
        """Stop drawing (idempotent)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @contextlib.contextmanager
    def closed_on_exit(self) -> Iterator[None]:
        """Stop the bar however training ends: an error raised inside it skips `on_train_end`."""
        try:
            yield
        finally:
            self.close()


class InterruptCheckpoint(TrainerCallback):
    """On SIGINT/SIGTERM, finish the current step, save a checkpoint and stop training.

    A second Ctrl-C stops at once, without the checkpoint (the previous one is kept).
    """

    def __init__(self) -> None:
        self.stopped = False
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.stopped and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stopped, self.signum = True, signum
            sys.stderr.write(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                "(Ctrl-C again stops at once)\n"
            )

        with stop_signals(handler):
            yield

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        stop = self.stopped
        if args.world_size > 1:
            # a signal may reach the ranks in different steps: agree, or one rank would wait forever
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([int(stop)], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
                self.stopped = self.stopped or stop
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control


class RecordStart(TrainerCallback):
    """At the step-0 evaluation, write `settings` and its loss to `path` (JSON), from the main process.

    `--resume` rebuilds a stopped run from that file alone; the loss is the run's starting point.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings
        self.initial_eval_loss: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if state.global_step != 0 or not metrics or "eval_loss" not in metrics:
            return
        self.initial_eval_loss = metrics["eval_loss"]
        if state.is_world_process_zero:
            write_json(self.path, {"settings": self.settings, "initial_eval_loss": self.initial_eval_loss})

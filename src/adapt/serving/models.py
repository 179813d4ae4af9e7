"""The served models: the chat target and the captioner, loaded once, answered through the same
library calls as `adapt generate` (`fa_adapt.generation`) and `adapt caption` (`capkit.captioning`)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.serving.batcher import Job
from adapt.serving.config import NO_CAPTIONER, ServeConfig
from fa_adapt.generation import BASE, Answer, Target, answer_of, generate_batch, load_target
from fa_adapt.streaming import Row


def model_id(spec: str) -> str:
    """The name a model is asked for by (`model` in requests): `base`, `default`, or the folder's name."""
    return spec if spec in (BASE, "default") else Path(spec).resolve().name


@dataclass
class Served:
    """What one server answers with."""

    target: Target
    chat_id: str
    captioner: Any = None  # None with --captioner none
    caption_id: str | None = None
    caption_lock: Any = field(default_factory=threading.Lock)  # one image at a time beside the chat worker


def load_served(config: ServeConfig) -> Served:
    """Load `config.run` and the captioner (UserError for a folder that is neither)."""
    target = load_target(config.run, device=config.device, dtype=config.dtype)
    served = Served(target, model_id(config.run))
    if config.captioner != NO_CAPTIONER:
        from capkit.captioning import load_model

        try:
            served.captioner = load_model(config.captioner)
        except UserError as err:
            raise UserError(f"--captioner: {err}") from None
        served.caption_id = model_id(config.captioner)
    return served


def answer_batch(target: Target, jobs: list[Job], done: Callable[[Job, Answer], None]) -> list[Answer]:
    """One `generate_batch` call for jobs that share their sampling settings (the batcher's key);
    `done(job, answer)` hears of each row as soon as it ends, before the rest of the batch."""
    import torch

    if jobs[0].seed is not None:  # a seeded sampled request runs alone: as `adapt generate --seed`
        torch.manual_seed(jobs[0].seed)

    def row(job: Job) -> Row:
        prompt = job.messages[-1]["content"]
        return Row(
            job.max_new_tokens,
            job.stop,
            job.emit,
            job.cancelled.is_set,
            lambda r: done(job, answer_of(r, prompt)),
        )

    return generate_batch(
        target.model, [j.messages for j in jobs], tokenizer=target.tokenizer, system=target.system,
        batch_size=len(jobs), rows=[row(j) for j in jobs], **jobs[0].settings,
    )  # fmt: skip


def caption_bytes(served: Served, data: bytes, name: str = "image") -> str:
    """The caption `adapt caption` gives the image in `data` (UserError for a non-image)."""
    from capkit.captioning import caption_images

    suffix = Path(name).suffix if len(Path(name).suffix) <= 6 else ""
    fd, path = tempfile.mkstemp(prefix="adapt-serve-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with served.caption_lock:
            result = caption_images(served.captioner, [path])[0]
    except UserError as err:
        reason = str(err).replace(f"{path}: ", "").replace(path, name)  # the temporary file is ours
        raise UserError(f"{name}: {reason}") from None
    finally:
        os.unlink(path)
    return result.caption or ""

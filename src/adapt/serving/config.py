"""`adapt serve`'s settings: the fields are the command's flags (with `GenerationConfig`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapt.errors import UserError
from adapt.runio import check_positive
from adapt.settings import setting
from fa_adapt.generation import GenerationConfig

NO_CAPTIONER = "none"


@dataclass
class ServeConfig:
    """What `adapt serve` serves and how; `generation` holds the answers' defaults."""

    run: str = setting("base", "fa_adapt run folder, `adapt export` folder, or `base`.", cli=False)
    captioner: str = setting(
        "default", "Captioner: `default` (shipped with capkit), a caption-train run folder, or `none`."
    )
    host: str = setting("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    port: int = setting(8000, "Port to listen on (0: any free port).", check="non_negative")
    max_batch: int = setting(8, "Most chat requests decoded together (1 = batching off).", check="positive")
    batch_wait_ms: float = setting(
        5.0, "How long the first request of a batch waits for others to join it.", check="non_negative"
    )
    max_queue: int = setting(
        64, "Most chat requests waiting; more are answered 503 with Retry-After.", check="positive"
    )
    max_body_mb: float = setting(
        10.0, "Largest request body in MB (an image upload included).", check="positive"
    )
    device: str = setting("auto", "Where to run: auto (this process's GPU, else the CPU), cpu, cuda, cuda:N.")
    dtype: str = setting(
        "auto",
        "Compute dtype: auto (bf16 on GPUs and CPUs with avx512_bf16/amx_bf16, else fp32), fp32, bf16.",
    )
    generation: GenerationConfig = setting(default_factory=GenerationConfig, cli=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        for flag, value in (("--max-batch", self.max_batch), ("--max-queue", self.max_queue)):
            check_positive(flag, value)
        check_positive("--batch-wait-ms", self.batch_wait_ms, allow_zero=True)
        check_positive("--max-body-mb", self.max_body_mb)
        if self.captioner not in ("default", NO_CAPTIONER) and not Path(self.captioner).is_dir():
            # said before the chat model loads, which takes longer than this check
            raise UserError(
                f"--captioner {self.captioner}: not a folder; give `default`, `none` or a caption-train run folder"
            )

    @property
    def max_body_bytes(self) -> int:
        """`--max-body-mb` in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

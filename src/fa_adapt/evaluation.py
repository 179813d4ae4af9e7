"""Held-out evaluation: loss / perplexity on assistant tokens, chrF of the answers to the held-out
questions against their reference answers, and answer metrics on prompts.

`evaluate()` measures one model; `evaluate_against_base()` measures a run and its base model
the same way and reports each figure as a change against the base.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from fa_adapt import metrics
from fa_adapt.chatml import Message, with_system
from fa_adapt.device import dtype_record, to_device
from fa_adapt.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    Answer,
    as_messages,
    generate_batch,
    model_device,
    unpack,
)

LOSS_KEYS = ("loss", "perplexity")
# the answers to the held-out questions: chrF against their reference answers, and how many of them
# stop on their own and copy from their question
REFERENCE_KEYS = ("chrf", "heldout_stop_rate", "heldout_prompt_echo")
GENERATION_KEYS = (
    "persian_ratio",
    "repeat_3gram",
    "stop_rate",
    "prompt_echo",
    "answer_tokens_mean",
    "tokens_per_s",
)
# for each metric, whether a higher value is better (used to mark a change as good or bad)
HIGHER_IS_BETTER = {
    "loss": False,
    "perplexity": False,
    "chrf": True,
    "heldout_stop_rate": True,
    "heldout_prompt_echo": False,
    "persian_ratio": True,
    "repeat_3gram": False,
    "stop_rate": True,
    "prompt_echo": False,
    "answer_tokens_mean": None,
    "tokens_per_s": True,
}


def default_heldout_path() -> Path:
    """The packaged 110-conversation Persian held-out set (fa_adapt/data/README.md)."""
    return Path(__file__).parent / "data" / "heldout_fa.jsonl"


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompts {path}: file not found")
    try:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise UserError(f"--prompts {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not prompts:
        raise UserError(f"--prompts {path}: no prompt in the file (one prompt per line)")
    return prompts


def heldout_loss(
    target: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    tokenizer: Any = None,
    batch_size: int = 4,
    max_length: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Mean cross-entropy over the assistant tokens of `conversations`, and how many tokens that was.

    Tokenised exactly as in training (`fa_adapt.data.encode_conversation`: only assistant
    content and its `<|im_end|>` carry labels); rows longer than `max_length` are cut.
    """
    import torch

    from fa_adapt.collator import ChatCollator
    from fa_adapt.data import IGNORE_INDEX, encode_conversation

    model, tokenizer = unpack(target, tokenizer)
    rows = []
    for messages in conversations:
        ids, labels = encode_conversation(tokenizer, list(messages))
        rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    rows = [r for r in rows if any(lab != IGNORE_INDEX for lab in r["labels"])]
    if not rows:
        raise UserError("--data: no conversation has an assistant answer to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = ChatCollator(pad_token_id=pad)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = to_device(collate(rows[start : start + batch_size]), model_device(model))
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # prompt tuning prepends virtual tokens to the logits: keep the positions of the real tokens
        logits = logits[:, -batch["labels"].shape[1] :].float()
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += loss.item()
        count += int((shift_labels != IGNORE_INDEX).sum())
        if on_batch is not None:
            on_batch(len(batch["input_ids"]))
    return total / count, count


def heldout_questions(
    conversations: Sequence[Sequence[dict[str, str]]],
) -> tuple[list[list[dict[str, str]]], list[str]]:
    """(the messages before each conversation's last assistant turn, that turn's text): the questions
    to answer and their reference answers. Conversations without an assistant turn are left out."""
    questions, references = [], []
    for messages in conversations:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is not None and any(m.get("role") == "user" for m in messages[:last]):
            questions.append([dict(m) for m in messages[:last]])
            references.append(messages[last]["content"])
    return questions, references


def reference_score(
    target: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    tokenizer: Any = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, list[Answer], list[str]]:
    """chrF of the model's greedy answers to the held-out questions against their reference answers
    (`metrics.chrf`), the answers, and the references."""
    model, tokenizer = unpack(target, tokenizer)
    questions, references = heldout_questions(conversations)
    answers = generate_batch(
        model, questions, tokenizer=tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size,
        on_batch=on_batch,
    )  # fmt: skip
    return metrics.chrf([a.answer for a in answers], references), answers, references


def answer_metrics(answers: Sequence[Answer]) -> dict[str, float]:
    """persian_ratio, repeat_3gram, stop_rate, prompt_echo, answer_tokens_mean, tokens_per_s of answers."""
    texts = [a.answer for a in answers]
    seconds = sum(a.seconds for a in answers)
    tokens = sum(a.tokens for a in answers)
    return {
        "persian_ratio": metrics.persian_ratio(texts),
        "repeat_3gram": metrics.repeat_ngram_rate(texts, 3),
        "stop_rate": metrics.stop_rate([a.stopped for a in answers]),
        "prompt_echo": metrics.prompt_echo_rate((a.prompt, a.answer) for a in answers),
        "answer_tokens_mean": tokens / len(answers) if answers else 0.0,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def evaluate(
    target: Any,
    conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    prompts: Sequence[str | Sequence[Message]] | None = None,
    tokenizer: Any = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], list[Answer]]:
    """Metrics of one model: loss keys when `conversations` are given, generation keys with `prompts`.

    Returns the metrics and the generated answers (empty without prompts).
    """
    model, tokenizer = unpack(target, tokenizer)
    result: dict[str, float] = {}
    if conversations:
        loss, _ = heldout_loss(
            model, conversations, tokenizer=tokenizer, batch_size=batch_size, on_batch=on_batch
        )
        result.update(loss=loss, perplexity=metrics.perplexity(loss))
    answers: list[Answer] = []
    if prompts:
        answers = generate_batch(
            model,
            list(prompts),
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=on_batch,
        )
        result.update(answer_metrics(answers))
    return result, answers


def changes(run: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """run − base for every metric both have (positive = the run's figure is higher)."""
    out = {}
    for key in run:
        if key in base and math.isfinite(run[key]) and math.isfinite(base[key]):
            out[key] = run[key] - base[key]
    return out


def is_improvement(key: str, change: float) -> bool | None:
    """Whether a change of `key` by `change` is better (None when the metric has no better direction)."""
    higher = HIGHER_IS_BETTER.get(key)
    if higher is None or change == 0:
        return None
    return (change > 0) == higher


def run_evaluation(
    run: str,
    data: str | Path,
    prompts: Sequence[str] | None,
    with_base: bool,
    output: str | Path,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    progress: Callable[[str, int], Any] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    chrf: bool = True,
) -> dict[str, Any]:
    """Evaluate `run` (a run folder or `base`) and, with `with_base`, its base model; write eval.json.

    `progress(description, total)` is a context manager yielding `advance(n)` for a progress bar
    (`adapt.console.progress`). `chrf`: also answer the held-out questions and score the answers
    against the references (`reference_score`).
    The report holds `run`, `base` (with `with_base`), `change` (run − base), the answers (with
    `chrf`, the held-out ones beside their references) and the settings used.
    """
    from adapt.runio import write_json
    from fa_adapt.data import load_conversations
    from fa_adapt.generation import load_target

    conversations, stats = load_conversations(data)
    report: dict[str, Any] = {
        "run_path": run,
        "data": str(data),
        "conversations": len(conversations),
        "bad_rows": stats.bad_rows,
        "prompts": list(prompts or []),
        "max_new_tokens": max_new_tokens,
    }
    how = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "chrf": chrf}
    answers, heldout = {}, {}
    for key, as_base in [("run", False)] + ([("base", True)] if with_base and run != "base" else []):
        target = load_target(run, base=as_base, device=device, dtype=dtype)
        report[key], answers[key], heldout[key] = _evaluate_target(
            key, target, conversations, prompts, how, progress
        )
        del target
    if run == "base" and with_base:
        report["base"] = dict(report["run"])
    if "base" in report:
        report["change"] = changes(report["run"], report["base"])
    report["answers"] = {k: v for k, v in answers.items() if v}
    if chrf:
        report["heldout_answers"] = heldout
    report["settings"] = {
        "command": "evaluate", "run": run, "data": str(data), "prompts": list(prompts or []),
        "with_base": with_base, **how, **dtype_record(device, dtype),
    }  # fmt: skip
    write_json(output, report)
    folder = Path(output).parent
    from fa_adapt.runs import is_run_folder

    if is_run_folder(folder) and (folder / "metrics.json").is_file():
        from fa_adapt.model_card import write_run_card

        write_run_card(folder)  # the run's card now shows the held-out metrics
    return report


def _evaluate_target(
    key: str,
    target: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    prompts: Sequence[str] | None,
    how: dict[str, Any],
    progress: Callable[[str, int], Any] | None,
) -> tuple[dict[str, float], list[dict[str, Any]], list[dict[str, Any]]]:
    """One model's metrics, its answers to the prompts, and (with `how["chrf"]`) to the held-out questions."""
    if target.system:  # a run trained with --system-prompt is scored in that format
        conversations = with_system(conversations, target.system)
        prompts = [as_messages(p, target.system) for p in prompts or []]
    n_questions = len(heldout_questions(conversations)[0]) if how["chrf"] else 0
    total = len(conversations) + len(prompts or []) + n_questions
    bar = progress(f"evaluating {key}", total) if progress else contextlib.nullcontext()
    answering = {"max_new_tokens": how["max_new_tokens"], "batch_size": how["batch_size"]}
    heldout: list[dict[str, Any]] = []
    with bar as advance:
        result, got = evaluate(
            target.model,
            conversations,
            prompts=prompts,
            tokenizer=target.tokenizer,
            on_batch=advance,
            **answering,
        )
        if how["chrf"]:
            score, answered, references = reference_score(
                target.model, conversations, target.tokenizer, on_batch=advance, **answering
            )
            result["chrf"] = score
            shape = answer_metrics(answered)
            result.update(heldout_stop_rate=shape["stop_rate"], heldout_prompt_echo=shape["prompt_echo"])
            heldout = [dict(a.to_dict(), reference=r) for a, r in zip(answered, references, strict=True)]
    return result, [a.to_dict() for a in got], heldout


def report_table(report: dict[str, Any]) -> Any:
    """A Rich table of an evaluation report: metric, run, base, change (green = better, red = worse)."""
    from rich.table import Table

    has_base = "base" in report
    table = Table(title=f"evaluation of {report['run_path']} on {report['data']}")
    table.add_column("metric")
    table.add_column("run", justify="right")
    if has_base:
        table.add_column("base", justify="right")
        table.add_column("change", justify="right")
    for key in (*LOSS_KEYS, *REFERENCE_KEYS, *GENERATION_KEYS):
        if key not in report["run"]:
            continue
        row = [key, f"{report['run'][key]:.4f}"]
        if has_base:
            delta = report["change"].get(key)
            good = is_improvement(key, delta) if delta is not None else None
            colour = {True: "green", False: "red", None: "white"}[good]
            row += [
                f"{report['base'][key]:.4f}",
                f"[{colour}]{delta:+.4f}[/{colour}]" if delta is not None else "",
            ]
        table.add_row(*row)
    return table

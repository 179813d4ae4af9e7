"""Terminal chat: history, /reset, /exit, and right-to-left display order."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from rich.console import Console

from fa_adapt.chat import display, run_chat, visual_order
from fa_adapt.generation import Target, generate

_spec = importlib.util.spec_from_file_location("fa_tiny_chat", Path(__file__).with_name("tiny_chat.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def test_visual_order_reverses_rtl_and_keeps_ltr_runs():
    assert visual_order("hello world") == "hello world"  # no RTL letters: unchanged
    assert visual_order("سلام") == "مالس"
    # Latin and number runs keep reading order, placed as a right-to-left reader meets them
    assert visual_order("من GPT-4 هستم") == "متسه GPT-4 نم"
    assert visual_order("سال ۱۴۰۲ (خوب)") == "(بوخ) ۱۴۰۲ لاس"
    assert display("سلام\nhi", "visual") == "مالس\nhi"
    assert display("سلام", "terminal") == "سلام"


def test_chat_keeps_history_resets_and_exits():
    model, tok = tiny.model_and_tokenizer()
    target = Target("base", model, tok)
    lines = iter(["سلام", "", "یک شعر بگو", "/reset", "ملکه الیزابت کیست؟", "/exit", "never read"])
    buf = io.StringIO()
    console = Console(file=buf, width=100)
    history = run_chat(target, system="کوتاه", console=console, read=lambda _: next(lines), max_new_tokens=5)
    # after /reset only the system message and the last exchange remain
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "ملکه الیزابت کیست؟"
    # the answer was generated with the history as context, and streamed to the console
    expected = generate(model, history[:2], tokenizer=tok, max_new_tokens=5)
    assert history[2]["content"] == expected.answer
    assert "history cleared" in buf.getvalue()


def test_chat_turns_use_earlier_turns_and_end_on_eof():
    model, tok = tiny.model_and_tokenizer()
    lines = iter(["سلام", "یک شعر بگو"])

    def read(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    history = run_chat(
        Target("base", model, tok),
        console=Console(file=io.StringIO()),
        read=read,
        rtl="visual",
        max_new_tokens=5,
    )
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    second = generate(model, history[:3], tokenizer=tok, max_new_tokens=5)
    assert history[3]["content"] == second.answer

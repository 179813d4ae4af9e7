"""Interactive multi-turn chat in the terminal, with right-to-left Persian shown readably.

Most modern terminals (GNOME/VTE, Konsole, iTerm2, mlterm) reorder right-to-left text themselves;
`rtl="terminal"` streams the answer as is and right-aligns nothing. Terminals that do not (e.g.
many Windows consoles, tmux in some setups) show Persian letters backwards; `rtl="visual"`
reorders each line here with a small, dependency-free approximation of the Unicode bidi
algorithm for text that is mostly right-to-left: the line is reversed, then left-to-right runs
(Latin words, numbers) are put back in reading order and paired brackets are mirrored.
Letter shaping (joined forms) stays the terminal's job.
"""

from __future__ import annotations

import re
from typing import Any

from fa_adapt.generation import Target, generate
from fa_adapt.metrics import is_persian_letter

# a left-to-right run: Latin letters / digits (ASCII, Persian, Arabic-Indic), joined by spaces and light punctuation
_LTR_RUN = re.compile(
    r"[A-Za-z0-9\u06F0-\u06F9\u0660-\u0669]+(?:[ .,:'/+\-]+[A-Za-z0-9\u06F0-\u06F9\u0660-\u0669]+)*"
)
_MIRROR = str.maketrans("()[]{}<>«»", ")(][}{><»«")

HELP = "Type a message. /reset clears the history, /exit (or Ctrl-D) quits."


RTL_MODES = ("terminal", "visual", "off")  # --rtl: the terminal does bidi itself, reorder here, or not at all


def visual_order(line: str) -> str:
    """Reorder one logical line into display order for a terminal without bidi support.

    Lines without right-to-left letters are returned unchanged.
    """
    if not any(is_persian_letter(ch) for ch in line):
        return line
    reversed_line = line[::-1].translate(_MIRROR)
    return _LTR_RUN.sub(lambda m: m.group(0)[::-1], reversed_line)


def display(text: str, rtl: str) -> str:
    """Text as it should be printed for the `rtl` mode (terminal / visual / off)."""
    if rtl != "visual":
        return text
    return "\n".join(visual_order(line) for line in text.split("\n"))


def run_chat(
    target: Target,
    system: str | None = None,
    rtl: str = "terminal",
    console: Any = None,
    read: Any = None,
    **generation: Any,
) -> list[dict[str, str]]:
    """Chat until /exit or end of input; returns the final history. `read(prompt)` reads a line."""
    from rich.console import Console

    console = console or Console()
    read = read or (lambda prompt: console.input(prompt))
    system = target.system if system is None else system  # a run's --system-prompt by default
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    console.print(f"[dim]{HELP}[/dim]")
    while True:
        try:
            line = read("[bold cyan]you>[/bold cyan] ").strip()
        except EOFError:
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = history[:1] if system else []
            console.print("[dim]history cleared[/dim]")
            continue
        history.append({"role": "user", "content": line})
        console.print("[bold green]model>[/bold green] ", end="")
        stream = None
        if rtl != "visual":  # visual reordering needs whole lines, so that mode prints at the end

            def stream(piece: str) -> None:
                console.print(piece, end="", markup=False, highlight=False)

        answer = generate(target.model, history, tokenizer=target.tokenizer, stream=stream, **generation)
        if stream is None:
            console.print(display(answer.answer, rtl), markup=False, highlight=False, end="")
        console.print("" if answer.stopped else " [dim]…(limit)[/dim]")
        history.append({"role": "assistant", "content": answer.answer})
    return history

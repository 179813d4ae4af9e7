"""`fa_adapt.streaming.RowStream` on a real tokenizer: stop strings are cut and never half-sent,
a half-decoded Persian letter is held back, and each row ends once (length, stop, cancelled)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fa_adapt.streaming import RowStream

_spec = importlib.util.spec_from_file_location("fa_tiny_chat_s", Path(__file__).with_name("tiny_chat.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

TEXT = "سلام، حال شما چطور است؟ من خوبم، ممنون."


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


def feed(tok, row: RowStream, text: str = TEXT) -> None:
    for token in tok(text, add_special_tokens=False)["input_ids"]:
        row.add(token)
        if row.finish:
            break


@pytest.mark.parametrize("stop", ["شما", "است؟ من", "، م", "xyz"])
def test_a_stop_string_is_cut_and_never_half_sent(tok, stop):
    pieces, ended = [], []
    row = RowStream(tok, set(), 1000, [stop], pieces.append, on_finish=ended.append)
    feed(tok, row)
    want = TEXT.split(stop)[0]
    assert row.text == want and "".join(pieces) == want
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))
    if stop in TEXT:
        assert row.finish == "stop" and ended == [row]
    else:  # fed to the end without a stop: still open; the batch's end closes it as "length"
        assert row.finish is None and not ended
        row.end("length")
        row.end("stop")  # a second end changes nothing
        assert row.finish == "length" and ended == [row]


def test_length_limit_stop_token_and_cancel(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    row = RowStream(tok, set(), 3)
    feed(tok, row)
    assert (row.finish, row.tokens, row.ids) == ("length", 3, ids[:3])
    end_id = tok.eos_token_id
    row = RowStream(tok, {end_id}, 100)
    for t in [*ids[:2], end_id, *ids[2:]]:
        row.add(t)
    assert (row.finish, row.ids, row.end_id, row.tokens) == ("stop", ids[:2], end_id, 3)
    gone, pieces = False, []
    row = RowStream(tok, set(), 100, emit=pieces.append, cancelled=lambda: gone)
    row.add(ids[0])
    assert not row.check_cancelled()
    gone = True
    assert row.check_cancelled() and row.finish == "cancelled"
    row.add(ids[1])  # ignored once finished
    assert row.ids == ids[:1]


def test_a_half_decoded_letter_is_held_back(tok):
    """ "ش" fed as its two single-byte tokens: the first alone decodes to U+FFFD, never sent."""
    ((byte_chars, _),) = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("ش")
    first, second = tok.convert_tokens_to_ids(list(byte_chars))
    pieces = []
    row = RowStream(tok, set(), 100, emit=pieces.append)
    row.add(first)
    assert row.text == "\ufffd" and pieces == []
    row.add(second)
    row.add(tok.convert_tokens_to_ids("!"))
    assert pieces == ["ش", "!"]

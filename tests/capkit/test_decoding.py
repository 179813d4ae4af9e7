"""Decoding strategies on a hand-built decoder whose next-word logits are a fixed table."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adapt.errors import UserError
from capkit.decoding import STRATEGIES, _banned_next, attention_weights, decode

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, START, END, UNK = 0, 1, 2, 3
IDS = SimpleNamespace(pad_id=PAD, start_id=START, end_id=END, unk_id=UNK)
A, B, C, D = 4, 5, 6, 7
V = 8


class TableDecoder(nn.Module):
    """next-word logits = table[previous word] + pooled (a per-image bias of size V).

    It implements exactly the incremental interface capkit's decoders expose, and reports a
    made-up attention over a 2-cell grid so the attention replay can be checked.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.vocab_size = table.shape[0]

    def init_state(self, pooled, grid):
        return {"bias": pooled.clone(), "steps": torch.zeros(pooled.shape[0], dtype=torch.long)}

    def step(self, tokens, state):
        logits = self.table[tokens] + state["bias"]
        steps = state["steps"] + 1
        alpha = torch.stack([1.0 / steps, 1.0 - 1.0 / steps], dim=-1).float()
        return logits, {"bias": state["bias"], "steps": steps, "alpha": alpha}

    def reorder_state(self, state, index):
        return {key: value.index_select(0, index) for key, value in state.items()}


def log_table(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """A V x V table of log-probabilities; unspecified words share what is left of each row."""
    table = torch.full((V, V), -30.0)
    for prev, probs in rows.items():
        for word, p in probs.items():
            table[prev, word] = math.log(p)
    return table


def no_bias(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, V)


def sequence_logprob(table: torch.Tensor, words: list[int]) -> float:
    logp, prev = 0.0, START
    for word in [*words, END]:
        logp += float(table[prev].log_softmax(-1)[word])
        prev = word
    return logp


def test_greedy_picks_the_argmax_and_stops_at_end():
    table = log_table({START: {A: 0.6, B: 0.4}, A: {C: 0.7, END: 0.3}, C: {END: 0.9, D: 0.1}})
    assert decode(TableDecoder(table), no_bias(), None, IDS, "greedy") == [[A, C]]


def test_special_tokens_are_never_emitted_even_when_most_likely():
    table = log_table({START: {UNK: 0.5, PAD: 0.2, START: 0.2, A: 0.1}, A: {END: 1.0}})
    for name in STRATEGIES:
        assert decode(TableDecoder(table), no_bias(), None, IDS, name) == [[A]], name


def test_length_limit_stops_a_caption_that_never_ends():
    table = log_table({START: {A: 1.0}, A: {A: 0.9, END: 0.1}})
    for name, length in [("greedy", 5), ("beam", 5)]:
        assert decode(TableDecoder(table), no_bias(), None, IDS, name, max_len=length) == [[A] * 5]


def test_no_repeat_never_repeats_a_word():
    # The table loves loops: greedy repeats A forever, no-repeat must move on and then end.
    table = log_table(
        {START: {A: 0.9, B: 0.1}, A: {A: 0.8, B: 0.15, END: 0.05}, B: {A: 0.7, B: 0.2, END: 0.1}}
    )
    assert decode(TableDecoder(table), no_bias(), None, IDS, "greedy", max_len=6) == [[A] * 6]
    assert decode(TableDecoder(table), no_bias(), None, IDS, "no-repeat", max_len=6) == [[A, B]]


def test_no_repeat_on_random_tables_has_no_repeated_word_or_ngram():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        table = torch.randn(V, V, generator=generator) * 3
        table[:, END] -= 4  # make captions long enough to be tempted to repeat
        bias = torch.randn(4, V, generator=generator)
        for caption in decode(TableDecoder(table), bias, None, IDS, "no-repeat", max_len=12):
            assert len(caption) == len(set(caption))
            assert not {PAD, START, END, UNK} & set(caption)
        for caption in decode(TableDecoder(table), bias, None, IDS, "beam", max_len=12, no_repeat_ngram=2):
            bigrams = list(zip(caption, caption[1:], strict=False))
            assert len(bigrams) == len(set(bigrams))


def test_banned_next_for_ngrams():
    assert _banned_next([A, B, A], 1) == {A, B}
    assert _banned_next([A, B, C, A], 2) == {B}  # "A B" was seen; after A, B is banned
    assert _banned_next([A, B, C, A, B], 3) == {C}
    assert _banned_next([A], 2) == set()


def test_beam_with_one_beam_equals_greedy():
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        table = torch.randn(V, V, generator=generator) * 2
        bias = torch.randn(3, V, generator=generator)
        decoder = TableDecoder(table)
        greedy = decode(decoder, bias, None, IDS, "greedy", max_len=10)
        assert decode(decoder, bias, None, IDS, "beam", beam_size=1, max_len=10) == greedy


def test_beam_finds_a_more_likely_caption_than_greedy():
    # Greedy takes A (0.55) and then has only a 0.3 chance to end; B (0.45) ends with 0.9.
    table = log_table(
        {START: {A: 0.55, B: 0.45}, A: {END: 0.3, C: 0.25, D: 0.25, B: 0.2}, B: {END: 0.9, C: 0.1}}
    )
    decoder = TableDecoder(table)
    greedy = decode(decoder, no_bias(), None, IDS, "greedy")[0]
    beam = decode(decoder, no_bias(), None, IDS, "beam", beam_size=2)[0]
    assert greedy == [A] and beam == [B]
    assert sequence_logprob(table, beam) > sequence_logprob(table, greedy)


def test_beam_length_normalisation_prefers_the_better_per_word_caption():
    # "A": P = .5*.6 = .30 over 2 tokens; "B C D": P = .499*.8*.8*.8 = .256 over 4 tokens.
    # Raw probability (penalty 0) prefers "A"; per-token (penalty 1) prefers "B C D".
    table = log_table(
        {
            START: {A: 0.5, B: 0.499},
            A: {END: 0.6, D: 0.4},
            B: {C: 0.8, END: 0.2},
            C: {D: 0.8, END: 0.2},
            D: {END: 0.8, A: 0.2},
        }
    )
    decoder = TableDecoder(table)
    assert decode(decoder, no_bias(), None, IDS, "beam", beam_size=3, length_penalty=0.0) == [[A]]
    assert decode(decoder, no_bias(), None, IDS, "beam", beam_size=3, length_penalty=1.0) == [[B, C, D]]


def test_batch_equals_one_image_at_a_time():
    generator = torch.Generator().manual_seed(2)
    table = torch.randn(V, V, generator=generator) * 2
    bias = torch.randn(5, V, generator=generator) * 2
    decoder = TableDecoder(table)
    for name in STRATEGIES:
        batched = decode(decoder, bias, None, IDS, name, max_len=8, beam_size=3)
        single = [
            decode(decoder, bias[i : i + 1], None, IDS, name, max_len=8, beam_size=3)[0] for i in range(5)
        ]
        assert batched == single, name
    assert len({tuple(c) for c in batched}) > 1  # the images really differ


def test_attention_replay_gives_one_row_per_word():
    table = log_table({START: {A: 1.0}, A: {B: 1.0}, B: {END: 1.0}})
    decoder = TableDecoder(table)
    caption = decode(decoder, no_bias(), torch.zeros(1, 2, 3), IDS, "greedy")[0]
    weights = attention_weights(decoder, no_bias(), torch.zeros(1, 2, 3), IDS, caption)
    assert weights.shape == (2, 2)
    assert torch.allclose(weights[:, 0], torch.tensor([1.0, 0.5]))


def test_bad_arguments_are_user_errors():
    decoder = TableDecoder(log_table({START: {END: 1.0}}))
    with pytest.raises(UserError, match="--decoding"):
        decode(decoder, no_bias(), None, IDS, "sample")
    with pytest.raises(UserError, match="--beam-size"):
        decode(decoder, no_bias(), None, IDS, "beam", beam_size=0)

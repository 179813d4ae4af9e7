"""Every strategy with every real decoder (tiny, random): batch equals single, k=1 beam equals greedy."""

import pytest
import torch

from capkit.decoders import DECODERS, build_decoder
from capkit.decoding import STRATEGIES, attention_weights, decode
from capkit.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = Vocab(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(20)]])
SMALL = {
    "lstm": {"embed_dim": 16, "hidden_dim": 24},
    "attention": {"embed_dim": 16, "hidden_dim": 24, "attention_dim": 16, "context_dim": 24},
    "transformer": {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 2},
}
# the ensemble of all three: every strategy must work with it too (capkit.decoders.ensemble)
SMALL["ensemble"] = {"members": [{"decoder": k, "decoder_config": v} for k, v in SMALL.items()]}


def tiny(name: str):
    torch.manual_seed(0)
    decoder = build_decoder(name, len(VOCAB), 12, pad_id=VOCAB.pad_id, **SMALL[name]).eval()
    with torch.no_grad():
        for part in getattr(decoder, "members", [decoder]):
            part.out.bias[VOCAB.end_id] -= 2.0  # random weights end too soon to test anything
    return decoder


def features(batch: int):
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 12, generator=generator) * 6, torch.rand(batch, 9, 12, generator=generator) * 6


@pytest.mark.parametrize("name", list(DECODERS))
def test_batch_equals_single_for_every_strategy(name):
    decoder = tiny(name)
    pooled, grid = features(4)
    for strategy in STRATEGIES:
        batched = decode(decoder, pooled, grid, VOCAB, strategy, max_len=10, beam_size=3)
        single = [
            decode(decoder, pooled[i : i + 1], grid[i : i + 1], VOCAB, strategy, max_len=10, beam_size=3)[0]
            for i in range(4)
        ]
        assert batched == single, strategy
        assert all(len(c) <= 10 and not {0, 1, 2, 3} & set(c) for c in batched)


@pytest.mark.parametrize("name", list(DECODERS))
def test_beam_of_one_is_greedy_and_no_repeat_never_repeats(name):
    decoder = tiny(name)
    pooled, grid = features(5)
    greedy = decode(decoder, pooled, grid, VOCAB, "greedy", max_len=12)
    assert decode(decoder, pooled, grid, VOCAB, "beam", beam_size=1, max_len=12) == greedy
    for caption in decode(decoder, pooled, grid, VOCAB, "no-repeat", max_len=12):
        assert len(caption) == len(set(caption))


@pytest.mark.parametrize("name", list(DECODERS))
def test_beam_scores_at_least_as_well_as_greedy_under_the_model(name):
    decoder = tiny(name)
    pooled, grid = features(6)

    @torch.no_grad()
    def logprob(i: int, caption: list[int], ended: bool) -> float:
        tokens = torch.tensor([[VOCAB.start_id, *caption, *([VOCAB.end_id] if ended else [])]])
        logp = decoder(pooled[i : i + 1], grid[i : i + 1], tokens)[0, :-1].log_softmax(-1)
        # The decoders never emit pad/start/unk, so those are not part of the competition.
        return float(logp.gather(1, tokens[0, 1:, None]).sum())

    greedy = decode(decoder, pooled, grid, VOCAB, "greedy", max_len=12)
    beam = decode(decoder, pooled, grid, VOCAB, "beam", beam_size=4, max_len=12, length_penalty=0.0)
    # Raw log-probability (penalty 0): a wider beam finds captions at least as likely as greedy's.
    # A caption cut off by the length limit has no end token, so it is scored without one.
    for i in range(6):
        assert logprob(i, beam[i], len(beam[i]) < 12) >= logprob(i, greedy[i], len(greedy[i]) < 12) - 1e-4


def test_attention_replay_matches_the_attention_of_teacher_forcing():
    decoder = tiny("attention")
    pooled, grid = features(1)
    caption = decode(decoder, pooled, grid, VOCAB, "greedy", max_len=6)[0]
    replay = attention_weights(decoder, pooled, grid, VOCAB, caption)
    tokens = torch.tensor([[VOCAB.start_id, *caption]])
    _, alphas = decoder(pooled, grid, tokens, return_alphas=True)
    assert torch.allclose(replay, alphas[0, : len(caption)], atol=1e-6)
    assert torch.allclose(replay.sum(-1), torch.ones(len(caption)), atol=1e-5)

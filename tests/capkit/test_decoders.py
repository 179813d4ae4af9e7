"""The three decoders: shapes, causal masking, step-by-step decoding equal to teacher forcing."""

import pytest
import torch

from adapt.errors import UserError
from capkit.decoders import DECODERS, build_decoder

V, D, HW = 23, 16, 49
TINY = {
    "lstm": {"embed_dim": 8, "hidden_dim": 12},
    "attention": {"embed_dim": 8, "hidden_dim": 12, "attention_dim": 6, "context_dim": 10},
    "transformer": {"width": 16, "heads": 2, "decoder_layers": 2},
}
# the ensemble of all three keeps the same contract (capkit.decoders.ensemble)
TINY["ensemble"] = {"members": [{"decoder": k, "decoder_config": v} for k, v in TINY.items()]}


def _inputs(batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, V, (batch, length), generator=g)
    captions[:, 0] = 1
    return torch.randn(batch, D, generator=g), torch.rand(batch, HW, D, generator=g), captions


@pytest.fixture(params=list(DECODERS))
def decoder(request):
    torch.manual_seed(0)
    return build_decoder(request.param, V, D, **TINY[request.param]).eval()


def test_forward_shape_and_loss(decoder):
    pooled, grid, captions = _inputs()
    assert decoder.vocab_size == V
    assert decoder(pooled, grid, captions).shape == (3, 7, V)
    out = decoder.loss(pooled, grid, captions)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["ce"] <= out["loss"] + 1e-6
    out["loss"].backward()
    assert all(p.grad is not None for p in decoder.parameters() if p.requires_grad and p.ndim > 1)


def test_step_equals_teacher_forcing(decoder):
    pooled, grid, captions = _inputs()
    with torch.no_grad():
        full = decoder(pooled, grid, captions)
        state = decoder.init_state(pooled, grid)
        steps = []
        for t in range(captions.shape[1]):
            logits, state = decoder.step(captions[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert all(v.shape[0] == 3 for v in state.values())


def test_future_and_padding_do_not_change_earlier_logits(decoder):
    pooled, grid, captions = _inputs()
    changed = captions.clone()
    changed[:, 4:] = 0  # pad the tail
    with torch.no_grad():
        a, b = decoder(pooled, grid, captions), decoder(pooled, grid, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    # pad targets are ignored by the loss: only the first 3 predictions count
    short = decoder.loss(pooled, grid, changed)["ce"]
    expected = torch.nn.functional.cross_entropy(b[:, :3].reshape(-1, V), changed[:, 1:4].reshape(-1))
    torch.testing.assert_close(short, expected)


def test_reorder_state_selects_rows(decoder):
    pooled, grid, captions = _inputs()
    with torch.no_grad():
        state = decoder.init_state(pooled, grid)
        _, state = decoder.step(captions[:, 0], state)
        index = torch.tensor([2, 2, 0])
        reordered = decoder.reorder_state(state, index)
        got, _ = decoder.step(captions[index, 1], reordered)
        want, _ = decoder.step(captions[:, 1], state)
    torch.testing.assert_close(got, want[index])


def test_attention_weights_are_distributions():
    torch.manual_seed(0)
    decoder = build_decoder("attention", V, D, **TINY["attention"]).eval()
    pooled, grid, captions = _inputs()
    logits, alphas = decoder(pooled, grid, captions, return_alphas=True)
    assert alphas.shape == (3, 7, HW)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(3, 7))
    _, state = decoder.step(captions[:, 0], decoder.init_state(pooled, grid))
    assert state["alpha"].shape == (3, HW)


def test_unknown_decoder_lists_choices():
    with pytest.raises(UserError, match="lstm, attention, transformer"):
        build_decoder("gru", V, D)

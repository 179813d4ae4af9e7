"""Caption decoders, keyed by the names `--decoder` accepts; all share `capkit.decoders.base.Decoder`."""

from __future__ import annotations

from typing import Any

from adapt.errors import UserError
from capkit.decoders.attention import AttentionDecoder
from capkit.decoders.base import Decoder, State
from capkit.decoders.lstm import LSTMDecoder
from capkit.decoders.transformer import TransformerDecoder

DECODERS: dict[str, type[Decoder]] = {
    "lstm": LSTMDecoder,
    "attention": AttentionDecoder,
    "transformer": TransformerDecoder,
}


def build_decoder(name: str, vocab_size: int, feature_dim: int, **cfg: Any) -> Decoder:
    """A fresh decoder of registry type `name`; `cfg` overrides its constructor defaults."""
    if name not in DECODERS:
        raise UserError(f"--decoder: unknown decoder {name!r}; choose one of: {', '.join(DECODERS)}")
    try:
        return DECODERS[name](vocab_size, feature_dim, **cfg)
    except TypeError as err:
        raise UserError(f"--decoder {name}: bad configuration ({err})") from None


__all__ = [
    "DECODERS",
    "Decoder",
    "State",
    "build_decoder",
    "AttentionDecoder",
    "LSTMDecoder",
    "TransformerDecoder",
]

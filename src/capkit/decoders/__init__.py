"""Caption decoders, keyed by the names `--decoder` accepts; all share `capkit.decoders.base.Decoder`.

`DECODERS` holds the built-in ones and those added with `capkit.register_decoder`; a name not in it
is looked up in the `capkit.decoders` entry-point group (`capkit.plugins`).
"""

from __future__ import annotations

from typing import Any

from adapt.errors import UserError
from capkit import plugins
from capkit.decoders.attention import AttentionDecoder
from capkit.decoders.base import Decoder, State
from capkit.decoders.ensemble import EnsembleDecoder
from capkit.decoders.lstm import LSTMDecoder
from capkit.decoders.transformer import TransformerDecoder

DECODERS: dict[str, type[Decoder]] = {
    "lstm": LSTMDecoder,
    "attention": AttentionDecoder,
    "transformer": TransformerDecoder,
    # loads ensemble folders (`adapt caption-ensemble`); never trained, so not a `--decoder` choice
    "ensemble": EnsembleDecoder,
}


def decoder_class(cls: Any) -> type[Decoder]:
    """`cls` when it is a `Decoder` subclass; a `TypeError` saying what it is otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, Decoder)):
        raise TypeError(f"{cls!r} is not a subclass of capkit.decoders.base.Decoder")
    return cls


def find_decoder(name: str) -> type[Decoder] | None:
    """The decoder class registered (or offered by an entry point) as `name`, else None."""
    return plugins.find(DECODERS, plugins.DECODER, name, decoder_class)


def decoder_names() -> list[str]:
    """Every name `--decoder` accepts: the registry's and the entry points'."""
    return plugins.available(DECODERS, plugins.DECODER)


def build_decoder(name: str, vocab_size: int, feature_dim: int, **cfg: Any) -> Decoder:
    """A fresh decoder of registry type `name`; `cfg` overrides its constructor defaults."""
    cls = find_decoder(name)
    if cls is None:
        raise UserError(
            f"--decoder: unknown decoder {name!r}; choose one of: {', '.join(decoder_names())}, "
            f"or {plugins.DECODER.hint(name)}"
        )
    try:
        return cls(vocab_size, feature_dim, **cfg)
    except TypeError as err:
        raise UserError(f"--decoder {name}: bad configuration ({err})") from None


__all__ = [
    "DECODERS",
    "Decoder",
    "State",
    "build_decoder",
    "decoder_class",
    "decoder_names",
    "find_decoder",
    "AttentionDecoder",
    "EnsembleDecoder",
    "LSTMDecoder",
    "TransformerDecoder",
]

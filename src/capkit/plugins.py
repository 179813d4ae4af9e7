"""Plug-ins: encoders, decoders and decodings added to capkit's registries from user code or from
an installed package's entry points.

    import capkit
    capkit.register_decoder("mine", MyDecoder)  # now `--decoder mine`, and its runs load back

A name that is not in its registry is looked up in the entry-point group of its kind
(`capkit.encoders`, `capkit.decoders`, `capkit.decodings`) before it is refused, so a package that
declares `[project.entry-points."capkit.decoders"] mine = "mypkg.decoders:MyDecoder"` makes `mine`
known in every process, `adapt caption --model RUN` included, with nothing imported by hand.

The registries stay plain dicts in the modules that own them (`capkit.encoders.ENCODERS`,
`capkit.decoders.DECODERS`, `capkit.decoding.STRATEGIES`), keyed by the names the CLI accepts.
This module imports none of them at import time: it is torch-free, so `adapt --help` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from adapt.errors import UserError

# A name is a CLI value and part of folder names (`caption-eval` rows, the feature cache), and `=`
# would read as `--encoder NAME=weights.pth`: letters, digits, `_ . -` only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Kind:
    """One kind of plug-in: its entry-point group and the function that registers one."""

    name: str  # "encoder", "decoder", "decoding"
    group: str
    register: str

    def hint(self, name: str) -> str:
        """How to make `name` known: the sentence a 'not registered' error ends with."""
        return (
            f"import the module that calls capkit.{self.register}({name!r}, ...) before using it, "
            f"or install a package with a {self.group!r} entry point named {name!r}"
        )


ENCODER = Kind("encoder", "capkit.encoders", "register_encoder")
DECODER = Kind("decoder", "capkit.decoders", "register_decoder")
DECODING = Kind("decoding", "capkit.decodings", "register_decoding")


def add(registry: MutableMapping[str, Any], kind: Kind, name: str, value: Any, replace: bool = False) -> None:
    """Put `value` into `registry` under `name`; an existing name only with `replace=True`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind.name} name {name!r}: use letters, digits, '_', '.' or '-' (it is a CLI value)"
        )
    if name in registry and not replace:
        raise ValueError(f"{kind.name} {name!r} is already registered; pass replace=True to replace it")
    registry[name] = value


def find(
    registry: MutableMapping[str, Any], kind: Kind, name: str, convert: Callable[[Any], Any] = lambda v: v
) -> Any | None:
    """`registry[name]`, else the entry point of that name in the kind's group, loaded, converted
    by `convert` (which raises `TypeError` for a wrong object) and registered; None when neither exists."""
    if name in registry:
        return registry[name]
    point = _entry_point(kind, name)
    if point is None:
        return None
    try:
        loaded = point.load()
    except Exception as err:  # anything the plug-in's import raises: one line, not a traceback
        raise UserError(
            f"{kind.name} {name!r}: entry point {point.value} ({kind.group}) failed to load: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if name in registry:  # the plug-in's module registered it itself while being imported
        return registry[name]
    try:
        registry[name] = convert(loaded)
    except TypeError as err:
        raise UserError(f"{kind.name} {name!r}: entry point {point.value} ({kind.group}): {err}") from None
    return registry[name]


def available(registry: MutableMapping[str, Any], kind: Kind) -> list[str]:
    """The registry's names, then those entry points offer (not loaded: listing imports nothing)."""
    offered = [point.name for point in _entry_points(kind)]
    return list(dict.fromkeys([*registry, *offered]))


def _entry_points(kind: Kind) -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=kind.group))


def _entry_point(kind: Kind, name: str) -> Any | None:
    return next((point for point in _entry_points(kind) if point.name == name), None)


# ---------------------------------------------------------------- the public functions
def register_encoder(name: str, factory: Callable[[], Any], *, replace: bool = False) -> None:
    """Make `--encoder NAME` (and runs trained with it) use `factory()`, which returns a
    `capkit.encoders.Encoder`. Raises ValueError when NAME is taken, unless `replace=True`."""
    from capkit.encoders import ENCODERS, encoder_factory

    add(ENCODERS, ENCODER, name, encoder_factory(factory), replace)


def register_decoder(name: str, cls: type, *, replace: bool = False) -> None:
    """Make `--decoder NAME` build `cls`, a `capkit.decoders.base.Decoder` subclass constructed as
    `cls(vocab_size, feature_dim, pad_id=..., **decoder_config)`; its runs load back by that name.
    Raises ValueError when NAME is taken, unless `replace=True`."""
    from capkit.decoders import DECODERS, decoder_class

    add(DECODERS, DECODER, name, decoder_class(cls), replace)


def register_decoding(
    name: str,
    fn: Callable[..., list[list[int]]],
    *,
    replace: bool = False,
    default_no_repeat_ngram: int = 0,
    description: str | None = None,
) -> None:
    """Make `--decoding NAME` run `fn(decoder, pooled, grid, ids, max_len=, no_repeat_ngram=,
    beam_size=, length_penalty=)`, which returns one list of word ids per image (see
    `capkit.decoding`). Raises ValueError when NAME is taken, unless `replace=True`."""
    from capkit.decoding import STRATEGIES, strategy_of

    add(STRATEGIES, DECODING, name, strategy_of(fn, default_no_repeat_ngram, description), replace)

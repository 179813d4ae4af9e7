"""`adapt caption-ensemble RUN RUN ... --output DIR`: join finished runs into one captioner.

The folder written is an ordinary run folder (`decoder.safetensors`, `word_to_id.json`,
`config.json`, a model card, a summary) whose decoder is `ensemble`
(`capkit.decoders.ensemble.EnsembleDecoder`): at each step it averages its members' word
probabilities. So `load_captioner`, `adapt caption --model DIR`, `caption-eval` and `adapt serve`
take it like any run. The members must share the encoder (one set of image features) and the
vocabulary (the same word ids), which runs trained on the same data with the same `--min-count`
and `--seed` do; anything else is a one-line error naming the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.model_card import table, write_card
from adapt.run_folder import claim_output
from adapt.runio import atomic_path, write_json, write_text
from capkit import runs
from capkit.captioning import DECODING_FILE
from capkit.train_config import ENSEMBLE as NAME


def make_ensemble(
    members: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    overwrite: bool = False,
    decoding_from: str | os.PathLike[str] | None = None,
    half: bool = False,
) -> Path:
    """Write an ensemble of the finished runs `members` into `output`; return the folder.

    `decoding_from`: a folder whose `decoding.json` (the decoding a model is best used with, as
    the shipped default has) the ensemble keeps; without one it decodes greedily, like any run.
    `half`: store the weights as float16 (half the size; the scores of the shipped default did not
    change in float16).
    """
    if len(members) < 2:
        raise UserError("caption-ensemble needs at least two RUN folders to join")
    out = Path(output)
    if any(Path(m).resolve() == out.resolve() for m in members):
        raise UserError(f"--output {out}: give another folder (it is one of the members)")
    captioners = [runs.load_captioner(m) for m in members]
    _check_compatible(captioners)
    if runs.is_run_folder(out) and not overwrite:
        raise UserError(f"--output {out} already holds a capkit run; pass --overwrite to replace it")
    claim_output(out, "capkit", runs.is_run_folder, runs.RUN_ENTRIES, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    config = _config(captioners, out)
    _save_weights(out, captioners, half)
    captioners[0].vocab.save(out / runs.VOCAB)
    if decoding_from is not None:
        _copy_decoding(Path(decoding_from), out)
    write_text(out / "summary.md", _summary(out, captioners))
    _write_card(out, captioners)
    write_json(out / runs.CONFIG, config)  # last: its presence marks a complete folder
    return out


def _check_compatible(captioners: list[Any]) -> None:
    for captioner in captioners:
        if captioner.config.get("decoder") == NAME:
            raise UserError(f"{captioner.path}: is an ensemble already; give its member runs instead")
    first = captioners[0]
    for other in captioners[1:]:
        if other.encoder_name != first.encoder_name:
            raise UserError(
                f"{other.path}: its encoder is {other.encoder_name}, {first.path}'s is "
                f"{first.encoder_name}; an ensemble's members share one encoder"
            )
        if other.vocab.words != first.vocab.words:
            raise UserError(
                f"{other.path}: its vocabulary differs from {first.path}'s (train both on the same "
                "data with the same --min-count and --seed)"
            )


def _config(captioners: list[Any], out: Path) -> dict[str, Any]:
    """The first member's data settings, with the ensemble as decoder and each member's own."""
    first = captioners[0].config
    members = [
        {"decoder": c.config["decoder"], "decoder_config": c.config.get("decoder_config", {})}
        for c in captioners
    ]
    keep = ("data", "encoder", "min_count", "max_length", "seed")
    return {
        **{k: first[k] for k in keep if k in first},
        "decoder": NAME,
        "decoder_config": {"members": members},
        "members_from": [str(c.path) for c in captioners],
        "output": str(out),
    }


def _save_weights(out: Path, captioners: list[Any], half: bool) -> None:
    from safetensors.torch import save_file

    weights = {
        f"members.{i}.{k}": (v.half() if half and v.is_floating_point() else v).detach().contiguous()
        for i, c in enumerate(captioners)
        for k, v in c.decoder.state_dict().items()
    }
    metadata = {"decoder": NAME, "feature_dim": str(captioners[0].feature_dim)}
    with atomic_path(out / runs.WEIGHTS) as tmp:
        save_file(weights, str(tmp), metadata=metadata)


def _copy_decoding(source: Path, out: Path) -> None:
    if not (source / DECODING_FILE).is_file():
        raise UserError(f"--decoding-from {source}: has no {DECODING_FILE}")
    write_text(out / DECODING_FILE, (source / DECODING_FILE).read_text(encoding="utf-8"))


def _member_rows(captioners: list[Any]) -> list[tuple[str, str]]:
    return [
        (f"member {i + 1}", f"`{c.path}`: {c.config['decoder']} decoder") for i, c in enumerate(captioners)
    ]


def _summary(out: Path, captioners: list[Any]) -> str:
    lines = [f"# capkit ensemble: {out.name}", ""]
    lines += [f"- {name}: {text}" for name, text in _member_rows(captioners)]
    lines += [
        f"- encoder: {captioners[0].encoder_name}; vocabulary: {len(captioners[0].vocab)} words",
        "- each step averages the members' word probabilities; score it with "
        f"`adapt caption-eval {out.name} DATASET`",
    ]
    return "\n".join(lines) + "\n"


def _write_card(out: Path, captioners: list[Any]) -> Path:
    decoders = [c.config["decoder"] for c in captioners]
    body = f"""# {out.name}: an ensemble of {len(captioners)} caption decoders

Made with `adapt caption-ensemble` (capkit) from finished `adapt caption-train` runs. At every
step it averages the members' word probabilities; the image encoder,
{captioners[0].encoder_name}, is shared and frozen.

{table(_member_rows(captioners))}

## Use

`adapt caption photo.jpg --model {out.name}`; `adapt caption-eval {out.name} DATASET` scores it.

## Intended use and limits

The members' limits apply: English captions of everyday photos like those they were trained on.
Not for describing people's identity or for accessibility use without review.
"""
    metadata = {
        "library_name": "capkit",
        "language": ["en"],
        "pipeline_tag": "image-to-text",
        "tags": ["capkit", "image-captioning", NAME, *dict.fromkeys(decoders), captioners[0].encoder_name],
    }
    return write_card(out, metadata, body)

"""Typed settings: a dataclass field carries its default and one line of help, and the CLI is built
from the fields, so neither is written twice (litgpt's way, with Typer).

    @dataclass
    class TrainConfig:
        epochs: int = setting(12, "Maximum epochs.", check="positive")

`settings_from(TrainConfig, values)` turns values from flags, a YAML file or a run's config.json
into checked, typed values (one-line `UserError`s that name the flag). `cli_parameters(...)` gives
the Typer parameters of the fields: every option defaults to "not given" (`None`), so a YAML file
and the dataclass defaults fill in what the flags leave out. Numbers are read by
`settings_from`, not by Click, so `--epochs abc` is a one-line error like any other.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from adapt.errors import UserError
from adapt.runio import as_number, check_choice, check_positive

MISSING = dataclasses.MISSING


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    check: str | None = None,
    choices: Callable[[], Iterable[str]] | None = None,
    cli: bool = True,
    default_text: str | Callable[[], str] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its CLI help.

    `check`: "positive" or "non_negative" for numbers. `choices`: a function giving the valid names
    (a registry's keys, read only when help is shown or a value is checked, so `adapt --help` never
    imports torch). `cli=False` keeps a field out of the flags (API and config files only).
    `default_text` (or a function giving it) is shown in `--help` where the default depends on
    other settings. `flag`: the flag, where it is not the field's name (which config files keep as
    the key, and which stays a second flag).
    """
    meta = {"help": help, "check": check, "choices": choices, "cli": cli, "default_text": default_text}
    meta["flag"] = flag
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    """The CLI flag of a field: `max_steps` → `--max-steps`."""
    return "--" + name.replace("_", "-")


def field_flag(field: dataclasses.Field) -> str:
    """The flag a user types for `field` (its own `flag`, else the field's name as a flag)."""
    return field.metadata.get("flag") or flag_of(field.name)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type inside Optional, whether None is allowed)."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else Any), True
    return annotation, False


def field_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """Each field's (type, optional) of dataclass `cls`, its string annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def coerce(name: str, value: Any, kind: Any, optional: bool) -> Any:
    """`value` as the field's type, or a one-line `UserError` naming the flag."""
    flag = flag_of(name)
    if value is None:
        if optional:
            return None
        raise UserError(f"{flag} needs a value")
    origin = typing.get_origin(kind) or kind
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{flag} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        return as_number(flag, value, integer=kind is int)
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{flag} must be text, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{flag} must be comma-separated names, got {value!r}")
        return list(value)
    if origin is dict and not isinstance(value, dict):
        raise UserError(f"{flag} must be a mapping, got {value!r}")
    return value


def check_field(field: dataclasses.Field, value: Any) -> None:
    """The field's own rule (`check`, `choices`), with a one-line `UserError` naming the flag."""
    flag, meta = field_flag(field), field.metadata
    if meta.get("check") in ("positive", "non_negative"):
        check_positive(flag, value, allow_zero=meta["check"] == "non_negative")
    if meta.get("choices") and value is not None:
        check_choice(flag, value, list(meta["choices"]()))


def settings_from(cls: type, values: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """`values` (None = not given) checked and typed for dataclass `cls`: unknown names are refused
    (except those in `ignore`), given ones converted and checked. Returns only the given ones."""
    types = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(types) - set(ignore))
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    out = {}
    for name, value in values.items():
        if name in types and value is not None:
            out[name] = coerce(name, value, *types[name])
            check_field(fields[name], out[name])
    return out


def cli_fields(*classes: type) -> list[dataclasses.Field]:
    """The fields of `classes` that are flags, the first of each name kept."""
    seen: dict[str, dataclasses.Field] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) and f.name not in seen:
                seen[f.name] = f
    return list(seen.values())


CHOICES = "<choices>"  # in a help text: replaced by the registry's names when help is shown


def lazy_choices_command(choices: Mapping[str, Callable[[], Iterable[str]]]) -> type:
    """A Typer command class that writes each registry's names into its options' help only when
    help is shown: the registries may import torch, which `adapt --help` must not wait for."""
    from typer.core import TyperCommand

    class Command(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.params:
                if param.name in choices and getattr(param, "help", None):
                    param.help = param.help.replace(CHOICES, ", ".join(choices[param.name]()))
            super().format_help(ctx, formatter)

    return Command


_METAVARS = {int: "INTEGER", float: "NUMBER", str: "TEXT"}


def _default_text(field: dataclasses.Field) -> str:
    text = field.metadata.get("default_text")
    if text:
        return text() if callable(text) else text
    if field.default is not MISSING and field.default is not None and not isinstance(field.default, bool):
        return str(field.default)
    if field.default_factory is not MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
        return ",".join(value) if isinstance(value, list) else str(value)
    return ""


def option_of(field: dataclasses.Field, kind: Any) -> inspect.Parameter:
    """The Typer option of one field: not given = None; numbers read as text (see module doc)."""
    help_text = field.metadata.get("help", "")
    if field.metadata.get("choices"):
        help_text += f" One of: {CHOICES}."
    shown = _default_text(field)
    if shown:
        help_text += f" \\[default: {shown}]"  # escaped: Rich markup would eat [..]
    flags = tuple(dict.fromkeys((field_flag(field), flag_of(field.name))))
    if kind is bool:
        annotation: Any = Annotated[bool | None, typer.Option(*flags, help=help_text)]
    else:
        metavar = "NAME" if field.metadata.get("choices") else _METAVARS.get(kind, "TEXT")
        if typing.get_origin(kind) is list:
            metavar = "NAMES"
        info = typer.Option(*flags, help=help_text, show_default=False, metavar=metavar)
        annotation = Annotated[str | None, info]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def cli_parameters(*classes: type) -> list[inspect.Parameter]:
    """One Typer option per flag field of `classes` (see `option_of`)."""
    types: dict[str, tuple[Any, bool]] = {}
    for cls in classes:
        types = {**field_types(cls), **types}
    return [option_of(f, types[f.name][0]) for f in cli_fields(*classes)]


def with_parameters(fn: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """`fn(**kwargs)` presented to Typer with `parameters` as its signature."""
    fn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in parameters}
    return fn


def build_command(
    fn: Callable[..., Any],
    *classes: type,
    before: Iterable[inspect.Parameter] = (),
    after: Iterable[inspect.Parameter] = (),
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """`fn(**kwargs)` with one option per flag field of `classes` (and the extra parameters
    `before`/`after` them), plus the keyword arguments for `adapt.commands.command` (its class)."""
    choices = {f.name: f.metadata["choices"] for f in cli_fields(*classes) if f.metadata.get("choices")}
    params = [*before, *cli_parameters(*classes), *after]
    return with_parameters(fn, params), {"cls": lazy_choices_command(choices)}


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values a user gave (flags left out are None)."""
    return {k: v for k, v in values.items() if v is not None}


def read_yaml_settings(path: Any) -> dict[str, Any]:
    """`--config FILE`: a YAML (or JSON) mapping of flag names to values, keys as field names."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}

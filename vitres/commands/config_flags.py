"""Command-line flags generated from a config dataclass (``vitres train``, ``vitres flexify``).

Every field becomes ``--field-name`` with its type, its default (shown in ``--help``) and
a help line: booleans are ``--x/--no-x``, tuples comma-separated lists, ``int | None``
fields accept ``none``, and a ``dict`` field is a repeatable ``KEY=VALUE`` flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

__all__ = ["add_config_flags", "config_from_args"]


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value)


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _int_range(text: str) -> list[int]:
    """``"12:56:4"`` -> 12, 16, ..., 56 (both ends included); ``"12:16"`` steps by 1."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(text)
    start, stop = int(parts[0]), int(parts[1])
    step = int(parts[2]) if len(parts) == 3 else 1
    if step < 1 or stop < start:
        raise ValueError(text)
    return list(range(start, stop + 1, step))


def _sequence(kind: type):
    def parse(text: str):
        if text.lower() in ("none", ""):
            return ()
        try:
            values: list = []
            for part in (v.strip() for v in text.split(",") if v.strip()):
                if kind is int and ":" in part:
                    values.extend(_int_range(part))
                else:
                    values.append(kind(part))
            return tuple(values)
        except ValueError:
            ranges = " or START:STOP:STEP ranges like 12:56:4" if kind is int else ""
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s{ranges}, got {text!r}"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _argument_for(hint) -> dict:
    """argparse keyword arguments for one config field, from its type hint."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    optional = (origin in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": _sequence(args[0]), "metavar": "A,B,..."}
    if hint is dict:
        return {"type": _key_value, "action": "append", "metavar": "KEY=VALUE"}
    return {"type": _optional(hint) if optional else hint}


def _fields_in_order(cls: type) -> list[dataclasses.Field]:
    """The class's own fields first, then the inherited ones (``--help`` reads top-down)."""
    inherited = {
        f.name
        for base in cls.__mro__[1:]
        if dataclasses.is_dataclass(base)
        for f in dataclasses.fields(base)
    }
    own = set(cls.__dict__.get("__annotations__", {})) - inherited
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    help_text: dict[str, str],
    flags: dict[str, list[str]] | None = None,
) -> None:
    """Adds one flag per field of the dataclass ``cls`` to ``parser``.

    Args:
        parser: the subcommand's parser (use ``ArgumentDefaultsHelpFormatter`` to show
            the defaults).
        cls: the config dataclass; its defaults are the flags' defaults.
        help_text: one help line per field name.
        flags: flag spellings per field name, instead of ``--field-name``.
    """
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for config_field in _fields_in_order(cls):
        name = config_field.name
        kwargs = _argument_for(hints[name])
        names = (flags or {}).get(name) or ["--" + name.replace("_", "-")]
        default = getattr(defaults, name)
        if kwargs.get("action") == "append":
            default = None
        parser.add_argument(
            *names, dest=name, default=default, help=help_text.get(name, ""), **kwargs
        )


def config_from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` instance the parsed flags describe."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if hints[name] is dict:
            values[name] = dict(value or [])
    return cls(**values)

"""The one dataclass-to-flags generator of the command line.

Every field of a config dataclass becomes ``--field-name`` (or the spellings given), with
its type, its default and a help line taken from the dataclass's Google-style
``Attributes:`` section, so the library documents each option once:

- booleans are ``--x/--no-x``;
- ``T | None`` fields also accept ``none``;
- ``tuple[T, ...]`` fields take comma-separated lists (ints also ``START:STOP:STEP``);
- a ``dict`` field is a repeatable ``KEY=VALUE`` flag (values read as JSON when they can);
- a field without a default is a required flag.

:func:`config_from_args` turns the parsed flags back into the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "DefaultsFormatter",
    "add_dataclass_arguments",
    "attribute_docs",
    "config_from_args",
]


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (when it has a real one) after its text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default:" in text
            or default in (None, False, "", argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` sections of ``cls``'s docstring
    and of its dataclass bases' (the class's own text wins), as plain text."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is cls or dataclasses.is_dataclass(klass):
            out.update(_own_attribute_docs(klass))
    return out


def _own_attribute_docs(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
    doc = inspect.cleandoc(doc)
    match = re.search(r"^Attributes:\s*$(.*?)(?:^\S|\Z)", doc, re.M | re.S)
    if not match:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r"^\s{4}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if item:
            current = item.group(1)
            out[current] = item.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return {name: _plain(text) for name, text in out.items()}


def _plain(text: str) -> str:
    """Docstring markup as plain text: ````x```` and ``:func:`~a.x``` become ``x``."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    return re.sub(r"``([^`]*)``", r"\1", text)


# --------------------------------------------------------------------------- value parsers


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value)


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
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


def _sequence(kind: type) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        if text.lower() in ("none", ""):
            return ()
        try:
            values: list[Any] = []
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


def _argument_for(hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field, from its type hint."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": _sequence(args[0]), "metavar": "A,B,..."}
    if hint is dict or origin is dict:
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


def _default_instance(cls: type) -> Any:
    """``cls()`` (its defaults as ``__post_init__`` leaves them), or ``None`` when some
    field has no default."""
    try:
        return cls()
    except TypeError:
        return None


def _default(field: dataclasses.Field, defaults: Any) -> Any:
    """The field's default: from ``defaults`` when given, else the dataclass's own
    (``dataclasses.MISSING`` for a field without one)."""
    if defaults is not None:
        return getattr(defaults, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# --------------------------------------------------------------------------- the generator


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Sequence[str] = (),
    defaults: Any = None,
    help: Mapping[str, str] | None = None,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per field of the dataclass ``cls``, its help from the docstring.

    Args:
        parser: Parser or argument group to add to.
        cls: The dataclass.
        skip: Fields not to expose.
        defaults: An instance whose values are the defaults (default: ``cls()``; when a
            field has no default, the fields' own defaults, and that field becomes a
            required flag).
        help: Extra or overriding help texts per field.
        flags: Flag spellings per field instead of ``--field-name`` (the value still goes
            to ``args.<field>``).
    """
    docs = {**attribute_docs(cls), **(help or {})}
    hints = typing.get_type_hints(cls)
    if defaults is None:
        defaults = _default_instance(cls)
    for field in _fields_in_order(cls):
        name = field.name
        if name in skip:
            continue
        kwargs = _argument_for(hints[name])
        default = _default(field, defaults)
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        elif kwargs.get("action") == "append":
            kwargs["default"] = None  # an appended list starts empty, not from the default
        else:
            kwargs["default"] = default
        names = list((flags or {}).get(name) or ["--" + name.replace("_", "-")])
        text = docs.get(name, "").replace("%", "%%")
        parser.add_argument(*names, dest=name, help=text, **kwargs)


def config_from_args(
    cls: type, args: argparse.Namespace, *, skip: Sequence[str] = (), **values: Any
) -> Any:
    """The ``cls`` instance the parsed flags describe.

    Args:
        cls: The dataclass the flags were generated from.
        args: Parsed flags.
        skip: Fields that were not exposed (they keep their defaults unless in ``values``).
        **values: Field values that do not come from a flag of the same name.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        if name in values or name in skip:
            continue
        value = getattr(args, name)
        if hints[name] is dict or typing.get_origin(hints[name]) is dict:
            value = dict(value or [])
        values[name] = value
    return cls(**values)

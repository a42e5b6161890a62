"""``--config FILE`` and ``--print-config`` for every command.

A config file (YAML or JSON) holds a command's flags by name, as a mapping:

.. code-block:: yaml

    # vitres sweep --config sweep.yaml
    model: fmnist-vit-multires
    res: [16, 20, 28]          # a list becomes "16,20,28"
    backend: eager,onnxruntime
    max-latency-ms: 2.5        # dashes or underscores
    no-progress: true

Its values become the command's defaults, so flags on the command line still win.
Names are checked against the command's own flags (an unknown key is an error that
lists them), as are choices. ``--print-config`` prints the settings a command would run
with (file and flags merged) in the same format and exits, so a shell line can be kept
as a file: ``vitres sweep --res 16,28 --print-config > sweep.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_config_arguments", "apply_config_file", "config_text"]

_SKIP = {"help", "config", "print_config", "func", "command"}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config file")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML or JSON file of this command's flags (names with dashes or underscores); "
        "flags given on the command line win",
    )
    group.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings this command would run with, as YAML, and exit",
    )


def _read(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no config file {path}")
    text = file.read_text()
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except Exception as error:  # noqa: BLE001 - both parsers' errors, named
        raise ValueError(
            f"{path} is not valid {file.suffix.lstrip('.') or 'JSON'}: {error}"
        ) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds a {type(document).__name__}; expected a mapping of flags")
    return document


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in _SKIP and a.dest != "==SUPPRESS=="}


def _value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """``value`` as the flag would have given it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{path}: {key} is a switch; give true or false, got {value!r}")
        return value  # the setting's own value (a --no-x flag's name is negated before)
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if value is not None and action.type is not None and not isinstance(value, str):
        value = str(value)  # argparse converts string defaults with the flag's own type
    if action.choices is not None and value is not None:
        converted = action.type(value) if (action.type and isinstance(value, str)) else value
        if converted not in action.choices:
            raise ValueError(
                f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}"
            )
    return value


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Makes the file's values the defaults of ``parser`` (a command's parser), and the
    required flags it gives no longer required on the command line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not a mapping, an unknown key or a value a flag refuses.
    """
    actions = _actions(parser)
    switches = {  # --no-x flags (store_false) by their own name, e.g. no-progress
        a.option_strings[0].lstrip("-").replace("-", "_"): a
        for a in actions.values()
        if isinstance(a, argparse._StoreFalseAction) and a.option_strings
    }
    defaults: dict[str, Any] = {}
    for raw_key, value in _read(path).items():
        key = str(raw_key).replace("-", "_")
        action = actions.get(key) or switches.get(key)
        if action is None:
            known = sorted({*actions, *switches})
            raise ValueError(
                f"{path}: unknown setting {raw_key!r} for `vitres {parser.prog.split()[-1]}`; "
                f"its settings are {', '.join(known)}"
            )
        if key not in actions and isinstance(value, bool):  # no-progress: true
            value = not value
        defaults[action.dest] = _value(action, raw_key, value, path)
        action.required = False
    for group in parser._mutually_exclusive_groups:  # "one of --a --b is required"
        if group.required and any(a.dest in defaults for a in group._group_actions):
            group.required = False
    parser.set_defaults(**defaults)


def config_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The settings in ``args`` as YAML (the format ``--config`` reads)."""
    import yaml

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value)

    settings = {
        dest.replace("_", "-"): plain(getattr(args, dest))
        for dest in _actions(parser)
        if hasattr(args, dest)
    }
    return yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)

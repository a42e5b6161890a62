"""Writes ``vitres/models/convert/timm_archs.json``: every architecture name in timm's
``vision_transformer``, ``deit`` and ``eva`` registries with the ``model_args`` its
entry point passes to timm's model class, and its default pretrained config's mean, std
and input size. vitres reads architecture facts from this table, never from a family word
in the name. Rerun after a timm upgrade (``python scripts/timm_arch_table.py``); it needs
timm installed (``pip install --no-deps timm==1.0.31``), and imports timm's model files
without timm's ``__init__`` (``tests/timm_shim.py``).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vitres" / "models" / "convert" / "timm_archs.json"
CREATORS = {
    "vision_transformer": "_create_vision_transformer",
    "deit": "_create_deit",
    "eva": "_create_eva",
}


class _Captured(Exception):
    """Raised by the patched model builder, carrying the arguments it was given."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


def plain(value: Any) -> Any:
    """``value`` as JSON: classes and functions by their dotted name, partials spelled out."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, functools.partial):
        inner = plain(value.func)
        kwargs = ",".join(f"{k}={plain(v)}" for k, v in sorted(value.keywords.items()))
        return f"partial:{inner}:{kwargs}"
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', '?')}.{name}"


def capture(module: Any, creator: str, name: str, entry: Any) -> dict[str, Any]:
    original = getattr(module, creator)

    def patched(variant: str, pretrained: bool = False, **kwargs: Any) -> None:
        raise _Captured(kwargs)

    setattr(module, creator, patched)
    try:
        entry(pretrained=False)
    except _Captured as got:
        return {k: plain(v) for k, v in sorted(got.kwargs.items())}
    finally:
        setattr(module, creator, original)
    raise RuntimeError(f"{name}: its entry point did not call {creator}")


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from timm_shim import load_timm

    registry = load_timm()
    if registry is None:
        print("timm is not installed: pip install --no-deps timm==1.0.31", file=sys.stderr)
        return 1
    table: dict[str, Any] = {}
    for module_name, creator in CREATORS.items():
        module = importlib.import_module(f"timm.models.{module_name}")
        for name in registry.list_models(module=module_name):
            entry = registry.model_entrypoint(name)
            cfg = registry.get_pretrained_cfg(name)
            facts = {"module": module_name, "model_args": capture(module, creator, name, entry)}
            if cfg is not None:
                facts["mean"] = list(cfg.mean)
                facts["std"] = list(cfg.std)
                facts["input_size"] = list(cfg.input_size)
            table[name] = facts
    timm_version = importlib.metadata.version("timm")
    OUT.write_text(json.dumps({"timm": timm_version, "archs": table}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(table)} architectures, timm {timm_version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""vitres: Vision Transformers at any input resolution and patch size, and a tuner for
the resolution, patch size, precision and backend they are deployed at.

The names below are loaded on first use (PEP 562), so ``import vitres.layers`` (or
``import vitres``) loads neither the tuner, the report, the server nor matplotlib; see
docs/architecture.md for the rooms and the direction their imports run in.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Only strings here, no imports (not even under
# TYPE_CHECKING): every room imports this package, so it must depend on none of them.
_EXPORTS = {
    "Budget": "vitres.tune.budget",
    "Recommendation": "vitres.tune.recommend",
    "create_model": "vitres.models.registry",
    "describe_reference": "vitres.models.resolve",
    "from_pretrained": "vitres.models.resolve",
    "from_onnx": "vitres.models.resolve",
    "list_models": "vitres.models.registry",
    "load_model": "vitres.models.checkpoint",
    "model_config": "vitres.models.registry",
    "pack": "vitres.tokens.pack",
    "read_results": "vitres.tune.records",
    "recommend": "vitres.tune.recommend",
    "resample_patch_embed": "vitres.layers.patch_embed",
    "resample_pos_embed": "vitres.layers.pos_embed",
    "resolve_model": "vitres.models.resolve",
    "run_sweep": "vitres.tune.sweep",
    "save_model": "vitres.models.checkpoint",
    "write_report": "vitres.report.writer",
}

#: The rooms (subpackages and top modules), imported on first attribute access as before.
_ROOMS = frozenset(
    {
        "backends",
        "cli",
        "commands",
        "data",
        "evaluate",
        "explain",
        "export",
        "layers",
        "measure",
        "models",
        "report",
        "runtime",
        "serve",
        "tokens",
        "train",
        "tune",
    }
)

__all__ = [
    "Budget",
    "Recommendation",
    "__version__",
    "create_model",
    "describe_reference",
    "from_onnx",
    "from_pretrained",
    "list_models",
    "load_model",
    "model_config",
    "pack",
    "read_results",
    "recommend",
    "resample_patch_embed",
    "resample_pos_embed",
    "resolve_model",
    "run_sweep",
    "save_model",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562).

    Raises:
        AttributeError: ``name`` is neither one of vitres's public names nor a room.
    """
    if name in _ROOMS:
        return importlib.import_module(f"vitres.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(
            f"module 'vitres' has no attribute {name!r}; its public names are {__all__}"
        )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the rooms (what tab completion offers)."""
    return sorted(set(__all__) | _ROOMS)

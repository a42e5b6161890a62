"""Imports timm's model files without timm's package ``__init__``.

timm 1.0.31 is installed with ``--no-deps`` (its data package needs torchvision, which
does not work beside the pinned CPU torch). Importing ``timm`` runs ``timm.data``, so the
tests register bare package modules for ``timm``, ``timm.models`` and ``timm.data`` (the
latter with timm's own constants), and a one-class ``torchvision.ops.misc`` that timm's
norm factory names at import (``FrozenBatchNorm2d``, used only to freeze BatchNorm, which
no ViT has). Then ``timm.models.vision_transformer``, ``eva`` and ``deit`` import as
they are, and register their architectures in timm's own registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

MODULES = ("vision_transformer", "eva", "deit")


def _package(name: str, path: list[str]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = path
    sys.modules[name] = module
    return module


def load_timm() -> types.ModuleType | None:
    """timm's registry module (``timm.models._registry``) with the ViT families loaded,
    or ``None`` when timm is not installed."""
    if "timm.models._registry" in sys.modules and "timm.models.eva" in sys.modules:
        return sys.modules["timm.models._registry"]
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    if "torchvision.ops.misc" not in sys.modules:
        misc = types.ModuleType("torchvision.ops.misc")

        class FrozenBatchNorm2d(torch.nn.Module):
            """Stands in for the torchvision class timm names at import; never built."""

        misc.FrozenBatchNorm2d = FrozenBatchNorm2d
        _package("torchvision", [])
        _package("torchvision.ops", [])
        sys.modules["torchvision.ops.misc"] = misc
    timm = _package("timm", [root])
    timm.__version__ = importlib.metadata.version("timm")
    _package("timm.models", [root + "/models"])
    data = _package("timm.data", [root + "/data"])
    constants = importlib.import_module("timm.data.constants")
    data.__dict__.update({k: v for k, v in vars(constants).items() if k.isupper()})
    for name in MODULES:
        importlib.import_module(f"timm.models.{name}")
    return importlib.import_module("timm.models._registry")

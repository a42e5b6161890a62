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
    # timm holds the class now; without the stand-in, other libraries (transformers) do not
    # take torchvision for installed
    for name in ("torchvision.ops.misc", "torchvision.ops", "torchvision"):
        sys.modules.pop(name, None)
    return importlib.import_module("timm.models._registry")


def timm_module(name: str) -> types.ModuleType:
    """timm's ``timm.models.<name>`` (e.g. ``beit``, outside the walk's registries),
    imported after :func:`load_timm` set the shim up."""
    load_timm()
    return importlib.import_module(f"timm.models.{name}")


# ----------------------------------------------------------------------------- the walk
def architectures() -> list[tuple[str, str]]:
    """``(module, name)`` of every architecture in timm's ViT, EVA and DeiT registries."""
    registry = load_timm()
    return [(m, n) for m in MODULES for n in registry.list_models(module=m)]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations: position tables, prefix tokens and layer scales
    drawn large, so that a wrong interpolation, pooling or activation cannot hide under
    timm's tiny initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim >= 2 and p.shape[0] > 1:
                p.copy_(noise / (p.numel() / p.shape[0]) ** 0.5)
            elif p.ndim >= 2:  # pos_embed, cls/reg tokens, attention-pool latent
                p.copy_(noise)
            elif name.endswith("weight") and "norm" in name:
                p.copy_(1 + 0.3 * noise)
            else:  # biases, layer scales
                p.copy_(0.5 * noise)


def small_model(module: str, name: str) -> tuple[torch.nn.Module, dict] | None:
    """timm's ``name`` at depth 2, 16 channels per head (or its own width, if it fixes
    it), 4 patches per side and 5 classes, with random unit-scale weights, and the
    ``model_args`` it was created with (``None`` if timm cannot build it small)."""
    entry = load_timm().model_entrypoint(name)
    try:
        probe = entry(pretrained=False, depth=1, num_classes=0)
    except Exception:  # noqa: BLE001 - per-block settings (e.g. one kv-head count per block)
        return None
    heads = int(getattr(getattr(probe.blocks[0], "attn", None), "num_heads", 0) or 0)
    patch = tuple(int(v) for v in probe.patch_embed.patch_size)
    base = {
        "depth": 2,
        "img_size": [4 * patch[0], 4 * patch[1]],
        "num_classes": 5,
        "dynamic_img_size": True,
    }
    tries = [{**base, "embed_dim": 16 * heads, "num_heads": heads}] if heads else []
    for args in [*tries, base]:
        try:
            model = entry(pretrained=False, **args).eval()
        except Exception:  # noqa: BLE001 - some architectures fix their widths; try the next
            continue
        _randomise(model, seed=len(name))
        return model, args
    return None

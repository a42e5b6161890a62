"""The one model-reference grammar: what a string (or object) given as ``--model`` means."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from torch import nn

ModelRef = str | Callable[..., nn.Module] | nn.Module


def resolve_model(model_ref: ModelRef, **overrides: Any) -> nn.Module:
    """The model a reference stands for.

    ``nn.Module``: itself. A callable: ``model_ref(**overrides)``. ``"package.module:fn"``:
    that factory, called. Any other string: ``vitres.load_model`` (checkpoint paths and
    reference names such as ``fmnist-vit-multires``), else ``vitres.create_model``
    (registry names such as ``vit_tiny_patch16``).

    Raises:
        ValueError: the reference resolves to nothing (both attempts' errors are shown).
    """
    if isinstance(model_ref, nn.Module):
        return model_ref
    if callable(model_ref):
        return model_ref(**overrides)
    if ":" in model_ref and not os.path.exists(model_ref):
        module_name, _, attribute = model_ref.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(**overrides)
    import vitres

    errors = []
    for function_name in ("load_model", "create_model"):
        function = getattr(vitres, function_name, None)
        if function is None:
            continue
        if function_name == "create_model" and os.path.exists(model_ref):
            break
        try:
            return function(model_ref, **overrides)
        except (ValueError, FileNotFoundError, KeyError) as error:
            errors.append(f"{function_name}: {error}")
    raise ValueError(
        f"cannot resolve model {model_ref!r}: " + "; ".join(errors or ["no loader in vitres"])
    )

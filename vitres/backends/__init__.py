"""Execution backends behind one small interface; see :mod:`vitres.backends.base`.

``eager`` and ``eager-bf16`` are always registered. Backend modules listed in
``_OPTIONAL_MODULES`` register themselves when their file exists; they should import
their heavy dependencies lazily and report missing ones through ``availability()``.
:func:`auto_backends` lists every backend usable here (``vitres sweep --backend auto``).
"""

import importlib
import warnings
from collections.abc import Sequence

from vitres.backends import eager as _eager  # noqa: F401  (registers eager, eager-bf16)
from vitres.backends.base import (
    Backend,
    backend_class,
    get_backend,
    list_backends,
    register_backend,
)

_OPTIONAL_MODULES = (
    "compile_backend",
    "onnx_backend",
    "int8",
    "onnx_fused",
    "openvino_backend",
    "tensorrt_backend",
    "cudagraph",
    "fp8",
)

for _module in _OPTIONAL_MODULES:
    _qualified = f"{__name__}.{_module}"
    try:
        importlib.import_module(_qualified)
    except ImportError as _error:
        if getattr(_error, "name", None) != _qualified:
            warnings.warn(f"backend module {_qualified} not loaded: {_error}", stacklevel=1)

# `--backend auto`: baselines first, then each runtime from plain to most reduced precision
AUTO_ORDER = (
    "eager",
    "eager-bf16",
    "compile",
    "compile-bf16",
    "cudagraph",
    "cudagraph-bf16",
    "fp8",
    "onnxruntime",
    "onnxruntime-fused",
    "onnxruntime-int8",
    "onnxruntime-int8-static",
    "onnxruntime-fused-int8-static",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "tensorrt",
    "tensorrt-int8",
)


def auto_backends(device: str = "cpu") -> list[str]:
    """Every registered backend that can run on ``device`` here, in a sensible order:
    the eager baselines first, then each runtime from float32 to its reduced precisions
    (:data:`AUTO_ORDER`; backends registered by other modules follow, sorted).

    A backend is included when its ``availability()`` says it is usable (packages and
    hardware present) and ``device``'s type is among its ``devices``.
    """
    kind = device.split(":")[0]
    names = list_backends(available_only=True)
    ordered = [n for n in AUTO_ORDER if n in names] + sorted(set(names) - set(AUTO_ORDER))
    return [n for n in ordered if kind in backend_class(n).devices]


def expand_backend_names(names: Sequence[str], device: str = "cpu") -> list[str]:
    """``names`` with ``"auto"`` replaced by :func:`auto_backends` (duplicates dropped).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    out: list[str] = []
    for name in names:
        for expanded in auto_backends(device) if name == "auto" else [name]:
            backend_class(expanded)  # raises for an unknown name
            if expanded not in out:
                out.append(expanded)
    return out


__all__ = [
    "AUTO_ORDER",
    "Backend",
    "auto_backends",
    "backend_class",
    "expand_backend_names",
    "get_backend",
    "list_backends",
    "register_backend",
]

"""Execution backends behind one small interface; see :mod:`vitres.backends.base`.

``eager`` and ``eager-bf16`` are always registered. Backend modules listed in
``_OPTIONAL_MODULES`` register themselves when their file exists; they should import
their heavy dependencies lazily and report missing ones through ``availability()``.
"""

import importlib
import warnings

from vitres.backends import eager as _eager  # noqa: F401  (registers eager, eager-bf16)
from vitres.backends.base import (
    Backend,
    backend_class,
    get_backend,
    list_backends,
    register_backend,
)

_OPTIONAL_MODULES = ("compile_backend", "onnx_backend", "int8", "tensorrt_backend")

for _module in _OPTIONAL_MODULES:
    _qualified = f"{__name__}.{_module}"
    try:
        importlib.import_module(_qualified)
    except ImportError as _error:
        if getattr(_error, "name", None) != _qualified:
            warnings.warn(f"backend module {_qualified} not loaded: {_error}", stacklevel=1)

__all__ = ["Backend", "backend_class", "get_backend", "list_backends", "register_backend"]

"""The one interface every execution backend implements, and the registry of backends.

A backend turns a model into something that maps a batch to logits, in some runtime
and precision: ``prepare(model, input_shape)`` once (export, compile, cast; its wall
time is recorded as ``build_time_s``), then ``run(batch)`` many times. Backends decide
nothing and measure nothing; :mod:`vitres.measure` times them.

Adding a backend::

    @register_backend
    class OnnxRuntimeBackend(Backend):
        name = "onnxruntime"
        precision = "fp32"
        dynamic_batch = True

        def build(self, model, input_shape):
            ...  # export and create the session

        def run(self, batch):
            ...  # return float32 logits (B, num_classes) as a torch tensor

        @classmethod
        def availability(cls):
            return (importlib.util.find_spec("onnxruntime") is not None, "pip install onnxruntime")
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn


class Backend(ABC):
    """Runs a model on batches of one shape.

    Class attributes:
        name: Registry name, e.g. ``"eager"``, ``"eager-bf16"``.
        precision: Numeric precision of the computation: ``"fp32"``, ``"bf16"``,
            ``"fp16"``, ``"int8"``.
        dynamic_batch: True if ``run`` accepts any batch size after ``prepare`` (then
            accuracy can be evaluated in larger batches); False for backends built for
            the exact ``input_shape``.
        calibrated: True if building the backend needs real calibration images; its
            constructor then takes ``calibration_data`` (dataset name or image folder)
            and ``calibration_data_dir`` (where a named dataset's files are).
        devices: Device types the backend runs on (``"cpu"``, ``"cuda"``).
        token_merging: True if ``run`` calls the model's own forward, so token merging
            (``merge``, :mod:`vitres.tokens.merge`) runs; exporting backends refuse it.

    Attributes:
        device: Where the model runs (``"cpu"``, ``"cuda"``...).
        build_time_s: Wall seconds of the last :meth:`prepare`, ``None`` before it.
    """

    name: ClassVar[str] = ""
    precision: ClassVar[str] = "fp32"
    dynamic_batch: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    token_merging: ClassVar[bool] = False

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.build_time_s: float | None = None

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Builds what :meth:`run` needs for inputs of ``input_shape`` ``(B, C, H, W)``
        and records the time it took. The model may be moved or cast in place."""
        start = time.perf_counter()
        self.build(model, tuple(int(s) for s in input_shape))
        self.sync()
        self.build_time_s = time.perf_counter() - start

    @abstractmethod
    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Backend-specific preparation (export, compile, cast); called by :meth:`prepare`."""

    @abstractmethod
    def run(self, batch: Tensor) -> Tensor:
        """Float32 logits ``(B, num_classes)`` for a float32 batch ``(B, C, H, W)``.

        The batch may live on the CPU; the backend moves it where it needs it.
        """

    def sync(self) -> None:
        """Waits for queued device work (needed to time asynchronous devices)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """``(usable here, why not / how to fix)``; the base backend is always usable."""
        return True, ""


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"backend name {cls.name!r} is already registered by {existing.__module__}."
            f"{existing.__qualname__}; choose another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def list_backends(available_only: bool = False) -> list[str]:
    """Registered backend names, sorted; optionally only those usable here."""
    return sorted(n for n, c in _REGISTRY.items() if not available_only or c.availability()[0])


def backend_class(name: str) -> type[Backend]:
    """The registered class for ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; registered backends: {', '.join(list_backends())}"
        ) from None


def get_backend(name: str, **kwargs: object) -> Backend:
    """A new instance of backend ``name`` (``kwargs`` go to its constructor, e.g. ``device``).

    Raises:
        ValueError: unknown name.
        RuntimeError: the backend cannot run here (missing package or hardware).
    """
    cls = backend_class(name)
    usable, reason = cls.availability()
    if not usable:
        raise RuntimeError(f"backend {name!r} is not available here: {reason}")
    return cls(**kwargs)  # type: ignore[arg-type]

"""What the server runs a batch with: one model behind one backend, ready at every
resolution it may be asked for, with the model's own preprocessing and class names.

A :class:`ServingEngine` prepares one backend per resolution (for a ViT under ONNX
Runtime these share one dynamic graph; eager PyTorch needs nothing) and warms each, so
no first-call cost lands inside a request. Preprocessing is the library's evaluation
transform (:func:`vitres.data.prepare_batch`: the whole image, antialiased resize,
channel conversion, the model's mean/std), so an answer of the server equals
``model(prepare_batch([image], resolution, ...))``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vitres.backends import backend_class, get_backend
from vitres.data import FASHION_MNIST_ALIASES, FASHION_MNIST_CLASSES, prepare_batch
from vitres.models.common import FixedPatchSize

Size = tuple[int, int]

__all__ = ["ServingEngine", "class_names"]


def class_names(model: nn.Module) -> list[str]:
    """Names of the model's classes: its checkpoint's ``metadata["classes"]``, the
    Fashion-MNIST names for a model trained on it, else ``"0"``, ``"1"``..."""
    num_classes = int(model.config.num_classes)
    metadata = getattr(model, "metadata", None) or {}
    names = metadata.get("classes")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    dataset = str(metadata.get("dataset", "")).lower()
    if dataset in FASHION_MNIST_ALIASES and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(num_classes)]


class ServingEngine:
    """A model on a backend at a set of resolutions.

    Args:
        model: The model (a vitres ViT or Mixer with a ``config``). Backends may cast or
            move it in place: give each engine its own copy.
        backend: Backend name (:mod:`vitres.backends`); it must accept any batch size.
        resolutions: Every ``(height, width)`` the engine will be asked to run.
        max_batch: Largest batch (the shape each backend is prepared for).
        device: Where the backend runs.
        patch_size: Patch size to run at; ``None`` = the model's own.

    Raises:
        ValueError: unknown backend, or one built for a single batch size.
    """

    def __init__(
        self,
        model: nn.Module,
        backend: str,
        resolutions: Sequence[Size],
        max_batch: int,
        *,
        device: str = "cpu",
        patch_size: int | None = None,
    ) -> None:
        cls = backend_class(backend)
        if not cls.dynamic_batch:
            raise ValueError(
                f"backend {backend!r} is built for one batch size; the server forms batches of "
                "any size. Use a backend with dynamic batches (eager, eager-bf16, onnxruntime)"
            )
        if cls.calibrated:
            raise ValueError(
                f"backend {backend!r} needs calibration images, which `vitres serve` does not "
                "take; export the quantised model and serve it with onnxruntime, or use "
                "onnxruntime-int8 (dynamic quantisation)"
            )
        config = model.config
        self.backend_name = backend
        self.precision = cls.precision
        self.in_chans = int(config.in_chans)
        self.mean = tuple(config.mean)
        self.std = tuple(config.std)
        self.num_classes = int(config.num_classes)
        self.class_names = class_names(model)
        self.max_batch = int(max_batch)
        self.patch_size = patch_size
        native_patch = getattr(config, "patch_size", None)
        # the patch the model runs at (an image smaller than it carries almost nothing)
        self.effective_patch = int(patch_size or native_patch or 1)
        runnable: nn.Module = model.eval()
        if patch_size is not None and patch_size != native_patch:
            runnable = FixedPatchSize(model, patch_size)
        self.resolutions = tuple(dict.fromkeys((int(h), int(w)) for h, w in resolutions))
        self._backends = {}
        for height, width in self.resolutions:
            instance = get_backend(backend, device=device)
            instance.prepare(runnable, (self.max_batch, self.in_chans, height, width))
            self._backends[(height, width)] = instance

    def warm(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Runs every resolution once at each batch size (default: 1 and ``max_batch``)."""
        sizes = sorted(set(batch_sizes or (1, self.max_batch)))
        generator = torch.Generator().manual_seed(0)
        for height, width in self.resolutions:
            for batch in sizes:
                x = torch.randn(batch, self.in_chans, height, width, generator=generator)
                self.forward(x, (height, width))

    def time_batch(self, resolution: Size, batch: int) -> float:
        """Milliseconds of one batch the way the worker runs it: ``batch`` decoded images
        (native-size zeros) preprocessed to ``resolution``, then the forward call."""
        images = [torch.zeros(self.in_chans, 28, 28, dtype=torch.uint8)] * batch
        start = time.perf_counter()
        self.forward(self.preprocess(images, resolution), resolution)
        return (time.perf_counter() - start) * 1000.0

    def preprocess(self, images: Sequence[Tensor], resolution: Size) -> Tensor:
        """Decoded uint8 (or 0..1 float) images ``(C, H, W)`` of any sizes -> the model's float batch
        ``(B, in_chans, height, width)`` at ``resolution``."""
        images = list(images)
        if any(image.dtype != torch.uint8 for image in images):  # 0..1 floats (the /v2 FP32 input)
            images = [i.float() / 255.0 if i.dtype == torch.uint8 else i.float() for i in images]
        if len({tuple(image.shape) for image in images}) == 1:
            # one size (the usual case): one resize call for the batch, same numbers
            images = torch.stack(images)
        return prepare_batch(
            images,
            resolution,
            train=False,
            mean=self.mean,
            std=self.std,
            in_chans=self.in_chans,
        )

    def forward(self, batch: Tensor, resolution: Size) -> Tensor:
        """Float32 logits ``(B, num_classes)`` of a preprocessed batch.

        Raises:
            ValueError: ``resolution`` is not one the engine was prepared for.
        """
        backend = self._backends.get(tuple(resolution))
        if backend is None:
            raise ValueError(
                f"the engine was not prepared for {resolution}; it runs "
                f"{', '.join(f'{h}x{w}' for h, w in self.resolutions)}"
            )
        logits = backend.run(batch)
        backend.sync()
        return logits.float()

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.resolutions)
        return f"{self.backend_name} ({self.precision}) at {sizes}, batches up to {self.max_batch}"

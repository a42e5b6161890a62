"""Running an exported graph: cached ONNX Runtime sessions and :class:`OnnxModel`.

:func:`onnx_session` opens one ONNX Runtime session per file, thread count, optimisation
level and providers, and keeps a few of them, so a sweep or a parity check never builds
the same session twice. :class:`OnnxModel` runs a graph like the eager model --
``OnnxModel(path)(images) -> logits`` -- and checks its inputs as eager mode does
(:mod:`vitres.models.validation`): ONNX Runtime would otherwise accept an image smaller
than one patch, integer pixels or NaN and return logits that mean nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxModel",
    "check_image_shape",
    "float32_images",
    "onnx_session",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_SESSIONS: dict[tuple, Any] = {}
_MAX_SESSIONS = 8
_CAST_TO_FLOAT32 = (torch.float64, torch.float16, torch.bfloat16)


def onnx_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    *,
    optimization: str = "all",
    providers: Sequence[str | tuple[str, dict[str, str]]] = ("CPUExecutionProvider",),
) -> Any:
    """An ONNX Runtime session for ``path``, cached per file (path, size, modification
    time), thread count, optimisation level and providers.

    Args:
        path: The ``.onnx`` file.
        threads: ``intra_op_num_threads``; torch's thread count when ``None``.
        optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
        providers: Execution providers in priority order (a name, or ``(name, options)``).
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise FileNotFoundError(f"ONNX file {resolved} does not exist")
    stat = resolved.stat()
    threads = int(threads or torch.get_num_threads())
    key = (str(resolved), stat.st_size, stat.st_mtime_ns, threads, optimization, repr(providers))
    session = _SESSIONS.get(key)
    if session is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = levels[optimization]
        options.log_severity_level = 3
        session = ort.InferenceSession(str(resolved), options, providers=list(providers))
        if len(_SESSIONS) >= _MAX_SESSIONS:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = session
    return session


def float32_images(images: Tensor | np.ndarray) -> np.ndarray:
    """``images`` as a contiguous, finite float32 array, for a runtime that takes numpy.

    float64, float16 and bfloat16 are cast; integers, booleans and complex numbers are
    rejected with the fix, and so are NaN and Inf (as eager mode does).

    Raises:
        ValueError: not a tensor or array, not floating point, or not finite.
    """
    if isinstance(images, Tensor):
        if images.dtype in _CAST_TO_FLOAT32:
            images = images.float()
        elif images.dtype != torch.float32:
            raise ValueError(
                f"expected floating-point images, got dtype {images.dtype}; convert with "
                "x.float() / 255 and normalise as the model expects"
            )
        array = np.ascontiguousarray(images.detach().cpu().numpy())
    elif isinstance(images, np.ndarray):
        if images.dtype.kind != "f":
            raise ValueError(
                f"expected floating-point images, got dtype {images.dtype}; convert with "
                "x.astype(np.float32) / 255 and normalise as the model expects"
            )
        array = np.ascontiguousarray(images, dtype=np.float32)
    else:
        raise ValueError(
            f"expected a torch.Tensor or numpy array of images, got {type(images).__name__}"
        )
    if array.size and not np.isfinite(array).all():
        raise ValueError("images contain NaN or Inf values")
    return array


def check_image_shape(
    shape: Sequence[int],
    *,
    channels: int | str | None,
    height: int | str | None = None,
    width: int | str | None = None,
    patch_size: int | None = None,
    multiple_of_patch: bool = False,
    min_side: int | None = None,
    name: str = "the graph",
) -> None:
    """Raises ``ValueError`` (with eager mode's wording) unless a batch of ``shape`` fits a
    graph whose input is ``(B, channels, height, width)``.

    Args:
        shape: The batch's shape.
        channels: The graph's channel count (a string or ``None`` for a dynamic one).
        height: Fixed height of a static graph (a string or ``None``: dynamic).
        width: Fixed width of a static graph.
        patch_size: The graph's patch; sides must be at least one patch.
        multiple_of_patch: Sides must be multiples of ``patch_size`` (``size_policy='error'``).
        min_side: A smaller side the graph does not serve (its converter's limit).
        name: The graph's name for the messages.
    """
    if len(shape) != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if len(shape) == 3 else ""
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {len(shape)}-D shape {tuple(shape)}{hint}"
        )
    if isinstance(channels, int) and shape[1] != channels:
        raise ValueError(
            f"expected {channels} channel(s), got {shape[1]} in shape {tuple(shape)}; "
            f"convert the images (channels must be {channels} for {name})"
        )
    p = patch_size
    if p and (shape[2] < p or shape[3] < p):
        raise ValueError(
            f"image of {shape[2]}x{shape[3]} is smaller than one {p}x{p} patch; use an "
            f"input of at least {p}x{p} ({name} was exported with patch {p})"
        )
    for axis, what, expected in ((2, "height", height), (3, "width", width)):
        if isinstance(expected, int) and shape[axis] != expected:
            raise ValueError(
                f"{name} is a static graph: {what} must be {expected}, got "
                f"{shape[axis]} (input shape {tuple(shape)}); export another graph for "
                "this size"
            )
    if multiple_of_patch and p and (shape[2] % p or shape[3] % p):
        raise ValueError(
            f"{name} accepts H and W that are multiples of {p} "
            f"(size_policy='error'); got {shape[2]}x{shape[3]}. Resize or pad the "
            f"images to a multiple of {p}"
        )
    if min_side and (shape[2] < min_side or shape[3] < min_side):
        raise ValueError(
            f"{name} serves sides of at least {min_side} px; got {shape[2]}x{shape[3]}"
        )


class OnnxModel:
    """Runs an exported graph like the model: ``OnnxModel(path)(images) -> logits``.

    Inputs are checked before ONNX Runtime sees them, with the messages eager mode gives:
    a 4-D ``(B, C, H, W)`` batch, the graph's channel count, a floating-point dtype
    (float64, float16 and bfloat16 are cast to float32; integers are rejected), finite
    values, at least one patch in each side, and for ``size_policy='error'`` graphs sides
    that are multiples of the patch; for static graphs the exact size. The patch size and
    size policy come from the file's vitres metadata (:mod:`vitres.export.metadata`) when
    not given.

    Args:
        path: The ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (torch's count when ``None``).
        patch_size: The graph's patch size (default: from the file's metadata; without
            it, the size checks that need the patch are skipped).
        multiple_of_patch: Require ``H, W`` multiples of ``patch_size`` (default: from the
            file's metadata, ``size_policy == 'error'``).
        optimization: ONNX Runtime graph optimisation level (see :func:`onnx_session`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        patch_size: int | None = None,
        multiple_of_patch: bool | None = None,
        optimization: str = "all",
    ) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads, optimization=optimization)
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.input_shape = list(meta.shape)  # ints for static dims, strings for dynamic ones
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map or {})
        if patch_size is None and self.metadata.get("vitres.patch_size"):
            patch_size = int(self.metadata["vitres.patch_size"])
        if multiple_of_patch is None:
            multiple_of_patch = self.metadata.get("vitres.size_policy") == "error"
        if patch_size is not None and (isinstance(patch_size, bool) or patch_size <= 0):
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        self.patch_size = patch_size
        self.multiple_of_patch = bool(multiple_of_patch)

    def check_input(self, shape: Sequence[int]) -> None:
        """Raises ``ValueError`` unless a batch of ``shape`` fits the graph."""
        check_image_shape(
            shape,
            channels=self.input_shape[1],
            height=self.input_shape[2],
            width=self.input_shape[3],
            patch_size=self.patch_size,
            multiple_of_patch=self.multiple_of_patch,
            name=self.path.name,
        )

    def __call__(self, images: Tensor | np.ndarray) -> Tensor:
        """Float32 logits ``(B, num_classes)`` of a batch of images.

        Raises:
            ValueError: the batch does not fit the graph (see the class docstring).
        """
        if isinstance(images, (Tensor, np.ndarray)):
            self.check_input(tuple(images.shape))
        array = float32_images(images)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

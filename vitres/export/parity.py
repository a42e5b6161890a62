"""The parity check: an exported graph run by ONNX Runtime against eager PyTorch.

Every export is checked at several sizes -- the example size, the native size, a
non-square size that shrinks one side of the grid and grows the other, and, where the
size policy allows, a size the patch does not divide -- with a batch size other than the
example's. A difference above ``atol`` (1e-4 by default) raises
:class:`ExportParityError`: a graph that is wrong for some sizes (a shape folded into a
constant, an operator with other numerics) must not be deployed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitres.export.exportable import unwrap_model
from vitres.export.runtime import INPUT_NAME, onnx_session

__all__ = [
    "ExportParityError",
    "ParityReport",
    "check_parity",
    "default_check_sizes",
    "parity_providers",
]


class ExportParityError(RuntimeError):
    """The exported graph disagrees with eager PyTorch beyond the tolerance."""


@dataclass
class ParityReport:
    """ONNX Runtime vs eager PyTorch on random inputs.

    Attributes:
        max_abs_diff: ``"HxW"`` -> largest absolute logit difference at that size.
        batch_size: Images per checked batch.
        atol: The tolerance.
    """

    max_abs_diff: dict[str, float]
    batch_size: int
    atol: float

    @property
    def ok(self) -> bool:
        return all(d <= self.atol for d in self.max_abs_diff.values())

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}: {v:.2e}" for k, v in self.max_abs_diff.items())
        return f"max |onnx - eager| (batch {self.batch_size}, atol {self.atol:g}): {sizes}"


def default_check_sizes(
    model: nn.Module, example_size: tuple[int, int], patch: int, dynamic: bool = True
) -> list[tuple[int, int]]:
    """Sizes the parity check runs at.

    Dynamic: the example size, the native size, a non-square size whose grid shrinks in
    height and grows in width (exercises antialiased shrinking and enlarging at once),
    and, unless the size policy is ``error``, a size the patch divides in neither side.
    Static: the example size only.
    """
    if not dynamic:
        return [tuple(example_size)]
    native_h, native_w = (int(v) for v in unwrap_model(model)[0].config.img_size)
    sizes = [
        tuple(example_size),
        (native_h, native_w),
        (max(patch, native_h - 2 * patch), native_w + 3 * patch),
    ]
    if unwrap_model(model)[0].config.size_policy != "error":
        sizes.append((native_h + patch // 2 + 1, max(patch, native_w - patch // 2 - 1)))
    return list(dict.fromkeys(sizes))


def parity_providers(device: torch.device) -> tuple[str, ...]:
    """ONNX Runtime's execution providers for a check on ``device``.

    Raises:
        ValueError: a CUDA device, and this onnxruntime has no CUDA provider.
    """
    if device.type != "cuda":
        return ("CPUExecutionProvider",)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(
            "checking the exported graph on the GPU needs ONNX Runtime's CUDA provider, which "
            "this onnxruntime lacks: pip install onnxruntime-gpu, or check on the CPU "
            "(--device cpu)"
        )
    return ("CUDAExecutionProvider",)


def _true_fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """float32 convolutions without TF32 on a GPU (cuDNN allows TF32 by default)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    sizes: Sequence[tuple[int, int]],
    *,
    patch_size: int | None = None,
    batch_size: int = 3,
    atol: float = 1e-4,
    seed: int = 0,
    raise_on_failure: bool = True,
    device: str = "cpu",
) -> ParityReport:
    """Compares ONNX Runtime with eager PyTorch (float32) on random images.

    Args:
        model: The eager model (float32).
        onnx_path: The exported graph.
        sizes: ``(H, W)`` sizes to compare at.
        patch_size: Patch size the graph was exported with.
        batch_size: Images per batch (differs from the export example's batch on purpose).
        atol: Largest allowed absolute logit difference.
        seed: Seed of the random images.
        raise_on_failure: Raise :class:`ExportParityError` above ``atol``.
        device: ``cpu``, or a CUDA device: the graph then runs on ONNX Runtime's CUDA
            provider and eager PyTorch on that GPU (float32, TF32 off), the model moved
            there for the check and back after it.
    """
    base, bound_patch = unwrap_model(model)
    patch = int(patch_size or bound_patch or base.config.patch_size)
    target = torch.device(device)
    session = onnx_session(
        onnx_path, threads=torch.get_num_threads(), providers=parity_providers(target)
    )
    generator = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = {}
    was_training = base.training
    home = next(base.parameters()).device
    base.eval().to(target)
    try:
        for height, width in sizes:
            x = torch.randn(batch_size, base.config.in_chans, height, width, generator=generator)
            with torch.inference_mode(), _true_fp32(target):
                expected = base(x.to(target), patch_size=patch).float().cpu().numpy()
            try:
                got = session.run(None, {INPUT_NAME: x.numpy()})[0]
            except Exception as error:  # onnxruntime raises its own exception types
                raise ExportParityError(
                    f"ONNX Runtime failed at {height}x{width}: {type(error).__name__}: {error}"
                ) from error
            diffs[f"{height}x{width}"] = float(np.abs(got - expected).max())
    finally:
        base.train(was_training).to(home)
    report = ParityReport(max_abs_diff=diffs, batch_size=batch_size, atol=atol)
    if raise_on_failure and not report.ok:
        raise ExportParityError(
            f"exported graph {onnx_path} disagrees with eager PyTorch: {report}. The export "
            "is wrong for some sizes (a shape folded into a constant, or an operator with "
            "different numerics); do not deploy it"
        )
    return report

"""``fp8``: linear layers in 8-bit floating point on GPUs that have FP8 tensor cores
(NVIDIA compute capability 8.9 and up: Ada, Hopper, Blackwell).

Weights and activations are scaled to ``float8_e4m3`` per row, dynamically (the scales of
the activations are taken from each batch, so no calibration data is needed), through
torchao's ``Float8DynamicActivationFloat8WeightConfig`` (the maintained PyTorch library
for low-precision inference; Micikevicius et al., "FP8 Formats for Deep Learning", 2022).
Everything else (the patch embedding convolution, norms, attention's softmax, the
position tables) stays in bfloat16. The model is then compiled and recorded as CUDA
graphs per shape exactly as :mod:`vitres.backends.cudagraph` does, so the fp8 path has
the same bucketing, bounds and no-recording-on-switch guarantees.

Only linear layers whose input and output widths are multiples of 16 are converted (the
FP8 matrix multiply needs them); the others, usually a classifier head of 1000 or 10
classes, stay in bfloat16 (:func:`fp8_linear_names` lists the converted ones).

The accuracy cost is measured like every precision's: a sweep records accuracy through
the backend, and ``benchmarks/gpu_backends.py`` the logits' relative error and top-1
agreement against float32.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from vitres.backends.base import register_backend
from vitres.backends.cudagraph import CudaGraphBackend

MIN_CAPABILITY = (8, 9)
_ALIGNMENT = 16


def fp8_eligible(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer the FP8 matrix multiply can take."""
    return (
        isinstance(module, nn.Linear)
        and module.in_features % _ALIGNMENT == 0
        and module.out_features % _ALIGNMENT == 0
    )


def fp8_linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers of ``model`` that the ``fp8`` backend converts."""
    return [name for name, module in model.named_modules() if fp8_eligible(module)]


def fp8_support(capability: tuple[int, int] | None, torchao_found: bool) -> tuple[bool, str]:
    """``(usable, why not)`` for a GPU of compute ``capability`` (``None``: no GPU)."""
    if capability is None:
        return False, "FP8 needs an NVIDIA GPU with compute capability 8.9 or higher (Ada, Hopper)"
    if tuple(capability) < MIN_CAPABILITY:
        major, minor = capability
        return False, (
            f"this GPU has compute capability {major}.{minor}; FP8 tensor cores need 8.9 or "
            "higher (Ada, Hopper, Blackwell). Use cudagraph-bf16 here"
        )
    if not torchao_found:
        return False, "the fp8 backend needs torchao: pip install 'vitres[gpu]' (or torchao)"
    return True, ""


@register_backend
class FP8Backend(CudaGraphBackend):
    """Linear layers in FP8 (dynamic per-row scales, torchao), the rest in bfloat16,
    compiled and recorded as CUDA graphs per shape (float32 logits).

    Takes :class:`~vitres.backends.cudagraph.CudaGraphBackend`'s arguments.
    """

    name = "fp8"
    precision = "fp8"
    dtype = torch.bfloat16

    def _transform(self, model: nn.Module) -> nn.Module:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )

        model = super()._transform(model)
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        quantize_(model, config, filter_fn=lambda module, _name: fp8_eligible(module))
        self.converted = fp8_linear_names(model)
        return model

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        return fp8_support(capability, importlib.util.find_spec("torchao") is not None)


__all__ = ["FP8Backend", "fp8_eligible", "fp8_linear_names", "fp8_support"]

"""Eager PyTorch backends: ``eager`` (float32) and ``eager-bf16`` (bfloat16 weights and
activations, float32 logits). Both run under ``torch.inference_mode``. bf16 is fast on
CPUs with ``avx512_bf16`` or AMX; elsewhere it still runs, just slower than fp32."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend


@register_backend
class EagerBackend(Backend):
    """The model as it is, in float32."""

    name = "eager"
    precision = "fp32"
    dynamic_batch = True
    token_merging = True
    dtype = torch.float32

    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    def run(self, batch: Tensor) -> Tensor:
        with torch.inference_mode():
            logits = self.model(batch.to(device=self.device, dtype=self.dtype))
        return logits.float()


@register_backend
class EagerBF16Backend(EagerBackend):
    """The model cast to bfloat16 (in place); input cast to bfloat16, logits to float32."""

    name = "eager-bf16"
    precision = "bf16"
    dtype = torch.bfloat16

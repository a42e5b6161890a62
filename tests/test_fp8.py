"""The fp8 backend's CPU-side logic: which layers it converts, and its refusals on
hardware without FP8 tensor cores (a GPU below compute capability 8.9, or none)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitres
from vitres.backends import backend_class, get_backend
from vitres.backends.fp8 import fp8_eligible, fp8_linear_names, fp8_support


def test_only_linear_layers_with_widths_divisible_by_16_are_converted():
    assert fp8_eligible(nn.Linear(32, 64))
    assert not fp8_eligible(nn.Linear(32, 10))  # a 10-class head
    assert not fp8_eligible(nn.Linear(24, 64))
    assert not fp8_eligible(nn.Conv2d(3, 32, 4))  # the patch embedding stays bf16
    model = vitres.create_model(
        "vit_tiny_patch4", img_size=16, num_classes=10, embed_dim=32, depth=2, num_heads=2
    )
    names = fp8_linear_names(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    expected = [n for n in linears if n != "head"]  # qkv, proj, fc1, fc2 of each block
    assert names == expected and len(names) == 8


@pytest.mark.parametrize(
    "capability, torchao, usable, says",
    [
        (None, True, False, "compute capability 8.9 or higher"),
        ((8, 0), True, False, "this GPU has compute capability 8.0"),
        ((8, 9), False, False, "needs torchao"),
        ((9, 0), True, True, ""),
        ((10, 0), True, True, ""),
    ],
)
def test_fp8_support_by_hardware(capability, torchao, usable, says):
    ok, reason = fp8_support(capability, torchao)
    assert ok is usable and says in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_fp8_is_refused_here_with_the_reason():
    assert backend_class("fp8").precision == "fp8"
    with pytest.raises(RuntimeError, match="backend 'fp8' is not available here: FP8 needs"):
        get_backend("fp8")
    assert "fp8" not in vitres.backends.auto_backends("cpu")

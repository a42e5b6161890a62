"""The transformer MLP and its activations, each computed exactly as the source models do.

Imported models must reproduce their source to ~1e-6, so every activation a supported
source uses is here with the same formula (Hendrycks & Gimpel 2016 for GELU and its tanh
approximation; CLIP's sigmoid "quick GELU", Radford et al. 2021):

==============  =======================================  ==============================
name            formula                                  used by
==============  =======================================  ==============================
``gelu``        ``x * Phi(x)`` (erf)                     ViT, DeiT, DINOv2, timm default
``gelu_tanh``   ``F.gelu(x, approximate="tanh")``        SigLIP (HF ``gelu_pytorch_tanh``)
``gelu_new``    the tanh formula written out in Python   HF ``gelu_new``
``quick_gelu``  ``x * sigmoid(1.702 x)``                 OpenAI CLIP
``relu``        ``max(x, 0)``
==============  =======================================  ==============================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("gelu", "gelu_tanh", "gelu_new", "quick_gelu", "relu")
# mlp: fc1 -> activation -> fc2; swiglu: the SiLU-gated MLP (:class:`SwiGLU`)
MLP_KINDS = ("mlp", "swiglu")


class GELUTanh(nn.Module):
    """GELU with the tanh approximation, PyTorch's fused kernel."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


class NewGELU(nn.Module):
    """GELU's tanh approximation written out (Hugging Face's ``gelu_new``, GPT-2's GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return (
            0.5
            * x
            * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        )


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """The activation module for a name in :data:`ACTIVATIONS`."""
    builders = {
        "gelu": nn.GELU,
        "gelu_tanh": GELUTanh,
        "gelu_new": NewGELU,
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
    }
    if name not in builders:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return builders[name]()


class Mlp(nn.Module):
    """``fc2(norm(act(fc1(x))))``, the transformer's position-wise MLP (timm's module
    names); ``norm`` is an identity unless ``norm_eps`` is given (NormFormer's sub-LN)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: str = "gelu",
        out_dim: int | None = None,
        norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = make_activation(act_layer)
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps) if norm_eps else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """The gated MLP ``fc2(norm(silu(fc1_g(x)) * fc1_x(x)))`` (Shazeer 2020, "GLU
    Variants Improve Transformer"; EVA-02, DINOv3's larger models). ``norm`` is EVA-02's
    sub-LN over the hidden width when ``norm_eps`` is given, else an identity. Module names
    follow timm's ``SwiGLU``."""

    def __init__(self, dim: int, hidden_dim: int, norm_eps: float | None = None) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden_dim)
        self.fc1_x = nn.Linear(dim, hidden_dim)
        self.act = nn.SiLU()
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps) if norm_eps else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


__all__ = [
    "ACTIVATIONS",
    "MLP_KINDS",
    "GELUTanh",
    "Mlp",
    "NewGELU",
    "QuickGELU",
    "SwiGLU",
    "make_activation",
]

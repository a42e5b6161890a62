"""The optimiser of every training recipe: AdamW without decay on norms, biases and tokens.

Decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
ICLR 2019) applies to weight matrices only; norms, biases, position tables and
class/register tokens are left undecayed, as in the ViT recipes of timm and DeiT.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["build_optimizer", "param_groups"]


def _no_decay(name: str, param: Tensor) -> bool:
    return param.ndim <= 1 or any(
        key in name for key in ("pos_embed", "cls_token", "reg_token", "norm")
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on norms, biases, position tables, tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``config.lr``, ``betas`` and ``weight_decay``."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas
    )

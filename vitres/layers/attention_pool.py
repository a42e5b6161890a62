"""Multihead attention pooling ("MAP"): a learned query attends over the tokens.

The pooling head of SigLIP (Zhai et al., ICCV 2023) and big_vision's ViT ``map`` pool
(after Set Transformer's PMA, Lee et al. 2019): one latent query ``(1, 1, D)``
attends over the token sequence with multi-head attention, and the result goes through
a residual MLP, ``y = a + mlp(norm(a))``. It works for any number of tokens, so it needs
nothing to follow the resolution. Module names follow timm's ``AttentionPoolLatent``
(``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.mlp import Mlp


class AttentionPoolLatent(nn.Module):
    """Pools ``(B, N, D)`` tokens to ``(B, D)`` with one learned query."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)
        nn.init.trunc_normal_(self.latent, std=dim**-0.5)

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, key_sizes: Tensor | None = None
    ) -> Tensor:
        """Pools ``x`` (B, N, D).

        Args:
            x: the tokens.
            key_mask: ``(N,)`` or ``(B, N)`` bool, the tokens to attend to.
            key_sizes: ``(B, N)`` patches each token stands for after token merging: a
                token of size ``s`` is attended to as ``s`` copies of it (proportional
                attention, ToMe), a ``log s`` bias on its logit.
        """
        batch, tokens, dim = x.shape
        q = self.q(self.latent.expand(batch, -1, -1).to(x.dtype))
        q = q.reshape(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, 1, hd)
        kv = self.kv(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        mask = None
        if key_mask is not None:
            mask = torch.zeros(key_mask.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~key_mask.to(x.device), float("-inf"))
        if key_sizes is not None:
            bias = key_sizes.to(device=x.device, dtype=torch.float32).log().to(x.dtype)
            mask = bias if mask is None else mask + bias
        if mask is not None:
            mask = mask.reshape(-1, 1, 1, tokens)  # (B or 1, heads, queries, N)
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        pooled = self.proj(pooled.transpose(1, 2).reshape(batch, 1, dim))
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


__all__ = ["AttentionPoolLatent"]

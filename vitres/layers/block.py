"""The transformer block of the ViT: multi-head self-attention, LayerScale, stochastic
depth, and the pre-norm block (Vaswani et al., NeurIPS 2017; Dosovitskiy et al., ICLR 2021).

Module names follow timm's ``vision_transformer.py`` so timm state dicts map one to one.
Position information reaches a block as attention arguments (rotary ``(cos, sin)`` and an
additive ``attn_mask``), computed once per layout by the model's ``encode``
(:mod:`vitres.layers.positions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.mlp import Mlp, SwiGLU
from vitres.layers.pos_embed import apply_rope

__all__ = ["Attention", "Block", "LayerScale", "drop_path"]


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``, optional q/k LayerNorm.

    :meth:`forward_with_weights` computes the same output with an explicit
    ``softmax(q k^T / sqrt(head_dim) + mask)`` and returns the weights too; only
    :mod:`vitres.explain` calls it, so the normal forward stays on the fused kernel.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        inner_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        # EVA-02 CLIP's normalisation of the attention output before the projection
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if inner_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v``, each ``(B, heads, T, head_dim)``, q/k normalised, before any rotation."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        return self.q_norm(q), self.k_norm(k), v

    @staticmethod
    def _rotate(
        q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor] | None, num_prefix_tokens: int
    ) -> tuple[Tensor, Tensor]:
        """``q, k`` with the rotary embedding applied to the tokens after the prefix.

        ``rope`` is ``(cos, sin)``, each ``(T - prefix, head_dim)`` shared by the batch or
        ``(B, 1, T - prefix, head_dim)`` per sample (merged or packed tokens)."""
        if rope is None:
            return q, k
        cos, sin = rope
        p = num_prefix_tokens
        q = torch.cat([q[:, :, :p], apply_rope(q[:, :, p:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :p], apply_rope(k[:, :, p:], cos, sin)], dim=2)
        return q, k

    def _heads(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, num_prefix_tokens: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v``, each ``(B, heads, T, head_dim)``, rotary embedding applied."""
        q, k, v = self._qkv(x)
        q, k = self._rotate(q, k, rope, num_prefix_tokens)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        q, k, v = self._heads(x, rope, num_prefix_tokens)
        return self._attend(q, k, v, attn_mask, x.shape)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, shape: torch.Size
    ) -> Tensor:
        """Fused attention of per-head ``q, k, v`` back to ``shape`` ``(B, T, D)``, projected."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(self.norm(out.transpose(1, 2).reshape(shape)))

    def forward_with_metric(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The output of :meth:`forward` and the keys averaged over heads, ``(B, T, head_dim)``
        before any rotation: the similarity metric of token merging
        (token merging, :mod:`vitres.tokens.merge`)."""
        q, k, v = self._qkv(x)
        metric = sum(k.unbind(dim=1)) / self.num_heads  # k.mean(dim=1), 3x faster on CPU
        q, k = self._rotate(q, k, rope, num_prefix_tokens)
        return self._attend(q, k, v, attn_mask, x.shape), metric

    def forward_with_weights(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The output of :meth:`forward` computed explicitly, and the attention weights.

        Returns:
            ``(output (B, T, D), weights (B, heads, T, T))``; ``weights[b, h, i, j]`` is
            how much query token ``i`` takes from key token ``j`` (rows sum to 1).
        """
        batch, tokens, dim = x.shape
        q, k, v = self._heads(x, rope, num_prefix_tokens)
        logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, heads, T, T)
        if attn_mask is not None:
            logits = logits + attn_mask
        weights = logits.float().softmax(dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(self.norm(out)), weights


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``x * gamma`` (CaiT / DeiT-3 / DINOv2)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drops whole residual branches per sample while training."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block, with LayerScale when ``init_values`` is set; with
    ``res_post_norm`` the norms act on each branch's output instead
    (``x + norm(attn(x))``, Swin-V2's residual post-norm; EVA-02-E's post-norm block)."""

    def __init__(self, cfg, drop_path_rate: float = 0.0) -> None:
        """Args:
        cfg: the model's config (a :class:`~vitres.models.config.ViTConfig`: ``embed_dim``,
            ``num_heads``, ``qkv_bias``, ``qk_norm``, ``norm_eps``, ``init_values``,
            ``mlp_ratio``, ``act_layer``, ``mlp_kind``, ``mlp_norm``, ``attn_norm``,
            ``res_post_norm``).
        drop_path_rate: the stochastic-depth rate of this block.
        """
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(
            dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm, cfg.norm_eps, cfg.attn_norm
        )
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        hidden, sub_norm = int(dim * cfg.mlp_ratio), cfg.norm_eps if cfg.mlp_norm else None
        if cfg.mlp_kind == "swiglu":
            self.mlp = SwiGLU(dim, hidden, sub_norm)
        else:
            self.mlp = Mlp(dim, hidden, cfg.act_layer, norm_eps=sub_norm)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path_rate = drop_path_rate
        self.res_post_norm = cfg.res_post_norm

    def _residual(self, x: Tensor, branch: Tensor, scale: nn.Module) -> Tensor:
        return x + drop_path(scale(branch), self.drop_path_rate, self.training)

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        if self.res_post_norm:
            x = self._residual(x, self.norm1(self.attn(x, **attn_kwargs)), self.ls1)
        else:
            x = self._residual(x, self.attn(self.norm1(x), **attn_kwargs), self.ls1)
        return self.forward_mlp(x)

    def forward_attention(self, x: Tensor, **attn_kwargs) -> tuple[Tensor, Tensor]:
        """The first half of :meth:`forward` (attention and its residual) and the keys
        averaged over heads, ``(B, T, head_dim)``: the similarity metric a token reduction
        between the attention and the MLP uses (token merging, ToMe)."""
        if self.res_post_norm:
            out, metric = self.attn.forward_with_metric(x, **attn_kwargs)
            return self._residual(x, self.norm1(out), self.ls1), metric
        out, metric = self.attn.forward_with_metric(self.norm1(x), **attn_kwargs)
        return self._residual(x, out, self.ls1), metric

    def forward_mlp(self, x: Tensor) -> Tensor:
        """The second half of :meth:`forward`: the MLP and its residual."""
        if self.res_post_norm:
            return self._residual(x, self.norm2(self.mlp(x)), self.ls2)
        return self._residual(x, self.mlp(self.norm2(x)), self.ls2)

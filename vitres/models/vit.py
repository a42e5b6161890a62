"""Vision Transformer (Dosovitskiy et al., ICLR 2021) that runs at any resolution and patch size.

Resolution is a run-time property: ``model(x)`` accepts any ``H x W`` and
``model(x, patch_size=p)`` any patch size (FlexiViT PI-resize of the patch kernel). The
position information follows the token grid of each input, by the kind chosen at build
time (``ViTConfig.pos_embed``):

* ``learned``: a table learned for the native grid, resampled per grid
  (``pos_embed_mode``: nearest, bilinear, bicubic, area or fourier);
* ``sincos``: fixed 2-D sin-cos, regenerated per grid;
* ``rope``: 2-D axial rotary embedding of q and k;
* ``cpb``: Swin-V2 continuous relative position bias on the attention logits;
* ``mlp``: an MLP of normalised patch coordinates.

Module names follow timm's ``VisionTransformer`` so timm state dicts map one to one.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import VersionedCache, is_tracing
from vitres.layers.patch_embed import PatchEmbed, PatchSize, fit_to_patch, padded_token_mask
from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    CoordinateMLPPosEmbed,
    apply_rope,
    resample_pos_embed,
    rope_2d,
    sincos_2d,
)
from vitres.models.common import AnyResolutionMixin
from vitres.models.config import GLOBAL_POOLS, POS_EMBED_KINDS, ViTConfig

__all__ = ["GLOBAL_POOLS", "POS_EMBED_KINDS", "VisionTransformer", "ViTConfig"]


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        if rope is not None:
            cos, sin = rope
            p = num_prefix_tokens
            q = torch.cat([q[:, :, :p], apply_rope(q[:, :, p:], cos, sin)], dim=2)
            k = torch.cat([k[:, :, :p], apply_rope(k[:, :, p:], cos, sin)], dim=2)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drops whole residual branches per sample while training."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        x = x + drop_path(
            self.attn(self.norm1(x), **attn_kwargs), self.drop_path_rate, self.training
        )
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class VisionTransformer(AnyResolutionMixin, nn.Module):
    """A ViT whose resolution and patch size are chosen per call.

    Example:
        >>> model = create_model("vit_tiny_patch16", img_size=32, num_classes=10)
        >>> model(torch.randn(2, 3, 48, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: ViTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = dataclasses.replace(config, **overrides) if config else ViTConfig(**overrides)
        self.config = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, cfg.reg_tokens, dim)) if cfg.reg_tokens else None
        )
        grid = cfg.grid
        self.pos_embed = None
        if cfg.pos_embed == "learned":
            table_len = grid[0] * grid[1] + (cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0)
            self.pos_embed = nn.Parameter(torch.randn(1, table_len, dim) * 0.02)
        self.pos_mlp = CoordinateMLPPosEmbed(dim) if cfg.pos_embed == "mlp" else None
        self.cpb = (
            nn.ModuleList(
                ContinuousPositionBias(cfg.num_heads, grid, cfg.cpb_hidden_dim)
                for _ in range(cfg.depth)
            )
            if cfg.pos_embed == "cpb"
            else None
        )
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._cache = VersionedCache()
        self._init_weights()

    # ---------------------------------------------------------------- construction
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / w[0].numel()))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    # ---------------------------------------------------------------- position
    def _learned_pos(self, grid: tuple[int, int]) -> Tensor:
        cfg = self.config
        prefix = cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0
        return self._cache.get(
            ("learned", grid, cfg.pos_embed_mode, cfg.pos_embed_antialias),
            [self.pos_embed],
            lambda: resample_pos_embed(
                self.pos_embed, grid, cfg.grid, prefix, cfg.pos_embed_mode, cfg.pos_embed_antialias
            ),
            enabled=not self.training,
        )

    def _fixed(self, key: tuple, fn) -> Tensor:
        """Caches parameter-free tables (sincos, rope) for every mode, training included."""
        return self._cache.get(key, [], fn, enabled=True)

    def _add_prefix_and_pos(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        cfg = self.config
        batch = x.shape[0]
        if cfg.pos_embed == "sincos":
            pos = self._fixed(
                ("sincos", grid, str(x.device)),
                lambda: sincos_2d(grid, cfg.embed_dim, cfg.grid).to(x.device),
            )
            x = x + pos.to(x.dtype)
        elif cfg.pos_embed == "mlp":
            x = x + self._cache.get(
                ("mlp", grid),
                list(self.pos_mlp.parameters()),
                lambda: self.pos_mlp(grid),
                enabled=not self.training,
            ).to(x.dtype)
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(batch, -1, -1).to(x.dtype))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1).to(x.dtype))
        if cfg.pos_embed == "learned":
            pos = self._learned_pos(grid).to(x.dtype)
            if cfg.pos_embed_prefix:
                x = torch.cat(prefix + [x], dim=1) + pos
            else:
                x = torch.cat(prefix + [x + pos], dim=1)
        elif prefix:
            x = torch.cat(prefix + [x], dim=1)
        return x

    # ---------------------------------------------------------------- forward
    def _features(
        self, x: Tensor, patch_size: PatchSize | None, valid_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor | None]:
        cfg = self.config
        x, p, valid_size = self._checked_input(x, patch_size, valid_size)
        x, content_hw = fit_to_patch(x, p, cfg.size_policy)
        if valid_size is not None:
            content_hw = (min(content_hw[0], valid_size[0]), min(content_hw[1], valid_size[1]))
        tokens, grid = self.patch_embed(
            x, p, cfg.kernel_resize_mode, cfg.kernel_resize_antialias
        )  # (B, N, D)
        tokens = self._add_prefix_and_pos(tokens, grid)
        num_prefix = self.num_prefix_tokens
        keep = None if is_tracing() else padded_token_mask(grid, content_hw, p)
        attn_mask = None
        if keep is not None:
            keep = torch.cat([keep.new_ones(num_prefix), keep]).to(tokens.device)
            attn_mask = torch.zeros(keep.shape, dtype=tokens.dtype, device=tokens.device)
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))[None, None, None, :]
        rope = None
        if cfg.pos_embed == "rope":
            head_dim = cfg.embed_dim // cfg.num_heads
            cos, sin = self._fixed(
                ("rope", grid, str(tokens.device)),
                lambda: tuple(
                    t.to(tokens.device) for t in rope_2d(grid, head_dim, cfg.grid, cfg.rope_theta)
                ),
            )
            rope = (cos, sin)
        for index, block in enumerate(self.blocks):
            mask = attn_mask
            if self.cpb is not None:
                bias = self._cache.get(
                    ("cpb", index, grid),
                    list(self.cpb[index].parameters()),
                    lambda b=index: self.cpb[b](grid, num_prefix),
                    enabled=not self.training,
                ).to(tokens.dtype)[None]
                mask = bias if mask is None else bias + mask
            tokens = block(tokens, rope=rope, num_prefix_tokens=num_prefix, attn_mask=mask)
        if cfg.global_pool == "token":
            tokens = self.norm(tokens)
        return tokens, keep

    def forward_features(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Token features ``(B, prefix + rows * cols, D)`` (after the final norm for token pooling)."""
        return self._features(x, patch_size, valid_size)[0]

    def forward_head(
        self, tokens: Tensor, token_mask: Tensor | None = None, pre_logits: bool = False
    ) -> Tensor:
        """Pools the tokens (class token or mean of content tokens) and classifies."""
        if self.config.global_pool == "token":
            pooled = tokens[:, 0]
        else:
            patch = tokens[:, self.num_prefix_tokens :]
            if token_mask is None:
                pooled = patch.mean(dim=1)
            else:
                weights = token_mask[self.num_prefix_tokens :].to(patch.dtype)[None, :, None]
                pooled = (patch * weights).sum(dim=1) / weights.sum(dim=1)
            pooled = self.norm(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Classifies images of any size.

        Args:
            x: ``(B, in_chans, H, W)`` float images, any ``H x W`` of at least one patch.
            patch_size: the patch side for this call; the stored size when omitted.
            valid_size: ``(h, w)`` of real content in the top-left corner when the rest is
                padding; tokens with no content are masked out of attention and pooling.

        Returns:
            Logits ``(B, num_classes)`` (features ``(B, D)`` when ``num_classes == 0``).
        """
        tokens, keep = self._features(x, patch_size, valid_size)
        return self.forward_head(tokens, keep)

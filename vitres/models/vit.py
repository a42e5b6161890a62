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

``model(x, token_budget=K)`` tokenises with mixed-resolution tokens instead: a quadtree
of fine and coarse patches under a budget of ``K`` tokens (:mod:`vitres.tokens.quadtree`).

Module names follow timm's ``VisionTransformer`` so timm state dicts map one to one, and
the options of the families vitres imports are built in: DeiT's distillation token and
head (Touvron et al., ICML 2021), LayerScale (Touvron et al., ICCV 2021; DINOv2),
register tokens (Darcet et al., ICLR 2024), q/k normalisation, CLIP's pre-LayerNorm and
bias-free projection (Radford et al., ICML 2021), SigLIP's attention-pool head (Zhai et
al., ICCV 2023), and timm's pools (token, avg, max, avgmax, map) with the final norm
before or after pooling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.attention_pool import AttentionPoolLatent
from vitres.layers.cache import VersionedCache, is_tracing
from vitres.layers.mlp import Mlp
from vitres.layers.patch_embed import (
    PatchEmbed,
    PatchSize,
    fit_to_patch,
    padded_token_mask,
    to_patch,
)
from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    CoordinateMLPPosEmbed,
    apply_rope,
    resample_pos_embed,
    rope_2d,
    rope_at,
    sincos_2d,
    sincos_at,
)
from vitres.models.common import AnyResolutionMixin
from vitres.models.config import GLOBAL_POOLS, POS_EMBED_KINDS, ViTConfig
from vitres.tokens.merge import MergeSpec, merge_is_identity, merge_schedule, merged_forward
from vitres.tokens.pack import PackPlan, pack, run_plan
from vitres.tokens.quadtree import (
    QuadtreePlan,
    QuadtreeTokenizer,
    cell_centres,
    cell_means,
    embed_cells,
)

__all__ = ["GLOBAL_POOLS", "POS_EMBED_KINDS", "VisionTransformer", "ViTConfig"]


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
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
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
        return self.proj(out.transpose(1, 2).reshape(shape))

    def forward_with_metric(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The output of :meth:`forward` and the keys averaged over heads, ``(B, T, head_dim)``
        before any rotation: the similarity metric of token merging
        (:mod:`vitres.tokens.merge`)."""
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
        return self.proj(out), weights


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
    """Pre-norm transformer block, with LayerScale when ``init_values`` is set."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm, cfg.norm_eps)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.act_layer)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        rate, training = self.drop_path_rate, self.training
        x = x + drop_path(self.ls1(self.attn(self.norm1(x), **attn_kwargs)), rate, training)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), rate, training)

    def forward_merging(
        self, x: Tensor, merge: Callable[[Tensor, Tensor], Tensor], **attn_kwargs
    ) -> Tensor:
        """:meth:`forward` with token merging between the attention and the MLP (ToMe):
        ``merge(x, metric)`` returns the merged tokens (:mod:`vitres.tokens.merge`)."""
        rate, training = self.drop_path_rate, self.training
        out, metric = self.attn.forward_with_metric(self.norm1(x), **attn_kwargs)
        x = merge(x + drop_path(self.ls1(out), rate, training), metric)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), rate, training)


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
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim, cfg.patch_embed_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.dist_token else None
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
        self.norm_pre = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        # one final norm, on the tokens (before pooling) or on the pooled vector (fc_norm)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn_pool = (
            AttentionPoolLatent(dim, cfg.num_heads, cfg.mlp_ratio, cfg.act_layer, cfg.norm_eps)
            if cfg.global_pool == "map"
            else None
        )
        self.pre_logits = None
        if cfg.representation_size:  # Linear + tanh (Hugging Face's pooler)
            pooled = 2 * dim if cfg.global_pool == "token_avg" else dim
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(pooled, cfg.representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
        self.head = (
            nn.Linear(cfg.pooled_dim, cfg.num_classes, bias=cfg.head_bias)
            if cfg.num_classes > 0
            else nn.Identity()
        )
        self.head_dist = nn.Linear(dim, cfg.num_classes) if cfg.head_dist else None
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
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, module.init_values)
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

    def _prefix_tokens(self, batch: int, dtype: torch.dtype) -> list[Tensor]:
        """The class, distillation and register tokens, each ``(B, n, D)``, in that order."""
        prefix = []
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                prefix.append(token.expand(batch, -1, -1).to(dtype))
        return prefix

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
        prefix = self._prefix_tokens(batch, x.dtype)
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
    def _embed(
        self, x: Tensor, patch_size: PatchSize | None, valid_size: tuple[int, int] | None
    ) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        """The checked input as tokens ``(B, prefix + N, D)`` (position and pre-norm
        applied), its grid, and the content mask ``(prefix + N,)`` (``None``: all content)."""
        cfg = self.config
        x, p, valid_size = self._checked_input(x, patch_size, valid_size)
        x, content_hw = fit_to_patch(x, p, cfg.size_policy)
        if valid_size is not None:
            content_hw = (min(content_hw[0], valid_size[0]), min(content_hw[1], valid_size[1]))
        tokens, grid = self.patch_embed(
            x, p, cfg.kernel_resize_mode, cfg.kernel_resize_antialias
        )  # (B, N, D)
        tokens = self.norm_pre(self._add_prefix_and_pos(tokens, grid))
        keep = None if is_tracing() else padded_token_mask(grid, content_hw, p)
        if keep is not None:
            keep = torch.cat([keep.new_ones(self.num_prefix_tokens), keep]).to(tokens.device)
        return tokens, grid, keep

    def _rope(self, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor] | None:
        """The (cached) rotary ``(cos, sin)`` tables of a grid, ``None`` without RoPE."""
        cfg = self.config
        if cfg.pos_embed != "rope":
            return None
        head_dim = cfg.embed_dim // cfg.num_heads
        return self._fixed(
            ("rope", grid, str(device)),
            lambda: tuple(t.to(device) for t in rope_2d(grid, head_dim, cfg.grid, cfg.rope_theta)),
        )

    def _cpb_bias(self, index: int, grid: tuple[int, int]) -> Tensor:
        """The (cached) continuous position bias ``(heads, prefix + N, prefix + N)`` of
        block ``index`` on a grid."""
        return self._cache.get(
            ("cpb", index, grid),
            list(self.cpb[index].parameters()),
            lambda: self.cpb[index](grid, self.num_prefix_tokens),
            enabled=not self.training,
        )

    def _cpb_offsets(self, index: int, grid: tuple[int, int]) -> Tensor:
        """The (cached) bias per token offset ``(heads, 2 rows - 1, 2 cols - 1)`` of block
        ``index``'s continuous position bias (for merged tokens between grid cells)."""
        return self._cache.get(
            ("cpb-offsets", index, grid),
            list(self.cpb[index].parameters()),
            lambda: self.cpb[index].offset_table(grid),
            enabled=not self.training,
        )

    def _token_norm(self, tokens: Tensor) -> Tensor:
        """The final norm when it acts on the tokens (else it acts on the pool)."""
        return tokens if self.config.use_fc_norm else self.norm(tokens)

    def _features(
        self, x: Tensor, patch_size: PatchSize | None, valid_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor | None]:
        tokens, grid, keep = self._embed(x, patch_size, valid_size)
        num_prefix = self.num_prefix_tokens
        attn_mask = None
        if keep is not None:
            attn_mask = torch.zeros(keep.shape, dtype=tokens.dtype, device=tokens.device)
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))[None, None, None, :]
        rope = self._rope(grid, tokens.device)
        for index, block in enumerate(self.blocks):
            mask = attn_mask
            if self.cpb is not None:
                bias = self._cpb_bias(index, grid).to(tokens.dtype)[None]
                mask = bias if mask is None else bias + mask
            tokens = block(tokens, rope=rope, num_prefix_tokens=num_prefix, attn_mask=mask)
        return self._token_norm(tokens), keep

    def forward_features(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """The token sequence ``(B, prefix + rows * cols, D)``, prefix tokens first (class,
        distillation, registers); after the final norm unless that norm acts on the pool."""
        return self._features(x, patch_size, valid_size)[0]

    def pool(
        self,
        tokens: Tensor,
        token_mask: Tensor | None = None,
        token_sizes: Tensor | None = None,
    ) -> Tensor:
        """The pooled vector ``(B, D)`` (``(B, 2D)`` for ``token_avg``) before any final norm.

        ``token_mask`` (prefix + patches,), or ``(B, prefix + patches)`` per sample, marks
        the tokens with content; padding-only tokens are left out of the mean, the max
        and the attention pool. ``token_sizes`` ``(B, patches)`` counts the patches each
        token stands for (after token merging, or a coarse token of mixed-resolution
        tokens): the mean and the attention pool weigh each token by it, so merging keeps
        the mean over the original patches and every part of the image counts by its area,
        as on a uniform grid (the max does not use it).
        """
        cfg = self.config
        if cfg.global_pool == "token":
            return tokens[:, 0]
        prefix = self.num_prefix_tokens
        patch = tokens[:, prefix:]
        keep = None if token_mask is None else token_mask[..., prefix:].to(tokens.device)
        if cfg.global_pool == "map":
            return self.attn_pool(patch, keep, token_sizes)
        if keep is None and token_sizes is None:
            mean = patch.mean(dim=1)
            amax = patch.amax(dim=1) if cfg.global_pool in ("max", "avgmax") else None
        else:
            weights = patch.new_ones(1, patch.shape[1]) if keep is None else keep.to(patch.dtype)
            if token_sizes is not None:
                weights = weights * token_sizes.to(patch.dtype)
            weights = weights.reshape(-1, patch.shape[1], 1)  # (B or 1, N, 1)
            mean = (patch * weights).sum(dim=1) / weights.sum(dim=1)
            amax = patch if keep is None else patch.masked_fill(~keep[..., None], float("-inf"))
            amax = amax.amax(dim=1)
        if cfg.global_pool == "avg":
            return mean
        if cfg.global_pool == "max":
            return amax
        if cfg.global_pool == "avgmax":
            return 0.5 * (amax + mean)
        return torch.cat([tokens[:, 0], mean], dim=-1)  # token_avg

    def forward_head(
        self,
        tokens: Tensor,
        token_mask: Tensor | None = None,
        pre_logits: bool = False,
        token_sizes: Tensor | None = None,
    ) -> Tensor:
        """Pools the tokens, applies the final norm when it acts on the pool, the
        representation layer if any, and classifies (the mean of the class and
        distillation heads for a DeiT with a distillation head). ``token_mask`` and
        ``token_sizes`` are :meth:`pool`'s."""
        pooled = self.pool(tokens, token_mask, token_sizes)
        if self.config.use_fc_norm:
            pooled = self.norm(pooled)
        if self.pre_logits is not None:
            pooled = self.pre_logits(pooled)
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.head_dist is not None:
            logits = (logits + self.head_dist(tokens[:, 1])) / 2
        return logits

    def forward(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
        merge: MergeSpec | None = None,
        token_budget: int | None = None,
        quadtree: QuadtreeTokenizer | None = None,
    ) -> Tensor:
        """Classifies (or embeds) images of any size.

        Args:
            x: ``(B, in_chans, H, W)`` float images, any ``H x W`` of at least one patch.
            patch_size: the patch size for this call (an int or ``(h, w)``); the stored
                size when omitted. With a token budget: the fine patch.
            valid_size: ``(h, w)`` of real content in the top-left corner when the rest is
                padding; tokens with no content are masked out of attention and pooling
                (with a token budget the padding is cropped off before tokenising).
            merge: token merging (ToMe, :mod:`vitres.tokens.merge`) inside the blocks: an
                int ``r`` merges ``r`` patch tokens in every block, a float in ``(0, 1]``
                keeps about that fraction of the patch tokens by the last block.
                ``None``, ``0`` and ``1.0`` run the plain forward.
            token_budget: mixed-resolution tokens (:mod:`vitres.tokens.quadtree`): at most
                this many patch tokens per image, coarse where the image is flat and fine
                where it has detail; ``None``: one patch size everywhere.
            quadtree: the quadtree's levels and saliency (default
                ``QuadtreeTokenizer()``: patches of p, 2p and 4p, gradient saliency).

        Returns:
            Logits ``(B, num_classes)``; for a model without a classifier
            (``num_classes == 0``) the pooled embedding, as the source model returns it
            (e.g. DINOv2's normed class token, SigLIP's attention pool, a ViT's pooler).
        """
        merging = merge is not None and not merge_is_identity(merge)
        if merging and (token_budget is not None or quadtree is not None):
            raise ValueError(
                "merge and token_budget cannot be combined yet: token merging (merge=) runs "
                "on a uniform patch grid; pass one of merge= or token_budget=, not both"
            )
        if merging:
            return merged_forward(self, x, merge, patch_size, valid_size)
        if token_budget is not None or quadtree is not None:
            return self.forward_quadtree(x, token_budget, patch_size, valid_size, quadtree)
        tokens, keep = self._features(x, patch_size, valid_size)
        return self.forward_head(tokens, keep)

    # ---------------------------------------------------------------- token adaptivity
    def merge_schedule(
        self,
        image_size: tuple[int, int] | Sequence[int],
        merge: MergeSpec,
        patch_size: PatchSize | None = None,
    ) -> tuple[int, ...]:
        """Patch tokens merged in each block for an ``(H, W)`` input (see :meth:`forward`)."""
        rows, cols = self.grid_size(tuple(int(v) for v in image_size), patch_size)
        return merge_schedule(merge, rows * cols, self.config.depth)

    def forward_packed(
        self,
        images: Sequence[Tensor] | PackPlan,
        strategy: str = "auto",
        **pack_options,
    ) -> Tensor:
        """One prediction per image for images of different sizes, equal to running each
        image alone at its own size (NaViT-style packing, :mod:`vitres.tokens.pack`).

        Args:
            images: ``(in_chans, H_i, W_i)`` float images, or a plan from :func:`vitres.pack`.
            strategy: ``loop``, ``bucket``, ``pad``, ``pack`` or ``auto`` (by measurement);
                ignored for a plan.
            **pack_options: :func:`vitres.pack`'s options (``max_tokens``,
                ``batch_tokens``, ``patch_size``...).

        Returns:
            ``(len(images), num_classes)`` logits in the order of ``images``.
        """
        plan = (
            images if isinstance(images, PackPlan) else pack(images, self, strategy, **pack_options)
        )
        return run_plan(self, plan)

    # ---------------------------------------------------------------- mixed-resolution tokens
    def quadtree_plan(
        self,
        x: Tensor,
        token_budget: int,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
        quadtree: QuadtreeTokenizer | None = None,
    ) -> tuple[Tensor, QuadtreePlan]:
        """The checked, size-fitted input and each image's quadtree under ``token_budget``.

        The input goes through the same checks and size policy as :meth:`forward` (the
        fine patch decides the grid); padding outside ``valid_size`` is cropped first, so
        no token holds only padding.
        """
        if token_budget is None:
            raise ValueError(
                "a quadtree needs token_budget=K (patch tokens per image); without one the "
                "model runs on one patch size (drop quadtree=)"
            )
        if is_tracing():
            raise ValueError(
                "mixed-resolution tokens choose regions from the pixels at run time, which "
                "a traced or exported graph cannot do; export the model without token_budget"
            )
        x, p, valid_size = self._checked_input(x, patch_size, valid_size)
        if valid_size is not None:
            x = x[..., : valid_size[0], : valid_size[1]]
        tokenizer = quadtree or QuadtreeTokenizer()
        if tokenizer.align == "resize":  # whole coarsest cells: resize to their multiple
            ph, pw = to_patch(p)
            x, _ = fit_to_patch(x, (ph * tokenizer.coarsest, pw * tokenizer.coarsest), "resize")
        x, _ = fit_to_patch(x, p, self.config.size_policy)
        return x, tokenizer.plan(x, p, token_budget)

    def forward_quadtree(
        self,
        x: Tensor,
        token_budget: int,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
        quadtree: QuadtreeTokenizer | None = None,
    ) -> Tensor:
        """``forward`` with mixed-resolution tokens (see :meth:`forward`)."""
        x, plan = self.quadtree_plan(x, token_budget, patch_size, valid_size, quadtree)
        return self.forward_plan(x, plan)

    def forward_plan(self, x: Tensor, plan: QuadtreePlan) -> Tensor:
        """Logits of images tokenised by ``plan`` (``x`` as :meth:`quadtree_plan` returns it).

        Images whose trees have the same token count run as one batch; different counts
        (possible on grids the coarsest cell does not divide) run as separate batches, so
        no padding token ever enters attention or pooling and each image's logits are
        those of running it alone.
        """
        groups: dict[int, list[int]] = {}
        for image, count in enumerate(plan.counts):
            groups.setdefault(count, []).append(image)
        outputs = []
        for images in groups.values():
            index = torch.stack([plan.index[i] for i in images])  # (b, N) cells
            sizes = plan.token_sizes(index).to(x.device) if plan.proportional else None
            tokens = self._quadtree_features(x[images], plan, index, sizes)
            outputs.append((images, self.forward_head(tokens, token_sizes=sizes)))
        if len(outputs) == 1:
            return outputs[0][1]
        first = outputs[0][1]
        logits = first.new_empty((x.shape[0], *first.shape[1:]))
        for images, out in outputs:
            logits[images] = out
        return logits

    def _quadtree_features(
        self, x: Tensor, plan: QuadtreePlan, index: Tensor, sizes: Tensor | None
    ) -> Tensor:
        """Tokens ``(b, prefix + N, D)`` of images that share a token count ``N``.

        ``index`` (b, N) names each token's cell; embeddings, positions and centres are
        computed once per cell of the grid and gathered. With ``sizes`` (b, N), how many
        of the image's finest tokens each token stands for, attention is proportional
        (ToMe, Bolya et al., ICLR 2023): ``log(size)`` is added to the logits of each
        key, so a coarse token draws the attention its pixels would as finer tokens.
        """
        cfg = self.config
        cells, grid = plan.cells, plan.grid
        mode = plan.kernel_resize_mode or cfg.kernel_resize_mode

        def kernel(size: tuple[int, int]) -> Tensor:
            return self.patch_embed.kernel(size, mode, cfg.kernel_resize_antialias)

        table = embed_cells(x, kernel, self.patch_embed.proj.bias, plan.patch, cells)  # (b, M, D)
        tokens = table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]).to(x.device))
        ys, xs = cell_centres(cells)  # (M,) in [-1, 1]
        ys, xs = ys[index], xs[index]  # (b, N)
        base_ys, base_xs = ys * cfg.grid[0] / 2, xs * cfg.grid[1] / 2  # base-grid patch units
        num_prefix = self.num_prefix_tokens
        prefix_pos = None
        if cfg.pos_embed == "learned":
            pos = self._learned_pos(grid)[0].to(tokens.dtype)  # (prefix? + rows * cols, D)
            first = num_prefix if cfg.pos_embed_prefix else 0
            prefix_pos = pos[:first] if first else None
            if plan.table_positions == "average":
                table = cell_means(pos[first:], cells)
            else:  # the table at each level's own grid, as the uniform model at that patch
                table = torch.cat(
                    [self._learned_pos(shape)[0, first:] for shape in cells.level_shapes]
                ).to(tokens.dtype)
            tokens = tokens + table[index.to(pos.device)]
        elif cfg.pos_embed == "sincos":
            tokens = tokens + sincos_at(base_ys, base_xs, cfg.embed_dim).to(tokens)
        elif cfg.pos_embed == "mlp":
            tokens = tokens + self.pos_mlp.at(ys, xs).to(tokens.dtype)
        prefix = self._prefix_tokens(tokens.shape[0], tokens.dtype)
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix = prefix + prefix_pos
            tokens = torch.cat([prefix, tokens], dim=1)
        tokens = self.norm_pre(tokens)
        rope = None
        if cfg.pos_embed == "rope":
            cos, sin = rope_at(base_ys, base_xs, cfg.embed_dim // cfg.num_heads, cfg.rope_theta)
            rope = (cos[:, None].to(tokens.device), sin[:, None].to(tokens.device))
        proportional = None
        if sizes is not None:
            proportional = F.pad(sizes.to(tokens).log(), (num_prefix, 0))[:, None, None, :]
        for number, block in enumerate(self.blocks):
            bias = proportional
            if self.cpb is not None:
                bias = self.cpb[number].at(base_ys, base_xs, num_prefix).to(tokens.dtype)
                bias = bias if proportional is None else bias + proportional
            tokens = block(tokens, rope=rope, num_prefix_tokens=num_prefix, attn_mask=bias)
        if not cfg.use_fc_norm:
            tokens = self.norm(tokens)
        return tokens

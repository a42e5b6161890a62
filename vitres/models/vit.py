"""Vision Transformer (Dosovitskiy et al., ICLR 2021) that runs at any resolution and patch size.

Resolution is a run-time property: ``model(x)`` accepts any ``H x W`` and
``model(x, patch_size=p)`` any patch size (FlexiViT PI-resize of the patch kernel). The
position information follows the token grid of each input, by the kind chosen at build
time (``ViTConfig.pos_embed``, :mod:`vitres.layers.positions`):

* ``learned``: a table learned for the native grid, resampled per grid
  (``pos_embed_mode``: nearest, bilinear, bicubic, area or fourier);
* ``sincos``: fixed 2-D sin-cos, regenerated per grid;
* ``rope``: 2-D axial rotary embedding of q and k, on base-grid or normalised centres or
  on patch indices (``rope_coords``), or with learned per-block frequencies
  (``rope_mixed``, RoPE-Mixed); ``pos_embed_rope`` adds it to an additive kind (EVA-02);
* ``cpb``: Swin-V2 continuous relative position bias on the attention logits;
* ``mlp``: an MLP of normalised patch coordinates.

One token pipeline: :meth:`VisionTransformer.tokenize` turns images into a
:class:`~vitres.layers.layout.TokenLayout`, :meth:`VisionTransformer.encode` runs the
blocks on any layout (the model's only block loop, with an optional per-block token
reduction such as merging), and :meth:`VisionTransformer.forward_head` pools and
classifies. Token kinds beyond the uniform grid (merging, quadtree, packing) build
layouts through this public API in :mod:`vitres.tokens`.

Module names follow timm's ``VisionTransformer`` so timm state dicts map one to one, and
the options of the families vitres imports are built in: DeiT's distillation token and
head (Touvron et al., ICML 2021), LayerScale (Touvron et al., ICCV 2021; DINOv2),
register tokens (Darcet et al., ICLR 2024), q/k normalisation, CLIP's pre-LayerNorm and
bias-free projection (Radford et al., ICML 2021), SigLIP's attention-pool head (Zhai et
al., ICCV 2023), timm's pools (token, avg, max, avgmax, map) with the final norm
before or after pooling (or none), and the options of timm's ``eva.py`` (EVA-02's SwiGLU
with sub-LN and attention-output norm, Fang et al. 2023; PE's attention pool over every
token, Bolya et al. 2025).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch
from torch import Tensor, nn

from vitres.layers.attention_pool import AttentionPoolLatent
from vitres.layers.block import Attention, Block, LayerScale, drop_path
from vitres.layers.cache import VersionedCache, is_tracing
from vitres.layers.layout import TokenLayout
from vitres.layers.patch_embed import PatchEmbed, PatchSize, fit_to_patch, padded_token_mask
from vitres.layers.pos_embed import ContinuousPositionBias, CoordinateMLPPosEmbed
from vitres.layers.positions import (
    ContinuousBiasPositions,
    CoordinateMLPPositions,
    LearnedPositions,
    MixedRotaryPositions,
    RelativeTablePositions,
    RotaryPositions,
    SinCosPositions,
)
from vitres.layers.rel_pos_table import RelativePositionTable
from vitres.models.common import AnyResolutionMixin
from vitres.models.config import GLOBAL_POOLS, POS_EMBED_KINDS, ViTConfig

__all__ = [
    "GLOBAL_POOLS",
    "POS_EMBED_KINDS",
    "Attention",
    "Block",
    "TokenReduction",
    "VisionTransformer",
    "ViTConfig",
    "drop_path",
]


class TokenReduction(Protocol):
    """A per-block token reduction run by :meth:`VisionTransformer.encode` between each
    block's attention and its MLP (token merging, :mod:`vitres.tokens.merge`)."""

    def __call__(
        self, index: int, tokens: Tensor, metric: Tensor, layout: TokenLayout
    ) -> tuple[Tensor, TokenLayout]:
        """Reduces the tokens after block ``index``'s attention.

        Args:
            index: the block.
            tokens: ``(B, T, D)`` after the attention and its residual.
            metric: ``(B, T, head_dim)`` the keys averaged over heads, before rotation.
            layout: the layout the block ran on.

        Returns:
            The reduced tokens and their layout (``layout`` itself when nothing changed;
            a new layout holds the reduced tokens, and its positions are recomputed for
            the next block).
        """
        ...


@dataclasses.dataclass(frozen=True)
class _PositionKinds:
    """The position-kind objects of one config (rebuilt when the config is replaced)."""

    learned: LearnedPositions
    sincos: SinCosPositions
    coordinate_mlp: CoordinateMLPPositions
    rotary: RotaryPositions
    relative_bias: ContinuousBiasPositions
    relative_table: RelativeTablePositions
    mixed_rotary: MixedRotaryPositions

    @classmethod
    def of(cls, cfg: ViTConfig) -> _PositionKinds:
        prefix, grid = cfg.num_prefix_tokens, cfg.grid
        head_dim = cfg.embed_dim // cfg.num_heads
        return cls(
            LearnedPositions(
                grid, prefix, cfg.pos_embed_prefix, cfg.pos_embed_mode, cfg.pos_embed_antialias
            ),
            SinCosPositions(cfg.embed_dim, grid),
            CoordinateMLPPositions(),
            RotaryPositions(
                head_dim,
                grid,
                cfg.rope_theta,
                cfg.rope_scale,
                cfg.rope_coords,
                cfg.rope_offset,
                cfg.rope_ref_grid,
            ),
            ContinuousBiasPositions(prefix),
            RelativeTablePositions(),
            MixedRotaryPositions(head_dim, grid),
        )


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
        # RoPE-Mixed: (x, y) frequencies per block, head and channel pair
        self.rope_freqs = (
            nn.Parameter(torch.zeros(2, cfg.depth, cfg.num_heads, dim // cfg.num_heads // 2))
            if cfg.rope_mixed
            else None
        )
        # BEiT's relative position bias tables: one per block, and one shared (timm's names)
        self.rel_pos_tables = (
            nn.ModuleList(RelativePositionTable(cfg.num_heads, grid) for _ in range(cfg.depth))
            if cfg.rel_pos_bias
            else None
        )
        self.rel_pos_bias = (
            RelativePositionTable(cfg.num_heads, grid) if cfg.shared_rel_pos_bias else None
        )
        self.norm_pre = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        # one final norm, on the tokens (before pooling) or on the pooled vector (fc_norm)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.attn_pool = (
            AttentionPoolLatent(
                dim,
                cfg.attn_pool_heads or cfg.num_heads,
                cfg.attn_pool_mlp_ratio or cfg.mlp_ratio,
                cfg.act_layer,
                cfg.norm_eps,
            )
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
        self._kinds: tuple[ViTConfig, _PositionKinds] | None = None
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
        if self.rope_freqs is not None:  # RoPE-Mixed: axial magnitudes, a random turn per head
            cfg = self.config
            pairs = self.rope_freqs.shape[-1]
            magnitude = cfg.rope_theta ** (-torch.arange(0, pairs, 2).float() / pairs)
            turn = torch.rand(cfg.depth, cfg.num_heads, 1) * 2 * math.pi
            turns = (turn, turn + math.pi / 2)  # the two halves of the pairs, at right angles
            fx = torch.cat([magnitude * t.cos() for t in turns], dim=-1)
            fy = torch.cat([magnitude * t.sin() for t in turns], dim=-1)
            with torch.no_grad():
                self.rope_freqs.copy_(torch.stack([fx, fy]))

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    # ---------------------------------------------------------------- position
    @property
    def positions(self) -> _PositionKinds:
        """The position kinds of the config in effect (:mod:`vitres.layers.positions`)."""
        if self._kinds is None or self._kinds[0] is not self.config:
            self._kinds = (self.config, _PositionKinds.of(self.config))
        return self._kinds[1]

    def position_table(self, grid: tuple[int, int]) -> Tensor | None:
        """The learned table resampled to ``grid``, ``(1, prefix? + rows * cols, D)`` with
        prefix entries first when ``pos_embed_prefix``; ``None`` for other kinds."""
        if self.pos_embed is None:
            return None
        return self.positions.learned.table(self.pos_embed, grid, self._cache, self.training)

    def prefix_tokens(self, batch: int, dtype: torch.dtype) -> list[Tensor]:
        """The class, distillation and register tokens, each ``(B, n, D)``, in that order."""
        prefix = []
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                prefix.append(token.expand(batch, -1, -1).to(dtype))
        return prefix

    def _add_prefix_and_pos(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens ``(B, N, D)`` of ``grid`` → the sequence with prefix and positions."""
        cfg = self.config
        if cfg.pos_embed == "sincos":
            x = x + self.positions.sincos.table(grid, x.device, self._cache).to(x.dtype)
        elif cfg.pos_embed == "mlp":
            table = self.positions.coordinate_mlp.table(
                self.pos_mlp, grid, self._cache, self.training
            )
            x = x + table.to(x.dtype)
        prefix = self.prefix_tokens(x.shape[0], x.dtype)
        if cfg.pos_embed == "learned":
            return self.positions.learned.add(x, prefix, self.position_table(grid).to(x.dtype))
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        return x

    # ---------------------------------------------------------------- tokens
    def tokenize(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> TokenLayout:
        """Images as a uniform-grid layout: checked, fitted to the patch size, patch
        embedded, positions and prefix tokens added, pre-normed.

        Args:
            x: ``(B, in_chans, H, W)`` images.
            patch_size: the patch size (the model's when ``None``).
            valid_size: ``(h, w)`` of content; padding-only tokens get ``content`` False
                and are masked out of attention.
        """
        cfg = self.config
        x, p, valid_size = self.check_input(x, patch_size, valid_size)
        x, content_hw = fit_to_patch(x, p, cfg.size_policy)
        if valid_size is not None:
            content_hw = (min(content_hw[0], valid_size[0]), min(content_hw[1], valid_size[1]))
        tokens, grid = self.patch_embed(
            x, p, cfg.kernel_resize_mode, cfg.kernel_resize_antialias
        )  # (B, N, D)
        tokens = self.norm_pre(self._add_prefix_and_pos(tokens, grid))
        keep = None if is_tracing() else padded_token_mask(grid, content_hw, p)
        attn_mask = None
        if keep is not None:
            keep = torch.cat([keep.new_ones(self.num_prefix_tokens), keep]).to(tokens.device)
            attn_mask = torch.zeros(keep.shape, dtype=tokens.dtype, device=tokens.device)
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))[None, None, None, :]
        return TokenLayout(tokens, self.num_prefix_tokens, grid, keep, attn_mask)

    def layout_at(
        self,
        tokens: Tensor,
        centres: Tensor,
        learned: Tensor | None = None,
        learned_prefix: Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> TokenLayout:
        """A layout of patch tokens at arbitrary centres (mixed-resolution tokens).

        Args:
            tokens: ``(B, N, D)`` patch embeddings.
            centres: ``(B, N, 2)`` float64 token centres ``(y, x)`` normalised to
                ``[-1, 1]`` over the image (patch centres of a grid are
                :func:`~vitres.layers.pos_embed.grid_coordinates`).
            learned: ``(B, N, D)`` learned-table entries of the tokens (learned kind).
            learned_prefix: the table's prefix entries ``(prefix, D)``, if it has them.
            grid: the finest grid the tokens were cut from, if any: rotary positions on
                patch indices (``rope_coords="index"``) count that grid's patches.

        Returns:
            The layout with positions, prefix tokens and pre-norm applied, ``centres`` in
            base-grid units.
        """
        cfg = self.config
        ys, xs = centres[..., 0], centres[..., 1]
        base = torch.stack([ys * cfg.grid[0] / 2, xs * cfg.grid[1] / 2], dim=-1)
        if learned is not None:
            tokens = tokens + learned
        elif cfg.pos_embed == "sincos":
            tokens = tokens + self.positions.sincos.at(base).to(tokens)
        elif cfg.pos_embed == "mlp":
            tokens = tokens + self.positions.coordinate_mlp.at(self.pos_mlp, ys, xs).to(
                tokens.dtype
            )
        prefix = self.prefix_tokens(tokens.shape[0], tokens.dtype)
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if learned_prefix is not None:
                prefix = prefix + learned_prefix
            tokens = torch.cat([prefix, tokens], dim=1)
        return TokenLayout(self.norm_pre(tokens), self.num_prefix_tokens, grid, centres=base)

    # ---------------------------------------------------------------- the blocks
    def encode(self, layout: TokenLayout, reduction: TokenReduction | None = None) -> TokenLayout:
        """Runs every block on ``layout``'s tokens (the model's one block loop).

        Args:
            layout: from :meth:`tokenize`, :meth:`layout_at` or a token kind of
                :mod:`vitres.tokens`.
            reduction: called between each block's attention and its MLP to reduce the
                tokens (token merging); ``None``: the plain blocks.

        Returns:
            The final layout, its tokens encoded and (unless the final norm acts on the
            pool) normed.
        """
        tokens = layout.tokens
        rope = self._rope(layout)
        if reduction is not None and (self.config.rel_pos_bias or self.config.shared_rel_pos_bias):
            raise ValueError(
                "token merging is not supported for a model with BEiT's relative position "
                "bias table (rel_pos_bias / shared_rel_pos_bias): the table holds biases "
                "between cells of one grid, which merged tokens are not; run it on uniform "
                "or packed tokens"
            )
        for index, block in enumerate(self.blocks):
            mask = self._attn_bias(index, layout)
            attn = {
                "rope": self._block_rope(rope, index),
                "num_prefix_tokens": layout.num_prefix_tokens,
                "attn_mask": mask,
            }
            if reduction is None:
                tokens = block(tokens, **attn)
                continue
            tokens, metric = block.forward_attention(tokens, **attn)
            tokens, reduced = reduction(index, tokens, metric, layout)
            if reduced is not layout:
                layout = reduced
                rope = self._rope(layout)
            tokens = block.forward_mlp(tokens)
        if not self.config.use_fc_norm:
            tokens = self.norm(tokens)
        return layout.replace(tokens=tokens)

    def _attn_bias(self, index: int, layout: TokenLayout) -> Tensor | None:
        """Block ``index``'s additive attention logits: the continuous or the learned
        relative position bias (the block's own table, then the shared one), then the
        layout's mask; ``None`` when there is none."""
        biases = []
        if self.cpb is not None:
            biases.append(
                self.positions.relative_bias.for_layout(
                    self.cpb, index, layout, self._cache, self.training
                )
            )
        tables = self.positions.relative_table
        if self.rel_pos_tables is not None:
            module = self.rel_pos_tables[index]
            biases.append(tables.for_layout(module, index, layout, self._cache, self.training))
        if self.rel_pos_bias is not None:
            module = self.rel_pos_bias
            biases.append(tables.for_layout(module, "shared", layout, self._cache, self.training))
        if layout.attn_mask is not None:
            biases.append(layout.attn_mask)
        if not biases:
            return None
        total = biases[0]
        for bias in biases[1:]:
            total = total + bias
        return total

    def _rope(self, layout: TokenLayout) -> tuple[Tensor, Tensor] | None:
        """The layout's rotary ``(cos, sin)``; with learned frequencies (RoPE-Mixed) each
        has a leading block axis (:meth:`_block_rope` picks a block's)."""
        if not self.config.uses_rope:
            return None
        if self.rope_freqs is not None:
            return self.positions.mixed_rotary.for_layout(
                self.rope_freqs, layout, self._cache, self.training
            )
        return self.positions.rotary.for_layout(layout, self._cache)

    def _block_rope(
        self, rope: tuple[Tensor, Tensor] | None, index: int
    ) -> tuple[Tensor, Tensor] | None:
        """Block ``index``'s rotary ``(cos, sin)``: its own with learned frequencies."""
        if rope is None or self.rope_freqs is None:
            return rope
        return rope[0][index], rope[1][index]

    def forward_features(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """The token sequence ``(B, prefix + rows * cols, D)``, prefix tokens first (class,
        distillation, registers); after the final norm unless that norm acts on the pool."""
        return self.encode(self.tokenize(x, patch_size, valid_size)).tokens

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
            return self._attention_pool(tokens, token_mask, token_sizes)
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

    def _attention_pool(
        self, tokens: Tensor, token_mask: Tensor | None, token_sizes: Tensor | None
    ) -> Tensor:
        """The attention pool over the patch tokens, or over every token when
        ``attn_pool_prefix`` (prefix tokens count once each)."""
        prefix = 0 if self.config.attn_pool_prefix else self.num_prefix_tokens
        keep = None if token_mask is None else token_mask[..., prefix:].to(tokens.device)
        if token_sizes is not None and self.config.attn_pool_prefix:
            ones = token_sizes.new_ones(token_sizes.shape[0], self.num_prefix_tokens)
            token_sizes = torch.cat([ones, token_sizes], dim=1)
        return self.attn_pool(tokens[:, prefix:], keep, token_sizes)

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

    def forward_layout(self, layout: TokenLayout, pre_logits: bool = False) -> Tensor:
        """:meth:`forward_head` of an encoded layout (its content mask and token sizes)."""
        return self.forward_head(layout.tokens, layout.content, pre_logits, layout.sizes)

    def forward(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Classifies (or embeds) images of any size.

        Token kinds beyond the uniform grid (token merging, mixed-resolution tokens,
        packing) are :mod:`vitres.tokens` functions on this model
        (:class:`vitres.tokens.TokenMode`).

        Args:
            x: ``(B, in_chans, H, W)`` float images, any ``H x W`` of at least one patch.
            patch_size: the patch size for this call (an int or ``(h, w)``); the stored
                size when omitted.
            valid_size: ``(h, w)`` of real content in the top-left corner when the rest is
                padding; tokens with no content are masked out of attention and pooling.

        Returns:
            Logits ``(B, num_classes)``; for a model without a classifier
            (``num_classes == 0``) the pooled embedding, as the source model returns it
            (e.g. DINOv2's normed class token, SigLIP's attention pool, a ViT's pooler).
        """
        return self.forward_layout(self.encode(self.tokenize(x, patch_size, valid_size)))

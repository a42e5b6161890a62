"""Position kinds as objects: how each kind gives positions to a :class:`TokenLayout`.

A ViT's position information is one of five kinds (``ViTConfig.pos_embed``). Each is an
object here with one way to position a layout:

* additive kinds (:class:`LearnedPositions`, :class:`SinCosPositions`,
  :class:`CoordinateMLPPositions`) give embeddings added to the patch tokens before the
  blocks: a table for a uniform grid, or values at arbitrary token centres;
* attention kinds (:class:`RotaryPositions`, :class:`ContinuousBiasPositions`) give
  arguments of every block's attention: rotary ``(cos, sin)`` or an additive bias.

Beside the kind, a model may add BEiT's learned relative position bias tables
(:class:`RelativeTablePositions`, ``ViTConfig.rel_pos_bias`` / ``shared_rel_pos_bias``).

Uniform grids use cached tables (:class:`~vitres.layers.cache.VersionedCache`): tables
of learned kinds are cached in eval mode and recomputed while training; parameter-free
tables are always cached. The objects hold no parameters: the model owns them (so its
state-dict keys stay timm's) and passes them in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import VersionedCache
from vitres.layers.layout import TokenLayout
from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    CoordinateMLPPosEmbed,
    offset_bias_at,
    resample_pos_embed,
    rope_2d,
    rope_at,
    rope_normalized,
    sincos_2d,
    sincos_at,
)
from vitres.layers.rel_pos_table import RelativePositionTable
from vitres.layers.rotary import index_coordinates, rope_index, rope_mixed

__all__ = [
    "ContinuousBiasPositions",
    "CoordinateMLPPositions",
    "LearnedPositions",
    "MixedRotaryPositions",
    "RelativeTablePositions",
    "RotaryPositions",
    "SinCosPositions",
]

Grid = tuple[int, int]


class LearnedPositions:
    """A learned table of the native grid, resampled to each grid (timm's ``pos_embed``).

    Args:
        base_grid: the grid the table was learned for.
        num_prefix_tokens: prefix tokens of the model.
        with_prefix: the table holds entries for the prefix tokens too.
        mode: the resampling (nearest, bilinear, bicubic, area or fourier).
        antialias: antialias when shrinking.
    """

    def __init__(
        self, base_grid: Grid, num_prefix_tokens: int, with_prefix: bool, mode: str, antialias: bool
    ) -> None:
        self.base_grid = base_grid
        self.table_prefix = num_prefix_tokens if with_prefix else 0
        self.mode = mode
        self.antialias = antialias

    def table(self, pos_embed: Tensor, grid: Grid, cache: VersionedCache, training: bool) -> Tensor:
        """The table ``(1, table_prefix + rows * cols, D)`` for ``grid``."""
        return cache.get(
            ("learned", grid, self.mode, self.antialias),
            [pos_embed],
            lambda: resample_pos_embed(
                pos_embed, grid, self.base_grid, self.table_prefix, self.mode, self.antialias
            ),
            enabled=not training,
        )

    def add(self, tokens: Tensor, prefix: list[Tensor], table: Tensor) -> Tensor:
        """``prefix + tokens`` as one sequence with the table added (to the prefix too
        when the table has prefix entries)."""
        if self.table_prefix:
            return torch.cat(prefix + [tokens], dim=1) + table
        return torch.cat(prefix + [tokens + table], dim=1)


class SinCosPositions:
    """Fixed 2-D sin-cos embeddings (MAE), regenerated for each grid in base-grid units."""

    def __init__(self, dim: int, base_grid: Grid) -> None:
        self.dim = dim
        self.base_grid = base_grid

    def table(self, grid: Grid, device: torch.device, cache: VersionedCache) -> Tensor:
        """The (cached) table ``(rows * cols, D)`` of ``grid``."""
        return cache.get(
            ("sincos", grid, str(device)),
            [],
            lambda: sincos_2d(grid, self.dim, self.base_grid).to(device),
            enabled=True,
        )

    def at(self, centres: Tensor) -> Tensor:
        """Embeddings ``(..., D)`` at ``centres`` ``(..., 2)`` in base-grid units."""
        return sincos_at(centres[..., 0], centres[..., 1], self.dim)


class CoordinateMLPPositions:
    """An MLP of normalised patch coordinates (:class:`CoordinateMLPPosEmbed`)."""

    def table(
        self, mlp: CoordinateMLPPosEmbed, grid: Grid, cache: VersionedCache, training: bool
    ) -> Tensor:
        """The table ``(rows * cols, D)`` of ``grid`` (cached in eval mode)."""
        return cache.get(
            ("mlp", grid), list(mlp.parameters()), lambda: mlp(grid), enabled=not training
        )

    @staticmethod
    def at(mlp: CoordinateMLPPosEmbed, ys: Tensor, xs: Tensor) -> Tensor:
        """Embeddings at normalised coordinates ``ys, xs`` in ``[-1, 1]``."""
        return mlp.at(ys, xs)


class RotaryPositions:
    """2-D axial rotary embedding of q and k (RoPE).

    Coordinates (``coords``): ``"centred"``, in base-grid units (vitres's own RoPE), or
    with a ``scale``, patch centres normalised to ``[-1, 1]`` times the scale (DINOv3);
    ``"index"``, patch indices plus ``offset``, scaled to ``ref_grid`` when given (EVA-02,
    timm's RoPE ViTs, PE; :mod:`vitres.layers.rotary`).
    """

    def __init__(
        self,
        head_dim: int,
        base_grid: Grid,
        theta: float,
        scale: float | None = None,
        coords: str = "centred",
        offset: float = 0.0,
        ref_grid: Grid | None = None,
    ) -> None:
        self.head_dim = head_dim
        self.base_grid = base_grid
        self.theta = theta
        self.scale = scale  # None: base-grid units; else normalised centres times scale
        self.coords = coords
        self.offset = offset
        self.ref_grid = ref_grid

    def _grid_table(self, grid: Grid) -> tuple[Tensor, Tensor]:
        if self.coords == "index":
            return rope_index(grid, self.head_dim, self.theta, self.offset, self.ref_grid)
        if self.scale is None:
            return rope_2d(grid, self.head_dim, self.base_grid, self.theta)
        return rope_normalized(grid, self.head_dim, self.theta, self.scale)

    def table(
        self, grid: Grid, device: torch.device, cache: VersionedCache
    ) -> tuple[Tensor, Tensor]:
        """The (cached) ``(cos, sin)`` of ``grid``, each ``(rows * cols, head_dim)``."""
        return cache.get(
            ("rope", grid, str(device)),
            [],
            lambda: tuple(t.to(device) for t in self._grid_table(grid)),
            enabled=True,
        )

    def coordinates(self, layout: TokenLayout) -> tuple[Tensor, Tensor]:
        """``(ys, xs)`` of the layout's centres in this kind's units: base-grid units,
        normalised centres times the scale, or index coordinates (of the layout's grid
        when it has one, else of the native grid)."""
        ys, xs = layout.centres[..., 0], layout.centres[..., 1]
        if self.coords == "index":
            grid = layout.grid or self.base_grid
            return index_coordinates(
                layout.centres, self.base_grid, grid, self.offset, self.ref_grid
            )
        if self.scale is not None:  # base-grid units -> normalised, times the scale
            ys = ys * (2 * self.scale / self.base_grid[0])
            xs = xs * (2 * self.scale / self.base_grid[1])
        return ys, xs

    def for_layout(self, layout: TokenLayout, cache: VersionedCache) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of the layout's patch tokens: the grid's table, per-sample
        ``(B, 1, N, head_dim)`` at the tokens' centres, or per packed row with the
        identity rotation on prefix and padding tokens."""
        device = layout.tokens.device
        if layout.segments is not None:
            tables = [self.table(s.grid, device, cache) for s in layout.segments]
            return packed_rope(layout, tables, self.head_dim)
        if layout.centres is not None:
            ys, xs = self.coordinates(layout)
            cos, sin = rope_at(ys, xs, self.head_dim, self.theta)
            return cos[:, None].to(device), sin[:, None].to(device)
        return self.table(layout.grid, device, cache)


def packed_rope(
    layout: TokenLayout, tables: list[tuple[Tensor, Tensor]], head_dim: int
) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of a packed layout from each segment's grid table ``(..., n, head_dim)``
    (any leading dims, shared by all segments): ``(..., rows, 1, length, head_dim)``, the
    identity rotation on prefix and padding tokens."""
    rows, length = layout.tokens.shape[:2]
    device = layout.tokens.device
    lead = tables[0][0].shape[:-2]
    cos = torch.ones(*lead, rows * length, head_dim, device=device)
    sin = torch.zeros(*lead, rows * length, head_dim, device=device)
    patches = torch.cat(
        [
            torch.arange(s.num_prefix_tokens, s.length) + s.row * length + s.offset
            for s in layout.segments
        ]
    ).to(device)
    dim = len(lead)
    cos.index_copy_(dim, patches, torch.cat([c for c, _ in tables], dim=dim))
    sin.index_copy_(dim, patches, torch.cat([s for _, s in tables], dim=dim))
    shape = (*lead, rows, 1, length, head_dim)
    return cos.view(shape), sin.view(shape)


class MixedRotaryPositions:
    """RoPE-Mixed: learned frequencies per block and head (:func:`rope_mixed`), on patch
    indices (timm's ``rope_type='mixed'``). ``(cos, sin)`` carry a leading block axis."""

    def __init__(self, head_dim: int, base_grid: Grid) -> None:
        self.head_dim = head_dim
        self.base_grid = base_grid

    def _grid(self, freqs: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
        ys = torch.arange(grid[0], device=freqs.device).float()
        xs = torch.arange(grid[1], device=freqs.device).float()
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        cos, sin = rope_mixed(freqs, yy.reshape(-1), xx.reshape(-1))
        return cos, sin  # each (depth, heads, N, head_dim)

    def table(
        self, freqs: Tensor, grid: Grid, cache: VersionedCache, training: bool
    ) -> tuple[Tensor, Tensor]:
        """The ``(cos, sin)`` of ``grid``, each ``(depth, heads, rows * cols, head_dim)``."""
        return cache.get(
            ("rope-mixed", grid), [freqs], lambda: self._grid(freqs, grid), enabled=not training
        )

    def for_layout(
        self, freqs: Tensor, layout: TokenLayout, cache: VersionedCache, training: bool
    ) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of the layout's patch tokens, leading axis the block: the grid's
        table, per sample ``(depth, B, heads, N, head_dim)`` at the tokens' centres, or per
        packed row."""
        if layout.segments is not None:
            tables = [self.table(freqs, s.grid, cache, training) for s in layout.segments]
            cos, sin = packed_rope(layout, tables, self.head_dim)  # (depth, heads, rows, 1, ..)
            return cos.squeeze(-3).transpose(1, 2), sin.squeeze(-3).transpose(1, 2)
        if layout.centres is not None:
            grid = layout.grid or self.base_grid
            ys, xs = index_coordinates(layout.centres, self.base_grid, grid)
            return rope_mixed(freqs, ys, xs)
        return self.table(freqs, layout.grid, cache, training)


class ContinuousBiasPositions:
    """Swin-V2 continuous relative position bias, one MLP per block
    (:class:`ContinuousPositionBias`), on the attention logits."""

    def __init__(self, num_prefix_tokens: int) -> None:
        self.num_prefix_tokens = num_prefix_tokens

    def grid_bias(
        self,
        module: ContinuousPositionBias,
        index: int,
        grid: Grid,
        cache: VersionedCache,
        training: bool,
    ) -> Tensor:
        """The bias ``(heads, prefix + N, prefix + N)`` of block ``index`` on ``grid``."""
        return cache.get(
            ("cpb", index, grid),
            list(module.parameters()),
            lambda: module(grid, self.num_prefix_tokens),
            enabled=not training,
        )

    def offset_table(
        self,
        module: ContinuousPositionBias,
        index: int,
        grid: Grid,
        cache: VersionedCache,
        training: bool,
    ) -> Tensor:
        """The bias per token offset ``(heads, 2 rows - 1, 2 cols - 1)`` of block ``index``."""
        return cache.get(
            ("cpb-offsets", index, grid),
            list(module.parameters()),
            lambda: module.offset_table(grid),
            enabled=not training,
        )

    def for_layout(
        self,
        modules: Sequence[ContinuousPositionBias] | nn.ModuleList,
        index: int,
        layout: TokenLayout,
        cache: VersionedCache,
        training: bool,
    ) -> Tensor:
        """Block ``index``'s bias for the layout's tokens, in the tokens' dtype."""
        dtype = layout.tokens.dtype
        module = modules[index]
        if layout.segments is not None:  # each image's block holds its own grid's bias
            rows, length = layout.tokens.shape[:2]
            bias = layout.tokens.new_zeros(rows, module.num_heads, length, length)
            for s in layout.segments:
                block_bias = self.grid_bias(module, index, s.grid, cache, training).to(dtype)
                bias[s.row, :, s.offset : s.offset + s.length, s.offset : s.offset + s.length] = (
                    block_bias
                )
            return bias
        prefix = layout.num_prefix_tokens
        if layout.cells is not None:  # merged tokens between the cells of a grid
            table = self.offset_table(module, index, layout.grid, cache, training)
            pair = offset_bias_at(table, layout.cells.to(table.dtype)).to(dtype)
            return F.pad(pair, (prefix, 0, prefix, 0))
        if layout.centres is not None:
            centres = layout.centres
            return module.at(centres[..., 0], centres[..., 1], prefix).to(dtype)
        return self.grid_bias(module, index, layout.grid, cache, training).to(dtype)[None]


class RelativeTablePositions:
    """BEiT's learned relative position bias tables (:class:`RelativePositionTable`: one
    per block, or one shared by all blocks) as an additive bias on the attention logits,
    resampled bilinearly to each grid as Hugging Face's BEiT does.

    The table holds biases between cells of one grid and three entries for the one
    class token, so it positions uniform grids and packed sequences of uniform grids;
    merged and mixed-resolution tokens are refused, never given a bias they do not have.
    """

    def grid_bias(
        self,
        module: RelativePositionTable,
        key: object,
        grid: Grid,
        cache: VersionedCache,
        training: bool,
    ) -> Tensor:
        """The bias ``(heads, 1 + N, 1 + N)`` of ``module`` (cached under ``key``) on ``grid``."""
        return cache.get(
            ("rel-table", key, grid),
            [module.relative_position_bias_table],
            lambda: module(grid),
            enabled=not training,
        )

    def for_layout(
        self,
        module: RelativePositionTable,
        key: object,
        layout: TokenLayout,
        cache: VersionedCache,
        training: bool,
    ) -> Tensor:
        """The bias of ``module`` for the layout's tokens, in the tokens' dtype.

        Raises:
            ValueError: tokens that are not one grid's (merged, mixed-resolution), or a
                prefix other than the one class token the table has entries for.
        """
        dtype = layout.tokens.dtype
        if layout.segments is not None:  # each image's block holds its own grid's bias
            rows, length = layout.tokens.shape[:2]
            bias = layout.tokens.new_zeros(rows, module.num_heads, length, length)
            for s in layout.segments:
                self._check_prefix(s.num_prefix_tokens)
                end = s.offset + s.length
                bias[s.row, :, s.offset : end, s.offset : end] = self.grid_bias(
                    module, key, s.grid, cache, training
                ).to(dtype)
            return bias
        if not layout.uniform:
            raise ValueError(
                "BEiT's relative position bias table (rel_pos_bias / shared_rel_pos_bias) "
                "holds biases between cells of one uniform grid: merged or mixed-resolution "
                "(quadtree) tokens cannot carry it, so they are refused for this model; "
                "supported: uniform grids at any size and packed sequences"
            )
        self._check_prefix(layout.num_prefix_tokens)
        return self.grid_bias(module, key, layout.grid, cache, training).to(dtype)[None]

    @staticmethod
    def _check_prefix(num_prefix_tokens: int) -> None:
        if num_prefix_tokens != 1:
            raise ValueError(
                "BEiT's relative position bias table has entries for exactly one class "
                f"token, but the tokens have {num_prefix_tokens} prefix tokens"
            )

"""Rotary angles on patch-index coordinates, and learned ("mixed") rotary frequencies.

Two more ways to place 2-D axial RoPE (Su et al. 2021; RoPE-ViT, Heo et al., ECCV 2024)
beside the centred coordinates of :mod:`vitres.layers.pos_embed`:

* **index coordinates** (EVA-02, Fang et al. 2023; timm's RoPE ViTs; Perception Encoder,
  Bolya et al. 2025): a patch at row ``i`` has the coordinate ``i + offset``; with a
  reference grid ``ref`` the coordinates of a ``rows``-row grid are scaled by
  ``ref / rows`` so that any grid spans the range it had in pre-training. The
  frequencies are ``theta ** (-j / (head_dim / 4))``;
* **mixed frequencies** (RoPE-Mixed, Heo et al. 2024): every block and head learns its
  own 2-D frequency per channel pair, and a pair's angle is ``x * fx + y * fy``.

Both compute in float32 in the order timm's ``RotaryEmbeddingCat`` and
``RotaryEmbeddingMixed`` do, so imported models reproduce their angles to the bit. The
pairs are laid out as :func:`vitres.layers.pos_embed.rope_at` lays them: channels
``(2i, 2i+1)`` share an angle, the first half of the pairs turn with the row, the rest
with the column (an importer permutes q / k channels of other layouts).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ROPE_COORDS", "index_coordinates", "rope_index", "rope_mixed"]

# how rotary coordinates are measured: "centred" (vitres's base-grid units, or normalised
# centres times ``rope_scale``), "index" (patch index plus an offset, scaled to a
# reference grid)
ROPE_COORDS = ("centred", "index")

Grid = tuple[int, int]


def _axis(size: int, offset: float, ref: int | None) -> Tensor:
    """Index coordinates of one axis, float32: ``(arange(size) + offset) [* ref / size]``."""
    t = torch.arange(size, dtype=torch.int64).to(torch.float32) + offset
    return t if ref is None else t / size * ref


def rope_index(
    grid: Grid, head_dim: int, theta: float, offset: float = 0.0, ref_grid: Grid | None = None
) -> tuple[Tensor, Tensor]:
    """Axial rotary ``(cos, sin)`` of a grid on index coordinates, each ``(rows * cols,
    head_dim)`` float32, row-major tokens.

    Args:
        grid: ``(rows, cols)``.
        head_dim: channels per head (divisible by 4).
        theta: the frequency base (timm's ``rope_temperature``).
        offset: added to every index (timm's ``rope_grid_offset``).
        ref_grid: the pre-training grid the coordinates are scaled to (``ref_feat_shape``);
            ``None``: plain indices at every grid.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    rows, cols = grid
    quarter = head_dim // 4
    exponent = torch.arange(0, quarter, 1, dtype=torch.int64).to(torch.float32) / quarter
    bands = 1.0 / (theta**exponent)  # (quarter,)
    ys = _axis(rows, offset, ref_grid[0] if ref_grid else None)
    xs = _axis(cols, offset, ref_grid[1] if ref_grid else None)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (rows, cols, 2)
    angles = (coords[..., None] * bands).flatten(-2).flatten(0, 1)  # (N, 2 * quarter)
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def index_coordinates(
    centres: Tensor,
    base_grid: Grid,
    grid: Grid,
    offset: float = 0.0,
    ref_grid: Grid | None = None,
) -> tuple[Tensor, Tensor]:
    """Index coordinates ``(ys, xs)`` of token centres given in base-grid units.

    A patch centre of a ``grid`` maps to its own row and column index (plus ``offset``,
    scaled to ``ref_grid``), as :func:`rope_index` places it; other centres (merged or
    mixed-resolution tokens) map by the same affine rule, so a merged token's angle is the
    mean of its patches' angles.

    Args:
        centres: ``(..., 2)`` float64 ``(row, col)`` in base-grid patch units.
        base_grid: the model's native grid.
        grid: the grid whose patch size the indices count (the layout's, or the native one).
        offset: timm's ``rope_grid_offset``.
        ref_grid: timm's ``ref_feat_shape``.
    """
    coords = []
    for axis in range(2):
        normalised = centres[..., axis].to(torch.float64) / (base_grid[axis] / 2)
        index = (normalised + 1) / 2 * grid[axis] - 0.5 + offset
        coords.append(index if ref_grid is None else index / grid[axis] * ref_grid[axis])
    return coords[0], coords[1]


def rope_mixed(freqs: Tensor, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary ``(cos, sin)`` of learned per-block, per-head frequencies (RoPE-Mixed).

    Args:
        freqs: ``(2, depth, heads, head_dim / 2)``: the column (``x``) then the row
            (``y``) frequency of each channel pair.
        ys: row coordinates ``(N,)`` or ``(B, N)``.
        xs: column coordinates, the same shape.

    Returns:
        float32 ``(cos, sin)``, each ``(depth, heads, N, head_dim)`` (or ``(depth, B,
        heads, N, head_dim)`` for per-sample coordinates).
    """
    freqs = freqs.float()
    xs, ys = xs.float(), ys.float()
    if xs.ndim == 2:  # per sample: (B, N) -> (B, 1, N) against (depth, 1, heads, 1, pairs)
        fx, fy = freqs[0][:, None, :, None, :], freqs[1][:, None, :, None, :]
        angles = xs[:, None, :, None] * fx + ys[:, None, :, None] * fy
    else:
        angles = xs[:, None] * freqs[0].unsqueeze(-2) + ys[:, None] * freqs[1].unsqueeze(-2)
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)

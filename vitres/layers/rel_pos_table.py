"""BEiT's learned relative position bias table, resampled to any token grid.

BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022) and
Data2Vec-vision (Baevski et al., ICML 2022) add to every attention logit a learned bias
per head that depends only on the offset between the two patches, plus three learned
entries for the class token (class to patch, patch to class, class to itself). The table
holds ``(2 rows - 1) * (2 cols - 1) + 3`` rows of ``heads`` values for the native grid.

At another grid the offset part of the table is resampled as Hugging Face's
``BeitRelativePositionBias`` does (after MiDaS v3.1, Birkl et al. 2023): seen as a
``(2 rows - 1) x (2 cols - 1)`` image per head, it is bilinearly interpolated
(``align_corners=False``, no antialias) to ``(2 rows' - 1) x (2 cols' - 1)``; the three
class-token entries are kept. Pure functions and one parameter-holding module; no model
knowledge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RelativePositionTable",
    "num_relative_positions",
    "relative_position_bias",
    "relative_position_index",
    "resample_relative_table",
]

Grid = tuple[int, int]


def num_relative_positions(grid: Grid) -> int:
    """Rows of the table of ``grid``: every patch offset, and three class-token entries."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def relative_position_index(grid: Grid, device: torch.device | None = None) -> Tensor:
    """Which table row each pair of tokens reads, ``(1 + N, 1 + N)`` long, class token first.

    Patches ``i`` at ``(yi, xi)`` and ``j`` at ``(yj, xj)`` read row
    ``(yi - yj + rows - 1) * (2 cols - 1) + (xi - xj + cols - 1)``; the class token as
    query reads row ``n - 3``, as key ``n - 2``, and with itself ``n - 1``.
    """
    rows, cols = grid
    ys, xs = torch.meshgrid(
        torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
    )
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    offsets = (ys[:, None] - ys[None, :] + rows - 1) * (2 * cols - 1) + (
        xs[:, None] - xs[None, :] + cols - 1
    )  # (N, N)
    count = num_relative_positions(grid)
    index = torch.full((rows * cols + 1,) * 2, count - 3, dtype=torch.long, device=device)
    index[1:, 0] = count - 2
    index[0, 0] = count - 1
    index[1:, 1:] = offsets
    return index


def resample_relative_table(table: Tensor, base_grid: Grid, grid: Grid) -> Tensor:
    """The table of ``base_grid`` ``(n, heads)`` resampled to ``grid`` (bilinear, as
    Hugging Face's BEiT); the three class-token rows are kept. Computed in float32, returned
    in the table's dtype; the table itself when the grids are equal."""
    if tuple(grid) == tuple(base_grid):
        return table
    heads = table.shape[-1]
    old = (2 * base_grid[0] - 1, 2 * base_grid[1] - 1)
    new = (2 * grid[0] - 1, 2 * grid[1] - 1)
    offsets = table[: old[0] * old[1]].float().reshape(1, old[0], old[1], heads)
    offsets = F.interpolate(
        offsets.permute(0, 3, 1, 2), size=new, mode="bilinear", align_corners=False
    )  # (1, heads, 2 rows - 1, 2 cols - 1)
    offsets = offsets.permute(0, 2, 3, 1).reshape(new[0] * new[1], heads).to(table.dtype)
    return torch.cat([offsets, table[old[0] * old[1] :]], dim=0)


def relative_position_bias(table: Tensor, base_grid: Grid, grid: Grid) -> Tensor:
    """The additive attention bias ``(heads, 1 + N, 1 + N)`` of ``grid``'s tokens, class
    token first, from the table learned for ``base_grid``."""
    resampled = resample_relative_table(table, base_grid, grid)
    index = relative_position_index(grid, table.device)
    tokens = index.shape[0]
    bias = resampled[index.reshape(-1)].reshape(tokens, tokens, -1)
    return bias.permute(2, 0, 1).contiguous()


class RelativePositionTable(nn.Module):
    """One learned relative position bias table (``relative_position_bias_table``,
    ``(n, heads)``, timm's and Hugging Face's name) for the native grid."""

    def __init__(self, num_heads: int, base_grid: Grid) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.base_grid = tuple(base_grid)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_relative_positions(self.base_grid), num_heads)
        )

    def forward(self, grid: Grid) -> Tensor:
        """The bias ``(heads, 1 + N, 1 + N)`` of ``grid``."""
        return relative_position_bias(self.relative_position_bias_table, self.base_grid, grid)

"""The token layout: what a ViT's ``encode`` loop needs to know about its tokens.

Every way of turning images into tokens (a uniform grid at any size and patch size,
merged tokens, a quadtree of mixed-resolution cells, several images packed into one
sequence) ends in a :class:`TokenLayout`: the token sequence and where each token sits
in its image. The model's one block loop reads the positions of the relative kinds
(RoPE, continuous position bias) from it, so each token kind builds a layout and none
runs blocks of its own.

Coordinates: ``centres`` are in base-grid patch units (the units of
:func:`vitres.layers.pos_embed.grid_coordinates` with a ``base_grid``); ``cells`` are
in cells of the layout's ``grid`` (row, column), for tokens that stand for several cells
of a known grid (merged tokens).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

__all__ = ["TokenLayout", "TokenSegment"]


@dataclass(frozen=True)
class TokenSegment:
    """One image of a packed sequence.

    Attributes:
        grid: the image's patch grid ``(rows, cols)``.
        row: the row of the packed batch that holds it.
        offset: its first token's index in that row.
        length: its tokens, prefix tokens included.
        num_prefix_tokens: its leading prefix tokens (no position).
    """

    grid: tuple[int, int]
    row: int
    offset: int
    length: int
    num_prefix_tokens: int


@dataclass(frozen=True)
class TokenLayout:
    """Tokens and their places, as the model's ``encode`` takes and returns them.

    Attributes:
        tokens: ``(B, T, D)`` the sequence, prefix tokens first, additive positions
            added (after ``encode``: the encoded tokens, final token norm applied).
        num_prefix_tokens: leading tokens of every row that have no position (class,
            distillation, registers); ``0`` for a packed sequence (each segment counts
            its own).
        grid: the uniform patch grid ``(rows, cols)`` when the patch tokens are (or were
            merged from) one, or the finest grid mixed-resolution tokens were cut from
            (rotary positions on patch indices count its patches); ``None`` for packed
            tokens.
        content: ``(T,)`` mask of the tokens with content (``None``: all); padding-only
            tokens are left out of pooling.
        attn_mask: additive attention logits shared by every block (``(B or 1, 1, 1 or T,
            T)``): padding, proportional attention (``log size`` per key) or the
            block-diagonal mask of packing; ``None``: none.
        centres: ``(B, N, 2)`` float64 patch-token centres ``(row, col)`` in base-grid
            patch units, when they are not those of ``grid`` (``None``: the grid's).
        cells: ``(B, N, 2)`` float64 centres in cells of ``grid`` (merged tokens of a
            continuous-bias model).
        sizes: ``(B, N)`` patches each patch token stands for (``None``: one each); the
            mean and attention pools weigh each token by it.
        segments: the images of a packed sequence (``None``: one image per row).
    """

    tokens: Tensor
    num_prefix_tokens: int
    grid: tuple[int, int] | None = None
    content: Tensor | None = None
    attn_mask: Tensor | None = None
    centres: Tensor | None = None
    cells: Tensor | None = None
    sizes: Tensor | None = None
    segments: tuple[TokenSegment, ...] | None = None

    @property
    def uniform(self) -> bool:
        """True when the patch tokens are one grid's, in row-major order."""
        return (
            self.grid is not None
            and self.centres is None
            and self.cells is None
            and self.segments is None
        )

    def replace(self, **changes) -> TokenLayout:
        """A copy with ``changes`` (a layout is immutable)."""
        return dataclasses.replace(self, **changes)

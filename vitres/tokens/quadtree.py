"""Mixed-resolution tokens: a saliency-driven quadtree of patches under a token budget.

Quadformer (Ronen et al., "Vision Transformers with Mixed-Resolution Tokenization",
CVPRW 2023) and MSViT (Havtorn et al., "MSViT: Dynamic Mixed-Scale Tokenization for
Vision Transformers", ICCVW 2023) give flat parts of an image a few coarse tokens and
detailed parts many fine ones. Here:

* **Regions.** With fine patch ``p`` (the model's, or the call's ``patch_size``) the input
  is a ``rows x cols`` grid of fine cells. Level ``l`` (``0 .. levels-1``) tiles that grid
  with cells of ``2**l x 2**l`` fine cells, aligned to multiples of ``2**l``; a cell at
  the bottom or right edge of a grid that ``2**l`` does not divide is clipped to the
  grid (a ``3 x 4`` cell, say). Every token is one cell of some level, embedded as one
  patch of ``(h p) x (w p)`` pixels with the patch-embedding kernel PI-resized to that
  size (FlexiViT; :func:`vitres.layers.patch_embed.resample_patch_embed`), rectangular
  for clipped cells. A level-0 cell is one fine patch: the model's own embedding.
* **The tree.** The roots are the cells of the coarsest level. Splitting a cell replaces
  it by its children, the cells of the next finer level inside it: four for a whole
  cell, so each split turns 1 token into 4 (+3); two or one for a clipped cell (a
  clipped cell with a single child *is* that child -- the same pixels -- and splits
  straight into the child's children).
* **Saliency.** Training-free scores of a region's detail, summed over the region (so a
  parent scores the sum of its children): ``gradient`` -- the energy of the pixel
  gradient, ``(dI/dx)^2 + (dI/dy)^2`` over the channels (forward differences, zero at the
  last row/column); ``variance`` -- the sum of squared deviations of the region's
  pixels from their mean, over the channels.
* **Alignment.** ``align="clip"`` keeps the input's size and clips edge cells;
  ``align="resize"`` first resizes the input to the nearest multiple of the coarsest
  patch, so every cell is whole (done by :func:`vitres.tokens.quadtree_forward.quadtree_plan`).
* **Budget.** ``K`` tokens at most. Starting from the roots, the most salient splittable
  region is split, greedily, while splits fit: a split that would take the count past
  ``K`` is skipped (the region stays whole) and the next region is tried. Ties in
  saliency (a flat image) go to the larger region, then the upper, then the left one,
  so the tree is a function of the image alone. A whole-cell split adds 3 tokens, so on
  grids the coarsest cell divides the count is ``roots + 3 j``: the largest such count
  ``<= K``. ``K`` at least the fine count ``rows * cols`` gives every fine patch (the
  plain model exactly); ``K`` below the root count is an error (raise ``levels`` or
  lower the input size).
* **Order.** Tokens are in raster order of their top-left corners (for a uniform tree
  this is the plain model's row-major order).

Positions of a region (``cell_centres``): its centre in fine-grid units,
``(top + h / 2, left + w / 2)``, normalised to ``[-1, 1]`` over the grid exactly as
:func:`vitres.layers.pos_embed.grid_coordinates` normalises patch centres -- so a
level-0 cell has its fine patch's coordinate and a whole level-``l`` cell of a grid
``2**l`` divides has the coordinate of its patch in the uniform ``2**l p`` model. The
relative kinds (``rope``, ``cpb``) use differences of these centres, in base-grid
patch units as on a uniform grid. Learned tables are resampled to the fine grid and
averaged over the region (``cell_means``, ``table_positions="average"``), or resampled to
the grid of the region's level (``"level"``).

Sizes (``proportional=True``): a token standing for ``s`` of the image's smallest tokens
gets ``log s`` on its key's attention logits (ToMe's proportional attention, Bolya et al.,
ICLR 2023) and weight ``s`` in average pooling, so each part of the image counts by its
area, as on a uniform grid.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitres.layers.patch_embed import KERNEL_RESIZE_MODES, PatchSize, to_patch

SALIENCY_KINDS = ("gradient", "variance")
TABLE_POSITIONS = ("average", "level")
ALIGNMENTS = ("clip", "resize")

Kernel = Callable[[tuple[int, int]], Tensor]


@dataclass(frozen=True)
class QuadtreeCells:
    """Every cell of every level of a ``grid``, level-major, row-major within a level.

    Attributes:
        grid: The fine grid ``(rows, cols)``.
        levels: Number of levels (cells of ``1, 2, .., 2**(levels-1)`` fine cells a side).
        level, top, left, height, width: ``(M,)`` long tensors, one entry per cell, in
            fine-cell units (height and width are clipped to the grid).
        level_shapes: The ``(rows, cols)`` of each level's tiling.
        offsets: Index of each level's first cell.
        children: Per cell, the cells it splits into (empty: cannot split), each the
            finest cell with its pixels (a clipped cell with a single child is that child).
        roots: The cells of the coarsest level (each the finest cell with its pixels).
    """

    grid: tuple[int, int]
    levels: int
    level: Tensor
    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    level_shapes: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]
    roots: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.level.numel())

    def fine_cells(self) -> Tensor:
        """The level-0 cells (one per fine patch) in row-major order."""
        rows, cols = self.grid
        return torch.arange(rows * cols)


@functools.lru_cache(maxsize=64)
def quadtree_cells(grid: tuple[int, int], levels: int) -> QuadtreeCells:
    """The cells of ``levels`` levels over a fine ``grid`` (see the module docstring)."""
    rows, cols = int(grid[0]), int(grid[1])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    check_levels(levels)
    level, top, left, height, width = [], [], [], [], []
    shapes, offsets = [], []
    for lvl in range(levels):
        side = 2**lvl
        tops = list(range(0, rows, side))
        lefts = list(range(0, cols, side))
        shapes.append((len(tops), len(lefts)))
        offsets.append(len(level))
        for t in tops:
            for c in lefts:
                level.append(lvl)
                top.append(t)
                left.append(c)
                height.append(min(side, rows - t))
                width.append(min(side, cols - c))

    def index(lvl: int, t: int, c: int) -> int:
        side = 2**lvl
        return offsets[lvl] + (t // side) * shapes[lvl][1] + c // side

    def direct_children(i: int) -> list[int]:
        lvl = level[i]
        if lvl == 0:
            return []
        half = 2 ** (lvl - 1)
        out = []
        for dt in (0, half):
            for dc in (0, half):
                t, c = top[i] + dt, left[i] + dc
                if t < rows and c < cols:
                    out.append(index(lvl - 1, t, c))
        return out

    def canonical(i: int) -> int:
        """The finest cell with ``i``'s pixels: a cell with one child *is* that child."""
        kids = direct_children(i)
        while len(kids) == 1:
            i, kids = kids[0], direct_children(kids[0])
        return i

    children = tuple(
        tuple(canonical(k) for k in direct_children(canonical(i))) for i in range(len(level))
    )
    coarsest = levels - 1
    roots = tuple(canonical(i) for i in range(offsets[coarsest], len(level)))
    as_long = functools.partial(torch.tensor, dtype=torch.long)
    return QuadtreeCells(
        (rows, cols),
        levels,
        as_long(level),
        as_long(top),
        as_long(left),
        as_long(height),
        as_long(width),
        tuple(shapes),
        tuple(offsets),
        children,
        roots,
    )


def check_levels(levels: object) -> int:
    """``levels`` as an int >= 1; ``ValueError`` otherwise."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(
            f"quadtree levels must be an int >= 1 (1 = fine patches only, 3 = patches of "
            f"p, 2p and 4p), got {levels!r}"
        )
    return levels


def check_token_budget(token_budget: object) -> int:
    """``token_budget`` as a positive int; ``ValueError`` otherwise."""
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(
            f"token_budget must be a positive int (patch tokens per image), got {token_budget!r}"
        )
    return token_budget


# --------------------------------------------------------------------------- saliency


def _integral(maps: Tensor) -> Tensor:
    """Summed-area tables ``(B, K, rows + 1, cols + 1)`` of ``(B, K, rows, cols)`` maps."""
    out = maps.to(torch.float64).cumsum(-1).cumsum(-2)
    return F.pad(out, (1, 0, 1, 0))


def _box_sums(integral: Tensor, cells: QuadtreeCells) -> Tensor:
    """Sums of each map over each cell: ``(B, K, M)``."""
    t, c = cells.top, cells.left
    b, r = t + cells.height, c + cells.width
    return integral[..., b, r] - integral[..., t, r] - integral[..., b, c] + integral[..., t, c]


def cell_saliency(
    x: Tensor, patch_size: PatchSize, cells: QuadtreeCells, kind: str = "gradient"
) -> Tensor:
    """Training-free saliency of every cell for every image: ``(B, M)`` float64.

    Args:
        x: ``(B, C, rows * ph, cols * pw)`` images, sides multiples of the fine patch.
        patch_size: The fine patch.
        cells: The cells of the grid (:func:`quadtree_cells`).
        kind: ``gradient`` (pixel-gradient energy) or ``variance`` (sum of squared
            deviations from the region mean); both summed over the region's pixels and
            channels.
    """
    if kind not in SALIENCY_KINDS:
        raise ValueError(f"unknown saliency {kind!r}; expected one of {SALIENCY_KINDS}")
    ph, pw = to_patch(patch_size)
    rows, cols = cells.grid
    batch = x.shape[0]
    x = x.detach().to(torch.float64)

    def per_cell(values: Tensor) -> Tensor:  # (B, K, H, W) -> (B, K, rows, cols) sums
        return values.reshape(batch, -1, rows, ph, cols, pw).sum(dim=(3, 5))

    if kind == "gradient":
        dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
        dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        energy = (dx * dx + dy * dy).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        return _box_sums(_integral(per_cell(energy)), cells)[:, 0]
    sums = _box_sums(_integral(per_cell(torch.cat([x, x * x], dim=1))), cells)  # (B, 2C, M)
    first, second = sums.chunk(2, dim=1)
    pixels = (cells.height * cells.width * ph * pw).to(first.device, torch.float64)
    return (second - first * first / pixels).sum(dim=1).clamp_min(0.0)


# --------------------------------------------------------------------------- the tree


def root_count(grid: tuple[int, int], levels: int) -> int:
    """Tokens of the coarsest tiling (the fewest a budget can ask for)."""
    shape = quadtree_cells(tuple(grid), levels).level_shapes[-1]
    return shape[0] * shape[1]


def build_tree(scores: Tensor, cells: QuadtreeCells, token_budget: int) -> Tensor:
    """The cells one image is tokenised into, in raster order of their top-left corners.

    Args:
        scores: ``(M,)`` saliency of every cell of this image.
        cells: The cells of the grid.
        token_budget: Tokens at most (see the module docstring).

    Raises:
        ValueError: ``token_budget`` below the number of root cells.
    """
    budget = check_token_budget(token_budget)
    roots = cells.roots
    rows, cols = cells.grid
    if budget < len(roots):
        coarsest = 2 ** (cells.levels - 1)
        raise ValueError(
            f"token_budget {budget} is below the {len(roots)} tokens of the coarsest tiling "
            f"of this input ({rows}x{cols} fine patches in cells of {coarsest}x{coarsest}); "
            f"give token_budget >= {len(roots)}, more quadtree levels "
            f"(QuadtreeTokenizer(levels=...), vitres eval --quadtree-levels), or a smaller input"
        )
    score = scores.tolist()
    area = (cells.height * cells.width).tolist()
    top, left = cells.top.tolist(), cells.left.tolist()
    children = cells.children

    def entry(i: int) -> tuple:
        return (-score[i], -area[i], top[i], left[i], i)

    leaves = set(roots)
    heap = [entry(i) for i in roots if children[i]]
    heapq.heapify(heap)
    count = len(leaves)
    while heap and count < budget:
        i = heapq.heappop(heap)[-1]
        kids = children[i]
        if count + len(kids) - 1 > budget:
            continue  # this split does not fit; a smaller one further down may
        leaves.discard(i)
        leaves.update(kids)
        count += len(kids) - 1
        for k in kids:
            if children[k]:
                heapq.heappush(heap, entry(k))
    return torch.tensor(sorted(leaves, key=lambda i: (top[i], left[i])), dtype=torch.long)


@dataclass(frozen=True)
class QuadtreePlan:
    """How each image of a batch is tokenised.

    Attributes:
        cells: Every cell of the fine grid's levels.
        patch: The fine patch ``(ph, pw)``.
        index: Per image, the ``(N_b,)`` cells it is tokenised into (raster order).
        proportional: Weigh tokens by their size in attention and pooling.
        table_positions: How a learned table gives a region its position.
        kernel_resize_mode: The kernel resize of coarse cells (``None``: the model's).
    """

    cells: QuadtreeCells
    patch: tuple[int, int]
    index: tuple[Tensor, ...]
    proportional: bool = True
    table_positions: str = "average"
    kernel_resize_mode: str | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.cells.grid

    @property
    def counts(self) -> list[int]:
        """Tokens of each image."""
        return [int(i.numel()) for i in self.index]

    def token_sizes(self, index: Tensor) -> Tensor:
        """``(b, N)`` size of each token in units of the smallest token of its image.

        On a uniform tree every size is 1, so a tree without splits or with every split
        weighs its tokens as the uniform model does.
        """
        area = (self.cells.height * self.cells.width)[index].to(torch.float32)
        return area / area.amin(dim=-1, keepdim=True)

    def boxes(self, image: int) -> Tensor:
        """``(N, 4)`` pixel boxes ``(top, left, height, width)`` of one image's tokens."""
        ph, pw = self.patch
        i = self.index[image]
        c = self.cells
        return torch.stack(
            [c.top[i] * ph, c.left[i] * pw, c.height[i] * ph, c.width[i] * pw], dim=1
        )


@dataclass(frozen=True)
class QuadtreeTokenizer:
    """Settings of the quadtree: levels, saliency, and how regions are embedded and weighed.

    The defaults were chosen by measurement (``benchmarks/mixed_tokens.py``): two levels
    (patches of ``p`` and ``2p``), gradient saliency, proportional attention, level table
    positions, resize alignment and nearest (area) kernels.

    Attributes:
        levels: Cell sizes ``p, 2p, .., 2**(levels-1) p`` (3: ``p``, ``2p``, ``4p``).
        saliency: ``gradient`` or ``variance`` (see the module docstring).
        proportional: Weigh each token by its size (in units of the image's smallest
            token): ``log(size)`` on the attention logits of its key (ToMe's proportional
            attention) and a size-weighted mean in average pooling. A uniform tree is
            unchanged by it.
        table_positions: A learned table's position for a region: ``average`` (the table
            resampled to the fine grid, averaged over the region) or ``level`` (the table
            resampled to the grid of the region's level, the entry of its cell: what the
            uniform model at that patch size uses).
        align: Inputs whose fine grid the coarsest cell does not divide: ``clip`` (edge
            cells clipped to the grid, embedded with kernels of their own size) or
            ``resize`` (the input is first resized, antialiased, to the nearest multiple
            of the coarsest patch, so every cell is whole).
        kernel_resize_mode: The resize ``B`` whose pseudo-inverse gives a coarse cell's
            kernel (:func:`vitres.layers.patch_embed.resample_patch_embed`); ``None``:
            the model's ``kernel_resize_mode``. With ``nearest`` a ``2^l p`` cell's
            embedding is the base kernel applied to the cell averaged down to ``p x p``.
    """

    # defaults: the best of 64 settings on 200 training images, over the bundled models at
    # 25 % and 50 % budgets (benchmarks/mixed_tokens.py, the selection table)
    levels: int = 2
    saliency: str = "gradient"
    proportional: bool = True
    table_positions: str = "level"
    align: str = "resize"
    kernel_resize_mode: str | None = "nearest"

    def __post_init__(self) -> None:
        check_levels(self.levels)
        if self.saliency not in SALIENCY_KINDS:
            raise ValueError(
                f"unknown saliency {self.saliency!r}; expected one of {SALIENCY_KINDS}"
            )
        if self.table_positions not in TABLE_POSITIONS:
            raise ValueError(
                f"unknown table_positions {self.table_positions!r}; expected one of "
                f"{TABLE_POSITIONS}"
            )
        if self.align not in ALIGNMENTS:
            raise ValueError(f"unknown align {self.align!r}; expected one of {ALIGNMENTS}")
        if self.kernel_resize_mode is not None and self.kernel_resize_mode not in (
            KERNEL_RESIZE_MODES
        ):
            raise ValueError(
                f"unknown kernel_resize_mode {self.kernel_resize_mode!r}; expected None (the "
                f"model's) or one of {KERNEL_RESIZE_MODES}"
            )

    @property
    def coarsest(self) -> int:
        """Side of the coarsest cell in fine patches (``2**(levels-1)``)."""
        return 2 ** (self.levels - 1)

    def plan(self, x: Tensor, patch_size: PatchSize, token_budget: int) -> QuadtreePlan:
        """The tree of every image of ``x`` (sides multiples of ``patch_size``)."""
        ph, pw = to_patch(patch_size)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if height % ph or width % pw:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch {ph}x{pw}; apply the "
                "size policy first (vitres.layers.patch_embed.fit_to_patch)"
            )
        cells = quadtree_cells((height // ph, width // pw), self.levels)
        check_token_budget(token_budget)
        options = {
            "proportional": self.proportional,
            "table_positions": self.table_positions,
            "kernel_resize_mode": self.kernel_resize_mode,
        }
        if token_budget >= height // ph * (width // pw):
            fine = cells.fine_cells()
            return QuadtreePlan(cells, (ph, pw), tuple(fine for _ in range(x.shape[0])), **options)
        scores = cell_saliency(x, (ph, pw), cells, self.saliency)
        index = tuple(build_tree(s, cells, token_budget) for s in scores)
        return QuadtreePlan(cells, (ph, pw), index, **options)


# --------------------------------------------------------------------------- embedding


def embed_cells(
    x: Tensor, kernel: Kernel, bias: Tensor | None, patch_size: PatchSize, cells: QuadtreeCells
) -> Tensor:
    """Patch embeddings of every cell: ``(B, M, D)``.

    Each level is a strided convolution over the image with that level's kernel; the
    clipped cells of the last row and column use a kernel PI-resized to their own size.
    At most four convolutions per level, so the cost is ``levels`` patch embeddings.

    Args:
        x: ``(B, C, rows * ph, cols * pw)`` images.
        kernel: ``kernel((kh, kw))`` gives the patch-embedding kernel for a
            ``kh x kw`` patch (a model's ``patch_kernel``).
        bias: The patch embedding's bias.
        patch_size: The fine patch.
        cells: The cells of the grid.
    """
    ph, pw = to_patch(patch_size)
    rows, cols = cells.grid
    out = []
    for lvl in range(cells.levels):
        side = 2**lvl
        full_r, full_c = rows // side, cols // side
        rem_r, rem_c = rows - full_r * side, cols - full_c * side
        spans_r = [(0, full_r * side, side)] if full_r else []
        spans_c = [(0, full_c * side, side)] if full_c else []
        if rem_r:
            spans_r.append((full_r * side, rows, rem_r))
        if rem_c:
            spans_c.append((full_c * side, cols, rem_c))
        bands = []
        for r0, r1, kh in spans_r:
            parts = []
            for c0, c1, kw in spans_c:
                size = (kh * ph, kw * pw)
                patch = x[..., r0 * ph : r1 * ph, c0 * pw : c1 * pw]
                parts.append(F.conv2d(patch, kernel(size), bias, stride=size))  # (B, D, r, c)
            bands.append(torch.cat(parts, dim=-1))
        level_map = torch.cat(bands, dim=-2)  # (B, D, ceil(rows/side), ceil(cols/side))
        out.append(level_map.flatten(2).transpose(1, 2))
    return torch.cat(out, dim=1)


def cell_means(table: Tensor, cells: QuadtreeCells) -> Tensor:
    """The mean of a fine-grid table over every cell: ``(M, D)`` from ``(rows * cols, D)``.

    Level 0 is the table itself; coarser levels average the fine entries each (clipped)
    cell covers.
    """
    rows, cols = cells.grid
    grid = table.reshape(rows, cols, -1).permute(2, 0, 1)[None]  # (1, D, rows, cols)
    out = [table]
    for lvl in range(1, cells.levels):
        side = 2**lvl
        # ceil_mode windows hanging over the edge average the entries inside the grid only
        pooled = F.avg_pool2d(grid, side, side, ceil_mode=True)
        out.append(pooled[0].flatten(1).transpose(0, 1))
    return torch.cat(out, dim=0)


def cell_centres(cells: QuadtreeCells) -> tuple[Tensor, Tensor]:
    """Cell centres normalised to ``[-1, 1]``: ``(ys, xs)``, each ``(M,)`` float64.

    ``(top + h / 2) / rows * 2 - 1``: for a level-0 cell the patch centre that
    :func:`vitres.layers.pos_embed.grid_coordinates` gives the fine grid.
    """
    rows, cols = cells.grid
    ys = (cells.top.to(torch.float64) + cells.height.to(torch.float64) / 2) / rows * 2 - 1
    xs = (cells.left.to(torch.float64) + cells.width.to(torch.float64) / 2) / cols * 2 - 1
    return ys, xs


__all__ = [
    "SALIENCY_KINDS",
    "QuadtreeCells",
    "QuadtreePlan",
    "QuadtreeTokenizer",
    "build_tree",
    "cell_centres",
    "cell_means",
    "cell_saliency",
    "embed_cells",
    "quadtree_cells",
    "root_count",
]

"""Position embeddings that follow the input's token grid.

Pure functions (no knowledge of models) for every way vitres ties a token to its
place in the image:

* learned absolute tables resampled to a new grid, by interpolation
  (nearest / bilinear / bicubic / area, optional antialias) or spectrally
  (``fourier``: zero-pad or crop the 2-D spectrum, value-preserving);
* fixed 2-D sin-cos tables (MoCo v3, Chen et al. 2021), regenerated per grid;
* 2-D axial rotary embeddings on q/k (RoPE-ViT, Heo et al. 2024) with
  normalised coordinates;
* a continuous relative position bias, the log-spaced coordinate MLP of
  Swin Transformer V2 (Liu et al. 2022);
* a continuous absolute embedding: an MLP of normalised (x, y).

The continuous kinds are also given at arbitrary positions (``sincos_at``, ``rope_at``,
``CoordinateMLPPosEmbed.at``, ``ContinuousPositionBias.at``), for tokens that are not
on one grid (the mixed-resolution tokens of :mod:`vitres.tokens.quadtree`).

Class and register ("prefix") tokens are never resampled. Grids are ``(rows, cols)``
and can be non-square. Resampling is always done to an explicit ``size``, never with a
scale factor, so a 7x7 grid really becomes 5x9 and not 5x8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic", "area", "fourier")

Grid = tuple[int, int]


def to_grid(size: int | Sequence[int], name: str = "grid") -> Grid:
    """Normalises an int or a pair to a ``(rows, cols)`` tuple of positive ints."""
    if isinstance(size, int):
        rows, cols = size, size
    else:
        values = tuple(size)
        if len(values) != 2:
            raise ValueError(f"{name} must be an int or a (rows, cols) pair, got {size!r}")
        rows, cols = values
    # symbolic sizes (torch.export / ONNX export with dynamic H, W) must stay symbolic:
    # int() would bake the example input's grid into the exported graph
    rows, cols = (v if isinstance(v, torch.SymInt) else int(v) for v in (rows, cols))
    if rows <= 0 or cols <= 0:
        raise ValueError(f"{name} must be positive, got {(rows, cols)}")
    return rows, cols


def _check_mode(mode: str) -> None:
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"unknown resampling mode {mode!r}; expected one of {INTERPOLATION_MODES}")


def _resample_spectrum_axis(spec: Tensor, new_len: int, dim: int) -> Tensor:
    """Zero-pads or crops one axis of a (norm='forward') FFT spectrum.

    The Nyquist bin of an even-length axis is split in half between +n/2 and -n/2 when
    enlarging, and the two are summed back when shrinking, so that enlarging then
    shrinking returns the exact original spectrum.
    """
    old_len = spec.shape[dim]
    if new_len == old_len:
        return spec
    small = min(old_len, new_len)
    half = small // 2  # number of strictly negative frequencies kept (+ Nyquist if even)
    pos = small - half  # 0..pos-1 are the non-negative frequencies below Nyquist
    if new_len > old_len:
        shape = list(spec.shape)
        shape[dim] = new_len
        out = spec.new_zeros(shape)
        out.narrow(dim, 0, pos).copy_(spec.narrow(dim, 0, pos))
        if half:
            neg = half - 1 if small % 2 == 0 else half
            if neg:
                out.narrow(dim, new_len - neg, neg).copy_(spec.narrow(dim, old_len - neg, neg))
            if small % 2 == 0:  # split the Nyquist bin between +n/2 and -n/2
                nyq = spec.narrow(dim, half, 1) * 0.5
                out.narrow(dim, half, 1).copy_(nyq)
                out.narrow(dim, new_len - half, 1).copy_(nyq)
        return out
    # shrink: keep |k| < new_len / 2, fold +-new_len/2 into the new Nyquist bin when even
    parts = [spec.narrow(dim, 0, pos)]
    if small % 2 == 0:
        nyq = spec.narrow(dim, half, 1) + spec.narrow(dim, old_len - half, 1)
        parts.append(nyq)
        neg = half - 1
    else:
        neg = half
    if neg:
        parts.append(spec.narrow(dim, old_len - neg, neg))
    return torch.cat(parts, dim=dim)


def fourier_resample_2d(grid: Tensor, new_grid: Grid) -> Tensor:
    """Resamples ``(..., rows, cols)`` real grids spectrally to ``new_grid``.

    The grid is treated as one period of a band-limited signal: its 2-D spectrum
    (normalised by the number of samples) is zero-padded or cropped. Values are
    preserved (a constant stays that constant; enlarging by an integer factor keeps the
    original samples), and enlarging then shrinking returns the input exactly.
    """
    new_grid = to_grid(new_grid, "new_grid")
    spec = torch.fft.fft2(grid.to(torch.float64), norm="forward")
    spec = _resample_spectrum_axis(spec, new_grid[0], dim=-2)
    spec = _resample_spectrum_axis(spec, new_grid[1], dim=-1)
    return torch.fft.ifft2(spec, norm="forward").real


def resample_grid(
    grid: Tensor, new_grid: Grid, mode: str = "bicubic", antialias: bool = False
) -> Tensor:
    """Resamples a ``(B, C, rows, cols)`` float tensor to ``new_grid`` (no prefix handling)."""
    _check_mode(mode)
    new_grid = to_grid(new_grid, "new_grid")
    if tuple(grid.shape[-2:]) == new_grid:
        return grid
    if mode == "fourier":
        return fourier_resample_2d(grid, new_grid).to(grid.dtype)
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    return F.interpolate(grid, size=new_grid, mode=mode, **kwargs)


def resample_pos_embed(
    pe: Tensor,
    new_grid: int | Sequence[int],
    old_grid: int | Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = False,
) -> Tensor:
    """Resamples a learned absolute position table to a new token grid.

    Args:
        pe: ``(1, num_prefix_tokens + rows * cols, D)`` table (or without the batch dim).
        new_grid: target ``(rows, cols)`` (or an int for square grids).
        old_grid: the table's grid; inferred as square when omitted.
        num_prefix_tokens: leading class/register positions, copied unchanged.
        mode: ``nearest``, ``bilinear``, ``bicubic``, ``area`` or ``fourier``.
        antialias: low-pass before down-sampling (bilinear/bicubic only).

    Returns:
        The table for ``new_grid`` with the same leading dims, dtype and device as ``pe``.
        When the grid is unchanged, ``pe`` itself is returned.
    """
    _check_mode(mode)
    squeeze = pe.ndim == 2
    if squeeze:
        pe = pe.unsqueeze(0)
    if pe.ndim != 3:
        raise ValueError(f"pe must be (1, L, D) or (L, D), got shape {tuple(pe.shape)}")
    if num_prefix_tokens < 0 or num_prefix_tokens > pe.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} does not fit a table of {pe.shape[1]}"
        )
    num_pos = pe.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_pos)
        if side * side != num_pos:
            raise ValueError(
                f"cannot infer a square grid from {num_pos} positions; pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    old_grid = to_grid(old_grid, "old_grid")
    new_grid = to_grid(new_grid, "new_grid")
    if old_grid[0] * old_grid[1] != num_pos:
        raise ValueError(
            f"old_grid {old_grid} has {old_grid[0] * old_grid[1]} positions but the table has "
            f"{num_pos} after {num_prefix_tokens} prefix tokens"
        )
    if old_grid == new_grid:
        return pe.squeeze(0) if squeeze else pe
    prefix, table = pe[:, :num_prefix_tokens], pe[:, num_prefix_tokens:]
    dim = table.shape[-1]
    grid = (
        table.float().reshape(-1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    )  # (B, D, r, c)
    grid = resample_grid(grid, new_grid, mode=mode, antialias=antialias)
    table = grid.permute(0, 2, 3, 1).reshape(-1, new_grid[0] * new_grid[1], dim).to(pe.dtype)
    out = torch.cat([prefix, table], dim=1)
    return out.squeeze(0) if squeeze else out


def grid_coordinates(
    grid: Grid, base_grid: Grid | None = None, device=None, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """Patch-centre coordinates of a grid, normalised to ``[-1, 1]`` along each axis.

    Returns:
        ``(ys, xs)``, each of shape ``(rows * cols,)`` in row-major token order. With
        ``base_grid`` the coordinates are scaled by ``(base - 1) / 2`` so that at the base
        grid they are integer patch offsets from the centre, whatever the grid.
    """
    rows, cols = grid
    ys = (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) / rows * 2 - 1
    xs = (torch.arange(cols, device=device, dtype=torch.float64) + 0.5) / cols * 2 - 1
    if base_grid is not None:
        ys = ys * base_grid[0] / 2
        xs = xs * base_grid[1] / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return yy.reshape(-1).to(dtype), xx.reshape(-1).to(dtype)


def sincos_2d(
    grid: int | Sequence[int],
    dim: int,
    base_grid: int | Sequence[int] | None = None,
    temperature: float = 10000.0,
) -> Tensor:
    """Fixed 2-D sin-cos table ``(rows * cols, dim)`` regenerated for any grid.

    Positions are patch centres in units of base-grid patches (so a larger input sees the
    same range of positions, finer sampled). A quarter of the channels each hold
    ``sin(y w)``, ``cos(y w)``, ``sin(x w)``, ``cos(x w)`` with ``w = temperature^(-k/(dim/4))``.
    """
    grid = to_grid(grid)
    base = to_grid(base_grid) if base_grid is not None else grid
    ys, xs = grid_coordinates(grid, base, dtype=torch.float64)
    return sincos_at(ys, xs, dim, temperature)


def sincos_at(ys: Tensor, xs: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """The sin-cos embedding ``(..., dim)`` of positions ``(ys, xs)`` (any shape, float).

    Positions are in units of base-grid patches, as :func:`grid_coordinates` gives them
    with a ``base_grid``; :func:`sincos_2d` is this function at a grid's patch centres.
    Computed in float64, returned in float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    ys, xs = ys.to(torch.float64), xs.to(torch.float64)
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64, device=ys.device) / quarter)
    y = ys[..., None] * omega
    x = xs[..., None] * omega
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1).float()


def rope_2d(
    grid: int | Sequence[int],
    head_dim: int,
    base_grid: int | Sequence[int] | None = None,
    theta: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """Axial 2-D rotary embedding for a grid: ``(cos, sin)``, each ``(rows * cols, head_dim)``.

    Half of each head's channel pairs rotate with the row coordinate, half with the
    column coordinate (the "axial" variant of RoPE-ViT). Coordinates are normalised patch
    centres scaled to the base grid, so relative angles between neighbouring patches are
    those of training when the image is resized.
    """
    grid = to_grid(grid)
    base = to_grid(base_grid) if base_grid is not None else grid
    ys, xs = grid_coordinates(grid, base, dtype=torch.float64)
    return rope_at(ys, xs, head_dim, theta)


def rope_at(ys: Tensor, xs: Tensor, head_dim: int, theta: float = 100.0) -> tuple[Tensor, Tensor]:
    """The axial rotary ``(cos, sin)`` of :func:`rope_2d` at any coordinates.

    Args:
        ys: row coordinates ``(..., N)`` in base-grid patch units, as
            :func:`grid_coordinates` scales them (for a mixed-resolution token: its centre; for a
            merged token: the size-weighted mean of its patches' coordinates, whose angle
            is the mean angle since angles are linear in the coordinates).
        xs: column coordinates, the same shape.
        head_dim: channels per head (divisible by 4).
        theta: the frequency base.

    Returns:
        float32 ``(cos, sin)``, each ``(..., N, head_dim)``.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64, device=ys.device) / quarter)
    ys, xs = ys.to(torch.float64), xs.to(torch.float64)
    angles = torch.cat([ys[..., None] * freqs, xs[..., None] * freqs], dim=-1)  # (..., N, hd/2)
    angles = angles.repeat_interleave(2, dim=-1)  # pairs (2i, 2i+1) share an angle
    return angles.cos().float(), angles.sin().float()


def rope_normalized(
    grid: int | Sequence[int], head_dim: int, theta: float, scale: float
) -> tuple[Tensor, Tensor]:
    """Axial rotary ``(cos, sin)`` at patch centres normalised to ``[-1, 1]``, angles
    ``scale * coordinate * theta ** (-j / (head_dim / 4))`` (DINOv3's RoPE, ``scale`` = 2 pi).

    Computed in float32 in the order DINOv3's reference does, so the angles carry the
    same bits; the pairs are laid out as :func:`rope_at` lays them (``(2i, 2i+1)``), which
    an importer matches by permuting the q / k channels of each head.
    """
    rows, cols = to_grid(grid)
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    inverse = 1 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    ys = torch.arange(0.5, rows, dtype=torch.float32) / rows
    xs = torch.arange(0.5, cols, dtype=torch.float32) / cols
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = (scale * coords[:, :, None] * inverse[None, None, :]).flatten(1, 2)
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates channel pairs ``(2i, 2i+1)`` of ``x`` (..., N, head_dim) by the given angles."""
    x_pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-x_pairs[..., 1], x_pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def log_spaced_relative_coords(grid: Grid, base_grid: Grid) -> tuple[Tensor, Tensor]:
    """Swin-V2 relative coordinate table and index for a grid.

    Returns:
        ``table``: ``((2r-1)(2c-1), 2)`` log-spaced relative offsets (dy, dx), normalised
        by the base grid; ``index``: ``(N, N)`` long tensor into the table for each pair.
    """
    rows, cols = grid
    # offsets in units of base-grid patches (the same image region maps the same way at
    # any resolution), normalised by the base grid's largest offset as in Swin-V2
    dy = torch.arange(-(rows - 1), rows, dtype=torch.float32) * (base_grid[0] / rows)
    dx = torch.arange(-(cols - 1), cols, dtype=torch.float32) * (base_grid[1] / cols)
    table = log_spaced_offsets(
        torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2), base_grid
    )
    pos_r, pos_c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos_r, pos_c = pos_r.reshape(-1), pos_c.reshape(-1)
    rel_r = pos_r[:, None] - pos_r[None, :] + rows - 1
    rel_c = pos_c[:, None] - pos_c[None, :] + cols - 1
    index = rel_r * (2 * cols - 1) + rel_c
    return table, index


def log_spaced_offsets(offsets: Tensor, base_grid: Grid) -> Tensor:
    """Swin-V2's log-spacing of relative offsets ``(..., 2)`` (dy, dx) in base-grid patch
    units: normalised by the base grid's largest offset, then ``sign(t) log2(1 + 8|t|) / 3``."""
    scale = offsets.new_tensor([max(base_grid[0] - 1, 1), max(base_grid[1] - 1, 1)])
    table = offsets / scale * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


class ContinuousPositionBias(nn.Module):
    """Swin-V2 continuous relative position bias: an MLP of log-spaced offsets.

    Produces a per-head additive attention bias ``(heads, N, N)`` for any grid; the
    prefix tokens get zero bias. Relative offsets are measured in base-grid patches, so
    resizing an image keeps the bias between the same image regions.
    """

    def __init__(self, num_heads: int, base_grid: Grid, hidden_dim: int = 256) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.base_grid = to_grid(base_grid)
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_heads, bias=False),
        )

    def _bias_values(self, table: Tensor) -> Tensor:
        """``16 sigmoid(mlp(offsets))``: the bias ``(T, heads)`` of each log-spaced offset."""
        weight = self.mlp[0].weight
        return 16 * torch.sigmoid(self.mlp(table.to(device=weight.device, dtype=weight.dtype)))

    def offset_table(self, grid: Grid) -> Tensor:
        """The bias of every offset between two tokens of ``grid``: ``(heads, 2 rows - 1,
        2 cols - 1)``, entry ``[h, dy + rows - 1, dx + cols - 1]`` for a query ``dy`` rows
        below and ``dx`` columns right of its key (see :func:`offset_bias_at`)."""
        rows, cols = to_grid(grid)
        table, _ = log_spaced_relative_coords((rows, cols), self.base_grid)
        return self._bias_values(table).T.reshape(self.num_heads, 2 * rows - 1, 2 * cols - 1)

    def forward(self, grid: Grid, num_prefix_tokens: int = 0) -> Tensor:
        table, index = log_spaced_relative_coords(to_grid(grid), self.base_grid)
        values = self._bias_values(table)  # (T, heads)
        n = index.shape[0]
        bias = values[index.to(values.device).reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        if num_prefix_tokens:
            bias = F.pad(bias, (num_prefix_tokens, 0, num_prefix_tokens, 0))
        return bias  # (heads, P + N, P + N)

    def at(self, ys: Tensor, xs: Tensor, num_prefix_tokens: int = 0) -> Tensor:
        """The bias between tokens at arbitrary positions: ``(B, heads, P + N, P + N)``.

        Args:
            ys: ``(B, N)`` token centres in base-grid patch units (row axis), as
                :func:`grid_coordinates` gives them with a ``base_grid``; at a grid's
                patch centres this is :meth:`forward`'s bias.
            xs: ``(B, N)`` the same along the column axis.
            num_prefix_tokens: leading tokens that get zero bias.
        """
        offsets = torch.stack(
            [ys[:, :, None] - ys[:, None, :], xs[:, :, None] - xs[:, None, :]], dim=-1
        )  # (B, N, N, 2)
        # the MLP runs once per distinct offset, as the grid form runs it once per table row
        unique, inverse = torch.unique(offsets.reshape(-1, 2), dim=0, return_inverse=True)
        values = self._bias_values(log_spaced_offsets(unique.float(), self.base_grid))
        batch, n = ys.shape
        bias = values[inverse].reshape(batch, n, n, -1).permute(0, 3, 1, 2)
        if num_prefix_tokens:
            bias = F.pad(bias, (num_prefix_tokens, 0, num_prefix_tokens, 0))
        return bias  # (B, heads, P + N, P + N)


def offset_bias_at(table: Tensor, positions: Tensor) -> Tensor:
    """Reads an offset table (:meth:`ContinuousPositionBias.offset_table`) at real offsets.

    Tokens that stand for several patches (merged tokens, :mod:`vitres.tokens.merge`) sit
    between grid cells; their bias is the table interpolated bilinearly at the offset of
    their centres, which is the table itself at whole-cell offsets.

    Args:
        table: ``(heads, 2 rows - 1, 2 cols - 1)`` bias per offset.
        positions: ``(B, N, 2)`` token centres ``(row, col)`` in grid cells.

    Returns:
        ``(B, heads, N, N)``: the bias from each query to each key.
    """
    heads, height, width = table.shape
    rows, cols = (height + 1) // 2, (width + 1) // 2
    offsets = positions[:, :, None, :] - positions[:, None, :, :]  # (B, N, N, 2) = (dy, dx)
    # grid_sample reads (x, y) in [-1, 1]; align_corners maps -1 / 1 to the first / last cell
    scale = offsets.new_tensor([1.0 / max(cols - 1, 1), 1.0 / max(rows - 1, 1)])
    sample_at = (offsets.flip(-1) * scale).to(table.dtype)
    batch = positions.shape[0]
    return F.grid_sample(
        table[None].expand(batch, -1, -1, -1),
        sample_at,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )


class CoordinateMLPPosEmbed(nn.Module):
    """Continuous absolute position embedding: an MLP of normalised patch-centre (y, x).

    A fixed bank of sinusoids of the coordinates feeds the MLP (so it can represent more
    than the smooth functions a plain MLP of two numbers learns first).
    """

    def __init__(self, dim: int, hidden_dim: int = 256, num_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies",
            math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32) / 2,
            persistent=False,
        )
        in_dim = 2 + 4 * num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)
        )

    def forward(self, grid: Grid) -> Tensor:
        ys, xs = grid_coordinates(to_grid(grid), device=self.mlp[0].weight.device)
        return self.at(ys, xs)  # (N, D)

    def at(self, ys: Tensor, xs: Tensor) -> Tensor:
        """The embedding ``(..., D)`` of positions ``(ys, xs)`` normalised to ``[-1, 1]``
        (any shape); :meth:`forward` is this at a grid's patch centres."""
        weight = self.mlp[0].weight
        coords = torch.stack([ys, xs], dim=-1).to(device=weight.device, dtype=torch.float32)
        angles = coords[..., None] * self.frequencies  # (..., 2, F)
        feats = torch.cat([coords, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return self.mlp(feats.to(weight.dtype))

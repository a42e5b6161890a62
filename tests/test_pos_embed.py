"""Position-embedding resampling against direct reference computations and invariants."""

import math

import numpy as np
import pytest
import torch

from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    apply_rope,
    fourier_resample_2d,
    log_spaced_relative_coords,
    resample_pos_embed,
    rope_2d,
    sincos_2d,
)


def _ref_bilinear_axis(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix (n_out, n_in) of bilinear resampling, align_corners=False."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


def _ref_nearest_axis(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        m[i, min(int(math.floor(i * n_in / n_out)), n_in - 1)] = 1
    return m


def _ref_area_axis(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        start = math.floor(i * n_in / n_out)
        end = math.ceil((i + 1) * n_in / n_out)
        m[i, start:end] = 1 / (end - start)
    return m


def _table(grid, dim=6, prefix=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, prefix + grid[0] * grid[1], dim, generator=g)


def _apply_separable(pe_grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """pe_grid (r, c, D) -> (r', c', D) with row/col interpolation matrices."""
    return np.einsum("ir,rcd,jc->ijd", rows, pe_grid, cols)


@pytest.mark.parametrize(
    "mode,axis_fn",
    [("bilinear", _ref_bilinear_axis), ("nearest", _ref_nearest_axis), ("area", _ref_area_axis)],
)
@pytest.mark.parametrize("old,new", [((2, 8), (4, 4)), ((7, 7), (5, 9)), ((4, 6), (8, 3))])
def test_resample_matches_direct_reference(mode, axis_fn, old, new):
    pe = _table(old, prefix=2)
    out = resample_pos_embed(pe, new, old_grid=old, num_prefix_tokens=2, mode=mode)
    assert out.shape == (1, 2 + new[0] * new[1], 6)
    torch.testing.assert_close(out[:, :2], pe[:, :2], rtol=0, atol=0)  # prefix untouched
    grid = pe[0, 2:].reshape(old[0], old[1], 6).double().numpy()
    ref = _apply_separable(grid, axis_fn(old[0], new[0]), axis_fn(old[1], new[1]))
    np.testing.assert_allclose(out[0, 2:].reshape(new[0], new[1], 6).numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area", "fourier"])
def test_identity_when_grid_unchanged(mode):
    pe = _table((5, 7))
    out = resample_pos_embed(pe, (5, 7), old_grid=(5, 7), mode=mode)
    assert torch.equal(out, pe)


def test_bicubic_constant_and_dtype():
    pe = torch.full((1, 1 + 16, 4), 3.0, dtype=torch.bfloat16)
    out = resample_pos_embed(pe, (6, 3), mode="bicubic", antialias=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.full((1, 19, 4), 3.0))


def test_fourier_up_then_down_returns_original():
    for old, mid in [((4, 6), (9, 11)), ((5, 7), (8, 8)), ((6, 6), (12, 13))]:
        pe = _table(old, prefix=1)
        up = resample_pos_embed(pe, mid, old_grid=old, mode="fourier")
        down = resample_pos_embed(up, old, old_grid=mid, mode="fourier")
        torch.testing.assert_close(down, pe, atol=1e-5, rtol=0)


def test_fourier_matches_trigonometric_interpolation():
    """Odd sizes have no Nyquist ambiguity: compare with the band-limited interpolant."""
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(5, 7, generator=g, dtype=torch.float64)
    new = (9, 11)
    out = fourier_resample_2d(grid, new).numpy()
    coef = np.fft.fft2(grid.numpy()) / grid.numel()
    ky = np.fft.fftfreq(5) * 5
    kx = np.fft.fftfreq(7) * 7
    ref = np.zeros(new)
    for i in range(new[0]):
        for j in range(new[1]):
            ty, tx = i * 5 / new[0], j * 7 / new[1]
            phase = np.exp(2j * np.pi * (ky[:, None] * ty / 5 + kx[None, :] * tx / 7))
            ref[i, j] = (coef * phase).sum().real
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_fourier_integer_upsampling_keeps_samples_and_constant():
    grid = torch.randn(3, 4, 6, dtype=torch.float64)
    up = fourier_resample_2d(grid, (8, 12))
    torch.testing.assert_close(up[:, ::2, ::2], grid)
    const = fourier_resample_2d(torch.full((1, 4, 4), 2.5), (7, 3))
    torch.testing.assert_close(const, torch.full((1, 7, 3), 2.5, dtype=torch.float64))


def test_resample_errors():
    pe = _table((3, 5))
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(pe, (4, 4))
    with pytest.raises(ValueError, match="positions"):
        resample_pos_embed(pe, (4, 4), old_grid=(4, 4))
    with pytest.raises(ValueError, match="mode"):
        resample_pos_embed(pe, (4, 4), old_grid=(3, 5), mode="cubic")


def test_sincos_formula():
    table = sincos_2d((2, 3), 8)
    # patch-centre coordinates in base-grid patches: rows at (-0.5, 0.5), cols at (-1, 0, 1)
    y, x = -0.5, 1.0
    omega = 10000.0 ** (-np.arange(2) / 2)
    expected = np.concatenate(
        [np.sin(y * omega), np.cos(y * omega), np.sin(x * omega), np.cos(x * omega)]
    )
    np.testing.assert_allclose(table[2].numpy(), expected, atol=1e-6)  # token (row 0, col 2)
    # a finer grid samples the same range of positions
    fine = sincos_2d((4, 6), 8, base_grid=(2, 3))
    assert fine.shape == (24, 8)
    assert torch.allclose(fine[:, 0].min(), torch.sin(torch.tensor(-0.75)), atol=1e-6)


def test_rope_depends_only_on_relative_position():
    cos, sin = rope_2d((5, 5), 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def score(i, j):
        qi = apply_rope(q[None], cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k[None], cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    def tok(r, c):
        return r * 5 + c

    assert score(tok(0, 1), tok(2, 3)) == pytest.approx(score(tok(1, 2), tok(3, 4)), abs=1e-5)
    assert score(tok(0, 0), tok(0, 1)) != pytest.approx(score(tok(0, 0), tok(1, 0)), abs=1e-3)
    # rotation keeps norms
    rotated = apply_rope(q.expand(25, 8), cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm().expand(25))


def test_cpb_matches_direct_mlp_evaluation():
    torch.manual_seed(0)
    cpb = ContinuousPositionBias(num_heads=2, base_grid=(3, 4), hidden_dim=16)
    bias = cpb((3, 4), num_prefix_tokens=1)
    assert bias.shape == (2, 13, 13)
    assert torch.all(bias[:, 0] == 0) and torch.all(bias[:, :, 0] == 0)
    table, _ = log_spaced_relative_coords((3, 4), (3, 4))
    for (r1, c1), (r2, c2) in [((0, 0), (2, 3)), ((1, 2), (0, 1)), ((2, 1), (2, 1))]:
        dy, dx = (r1 - r2) / 2 * 8, (c1 - c2) / 3 * 8
        coords = torch.tensor([[dy, dx]])
        coords = torch.sign(coords) * torch.log2(coords.abs() + 1) / 3
        expected = 16 * torch.sigmoid(cpb.mlp(coords))[0]
        got = bias[:, 1 + r1 * 4 + c1, 1 + r2 * 4 + c2]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert table.shape == (5 * 7, 2)

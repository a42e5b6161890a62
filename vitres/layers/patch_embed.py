"""Patch embedding at any patch size, and the policy for sizes the patch does not divide.

Patch size at run time follows FlexiViT (Beyer et al., CVPR 2023): a patch of the new
size ``x'`` relates to the stored size by a linear resize ``x' = B x``. Choosing the new
kernel ``w' = pinv(B^T) w`` keeps ``<x, w> = <B x, w'>`` exactly when enlarging (B has
full column rank), and is the least-squares best when shrinking. The kernel is always
computed from the stored base kernel, never from a previous resize.

Patches may be rectangular (``(height, width)``, as timm and big_vision allow): the
stored kernel, the run-time patch size and the PI-resize between them each have their
own height and width. Square sizes are stored as plain ints.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import VersionedCache

SIZE_POLICIES = ("pad", "crop", "resize", "error")
KERNEL_RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")

PatchSize = int | tuple[int, int]


def to_patch(patch_size: object, name: str = "patch_size") -> tuple[int, int]:
    """Normalises a patch size (an int or a ``(height, width)`` pair) to a pair of positive ints.

    Raises:
        ValueError: not a positive int or a pair of them (``bool`` and floats are refused).
    """
    values = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {patch_size!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise ValueError(
                f"{name} must be a positive int or a (height, width) pair of them, "
                f"got {patch_size!r}"
            )
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {patch_size!r}")
    return values[0], values[1]


def canonical_patch(patch_size: object) -> PatchSize:
    """A patch size as a config stores it: an int when square, a ``(height, width)`` tuple otherwise."""
    height, width = to_patch(patch_size)
    return height if height == width else (height, width)


@functools.lru_cache(maxsize=64)
def _resize_matrix(
    old: tuple[int, int], new: tuple[int, int], mode: str, antialias: bool
) -> Tensor:
    """``B^T`` as an ``(old_h*old_w, new_h*new_w)`` float64 matrix: row i is the resize of basis patch i."""
    count = old[0] * old[1]
    basis = torch.eye(count, dtype=torch.float64).reshape(count, 1, *old)
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    resized = F.interpolate(basis, size=new, mode=mode, **kwargs)
    return resized.reshape(count, new[0] * new[1])


@functools.lru_cache(maxsize=64)
def _pinv_resize_matrix(
    old: tuple[int, int], new: tuple[int, int], mode: str, antialias: bool
) -> Tensor:
    """``pinv(B^T)``: ``(new_h*new_w, old_h*old_w)`` float64."""
    return torch.linalg.pinv(_resize_matrix(old, new, mode, antialias))


def resample_patch_embed(
    weight: Tensor,
    new_size: PatchSize,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """PI-resizes patch-embedding kernels ``(D, C, ph, pw)`` to ``(D, C, new_h, new_w)``.

    Args:
        weight: the stored (base) kernel; square or rectangular.
        new_size: the new patch size, an int (square) or a ``(height, width)`` pair.
        mode: the resize operator ``B`` the pseudo-inverse is taken of.
        antialias: whether ``B`` low-passes when shrinking (bilinear/bicubic).

    Returns:
        The kernel ``w'`` with ``<x, w> = <resize(x), w'>`` for every patch ``x`` when the
        new patch is at least as large on both sides; computed in float64 and returned in
        ``weight``'s dtype.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a (D, C, ph, pw) kernel, got shape {tuple(weight.shape)}")
    if mode not in KERNEL_RESIZE_MODES:
        raise ValueError(
            f"unknown kernel resize mode {mode!r}; expected one of {KERNEL_RESIZE_MODES}"
        )
    new = to_patch(new_size, "patch size")
    old = (int(weight.shape[-2]), int(weight.shape[-1]))
    if new == old:
        return weight
    pinv = _pinv_resize_matrix(old, new, mode, antialias).to(weight.device)
    flat = weight.reshape(-1, old[0] * old[1]).to(torch.float64)  # (D*C, ph*pw)
    resized = flat @ pinv.T  # (D*C, new_h*new_w)
    return resized.reshape(*weight.shape[:2], *new).to(weight.dtype)


def token_grid(
    image_size: tuple[int, int], patch_size: PatchSize, policy: str = "pad"
) -> tuple[int, int]:
    """The ``(rows, cols)`` token grid an ``(H, W)`` input gets under a size policy."""
    # sizes stay symbolic under export (int() would bake in the example's size)
    height, width = (v if isinstance(v, torch.SymInt) else int(v) for v in image_size[:2])
    ph, pw = to_patch(patch_size)
    if policy == "pad":
        return (-(-height // ph), -(-width // pw))
    if policy == "resize":  # nearest multiple, halves rounded up
        return (
            torch.sym_max(1, (2 * height + ph) // (2 * ph)),
            torch.sym_max(1, (2 * width + pw) // (2 * pw)),
        )
    if policy == "error" and (height % ph or width % pw):
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {ph}x{pw}"
        )
    return (height // ph, width // pw)


def fit_to_patch(
    x: Tensor, patch_size: PatchSize, policy: str = "pad", *, symbolic: bool = False
) -> tuple[Tensor, tuple[int, int]]:
    """Applies the size policy for inputs whose sides the patch size does not divide.

    Args:
        x: ``(B, C, H, W)`` images.
        patch_size: the patch size, an int or a ``(height, width)`` pair.
        policy: ``pad`` (zero-pad bottom/right), ``crop`` (drop the bottom/right
            remainder, as a strided convolution does), ``resize`` (to the nearest multiple,
            antialiased bilinear) or ``error``.
        symbolic: apply the policy with shape arithmetic only, never branching on
            ``H % patch`` (what an exporter needs to keep ``H`` and ``W`` symbolic). The
            result is the same; eager callers keep the default, which skips the no-op
            pad/crop/resize of divisible inputs. ``error`` then leaves ``x`` as it is
            (the exporter constrains the sizes instead).

    Returns:
        The adjusted images and the ``(H, W)`` of the original content inside them.
    """
    if policy not in SIZE_POLICIES:
        raise ValueError(f"unknown size policy {policy!r}; expected one of {SIZE_POLICIES}")
    ph, pw = to_patch(patch_size)
    height, width = x.shape[-2:]
    # floor-division arithmetic rather than `%`: the same values, and graph readers without
    # a rule for a symbolic modulo (OpenVINO's torch.export frontend) can follow it
    rem_h = height - (height // ph) * ph
    rem_w = width - (width // pw) * pw
    if symbolic and policy == "error":
        return x, (height, width)
    if not symbolic and not rem_h and not rem_w:
        return x, (height, width)
    if policy == "error":
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {ph}x{pw}; "
            f"resize to a multiple of it or choose size_policy 'pad', 'crop' or 'resize'"
        )
    if policy == "pad":
        # up to the next multiple; non-negative operands only (ONNX integer Div truncates)
        pad_h = (height + ph - 1) // ph * ph - height
        pad_w = (width + pw - 1) // pw * pw - width
        x = F.pad(x, (0, pad_w, 0, pad_h))
        return x, (height, width)
    if policy == "crop":
        new_h, new_w = height - rem_h, width - rem_w
        return x[..., :new_h, :new_w], (new_h, new_w)
    rows, cols = token_grid((height, width), (ph, pw), "resize")
    new_h, new_w = rows * ph, cols * pw
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    return x, (new_h, new_w)


def padded_token_mask(
    grid: tuple[int, int], valid_hw: tuple[int, int], patch_size: PatchSize
) -> Tensor | None:
    """Boolean ``(rows * cols,)`` mask, True for tokens holding at least one content pixel.

    Returns ``None`` when every token holds content (the common case: padding to the next
    multiple of the patch never fills a whole token).
    """
    rows, cols = grid
    ph, pw = to_patch(patch_size)
    valid_rows = -(-valid_hw[0] // ph)
    valid_cols = -(-valid_hw[1] // pw)
    if valid_rows >= rows and valid_cols >= cols:
        return None
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[:valid_rows, :valid_cols] = True
    return mask.reshape(-1)


class PatchEmbed(nn.Module):
    """Splits images into patches and projects them, at any (square or rectangular) patch size.

    The stored ``proj.weight`` is the base kernel; other patch sizes use a PI-resized
    kernel, cached per size and resize mode (eval mode) and recomputed from the base
    whenever the base changes, however it was written (see :mod:`vitres.layers.cache`).
    The resize mode is an argument of each call, not state of this module: a model passes
    its config's ``kernel_resize_mode``, which stays the one place it is set.
    """

    def __init__(
        self, patch_size: PatchSize, in_chans: int, embed_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = canonical_patch(patch_size)
        self.in_chans = in_chans
        self.proj = nn.Conv2d(
            in_chans, embed_dim, to_patch(patch_size), stride=to_patch(patch_size), bias=bias
        )
        self._kernels = VersionedCache()

    @property
    def kernel_resize_mode(self) -> str:
        raise AttributeError(
            "PatchEmbed takes the kernel resize mode per call; read or set "
            "model.config.kernel_resize_mode instead"
        )

    @kernel_resize_mode.setter
    def kernel_resize_mode(self, value: str) -> None:
        raise AttributeError(
            "PatchEmbed takes the kernel resize mode per call; set "
            "model.config.kernel_resize_mode instead"
        )

    def kernel(
        self, patch_size: PatchSize, mode: str = "bicubic", antialias: bool = True
    ) -> Tensor:
        """The kernel for ``patch_size`` (the stored one at the base size)."""
        new = to_patch(patch_size)
        if new == to_patch(self.patch_size):
            return self.proj.weight
        return self._kernels.get(
            ("kernel", new, mode, bool(antialias)),
            [self.proj.weight],
            lambda: resample_patch_embed(self.proj.weight, new, mode, antialias),
            enabled=not self.training,
        )

    def forward(
        self,
        x: Tensor,
        patch_size: PatchSize | None = None,
        mode: str = "bicubic",
        antialias: bool = True,
    ) -> tuple[Tensor, tuple[int, int]]:
        """Embeds ``x`` (B, C, H, W) with sides divisible by the patch size.

        Returns:
            Tokens ``(B, rows * cols, D)`` and the grid ``(rows, cols)``.
        """
        patch = to_patch(patch_size if patch_size is not None else self.patch_size)
        weight = self.kernel(patch, mode, antialias)
        x = F.conv2d(x, weight, self.proj.bias, stride=patch)  # (B, D, rows, cols)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid

"""Patch embedding at any patch size, and the policy for sizes the patch does not divide.

Patch size at run time follows FlexiViT (Beyer et al., CVPR 2023): a patch of the new
size ``x'`` relates to the stored size by a linear resize ``x' = B x``. Choosing the new
kernel ``w' = pinv(B^T) w`` keeps ``<x, w> = <B x, w'>`` exactly when enlarging (B has
full column rank), and is the least-squares best when shrinking. The kernel is always
computed from the stored base kernel, never from a previous resize.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import VersionedCache

SIZE_POLICIES = ("pad", "crop", "resize", "error")
KERNEL_RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")


@functools.lru_cache(maxsize=64)
def _resize_matrix(old: int, new: int, mode: str, antialias: bool) -> Tensor:
    """``B^T`` as a ``(old*old, new*new)`` float64 matrix: row i is the resize of basis patch i."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    resized = F.interpolate(basis, size=(new, new), mode=mode, **kwargs)
    return resized.reshape(old * old, new * new)


@functools.lru_cache(maxsize=64)
def _pinv_resize_matrix(old: int, new: int, mode: str, antialias: bool) -> Tensor:
    """``pinv(B^T)``: ``(new*new, old*old)`` float64."""
    return torch.linalg.pinv(_resize_matrix(old, new, mode, antialias))


def resample_patch_embed(
    weight: Tensor,
    new_size: int | tuple[int, int],
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """PI-resizes patch-embedding kernels ``(D, C, p, p)`` to ``(D, C, new, new)``.

    Args:
        weight: the stored (base) kernel.
        new_size: the new patch side (square patches).
        mode: the resize operator ``B`` the pseudo-inverse is taken of.
        antialias: whether ``B`` low-passes when shrinking (bilinear/bicubic).

    Returns:
        The kernel ``w'`` with ``<x, w> = <resize(x), w'>`` for every patch ``x`` when
        ``new >= p``; computed in float64 and returned in ``weight``'s dtype.
    """
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a (D, C, p, p) kernel, got shape {tuple(weight.shape)}")
    if mode not in KERNEL_RESIZE_MODES:
        raise ValueError(
            f"unknown kernel resize mode {mode!r}; expected one of {KERNEL_RESIZE_MODES}"
        )
    if isinstance(new_size, tuple):
        if new_size[0] != new_size[1]:
            raise ValueError(f"only square patches are supported, got {new_size}")
        new_size = new_size[0]
    new_size = int(new_size)
    if new_size <= 0:
        raise ValueError(f"patch size must be positive, got {new_size}")
    old = weight.shape[-1]
    if new_size == old:
        return weight
    pinv = _pinv_resize_matrix(old, new_size, mode, antialias).to(weight.device)
    flat = weight.reshape(-1, old * old).to(torch.float64)  # (D*C, p*p)
    resized = flat @ pinv.T  # (D*C, new*new)
    return resized.reshape(*weight.shape[:2], new_size, new_size).to(weight.dtype)


def token_grid(
    image_size: tuple[int, int], patch_size: int, policy: str = "pad"
) -> tuple[int, int]:
    """The ``(rows, cols)`` token grid an ``(H, W)`` input gets under a size policy."""
    # sizes stay symbolic under export (int() would bake in the example's size)
    height, width = (v if isinstance(v, torch.SymInt) else int(v) for v in image_size[:2])
    if policy == "pad":
        return (-(-height // patch_size), -(-width // patch_size))
    if policy == "resize":  # nearest multiple, halves rounded up
        return (
            torch.sym_max(1, (2 * height + patch_size) // (2 * patch_size)),
            torch.sym_max(1, (2 * width + patch_size) // (2 * patch_size)),
        )
    if policy == "error" and (height % patch_size or width % patch_size):
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}"
        )
    return (height // patch_size, width // patch_size)


def fit_to_patch(
    x: Tensor, patch_size: int, policy: str = "pad", *, symbolic: bool = False
) -> tuple[Tensor, tuple[int, int]]:
    """Applies the size policy for inputs whose sides the patch size does not divide.

    Args:
        x: ``(B, C, H, W)`` images.
        patch_size: the patch side.
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
    height, width = x.shape[-2:]
    # floor-division arithmetic rather than `%`: the same values, and graph readers without
    # a rule for a symbolic modulo (OpenVINO's torch.export frontend) can follow it
    rem_h = height - (height // patch_size) * patch_size
    rem_w = width - (width // patch_size) * patch_size
    if symbolic and policy == "error":
        return x, (height, width)
    if not symbolic and not rem_h and not rem_w:
        return x, (height, width)
    if policy == "error":
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"resize to a multiple of {patch_size} or choose size_policy 'pad', 'crop' or 'resize'"
        )
    if policy == "pad":
        # up to the next multiple; non-negative operands only (ONNX integer Div truncates)
        pad_h = (height + patch_size - 1) // patch_size * patch_size - height
        pad_w = (width + patch_size - 1) // patch_size * patch_size - width
        x = F.pad(x, (0, pad_w, 0, pad_h))
        return x, (height, width)
    if policy == "crop":
        new_h, new_w = height - rem_h, width - rem_w
        return x[..., :new_h, :new_w], (new_h, new_w)
    rows, cols = token_grid((height, width), patch_size, "resize")
    new_h, new_w = rows * patch_size, cols * patch_size
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    return x, (new_h, new_w)


def padded_token_mask(
    grid: tuple[int, int], valid_hw: tuple[int, int], patch_size: int
) -> Tensor | None:
    """Boolean ``(rows * cols,)`` mask, True for tokens holding at least one content pixel.

    Returns ``None`` when every token holds content (the common case: padding to the next
    multiple of the patch never fills a whole token).
    """
    rows, cols = grid
    valid_rows = -(-valid_hw[0] // patch_size)
    valid_cols = -(-valid_hw[1] // patch_size)
    if valid_rows >= rows and valid_cols >= cols:
        return None
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[:valid_rows, :valid_cols] = True
    return mask.reshape(-1)


class PatchEmbed(nn.Module):
    """Splits images into patches and projects them, at any patch size.

    The stored ``proj.weight`` is the base kernel; other patch sizes use a PI-resized
    kernel, cached per size (eval mode) and recomputed from the base whenever the base
    changes (training, ``load_state_dict``).
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        bias: bool = True,
        kernel_resize_mode: str = "bicubic",
        kernel_resize_antialias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.kernel_resize_mode = kernel_resize_mode
        self.kernel_resize_antialias = kernel_resize_antialias
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)
        self._kernels = VersionedCache()

    def kernel(self, patch_size: int) -> Tensor:
        """The kernel for ``patch_size`` (the stored one at the base size)."""
        if patch_size == self.patch_size:
            return self.proj.weight
        return self._kernels.get(
            ("kernel", patch_size),
            [self.proj.weight],
            lambda: resample_patch_embed(
                self.proj.weight, patch_size, self.kernel_resize_mode, self.kernel_resize_antialias
            ),
            enabled=not self.training,
        )

    def forward(self, x: Tensor, patch_size: int | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Embeds ``x`` (B, C, H, W) with sides divisible by the patch size.

        Returns:
            Tokens ``(B, rows * cols, D)`` and the grid ``(rows, cols)``.
        """
        patch_size = patch_size or self.patch_size
        x = F.conv2d(x, self.kernel(patch_size), self.proj.bias, stride=patch_size)  # (B, D, r, c)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid

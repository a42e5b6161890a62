"""Input checks shared by the models: bad input fails loudly, never silently wrong."""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(x: Tensor, in_chans: int) -> None:
    """Raises ``ValueError`` unless ``x`` is a finite float ``(B, in_chans, H, W)`` batch."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {x.ndim}-D shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} channel(s), got {x.shape[1]} in shape {tuple(x.shape)}; "
            "convert the images or build the model with a matching in_chans"
        )
    if not torch.is_floating_point(x):
        raise ValueError(
            f"expected floating-point images, got dtype {x.dtype}; convert with x.float() / 255 "
            "and normalise as the model expects"
        )
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or Inf values")


def check_patch_size(patch_size: object, image_size: tuple[int, int] | torch.Size) -> None:
    """Raises ``ValueError`` unless ``patch_size`` is a positive int that fits the image."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    height, width = int(image_size[0]), int(image_size[1])
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"image of {height}x{width} is smaller than one {patch_size}x{patch_size} patch; "
            f"use an input of at least {patch_size}x{patch_size} or a smaller patch size"
        )

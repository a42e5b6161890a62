"""Input checks shared by the models: bad input fails loudly, never silently wrong.

* Images must be a float ``(B, in_chans, H, W)`` tensor. Integer images are an error
  (they need scaling and normalisation, which the model cannot guess); a float dtype
  other than the model's (float64, float16, bfloat16 against float32 weights) is cast to
  the weights' dtype.
* NaN or Inf pixels are an error: one such pixel would turn every logit to NaN through
  attention, silently. The check costs one pass over the input (and a device sync).
* Patch sizes are positive ints or ``(height, width)`` pairs that fit the image;
  ``valid_size`` is a positive ``(h, w)`` no larger than the input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitres.layers.patch_embed import to_patch


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
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()  # no host sync then
    if x.numel() and not capturing and not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or Inf values")


def cast_images(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in the weights' float ``dtype`` (a no-op when it already is, and under autocast,
    which chooses the compute dtype itself)."""
    if x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(dtype)


def check_patch_size(patch_size: object, image_size: tuple[int, int] | torch.Size) -> None:
    """Raises ``ValueError`` unless ``patch_size`` is a positive int (or pair) that fits the image."""
    ph, pw = to_patch(patch_size)
    height, width = int(image_size[0]), int(image_size[1])
    if height < ph or width < pw:
        raise ValueError(
            f"image of {height}x{width} is smaller than one {ph}x{pw} patch; "
            f"use an input of at least {ph}x{pw} or a smaller patch size"
        )


def check_valid_size(
    valid_size: object, image_size: tuple[int, int] | torch.Size
) -> tuple[int, int]:
    """``valid_size`` as ``(h, w)``; raises ``ValueError`` unless it is positive and fits the image."""
    height, width = int(image_size[0]), int(image_size[1])
    values = valid_size if isinstance(valid_size, (tuple, list)) else None
    if (
        values is None
        or len(values) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in values)
    ):
        raise ValueError(f"valid_size must be a pair of ints (h, w), got {valid_size!r}")
    h, w = values
    if h <= 0 or w <= 0:
        raise ValueError(
            f"valid_size must be positive, got {(h, w)}: at least one pixel must hold content"
        )
    if h > height or w > width:
        raise ValueError(
            f"valid_size {(h, w)} is larger than the {height}x{width} input; it gives the "
            "content's size inside the (padded) input"
        )
    return h, w

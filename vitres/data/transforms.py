"""Batched image transforms on tensors: resize, random resized crop, flip, normalise.

Everything works on batches ``(B, C, H, W)`` and takes an explicit
:class:`torch.Generator` where it is random, so that a training run is reproducible.
The random resized crop follows the Inception recipe (Szegedy et al., "Going deeper
with convolutions", CVPR 2015): a crop covering a random fraction of the area with a
random aspect ratio, resized to the target resolution. Down-sizing is antialiased
(a triangle filter widened by the scale factor, as in Pillow) so that a model
evaluated at low resolution does not see aliasing artefacts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LUMA_WEIGHTS",
    "match_channels",
    "normalize",
    "random_hflip",
    "random_resized_crop",
    "resize",
    "sample_crop_box",
    "to_float",
    "to_size",
]

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def to_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalises a size argument to ``(height, width)``.

    Args:
        size: One int for a square, or ``(height, width)``.

    Raises:
        ValueError: If a side is not a positive int or the sequence has not 2 entries.
    """
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(size)
        if len(pair) != 2:
            raise ValueError(f"size must be an int or (height, width); got {size!r}.")
    if not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"size must hold positive ints; got {size!r}.")
    return int(pair[0]), int(pair[1])


def _check_batch(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"{name} expects a batch (B, C, H, W); got shape {tuple(images.shape)}. "
            "Add a batch dimension with images[None]."
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} expects a floating-point batch; got {images.dtype}. "
            "Convert uint8 images with to_float() first."
        )


def resize(
    images: torch.Tensor,
    size: int | Sequence[int],
    mode: str = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """Resizes a float batch to ``size``.

    Args:
        images: Float tensor (B, C, H, W).
        size: Target ``(height, width)``, or one int for a square.
        mode: ``"bilinear"``, ``"bicubic"``, ``"area"``, ``"nearest"`` or ``"nearest-exact"``.
        antialias: Low-pass filter when down-sizing (bilinear and bicubic only; other
            modes ignore it).

    Returns:
        Tensor (B, C, h, w) of the input dtype; the input itself when the size is unchanged.
    """
    _check_batch(images, "resize")
    if mode not in _MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; expected one of {_MODES}.")
    height, width = to_size(size)
    if (height, width) == tuple(images.shape[-2:]):
        return images
    dtype = images.dtype
    x = images if dtype in (torch.float32, torch.float64) else images.float()
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    out = F.interpolate(x, size=(height, width), mode=mode, **kwargs)
    return out.to(dtype)


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Samples an Inception-style crop box inside a ``height`` x ``width`` image.

    The area fraction is uniform in ``scale`` and the aspect ratio (w / h) log-uniform
    in ``ratio``. After ``attempts`` boxes that do not fit, falls back to the largest
    centred crop whose aspect ratio lies in ``ratio``.

    Args:
        height: Image height.
        width: Image width.
        scale: Range of the crop area as a fraction of the image area, in (0, 1].
        ratio: Range of the crop aspect ratio width / height.
        generator: Random source; the global one when ``None``.
        attempts: Number of random boxes tried before the centre-crop fallback.

    Returns:
        ``(top, left, crop_height, crop_width)``.
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1; got {scale}.")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max; got {ratio}.")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * float(u[0]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(u[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Fallback: centred crop, as large as possible with an aspect ratio inside `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, min(height, max(1, round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        h, w = height, min(width, max(1, round(height * ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _crop_resize(
    image: torch.Tensor,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    mode: str,
) -> torch.Tensor:
    """Crops one image (C, H, W) to ``box`` and resizes it to ``size``; uint8 -> [0, 1]."""
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w]
    if crop.dtype == torch.uint8:
        crop = to_float(crop)  # convert only the crop: cheaper for large photos
    return resize(crop[None], size, mode=mode, antialias=True)[0]


def random_resized_crop(
    images: torch.Tensor | Sequence[torch.Tensor],
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Crops a random box from every image and resizes it (antialiased) to ``size``.

    Each image gets its own box (see :func:`sample_crop_box`); the result depends only
    on the generator state, so the same seed gives the same crops.

    Args:
        images: Float batch (B, C, H, W), or a sequence of float images (C, H_i, W_i)
            of varying sizes.
        size: Output ``(height, width)``, or one int for a square.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio width / height.
        generator: Random source; the global one when ``None``.
        mode: Interpolation mode of the resize.

    Returns:
        Float tensor (B, C, height, width).
    """
    if isinstance(images, torch.Tensor):
        _check_batch(images, "random_resized_crop")
    elif not all(isinstance(im, torch.Tensor) and im.is_floating_point() for im in images):
        raise TypeError("random_resized_crop expects float tensors; use to_float() first.")
    target = to_size(size)
    out = []
    for image in images:
        box = sample_crop_box(image.shape[-2], image.shape[-1], scale, ratio, generator)
        out.append(_crop_resize(image, box, target, mode))
    if not out:
        raise ValueError("random_resized_crop got an empty batch.")
    return torch.stack(out)


def random_hflip(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flips each image of a batch left-right with probability ``p``.

    Args:
        images: Tensor (B, C, H, W) of any dtype.
        p: Flip probability, in [0, 1].
        generator: Random source; the global one when ``None``.

    Returns:
        A new tensor of the same shape and dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"random_hflip expects (B, C, H, W); got {tuple(images.shape)}.")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1]; got {p}.")
    flip = torch.rand(images.shape[0], generator=generator) < p  # (B,)
    return torch.where(flip[:, None, None, None].to(images.device), images.flip(-1), images)


def _channel_stats(values: Sequence[float], channels: int, name: str) -> torch.Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32).flatten()
    if stats.numel() not in (1, channels):
        raise ValueError(
            f"{name} has {stats.numel()} values but the images have {channels} channels; "
            "give one value per channel, or one for all."
        )
    return stats


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardises a float batch in [0, 1]: ``(images - mean) / std`` per channel.

    Args:
        images: Float tensor (B, C, H, W).
        mean: One value per channel, or a single value for all channels.
        std: One positive value per channel, or a single value for all channels.

    Returns:
        Float tensor of the same shape.
    """
    _check_batch(images, "normalize")
    channels = images.shape[1]
    m = _channel_stats(mean, channels, "mean").to(images)
    s = _channel_stats(std, channels, "std").to(images)
    if bool((s <= 0).any()):
        raise ValueError(f"std must be positive; got {tuple(std)}.")
    return (images - m[None, :, None, None]) / s[None, :, None, None]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Converts uint8 images to float32 in [0, 1] (divides by 255).

    Args:
        images: uint8 tensor of any shape.

    Returns:
        float32 tensor of the same shape.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images; got {images.dtype}.")
    return images.to(torch.float32).div_(255.0)


def match_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Converts images between greyscale and RGB (channel dimension ``-3``).

    1 -> 3 repeats the grey channel; 3 -> 1 takes the ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B``. uint8 input stays uint8 (rounded).

    Args:
        images: Tensor (..., C, H, W).
        in_chans: Wanted number of channels.

    Returns:
        Tensor (..., in_chans, H, W); the input itself when C already equals ``in_chans``.

    Raises:
        ValueError: For any other channel conversion.
    """
    if images.ndim < 3:
        raise ValueError(f"match_channels expects (..., C, H, W); got {tuple(images.shape)}.")
    channels = images.shape[-3]
    if channels == in_chans:
        return images
    if channels == 1 and in_chans == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if channels == 3 and in_chans == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=images.device)
        x = images if images.is_floating_point() else images.float()
        luma = torch.einsum("...chw,c->...hw", x, weights.to(x.dtype)).unsqueeze(-3)
        if images.is_floating_point():
            return luma.to(images.dtype)
        return luma.round().clamp(0, 255).to(images.dtype)
    raise ValueError(
        f"Cannot convert {channels}-channel images to {in_chans} channels; "
        "supported: 1 -> 3 (repeat grey) and 3 -> 1 (BT.601 luma)."
    )

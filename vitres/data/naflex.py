"""Decoded images as SigLIP-2 NaFlex batches, bit for bit as Hugging Face's PIL processor.

SigLIP 2 (Tschannen et al., 2025) feeds each image at its own aspect ratio: resized to the
largest grid of at most ``max_num_patches`` patches (:func:`~vitres.tokens.naflex_grid`),
cut into flattened patches and padded to that length (:mod:`vitres.tokens.naflex`).
:func:`naflex_from_pil` does what ``Siglip2ImageProcessorPil`` does to 8-bit RGB images,
in the same arithmetic: PIL's bilinear resize, the rescale by 1/255 in float64 then
float32, ``(x - mean) / std`` in float32. Its output equals the processor's exactly, so
``vitres.tokens.forward_naflex(model, **inputs.as_dict())`` sees what the source sees.
(The torchvision processor, ``Siglip2ImageProcessor``, resizes 8-bit tensors with
torchvision and rounds differently; it is not reproduced here.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vitres.tokens.naflex import NaFlexInputs, naflex_grid, to_naflex

__all__ = ["SIGLIP2_MEAN", "SIGLIP2_STD", "naflex_from_pil"]

SIGLIP2_MEAN = (0.5, 0.5, 0.5)
SIGLIP2_STD = (0.5, 0.5, 0.5)


def naflex_from_pil(
    images: Sequence[Image.Image],
    patch_size: int = 16,
    max_num_patches: int = 256,
    mean: Sequence[float] = SIGLIP2_MEAN,
    std: Sequence[float] = SIGLIP2_STD,
) -> NaFlexInputs:
    """8-bit RGB images as a NaFlex batch, as ``Siglip2ImageProcessorPil`` makes it.

    Args:
        images: PIL images in mode ``RGB``.
        patch_size: the model's patch size (the processor's ``patch_size``).
        max_num_patches: patches per image at most, and the row length.
        mean: per-channel normalisation mean (the processor's ``image_mean``).
        std: per-channel normalisation std (the processor's ``image_std``).

    Raises:
        ValueError: an image that is not an RGB PIL image (the message names it), or
            ``mean`` / ``std`` without one value per channel.
    """
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    mean32 = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std32 = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            what = (
                f"a {image.mode} image" if isinstance(image, Image.Image) else type(image).__name__
            )
            raise ValueError(
                f"image {index} is {what}; naflex_from_pil takes RGB PIL images "
                "(image.convert('RGB'))"
            )
        rows, cols = naflex_grid(image.height, image.width, patch_size, max_num_patches)
        resized = image.resize((cols * patch_size, rows * patch_size), Image.BILINEAR)
        array = np.asarray(resized).astype(np.float64) * (1 / 255)  # (H, W, C)
        x = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)  # (C, H, W)
        pixels.append((x - mean32) / std32)
    return to_naflex(pixels, patch_size, max_num_patches, resize=False)

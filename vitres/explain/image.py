"""One image file, explained at several resolutions: what ``vitres explain`` draws.

The image is decoded with Pillow, converted to the model's channels (greyscale by
ITU-R BT.601 luma, or grey repeated to RGB), resized to each resolution as the evaluation
does (whole image, antialiased bilinear), and the attention map of each resolution is
computed on that input's own token grid (:func:`vitres.explain.attention_maps`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vitres.data import prepare_batch
from vitres.devices import check_device
from vitres.explain.attention import AttentionMaps, attention_maps
from vitres.limits import DEFAULT_MAX_PIXELS

__all__ = ["AttentionPanel", "explain_image", "load_image"]


def load_image(
    path: str | os.PathLike[str], in_chans: int, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Tensor:
    """Decodes an image file to a uint8 tensor ``(in_chans, H, W)``, upright (EXIF
    orientation applied), with the server's checks: the pixel count is read from the
    header and an image over ``max_pixels`` (a "decompression bomb") is refused before
    anything is decoded.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if it is not an image Pillow can decode, is over ``max_pixels``, or
            ``in_chans`` is not 1 or 3.
    """
    from vitres.data.decode import ImageInputError, ImageTooLargeError, open_image

    path = os.fspath(path)
    if in_chans not in (1, 3):
        raise ValueError(f"images can be converted to 1 or 3 channels; the model wants {in_chans}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return open_image(data, max_pixels=max_pixels).decode(in_chans)
    except ImageTooLargeError as error:
        reason = str(error).split(";")[0]
        raise ValueError(f"{path}: {reason}; resize it first") from None
    except ImageInputError as error:
        reason = str(error).split(";")[0].replace("the body is", "it is")
        raise ValueError(
            f"cannot read {path} as an image ({reason}); expected a file Pillow can decode "
            "(PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM)"
        ) from None


@dataclass(frozen=True)
class AttentionPanel:
    """One resolution of an explained image.

    Attributes:
        display: ``(H, W)`` or ``(H, W, 3)`` float image in [0, 1] at this resolution.
        attention: the maps (batch of one).
        size_policy: the model's size policy (how tokens cover the image).
        predicted: predicted class index.
        probability: its softmax probability.
        class_name: its name when the model knows its classes.
    """

    display: np.ndarray
    attention: AttentionMaps
    size_policy: str
    predicted: int
    probability: float
    class_name: str | None = None


def _class_names(model: nn.Module) -> tuple[str, ...] | None:
    metadata = getattr(model, "metadata", None) or {}
    if str(metadata.get("dataset", "")).lower() in ("fashion-mnist", "fmnist", "fashion_mnist"):
        from vitres.data import FASHION_MNIST_CLASSES

        return FASHION_MNIST_CLASSES
    names = metadata.get("classes")
    return tuple(names) if isinstance(names, list) else None


def explain_image(
    model: nn.Module,
    image: Tensor,
    resolutions: Sequence[int | Sequence[int]],
    method: str = "rollout",
    layers: int | Sequence[int] | None = None,
    head_fusion: str = "mean",
    patch_size: int | None = None,
    device: str | None = None,
) -> list[AttentionPanel]:
    """Attention maps of ``image`` at each resolution.

    Args:
        model: a vitres ViT.
        image: uint8 ``(C, H, W)`` (e.g. from :func:`load_image`).
        resolutions: ints (squares) or ``(height, width)`` pairs.
        method: ``rollout``, ``last`` or ``raw`` (``raw`` draws the last requested layer).
        layers: blocks to use (all when ``None``).
        head_fusion: ``mean``, ``max`` or ``min``.
        patch_size: patch side (the model's own when ``None``).
        device: where the model runs (``cpu``, ``cuda``...; moved there); ``None``: where
            its weights are.
    """
    config = model.config
    if device is not None:
        model.to(check_device(device))
    first = next(model.parameters(), None)
    target = torch.device("cpu") if first is None else first.device
    names = _class_names(model)
    panels = []
    for resolution in resolutions:
        size = resolution if isinstance(resolution, int) else tuple(resolution)
        x = prepare_batch(
            image[None],
            size,
            train=False,
            mean=config.mean,
            std=config.std,
            in_chans=config.in_chans,
        ).to(target)
        shown = prepare_batch(
            image[None], size, train=False, mean=(0.0,), std=(1.0,), in_chans=config.in_chans
        )[0]
        maps = attention_maps(model, x, layers, method, head_fusion, patch_size)
        probabilities = maps.logits[0].float().softmax(dim=-1)
        predicted = int(probabilities.argmax())
        display = shown.clamp(0, 1).permute(1, 2, 0).numpy()
        panels.append(
            AttentionPanel(
                display=display[..., 0] if display.shape[-1] == 1 else display,
                attention=maps,
                size_policy=config.size_policy,
                predicted=predicted,
                probability=float(probabilities[predicted]),
                class_name=names[predicted] if names and predicted < len(names) else None,
            )
        )
    return panels

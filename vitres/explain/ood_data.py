"""Out-of-distribution image sets, and a plain statement of how they were converted.

``digits`` is scikit-learn's bundled copy of the UCI handwritten digits (Alpaydin and
Kaynak, 1998): 1,797 real 8 x 8 greyscale images, ink values 0..16, shipped inside the
scikit-learn package (nothing is downloaded). They are scaled to 0..255 with the ink
bright on a dark background (the polarity of Fashion-MNIST) and then, like any other
dataset, resized to each resolution by the loader and converted to the model's channels.
Any image folder works too (``root/<any name>/<image files>``; the sub-folder names are
not used as labels for OOD data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitres.data import ArrayDataset, Dataset, get_dataset

__all__ = ["DIGITS_NAMES", "OODData", "load_digits_dataset", "open_ood_data"]

DIGITS_NAMES = ("digits", "sklearn-digits")


def load_digits_dataset() -> ArrayDataset:
    """scikit-learn's 8 x 8 digits as a uint8 :class:`ArrayDataset` ``(1797, 1, 8, 8)``.

    Pixel values ``v`` in 0..16 become ``round(v * 255 / 16)``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the 'digits' OOD set ships with scikit-learn: pip install 'vitres[explain]'"
        ) from None

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ArrayDataset(
        images=torch.from_numpy(images[:, None]),
        labels=torch.from_numpy(digits.target.astype(np.int64)),
        classes=tuple(str(d) for d in range(10)),
        name="sklearn-digits",
    )


@dataclass(frozen=True)
class OODData:
    """An OOD image set and how it reaches the model.

    Attributes:
        dataset: the images (labels unused).
        name: a short name for reports.
        conversion: one sentence on how the images are converted for the model.
    """

    dataset: Dataset
    name: str
    conversion: str


def _channel_sentence(source_channels: str, in_chans: int) -> str:
    if in_chans == 1:
        if source_channels == "grey":
            return "kept as 1 grey channel"
        return "converted to 1 grey channel by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B)"
    if source_channels == "grey":
        return f"grey repeated to {in_chans} channels"
    return f"decoded as {in_chans}-channel RGB"


def _folder_modes(samples: list[tuple[str, int]], limit: int = 20) -> set[str]:
    modes = set()
    for path, _ in samples[:limit]:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
        except Exception:  # unreadable files are reported by the loader
            continue
    return modes


def open_ood_data(name_or_dir: str, in_chans: int, data_dir: str | None = None) -> OODData:
    """Opens ``digits``, ``fashion-mnist`` (its test split) or an image folder as OOD data.

    Args:
        name_or_dir: ``digits`` or a folder ``root/<sub-folder>/<image files>``.
        in_chans: channels the model expects (1 or 3).
        data_dir: folder of the Fashion-MNIST files when ``name_or_dir`` names it.

    Raises:
        ValueError: for an unknown name, or a folder that holds no images in sub-folders.
        FileNotFoundError: for a folder that does not exist.
    """
    resize = "resized to each resolution (antialiased bilinear), normalised with the model's "
    resize += "mean/std"
    if name_or_dir.lower() in DIGITS_NAMES:
        conversion = (
            "sklearn digits: 1,797 8x8 images, ink 0..16 scaled to 0..255 (bright strokes on "
            f"black), {_channel_sentence('grey', in_chans)}, {resize}"
        )
        return OODData(load_digits_dataset(), "digits", conversion)
    try:
        dataset = get_dataset(name_or_dir, "test", data_dir=data_dir, in_chans=in_chans)
    except ValueError as error:
        if os.path.isdir(name_or_dir):
            raise ValueError(
                f"{error} For OOD data the sub-folder names do not matter: put the images in "
                f"{os.path.join(name_or_dir, 'images')}/ for example."
            ) from None
        raise ValueError(f"{error} For OOD data, 'digits' is also accepted.") from None
    samples = getattr(dataset, "samples", None)
    if samples is None:  # a named array dataset
        channels = "grey" if dataset.in_chans == 1 else "rgb"
        source = f"{dataset.name}: {len(dataset)} images"
    else:
        modes = _folder_modes(samples)
        channels = "grey" if modes and modes <= {"1", "L", "I;16", "I", "F"} else "rgb"
        shown = "/".join(sorted(modes)) or "unknown"
        source = f"folder {dataset.name}: {len(dataset)} image files (Pillow modes {shown})"
    return OODData(
        dataset, str(dataset.name), f"{source}, {_channel_sentence(channels, in_chans)}, {resize}"
    )

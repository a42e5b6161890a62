"""In-memory image classification dataset.

An :class:`ArrayDataset` holds every image of a split in one uint8 tensor at its
native resolution; the resolution a model sees is chosen later, by the loader
(:mod:`vitres.data.loader`), never by the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ArrayDataset"]


@dataclass(frozen=True)
class ArrayDataset:
    """A labelled image set held in memory.

    The tensors may be shared with an in-process cache (see
    :func:`vitres.data.load_fashion_mnist`): treat them as read-only.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,), class indices into ``classes``.
        classes: Class names; ``classes[k]`` is the name of label ``k``.
        name: Human-readable name, e.g. ``"fashion-mnist/train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = "array"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W); got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(
                f"{self.name}: labels must be an int64 tensor (N,); got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}."
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels; "
                "expected one label per image."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Number of channels of the stored images."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Returns ``(image, label)``, the image a uint8 tensor (C, H, W)."""
        return self.images[index], int(self.labels[index])

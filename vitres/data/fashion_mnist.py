"""Fashion-MNIST loader (Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017).

60,000 training and 10,000 test greyscale images of 28x28 pixels in 10 classes, read
from the four IDX ``.gz`` files that the Debian package ``dataset-fashion-mnist``
installs in :data:`DEFAULT_FMNIST_DIR`.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from vitres.data.dataset import ArrayDataset
from vitres.data.idx import read_idx

__all__ = [
    "DEFAULT_FMNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "load_fashion_mnist",
]

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: split -> (images file, labels file)
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _missing_message(data_dir: str, missing: list[str]) -> str:
    return (
        f"Fashion-MNIST files not found in {data_dir}: missing {', '.join(missing)}.\n"
        "Install the dataset with:\n"
        "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
        "or pass --data-dir DIR pointing at a folder that holds the four IDX .gz files "
        f"({', '.join(f for pair in FASHION_MNIST_FILES.values() for f in pair)})."
    )


@functools.lru_cache(maxsize=4)
def _load_split(split: str, data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes one split once per process; returns (images uint8 (N,1,28,28), labels int64)."""
    image_file, label_file = (os.path.join(data_dir, f) for f in FASHION_MNIST_FILES[split])
    missing = [os.path.basename(f) for f in (image_file, label_file) if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(_missing_message(data_dir, missing))
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{image_file}: expected uint8 images of shape (N, 28, 28); got {images.dtype} "
            f"of shape {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{label_file}: expected uint8 labels of shape (N,); got {labels.dtype} "
            f"of shape {labels.shape}."
        )
    if len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split}: {len(images)} images in {image_file} but {len(labels)} "
            f"labels in {label_file}; expected the same count. One of the files is damaged."
        )
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_file}: label {int(labels.max())} out of range; expected 0..9.")
    images_t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    return images_t, labels_t


def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArrayDataset:
    """Loads a Fashion-MNIST split.

    Decoded arrays are cached per process, so repeated calls are cheap; the returned
    tensors are shared with the cache and must not be modified in place.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: Folder holding the four IDX ``.gz`` files; defaults to
            :data:`DEFAULT_FMNIST_DIR`.

    Returns:
        An :class:`ArrayDataset` with ``images`` uint8 (N, 1, 28, 28) and ``labels``
        int64 (N,) in 0..9.

    Raises:
        ValueError: If ``split`` is unknown or a file is damaged.
        FileNotFoundError: If the files are missing; the message says how to install them.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(
            f"Unknown Fashion-MNIST split {split!r}; expected one of {sorted(FASHION_MNIST_FILES)}."
        )
    directory = os.path.abspath(os.path.expanduser(data_dir or DEFAULT_FMNIST_DIR))
    images, labels = _load_split(split, directory)
    return ArrayDataset(
        images=images, labels=labels, classes=FASHION_MNIST_CLASSES, name=f"fashion-mnist/{split}"
    )

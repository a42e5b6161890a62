"""Batching and model-ready preprocessing, with resolution as a parameter of the loader.

Datasets hold images at their native size (:mod:`vitres.data.dataset`,
:mod:`vitres.data.folder`); this module picks the examples of each batch (with a
shuffle order that is a pure function of ``(seed, epoch)``, so a resumed run sees
the same order) and turns them into float tensors at whatever resolution the
caller asks for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from vitres.data.dataset import ArrayDataset
from vitres.data.fashion_mnist import load_fashion_mnist
from vitres.data.folder import ImageFolderDataset
from vitres.data.transforms import (
    match_channels,
    normalize,
    random_hflip,
    resize,
    sample_crop_box,
    to_float,
    to_size,
)

__all__ = [
    "FASHION_MNIST_ALIASES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dataset",
    "epoch_order",
    "eval_batches",
    "get_dataset",
    "iterate_batches",
    "native_batches",
    "prepare_batch",
    "take_batch",
]

#: Per-channel mean / std of the Fashion-MNIST train set in [0, 1] (measured: 0.28604, 0.35302).
FMNIST_MEAN: tuple[float, ...] = (0.2860,)
FMNIST_STD: tuple[float, ...] = (0.3530,)
#: The usual ImageNet statistics, for RGB image folders and ImageNet-pretrained weights.
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

FASHION_MNIST_ALIASES: tuple[str, ...] = ("fashion-mnist", "fmnist", "fashion_mnist")

_SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "test": ("test", "val"),
    "val": ("val", "test"),
}


class Dataset(Protocol):
    """What the loader needs: a length and items ``(image, label)`` or ``None`` (bad file)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None: ...


def get_dataset(
    name_or_path: str,
    split: str,
    data_dir: str | None = None,
    in_chans: int = 1,
) -> ArrayDataset | ImageFolderDataset:
    """Opens a dataset by name or folder path.

    Args:
        name_or_path: ``"fashion-mnist"`` (or ``"fmnist"``, ``"fashion_mnist"``), or the
            path of an image folder ``root/<class_name>/<image files>``. A folder that
            holds ``train/`` and ``test/`` (or ``val/``) sub-folders is split: the one
            matching ``split`` is used; any other folder serves every split.
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted for folders).
        data_dir: Folder of the Fashion-MNIST files (ignored for image folders).
        in_chans: Channels of images decoded from a folder (1 or 3). Fashion-MNIST is
            always returned with 1 channel; :func:`prepare_batch` converts.

    Raises:
        ValueError: If the name is neither a known dataset nor an existing folder,
            or the split is unknown.
    """
    if name_or_path.lower() in FASHION_MNIST_ALIASES:
        return load_fashion_mnist(split, data_dir=data_dir)
    root = os.path.expanduser(name_or_path)
    if not os.path.isdir(root):
        raise ValueError(
            f"Unknown dataset {name_or_path!r}: not a known name and not an existing folder. "
            f"Accepted: {' / '.join(FASHION_MNIST_ALIASES)}, or the path of an image folder "
            "laid out as root/<class_name>/<image files> (optionally with root/train/... and "
            "root/test/... or root/val/...)."
        )
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"Unknown split {split!r}; expected one of {sorted(_SPLIT_FOLDERS)}.")
    has_train = os.path.isdir(os.path.join(root, "train"))
    held_out = [s for s in ("test", "val") if os.path.isdir(os.path.join(root, s))]
    if has_train and held_out:
        for candidate in _SPLIT_FOLDERS[split]:
            if os.path.isdir(os.path.join(root, candidate)):
                return ImageFolderDataset(os.path.join(root, candidate), in_chans=in_chans)
    return ImageFolderDataset(root, in_chans=in_chans)


def epoch_order(
    num_examples: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    limit: int | None = None,
) -> torch.Tensor:
    """Indices of the examples of one epoch, in the order they are visited.

    ``limit`` keeps the first ``limit`` examples of the dataset; with ``shuffle`` their
    order is a permutation that depends only on ``(seed, epoch)``.

    Args:
        num_examples: Dataset length.
        shuffle: Whether to permute the examples.
        seed: Non-negative run seed.
        epoch: Non-negative epoch number.
        limit: Keep only the first ``limit`` examples (all when ``None``).

    Returns:
        int64 tensor of indices.
    """
    count = num_examples if limit is None else min(num_examples, max(0, int(limit)))
    if not shuffle:
        return torch.arange(count)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative; got seed={seed}, epoch={epoch}.")
    # SeedSequence hashes (seed, epoch) into a well-mixed, platform-independent seed.
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator().manual_seed(mixed & ((1 << 63) - 1))
    return torch.randperm(count, generator=generator)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]]:
    """Yields ``(images, labels)`` batches of a dataset, at native resolution.

    Args:
        dataset: An :class:`ArrayDataset` (fast path: the batch is sliced from the
            stored tensor) or any dataset whose items are ``(image, label)`` or ``None``.
        batch_size: Examples per batch (before dropping unreadable files).
        shuffle: Visit the examples in a permutation fixed by ``(seed, epoch)``.
        seed: Run seed.
        epoch: Epoch number; each epoch gets a different permutation.
        drop_last: Drop the last batch if it is smaller than ``batch_size``.
        limit: Use only the first ``limit`` examples of the dataset.

    Yields:
        ``images``: uint8 tensor (B, C, H, W) for an :class:`ArrayDataset`, else a list of
        uint8 tensors (C, H_i, W_i) with unreadable files left out (they are recorded
        by the dataset, e.g. :attr:`ImageFolderDataset.bad_files`); ``labels``: int64 (B,).
        A batch whose files are all unreadable is skipped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    order = epoch_order(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, limit=limit)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        if drop_last and len(indices) < batch_size:
            return
        images, labels = take_batch(dataset, indices)
        if len(labels):
            yield images, labels


def take_batch(
    dataset: Dataset, indices: torch.Tensor
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
    """The examples at ``indices``, at native resolution.

    Args:
        dataset: An :class:`ArrayDataset` (the batch is sliced from the stored tensor) or
            any dataset whose items are ``(image, label)`` or ``None`` (unreadable).
        indices: int64 tensor of example indices.

    Returns:
        ``images``: uint8 tensor (B, C, H, W) for an :class:`ArrayDataset`, else a list of
        uint8 tensors (C, H_i, W_i) without the unreadable files; ``labels``: int64 (B,).
    """
    if isinstance(dataset, ArrayDataset):
        return dataset.images[indices], dataset.labels[indices]
    images, labels = [], []
    for index in indices.tolist():
        item = dataset[index]
        if item is None:
            continue
        images.append(item[0])
        labels.append(int(item[1]))
    return images, torch.tensor(labels, dtype=torch.int64)


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return to_float(image) if image.dtype == torch.uint8 else image.float()


def prepare_batch(
    images: torch.Tensor | Sequence[torch.Tensor],
    resolution: int | Sequence[int],
    *,
    train: bool = False,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    generator: torch.Generator | None = None,
    hflip: bool = True,
    crop_scale: tuple[float, float] = (0.35, 1.0),
) -> torch.Tensor:
    """Turns a batch of native-size images into a normalised float batch for a model.

    Train: a random resized crop per image (area fraction in ``crop_scale``, aspect in
    [3/4, 4/3]), then a random horizontal flip when ``hflip``. Eval: the whole image,
    resized with antialiasing (no crop). Channels are converted to ``in_chans`` and the
    result is normalised with ``mean`` / ``std``.

    Args:
        images: uint8 (or [0, 1] float) tensor (B, C, H, W), or a sequence of images
            (C, H_i, W_i) of varying sizes.
        resolution: Output ``(height, width)``, or one int for a square.
        train: Apply the random training augmentation.
        mean: Normalisation mean, one value per channel of ``in_chans`` or a single one.
        std: Normalisation std, same length rules as ``mean``.
        in_chans: Channels the model expects (1 or 3).
        generator: Random source for the augmentation; the global one when ``None``.
        hflip: Random horizontal flips in training.
        crop_scale: Area-fraction range of the training crop.

    Returns:
        float32 tensor (B, in_chans, height, width).
    """
    size = to_size(resolution)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"prepare_batch expects (B, C, H, W); got {tuple(images.shape)}.")
        batch: torch.Tensor | list[torch.Tensor] = images
    else:
        batch = list(images)
    if len(batch) == 0:
        raise ValueError("prepare_batch got an empty batch.")

    def fewer_channels(x: torch.Tensor) -> torch.Tensor:
        # 3 -> 1 before resampling (cheaper); 1 -> 3 is done once at the end.
        return match_channels(x, in_chans) if x.shape[-3] > in_chans else x

    if train:
        if isinstance(batch, torch.Tensor):
            batch = fewer_channels(_as_float(batch))  # one conversion for an in-memory batch
        out = []
        for image in batch:
            top, left, h, w = sample_crop_box(
                image.shape[-2], image.shape[-1], crop_scale, generator=generator
            )
            # For a list of photos only the crop is converted to float.
            crop = fewer_channels(_as_float(image[:, top : top + h, left : left + w]))
            out.append(resize(crop[None], size)[0])
        x = torch.stack(out)  # (B, C', H, W)
        if hflip:
            x = random_hflip(x, generator=generator)
    elif isinstance(batch, torch.Tensor):
        x = resize(fewer_channels(_as_float(batch)), size)
    else:
        x = torch.stack([resize(fewer_channels(_as_float(im))[None], size)[0] for im in batch])
    return normalize(match_channels(x, in_chans), mean, std)  # (B, in_chans, H, W)


def eval_batches(
    dataset: Dataset,
    resolution: int | Sequence[int],
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields model-ready evaluation batches ``(x, y)`` in dataset order.

    Args:
        dataset: Any dataset accepted by :func:`iterate_batches`.
        resolution: Input ``(height, width)`` of the model, or one int for a square.
        batch_size: Examples per batch.
        mean: Normalisation mean (see :func:`prepare_batch`).
        std: Normalisation std.
        in_chans: Channels the model expects.
        limit: Use only the first ``limit`` examples.

    Yields:
        ``x`` float32 (B, in_chans, height, width) and ``y`` int64 (B,).
    """
    for images, labels in iterate_batches(dataset, batch_size, limit=limit):
        x = prepare_batch(images, resolution, train=False, mean=mean, std=std, in_chans=in_chans)
        yield x, labels


def native_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    limit: int | None = None,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Yields model-ready images at their own sizes, ``(images, y)``, in dataset order.

    What :func:`eval_batches` does without the resize: each image is converted to float,
    to ``in_chans`` channels and normalised, and keeps its height and width (for models
    that run mixed sizes in one pass, :func:`vitres.pack`).

    Yields:
        ``images``: a list of float32 ``(in_chans, H_i, W_i)``; ``y``: int64 (B,).
    """
    for images, labels in iterate_batches(dataset, batch_size, limit=limit):
        converted = [
            normalize(match_channels(_as_float(image)[None], in_chans), mean, std)[0]
            for image in images
        ]
        yield converted, labels

"""Penultimate features and logits of a classifier at one input resolution.

The OOD scores (:mod:`vitres.explain.ood`) and the separability measures
(:mod:`vitres.explain.separability`) work on what the classifier head sees: the pooled,
normalised feature vector ``z`` with ``logits = W z + b``. :func:`extract_features`
captures ``z`` with a forward pre-hook on the model's ``head``, so the logits are exactly
those of ``model(x)`` and any model with a linear ``head`` works (ViT, Mixer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vitres.data import Dataset, eval_batches
from vitres.progress import progress_bar

__all__ = ["FeatureSet", "extract_features", "linear_head"]


@dataclass(frozen=True)
class FeatureSet:
    """What the classifier head saw for a set of images.

    Attributes:
        features: ``(N, D)`` float64, the head's input.
        logits: ``(N, C)`` float64, the model's output.
        labels: ``(N,)`` int64 dataset labels (meaningless for OOD data).
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy of the logits against the labels."""
        return float((self.predictions == self.labels).mean())


def linear_head(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``(W (C, D), b (C,))`` of the model's linear classifier head, as float64."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no linear classifier head (model.head is "
            f"{type(head).__name__}); feature-space scores need logits = W z + b"
        )
    weight = head.weight.detach().double().cpu().numpy()
    bias = (
        head.bias.detach().double().cpu().numpy()
        if head.bias is not None
        else np.zeros(weight.shape[0])
    )
    return weight, bias


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    resolution: int | Sequence[int],
    batch_size: int = 256,
    limit: int | None = None,
    patch_size: int | None = None,
    progress: bool = False,
    description: str | None = None,
) -> FeatureSet:
    """Runs ``model`` on ``dataset`` resized to ``resolution`` and keeps features and logits.

    Images are prepared as for evaluation (:func:`vitres.data.eval_batches`).

    Args:
        model: a classifier with a linear ``head`` (in eval mode, on its weights' device).
        dataset: any dataset accepted by :func:`vitres.data.eval_batches`.
        resolution: ``(height, width)`` or one int for a square.
        batch_size: images per forward pass.
        limit: only the first ``limit`` images.
        patch_size: patch side for every call (the model's own when ``None``).
        progress: show a progress bar.
        description: the progress bar's label.

    Raises:
        ValueError: if the dataset yields no readable image.
    """
    linear_head(model)  # fails early with a clear message
    config = model.config
    kwargs = {} if patch_size is None else {"patch_size": patch_size}
    captured: list[Tensor] = []
    handle = model.head.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().double().cpu())
    )
    features, logits, labels = [], [], []
    total = len(dataset) if limit is None else min(len(dataset), limit)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # where the batches go
    try:
        batches = eval_batches(
            dataset,
            resolution,
            batch_size,
            mean=config.mean,
            std=config.std,
            in_chans=config.in_chans,
            limit=limit,
        )
        bar = progress_bar(
            total=total, desc=description, unit="img", disable=not progress, leave=False
        )
        for x, y in batches:
            captured.clear()
            out = model(x.to(device), **kwargs)
            if len(captured) != 1:
                raise RuntimeError(f"the model called its head {len(captured)} times, expected 1")
            features.append(captured[0])
            logits.append(out.detach().double().cpu())
            labels.append(y)
            bar.update(len(y))
        bar.close()
    finally:
        handle.remove()
        model.train(was_training)
    if not labels:
        bad = getattr(dataset, "bad_files", None)
        detail = ""
        if bad:
            first = next(iter(bad.items()))
            detail = f"; {len(bad)} file(s) failed to decode, e.g. {first[0]} ({first[1]})"
        raise ValueError(
            f"no readable images in {getattr(dataset, 'name', type(dataset).__name__)}"
            f"{detail}; expected image files Pillow can open"
        )
    return FeatureSet(
        features=torch.cat(features).numpy(),
        logits=torch.cat(logits).numpy(),
        labels=torch.cat(labels).numpy().astype(np.int64),
    )

"""Accuracy of a classifier at a list of input resolutions (or at each image's own size).

One model, one dataset, many resolutions: each resolution resizes the whole image
(antialiased, no crop, see :func:`vitres.data.eval_batches`) and the model adapts its
token grid at run time. The position-embedding resampling mode and the size policy of a
saved model are chosen when it is loaded (``resolve_model(ref, pos_embed_mode=...)``), so
the same weights can be scored under each of them. With ``pack`` each image keeps its
own size and images of different sizes run together (:func:`vitres.pack`); ``merge``
turns on token merging. Any model reference works: a bundled
name, a vitres checkpoint, a Hugging Face or timm directory (see :mod:`vitres.models.resolve`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vitres.data import Dataset, data_problems, eval_batches, get_dataset, native_batches
from vitres.layers.patch_embed import canonical_patch
from vitres.layers.sizes import parse_resolutions, size_label
from vitres.tokens.mode import TokenMode
from vitres.tokens.pack import run_plan
from vitres.tokens.quadtree import QuadtreeTokenizer

__all__ = ["accuracy_at", "accuracy_packed", "evaluate", "parse_resolutions"]


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def accuracy_at(
    model: nn.Module,
    dataset: Dataset,
    resolution: int | tuple[int, int],
    batch_size: int = 256,
    limit: int | None = None,
    patch_size: int | None = None,
    precision: str = "fp32",
    progress: Any = None,
    merge: int | float | None = None,
    token_budget: int | None = None,
    quadtree: QuadtreeTokenizer | None = None,
) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` on ``dataset`` resized to ``resolution`` (one int: square).

    The model is put in eval mode for the call and its previous mode restored.

    Args:
        progress: A tqdm bar advanced by the examples of each batch (optional).
        merge: token merging inside the blocks (:mod:`vitres.tokens.merge`), ``None``: off.
        token_budget: Mixed-resolution tokens: at most this many patch tokens per image
            (:func:`vitres.tokens.quadtree_forward`).
        quadtree: The quadtree's settings with a token budget (default ``QuadtreeTokenizer()``).

    Returns:
        ``(accuracy in [0, 1], number of examples scored)``.
    """
    config = model.config
    was_training = model.training
    model.eval()
    correct = total = 0
    mode = TokenMode(merge, token_budget, quadtree)
    try:
        for x, y in eval_batches(
            dataset,
            resolution,
            batch_size,
            mean=config.mean,
            std=config.std,
            in_chans=config.in_chans,
            limit=limit,
        ):
            with _autocast(precision):
                logits = mode.forward(model, x, patch_size)
            correct += int((logits.argmax(dim=-1) == y).sum())
            total += len(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation got no examples (empty dataset or limit=0)")
    return correct / total, total


@torch.no_grad()
def accuracy_packed(
    model: nn.Module,
    dataset: Dataset,
    strategy: str = "auto",
    batch_size: int = 256,
    limit: int | None = None,
    patch_size: int | None = None,
    precision: str = "fp32",
    progress: Any = None,
) -> tuple[float, int, dict[str, int]]:
    """Top-1 accuracy of ``model`` on ``dataset`` with every image at its own size.

    Each batch of ``batch_size`` images runs as one packing plan (:func:`vitres.pack`,
    ``strategy`` ``loop``, ``pad``, ``bucket``, ``pack`` or ``auto``); the predictions
    are those of each image alone at its size.

    Returns:
        ``(accuracy in [0, 1], examples scored, {strategy used: batches})``.
    """
    from vitres.tokens.pack import pack

    config = model.config
    was_training = model.training
    model.eval()
    correct = total = 0
    used: dict[str, int] = {}
    try:
        for images, y in native_batches(
            dataset,
            batch_size,
            mean=config.mean,
            std=config.std,
            in_chans=config.in_chans,
            limit=limit,
        ):
            with _autocast(precision):
                plan = pack(images, model, strategy, patch_size=patch_size)
                logits = run_plan(model, plan)
            used[plan.strategy] = used.get(plan.strategy, 0) + 1
            correct += int((logits.argmax(dim=-1) == y).sum())
            total += len(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation got no examples (empty dataset or limit=0)")
    return correct / total, total, used


def evaluate(
    model: nn.Module | str | Path,
    dataset: Dataset | str,
    resolutions: Sequence[int] | str | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    patch_size: int | None = None,
    pos_embed_mode: str | None = None,
    size_policy: str | None = None,
    data_dir: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    progress: bool = False,
    merge: int | float | None = None,
    pack: str | None = None,
    token_budget: int | None = None,
    quadtree_levels: int | None = None,
) -> dict:
    """Scores a model at several input resolutions, or at each image's own size.

    Args:
        model: a vitres model, or any model reference :func:`vitres.resolve_model`
            accepts: a bundled name, a vitres checkpoint, a Hugging Face directory, a
            timm file or directory, a registry name (random weights).
        dataset: a dataset object, or a name / folder for :func:`vitres.data.get_dataset`
            (its ``"test"`` split is used).
        resolutions: input sizes in the grammar of :func:`vitres.layers.sizes.parse_resolutions`
            (``"16,28,56"``, ``"12:56:4"``, ``"28x40"``, ints or ``(h, w)`` pairs); not
            with ``pack``.
        batch_size: examples per forward pass.
        limit: score only the first ``limit`` examples (all when ``None``).
        patch_size: patch size for every call (the model's own when ``None``).
        pos_embed_mode: override of the learned-table resampling mode (``nearest``,
            ``bilinear``, ``bicubic``, ``area``, ``fourier``); for a model object the
            config is replaced in place for the duration of the call.
        size_policy: override of the size policy (``pad``, ``crop``, ``resize``, ``error``).
        data_dir: folder of the Fashion-MNIST files when ``dataset`` is a name.
        precision: ``"fp32"`` or ``"bf16"`` (CPU autocast).
        threads: torch CPU threads for the call (``None``: leave as set).
        progress: Show a progress bar over every resolution's examples.
        merge: token merging inside the blocks (:mod:`vitres.tokens.merge`): an int ``r``
            or a keep ratio in ``(0, 1]``; ViT only.
        pack: score every image at its own size, images of different sizes run together
            by this packing strategy (``loop``, ``pad``, ``bucket``, ``pack``, ``auto``;
            :func:`vitres.pack`) instead of resizing to ``resolutions``. The accuracy is
            reported under the key ``"native"``.
        token_budget: Mixed-resolution tokens at every resolution: at most this many
            patch tokens per image, in a quadtree of fine and coarse patches
            (:mod:`vitres.tokens.quadtree`); ``None``: one patch size.
        quadtree_levels: Levels of that quadtree (``None``: ``QuadtreeTokenizer()``'s).

    Returns:
        A JSON-ready dict::

            {
              "model": str,             # checkpoint path / bundled name, or "<in-memory>"
              "data": str,              # dataset name, e.g. "fashion-mnist/test"
              "n": int,                 # examples scored at each resolution
              "patch_size": int,        # patch size used ((h, w) when rectangular)
              "accuracy": {"16": 0.81, "28x40": 0.90, ...},  # top-1 in [0, 1]; keys "H" or "HxW"
              "pos_embed_mode": str | None,  # None for models without a learned table
              "size_policy": str,
              "precision": str,
              "merge": int | float | None,  # the token-merging setting
              "pack": str | None,       # the packing strategy asked for (with pack)
              "pack_used": {str: int},  # strategy -> batches run with it (with pack)
              "token_budget": int | None,  # mixed-resolution tokens per image, at most
              "warnings": [str],        # unreadable files, class-count mismatch
            }
    """
    if pack is None and resolutions is None:
        raise ValueError("give the resolutions to score at, or pack=STRATEGY for native sizes")
    if pack is not None and resolutions is not None:
        raise ValueError(
            "pack scores every image at its own size; it does not take resolutions (drop one)"
        )
    mode = TokenMode.of(merge, token_budget, quadtree_levels, pack)  # checks the settings
    name = str(model) if not isinstance(model, nn.Module) else "<in-memory>"
    overrides = {}
    if pos_embed_mode is not None:
        overrides["pos_embed_mode"] = pos_embed_mode
    if size_policy is not None:
        overrides["size_policy"] = size_policy
    if not isinstance(model, nn.Module):
        from vitres.models.resolve import resolve_model

        net = resolve_model(model, **overrides)
        previous = None
        if not hasattr(net, "config"):
            raise ValueError(
                f"{model!r} resolved to a {type(net).__name__} without a vitres config"
            )
    else:
        net = model
        previous = net.config
        if overrides:
            known = {f.name for f in dataclasses.fields(previous)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(
                    f"{type(net).__name__} has no config field(s) {unknown}; "
                    f"settable: {sorted(known)}"
                )
            net.config = dataclasses.replace(previous, **overrides)
    if isinstance(dataset, str):
        data = get_dataset(dataset, "test", data_dir=data_dir, in_chans=net.config.in_chans)
    else:
        data = dataset
    sizes = parse_resolutions(resolutions) if pack is None else []
    mode.check_model(net)
    quadtree = mode.quadtree
    threads_before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        used = net.config  # the config in effect, overrides included
        accuracy: dict[str, float] = {}
        n = 0
        pack_used: dict[str, int] = {}
        per_size = len(data) if limit is None else min(limit, len(data))
        with tqdm(
            total=per_size * max(len(sizes), 1), disable=not progress, unit="img", desc="eval"
        ) as bar:
            for res in sizes:
                bar.set_postfix_str(f"{size_label(res)} px")
                acc, n = accuracy_at(
                    net,
                    data,
                    res,
                    batch_size,
                    limit,
                    patch_size,
                    precision,
                    progress=bar,
                    merge=merge,
                    token_budget=token_budget,
                    quadtree=quadtree,
                )
                accuracy[size_label(res)] = acc
            if pack is not None:
                bar.set_postfix_str(f"native sizes, {pack}")
                acc, n, pack_used = accuracy_packed(
                    net, data, pack, batch_size, limit, patch_size, precision, progress=bar
                )
                accuracy["native"] = acc
    finally:
        torch.set_num_threads(threads_before)
        if previous is not None:
            net.config = previous
    learned = getattr(used, "pos_embed", None) == "learned"
    return {
        "model": name,
        "data": getattr(data, "name", type(data).__name__),
        "n": n,
        "patch_size": canonical_patch(patch_size or used.patch_size),  # int, or [h, w]
        "accuracy": accuracy,
        "pos_embed_mode": used.pos_embed_mode if learned else None,
        "size_policy": used.size_policy,
        "precision": precision,
        "merge": merge,
        "pack": pack,
        "pack_used": pack_used,
        "token_budget": token_budget,
        "warnings": data_problems(data, getattr(used, "num_classes", None)),
    }

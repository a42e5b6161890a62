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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitres.data import Dataset, data_problems, eval_batches, get_dataset, native_batches
from vitres.devices import check_device
from vitres.layers.patch_embed import PatchSize, canonical_patch
from vitres.layers.sizes import (
    DEFAULT_MAX_TOKENS,
    check_token_count,
    parse_resolutions,
    size_label,
)
from vitres.progress import progress_bar
from vitres.tokens.mode import TokenMode
from vitres.tokens.pack import run_plan
from vitres.tokens.quadtree import QuadtreeTokenizer

__all__ = [
    "EvaluationResult",
    "ResolutionAccuracy",
    "accuracy_at",
    "accuracy_packed",
    "evaluate",
    "parse_resolutions",
]


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


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
    device = _device_of(model)
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
            with _autocast(precision, device):
                logits = mode.forward(model, x.to(device), patch_size)
            correct += int((logits.argmax(dim=-1).cpu() == y).sum())
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
    device = _device_of(model)
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
            images = [image.to(device) for image in images]
            with _autocast(precision, device):
                plan = pack(images, model, strategy, patch_size=patch_size)
                logits = run_plan(model, plan)
            used[plan.strategy] = used.get(plan.strategy, 0) + 1
            correct += int((logits.argmax(dim=-1).cpu() == y).sum())
            total += len(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation got no examples (empty dataset or limit=0)")
    return correct / total, total, used


@dataclass(frozen=True)
class ResolutionAccuracy:
    """Top-1 accuracy at one input size.

    Attributes:
        label: the size as the JSON keys write it: ``"16"``, ``"28x40"``, or ``"native"``
            (every image at its own size, with ``pack``).
        accuracy: top-1 accuracy in [0, 1].
        n: examples scored at this size.
    """

    label: str
    accuracy: float
    n: int


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` measured, and under which settings.

    Attributes:
        model: checkpoint path / bundled name, or ``"<in-memory>"``.
        data: dataset name, e.g. ``"fashion-mnist/test"``.
        patch_size: patch size used (an int, or ``(h, w)`` when rectangular).
        rows: one :class:`ResolutionAccuracy` per size, in the order asked for.
        pos_embed_mode: the learned table's resampling mode (``None`` for models
            without a learned table).
        size_policy: the size policy in effect.
        precision: ``"fp32"`` or ``"bf16"``.
        token_mode: how the model tokenised (merge, token budget, packing).
        pack_used: packing strategy -> batches run with it (with ``pack``).
        warnings: unreadable files, class-count mismatch.
    """

    model: str
    data: str
    patch_size: PatchSize
    rows: tuple[ResolutionAccuracy, ...]
    pos_embed_mode: str | None
    size_policy: str
    precision: str
    token_mode: TokenMode = field(default_factory=TokenMode)
    pack_used: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        """Examples scored at each size (those of the last size; all sizes score the same)."""
        return self.rows[-1].n if self.rows else 0

    @property
    def accuracy(self) -> dict[str, float]:
        """``{label: accuracy}`` in the order of :attr:`rows`."""
        return {row.label: row.accuracy for row in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict ``vitres eval --json`` prints::

        {"model": str, "data": str, "n": int, "patch_size": int | [h, w],
         "accuracy": {"16": 0.81, "28x40": 0.90, ...}, "pos_embed_mode": str | None,
         "size_policy": str, "precision": str, "merge": int | float | None,
         "pack": str | None, "pack_used": {str: int}, "token_budget": int | None,
         "warnings": [str]}
        """
        return {
            "model": self.model,
            "data": self.data,
            "n": self.n,
            "patch_size": self.patch_size,
            "accuracy": self.accuracy,
            "pos_embed_mode": self.pos_embed_mode,
            "size_policy": self.size_policy,
            "precision": self.precision,
            "merge": self.token_mode.merge,
            "pack": self.token_mode.pack,
            "pack_used": dict(self.pack_used),
            "token_budget": self.token_mode.token_budget,
            "warnings": list(self.warnings),
        }


def _checked_sizes(
    resolutions: Any, pack: str | None, patch: int, max_tokens: int | None
) -> list[tuple[int, int]]:
    """The sizes to score at (none when packing), within the token limit."""
    sizes = parse_resolutions(resolutions) if pack is None else []
    check_token_count(sizes, patch, max_tokens)
    return sizes


# long: the public entry point; most of it is the documentation of its sixteen arguments
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
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    device: str = "cpu",
) -> EvaluationResult:
    """Scores a model at several input resolutions, or at each image's own size.

    Args:
        model: a vitres model, or any model reference :func:`vitres.resolve_model`
            accepts (bundled name, checkpoint, Hugging Face / timm directory, ...).
        dataset: a dataset object, or a name / folder for :func:`vitres.data.get_dataset`
            (its ``"test"`` split is used).
        resolutions: input sizes in the grammar of :func:`vitres.layers.sizes.parse_resolutions`
            (``"16,28,56"``, ``"12:56:4"``, ``"28x40"``, ints or ``(h, w)`` pairs); not
            with ``pack``.
        batch_size: examples per forward pass.
        limit: score only the first ``limit`` examples (all when ``None``).
        patch_size: patch size for every call (the model's own when ``None``).
        pos_embed_mode: override of the learned-table resampling mode (``nearest``,
            ``bilinear``, ``bicubic``, ``area``, ``fourier``); on a model object, for the
            call only. ``size_policy`` likewise (``pad``, ``crop``, ``resize``, ``error``).
        data_dir: folder of the Fashion-MNIST files when ``dataset`` is a name.
        precision: ``"fp32"`` or ``"bf16"`` (autocast on ``device``).
        threads: torch CPU threads for the call (``None``: leave as set).
        progress: Show a progress bar over every resolution's examples.
        merge: token merging inside the blocks (:mod:`vitres.tokens.merge`): an int ``r``
            or a keep ratio in ``(0, 1]``; ViT only.
        pack: score every image at its own size, images of different sizes run together
            by this packing strategy (``loop``, ``pad``, ``bucket``, ``pack``, ``auto``;
            :func:`vitres.pack`) instead of resizing to ``resolutions``. The accuracy is
            reported under the label ``"native"``.
        token_budget: Mixed-resolution tokens: at most this many patch tokens per image,
            in a quadtree of fine and coarse patches (:mod:`vitres.tokens.quadtree`).
        quadtree_levels: Levels of that quadtree (``None``: ``QuadtreeTokenizer()``'s).
        max_tokens: Refuse resolutions with more patch tokens per image than this
            (:func:`vitres.layers.sizes.check_token_count`; ``None``: no limit).
        device: Where the model runs (``cpu``, ``cuda``, ``cuda:N``); a model object is
            moved there for the call and back after it. ``bf16`` autocasts on it.

    Returns:
        An :class:`EvaluationResult`; ``result.to_dict()`` is the JSON-ready dict.
    """
    target = check_device(device)
    mode = _token_mode(resolutions, merge, token_budget, quadtree_levels, pack)
    overrides = {"pos_embed_mode": pos_embed_mode, "size_policy": size_policy}
    net, previous = _load_model(model, {k: v for k, v in overrides.items() if v is not None})
    data = dataset
    if isinstance(dataset, str):
        data = get_dataset(dataset, "test", data_dir=data_dir, in_chans=net.config.in_chans)
    sizes = _checked_sizes(resolutions, pack, patch_size or net.config.patch_size, max_tokens)
    mode.check_model(net)
    settings = _Settings(batch_size, limit, patch_size, precision)
    home = _device_of(net)
    try:
        with _torch_threads(threads):
            used = net.config  # the config in effect, overrides included
            net.to(target)
            rows, pack_used = _score(net, data, sizes, mode, settings, progress)
    finally:
        net.to(home)
        if previous is not None:
            net.config = previous
    learned = getattr(used, "pos_embed", None) == "learned"
    return EvaluationResult(
        model=str(model) if not isinstance(model, nn.Module) else "<in-memory>",
        data=getattr(data, "name", type(data).__name__),
        patch_size=canonical_patch(patch_size or used.patch_size),
        rows=tuple(rows),
        pos_embed_mode=used.pos_embed_mode if learned else None,
        size_policy=used.size_policy,
        precision=precision,
        token_mode=mode,
        pack_used=pack_used,
        warnings=tuple(data_problems(data, getattr(used, "num_classes", None))),
    )


def _token_mode(
    resolutions: object,
    merge: int | float | None,
    token_budget: int | None,
    quadtree_levels: int | None,
    pack: str | None,
) -> TokenMode:
    """The token mode of a call (:class:`TokenMode` checks the settings); resolutions
    are given unless packing, which scores every image at its own size."""
    if pack is None and resolutions is None:
        raise ValueError("give the resolutions to score at, or pack=STRATEGY for native sizes")
    if pack is not None and resolutions is not None:
        raise ValueError(
            "pack scores every image at its own size; it does not take resolutions (drop one)"
        )
    return TokenMode.of(merge, token_budget, quadtree_levels, pack)


@dataclass(frozen=True)
class _Settings:
    """The per-call settings every size is scored with."""

    batch_size: int
    limit: int | None
    patch_size: int | None
    precision: str


def _load_model(model: nn.Module | str | Path, overrides: dict[str, str]) -> tuple[nn.Module, Any]:
    """The model to score, with ``overrides`` applied, and the config to restore after
    the call (``None`` when the model was loaded here)."""
    if not isinstance(model, nn.Module):
        from vitres.models.resolve import resolve_model

        net = resolve_model(model, **overrides)
        if not hasattr(net, "config"):
            raise ValueError(
                f"{model!r} resolved to a {type(net).__name__} without a vitres config"
            )
        return net, None
    previous = model.config
    if overrides:
        known = {f.name for f in dataclasses.fields(previous)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"{type(model).__name__} has no config field(s) {unknown}; "
                f"settable: {sorted(known)}"
            )
        model.config = dataclasses.replace(previous, **overrides)
    return model, previous


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Torch CPU threads set to ``threads`` (``None``: unchanged) inside, restored after."""
    threads_before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)


def _score(
    net: nn.Module,
    data: Dataset,
    sizes: list[tuple[int, int]],
    mode: TokenMode,
    settings: _Settings,
    progress: bool,
) -> tuple[list[ResolutionAccuracy], dict[str, int]]:
    """One row per size in ``sizes`` (then one ``"native"`` row when packing), and the
    packing strategies used."""
    rows: list[ResolutionAccuracy] = []
    pack_used: dict[str, int] = {}
    batch_size, limit, patch_size, precision = dataclasses.astuple(settings)
    per_size = len(data) if limit is None else min(limit, len(data))
    with progress_bar(
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
                merge=mode.merge,
                token_budget=mode.token_budget,
                quadtree=mode.quadtree,
            )
            rows.append(ResolutionAccuracy(size_label(res), acc, n))
        if mode.pack is not None:
            bar.set_postfix_str(f"native sizes, {mode.pack}")
            acc, n, pack_used = accuracy_packed(
                net, data, mode.pack, batch_size, limit, patch_size, precision, progress=bar
            )
            rows.append(ResolutionAccuracy("native", acc, n))
    return rows, pack_used

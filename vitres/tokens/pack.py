"""Images of different sizes in one forward pass: :func:`pack` and :func:`run_plan`.

Resizing every image to one size changes what the model sees; padding every image to
the largest wastes compute on padding. NaViT (Dehghani et al., "Patch n' Pack", NeurIPS
2023) instead concatenates the token sequences of several images into one sequence and
keeps them apart with a block-diagonal attention mask. :func:`pack` plans a list of
images by one of these strategies (:mod:`vitres.tokens.pack_plan`):

* ``loop``: one image per call;
* ``pad``: all padded to the longest sequence (one bucket);
* ``bucket``: sorted by length, padded to the longest of each batch;
* ``pack``: sequences concatenated into rows of ``max_tokens`` tokens;
* ``auto``: whichever of loop, bucket and pack is fastest for this model and mix of
  sizes here, by a short measurement on a sample of the images (interleaved rounds,
  :func:`round_robin_timer`, or any :data:`CandidateTimer`). The choice is cached per model
  and mix of sizes (:class:`StrategyChooser`).

Every strategy gives each image the prediction it gets alone at its own size
(:mod:`vitres.tokens.packed_forward`): the strategies differ in speed only.

Example:
    >>> plan = vitres.pack([torch.randn(1, 20, 36), torch.randn(1, 44, 28)], model)
    >>> forward_packed(model, plan).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vitres.tokens.pack_plan import LAYOUTS, PackedBatch, plan_batches
from vitres.tokens.packed_forward import forward_batch

#: Times candidates: ``timer(runs, rounds, clock)`` -> name -> seconds of each timed call
#: (``runs``: name -> a call with no argument). ``vitres.measure.timing.interleaved_latency``
#: fits with ``lambda runs, rounds, clock: interleaved_latency({n: lambda _x, f=f: f() for n,
#: f in runs.items()}, None, rounds, 1, clock=clock)``.
CandidateTimer = Callable[
    [dict[str, Callable[[], Any]], int, Callable[[], float]], dict[str, list[float]]
]


def round_robin_timer(
    runs: dict[str, Callable[[], Any]],
    rounds: int,
    clock: Callable[[], float],
    warmup_calls: int = 2,
) -> dict[str, list[float]]:
    """The chooser's default stopwatch: each candidate warmed up, then timed once per
    round, the first candidate rotating from round to round (so a change of load hits
    every candidate alike)."""
    names = list(runs)
    for name in names:
        for _ in range(warmup_calls):
            runs[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            runs[name]()
            samples[name].append(clock() - start)
    return samples


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linearly interpolated."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


__all__ = [
    "AUTO_CANDIDATES",
    "PACK_STRATEGIES",
    "PackPlan",
    "StrategyChoice",
    "StrategyChooser",
    "CandidateTimer",
    "forward_packed",
    "pack",
    "round_robin_timer",
    "run_plan",
]

PACK_STRATEGIES = (*LAYOUTS, "auto")
AUTO_CANDIDATES = ("loop", "bucket", "pack")
DEFAULT_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class StrategyChoice:
    """What ``strategy="auto"`` chose and the evidence.

    Attributes:
        strategy: the chosen strategy.
        median_ms: median time of one pass over the sample, per candidate.
        sample: images the candidates were timed on.
        key: the mix of sizes the choice is cached under (:meth:`StrategyChooser.mix_key`).
        reason: the choice in words.
    """

    strategy: str
    median_ms: dict[str, float]
    sample: int
    key: tuple
    reason: str


@dataclass
class PackPlan:
    """Images and the batches they run in; :func:`run_plan` or
    ``forward_packed(model, plan)`` runs it.

    Attributes:
        strategy: ``loop``, ``pad``, ``bucket`` or ``pack`` (what ``auto`` chose).
        images: the images, ``(in_chans, H, W)`` each.
        lengths: each image's sequence length (prefix tokens included).
        batches: the forward calls.
        patch_size: the patch size of every call (``None``: the model's own).
        choice: the evidence when the strategy was chosen by measurement.
    """

    strategy: str
    images: list[Tensor]
    lengths: list[int]
    batches: list[PackedBatch]
    patch_size: int | tuple[int, int] | None = None
    choice: StrategyChoice | None = field(default=None, repr=False)

    @property
    def padding_fraction(self) -> float:
        """The share of token slots that hold padding, over all batches."""
        slots = sum(b.slots for b in self.batches)
        return 1.0 - sum(self.lengths) / slots if slots else 0.0


def _checked_images(
    images: Sequence[Tensor] | Tensor, model: nn.Module, patch_size: Any
) -> list[Tensor]:
    """The images as a list of ``(C, H, W)`` tensors, each checked as the model checks a
    batch; errors name the image."""
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"pack expects a list of (C, H, W) images or a (B, C, H, W) batch, got a "
                f"tensor of shape {tuple(images.shape)}"
            )
        images = list(images)
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError(
            f"pack expects a list of (C, H, W) image tensors, got {type(images).__name__}"
        )
    images = list(images)
    if not images:
        raise ValueError("nothing to pack: the list of images is empty")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"image {index} is a {type(image).__name__}, not a (C, H, W) tensor")
        if image.ndim != 3:
            hint = " (pass image[0], or list(batch) for a batch)" if image.ndim == 4 else ""
            raise ValueError(
                f"image {index} has shape {tuple(image.shape)}; expected (C, H, W){hint}"
            )
        try:
            model.check_input(image[None], patch_size)
        except ValueError as error:
            raise ValueError(f"image {index}: {error}") from None
    return images


class StrategyChooser:
    """Chooses the fastest packing strategy by timing it here, and remembers the choice.

    The candidates are timed on a sample of the images spread over the list, in
    interleaved rounds (each round runs every candidate once, the first one rotating),
    so a change of load hits all of them. Choices are cached per model (weakly: they go
    with the model) and per :meth:`mix_key`.

    Args:
        candidates: the strategies to choose from.
        sample: images to time the candidates on, at most.
        rounds: interleaved rounds.
        clock: seconds as a float; injectable, so tests use a fake clock.
        timer: how the candidates are timed (:data:`CandidateTimer`; default
            :func:`round_robin_timer`).
    """

    def __init__(
        self,
        candidates: Sequence[str] = AUTO_CANDIDATES,
        sample: int = 64,
        rounds: int = 3,
        clock: Callable[[], float] = time.perf_counter,
        timer: CandidateTimer | None = None,
    ) -> None:
        unknown = [c for c in candidates if c not in LAYOUTS]
        if not candidates or unknown:
            raise ValueError(
                f"candidates must be strategies among {sorted(LAYOUTS)}, got {list(candidates)}"
            )
        if sample < 1 or rounds < 1:
            raise ValueError(f"sample and rounds must be positive, got {sample}, {rounds}")
        self.candidates = tuple(candidates)
        self.sample = sample
        self.rounds = rounds
        self.clock = clock
        self.timer = timer or round_robin_timer
        self._choices: weakref.WeakKeyDictionary[nn.Module, dict[tuple, StrategyChoice]] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def mix_key(lengths: Sequence[int], options: dict[str, Any], model: nn.Module) -> tuple:
        """What a choice depends on: the number of images and the quartiles of their
        lengths (each to the next power of two), the options, the weights' dtype and the
        thread count."""

        def octave(value: float) -> int:
            return 1 << max(0, math.ceil(math.log2(max(value, 1))))

        ordered = sorted(lengths)
        quartiles = tuple(octave(_percentile(ordered, q)) for q in (25, 50, 75, 100))
        first = next(model.parameters(), None)
        dtype = str(first.dtype) if first is not None else "none"
        settings = tuple(sorted((k, str(v)) for k, v in options.items()))
        return (octave(len(lengths)), quartiles, settings, dtype, torch.get_num_threads())

    def cached(self, model: nn.Module, key: tuple) -> StrategyChoice | None:
        """The remembered choice for ``model`` and ``key``, if any."""
        return self._choices.get(model, {}).get(key)

    def choose(
        self, model: nn.Module, images: list[Tensor], lengths: list[int], options: dict[str, Any]
    ) -> StrategyChoice:
        """The fastest candidate for these images (from the cache when known)."""
        key = self.mix_key(lengths, options, model)
        known = self.cached(model, key)
        if known is not None:
            return known
        step = max(1, len(images) // self.sample)
        picked = list(range(0, len(images), step))[: self.sample]
        sample_images = [images[i] for i in picked]
        sample_lengths = [lengths[i] for i in picked]
        plans = {
            name: _plan(name, sample_images, sample_lengths, options) for name in self.candidates
        }
        runs = {name: (lambda p=plan: run_plan(model, p)) for name, plan in plans.items()}
        with torch.inference_mode():
            samples = self.timer(runs, self.rounds, self.clock)
        medians = {name: _percentile(sorted(v), 50) * 1000.0 for name, v in samples.items()}
        best = min(medians, key=lambda name: (medians[name], self.candidates.index(name)))
        text = ", ".join(f"{name} {ms:.3g} ms" for name, ms in medians.items())
        choice = StrategyChoice(
            best, medians, len(picked), key, f"timed on {len(picked)} images: {text}; chose {best}"
        )
        self._choices.setdefault(model, {})[key] = choice
        return choice


DEFAULT_CHOOSER = StrategyChooser()


def _plan(
    strategy: str, images: list[Tensor], lengths: list[int], options: dict[str, Any]
) -> PackPlan:
    batches = plan_batches(
        lengths,
        strategy,
        options.get("max_tokens"),
        options.get("batch_tokens", DEFAULT_BATCH_TOKENS),
    )
    return PackPlan(strategy, images, lengths, batches, options.get("patch_size"))


def pack(
    images: Sequence[Tensor] | Tensor,
    model: nn.Module,
    strategy: str = "auto",
    *,
    max_tokens: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    patch_size: int | tuple[int, int] | None = None,
    chooser: StrategyChooser | None = None,
) -> PackPlan:
    """Plans how ``model`` runs images of different sizes and aspect ratios.

    Args:
        images: ``(in_chans, H_i, W_i)`` float images (normalised as the model expects),
            or a ``(B, C, H, W)`` batch.
        model: the model the plan is for (its patch size and size policy fix each image's
            token count). ``bucket``, ``pad`` and ``pack`` need a ViT; ``loop`` runs any
            vitres model.
        strategy: ``loop``, ``pad``, ``bucket``, ``pack`` or ``auto`` (see the module
            docstring).
        max_tokens: the row length of ``pack`` (default: the longest image's sequence).
        batch_tokens: token slots per forward call at most, padding included (bounds the
            memory of one call; one image or row at the least).
        patch_size: the patch size for every image (the model's own when ``None``).
        chooser: what ``auto`` measures with and caches in (default: one shared chooser).

    Returns:
        The :class:`PackPlan`; run it with ``forward_packed(model, plan)`` or
        :func:`run_plan`.

    Raises:
        ValueError: an unknown strategy, a bad image (the message names it), or a model
            that cannot run the strategy.
    """
    if strategy not in PACK_STRATEGIES:
        raise ValueError(
            f"unknown packing strategy {strategy!r}; expected one of {PACK_STRATEGIES}"
        )
    checked = _checked_images(images, model, patch_size)
    if strategy != "loop" and not hasattr(model, "encode"):
        raise ValueError(
            f"strategy {strategy!r} runs several images in one sequence, which needs "
            f"attention; {type(model).__name__} has none (its token mixing is tied to one "
            "grid). Use strategy='loop'"
        )
    lengths = [model.num_tokens(tuple(image.shape[-2:]), patch_size) for image in checked]
    options: dict[str, Any] = {"batch_tokens": batch_tokens, "patch_size": patch_size}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    choice = None
    if strategy == "auto":
        choice = (chooser or DEFAULT_CHOOSER).choose(model, checked, lengths, options)
        strategy = choice.strategy
    plan = _plan(strategy, checked, lengths, options)
    plan.choice = choice
    return plan


def run_plan(model: nn.Module, plan: PackPlan) -> Tensor:
    """Runs every batch of ``plan``; logits ``(len(plan.images), classes)`` in input order."""
    outputs: list[Tensor | None] = [None] * len(plan.images)
    for batch in plan.batches:
        logits = forward_batch(model, plan.images, batch, plan.patch_size)
        for slot, image in enumerate(batch.images):
            outputs[image] = logits[slot]
    return torch.stack(outputs)  # type: ignore[arg-type]


def forward_packed(
    model: nn.Module,
    images: Sequence[Tensor] | PackPlan,
    strategy: str = "auto",
    **pack_options: Any,
) -> Tensor:
    """One prediction per image for images of different sizes, equal to running each
    image alone at its own size (NaViT-style packing).

    Args:
        model: a vitres model (``loop`` runs any; the others need a ViT).
        images: ``(in_chans, H_i, W_i)`` float images, or a plan from :func:`pack`.
        strategy: ``loop``, ``bucket``, ``pad``, ``pack`` or ``auto`` (by measurement);
            ignored for a plan.
        **pack_options: :func:`pack`'s options (``max_tokens``, ``batch_tokens``,
            ``patch_size``...).

    Returns:
        ``(len(images), num_classes)`` logits in the order of ``images``.
    """
    plan = images if isinstance(images, PackPlan) else pack(images, model, strategy, **pack_options)
    return run_plan(model, plan)

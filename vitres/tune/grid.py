"""The sweep grid: configs built from resolutions × patch sizes × batch sizes × backends ×
token-merging settings (× token budgets, for mixed-resolution tokens).

The resolution grammar is :mod:`vitres.layers.sizes`' (re-exported here).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from vitres.backends import backend_class
from vitres.backends.eager import EagerBackend
from vitres.layers.patch_embed import token_grid
from vitres.layers.sizes import parse_int_list, parse_resolutions
from vitres.models.resolve import ModelRef
from vitres.tokens.merge import MergeSpec
from vitres.tokens.mode import TokenMode

__all__ = [
    "anchor_resolutions",
    "build_grid",
    "estimate_tokens",
    "model_ref_name",
    "parse_int_list",
    "parse_resolutions",
]
from vitres.tune.records import Measurement, SweepConfig


def model_ref_name(model_ref: ModelRef) -> str:
    """The name a model reference is recorded under."""
    if isinstance(model_ref, str):
        return model_ref
    if isinstance(model_ref, nn.Module):
        return type(model_ref).__name__
    return f"{model_ref.__module__}:{model_ref.__qualname__}"


def build_grid(
    model: ModelRef,
    resolutions: str | Sequence[Any],
    patch_sizes: Sequence[int | None] = (None,),
    batch_sizes: Sequence[int] = (1,),
    backends: Sequence[str] = ("eager",),
    *,
    threads: int | None = None,
    device: str = "cpu",
    merges: Sequence[MergeSpec | None] = (None,),
    token_budgets: Sequence[int | None] = (None,),
) -> list[SweepConfig]:
    """Every combination as a :class:`SweepConfig`, resolution varying fastest.

    Args:
        model: Model reference (recorded by name).
        resolutions: See :func:`parse_resolutions`.
        patch_sizes: Patch sizes; ``None`` = the model's own.
        batch_sizes: Batch sizes.
        backends: Backend names (each fixes the precision, e.g. ``eager-bf16`` → bf16);
            backends not available here (``Backend.availability``) are skipped with a warning.
        threads: CPU threads; ``None`` = auto: the sweep chooses the count by measurement
            (key ``tauto``).
        device: ``cpu`` or ``cuda``.
        merges: Token-merging settings (:func:`vitres.tokens.merge.parse_merge_list`);
            ``None`` = no merging. Merged configs are made only for backends that run the
            model's own forward (``Backend.token_merging``); the others are skipped for
            them with a warning.
        token_budgets: Mixed-resolution token budgets (:mod:`vitres.tokens.quadtree`);
            ``None`` = uniform patches. A budget runs on the eager backends only (its
            quadtree is chosen per image at run time, which an exported or compiled
            graph cannot do); other backends get the budget-free configs only, with a
            warning.
        A config's merge and token budget are those :class:`~vitres.tokens.TokenMode`
            accepts together: merging and a budget cannot be combined yet, so such pairs
            are skipped with a warning.
    """
    sizes = parse_resolutions(resolutions)
    pairs = _token_pairs(merges, token_budgets)
    name = model_ref_name(model)
    usable = _usable_backends(backends)
    unmergeable = [b for b in usable if not backend_class(b).token_merging]
    if unmergeable and any(merge is not None for merge in merges):
        warnings.warn(
            f"token merging does not run on {unmergeable} (they export the model, and no "
            "exported graph holds the merging); measuring them without merging only",
            stacklevel=2,
        )
    configs = []
    for backend in usable:
        precision = backend_class(backend).precision
        budgeted = any(budget is not None for budget in token_budgets)
        for merge, budget in _backend_pairs(backend, pairs, backend in unmergeable, budgeted):
            for batch in batch_sizes:
                for patch in patch_sizes:
                    for size in sizes:
                        configs.append(
                            SweepConfig(
                                name,
                                size,
                                patch,
                                int(batch),
                                precision,
                                backend,
                                threads,
                                device,
                                merge=merge,
                                token_budget=budget,
                            )
                        )
    if not configs:
        raise ValueError(
            "the grid is empty: token budgets need an eager backend (--backend eager); "
            "add 'none' to --token-budget for the other backends"
        )
    return list(dict.fromkeys(configs))


def _token_pairs(
    merges: Sequence[MergeSpec | None], token_budgets: Sequence[int | None]
) -> list[tuple[MergeSpec | None, int | None]]:
    """The ``(merge, token budget)`` pairs the grid measures, merge varying slowest:
    those :class:`~vitres.tokens.TokenMode` accepts. Pairs it refuses for combining
    (merging with a budget) are dropped with one warning."""
    pairs = []
    refused = False
    for merge in list(dict.fromkeys(merges)) or [None]:
        for budget in list(dict.fromkeys(token_budgets)) or [None]:
            try:
                TokenMode(merge, budget)
            except ValueError:
                TokenMode(merge)  # an invalid setting alone still raises
                TokenMode(token_budget=budget)
                refused = True
                continue
            pairs.append((merge, budget))
    if refused:
        warnings.warn(
            "merge and token_budget cannot be combined yet: the grid measures each merge "
            "setting without a budget and each budget without merging",
            stacklevel=3,
        )
    return pairs


def _usable_backends(backends: Sequence[str]) -> list[str]:
    """The backends available here; the others are skipped with a warning saying why."""
    usable = []
    for backend in backends:
        ok, why = backend_class(backend).availability()
        if ok:
            usable.append(backend)
        else:  # e.g. TensorRT without a GPU: skipped with the reason, not N error records
            warnings.warn(f"skipping backend {backend!r}: {why}", stacklevel=3)
    if backends and not usable:
        raise ValueError(
            f"none of the backends {list(backends)} is available here; see the warnings"
        )
    return usable


def _backend_pairs(
    backend: str,
    pairs: list[tuple[MergeSpec | None, int | None]],
    unmergeable: bool,
    budgeted: bool,
) -> list[tuple[MergeSpec | None, int | None]]:
    """The token pairs ``backend`` runs: no merging on an ``unmergeable`` backend, and
    token budgets on the eager backends only (warned when the grid has budgets)."""
    if budgeted and not issubclass(backend_class(backend), EagerBackend):
        warnings.warn(
            f"token budgets run on the eager backends only (the quadtree is chosen "
            f"per image at run time); backend {backend!r} gets no budgeted configs",
            stacklevel=3,
        )
        pairs = [(merge, budget) for merge, budget in pairs if budget is None]
    if unmergeable:
        pairs = [(merge, budget) for merge, budget in pairs if merge is None]
    return pairs


def anchor_resolutions(
    resolutions: Sequence[tuple[int, int]], count: int = 4
) -> list[tuple[int, int]]:
    """``count`` resolutions spread evenly (by index, after sorting by pixel count),
    always including the smallest and the largest."""
    ordered = sorted(dict.fromkeys(tuple(r) for r in resolutions), key=lambda r: (r[0] * r[1], r))
    if len(ordered) <= count:
        return ordered
    picks = {round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}
    return [ordered[i] for i in sorted(picks)]


def estimate_tokens(config: SweepConfig, measured: Sequence[Measurement]) -> int | None:
    """Patch tokens of an unmeasured config, from the patch size and the rounding policy
    seen in measured records of the same model (default: pad, i.e. round up)."""
    same = [m for m in measured if m.config.model == config.model and m.native_patch_size]
    if not same:
        return None
    patch = config.patch_size or same[0].native_patch_size
    policy = "pad"
    for m in same:
        p = m.patch_size
        if m.grid and p and (m.config.resolution[0] % p or m.config.resolution[1] % p):
            policy = (
                "crop" if tuple(m.grid) == token_grid(m.config.resolution, p, "crop") else "pad"
            )
            break
    rows, cols = token_grid(config.resolution, patch, policy)
    if config.token_budget is not None:  # a quadtree uses at most its budget
        return min(rows * cols, config.token_budget)
    return rows * cols

"""The sweep: a grid of configs, each measured once, its record appended to a file.

Configs are resolutions × patch sizes × batch sizes × backends (a backend fixes the
precision). Each config is measured -- by default in its own ``spawn`` child process,
so its memory peak is its own and a crash or out-of-memory kill becomes an ``error``
record instead of a dead sweep -- and its record is appended to a JSON-lines file as
soon as it finishes. Re-running the same sweep skips every config already recorded with
status ``ok``; Ctrl-C leaves only whole lines. The record format is documented in
:mod:`vitres.records`.

With ``adaptive=True`` only anchor resolutions are measured first (the smallest, the
largest and two in between); the cost model (:mod:`vitres.costmodel`) then predicts the
rest, and only the configs :func:`vitres.recommend.adaptive_candidates` still finds
uncertain for the budget are measured, until none is. The configs left unmeasured are
appended as ``status="predicted"`` records.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitres.backends import backend_class
from vitres.costmodel import fit_latency, fit_memory, group_key, predicted_measurement
from vitres.layers.patch_embed import token_grid
from vitres.measure import (
    IsolatedRunError,
    TimingConfig,
    env_fingerprint,
    measure_config,
    run_isolated,
    set_threads,
)
from vitres.models.checkpoint import checkpoint_digest
from vitres.recommend import Budget, adaptive_candidates
from vitres.records import (
    Measurement,
    SweepConfig,
    append_result,
    read_results,
    repair_results,
)

ModelRef = str | Callable[..., nn.Module] | nn.Module

# --------------------------------------------------------------------------- grid

_RANGE = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")
_PAIR = re.compile(r"^(\d+)[x×*](\d+)$")


def parse_resolutions(spec: str | int | Sequence[Any]) -> list[tuple[int, int]]:
    """Parses resolutions: ``"16,20,28"``, ranges ``"96:448:32"`` (start:stop:step, stop
    included when the step reaches it; step defaults to 1), non-square ``"28x40"``
    (height x width), or a list of ints / ``(h, w)`` pairs. Order kept, duplicates dropped.

    Raises:
        ValueError: a part is not a positive size, pair or range.
    """
    items: list[Any]
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    out: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, int):
            sizes = [(item, item)]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            sizes = [(int(item[0]), int(item[1]))]
        elif isinstance(item, str) and item.isdigit():
            sizes = [(int(item), int(item))]
        elif isinstance(item, str) and _PAIR.match(item):
            height, width = _PAIR.match(item).groups()
            sizes = [(int(height), int(width))]
        elif isinstance(item, str) and _RANGE.match(item):
            start, stop, step = _RANGE.match(item).groups()
            step_value = int(step) if step else 1
            if step_value <= 0 or int(stop) < int(start):
                raise ValueError(f"bad resolution range {item!r}: need start <= stop and step > 0")
            sizes = [(r, r) for r in range(int(start), int(stop) + 1, step_value)]
        else:
            raise ValueError(
                f"cannot read resolution {item!r}; use sizes like 28, ranges like 96:448:32 "
                "(start:stop:step) or height x width like 28x40"
            )
        for size in sizes:
            if min(size) <= 0:
                raise ValueError(f"resolution must be positive, got {size}")
            if size not in out:
                out.append(size)
    if not out:
        raise ValueError(f"no resolutions in {spec!r}")
    return out


def parse_int_list(
    spec: str | int | Sequence[int | None] | None, *, allow_native: bool = False
) -> list[int | None]:
    """Parses ``"1,8,32"`` (and ``"native"`` = ``None`` when ``allow_native``)."""
    if spec is None:
        return [None] if allow_native else []
    if isinstance(spec, int):
        return [spec]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[int | None] = []
    for part in parts:
        text = str(part).strip() if part is not None else "native"
        if allow_native and text.lower() in ("native", "none", ""):
            value = None
        elif text.isdigit() and int(text) > 0:
            value = int(text)
        else:
            raise ValueError(
                f"expected positive integers separated by commas, got {part!r} in {spec!r}"
            )
        if value not in out:
            out.append(value)
    return out


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
) -> list[SweepConfig]:
    """Every combination as a :class:`SweepConfig`, resolution varying fastest.

    Args:
        model: Model reference (recorded by name).
        resolutions: See :func:`parse_resolutions`.
        patch_sizes: Patch sizes; ``None`` = the model's own.
        batch_sizes: Batch sizes.
        backends: Backend names (each fixes the precision, e.g. ``eager-bf16`` → bf16);
            backends not available here (``Backend.availability``) are skipped with a warning.
        threads: CPU threads; ``None`` records the current torch default so keys are stable.
        device: ``cpu`` or ``cuda``.
    """
    sizes = parse_resolutions(resolutions)
    threads = threads if threads is not None else torch.get_num_threads()
    name = model_ref_name(model)
    usable = []
    for backend in backends:
        ok, why = backend_class(backend).availability()
        if ok:
            usable.append(backend)
        else:  # e.g. TensorRT without a GPU: skipped with the reason, not N error records
            warnings.warn(f"skipping backend {backend!r}: {why}", stacklevel=2)
    if backends and not usable:
        raise ValueError(
            f"none of the backends {list(backends)} is available here; see the warnings"
        )
    configs = []
    for backend in usable:
        precision = backend_class(backend).precision
        for batch in batch_sizes:
            for patch in patch_sizes:
                for size in sizes:
                    configs.append(
                        SweepConfig(
                            name, size, patch, int(batch), precision, backend, threads, device
                        )
                    )
    return list(dict.fromkeys(configs))


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
    return rows * cols


# --------------------------------------------------------------------------- models and data


def resolve_model(model_ref: ModelRef, **overrides: Any) -> nn.Module:
    """The model a reference stands for.

    ``nn.Module``: itself. A callable: ``model_ref(**overrides)``. ``"package.module:fn"``:
    that factory, called. Any other string: ``vitres.load_model`` (checkpoint paths and
    reference names such as ``fmnist-vit-multires``), else ``vitres.create_model``
    (registry names such as ``vit_tiny_patch16``).

    Raises:
        ValueError: the reference resolves to nothing (both attempts' errors are shown).
    """
    if isinstance(model_ref, nn.Module):
        return model_ref
    if callable(model_ref):
        return model_ref(**overrides)
    if ":" in model_ref and not os.path.exists(model_ref):
        module_name, _, attribute = model_ref.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(**overrides)
    import vitres

    errors = []
    for function_name in ("load_model", "create_model"):
        function = getattr(vitres, function_name, None)
        if function is None:
            continue
        if function_name == "create_model" and os.path.exists(model_ref):
            break
        try:
            return function(model_ref, **overrides)
        except (ValueError, FileNotFoundError, KeyError) as error:
            errors.append(f"{function_name}: {error}")
    raise ValueError(
        f"cannot resolve model {model_ref!r}: " + "; ".join(errors or ["no loader in vitres"])
    )


_DATASETS: dict[tuple, Any] = {}


def _dataset(data: str, split: str, data_dir: str | None, in_chans: int) -> Any:
    from vitres.data import get_dataset

    key = (data, split, data_dir, in_chans)
    if key not in _DATASETS:
        _DATASETS.clear()  # keep at most one in memory
        _DATASETS[key] = get_dataset(data, split, data_dir=data_dir, in_chans=in_chans)
    return _DATASETS[key]


class DatasetEval:
    """``eval_data(model, config)`` for :func:`vitres.measure.measure_config`: batches of a
    named dataset at the config's resolution, normalised with the model's mean/std."""

    def __init__(
        self,
        data: str,
        *,
        split: str = "test",
        data_dir: str | None = None,
        limit: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self.data, self.split, self.data_dir = data, split, data_dir
        self.limit, self.batch_size = limit, batch_size

    def __call__(self, model: nn.Module, config: SweepConfig) -> Iterator[tuple[Tensor, Tensor]]:
        from vitres.data import eval_batches

        cfg = model.config
        dataset = _dataset(self.data, self.split, self.data_dir, cfg.in_chans)
        batch = max(self.batch_size, config.batch_size)
        yield from eval_batches(
            dataset,
            config.resolution,
            batch,
            mean=cfg.mean,
            std=cfg.std,
            in_chans=cfg.in_chans,
            limit=self.limit,
        )


def measure_one(
    model_ref: ModelRef,
    config: SweepConfig,
    data: DatasetEval | None,
    timing: TimingConfig,
    known_accuracy: tuple[float, int] | None,
    isolated: bool,
    model_overrides: dict[str, Any] | None = None,
) -> Measurement:
    """Measures one config from picklable arguments (the child process entry point)."""
    return measure_config(
        lambda: resolve_model(model_ref, **(model_overrides or {})),
        config,
        eval_data=data,
        data_name=None if data is None else data.data,
        timing=timing,
        known_accuracy=known_accuracy,
        isolated=isolated,
        calibration=None if data is None else (data.data, data.data_dir),
    )


def error_record(config: SweepConfig, message: str) -> Measurement:
    return Measurement(
        config=config,
        status="error",
        error=message,
        env=env_fingerprint(config.threads, config.device),
    )


# --------------------------------------------------------------------------- sweep


def _accuracy_key(c: SweepConfig) -> tuple:
    return (c.model, c.resolution, c.patch_size, c.backend, c.precision, c.device)


def run_sweep(
    model_ref: ModelRef,
    configs: Sequence[SweepConfig] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    data: str | None = None,
    *,
    resolutions: str | Sequence[Any] | None = None,
    patch_sizes: Sequence[int | None] = (None,),
    batch_sizes: Sequence[int] = (1,),
    backends: Sequence[str] = ("eager",),
    threads: int | None = None,
    device: str = "cpu",
    split: str = "test",
    data_dir: str | None = None,
    eval_limit: int | None = None,
    eval_batch_size: int = 64,
    timing: TimingConfig | None = None,
    isolate: bool = True,
    timeout_s: float | None = None,
    adaptive: bool = False,
    budget: Budget | None = None,
    anchors: int = 4,
    per_round: int = 2,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    measure: Callable[..., Measurement] | None = None,
) -> list[Measurement]:
    """Measures every config (or, adaptively, the ones that matter) and records each.

    Args:
        model_ref: Model name or path (``vitres.load_model`` / ``vitres.create_model``),
            ``"module:factory"``, a module-level factory, or (with ``isolate=False``) a model.
        configs: The grid (:func:`build_grid`); or give ``resolutions`` (+ ``patch_sizes``,
            ``batch_sizes``, ``backends``, ``threads``, ``device``) to build it here.
        out_path: JSON-lines results file, appended to and resumed from; ``None`` keeps
            results in memory only. A config is skipped when its key (which names the
            model, resolution, patch, batch, backend, precision, threads and device, but not
            the data or timing) is already recorded ``ok``: use a new file to re-measure
            with other data or timing.
        data: Dataset name or folder for accuracy (:func:`vitres.data.get_dataset`);
            ``None`` measures speed and memory only.
        split: Dataset split.
        data_dir: Folder of dataset files.
        eval_limit: Evaluate on the first ``eval_limit`` examples only.
        eval_batch_size: Batch size for accuracy evaluation (backends built for one batch
            size evaluate in chunks of the config's batch size).
        timing: Warm-up and measurement windows.
        isolate: Measure each config in a fresh child process (CPU memory peaks are then
            per config, and crashes are contained). Without it a hard crash (e.g. the
            out-of-memory killer) ends the sweep; exceptions are still recorded.
        timeout_s: Per-config time limit (isolated runs only).
        adaptive: Measure anchors, then only uncertain configs (see the module docstring).
        budget: Budget the adaptive mode refines the recommendation for.
        anchors: Anchor resolutions per group in adaptive mode.
        per_round: Configs measured per adaptive round.
        model_overrides: Keyword overrides for the model factory/loader.
        progress: Show a progress bar.
        measure: Replaces the measurement of one config: called in this process as
            ``measure(model_ref, config, dataset, timing, known_accuracy, isolate,
            model_overrides)`` and returning a ``Measurement`` (e.g. to replay recorded
            results when comparing sweep strategies on identical numbers).

    Returns:
        One record per config, in grid order: measured (``ok``/``error``) or ``predicted``.
    """
    if configs is None:
        if resolutions is None:
            raise ValueError("give either configs (see build_grid) or resolutions")
        configs = build_grid(
            model_ref,
            resolutions,
            patch_sizes,
            batch_sizes,
            backends,
            threads=threads,
            device=device,
        )
    if isolate and getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_sweep was called while a child process was importing the main module; put "
            "the sweep under `if __name__ == '__main__':` (or pass isolate=False)"
        )
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ValueError("the sweep has no configs")
    if isolate and isinstance(model_ref, nn.Module):
        raise ValueError(
            "isolate=True needs a model name, path or module-level factory, not a model object"
        )
    timing = timing or TimingConfig()
    dataset = (
        None
        if data is None
        else DatasetEval(
            data, split=split, data_dir=data_dir, limit=eval_limit, batch_size=eval_batch_size
        )
    )
    existing: list[Measurement] = []
    if out_path is not None:
        repair_results(out_path)
        existing = read_results(out_path)
    # Records keyed by model *name* must not outlive the weights they measured.
    digest = checkpoint_digest(model_ref) if isinstance(model_ref, (str, os.PathLike)) else None
    done = {m.key: m for m in existing if m.ok and (digest is None or m.model_digest == digest)}
    stale = {m.key for m in existing if m.ok and m.key not in done}
    if stale:
        warnings.warn(
            f"{len(stale)} result(s) in {out_path} were measured with other weights than "
            f"{model_ref}'s current file (digest {digest}); measuring them again",
            stacklevel=2,
        )
    results: dict[str, Measurement] = {c.key(): done[c.key()] for c in configs if c.key() in done}
    accuracies: dict[tuple, tuple[float, int]] = {}
    threads_before = torch.get_num_threads()

    bar = tqdm(
        total=len(configs),
        initial=len(results),
        disable=not progress,
        unit="config",
        desc="sweep",
        dynamic_ncols=True,
    )

    def run(config: SweepConfig) -> Measurement:
        known = accuracies.get(_accuracy_key(config))
        bar.set_postfix_str(config.key(), refresh=True)
        try:
            args = (model_ref, config, dataset, timing, known, isolate, model_overrides)
            if measure is not None:
                m = measure(*args)
            elif isolate:
                m = run_isolated(measure_one, *args, timeout_s=timeout_s)
            else:
                m = measure_one(*args)
        except IsolatedRunError as error:
            m = error_record(config, str(error))
        except Exception as error:  # noqa: BLE001 - a failing config must not end the sweep
            m = error_record(config, f"{type(error).__name__}: {error}")
        if digest is not None:
            m.model_digest = digest
        if m.ok and m.accuracy is not None:
            accuracies[_accuracy_key(config)] = (m.accuracy, m.n_eval)
        if not m.ok:
            bar.write(f"config {config.key()} failed: {m.error}")
        if out_path is not None:
            append_result(out_path, m)
        results[config.key()] = m
        bar.update(1)
        return m

    try:
        if not adaptive:
            for config in configs:
                if config.key() not in results:
                    run(config)
        else:
            _adaptive(configs, results, run, budget or Budget(), anchors, per_round, out_path, bar)
    finally:
        bar.close()
        if not isolate:
            set_threads(threads_before)
    return [results[c.key()] for c in configs if c.key() in results]


def _groups(configs: Iterable[SweepConfig]) -> dict[tuple, list[SweepConfig]]:
    groups: dict[tuple, list[SweepConfig]] = {}
    for c in configs:
        groups.setdefault(
            (c.model, c.patch_size, c.batch_size, c.backend, c.precision, c.threads, c.device), []
        ).append(c)
    return groups


def _adaptive(
    configs: list[SweepConfig],
    results: dict[str, Measurement],
    run: Callable[[SweepConfig], Measurement],
    budget: Budget,
    anchors: int,
    per_round: int,
    out_path: str | os.PathLike[str] | None,
    bar: Any,
) -> None:
    for group in _groups(configs).values():
        picked = set(anchor_resolutions([c.resolution for c in group], anchors))
        for c in group:
            if c.resolution in picked and c.key() not in results:
                run(c)
    predicted: list[Measurement] = []
    for _ in range(len(configs)):
        measured = [m for m in results.values() if m.source == "measured"]
        lat_fits, mem_fits = fit_latency(measured), fit_memory(measured)
        like = next((m for m in measured if m.ok), None)
        predicted, bands = [], {}
        for c in configs:
            if c.key() in results:
                continue
            tokens = estimate_tokens(c, measured)
            lat_fit = lat_fits.get(group_key(c))
            if tokens is None or lat_fit is None:
                continue
            p = predicted_measurement(c, tokens, lat_fit, mem_fits.get(group_key(c)), like)
            predicted.append(p)
            loo = lat_fit.loo_error_pct
            bands[p.key] = 15.0 if math.isnan(loo) else max(loo, 5.0)
        unknown = [c for c in configs if c.key() not in results and c.key() not in bands]
        candidates = adaptive_candidates(measured, predicted, budget, bands)
        todo = [
            c for c in configs if c.key() in {p.key for p in candidates[:per_round]}
        ] or unknown[:per_round]
        if not todo:
            break
        for c in todo:
            run(c)
    bar.set_description_str(f"sweep (adaptive, {len(predicted)} predicted)")
    for p in predicted:
        if p.key in results:
            continue
        if out_path is not None:
            append_result(out_path, p)
        results[p.key] = p


class _CallableModule(types.ModuleType):
    """Lets ``vitres.sweep(...)`` run a sweep while ``vitres.sweep.<name>`` stays this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[Measurement]:
        return run_sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

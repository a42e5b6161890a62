"""The sweep: a grid of configs, each measured once, its record appended to a file.

Configs are resolutions × patch sizes × batch sizes × backends (a backend fixes the
precision). Each config is measured -- by default in its own ``spawn`` child process,
so its memory peak is its own and a crash or out-of-memory kill becomes an ``error``
record instead of a dead sweep -- and its record is appended to a JSON-lines file as
soon as it finishes. Re-running the same sweep skips every config already recorded with
status ``ok``; Ctrl-C leaves only whole lines. The record format is documented in
:mod:`vitres.tune.records`.

With ``adaptive=True`` only the configs that could change the recommendation are
measured (:mod:`vitres.tune.adaptive`). The grid is :mod:`vitres.tune.grid`'s.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitres.layers.pos_embed import to_grid
from vitres.measure import (
    IsolatedRunError,
    TimingConfig,
    env_fingerprint,
    run_isolated,
    set_threads,
)
from vitres.measure.interference import Interference, reassess
from vitres.measure.threads import ThreadChoice, choose_threads
from vitres.models.checkpoint import checkpoint_digest
from vitres.models.resolve import resolve_model
from vitres.tune.adaptive import run_adaptive
from vitres.tune.costmodel import latency_outliers
from vitres.tune.grid import ModelRef, build_grid
from vitres.tune.hostkind import HOST_KIND_KEY, host_fingerprint
from vitres.tune.measurement import measure_config
from vitres.tune.recommend import Budget
from vitres.tune.records import (
    Measurement,
    SweepConfig,
    append_result,
    latest_by_key,
    read_results,
    repair_results,
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
        ood: str | None = None,
        ood_train_limit: int = 2000,
    ) -> None:
        self.data, self.split, self.data_dir = data, split, data_dir
        self.limit, self.batch_size = limit, batch_size
        self.ood, self.ood_train_limit = ood, ood_train_limit

    def ood_auroc(self, model: nn.Module, config: SweepConfig) -> float | None:
        """The best OOD AUROC of ``model`` at the config's resolution and patch size against
        ``ood`` (:func:`vitres.explain.analysis.ood_auroc_for_config`); ``None`` without it.
        Scored on the eager model: a property of the weights and the input size."""
        if self.ood is None:
            return None
        from vitres.explain.analysis import ood_auroc_for_config

        return ood_auroc_for_config(
            model,
            config.resolution,
            self.data,
            self.ood,
            train_limit=self.ood_train_limit,
            limit=self.limit,
            ood_limit=self.limit,
            patch_size=config.patch_size,
            data_dir=self.data_dir,
        )

    def problems(self, model: nn.Module) -> list[str]:
        """Unreadable files and class-count mismatches seen so far (see ``data_problems``)."""
        from vitres.data import data_problems

        cfg = model.config
        dataset = _dataset(self.data, self.split, self.data_dir, cfg.in_chans)
        return data_problems(dataset, getattr(cfg, "num_classes", None))

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
    threads: int | None = None,
    reference_best_ms: float | None = None,
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
        threads=threads,
        reference_best_ms=reference_best_ms,
    )


def choose_sweep_threads(
    model_ref: ModelRef, configs: Sequence[SweepConfig], model_overrides: dict[str, Any] | None
) -> ThreadChoice:
    """The thread count for a sweep's "auto" configs: 1 thread against all cores, timed on
    the model's own forward pass at the native size (else the first config's size),
    interleaved, under the load present now."""
    model = resolve_model(model_ref, **(model_overrides or {})).eval()
    cfg = getattr(model, "config", None)
    native = getattr(cfg, "img_size", None)
    size = tuple(to_grid(native)) if native is not None else configs[0].resolution
    x = torch.randn(1, int(getattr(cfg, "in_chans", 3)), *size)
    with torch.inference_mode():
        return choose_threads(lambda: model(x))


def error_record(config: SweepConfig, message: str) -> Measurement:
    return Measurement(
        config=config,
        status="error",
        error=message,
        env=env_fingerprint(config.threads, config.device),
    )


# --------------------------------------------------------------------------- sweep


def _accuracy_key(c: SweepConfig) -> tuple:
    return (
        c.model,
        c.resolution,
        c.patch_size,
        c.backend,
        c.precision,
        c.device,
        c.merge,
        c.token_budget,
    )


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
    merges: Sequence[int | float | None] = (None,),
    token_budgets: Sequence[int | None] = (None,),
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
    executor: Callable[..., Iterable[tuple[SweepConfig, Measurement]]] | None = None,
    ood: str | None = None,
    keep_unstable: bool = False,
    max_attempts: int = 3,
    outlier_ratio: float = 1.5,
    log: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Measures every config (or, adaptively, the ones that matter) and records each.

    Args:
        model_ref: Model name or path (``vitres.load_model`` / ``vitres.create_model``),
            ``"module:factory"``, a module-level factory, or (with ``isolate=False``) a model.
        configs: The grid (:func:`build_grid`); or give ``resolutions`` (+ ``patch_sizes``,
            ``batch_sizes``, ``backends``, ``threads``, ``device``, ``merges``,
            ``token_budgets``) to build it here.
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
        executor: Measures the configs elsewhere, e.g. as Ray tasks
            (:class:`vitres.tune.ray_executor.RayExecutor`): called once as
            ``executor(configs, measure, make_args)`` with the configs still to measure, a
            picklable measure function (``measure``, else :func:`measure_one`, run in a
            child process when ``isolate``) and ``make_args(config)`` giving its arguments;
            it yields ``(config, Measurement)`` as each finishes, and this process alone
            appends them to ``out_path``. Not with ``adaptive``; "auto" threads run at the
            task's CPUs (Ray sets one thread per requested CPU).
        ood: Out-of-distribution data (``digits`` or an image folder): each record also
            carries the best OOD AUROC at its resolution (``ood_auroc``), which
            ``Budget.min_ood_auroc`` can constrain.
        keep_unstable: On resume, keep records flagged ``unstable`` or with interference
            (by default they are measured again).
        max_attempts: Measurements of one config at most: a config whose timing window
            shows interference (:mod:`vitres.measure.interference`), or that is more than
            ``outlier_ratio`` times what the cost model of its neighbours predicts, is
            measured again after its neighbours, and the cleanest attempt is kept.
        outlier_ratio: See ``max_attempts``.
        log: Where the sweep's messages go (default: above the progress bar).

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
            merges=merges,
            token_budgets=token_budgets,
        )
    if isolate and getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_sweep was called while a child process was importing the main module; put "
            "the sweep under `if __name__ == '__main__':` (or pass isolate=False)"
        )
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ValueError("the sweep has no configs")
    if adaptive and executor is not None:
        raise ValueError("an executor (--ray) runs the whole grid; it cannot be adaptive")
    if isolate and isinstance(model_ref, nn.Module):
        raise ValueError(
            "isolate=True needs a model name, path or module-level factory, not a model object"
        )
    timing = timing or TimingConfig()
    dataset = (
        None
        if data is None
        else DatasetEval(
            data,
            split=split,
            data_dir=data_dir,
            limit=eval_limit,
            batch_size=eval_batch_size,
            ood=ood,
        )
    )
    if ood is not None and data is None:
        raise ValueError("ood needs data: OOD scores compare the data's test split with it")
    existing: list[Measurement] = []
    if out_path is not None:
        repair_results(out_path)
        existing = read_results(out_path)
    # Records keyed by model *name* must not outlive the weights they measured.
    digest = checkpoint_digest(model_ref) if isinstance(model_ref, (str, os.PathLike)) else None
    fresh = {
        m.key: m
        for m in latest_by_key(existing)
        if m.ok and (digest is None or m.model_digest == digest)
    }
    stale = {m.key for m in existing if m.ok and m.key not in fresh}
    if stale:
        warnings.warn(
            f"{len(stale)} result(s) in {out_path} were measured with other weights than "
            f"{model_ref}'s current file (digest {digest}); measuring them again",
            stacklevel=2,
        )
    wanted = {c.key() for c in configs}
    done = {k: m for k, m in fresh.items() if keep_unstable or not m.suspect}
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
    say = log or (lambda text: bar.write(text, file=sys.stderr))
    suspects = sorted(k for k in fresh if k in wanted and k not in done)
    if suspects:
        say(
            f"{len(suspects)} recorded config(s) were flagged unstable or disturbed; measuring "
            "them again (keep_unstable / --keep-unstable keeps them)"
        )
    todo = [c for c in configs if c.key() not in results]
    if not todo:
        say(
            f"all {len(configs)} configs are already measured in {out_path}: nothing to "
            "measure (a new --out file, or deleting lines, measures again)"
        )
    elif len(results):
        say(f"resuming: {len(results)} of {len(configs)} configs already measured in {out_path}")

    choice: ThreadChoice | None = None
    if todo and measure is None and executor is None and any(c.threads is None for c in todo):
        choice = choose_sweep_threads(model_ref, todo, model_overrides)
        say(f"threads: {choice.reason}")
    reference_best = _best_reference(existing)
    attempts: dict[str, list[Measurement]] = {}
    warned: set[str] = set()

    def make_args(config: SweepConfig) -> tuple:
        known = accuracies.get(_accuracy_key(config))
        return (model_ref, config, dataset, timing, known, isolate, model_overrides)

    def run(config: SweepConfig) -> Measurement:
        bar.set_postfix_str(config.key(), refresh=True)
        try:
            args = make_args(config)
            extra = {
                "threads": None if choice is None else choice.threads,
                "reference_best_ms": reference_best,
            }
            if measure is not None:
                m = measure(*args)
            elif isolate:
                m = run_isolated(measure_one, *args, timeout_s=timeout_s, **extra)
            else:
                m = measure_one(*args, **extra)
        except IsolatedRunError as error:
            m = error_record(config, str(error))
        except Exception as error:  # noqa: BLE001 - a failing config must not end the sweep
            m = error_record(config, f"{type(error).__name__}: {error}")
        return keep(config, m)

    def keep(config: SweepConfig, m: Measurement) -> Measurement:
        nonlocal reference_best
        m.env.setdefault(HOST_KIND_KEY, host_fingerprint(m.env))
        if digest is not None:
            m.model_digest = digest
        if choice is not None and config.threads is None:
            m.env["thread_choice"] = choice.to_dict()
        tries = attempts.setdefault(config.key(), [])
        tries.append(m)
        if m.ok and m.interference is not None:
            reference_best = _best_reference([m], reference_best)
            verdict = reassess(
                m.interference,
                reference_best,
                int(m.env.get("torch_threads") or 1),
                m.env.get("usable_cores"),
            )
            verdict.attempts = verdict.kept = len(tries)
            m.interference = verdict.to_dict()
        if m.ok and m.accuracy is not None:
            accuracies[_accuracy_key(config)] = (m.accuracy, m.n_eval)
        if not m.ok:
            bar.write(f"config {config.key()} failed: {m.error}")
        for warning in m.data_warnings:
            if warning not in warned:
                warned.add(warning)
                say(f"warning: {warning}")
        if out_path is not None:
            append_result(out_path, m)
        results[config.key()] = m
        if len(tries) == 1:
            bar.update(1)
        return m

    try:
        if executor is not None:
            task = measure or (
                functools.partial(run_isolated, measure_one, timeout_s=timeout_s)
                if isolate
                else measure_one
            )
            for config, m in executor(todo, task, make_args) if todo else ():
                keep(config, m)
        elif not adaptive:
            _measure_all(todo, results, attempts, run, max_attempts, outlier_ratio, say)
            _keep_cleanest(attempts, results, out_path, say)
        else:
            run_adaptive(
                configs, results, run, budget or Budget(), anchors, per_round, out_path, bar
            )
    finally:
        bar.close()
        if not isolate:
            set_threads(threads_before)
    return [results[c.key()] for c in configs if c.key() in results]


def _best_reference(records: Iterable[Measurement], best: float | None = None) -> float | None:
    """The fastest reference-kernel time in ``records``' interference evidence."""
    for m in records:
        times = (m.interference or {}).get("reference_ms")
        if m.ok and times:
            low = min(times)
            best = low if best is None else min(best, low)
    return best


def _measure_all(
    todo: list[SweepConfig],
    results: dict[str, Measurement],
    attempts: dict[str, list[Measurement]],
    run: Callable[[SweepConfig], Measurement],
    max_attempts: int,
    outlier_ratio: float,
    say: Callable[[str], None],
) -> None:
    """Measures every config; a disturbed one again after its next two neighbours, and,
    once all are measured, the ones slower than their neighbours' cost model predicts."""
    queue = deque(todo)
    by_key = {c.key(): c for c in todo}
    checked_outliers = False
    while queue or not checked_outliers:
        if not queue:
            checked_outliers = True
            for key, ratio in latency_outliers(results.values(), outlier_ratio).items():
                if key in by_key and len(attempts.get(key, [])) < max_attempts:
                    m = results[key]
                    reason = f"latency {ratio:.2f}× what its neighbours' cost model predicts"
                    evidence = dict(m.interference or {})
                    evidence["flagged"] = True
                    evidence["reasons"] = [*evidence.get("reasons", []), reason]
                    m.interference = evidence
                    say(f"{key}: {reason}; measuring again")
                    queue.append(by_key[key])
            continue
        config = queue.popleft()
        m = run(config)
        if m.ok and m.flagged and len(attempts[config.key()]) < max_attempts:
            reasons = "; ".join((m.interference or {}).get("reasons", []))
            say(f"{config.key()}: interference ({reasons}); measuring again after its neighbours")
            queue.insert(min(2, len(queue)), config)


def _keep_cleanest(
    attempts: dict[str, list[Measurement]],
    results: dict[str, Measurement],
    out_path: str | os.PathLike[str] | None,
    say: Callable[[str], None],
) -> None:
    """For a config measured more than once, keeps the cleanest attempt (least evidence of
    interference, then the lowest median) and records which one it was."""
    remeasured, still = 0, []
    for key, tries in attempts.items():
        ok = [m for m in tries if m.ok and m.interference is not None]
        if len(tries) < 2 or not ok:
            continue
        remeasured += 1

        def cleanliness(m: Measurement) -> tuple:
            return (m.flagged, Interference.from_dict(m.interference).score(), m.latency_ms)

        best = min(ok, key=cleanliness)
        index = tries.index(best) + 1
        best.interference = {**best.interference, "attempts": len(tries), "kept": index}
        if best is not tries[-1] and out_path is not None:
            append_result(out_path, best)  # the last line of a key is the one that counts
        results[key] = best
        if best.flagged:
            still.append(key)
    if remeasured:
        say(
            f"re-measured {remeasured} disturbed config(s), kept the cleanest attempt of each"
            + (f"; still disturbed after every attempt: {', '.join(still)}" if still else "")
        )

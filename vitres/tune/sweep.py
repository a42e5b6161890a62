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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vitres.layers.pos_embed import to_grid
from vitres.measure import (
    IsolatedRunError,
    TimingConfig,
    env_fingerprint,
    run_isolated,
    set_threads,
)
from vitres.measure.interference import reassess
from vitres.measure.threads import ThreadChoice, choose_threads
from vitres.models.resolve import resolve_model
from vitres.progress import progress_bar
from vitres.tune.adaptive import run_adaptive
from vitres.tune.grid import ModelRef, build_grid
from vitres.tune.hostkind import HOST_KIND_KEY, host_fingerprint
from vitres.tune.measurement import measure_config
from vitres.tune.recommend import Budget
from vitres.tune.records import Measurement, SweepConfig, append_result
from vitres.tune.sweep_local import RetryPolicy, keep_cleanest, measure_all
from vitres.tune.sweep_plan import (
    SweepPlan,
    best_reference,
    plan_sweep,
    recorded_thread_choice,
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


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MeasureOptions:
    """How each config is measured.

    Attributes:
        timing: Warm-up and measurement windows.
        isolate: Measure each config in a fresh child process (CPU memory peaks are then
            per config, and crashes are contained). Without it a hard crash (e.g. the
            out-of-memory killer) ends the sweep; exceptions are still recorded.
        timeout_s: Per-config time limit (isolated runs only).
        model_overrides: Keyword overrides for the model factory/loader.
        measure: Replaces the measurement of one config: called in this process as
            ``measure(model_ref, config, dataset, timing, known_accuracy, isolate,
            model_overrides)`` and returning a ``Measurement`` (e.g. to replay recorded
            results when comparing sweep strategies on identical numbers).
    """

    timing: TimingConfig = field(default_factory=TimingConfig)
    isolate: bool = True
    timeout_s: float | None = None
    model_overrides: dict[str, Any] | None = None
    measure: Callable[..., Measurement] | None = None

    def task(self) -> Callable[..., Measurement]:
        """The picklable function an executor calls as ``task(*make_args(config))``:
        ``measure``, else :func:`measure_one` (in a child process when ``isolate``)."""
        if self.measure is not None:
            return self.measure
        if self.isolate:
            return functools.partial(run_isolated, measure_one, timeout_s=self.timeout_s)
        return measure_one


@dataclass(frozen=True)
class AdaptiveOptions:
    """The adaptive mode (:mod:`vitres.tune.adaptive`): anchors first, then only the
    configs that could change the recommendation.

    Attributes:
        budget: Budget the adaptive mode refines the recommendation for.
        anchors: Anchor resolutions per group.
        per_round: Configs measured per adaptive round.
    """

    budget: Budget = field(default_factory=Budget)
    anchors: int = 4
    per_round: int = 2


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
        out_path: JSON-lines results file, appended to and resumed from
            (:func:`vitres.tune.sweep_plan.plan_sweep`); ``None`` keeps results in memory.
            A config is skipped when its key (model, resolution, patch, batch, backend,
            precision, threads, device; not data or timing) is already recorded ``ok``.
        data: Dataset name or folder for accuracy (:class:`DatasetEval`, with ``split``,
            ``data_dir``, ``eval_limit``, ``eval_batch_size`` and ``ood``, which adds the
            best OOD AUROC per record); ``None`` measures speed and memory only.
        timing, isolate, timeout_s, model_overrides, measure: See :class:`MeasureOptions`.
        adaptive: Measure anchors, then only uncertain configs (``budget``, ``anchors``,
            ``per_round``: see :class:`AdaptiveOptions`).
        progress: Show a progress bar.
        executor: Measures the configs elsewhere, e.g. as Ray tasks
            (:class:`vitres.tune.ray_executor.RayExecutor`): called once as
            ``executor(configs, task, make_args)`` with the configs still to measure,
            :meth:`MeasureOptions.task` and ``make_args(config)`` giving its arguments; it
            yields ``(config, Measurement)`` as each finishes, and this process alone
            appends them to ``out_path``. Not with ``adaptive``.
        keep_unstable, max_attempts, outlier_ratio: See :class:`RetryPolicy`.
        log: Where the sweep's messages go (default: above the progress bar).

    Returns:
        One record per config, in grid order: measured (``ok``/``error``) or ``predicted``.
    """
    grid = (patch_sizes, batch_sizes, backends, threads, device, merges, token_budgets)
    configs = _grid(model_ref, configs, resolutions, *grid)
    options = MeasureOptions(timing or TimingConfig(), isolate, timeout_s, model_overrides, measure)
    configs = _checked_configs(model_ref, configs, options, adaptive, executor)
    dataset = _dataset_eval(data, split, data_dir, eval_limit, eval_batch_size, ood)
    retry = RetryPolicy(keep_unstable, max_attempts, outlier_ratio)
    plan = plan_sweep(model_ref, configs, out_path, keep_unstable=retry.keep_unstable)
    sweep = _SweepRun(model_ref, plan, dataset, options, out_path, progress, log)
    adaptive_options = AdaptiveOptions(budget or Budget(), anchors, per_round) if adaptive else None
    sweep.measure(executor, adaptive_options, retry)
    return [plan.results[c.key()] for c in plan.configs if c.key() in plan.results]


def _grid(
    model_ref: ModelRef,
    configs: Sequence[SweepConfig] | None,
    resolutions: str | Sequence[Any] | None,
    patch_sizes: Sequence[int | None],
    batch_sizes: Sequence[int],
    backends: Sequence[str],
    threads: int | None,
    device: str,
    merges: Sequence[int | float | None],
    token_budgets: Sequence[int | None],
) -> Sequence[SweepConfig]:
    """``configs`` when given, else the grid of the axes (:func:`build_grid`).

    Raises:
        ValueError: neither configs nor resolutions.
    """
    if configs is not None:
        return configs
    if resolutions is None:
        raise ValueError("give either configs (see build_grid) or resolutions")
    return build_grid(
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


def _checked_configs(
    model_ref: ModelRef,
    configs: Sequence[SweepConfig],
    options: MeasureOptions,
    adaptive: bool,
    executor: object | None,
) -> list[SweepConfig]:
    """The grid without duplicates, after refusing combinations that cannot run.

    Raises:
        RuntimeError: an isolated sweep started while a child process imports ``__main__``.
        ValueError: no configs; an adaptive executor; a model object with ``isolate``.
    """
    if options.isolate and getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_sweep was called while a child process was importing the main module; put "
            "the sweep under `if __name__ == '__main__':` (or pass isolate=False)"
        )
    unique = list(dict.fromkeys(configs))
    if not unique:
        raise ValueError("the sweep has no configs")
    if adaptive and executor is not None:
        raise ValueError("an executor (--ray) runs the whole grid; it cannot be adaptive")
    if options.isolate and isinstance(model_ref, nn.Module):
        raise ValueError(
            "isolate=True needs a model name, path or module-level factory, not a model object"
        )
    return unique


def _dataset_eval(
    data: str | None,
    split: str,
    data_dir: str | None,
    limit: int | None,
    batch_size: int,
    ood: str | None,
) -> DatasetEval | None:
    """The accuracy evaluation of a sweep, or ``None`` without data.

    Raises:
        ValueError: ``ood`` without ``data``.
    """
    if ood is not None and data is None:
        raise ValueError("ood needs data: OOD scores compare the data's test split with it")
    if data is None:
        return None
    return DatasetEval(
        data, split=split, data_dir=data_dir, limit=limit, batch_size=batch_size, ood=ood
    )


class _SweepRun:
    """The measuring loop of one sweep: measures configs, keeps and appends their records.

    Holds what the loop learns as it goes: the attempts per config, accuracies already
    measured (passed on to configs that share them), the fastest reference-kernel time,
    and the thread choice for "auto" configs.
    """

    def __init__(
        self,
        model_ref: ModelRef,
        plan: SweepPlan,
        dataset: DatasetEval | None,
        options: MeasureOptions,
        out_path: str | os.PathLike[str] | None,
        progress: bool,
        log: Callable[[str], None] | None,
    ) -> None:
        self.model_ref, self.plan, self.dataset = model_ref, plan, dataset
        self.options, self.out_path = options, out_path
        self.results = plan.results
        self.accuracies: dict[tuple, tuple[float, int]] = {}
        self.attempts: dict[str, list[Measurement]] = {}
        self.warned: set[str] = set()
        self.choice: ThreadChoice | None = None
        self.threads_before = torch.get_num_threads()
        self.bar = progress_bar(
            total=len(plan.configs),
            initial=len(plan.results),
            disable=not progress,
            unit="config",
            desc="sweep",
            dynamic_ncols=True,
        )
        self.say = log or (lambda text: self.bar.write(text, file=sys.stderr))
        for line in plan.messages(out_path):
            self.say(line)
        self.reference_best = best_reference(plan.existing)

    def measure(
        self,
        executor: Callable[..., Iterable[tuple[SweepConfig, Measurement]]] | None,
        adaptive: AdaptiveOptions | None,
        retry: RetryPolicy,
    ) -> None:
        """Measures the plan's configs: with ``executor`` when given, else here, adaptively
        when ``adaptive`` is given; then closes the progress bar.

        Args:
            executor: Measures the configs elsewhere (see :func:`run_sweep`).
            adaptive: The adaptive mode's options, or ``None`` to measure every config.
            retry: When a config measured here is measured again.
        """
        try:
            self.choose_threads(executor is None)
            if executor is not None:
                self.run_executor(executor)
            elif adaptive is None:
                self.run_local(retry)
            else:
                self.run_adaptive(adaptive)
        finally:
            self.close()

    def choose_threads(self, local: bool) -> None:
        """The thread count for "auto" configs, when this process measures them: the one
        the results file's "auto" records used on this machine kind, else timed now."""
        auto = [c for c in self.plan.configs if c.threads is None]
        if not (auto and local and self.options.measure is None):
            return
        host = host_fingerprint(env_fingerprint(None, auto[0].device))
        refuse = any(c.threads is None for c in self.plan.todo)
        self.choice = recorded_thread_choice(self.plan.existing, auto, host, self.out_path, refuse)
        if self.choice is not None:
            if dropped := self.plan.drop_other_threads(self.choice.threads):
                self.bar.n = len(self.results)
                self.say(
                    f"measuring {len(dropped)} config(s) again at {self.choice.threads} threads"
                )
            if self.plan.todo:
                self.say(f"threads: {self.choice.reason}")
        elif any(c.threads is None for c in self.plan.todo):
            todo = self.plan.todo
            self.choice = choose_sweep_threads(self.model_ref, todo, self.options.model_overrides)
            self.say(f"threads: {self.choice.reason}")

    def make_args(self, config: SweepConfig) -> tuple:
        """The positional arguments of :func:`measure_one` (and of a ``measure`` override)."""
        known = self.accuracies.get(_accuracy_key(config))
        o = self.options
        return (self.model_ref, config, self.dataset, o.timing, known, o.isolate, o.model_overrides)

    def run(self, config: SweepConfig) -> Measurement:
        """Measures ``config`` here (in a child process when isolated) and keeps the record;
        a failure becomes an ``error`` record."""
        self.bar.set_postfix_str(config.key(), refresh=True)
        o = self.options
        try:
            args = self.make_args(config)
            extra = {
                "threads": None if self.choice is None else self.choice.threads,
                "reference_best_ms": self.reference_best,
            }
            if o.measure is not None:
                m = o.measure(*args)
            elif o.isolate:
                m = run_isolated(measure_one, *args, timeout_s=o.timeout_s, **extra)
            else:
                m = measure_one(*args, **extra)
        except IsolatedRunError as error:
            m = error_record(config, str(error))
        except Exception as error:  # noqa: BLE001 - a failing config must not end the sweep
            m = error_record(config, f"{type(error).__name__}: {error}")
        return self.keep(config, m)

    def keep(self, config: SweepConfig, m: Measurement) -> Measurement:
        """Completes a record (host kind, weight digest, thread choice, interference verdict),
        appends it to the results file and counts it on the progress bar."""
        m.env.setdefault(HOST_KIND_KEY, host_fingerprint(m.env))
        if self.plan.digest is not None:
            m.model_digest = self.plan.digest
        if self.choice is not None and config.threads is None:
            m.env["thread_choice"] = self.choice.to_dict()
        tries = self.attempts.setdefault(config.key(), [])
        tries.append(m)
        if m.ok and m.interference is not None:
            self.reference_best = best_reference([m], self.reference_best)
            verdict = reassess(
                m.interference,
                self.reference_best,
                int(m.env.get("torch_threads") or 1),
                m.env.get("usable_cores"),
            )
            verdict.attempts = verdict.kept = len(tries)
            m.interference = verdict.to_dict()
        if m.ok and m.accuracy is not None:
            self.accuracies[_accuracy_key(config)] = (m.accuracy, m.n_eval)
        if not m.ok:
            self.bar.write(f"config {config.key()} failed: {m.error}")
        for warning in m.data_warnings:
            if warning not in self.warned:
                self.warned.add(warning)
                self.say(f"warning: {warning}")
        if self.out_path is not None:
            append_result(self.out_path, m)
        self.results[config.key()] = m
        if len(tries) == 1:
            self.bar.update(1)
        return m

    def run_executor(
        self, executor: Callable[..., Iterable[tuple[SweepConfig, Measurement]]]
    ) -> None:
        """Hands the configs still to measure to ``executor`` and keeps what it yields."""
        todo = self.plan.todo
        for config, m in executor(todo, self.options.task(), self.make_args) if todo else ():
            self.keep(config, m)

    def run_local(self, retry: RetryPolicy) -> None:
        """Measures every config here, disturbed ones again (:func:`measure_all`)."""
        measure_all(self.plan.todo, self.results, self.attempts, self.run, retry, self.say)
        keep_cleanest(self.attempts, self.results, self.out_path, self.say)

    def run_adaptive(self, adaptive: AdaptiveOptions) -> None:
        """Measures anchors, then only the configs that could change the recommendation."""
        run_adaptive(
            self.plan.configs,
            self.results,
            self.run,
            adaptive.budget,
            adaptive.anchors,
            adaptive.per_round,
            self.out_path,
            self.bar,
        )

    def close(self) -> None:
        """Closes the progress bar and restores this process's thread count."""
        self.bar.close()
        if not self.options.isolate:
            set_threads(self.threads_before)

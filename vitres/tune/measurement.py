"""Measuring one sweep config into a record: latency, peak memory, accuracy, FLOPs.

The timing, memory, FLOP and environment primitives are :mod:`vitres.measure`'s; this
module puts them together for one :class:`~vitres.tune.records.SweepConfig` and returns
its :class:`~vitres.tune.records.Measurement`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vitres.backends import backend_class, get_backend
from vitres.layers.pos_embed import to_grid
from vitres.measure import (
    LatencyStats,
    PeakMemoryTracker,
    TimingConfig,
    analytic_flops,
    count_flops,
    env_fingerprint,
    latency_stats,
    set_threads,
    time_calls,
)
from vitres.measure.energy import EnergyMeter, energy_per_image
from vitres.measure.interference import assess, other_cores, reference_kernel_ms, sample_cpu
from vitres.models.common import FixedPatchSize
from vitres.tokens import TokenMode, quadtree_plan
from vitres.tune.records import Measurement, SweepConfig

EvalData = Callable[[nn.Module, SweepConfig], Iterable[tuple[Tensor, Tensor]]]


def evaluate_accuracy(
    run: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    pad_to: int | None = None,
) -> tuple[float, int]:
    """Top-1 accuracy (fraction) and example count of ``run`` over ``(x, y)`` batches.

    Args:
        run: Maps a batch to logits.
        batches: The evaluation batches.
        pad_to: If set, every batch is split/padded to exactly this size (repeating its
            last image; the padding is dropped), for backends built for one batch size.
    """
    correct = total = 0
    for x, y in batches:
        chunks = [x] if pad_to is None else list(torch.split(x, pad_to))
        labels = [y] if pad_to is None else list(torch.split(y, pad_to))
        for xc, yc in zip(chunks, labels):
            n = xc.shape[0]
            if pad_to is not None and n < pad_to:
                xc = torch.cat([xc, xc[-1:].expand(pad_to - n, *xc.shape[1:])])
            logits = run(xc)[:n]
            correct += int((logits.float().argmax(dim=-1).cpu() == yc.cpu()).sum())
            total += n
    if total == 0:
        raise ValueError("the evaluation data yielded no examples")
    return correct / total, total


def backend_options(
    config: SweepConfig, calibration: tuple[str, str | None] | None = None
) -> dict[str, Any]:
    """Constructor arguments of ``config.backend``: the device, and for backends that
    calibrate on real images, the data they calibrate on."""
    options: dict[str, Any] = {"device": config.device}
    if calibration is not None and backend_class(config.backend).calibrated:
        options["calibration_data"], options["calibration_data_dir"] = calibration
    return options


def measure_config(
    build_model: Callable[[], nn.Module],
    config: SweepConfig,
    *,
    eval_data: EvalData | None = None,
    data_name: str | None = None,
    timing: TimingConfig | None = None,
    known_accuracy: tuple[float, int] | None = None,
    isolated: bool = False,
    with_flops: bool = True,
    calibration: tuple[str, str | None] | None = None,
    threads: int | None = None,
    reference_best_ms: float | None = None,
) -> Measurement:
    """Measures one config: latency, peak memory, accuracy, FLOPs; returns an ``ok`` record.

    Order: set threads; memory baseline; build the model; ``backend.prepare``; time
    ``backend.run`` on a random batch; read the peak memory; evaluate accuracy (through
    the same backend, so reduced precision shows in accuracy); count FLOPs.

    Args:
        build_model: Returns the model (called after the memory baseline, so the peak
            includes the weights).
        config: What to measure.
        eval_data: ``eval_data(model, config)`` yields ``(x, y)`` evaluation batches.
        data_name: Name of the evaluation data, for the record.
        timing: Warm-up and measurement windows.
        known_accuracy: ``(accuracy, n_eval)`` already known for this model, resolution,
            patch and backend (another batch size): evaluation is skipped.
        isolated: True when running in a fresh child process (labels the memory method).
        with_flops: Count FLOPs (one extra forward pass under the counter).
        calibration: ``(dataset name or folder, data_dir)`` that backends needing
            calibration images (static INT8) calibrate on: the sweep's own dataset, so a
            folder dataset is not quantised with Fashion-MNIST's activation ranges.
        threads: Threads to run at when ``config.threads`` is ``None`` ("auto": the
            count the sweep chose by measurement); ``None`` keeps the current setting.
        reference_best_ms: The fastest reference-kernel time seen so far in the sweep,
            for the interference verdict (:mod:`vitres.measure.interference`).
    """
    threads = set_threads(config.threads if config.threads is not None else threads)
    cost = _Cost(torch.device(config.device), isolated)
    model = build_model().eval()
    facts = _ModelFacts.of(model)
    runnable = _runnable(model, config)
    backend = get_backend(config.backend, **backend_options(config, calibration))
    shape = (config.batch_size, facts.in_chans, *config.resolution)
    backend.prepare(runnable, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(config.device)  # untimed
    stats, evidence, calls = _time_backend(
        backend, x, timing, threads, reference_best_ms, cost.meter
    )
    cost_fields = cost.fields(calls * config.batch_size)
    accuracy, n_eval = (None, 0) if known_accuracy is None else known_accuracy
    if eval_data is not None and known_accuracy is None:
        accuracy, n_eval = _backend_accuracy(backend, model, config, eval_data)
    warnings = list(eval_data.problems(model)) if hasattr(eval_data, "problems") else []
    ood_auroc = eval_data.ood_auroc(model, config) if hasattr(eval_data, "ood_auroc") else None
    grid, tokens = _grid_and_tokens(model, config, x)
    flops, flops_analytic = _flops(model, runnable, config, x, grid) if with_flops else (None,) * 2
    median_s = stats.median_ms / 1000.0
    return Measurement(
        config=config,
        status="ok",
        accuracy=accuracy,
        n_eval=n_eval,
        data=data_name if accuracy is not None else None,
        latency=stats,
        throughput_ips=config.batch_size / median_s if stats.median_ms > 0 else None,
        **cost_fields,
        flops=flops,
        flops_analytic=flops_analytic,
        tokens=tokens,
        grid=grid,
        **facts.record_fields(model),
        build_time_s=backend.build_time_s,
        env=env_fingerprint(threads, config.device),
        interference=evidence.to_dict(),
        data_warnings=warnings,
        ood_auroc=ood_auroc,
    )


class _Cost:
    """The memory peaks (the device's, and the host's beside it on a GPU) from the moment
    it is made, and the energy meter of the timing window."""

    def __init__(self, device: torch.device, isolated: bool) -> None:
        self.tracker = PeakMemoryTracker(device, isolated=isolated)
        self.host = (
            None if device.type == "cpu" else PeakMemoryTracker(torch.device("cpu"), isolated)
        )
        self.tracker.start()
        if self.host is not None:
            self.host.start()
        self.meter = EnergyMeter(device)

    def fields(self, images: int) -> dict[str, Any]:
        """The record's memory and energy fields, ``images`` run in the energy window."""
        joules = self.meter.joules
        return {
            "peak_mem_mb": self.tracker.peak_mb(),
            "mem_method": self.tracker.method,
            "host_peak_mem_mb": None if self.host is None else self.host.peak_mb(),
            "energy_j_per_image": energy_per_image(joules, images),
            "energy_method": self.meter.method if joules is not None else None,
            "energy_missing": None if joules is not None else self.meter.missing,
        }


@dataclass(frozen=True)
class _ModelFacts:
    """What a record says about the model: its config, channels, native patch and size."""

    config: Any
    in_chans: int
    native_patch_size: int | None
    native_resolution: tuple[int, int] | None

    @classmethod
    def of(cls, model: nn.Module) -> _ModelFacts:
        config = getattr(model, "config", None)
        patch = getattr(config, "patch_size", None)
        size = getattr(config, "img_size", None)
        return cls(
            config,
            int(getattr(config, "in_chans", 3)),
            None if patch is None else to_grid(patch)[0],
            None if size is None else to_grid(size),
        )

    def record_fields(self, model: nn.Module) -> dict[str, Any]:
        """The :class:`Measurement` fields that describe the model."""
        return {
            "params": sum(p.numel() for p in model.parameters()),
            "num_prefix_tokens": getattr(model, "num_prefix_tokens", None),
            "native_resolution": self.native_resolution,
            "native_patch_size": self.native_patch_size,
            "embed_dim": getattr(self.config, "embed_dim", None),
        }


def _backend_accuracy(
    backend: Any, model: nn.Module, config: SweepConfig, eval_data: EvalData
) -> tuple[float, int]:
    """Accuracy and example count through ``backend`` (padded to the batch size for a
    backend built for one)."""
    pad_to = None if backend.dynamic_batch else config.batch_size
    return evaluate_accuracy(backend.run, eval_data(model, config), pad_to=pad_to)


def _runnable(model: nn.Module, config: SweepConfig) -> nn.Module:
    """``model`` as the backend runs it: the config's token mode and patch size bound."""
    mode = TokenMode.of(config.merge, config.token_budget)  # the one place the rules live
    mode.check_model(model)
    if mode.merge is not None or mode.token_budget is not None:
        return mode.bind(model, config.patch_size)
    if config.patch_size is not None:
        return FixedPatchSize(model, config.patch_size)
    return model


def _time_backend(
    backend: Any,
    x: Tensor,
    timing: TimingConfig | None,
    threads: int,
    reference_best_ms: float | None,
    meter: EnergyMeter,
) -> tuple[LatencyStats, Any, int]:
    """Latency statistics of ``backend.run(x)``, the interference verdict of the run
    (``timing``: the default :class:`TimingConfig` when ``None``) and the number of calls
    (warm-up included) that ``meter``'s energy window covered."""
    timing = timing or TimingConfig()
    reference_before = reference_kernel_ms(threads)
    before = sample_cpu()
    calls = 0

    def call() -> None:
        nonlocal calls
        backend.run(x)
        calls += 1

    meter.start()
    samples = time_calls(call, sync=backend.sync, **timing.as_kwargs())
    backend.sync()
    meter.stop()  # before the reference kernel, whose work is not the model's
    after = sample_cpu()
    reference = (reference_before, reference_kernel_ms(threads))
    stats = latency_stats(samples)
    evidence = assess(
        other=other_cores(before, after),
        loadavg=after.loadavg_1m,
        reference_ms=reference,
        reference_best_ms=min([*reference, *([reference_best_ms] if reference_best_ms else [])]),
        tail_ratio=stats.tail_ratio,
        threads=threads,
    )
    return stats, evidence, calls


def _grid_and_tokens(
    model: nn.Module, config: SweepConfig, x: Tensor
) -> tuple[tuple[int, ...] | None, int | None]:
    """The token grid and patch-token count of a config (with a token budget: those of
    the quadtrees of the timed batch ``x``); ``(None, None)`` for a model without a grid."""
    if not hasattr(model, "grid_size"):
        return None, None
    height, width = config.resolution
    grid = tuple(int(g) for g in model.grid_size((height, width), patch_size=config.patch_size))
    tokens = grid[0] * grid[1]
    if config.token_budget is not None:
        _, plan = quadtree_plan(model, x, config.token_budget, config.patch_size)
        tokens = round(sum(plan.counts) / len(plan.counts))
        grid = plan.grid
    return grid, tokens


def _flops(
    model: nn.Module,
    runnable: nn.Module,
    config: SweepConfig,
    x: Tensor,
    grid: tuple[int, ...] | None,
) -> tuple[int | None, int | None]:
    """Counted FLOPs of one image through ``runnable``, and the analytic count (uniform
    tokens only; ``None`` where the formula does not apply)."""
    device = torch.device(config.device)
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else torch.float32
    flops = count_flops(runnable, x[:1].to(device=device, dtype=dtype))
    model_config = getattr(model, "config", None)
    if model_config is None or config.merge is not None or config.token_budget is not None:
        return flops, None
    try:
        size = tuple(config.resolution)
        return flops, analytic_flops(model_config, size, config.patch_size, grid=grid)
    except (AttributeError, TypeError, ValueError):
        return flops, None

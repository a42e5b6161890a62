"""One adaptive run from references: the library side of ``vitres run``.

:func:`run_session` resolves the model, chooses the ladder, gets a latency model (from
the given sweep records, or from a short calibration it runs first and says so:
:func:`vitres.runtime.calibration.calibrate`, timed with :mod:`vitres.measure`),
builds an :class:`~vitres.runtime.runner.AdaptiveRunner`, streams the source through it
(:func:`vitres.runtime.stream.run_stream`) and returns the report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitres.models.checkpoint import checkpoint_digest
from vitres.runtime.calibration import CALIBRATION_TIMING, calibrate
from vitres.runtime.latency import LatencyModel
from vitres.runtime.runner import AdaptiveRunner, deadline_from
from vitres.runtime.sources import open_source
from vitres.runtime.stream import StreamReport, run_stream
from vitres.tune.deployment import DEFAULT_BACKEND, recommended_backend, records_of_model
from vitres.tune.records import Measurement, read_results

__all__ = [
    "CALIBRATION_TIMING",
    "DEFAULT_CALIBRATION_FILE",
    "SessionResult",
    "default_ladder",
    "latency_model_for",
    "run_session",
]


#: Where a run without ``--records`` keeps its calibration when neither a calibration path
#: nor a trace is given: in the current folder, so ``--records`` can reuse it.
DEFAULT_CALIBRATION_FILE = "vitres-run-calibration.jsonl"


def default_ladder(model: nn.Module, records: Sequence[Measurement] | None = None) -> list[int]:
    """The sizes to choose from when none are given.

    With records: every square resolution they measured. Without: five sizes that are
    multiples of the patch size, from about 0.4 × the native size up to the native size
    (28 px, patch 4: 12, 16, 20, 24, 28; 224 px, patch 16: 96, 128, 160, 192, 224).
    """
    if records:
        sizes = sorted({m.config.resolution[0] for m in records if m.ok and _square(m)})
        if sizes:
            return sizes
    native = int(model.config.img_size[0])
    patch = int(model.config.patch_size)
    low = max(patch, math.ceil(0.4 * native / patch) * patch)
    gap = max(patch, math.ceil((native - low) / (4 * patch)) * patch)
    sizes = list(range(native, low - 1, -gap))[::-1]
    return sizes


def _square(m: Measurement) -> bool:
    return m.config.resolution[0] == m.config.resolution[1]


def latency_model_for(
    records: Sequence[Measurement],
    backend: str,
    model_ref: str,
    patch_size: int | None,
    threads: int | None = None,
) -> LatencyModel:
    """The records' latency model for this backend, narrowed to this model, its patch
    size and the thread count when the records hold several."""
    ok = [m for m in records if m.ok]
    narrow: dict[str, Any] = {"backend": backend}
    if len({m.config.threads for m in ok}) > 1 and threads is not None:
        narrow["threads"] = threads
    if len({m.config.model for m in ok}) > 1 and any(m.config.model == model_ref for m in ok):
        narrow["model"] = model_ref
    if len({m.patch_size for m in ok}) > 1 and patch_size is not None:
        narrow["patch_size"] = patch_size
    return LatencyModel.from_records(records, **narrow)


@dataclass
class SessionResult:
    """A finished run: the stream report, and how the run was set up."""

    report: StreamReport
    deadline_ms: float
    calibrated: bool
    records_path: str | None
    infeasible_at_start: bool


def _check_options(controller: Any, backend: str | None, threads: int | None) -> None:
    """Refuses a bad controller name, backend or thread count before anything is loaded
    or calibrated."""
    from vitres.backends import list_backends
    from vitres.runtime.controller import parse_controller

    if isinstance(controller, str):
        parse_controller(controller)
    if backend is not None and backend not in list_backends():
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(list_backends())}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive number, got {threads}")


# long: the public entry point; most of it is the documentation of its twenty arguments
def run_session(
    model_ref: str,
    source: str,
    *,
    target_fps: float | None = None,
    max_latency_ms: float | None = None,
    controller: str = "predictive",
    records: str | os.PathLike[str] | None = None,
    frames: int | None = None,
    trace_path: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    ladder: Sequence[int] | None = None,
    escalate_below: float | None = None,
    step: int | None = None,
    labels: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    split: str = "test",
    calibration_path: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> SessionResult:
    """Runs ``model_ref`` over ``source`` under a frame-rate or latency target.

    Args:
        model_ref: Model reference (:func:`vitres.models.resolve.resolve_model`).
        source: Video file, image folder, or dataset name (``fashion-mnist``).
        target_fps: Frames per second to keep, or
        max_latency_ms: the per-frame deadline.
        controller: ``predictive``, ``step`` or ``fixed:R``.
        records: Sweep results file; without it a short calibration runs first.
        frames: Stop after this many frames.
        trace_path: Where to write the per-frame trace (JSON lines).
        backend: Backend name; ``None``: with ``records``, the backend of the config the
            records recommend (said in the log), else ``eager``.
        ladder: Sizes to choose from (default :func:`default_ladder`).
        escalate_below: Escalation threshold on the top softmax probability.
        step: Pixels per change of the step controller.
        labels: Labels file for a video (one class index per line).
        data_dir: Folder of the dataset files.
        split: Dataset split.
        calibration_path: Where the calibration's records go (default: beside the
            trace, else :data:`DEFAULT_CALIBRATION_FILE` in the current folder); kept,
            and said in the log, so ``records=`` can reuse them.
        threads: CPU threads for the run (and the calibration); torch's default if ``None``.
            Restored afterwards.
        progress: Live progress line.
        log: Where the run's messages go.
        device: Where the model runs (``cpu``, ``cuda``, ``cuda:N``); the calibration
            times it there.

    Raises:
        ValueError, FileNotFoundError: bad model, source, target, records or options.
    """
    from vitres.devices import check_device
    from vitres.measure import set_threads

    deadline_ms = deadline_from(target_fps, max_latency_ms)
    _check_options(controller, backend, threads)
    check_device(device)
    threads_before = torch.get_num_threads()
    set_threads(threads)
    try:
        model = _resolve(model_ref)
        stream = open_source(
            source, in_chans=model.config.in_chans, labels=labels, split=split, data_dir=data_dir
        )
        setup = _latency_setup(
            model_ref, model, records, ladder, backend, threads, progress, log,
            _calibration_file(calibration_path, trace_path), device,
        )  # fmt: skip
        runner = AdaptiveRunner(
            model, setup.sizes, max_latency_ms=deadline_ms, controller=controller,
            records=setup.latency, backend=setup.backend, escalate_below=escalate_below, step=step,
            backend_options={"device": device},
        )  # fmt: skip
        infeasible = _say_if_infeasible(runner, setup.latency, deadline_ms, log)
        report = run_stream(runner, stream, frames=frames, trace_path=trace_path, progress=progress)
    finally:
        set_threads(threads_before)
    return SessionResult(report, deadline_ms, setup.calibrated, setup.records_path, infeasible)


@dataclass
class _LatencySetup:
    """Where a run's latency model came from, and the ladder it chose."""

    latency: LatencyModel
    sizes: list[int]
    records_path: str | None
    calibrated: bool
    backend: str


def _resolve(model_ref: str) -> nn.Module:
    """The model behind ``model_ref``, which must be a vitres model (it has a config)."""
    from vitres.models.resolve import resolve_model

    model = resolve_model(model_ref)
    if not hasattr(model, "config"):
        raise ValueError(f"{model_ref!r} resolved to a model without a vitres config")
    return model


def _calibration_file(
    calibration_path: str | os.PathLike[str] | None, trace_path: str | os.PathLike[str] | None
) -> Callable[[], str]:
    """Where a calibration's records go: as given, else beside the trace, else
    :data:`DEFAULT_CALIBRATION_FILE` in the current folder; kept for ``--records``."""

    def path() -> str:
        if calibration_path is not None:
            return os.fspath(calibration_path)
        if trace_path is not None:
            return os.fspath(trace_path) + ".calibration.jsonl"
        return DEFAULT_CALIBRATION_FILE

    return path


def _latency_setup(
    model_ref: str,
    model: nn.Module,
    records: str | os.PathLike[str] | None,
    ladder: Sequence[int] | None,
    backend: str | None,
    threads: int | None,
    progress: bool,
    log: Callable[[str], None],
    calibration_file: Callable[[], str],
    device: str = "cpu",
) -> _LatencySetup:
    """The latency model and ladder of a run: from ``records``, else from a calibration
    timed now (its records written to ``calibration_file()``)."""
    patch_size = model.config.patch_size
    if records is not None:
        if not os.path.exists(records):
            raise FileNotFoundError(
                f"records file {os.fspath(records)} does not exist; make one with `vitres sweep "
                "--out FILE`, or leave --records out to calibrate first"
            )
        measured = records_of_model(
            read_results(records), model_ref, checkpoint_digest(model_ref), os.fspath(records)
        )
        if backend is None:
            backend, why = recommended_backend(measured, lambda name: _no_frames(measured, name))
            log(f"backend: {why}")
        sizes = list(ladder) if ladder else default_ladder(model, measured)
        latency = latency_model_for(measured, backend, model_ref, patch_size, threads)
        return _LatencySetup(latency, sizes, os.fspath(records), False, backend)
    backend = backend or DEFAULT_BACKEND
    sizes = list(ladder) if ladder else default_ladder(model)
    path = calibration_file()
    if os.path.exists(path):
        os.remove(path)
    log(
        f"no --records: calibrating {backend} at {', '.join(map(str, sizes))} px with a short "
        f"sweep (about {CALIBRATION_TIMING['min_s']} s per size, speed only) -> "
        f"{path}; for accurate predictions and accuracy per size, run "
        "`vitres sweep --data ...` and pass --records"
    )
    calibration = calibrate(
        model, sizes, backend=backend, threads=threads, progress=progress, device=device
    )
    calibration.write(path, model_ref)
    if not calibration.ok:
        errors = "; ".join(f"{p.size[0]} px: {p.error}" for p in calibration.points)
        raise ValueError(
            f"the calibration of {backend} failed at every size ({errors}); try another "
            "--backend, or pass --records from `vitres sweep`"
        )
    log(f"calibration kept in {path}; pass --records {path} to reuse it and skip calibrating")
    return _LatencySetup(calibration.latency_model(model_ref), sizes, path, True, backend)


def _no_frames(records: Sequence[Measurement], backend: str) -> str | None:
    """Why ``backend`` cannot run frames one at a time from these records (``None``: it can)."""
    if any(m.config.backend == backend and m.config.batch_size == 1 for m in records):
        return None
    return "the records have no batch-1 latencies of it"


def _say_if_infeasible(
    runner: AdaptiveRunner, latency: LatencyModel, deadline_ms: float, log: Callable[[str], None]
) -> bool:
    """Says so when even the smallest ladder size is predicted over the deadline."""
    smallest = min(latency.p95_ms(s) for s in runner.ladder)
    if smallest <= deadline_ms:
        return False
    fixed = getattr(runner.controller, "resolution", None)
    action = (
        f"keeping the fixed {fixed} px asked for"
        if fixed is not None
        else f"running at the smallest size, {runner.ladder[0]} px"
    )
    log(
        f"no ladder size meets {deadline_ms:.3g} ms per frame: the smallest "
        f"({runner.ladder[0]} px) is predicted at p95 {smallest:.3g} ms; {action} "
        "(every frame is still traced)"
    )
    return True

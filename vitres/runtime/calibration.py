"""Run-time calibration: how long one call takes at each ladder size, timed right now.

``vitres run`` without ``--records`` (and ``vitres serve`` without them) needs a latency
model before the first frame. :func:`calibrate` builds it from the measurement layer
directly: it prepares the backend at each (size, batch) point, times calls on a random
input with :func:`vitres.measure.time_calls` (warm-up first), reduces the samples to
:class:`~vitres.measure.LatencyStats`, and checks each timing window for interference
(:mod:`vitres.measure.interference`): a disturbed point is timed again after the others,
up to ``max_attempts`` times, and its cleanest attempt is kept. The result,
:class:`Calibration`, gives the :class:`~vitres.runtime.latency.LatencyModel`
(:meth:`Calibration.latency_model`) without any records file, and the equivalent sweep
records (:meth:`Calibration.records`) for those who want to keep them.

Speed only: no accuracy, no memory, no FLOPs. A real sweep (``vitres sweep``) measures
for longer and with data.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitres.backends import backend_class, get_backend
from vitres.layers.patch_embed import token_grid
from vitres.layers.pos_embed import to_grid
from vitres.measure import LatencyStats, TimingConfig, env_fingerprint, latency_stats, time_calls
from vitres.measure.env import set_threads
from vitres.measure.interference import (
    Interference,
    assess,
    other_cores,
    reference_kernel_ms,
    sample_cpu,
)
from vitres.models.checkpoint import checkpoint_digest
from vitres.models.common import FixedPatchSize
from vitres.progress import progress_bar
from vitres.runtime.latency import LatencyModel, LatencyPoint, as_size
from vitres.tune.hostkind import HOST_KIND_KEY, host_fingerprint
from vitres.tune.records import Measurement, SweepConfig, append_result

#: Timing of the calibration run when no records are given: short, so the run starts
#: within seconds; a real sweep (``vitres sweep``) measures for longer.
CALIBRATION_TIMING = {"warmup_calls": 5, "warmup_s": 0.1, "min_calls": 20, "min_s": 0.3}

Size = tuple[int, int]


@dataclass
class CalibrationPoint:
    """The timing of one (size, batch) point.

    Attributes:
        size: ``(height, width)`` in pixels.
        batch: Images per call.
        stats: Latency statistics of the kept attempt (``None`` when it failed).
        tokens: Patch tokens at ``size`` (``None`` for a model without a token grid).
        grid: The token grid ``(rows, cols)``.
        interference: The interference evidence of the kept attempt.
        attempts: Timings of this point, the kept one included.
        build_time_s: Time the backend took to prepare for this point.
        error: What went wrong, when the point could not be timed.
    """

    size: Size
    batch: int
    stats: LatencyStats | None = None
    tokens: int | None = None
    grid: tuple[int, int] | None = None
    interference: dict[str, Any] | None = None
    attempts: int = 0
    build_time_s: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Timed successfully."""
        return self.error is None and self.stats is not None

    @property
    def flagged(self) -> bool:
        """The kept timing window showed interference."""
        return bool((self.interference or {}).get("flagged"))


@dataclass
class Calibration:
    """The timed points of one model on one backend, and what they were timed with.

    Attributes:
        backend, precision, device: What ran.
        threads: The thread count asked for (``None``: torch's setting at the time).
        patch_size: The patch size used (``None``: a model without one).
        explicit_patch: True when the patch size was given rather than the model's own.
        native_resolution, native_patch_size, embed_dim, params, num_prefix_tokens:
            The model's geometry, for the records.
        size_policy: The model's size policy (how sides the patch does not divide are
            rounded), for the token count of sizes not timed.
        env: The environment the points were timed in.
        points: One entry per (size, batch), in the order asked for.
    """

    backend: str
    precision: str
    device: str
    threads: int | None
    patch_size: int | None
    explicit_patch: bool = False
    native_resolution: tuple[int, int] | None = None
    native_patch_size: int | None = None
    embed_dim: int | None = None
    params: int | None = None
    num_prefix_tokens: int | None = None
    size_policy: str = "pad"
    env: dict[str, Any] = field(default_factory=dict)
    points: list[CalibrationPoint] = field(default_factory=list)

    @property
    def ok(self) -> list[CalibrationPoint]:
        """The points timed successfully."""
        return [p for p in self.points if p.ok]

    def latency_model(self, model_ref: str) -> LatencyModel:
        """The latency model of the timed points (:meth:`LatencyModel.from_points`).

        Raises:
            ValueError: no point was timed successfully.
        """
        points = [
            LatencyPoint(p.size, p.batch, p.stats.median_ms, p.stats.p95_ms, p.tokens)
            for p in self.ok
            if p.stats.median_ms > 0
        ]
        tokens_at = None
        if self.patch_size is not None:
            tokens_at = functools.partial(_tokens, self.patch_size, self.size_policy)
        return LatencyModel.from_points(
            points,
            model=model_ref,
            backend=self.backend,
            precision=self.precision,
            device=self.device,
            threads=self.threads,
            patch_size=self.patch_size,
            tokens_at=tokens_at,
        )

    def records(self, model_ref: str) -> list[Measurement]:
        """The points as sweep records (:mod:`vitres.tune.records`), one per point: what a
        speed-only sweep of the same points would have written (with the machine kind
        and, for a model named by file, its weight digest)."""
        digest = checkpoint_digest(model_ref)
        records = [self._record(model_ref, p) for p in self.points]
        for m in records:
            m.env.setdefault(HOST_KIND_KEY, host_fingerprint(m.env))
            m.model_digest = digest
        return records

    def write(self, path: str, model_ref: str) -> None:
        """Appends :meth:`records` to the JSON-lines file ``path``."""
        for record in self.records(model_ref):
            append_result(path, record)

    def _record(self, model_ref: str, p: CalibrationPoint) -> Measurement:
        config = SweepConfig(
            model_ref,
            p.size,
            self.patch_size if self.explicit_patch else None,
            p.batch,
            self.precision,
            self.backend,
            self.threads,
            self.device,
        )
        env = dict(self.env)
        if not p.ok:
            return Measurement(config=config, status="error", error=p.error, env=env)
        return Measurement(
            config=config,
            status="ok",
            latency=p.stats,
            throughput_ips=p.batch / (p.stats.median_ms / 1000.0) if p.stats.median_ms else None,
            params=self.params,
            tokens=p.tokens,
            grid=p.grid,
            num_prefix_tokens=self.num_prefix_tokens,
            native_resolution=self.native_resolution,
            native_patch_size=self.native_patch_size,
            embed_dim=self.embed_dim,
            build_time_s=p.build_time_s,
            env=env,
            interference=p.interference,
        )


def _tokens(patch_size: int, policy: str, size: Size) -> int:
    """Patch tokens of an ``(H, W)`` input under a size policy."""
    rows, cols = token_grid(size, patch_size, policy)
    return int(rows) * int(cols)


def calibrate(
    model: nn.Module,
    sizes: Sequence[int | Size],
    *,
    backend: str = "eager",
    batches: Sequence[int] = (1,),
    device: str = "cpu",
    threads: int | None = None,
    patch_size: int | None = None,
    timing: TimingConfig | None = None,
    max_attempts: int = 3,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Times ``model`` on ``backend`` at every size × batch, speed only.

    The backend is prepared on a copy of ``model`` (preparing may convert weights in
    place), once per point, and timed on a random input of the point's shape. A point
    whose timing window shows interference is timed again after the others (at most
    ``max_attempts`` times) and its cleanest attempt kept. A point that fails is kept as
    an error (``point.error``), not raised.

    Args:
        model: The model (a vitres model, or any ``nn.Module`` with a ``config``).
        sizes: Sizes to time, ``28`` or ``(height, width)``.
        backend: Backend name (:func:`vitres.backends.get_backend`).
        batches: Batch sizes to time at every size.
        device: Device to run on.
        threads: CPU threads to time at (``None``: keep the current setting).
        patch_size: Patch size to run at (``None``: the model's own).
        timing: Warm-up and measurement windows (default :data:`CALIBRATION_TIMING`).
        max_attempts: Timings of one point at most.
        progress: Show a progress bar.
        log: Where messages about failed points go (default: nowhere).

    Returns:
        The :class:`Calibration`; :meth:`Calibration.latency_model` gives the latency model.

    Example::

        calibration = calibrate(model, [16, 20, 24, 28], backend="eager")
        latency = calibration.latency_model("fmnist-vit-multires")
        latency.p95_ms(24)
    """
    timing = timing or TimingConfig(**CALIBRATION_TIMING)
    used_threads = set_threads(threads)
    work = copy.deepcopy(model).eval()
    calibration = _describe(work, backend, device, threads, patch_size)
    calibration.env = env_fingerprint(used_threads, device)
    runnable = work if patch_size is None else _fixed_patch(work, patch_size)
    points = [CalibrationPoint(as_size(s), int(b)) for s in sizes for b in batches]
    calibration.points = points
    timer = _PointTimer(runnable, backend, device, used_threads, timing, calibration)
    queue = list(points)
    bar = progress_bar(total=len(points), disable=not progress, unit="point", desc="calibration")
    try:
        while queue:
            point = queue.pop(0)
            timer.time(point)
            if point.attempts == 1:
                bar.update(1)
            if point.error is not None and log is not None:
                log(f"calibration at {point.size[0]}x{point.size[1]} failed: {point.error}")
            if point.ok and point.flagged and point.attempts < max_attempts:
                queue.insert(min(2, len(queue)), point)
    finally:
        bar.close()
    return calibration


def _fixed_patch(model: nn.Module, patch_size: int) -> nn.Module:
    """``model`` run at ``patch_size`` on every call."""
    return FixedPatchSize(model, patch_size, None)


def _describe(
    model: nn.Module, backend: str, device: str, threads: int | None, patch_size: int | None
) -> Calibration:
    """An empty :class:`Calibration` naming the model's geometry and what runs it."""
    cfg = getattr(model, "config", None)
    native_patch = getattr(cfg, "patch_size", None)
    native_patch = None if native_patch is None else int(to_grid(native_patch)[0])
    native_res = getattr(cfg, "img_size", None)
    return Calibration(
        backend=backend,
        precision=backend_class(backend).precision,
        device=device,
        threads=threads,
        patch_size=patch_size if patch_size is not None else native_patch,
        explicit_patch=patch_size is not None,
        native_resolution=None if native_res is None else tuple(to_grid(native_res)),
        native_patch_size=native_patch,
        embed_dim=getattr(cfg, "embed_dim", None),
        params=sum(p.numel() for p in model.parameters()),
        num_prefix_tokens=getattr(model, "num_prefix_tokens", None),
        size_policy=str(getattr(cfg, "size_policy", "pad")),
    )


class _PointTimer:
    """Times one (size, batch) point at a time on a freshly prepared backend."""

    def __init__(
        self,
        runnable: nn.Module,
        backend: str,
        device: str,
        threads: int,
        timing: TimingConfig,
        calibration: Calibration,
    ) -> None:
        self.runnable, self.backend, self.device = runnable, backend, device
        self.threads, self.timing, self.calibration = threads, timing, calibration
        self.in_chans = int(getattr(getattr(runnable, "config", None), "in_chans", 3))
        self.reference_best: float | None = None

    def time(self, point: CalibrationPoint) -> None:
        """Times ``point`` once more; keeps the attempt if it is the cleanest so far."""
        point.attempts += 1
        try:
            stats, evidence, build_s = self._attempt(point)
        except Exception as error:  # noqa: BLE001 - a failing size is reported, not raised
            if not point.ok:
                point.error = f"{type(error).__name__}: {error}"
            return
        if point.ok and not _cleaner(stats, evidence, point):
            point.interference = {**point.interference, "attempts": point.attempts}
            return
        point.stats, point.build_time_s, point.error = stats, build_s, None
        kept = {"attempts": point.attempts, "kept": point.attempts}
        point.interference = {**evidence.to_dict(), **kept}
        if self.calibration.patch_size is not None:
            policy = self.calibration.size_policy
            rows, cols = token_grid(point.size, self.calibration.patch_size, policy)
            point.grid, point.tokens = (int(rows), int(cols)), int(rows) * int(cols)

    def _attempt(self, point: CalibrationPoint) -> tuple[LatencyStats, Interference, float | None]:
        """Prepares the backend for the point's shape and times calls on a random input."""
        runner = get_backend(self.backend, device=self.device)
        shape = (point.batch, self.in_chans, *point.size)
        runner.prepare(self.runnable, shape)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        reference_before = reference_kernel_ms(self.threads)
        before = sample_cpu()
        samples = time_calls(lambda: runner.run(x), sync=runner.sync, **self.timing.as_kwargs())
        after = sample_cpu()
        reference = (reference_before, reference_kernel_ms(self.threads))
        best = min([*reference, *([self.reference_best] if self.reference_best else [])])
        self.reference_best = best
        stats = latency_stats(samples)
        evidence = assess(
            other=other_cores(before, after),
            loadavg=after.loadavg_1m,
            reference_ms=reference,
            reference_best_ms=best,
            tail_ratio=stats.tail_ratio,
            threads=self.threads,
        )
        return stats, evidence, runner.build_time_s


def _cleaner(stats: LatencyStats, evidence: Interference, kept: CalibrationPoint) -> bool:
    """A new attempt beats the kept one: less evidence of interference, then faster."""
    old = Interference.from_dict(kept.interference)
    new_key = (evidence.flagged, evidence.score(), stats.median_ms)
    return new_key < (old.flagged, old.score(), kept.stats.median_ms)

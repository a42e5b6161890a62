"""The latency model shared by the run-time controller and the server: what a forward
call at (resolution, batch size) is expected to cost, and how that expectation follows
the machine's load while running.

:class:`LatencyModel` is built from the sweep's records (:mod:`vitres.tune.records`) of one
model, backend and precision (:meth:`LatencyModel.from_records`), or from plain per-size
measurements such as a run-time calibration's (:meth:`LatencyModel.from_points`,
:mod:`vitres.runtime.calibration`). Where a (resolution, batch) point was measured, its
recorded median and p95 are the prediction. Elsewhere the tuner's cost model
(:func:`vitres.tune.costmodel.fit_latency`, median latency against patch tokens ``N``, one fit
per batch size) predicts the median; a batch size with no fit of its own is predicted
by a fit of every record's median against the tokens of the whole call, ``N × batch``.
A predicted p95 is the predicted median times the tail ratio ``p95 / median`` the sweep
measured (the median ratio of the measured records of that batch size, else of all).

:class:`OnlineCorrection` holds one multiplicative factor for every prediction: an
exponentially weighted moving average (in log space, with a half-life counted in
observations) of ``measured / predicted median``. A competing load that slows every
call by 40 % moves the factor to about 1.4 and so moves every prediction at once, the
feedback half of a feed-forward + feedback controller (Åström & Murray, *Feedback
Systems*, 2008, ch. 12). Each observed ratio is clipped to within a factor ``clip`` of
the current estimate before it enters the average, so a single outlier (a page fault,
a garbage collection) moves the factor by at most ``clip ** alpha``.

This module fits nothing new where the tuner already fitted: it reads records or points
and calls :mod:`vitres.tune.costmodel`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from vitres.tune.costmodel import CostFit, fit_cost, fit_latency
from vitres.tune.records import Measurement, SweepConfig, latest_by_key

Resolution = int | tuple[int, int]

SOURCES = ("measured", "cost-model", "cost-model-pooled")


def as_size(resolution: Resolution | Sequence[int]) -> tuple[int, int]:
    """``28`` -> ``(28, 28)``; ``(28, 40)`` stays. Sizes are (height, width) in pixels.

    Raises:
        ValueError: not a positive size or (height, width) pair.
    """
    if isinstance(resolution, bool):
        raise ValueError(f"resolution must be a positive int or (height, width), got {resolution}")
    if isinstance(resolution, int):
        size = (resolution, resolution)
    else:
        try:
            height, width = (int(v) for v in resolution)
        except (TypeError, ValueError):
            raise ValueError(
                f"resolution must be a positive int or (height, width), got {resolution!r}"
            ) from None
        size = (height, width)
    if min(size) <= 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return size


@dataclass(frozen=True)
class LatencyPrediction:
    """Expected latency of one forward call.

    Attributes:
        p95_ms: 95th percentile of the call's latency, milliseconds.
        median_ms: Median latency, milliseconds.
        source: ``"measured"`` (the sweep measured this point), ``"cost-model"`` (the fit
            of this batch size over tokens) or ``"cost-model-pooled"`` (the fit over
            ``tokens × batch`` of every batch size).
        correction: The online factor already applied (1.0 = none).
    """

    p95_ms: float
    median_ms: float
    source: str
    correction: float = 1.0

    def scaled(self, factor: float) -> LatencyPrediction:
        """The same prediction with both latencies multiplied by ``factor``."""
        return replace(
            self,
            p95_ms=self.p95_ms * factor,
            median_ms=self.median_ms * factor,
            correction=self.correction * factor,
        )


@dataclass(frozen=True)
class _Point:
    p95_ms: float
    median_ms: float
    tokens: int | None


@dataclass(frozen=True)
class LatencyPoint:
    """One measured (size, batch) point of a latency model.

    Attributes:
        size: ``(height, width)`` in pixels.
        batch: Images per call.
        median_ms: Median latency of one call, milliseconds.
        p95_ms: 95th percentile, milliseconds.
        tokens: Patch tokens at ``size`` (``None`` if unknown).
        accuracy: Top-1 accuracy at ``size`` (fraction), where measured.
    """

    size: tuple[int, int]
    batch: int
    median_ms: float
    p95_ms: float
    tokens: int | None = None
    accuracy: float | None = None


def _chosen_records(records: list[Measurement], wanted: dict[str, object]) -> list[Measurement]:
    """The usable records matching ``wanted`` (``None`` values match anything), which
    must then describe one model, backend, precision, device, thread count and patch.

    Raises:
        ValueError: no usable record, none matches a filter, or the rest mix configurations.
    """
    usable = [
        m
        for m in latest_by_key(records)
        # the run-time ladder changes resolution only: merged and token-budget records
        # stay out (the run-time paths neither merge tokens nor use a token budget)
        if m.ok
        and m.latency is not None
        and m.latency.median_ms > 0
        and m.config.merge is None
        and m.config.token_budget is None
    ]
    if not usable:
        raise ValueError(
            f"no measured records with a latency among {len(records)} record(s); run "
            "`vitres sweep` first (records with status error or predicted are not used)"
        )

    def value(m: Measurement, name: str) -> object:
        return m.patch_size if name == "patch_size" else getattr(m.config, name)

    chosen = usable
    for name, want in wanted.items():
        if want is not None:
            chosen = [m for m in chosen if value(m, name) == want]
            if not chosen:
                present = sorted({str(value(m, name)) for m in usable})
                raise ValueError(
                    f"no measured record with {name}={want!r}; the records have {name} in {present}"
                )
    for name in wanted:
        values = sorted({str(value(m, name)) for m in chosen})
        if len(values) > 1:
            raise ValueError(
                f"the records mix {name}s {values}; choose one with {name}=... (the "
                "latency model describes one model, backend and precision)"
            )
    return chosen


class LatencyModel:
    """Predicted latency per (resolution, batch size) of one model / backend / precision.

    Build it with :meth:`from_records` (sweep records) or :meth:`from_points` (plain
    per-size measurements, e.g. a run-time calibration). Predictions are those of the quiet machine the
    sweep ran on; wrap the model in :class:`OnlineCorrection` to follow the load.

    Attributes:
        model, backend, precision, device, threads, patch_size: What the records measured.
        measured: ``{(size, batch): point}`` of every measured point.
        fits: Cost-model fit of median latency over tokens, per batch size.
        pooled_fit: Fit of median latency over ``tokens × batch`` (every batch size).
        tail_ratio: Median ``p95 / median`` of measured records, per batch size.
        tail_ratio_all: Median ``p95 / median`` of every measured record.
        accuracy: Top-1 accuracy per measured resolution (fraction), where recorded.
    """

    def __init__(
        self,
        config: SweepConfig,
        patch_size: int | None,
        measured: dict[tuple[tuple[int, int], int], _Point],
        fits: dict[int, CostFit],
        pooled_fit: CostFit | None,
        tail_ratio: dict[int, float],
        tail_ratio_all: float,
        accuracy: dict[tuple[int, int], float],
        records: Sequence[Measurement],
        tokens_at: Callable[[tuple[int, int]], int | None] | None = None,
    ) -> None:
        self.model = config.model
        self.backend = config.backend
        self.precision = config.precision
        self.device = config.device
        self.threads = config.threads
        self.patch_size = patch_size
        self.measured = measured
        self.fits = fits
        self.pooled_fit = pooled_fit
        self.tail_ratio = tail_ratio
        self.tail_ratio_all = tail_ratio_all
        self.accuracy = accuracy
        self._records = list(records)
        self._config = config
        self._tokens_at = tokens_at

    # ------------------------------------------------------------------ building

    @classmethod
    def from_records(
        cls,
        records: Iterable[Measurement],
        backend: str | None = None,
        precision: str | None = None,
        *,
        model: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        patch_size: int | None = None,
    ) -> LatencyModel:
        """The latency model of the ``ok`` records matching the given filters.

        Records of several models, backends, precisions, devices, thread counts or patch
        sizes cannot be mixed: when more than one remains after filtering, name the one
        you want.

        Args:
            records: Sweep records (:func:`vitres.tune.records.read_results`).
            backend: Backend name, e.g. ``"eager"``.
            precision: Precision, e.g. ``"fp32"``.
            model: Model reference as recorded.
            device: Device as recorded.
            threads: Thread count as recorded.
            patch_size: Patch size actually used (the config's, else the model's own).

        Raises:
            ValueError: no usable record, or the records mix configurations.
        """
        records = list(records)
        chosen = _chosen_records(
            records,
            {
                "model": model,
                "backend": backend,
                "precision": precision,
                "device": device,
                "threads": threads,
                "patch_size": patch_size,
            },
        )
        points = [
            LatencyPoint(
                tuple(m.config.resolution),
                m.config.batch_size,
                m.latency.median_ms,
                m.latency.p95_ms,
                m.tokens,
                m.accuracy,
            )
            for m in chosen
        ]
        fits = {key.batch_size: fit for key, fit in fit_latency(chosen).items()}
        first = chosen[0]
        return cls._from_points(first.config, first.patch_size, points, fits, chosen)

    @classmethod
    def from_points(
        cls,
        points: Sequence[LatencyPoint],
        *,
        model: str,
        backend: str,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        patch_size: int | None = None,
        tokens_at: Callable[[tuple[int, int]], int | None] | None = None,
    ) -> LatencyModel:
        """The latency model of plain per-(size, batch) measurements, e.g. a run-time
        calibration's (:func:`vitres.runtime.calibration.calibrate`); no records needed.

        Args:
            points: The measured points (one model, backend, precision, device, threads).
            model, backend, precision, device, threads: What the points measured.
            patch_size: The patch size used.
            tokens_at: Patch tokens of a size not measured (for predicting it); without
                it only measured sizes can be predicted.

        Raises:
            ValueError: no point with a positive latency.
        """
        points = [p for p in points if p.median_ms > 0]
        if not points:
            raise ValueError(
                "no measured point with a positive latency; time at least one size (see "
                "vitres.runtime.calibration.calibrate) or run `vitres sweep`"
            )
        by_batch: dict[int, list[LatencyPoint]] = {}
        for p in points:
            if p.tokens is not None:
                by_batch.setdefault(p.batch, []).append(p)
        fits = {
            batch: fit_cost([p.tokens for p in group], [p.median_ms for p in group])
            for batch, group in by_batch.items()
            if len(group) >= 2
        }
        config = SweepConfig(
            model,
            points[0].size,
            patch_size,
            1,
            precision,
            backend,
            threads,
            device,
        )
        return cls._from_points(config, patch_size, points, fits, [], tokens_at)

    @classmethod
    def _from_points(
        cls,
        config: SweepConfig,
        patch_size: int | None,
        points: Sequence[LatencyPoint],
        fits: dict[int, CostFit],
        records: Sequence[Measurement],
        tokens_at: Callable[[tuple[int, int]], int | None] | None = None,
    ) -> LatencyModel:
        """The model of measured points and their per-batch fits: tail ratios, the pooled
        fit over ``tokens × batch`` and the accuracy per size."""
        measured: dict[tuple[tuple[int, int], int], _Point] = {}
        accuracy_sum: dict[tuple[int, int], list[float]] = {}
        ratios: dict[int, list[float]] = {}
        for p in points:
            measured[(p.size, p.batch)] = _Point(p.p95_ms, p.median_ms, p.tokens)
            ratios.setdefault(p.batch, []).append(p.p95_ms / p.median_ms)
            if p.accuracy is not None:
                accuracy_sum.setdefault(p.size, []).append(p.accuracy)
        tail_ratio = {b: statistics.median(r) for b, r in ratios.items()}
        tail_ratio_all = statistics.median([r for rs in ratios.values() for r in rs])
        pooled_points = [(p.tokens * p.batch, p.median_ms) for p in points if p.tokens is not None]
        pooled = None
        if pooled_points:
            tokens, values = zip(*pooled_points)
            pooled = fit_cost(tokens, values)
        accuracy = {size: statistics.fmean(a) for size, a in accuracy_sum.items()}
        return cls(
            config,
            patch_size,
            measured,
            fits,
            pooled,
            tail_ratio,
            tail_ratio_all,
            accuracy,
            records,
            tokens_at,
        )

    # ------------------------------------------------------------------ queries

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Measured resolutions, smallest first."""
        return sorted({size for size, _ in self.measured}, key=lambda s: (s[0] * s[1], s))

    @property
    def batch_sizes(self) -> list[int]:
        """Measured batch sizes, smallest first."""
        return sorted({batch for _, batch in self.measured})

    def tokens(self, resolution: Resolution) -> int | None:
        """Patch tokens at ``resolution`` (as recorded where measured, else from the
        patch size and the rounding policy the records show); ``None`` if unknown."""
        size = as_size(resolution)
        for (measured_size, _), point in self.measured.items():
            if measured_size == size and point.tokens is not None:
                return point.tokens
        if self._tokens_at is not None:
            return self._tokens_at(size)
        from vitres.tune.grid import estimate_tokens

        config = replace(self._config, resolution=size, patch_size=self.patch_size)
        return estimate_tokens(config, self._records)

    def predict(self, resolution: Resolution, batch: int = 1) -> LatencyPrediction:
        """Expected latency of one call at ``resolution`` with ``batch`` images.

        Raises:
            ValueError: bad resolution or batch, or the point is neither measured nor
                predictable (no token count or no fit).
        """
        size = as_size(resolution)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        point = self.measured.get((size, batch))
        if point is not None:
            return LatencyPrediction(point.p95_ms, point.median_ms, "measured")
        tokens = self.tokens(size)
        if tokens is None:
            raise ValueError(
                f"cannot predict {size[0]}x{size[1]}: its token count is unknown (the "
                "records carry no patch size); measure it with `vitres sweep`"
            )
        fit = self.fits.get(batch)
        if fit is not None:
            median, source = float(fit.predict(tokens)), "cost-model"
        elif self.pooled_fit is not None:
            median, source = float(self.pooled_fit.predict(tokens * batch)), "cost-model-pooled"
        else:
            raise ValueError(
                f"cannot predict {size[0]}x{size[1]} at batch {batch}: no cost-model fit "
                "(the records carry no token counts)"
            )
        ratio = self.tail_ratio.get(batch, self.tail_ratio_all)
        return LatencyPrediction(median * ratio, median, source)

    def p95_ms(self, resolution: Resolution, batch: int = 1) -> float:
        """Predicted p95 latency (ms) of one call."""
        return self.predict(resolution, batch).p95_ms

    def expected_accuracy(self, resolution: Resolution) -> float | None:
        """Top-1 accuracy (fraction) the sweep measured at ``resolution``.

        Between measured resolutions it is interpolated linearly in token count (in
        pixel area when token counts are unknown); outside the measured range, or
        without any recorded accuracy, it is ``None`` (unknown, never guessed).
        """
        size = as_size(resolution)
        if size in self.accuracy:
            return self.accuracy[size]
        if not self.accuracy:
            return None

        def scale(s: tuple[int, int]) -> float:
            tokens = self.tokens(s)
            return float(tokens) if tokens is not None else float(s[0] * s[1])

        known = sorted((scale(s), a) for s, a in self.accuracy.items())
        x = scale(size)
        below = [(k, a) for k, a in known if k <= x]
        above = [(k, a) for k, a in known if k >= x]
        if not below or not above:
            return None
        (x0, a0), (x1, a1) = below[-1], above[0]
        if x1 == x0:
            return (a0 + a1) / 2
        return a0 + (a1 - a0) * (x - x0) / (x1 - x0)

    def describe(self) -> str:
        """One line naming what the model describes and how many points were measured."""
        return (
            f"{self.model} on {self.backend}/{self.precision} ({self.device}): "
            f"{len(self.measured)} measured point(s), resolutions "
            f"{', '.join(f'{h}x{w}' for h, w in self.resolutions)}, batches {self.batch_sizes}"
        )


class OnlineCorrection:
    """A latency model corrected online by one EWMA factor of measured / predicted.

    Args:
        model: The quiet-machine latency model.
        half_life: Observations after which an old observation weighs half as much
            (``alpha = 1 - 2 ** (-1 / half_life)``).
        clip: Each observed ratio is clipped to ``[ratio / clip, ratio * clip]`` around
            the current estimate before averaging (> 1).
        initial: Starting factor.

    Example::

        corrected = OnlineCorrection(LatencyModel.from_records(read_results("r.jsonl")))
        corrected.observe(28, 1, measured_ms=1.9)
        corrected.predict(28).p95_ms
    """

    def __init__(
        self,
        model: LatencyModel,
        half_life: float = 8.0,
        clip: float = 3.0,
        initial: float = 1.0,
    ) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 observations, got {half_life}")
        if not clip > 1:
            raise ValueError(f"clip must be > 1, got {clip}")
        if not initial > 0:
            raise ValueError(f"initial factor must be > 0, got {initial}")
        self.model = model
        self.half_life = float(half_life)
        self.clip = float(clip)
        self.alpha = 1.0 - 2.0 ** (-1.0 / self.half_life)
        self._initial = float(initial)
        self._log_factor = math.log(initial)
        self.count = 0
        self.last_ratio: float | None = None

    @property
    def factor(self) -> float:
        """The current correction: measured latency is about ``factor ×`` the prediction."""
        return math.exp(self._log_factor)

    def reset(self) -> None:
        """Back to the initial factor, with no observations."""
        self._log_factor = math.log(self._initial)
        self.count = 0
        self.last_ratio = None

    def set_factor(self, factor: float) -> None:
        """Sets the factor directly (e.g. from calls timed during warm-up), keeping the
        observation count.

        Raises:
            ValueError: a factor that is not a positive finite number.
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"the correction factor must be a positive number, got {factor!r}")
        self._log_factor = math.log(factor)

    def observe(self, resolution: Resolution, batch: int, measured_ms: float) -> float:
        """Adds one measured call latency; returns the updated factor.

        Raises:
            ValueError: a latency that is not a positive finite number.
        """
        if not (isinstance(measured_ms, (int, float)) and math.isfinite(measured_ms)):
            raise ValueError(f"measured latency must be a finite number, got {measured_ms!r}")
        if measured_ms <= 0:
            raise ValueError(f"measured latency must be > 0 ms, got {measured_ms}")
        ratio = measured_ms / self.model.predict(resolution, batch).median_ms
        self.last_ratio = ratio
        log_ratio = math.log(ratio)
        bound = math.log(self.clip)
        log_ratio = min(max(log_ratio, self._log_factor - bound), self._log_factor + bound)
        self._log_factor += self.alpha * (log_ratio - self._log_factor)
        self.count += 1
        return self.factor

    def predict(self, resolution: Resolution, batch: int = 1) -> LatencyPrediction:
        """The model's prediction times the current factor."""
        return self.model.predict(resolution, batch).scaled(self.factor)

    def p95_ms(self, resolution: Resolution, batch: int = 1) -> float:
        """Corrected p95 latency (ms) of one call."""
        return self.predict(resolution, batch).p95_ms

    def expected_accuracy(self, resolution: Resolution) -> float | None:
        """The model's :meth:`LatencyModel.expected_accuracy` (accuracy is not corrected)."""
        return self.model.expected_accuracy(resolution)

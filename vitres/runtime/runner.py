"""The stream runner: one model, a ladder of resolutions, a controller, frame by frame.

:class:`AdaptiveRunner` prepares the backend for every ladder size and runs each of
them a few times before the first frame (so no first-call export, compile or allocator
growth lands inside the timed loop), then for each frame: resizes it to the size the
controller chose, runs the backend, times the whole frame with the injected clock, tells
the controller, and keeps the statistics (deadline hit rate, mean resolution, switches,
the sweep's expected accuracy of the sizes used).

Optional escalation (a cascade in the sense of Viola & Jones, 2001, and of
confidence-gated early exit, e.g. Teerapittayanon et al., *BranchyNet*, 2016): when the
frame's top softmax probability is below ``escalate_below`` and the corrected predicted
p95 of the next larger ladder size still fits in what is left of the deadline, the frame
is run again at that size and its answer replaces the first. What escalation costs
(extra milliseconds) and gains (answers changed; with labels, fixed minus broken) is in
:meth:`AdaptiveRunner.stats`.

Works with every backend behind :func:`vitres.backends.get_backend`: a backend whose
one prepared instance serves every size (eager, eager-bf16, ONNX Runtime's one dynamic
graph) is prepared once; any other (a static graph, a compiled shape) once per size.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitres.backends import Backend, get_backend
from vitres.backends.eager import EagerBackend
from vitres.runtime.controller import (
    Controller,
    FixedController,
    PredictiveController,
    StepController,
    check_deadline,
    check_ladder,
    parse_controller,
)
from vitres.runtime.latency import LatencyModel, OnlineCorrection

Records = str | os.PathLike[str] | Sequence[Any] | LatencyModel


@dataclass
class FrameResult:
    """What one frame got.

    Attributes:
        frame: Index of the frame in the run (0-based, processed frames only).
        t_s: Seconds from the start of the first frame to the start of this one.
        resolution: Size the answer came from (the escalated size when escalated).
        latency_ms: Wall time of the whole frame: resize, run(s), softmax.
        deadline_ms: The deadline in force for this frame.
        met: ``latency_ms <= deadline_ms``.
        pred: Predicted class index.
        confidence: Top softmax probability of ``pred``.
        label: True class when known.
        first_resolution: Size the controller chose (differs from ``resolution`` only
            when escalated).
        first_pred: Answer at ``first_resolution``.
        escalated: True when the frame was run again at a larger size.
    """

    frame: int
    t_s: float
    resolution: int
    latency_ms: float
    deadline_ms: float
    met: bool
    pred: int
    confidence: float
    label: int | None = None
    first_resolution: int | None = None
    first_pred: int | None = None
    escalated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The trace line: every field, ``label`` only when known."""
        d = asdict(self)
        if d["label"] is None:
            del d["label"]
        return d


@dataclass
class RunStats:
    """Statistics of the frames processed so far.

    Attributes:
        frames: Frames processed.
        hits: Frames that met their deadline.
        hit_rate: ``hits / frames`` (``nan`` before the first frame).
        mean_resolution: Mean size the answers came from.
        switches: Frames whose controller-chosen size differs from the previous frame's.
        expected_accuracy: Mean over frames of the sweep's accuracy at the size used
            (``None`` when the records hold no accuracy for a size used).
        accuracy: Fraction of labelled frames answered correctly (``None`` without labels).
        labelled: Frames with a label.
        mean_latency_ms, p95_latency_ms: Over the frames' latencies.
        frames_per_resolution: Frames answered at each size.
        infeasible: The controller found that no ladder size meets the deadline.
        warmup_s: Seconds the warm-up took.
        escalations: Frames run again at a larger size.
        escalation_ms: Total extra milliseconds the second runs took.
        escalation_changed: Escalated frames whose answer changed.
        escalation_fixed: Escalated labelled frames wrong at first and right after.
        escalation_broken: Escalated labelled frames right at first and wrong after.
    """

    frames: int = 0
    hits: int = 0
    hit_rate: float = math.nan
    mean_resolution: float = math.nan
    switches: int = 0
    expected_accuracy: float | None = None
    accuracy: float | None = None
    labelled: int = 0
    mean_latency_ms: float = math.nan
    p95_latency_ms: float = math.nan
    frames_per_resolution: dict[int, int] = field(default_factory=dict)
    infeasible: bool = False
    warmup_s: float = 0.0
    escalations: int = 0
    escalation_ms: float = 0.0
    escalation_changed: int = 0
    escalation_fixed: int = 0
    escalation_broken: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frames_per_resolution"] = {str(k): v for k, v in self.frames_per_resolution.items()}
        return d


def deadline_from(target_fps: float | None, max_latency_ms: float | None) -> float:
    """The per-frame deadline (ms) from exactly one of a frame rate or a latency.

    Raises:
        ValueError: both or neither given, or a non-positive value.
    """
    if (target_fps is None) == (max_latency_ms is None):
        raise ValueError(
            "give exactly one of target_fps (frames per second) or max_latency_ms (per frame)"
        )
    if target_fps is not None:
        if not isinstance(target_fps, (int, float)) or not target_fps > 0:
            raise ValueError(f"target_fps must be > 0, got {target_fps!r}")
        return 1000.0 / float(target_fps)
    return check_deadline(max_latency_ms)  # type: ignore[arg-type]


def frame_tensor(frame: Any) -> Tensor:
    """A frame as a tensor (C, H, W): accepts a tensor (C, H, W) or (H, W), a numpy
    array (H, W) or (H, W, C), or a Pillow image. uint8 stays uint8 (0..255); float
    frames are taken as values in [0, 1].

    Raises:
        ValueError: anything else.
    """
    if hasattr(frame, "convert") and hasattr(frame, "size") and not isinstance(frame, Tensor):
        frame = np.asarray(frame)
    if isinstance(frame, np.ndarray):
        if frame.ndim == 2:
            frame = frame[:, :, None]
        if frame.ndim != 3:
            raise ValueError(f"a numpy frame must be (H, W) or (H, W, C), got {frame.shape}")
        frame = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    if not isinstance(frame, Tensor):
        raise ValueError(
            f"a frame must be a tensor, numpy array or Pillow image, got {type(frame).__name__}"
        )
    if frame.ndim == 2:
        frame = frame[None]
    if frame.ndim != 3 or frame.shape[0] not in (1, 3) or min(frame.shape[1:]) < 1:
        raise ValueError(
            f"a frame tensor must be (C, H, W) with 1 or 3 channels, got {tuple(frame.shape)}"
        )
    return frame


def load_records(records: Records, backend: str | None) -> LatencyModel:
    """A latency model from a results path, a list of records, or an existing model."""
    if isinstance(records, LatencyModel):
        return records
    if isinstance(records, (str, os.PathLike)):
        from vitres.tune.records import read_results

        if not os.path.exists(records):
            raise FileNotFoundError(
                f"records file {os.fspath(records)} does not exist; write one with `vitres "
                "sweep --out FILE` or leave records out"
            )
        records = read_results(records)
    return LatencyModel.from_records(records, backend=backend)


def ladder_step(ladder: Sequence[int]) -> int:
    """The smallest gap between ladder sizes (32 for a one-size ladder)."""
    sizes = sorted(set(ladder))
    gaps = [b - a for a, b in zip(sizes, sizes[1:])]
    return min(gaps) if gaps else 32


class AdaptiveRunner:
    """Runs frames one by one at the resolution a controller chooses.

    Args:
        model_or_backend: An ``nn.Module`` (a backend named ``backend`` is prepared for
            it), or a :class:`~vitres.backends.Backend` already prepared for the model
            (then ``model_config`` or the backend's ``model.config`` gives the input
            normalisation).
        ladder: Square sizes (pixels) the controller may choose.
        target_fps: Frames per second to keep (deadline ``1000 / target_fps`` ms), or
        max_latency_ms: the per-frame deadline itself.
        controller: ``"predictive"`` (needs ``records``), ``"step"``, ``"fixed:R"`` or a
            :class:`~vitres.runtime.controller.Controller`.
        records: Sweep records (results path, list of records, or a
            :class:`LatencyModel`) for the predictive controller, escalation, expected
            accuracy and the feasibility check.
        backend: Backend name when a model is given (``"eager"``, ``"eager-bf16"``,
            ``"onnxruntime"`` ...).
        backend_options: Constructor keywords of the backend (``threads`` ...).
        escalate_below: Escalation threshold τ on the top softmax probability (``None``:
            no escalation).
        clock: Seconds as a float (``time.perf_counter``); inject a fake one in tests.
        warmup_calls: Calls per ladder size before the first frame.
        model_config: Config with ``in_chans``, ``mean`` and ``std`` (default: the model's).
        step: Pixels per change of the step controller (default: the ladder's spacing).

    Raises:
        ValueError: bad ladder, deadline, controller or records; a predictive
            controller or escalation without records.
    """

    def __init__(
        self,
        model_or_backend: nn.Module | Backend,
        ladder: Sequence[int],
        *,
        target_fps: float | None = None,
        max_latency_ms: float | None = None,
        controller: str | Controller = "predictive",
        records: Records | None = None,
        backend: str = "eager",
        backend_options: dict[str, Any] | None = None,
        escalate_below: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        warmup_calls: int = 3,
        model_config: Any = None,
        step: int | None = None,
    ) -> None:
        self.ladder = check_ladder(ladder)
        self.deadline_ms = deadline_from(target_fps, max_latency_ms)
        self.clock = clock
        self.warmup_calls = max(1, int(warmup_calls))
        if isinstance(model_or_backend, Backend):
            self._given_backend: Backend | None = model_or_backend
            if model_or_backend.build_time_s is None:
                raise ValueError(
                    "the backend given to AdaptiveRunner is not prepared; call "
                    "backend.prepare(model, shape) first, or pass the model itself"
                )
            self.model = getattr(model_or_backend, "model", None)
            self.backend_name = model_or_backend.name
        elif isinstance(model_or_backend, nn.Module):
            self._given_backend = None
            self.model = model_or_backend
            self.backend_name = backend
        else:
            raise ValueError(
                "AdaptiveRunner needs an nn.Module or a prepared vitres Backend, got "
                f"{type(model_or_backend).__name__}"
            )
        config = model_config if model_config is not None else getattr(self.model, "config", None)
        if config is None or not all(hasattr(config, a) for a in ("in_chans", "mean", "std")):
            raise ValueError(
                "cannot tell the input normalisation: pass model_config= (with in_chans, "
                "mean and std) when the backend does not hold the model"
            )
        self.in_chans, self.mean, self.std = config.in_chans, config.mean, config.std
        self.backend_options = dict(backend_options or {})
        self.latency: LatencyModel | None = (
            None if records is None else load_records(records, self.backend_name)
        )
        self.controller = self._make_controller(controller, step)
        self.correction: OnlineCorrection | None = None
        if isinstance(self.controller, PredictiveController):
            self.correction = self.controller.correction
        elif self.latency is not None:
            self.correction = OnlineCorrection(self.latency)
        if escalate_below is not None:
            if not 0 < escalate_below <= 1:
                raise ValueError(f"escalate_below must be in (0, 1], got {escalate_below}")
            if self.correction is None:
                raise ValueError(
                    "escalation needs sweep records (to predict whether a second run fits "
                    "the deadline); pass records="
                )
        self.escalate_below = escalate_below
        self._backends: dict[int, Backend] = {}
        self.warmed = False
        self.warmup_s = 0.0
        self._next: int | None = None
        self._previous_choice: int | None = None
        self._t0: float | None = None
        self.results: list[FrameResult] = []
        self._switches = 0
        self._escalation_ms = 0.0

    # ------------------------------------------------------------------ set-up

    def _make_controller(self, controller: str | Controller, step: int | None) -> Controller:
        if isinstance(controller, Controller):
            if isinstance(controller, PredictiveController) and self.latency is None:
                self.latency = controller.model
            return controller
        if not isinstance(controller, str):
            raise ValueError(f"controller must be a name or a Controller, got {controller!r}")
        kind, size = parse_controller(controller)
        if kind == "fixed":
            return FixedController(size)  # type: ignore[arg-type]
        if kind == "step":
            # a target nothing meets: start where the seed's rule would end up
            start = self.ladder[0] if self._nothing_fits() else None
            return StepController(step=step or ladder_step(self.ladder), start_res=start)
        if self.latency is None:
            raise ValueError(
                "the predictive controller needs sweep records (records=results.jsonl from "
                "`vitres sweep`); or use controller='step' or 'fixed:R'"
            )
        return PredictiveController(self.latency)

    def _nothing_fits(self) -> bool:
        if self.latency is None:
            return False
        return min(self.latency.p95_ms(s) for s in self.ladder) > self.deadline_ms

    @property
    def infeasible(self) -> bool:
        """No ladder size's predicted p95 meets the deadline (``False`` without records)."""
        if self.controller.infeasible:
            return True
        if self.latency is None:
            return False
        factor = 1.0 if self.correction is None else self.correction.factor
        return min(self.latency.p95_ms(s) for s in self.ladder) * factor > self.deadline_ms

    def set_deadline(
        self, *, target_fps: float | None = None, max_latency_ms: float | None = None
    ) -> None:
        """Changes the deadline from the next frame on (exactly one argument)."""
        self.deadline_ms = deadline_from(target_fps, max_latency_ms)

    def _shares_sizes(self, backend: Backend) -> bool:
        info = getattr(backend, "build_info", None) or {}
        return isinstance(backend, EagerBackend) or bool(info.get("dynamic"))

    def backend_for(self, size: int) -> Backend:
        """The prepared backend that runs ``size`` (prepared now if needed)."""
        if self._given_backend is not None:
            return self._given_backend
        if size in self._backends:
            return self._backends[size]
        shared = next((b for b in self._backends.values() if self._shares_sizes(b)), None)
        if shared is None:
            shared = get_backend(self.backend_name, **self.backend_options)
            shared.prepare(self.model, (1, self.in_chans, size, size))
        self._backends[size] = shared
        return shared

    def warm_up(self) -> None:
        """Prepares every ladder size and runs it ``warmup_calls`` times (idempotent).

        Each size's last warm-up call goes through the whole frame path (resize, run,
        softmax) and is timed with the runner's clock; with records, the median of
        those times over their predicted medians seeds the online correction, so the
        first frames already see this process's speed (resize included) rather than
        the sweep's.
        """
        if self.warmed:
            return
        start = time.perf_counter()
        ratios = []
        for size in self.ladder:
            backend = self.backend_for(size)
            for _ in range(self.warmup_calls - 1):
                backend.run(torch.zeros(1, self.in_chans, size, size))
            frame = torch.zeros(self.in_chans, size, size, dtype=torch.uint8)
            t0 = self.clock()
            self._classify(frame, size)
            elapsed_ms = (self.clock() - t0) * 1000.0
            if self.latency is not None and elapsed_ms > 0:
                ratios.append(elapsed_ms / self.latency.predict(size).median_ms)
        if ratios and self.correction is not None and self.correction.count == 0:
            self.correction.set_factor(float(np.median(ratios)))
        self.warmup_s = time.perf_counter() - start
        self.warmed = True

    # ------------------------------------------------------------------ frames

    def preprocess(self, frame: Any, size: int) -> Tensor:
        """The frame resized to ``size`` and normalised: float32 (1, C, size, size)."""
        from vitres.data import prepare_batch

        image = frame_tensor(frame)
        return prepare_batch(
            image[None], size, mean=self.mean, std=self.std, in_chans=self.in_chans
        )

    def _classify(self, frame: Any, size: int) -> tuple[int, float]:
        logits = self.backend_for(size).run(self.preprocess(frame, size))
        probs = torch.softmax(logits.float(), dim=-1)[0]
        confidence, index = probs.max(dim=-1)
        return int(index), float(confidence)

    def _escalation_size(self, size: int) -> int | None:
        larger = [s for s in self.ladder if s > size]
        return larger[0] if larger else None

    def process(self, frame: Any, label: int | None = None) -> FrameResult:
        """Classifies one frame at the controller's size; returns what it got.

        The first call warms every ladder size first (outside the frame's timing).
        """
        self.warm_up()
        if self._next is None:
            self._next = self.controller.start(self.ladder, self.deadline_ms)
        size, deadline = self._next, self.deadline_ms
        start = self.clock()
        if self._t0 is None:
            self._t0 = start
        pred, confidence = self._classify(frame, size)
        first_end = self.clock()
        first_ms = (first_end - start) * 1000.0
        answer, first_pred, escalated = size, pred, False
        higher = self._escalation_size(size)
        if (
            self.escalate_below is not None
            and confidence < self.escalate_below
            and higher is not None
            and self.correction is not None
            and first_ms + self.correction.p95_ms(higher) <= deadline
        ):
            pred, confidence = self._classify(frame, higher)
            second_ms = (self.clock() - first_end) * 1000.0
            if second_ms > 0:
                self.correction.observe(higher, 1, second_ms)
            self._escalation_ms += second_ms
            answer, escalated = higher, True
        latency_ms = (self.clock() - start) * 1000.0
        result = FrameResult(
            frame=len(self.results),
            t_s=start - self._t0,
            resolution=answer,
            latency_ms=latency_ms,
            deadline_ms=deadline,
            met=latency_ms <= deadline,
            pred=pred,
            confidence=confidence,
            label=label,
            first_resolution=size,
            first_pred=first_pred,
            escalated=escalated,
        )
        if self._previous_choice is not None and size != self._previous_choice:
            self._switches += 1
        self._previous_choice = size
        self.results.append(result)
        if self.correction is not None and not isinstance(self.controller, PredictiveController):
            if first_ms > 0:
                self.correction.observe(size, 1, first_ms)
        self._next = self.controller.observe(size, max(first_ms, 1e-9), self.deadline_ms)
        return result

    @property
    def next_resolution(self) -> int | None:
        """The size the next frame will run at (``None`` before the first frame)."""
        return self._next

    def stats(self) -> RunStats:
        """Statistics of every frame so far."""
        results = self.results
        stats = RunStats(
            warmup_s=self.warmup_s, switches=self._switches, infeasible=self.infeasible
        )
        if not results:
            return stats
        latencies = np.array([r.latency_ms for r in results])
        stats.frames = len(results)
        stats.hits = sum(r.met for r in results)
        stats.hit_rate = stats.hits / stats.frames
        stats.mean_resolution = float(np.mean([r.resolution for r in results]))
        stats.mean_latency_ms = float(latencies.mean())
        stats.p95_latency_ms = float(np.percentile(latencies, 95))
        stats.frames_per_resolution = dict(sorted(Counter(r.resolution for r in results).items()))
        if self.latency is not None:
            expected = [self.latency.expected_accuracy(r.resolution) for r in results]
            if all(e is not None for e in expected):
                stats.expected_accuracy = float(np.mean(expected))
        labelled = [r for r in results if r.label is not None]
        stats.labelled = len(labelled)
        if labelled:
            stats.accuracy = sum(r.pred == r.label for r in labelled) / len(labelled)
        escalated = [r for r in results if r.escalated]
        stats.escalations = len(escalated)
        stats.escalation_ms = self._escalation_ms
        stats.escalation_changed = sum(r.pred != r.first_pred for r in escalated)
        stats.escalation_fixed = sum(
            r.label is not None and r.first_pred != r.label and r.pred == r.label for r in escalated
        )
        stats.escalation_broken = sum(
            r.label is not None and r.first_pred == r.label and r.pred != r.label for r in escalated
        )
        return stats

"""Per-frame resolution controllers: given the last frame's measured latency and the
deadline, choose the next frame's resolution from a ladder of sizes.

* :class:`StepController` is the rule of the seed "ViT模型分辨率调优实战"
  (``AdaptiveResolution(min_res, max_res, target_fps)``): after each frame, if its FPS
  (``1000 / latency_ms``) is above the target, the resolution goes up by ``step`` pixels,
  if it is below, down by ``step``, clamped to ``[min_res, max_res]``. It is kept, exactly,
  as the reference to beat: at a steady load it oscillates between the largest size that
  meets the target and the next one up (raising the size whenever a frame is fast enough
  guarantees a miss on the next), and after a load change it walks one step per frame.
* :class:`FixedController` always answers the same size.
* :class:`PredictiveController` is feed-forward plus feedback: it picks the most accurate
  size whose predicted p95 latency (the sweep's records and cost model,
  :class:`vitres.runtime.latency.LatencyModel`) fits the deadline with a margin, with
  every prediction scaled by an online correction
  (:class:`vitres.runtime.latency.OnlineCorrection`). It downshifts at once on a measured
  miss (to the size the missed frame's own slowdown says fits) or on a predicted miss,
  and upshifts only when the larger size fits with the margin and has done so for a
  dwell time -- hysteresis in latency and in time, so a steady load gives a steady size
  (the classic remedy for relay chatter; Åström & Murray, *Feedback Systems*, 2008).

Sizes are square side lengths in pixels (ints). Controllers are pure state machines over
the numbers they are given; they run no model and read no clock.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from vitres.runtime.latency import LatencyModel, OnlineCorrection


def check_ladder(ladder: Sequence[int]) -> list[int]:
    """The ladder as sorted distinct positive ints.

    Raises:
        ValueError: empty, or a size that is not a positive int.
    """
    sizes = []
    for size in ladder:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(
                f"ladder sizes must be positive ints (square sides in pixels), got {size!r} "
                f"in {list(ladder)}"
            )
        sizes.append(size)
    if not sizes:
        raise ValueError("the ladder is empty; give at least one resolution, e.g. [16, 20, 28]")
    return sorted(set(sizes))


def check_deadline(deadline_ms: float) -> float:
    """The deadline as a positive finite float.

    Raises:
        ValueError: not a positive finite number of milliseconds.
    """
    if not isinstance(deadline_ms, (int, float)) or not math.isfinite(deadline_ms):
        raise ValueError(f"the deadline must be a finite number of ms, got {deadline_ms!r}")
    if deadline_ms <= 0:
        raise ValueError(f"the deadline must be > 0 ms, got {deadline_ms}")
    return float(deadline_ms)


class Controller(ABC):
    """Chooses each frame's resolution from a ladder.

    Call :meth:`start` once (it returns the first frame's size), then :meth:`observe`
    after every frame with what that frame measured (it returns the next frame's size).
    The deadline may change between calls.
    """

    name: str = ""

    def __init__(self) -> None:
        self.ladder: list[int] = []

    @abstractmethod
    def start(self, ladder: Sequence[int], deadline_ms: float) -> int:
        """Resets the controller for a new stream; returns the first frame's size."""

    @abstractmethod
    def observe(self, resolution: int, latency_ms: float, deadline_ms: float) -> int:
        """Takes the last frame's size and measured latency; returns the next size."""

    @property
    def infeasible(self) -> bool:
        """True when the controller knows no ladder size can meet the deadline."""
        return False


class FixedController(Controller):
    """Always ``resolution`` (which must be on the ladder)."""

    name = "fixed"

    def __init__(self, resolution: int) -> None:
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
            raise ValueError(f"fixed resolution must be a positive int, got {resolution!r}")
        self.resolution = resolution

    def start(self, ladder: Sequence[int], deadline_ms: float) -> int:
        self.ladder = check_ladder(ladder)
        check_deadline(deadline_ms)
        if self.resolution not in self.ladder:
            raise ValueError(
                f"fixed resolution {self.resolution} is not on the ladder {self.ladder}; add "
                "it to the ladder or choose one of those sizes"
            )
        return self.resolution

    def observe(self, resolution: int, latency_ms: float, deadline_ms: float) -> int:
        return self.resolution


class StepController(Controller):
    """The seed's rule, exactly: ±``step`` px per frame on FPS feedback, clamped.

    After each frame: ``fps = 1000 / latency_ms``; if ``fps > target_fps`` the size becomes
    ``min(size + step, max_res)``, if ``fps < target_fps`` it becomes
    ``max(size - step, min_res)``, and at exactly the target it stays. ``target_fps`` is
    ``1000 / deadline_ms``. A result off the ladder is snapped to the nearest ladder size
    (the smaller on a tie); with a ladder of spacing ``step`` from ``min_res`` none is.

    Args:
        step: Pixels per change (the seed's 32).
        min_res: Smallest size (default: the ladder's smallest).
        max_res: Largest size (default: the ladder's largest).
        start_res: First frame's size (default ``max_res``).
    """

    name = "step"

    def __init__(
        self,
        step: int = 32,
        min_res: int | None = None,
        max_res: int | None = None,
        start_res: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ValueError(f"step must be a positive int of pixels, got {step!r}")
        self.step = step
        self._min_res, self._max_res, self._start_res = min_res, max_res, start_res
        self.min_res = self.max_res = 0

    def start(self, ladder: Sequence[int], deadline_ms: float) -> int:
        self.ladder = check_ladder(ladder)
        check_deadline(deadline_ms)
        self.min_res = self._min_res if self._min_res is not None else self.ladder[0]
        self.max_res = self._max_res if self._max_res is not None else self.ladder[-1]
        if self.min_res > self.max_res:
            raise ValueError(f"min_res {self.min_res} is above max_res {self.max_res}")
        first = self._start_res if self._start_res is not None else self.max_res
        return self._snap(min(max(first, self.min_res), self.max_res))

    def _snap(self, size: int) -> int:
        return min(self.ladder, key=lambda s: (abs(s - size), s))

    def observe(self, resolution: int, latency_ms: float, deadline_ms: float) -> int:
        target_fps = 1000.0 / check_deadline(deadline_ms)
        fps = math.inf if latency_ms <= 0 else 1000.0 / latency_ms
        if fps > target_fps:
            size = min(resolution + self.step, self.max_res)
        elif fps < target_fps:
            size = max(resolution - self.step, self.min_res)
        else:
            size = resolution
        return self._snap(size)


@dataclass(frozen=True)
class Decision:
    """Why the predictive controller chose the size it chose (for traces and tests).

    Attributes:
        resolution: The chosen size.
        reason: ``"start"``, ``"hold"``, ``"measured-miss"``, ``"predicted-miss"``,
            ``"upshift"`` or ``"infeasible"`` (nothing fits: the smallest size).
        factor: The online correction after this frame.
    """

    resolution: int
    reason: str
    factor: float


class PredictiveController(Controller):
    """Feed-forward from the latency model, feedback from an online correction.

    Args:
        latency: The sweep's latency model (wrapped in a fresh :class:`OnlineCorrection`)
            or an existing correction to share (e.g. with the runner).
        margin: Hysteresis in latency. The first size, and every size switched to, is
            chosen among those with ``corrected p95 × (1 + margin) ≤ deadline`` (if any;
            else among those that fit at all); the size in use is kept while its
            ``corrected p95 ≤ deadline`` and no frame misses. So a size entered with
            headroom is not left over noise smaller than the margin.
        dwell: Hysteresis in time: an upshift must have been possible for ``dwell``
            consecutive frames (a frame counts when the larger size fits with the margin
            on the corrected prediction and fits at all at that frame's own measured /
            predicted ratio), at least ``dwell`` frames after the last switch.
        half_life: Half-life (frames) of the correction when it is created here.
        clip: Outlier clip of the correction when it is created here.
        batch: Batch size of each call (1 for a stream).
        tail_window: Frames whose measured / predicted ratios give the learned tail.
        min_tail_frames: Frames before the learned tail replaces the sweep's: until then
            a size costs the sweep's p95 × the correction; after, its predicted median ×
            the correction × the measured p95 / median of the window's ratios. So a sweep
            taken on a busy machine (a p95 far above what this machine now shows) cannot
            pin the controller to its smallest size, and an optimistic one cannot keep it
            missing for longer than this settling window.

    The preference order is accuracy: the sweep's accuracy per size where every ladder
    size has one (ties go to the smaller size), else size (larger = more accurate).
    """

    name = "predictive"

    def __init__(
        self,
        latency: LatencyModel | OnlineCorrection,
        *,
        margin: float = 0.10,
        dwell: int = 15,
        half_life: float = 8.0,
        clip: float = 3.0,
        batch: int = 1,
        tail_window: int = 64,
        min_tail_frames: int = 20,
    ) -> None:
        super().__init__()
        if not 1 <= min_tail_frames <= tail_window:
            raise ValueError(
                f"need 1 <= min_tail_frames <= tail_window, got {min_tail_frames}, {tail_window}"
            )
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if isinstance(dwell, bool) or not isinstance(dwell, int) or dwell < 1:
            raise ValueError(f"dwell must be a positive number of frames, got {dwell!r}")
        self.correction = (
            latency
            if isinstance(latency, OnlineCorrection)
            else OnlineCorrection(latency, half_life=half_life, clip=clip)
        )
        self.model = self.correction.model
        self.margin, self.dwell, self.batch = float(margin), dwell, batch
        self.preference: list[int] = []
        self.last: Decision | None = None
        self._since_switch = 0
        self._upshift_frames = 0
        self._infeasible = False
        self._ratios: deque[float] = deque(maxlen=tail_window)
        self.min_tail_frames = min_tail_frames

    # ------------------------------------------------------------------ helpers

    def _order(self, ladder: list[int]) -> list[int]:
        """Ladder sizes from least to most preferred."""
        accuracy = {s: self.model.expected_accuracy(s) for s in ladder}
        if all(a is not None for a in accuracy.values()):
            return sorted(ladder, key=lambda s: (accuracy[s], -s))
        return list(ladder)

    def _best(self, deadline_ms: float, factor: float, margin: float) -> int | None:
        """The most preferred size whose tail latency at ``factor`` × (1 + margin) fits."""
        fitting = [
            s for s in self.preference if self._cost(s, factor) * (1 + margin) <= deadline_ms
        ]
        return fitting[-1] if fitting else None

    @property
    def tail_ratio(self) -> float | None:
        """The p95 of the recent frames' latency over what the correction expected just
        before each (measured / predicted median / the correction then), once
        ``min_tail_frames`` frames are in; ``None`` before (the sweep's tail is used).
        Relative to the correction of the moment, a load that rises or falls shifts the
        level, not the tail."""
        if len(self._ratios) < self.min_tail_frames:
            return None
        ordered = sorted(self._ratios)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def _cost(self, size: int, factor: float, use: str = "learned") -> float:
        """The p95 latency of ``size`` at correction ``factor``: the sweep's p95 × the
        correction until the tail is learned, then the predicted median × the correction
        × the learned tail. ``use="hold"`` takes the smaller of the two (keeping a size
        is not given up on a window that still holds a load step), ``"cautious"`` the
        larger (a downshift after a miss is never less safe than the sweep's tail)."""
        prior = self.model.p95_ms(size, self.batch) * factor
        tail = self.tail_ratio
        if tail is None:
            return prior
        learned = self.model.predict(size, self.batch).median_ms * factor * tail
        return {"hold": min, "cautious": max}.get(use, lambda a, b: b)(prior, learned)

    @property
    def infeasible(self) -> bool:
        return self._infeasible

    @property
    def factor(self) -> float:
        """The current online correction."""
        return self.correction.factor

    def _decide(self, resolution: int, reason: str) -> int:
        self.last = Decision(resolution, reason, self.correction.factor)
        return resolution

    # ------------------------------------------------------------------ interface

    def _select(
        self, deadline_ms: float, factor: float, sizes: Sequence[int], use: str = "learned"
    ) -> int | None:
        """Where a switch goes: the most preferred of ``sizes`` that fits with the
        margin, else the most preferred that fits at all, else ``None``."""
        for margin in (self.margin, 0.0):
            fitting = [
                s
                for s in self.preference
                if s in sizes and self._cost(s, factor, use) * (1 + margin) <= deadline_ms
            ]
            if fitting:
                return fitting[-1]
        return None

    def start(self, ladder: Sequence[int], deadline_ms: float) -> int:
        self.ladder = check_ladder(ladder)
        deadline_ms = check_deadline(deadline_ms)
        for size in self.ladder:  # every size must be predictable before the first frame
            self.model.predict(size, self.batch)
        self.preference = self._order(self.ladder)
        self._since_switch = 0
        self._upshift_frames = 0
        best = self._select(deadline_ms, self.correction.factor, self.ladder)
        self._infeasible = best is None
        if best is None:
            return self._decide(self.ladder[0], "infeasible")
        return self._decide(best, "start")

    def observe(self, resolution: int, latency_ms: float, deadline_ms: float) -> int:
        deadline_ms = check_deadline(deadline_ms)
        before = self.correction.factor
        factor = self.correction.observe(resolution, self.batch, latency_ms)
        self._ratios.append(self.correction.last_ratio / before)
        self._since_switch += 1
        smallest = self.ladder[0]
        self._infeasible = self._best(deadline_ms, factor, 0.0) is None
        choice, reason = resolution, "hold"
        ratio = self.correction.last_ratio or factor
        if latency_ms > deadline_ms:
            # The missed frame's own slowdown (clipped like the correction's input) says
            # what fits now, when it is worse than the average.
            instant = min(max(ratio, factor), factor * self.correction.clip)
            smaller = [s for s in self.ladder if s < resolution]
            target = self._select(deadline_ms, instant, smaller, use="cautious")
            choice = target if target is not None else smallest
            reason = "measured-miss"
        elif self._cost(resolution, factor, "hold") > deadline_ms:
            target = self._select(deadline_ms, factor, self.ladder, use="cautious")
            choice = target if target is not None else smallest
            reason = "predicted-miss"
        else:
            # A frame counts toward an upshift when a more preferred size fits with the
            # margin on the average AND would have fitted this frame's own slowdown (so a
            # rising load, which the average lags, never triggers one).
            up = self._best(deadline_ms, factor, self.margin)
            better = (
                up is not None
                and self.preference.index(up) > self.preference.index(resolution)
                and self._cost(up, ratio) <= deadline_ms
            )
            self._upshift_frames = self._upshift_frames + 1 if better else 0
            if better and min(self._upshift_frames, self._since_switch) >= self.dwell:
                choice, reason = up, "upshift"
        if self._infeasible:
            reason = "infeasible"
        if choice != resolution:
            self._since_switch = 0
            self._upshift_frames = 0
        return self._decide(choice, reason)


def parse_controller(spec: str) -> tuple[str, int | None]:
    """``"predictive"`` / ``"step"`` / ``"fixed:28"`` -> ``(kind, size or None)``.

    Raises:
        ValueError: an unknown controller or a bad fixed size.
    """
    text = spec.strip().lower()
    if text in ("predictive", "step"):
        return text, None
    if text.startswith("fixed:"):
        size = text.partition(":")[2]
        if size.isdigit() and int(size) > 0:
            return "fixed", int(size)
        raise ValueError(f"bad controller {spec!r}: fixed needs a size in pixels, e.g. fixed:28")
    raise ValueError(
        f"unknown controller {spec!r}; expected predictive, step or fixed:R (e.g. fixed:28)"
    )

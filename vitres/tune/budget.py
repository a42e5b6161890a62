"""The deployment budget: hardware limits, size limits and the acceptance rule's thresholds.

A :class:`Budget` says what a deployable config must meet (latency, throughput, memory,
input size) and how it is judged against the baseline (:mod:`vitres.tune.rule`). It is
validated when made, so a negative, zero or NaN limit never reaches a decision.

Task presets (seed "ViT模型分辨率调优实战") are starting budgets:

- ``realtime``: at most 224 px on the model's own scale, at least 30 FPS;
- ``high-precision``: at least 384 px on the model's own scale.

"On the model's scale" means relative to the native side: a preset written for a 224 px
model keeps its ratio to the native size, so for a 28 px Fashion-MNIST model
``realtime`` allows sides up to 28 px (224/224 of native) and ``high-precision`` asks
for sides of at least 48 px (384/224 of native). The side of a non-square input is its
equal-area side ``sqrt(height · width)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vitres.tune.records import Measurement

ACC_FORMS = ("relative", "points")
SPEED_FORMS = ("time", "throughput")
REFERENCE_SIDE = 224.0  # the presets are written for a 224 px model
TASKS: dict[str, dict[str, Any]] = {
    "realtime": {"min_fps": 30.0, "max_side_scale": 224.0 / REFERENCE_SIDE},
    "high-precision": {"min_side_scale": 384.0 / REFERENCE_SIDE},
}
# every limit of a Budget (a positive number, or None for no limit) and how it reads
LIMIT_TEXT = (
    ("max_latency_ms", "latency ≤ {:g} ms"),
    ("min_fps", "throughput ≥ {:g} img/s"),
    ("max_memory_mb", "memory ≤ {:g} MiB"),
    ("min_side_px", "side ≥ {:g} px"),
    ("max_side_px", "side ≤ {:g} px"),
    ("min_side_scale", "side ≥ {:.3g}× native"),
    ("max_side_scale", "side ≤ {:.3g}× native"),
    ("min_ood_auroc", "OOD AUROC ≥ {:g}"),
)
TASK_TEXT = {
    "realtime": "≤ 224 px on the model's scale, ≥ 30 FPS",
    "high-precision": "≥ 384 px on the model's scale",
}


def _check_positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r}; omit it for no limit"
        )


@dataclass(frozen=True)
class Budget:
    """Deployment limits and the acceptance rule's thresholds.

    Attributes:
        max_latency_ms: Median latency of one call must not exceed this (ms).
        min_fps: Throughput (images/s) must reach this.
        max_memory_mb: Peak memory (MiB) must not exceed this.
        min_side_px: The input's equal-area side must be at least this (pixels).
        max_side_px: The input's equal-area side must be at most this (pixels).
        min_side_scale: The side must be at least this multiple of the native side.
        max_side_scale: The side must be at most this multiple of the native side.
        min_ood_auroc: The record's best OOD AUROC (a sweep with ``--ood``) must reach this.
        max_acc_drop: Accuracy may drop by less than this: percent of the baseline's
            accuracy (``acc_form="relative"``, the seed's rule) or points
            (``acc_form="points"``). A gain never fails.
        min_speedup: ΔSpeed must exceed this: the fraction of the baseline's time per
            image saved (``speed_form="time"``, the seed's rule: 0.25 = 25 % less time)
            or the throughput gain ``base/t − 1`` (``speed_form="throughput"``).
        acc_form: ``"relative"`` (seed) or ``"points"``.
        speed_form: ``"time"`` (seed) or ``"throughput"``.
        apply_rule: Choose only among configs the acceptance rule accepts. Off: the most
            accurate config within the limits, whatever its verdict (still reported).
        task: The task preset the budget started from, if any.
        source: Where the budget came from, in words (shown in the report).
    """

    max_latency_ms: float | None = None
    min_fps: float | None = None
    max_memory_mb: float | None = None
    min_side_px: float | None = None
    max_side_px: float | None = None
    min_side_scale: float | None = None
    max_side_scale: float | None = None
    min_ood_auroc: float | None = None
    max_acc_drop: float = 1.5
    min_speedup: float = 0.25
    acc_form: str = "relative"
    speed_form: str = "time"
    apply_rule: bool = True
    task: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name, _ in LIMIT_TEXT:
            _check_positive(name, getattr(self, name))
        if self.min_ood_auroc is not None and self.min_ood_auroc > 1:
            raise ValueError(f"min_ood_auroc is an AUROC in (0, 1], got {self.min_ood_auroc!r}")
        if self.acc_form not in ACC_FORMS:
            raise ValueError(f"acc_form must be one of {ACC_FORMS}, got {self.acc_form!r}")
        if self.speed_form not in SPEED_FORMS:
            raise ValueError(f"speed_form must be one of {SPEED_FORMS}, got {self.speed_form!r}")
        drop = self.max_acc_drop
        if not isinstance(drop, (int, float)) or not math.isfinite(drop) or drop < 0:
            raise ValueError(
                f"max_acc_drop must be a finite number >= 0 (the largest accuracy drop "
                f"accepted), got {drop!r}; a gain in accuracy is always accepted"
            )
        speed = self.min_speedup
        if not isinstance(speed, (int, float)) or not math.isfinite(speed):
            raise ValueError(f"min_speedup must be a finite number, got {speed!r}")
        if self.speed_form == "time" and not -1.0 < speed < 1.0:
            raise ValueError(
                f"min_speedup is the fraction of time saved (ΔSpeed) and must lie in (-1, 1), "
                f"got {speed!r}; 0.25 means at least 25 % less time than the baseline"
            )
        if self.speed_form == "throughput" and speed <= -1.0:
            raise ValueError(f"min_speedup (throughput gain) must be > -1, got {speed!r}")
        for low, high in (("min_side_px", "max_side_px"), ("min_side_scale", "max_side_scale")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo:g}) is larger than {high} ({hi:g})")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if not self.source:
            object.__setattr__(self, "source", self._default_source())

    def _default_source(self) -> str:
        if self.task is not None:
            return f"task preset {self.task!r} ({TASK_TEXT[self.task]})"
        if self.limits():
            return "limits given on the command line"
        return "no limits given: the most accurate config the acceptance rule accepts"

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> Budget:
        """The preset budget of a task, with any field overridden (``None`` = keep)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        values = {**TASKS[task], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(task=task, **values)

    def replace(self, **changes: Any) -> Budget:
        """A copy with ``changes``; the source is recomputed unless given."""
        changes.setdefault("source", "")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ limits

    def limits(self) -> list[str]:
        """The limits as text, e.g. ``["latency ≤ 5 ms"]``."""
        return [
            text.format(getattr(self, name))
            for name, text in LIMIT_TEXT
            if getattr(self, name) is not None
        ]

    def side_limits(self, m: Measurement) -> tuple[float, float]:
        """The ``(min, max)`` equal-area side in pixels allowed for ``m``'s model."""
        low, high = 0.0, math.inf
        if self.min_side_px is not None:
            low = max(low, self.min_side_px)
        if self.max_side_px is not None:
            high = min(high, self.max_side_px)
        native = None if m.native_resolution is None else math.sqrt(math.prod(m.native_resolution))
        if native is not None and self.min_side_scale is not None:
            low = max(low, self.min_side_scale * native)
        if native is not None and self.max_side_scale is not None:
            high = min(high, self.max_side_scale * native)
        return low, high

    def violations(self, m: Measurement) -> list[str]:
        """Names of the limits ``m`` breaks (``latency``, ``fps``, ``memory``, ``size``,
        ``ood``); a value the record lacks counts as breaking its limit."""
        out = []
        if self.max_latency_ms is not None and not (
            m.latency_ms is not None and m.latency_ms <= self.max_latency_ms
        ):
            out.append("latency")
        if self.min_fps is not None and not (
            m.throughput_ips is not None and m.throughput_ips >= self.min_fps
        ):
            out.append("fps")
        if self.max_memory_mb is not None and not (
            m.peak_mem_mb is not None and m.peak_mem_mb <= self.max_memory_mb
        ):
            out.append("memory")
        low, high = self.side_limits(m)
        side = math.sqrt(m.config.resolution[0] * m.config.resolution[1])
        scaled = self.min_side_scale is not None or self.max_side_scale is not None
        if (scaled and m.native_resolution is None) or not low - 1e-9 <= side <= high + 1e-9:
            out.append("size")
        if self.min_ood_auroc is not None and not (
            m.ood_auroc is not None and m.ood_auroc >= self.min_ood_auroc
        ):
            out.append("ood")
        return out

    def feasible(self, m: Measurement) -> bool:
        """``m`` is ``ok`` and meets every limit."""
        return m.ok and not self.violations(m)

    def rule_text(self) -> str:
        """The acceptance rule in words."""
        acc = (
            f"|ΔAcc| < {self.max_acc_drop:g} % of the baseline's accuracy"
            if self.acc_form == "relative"
            else f"accuracy drop < {self.max_acc_drop:g} points"
        )
        speed = (
            f"ΔSpeed > {100 * self.min_speedup:g} % of the baseline's time saved"
            if self.speed_form == "time"
            else f"throughput > {1 + self.min_speedup:g}× the baseline's"
        )
        text = f"{acc} and {speed} (a gain in accuracy never fails)"
        return text if self.apply_rule else f"not applied (limits only); for reference: {text}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""The acceptance rule: is a tuned config worth deploying instead of the baseline?

As the seed "ViT模型分辨率调优实战" defines it:

    ΔAcc   = (base_acc  − tuned_acc)  / base_acc      # relative
    ΔSpeed = (base_time − tuned_time) / base_time     # time saved
    accept when |ΔAcc| < 1.5 % and ΔSpeed > 25 %

with one deviation: a gain in accuracy (ΔAcc < 0) never fails, so ``|ΔAcc| < 1.5 %`` is
applied to drops only. Times are per image (latency / batch size), so configs of
different batch sizes compare fairly. Two other forms are named options of the
:class:`~vitres.tune.budget.Budget`, never silent substitutes: ``acc_form="points"``
(the drop in accuracy points) and ``speed_form="throughput"`` (``base/t − 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitres.tune.budget import Budget
from vitres.tune.records import Measurement


def per_image_ms(m: Measurement) -> float | None:
    """Median milliseconds per image (latency / batch size), ``None`` without timing."""
    return None if m.latency_ms is None else m.latency_ms / m.config.batch_size


@dataclass(frozen=True)
class Judgement:
    """The rule applied to one config against the baseline.

    Attributes:
        delta_acc: ``(base_acc − acc) / base_acc``: positive is a drop (seed's sign).
        delta_acc_points: ``100·(base_acc − acc)``: the same sign, in points.
        delta_speed: ``(base_time − time) / base_time``: the fraction of time saved.
        speedup: ``base_time / time``.
        acc_ok: The accuracy half of the rule (``None``: no accuracy to judge).
        speed_ok: The speed half of the rule (``None``: no timing to judge).
        accepted: Both halves pass (``None`` when either cannot be judged and none fails).
        text: The verdict in words.
    """

    delta_acc: float | None
    delta_acc_points: float | None
    delta_speed: float | None
    speedup: float | None
    acc_ok: bool | None
    speed_ok: bool | None
    accepted: bool | None
    text: str

    def acc_excess(self, budget: Budget) -> float:
        """How far the accuracy half misses, in the rule's unit (0 when it passes)."""
        if self.acc_ok is not False:
            return 0.0
        value = 100 * self.delta_acc if budget.acc_form == "relative" else self.delta_acc_points
        return value - budget.max_acc_drop

    def speed_shortfall(self, budget: Budget) -> float:
        """How far the speed half misses, in percent (0 when it passes)."""
        if self.speed_ok is not False:
            return 0.0
        gain = self.delta_speed if budget.speed_form == "time" else self.speedup - 1.0
        return 100 * (budget.min_speedup - gain)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta_acc": self.delta_acc,
            "delta_acc_points": self.delta_acc_points,
            "delta_speed": self.delta_speed,
            "speedup": self.speedup,
            "acc_ok": self.acc_ok,
            "speed_ok": self.speed_ok,
            "accepted": self.accepted,
            "verdict": self.text,
        }


def judge(candidate: Measurement, baseline: Measurement, budget: Budget) -> Judgement:
    """Applies the acceptance rule of ``budget`` to ``candidate`` against ``baseline``."""
    d_acc = d_points = d_speed = speedup = None
    acc_ok = speed_ok = None
    parts: list[str] = []
    if candidate.accuracy is not None and baseline.accuracy is not None:
        d_points = 100.0 * (baseline.accuracy - candidate.accuracy)
        if baseline.accuracy > 0:
            d_acc = (baseline.accuracy - candidate.accuracy) / baseline.accuracy
        if budget.acc_form == "relative" and d_acc is not None:
            acc_ok = d_acc < budget.max_acc_drop / 100.0 or d_acc <= 0
            parts.append(
                f"ΔAcc {100 * d_acc:+.2f} % ({'<' if acc_ok else '≥'} {budget.max_acc_drop:g} %)"
                if d_acc > 0
                else f"ΔAcc {100 * d_acc:+.2f} % (a gain)"
            )
        elif budget.acc_form == "points":
            acc_ok = d_points < budget.max_acc_drop or d_points <= 0
            parts.append(
                f"accuracy drop {d_points:+.2f} points "
                f"({'<' if acc_ok else '≥'} {budget.max_acc_drop:g})"
            )
    if acc_ok is None:
        parts.append("ΔAcc unknown (no accuracy measured)")
    base_ms, ms = per_image_ms(baseline), per_image_ms(candidate)
    if base_ms is not None and ms is not None and base_ms > 0 and ms > 0:
        d_speed = (base_ms - ms) / base_ms
        speedup = base_ms / ms
        if budget.speed_form == "time":
            speed_ok = d_speed > budget.min_speedup
            parts.append(
                f"ΔSpeed {100 * d_speed:+.0f} % ({'>' if speed_ok else '≤'} "
                f"{100 * budget.min_speedup:g} %)"
            )
        else:
            speed_ok = speedup - 1.0 > budget.min_speedup
            parts.append(
                f"throughput ×{speedup:.2f} ({'>' if speed_ok else '≤'} "
                f"×{1 + budget.min_speedup:g})"
            )
    else:
        parts.append("ΔSpeed unknown (no timing)")
    failed = [name for name, ok in (("accuracy", acc_ok), ("speed", speed_ok)) if ok is False]
    if failed:
        accepted: bool | None = False
        text = f"reject ({' and '.join(failed)}): " + "; ".join(parts)
    elif acc_ok is None or speed_ok is None:
        accepted = None
        text = "cannot judge: " + "; ".join(parts)
    else:
        accepted = True
        text = "accept: " + "; ".join(parts)
    return Judgement(d_acc, d_points, d_speed, speedup, acc_ok, speed_ok, accepted, text)

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
from vitres.tune.intervals import difference_interval, limit_to_tell
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
        acc_interval: The 95 % interval of ΔAcc in the rule's unit (a fraction for the
            relative form, points for ``acc_form="points"``); ``None`` without accuracy or
            evaluation sizes (:mod:`vitres.tune.intervals`).
        uncertain: The interval straddles the threshold: at this evaluation size the
            accuracy half cannot tell pass from fail.
        limit_to_tell: The evaluation size (``--limit``) that would tell, if ΔAcc held.
        n_eval: The smaller of the two evaluation sizes behind the interval.
    """

    delta_acc: float | None
    delta_acc_points: float | None
    delta_speed: float | None
    speedup: float | None
    acc_ok: bool | None
    speed_ok: bool | None
    accepted: bool | None
    text: str
    acc_interval: tuple[float, float] | None = None
    uncertain: bool = False
    limit_to_tell: int | None = None
    n_eval: int | None = None

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
            "acc_interval": None if self.acc_interval is None else list(self.acc_interval),
            "uncertain": self.uncertain,
            "limit_to_tell": self.limit_to_tell,
        }

    def noise_note(self, budget: Budget) -> str:
        """``""``, or the sentence that the interval of ΔAcc straddles the threshold."""
        if not self.uncertain or self.acc_interval is None:
            return ""
        scale, unit = (100.0, " %") if budget.acc_form == "relative" else (1.0, " points")
        low, high = self.acc_interval
        text = (
            f"at {self.n_eval:,} images the ΔAcc interval [{scale * low:+.2f}, "
            f"{scale * high:+.2f}]{unit} straddles {budget.max_acc_drop:g}{unit}: this "
            "--limit cannot tell pass from fail"
        )
        if self.limit_to_tell is not None:
            text += (
                f"; about {self.limit_to_tell:,} images (--limit {self.limit_to_tell}) would tell"
            )
        return text


def _acc_interval(candidate: Measurement, baseline: Measurement, budget: Budget):
    """The interval of ΔAcc in the rule's unit (fraction or points), ``None`` without
    evaluation sizes."""
    if candidate.n_eval < 1 or baseline.n_eval < 1:
        return None
    low, high = difference_interval(
        baseline.accuracy, baseline.n_eval, candidate.accuracy, candidate.n_eval
    )
    if budget.acc_form == "points":
        return 100.0 * low, 100.0 * high
    if baseline.accuracy <= 0:
        return None
    return low / baseline.accuracy, high / baseline.accuracy


def _judge_accuracy(candidate: Measurement, baseline: Measurement, budget: Budget) -> dict:
    """The accuracy half of the rule: ΔAcc (positive is a loss), its interval, and whether
    the interval straddles the threshold."""
    out: dict[str, Any] = {"delta_acc": None, "delta_acc_points": None, "acc_ok": None}
    if candidate.accuracy is None or baseline.accuracy is None:
        return out | {"part": "ΔAcc unknown (no accuracy measured)"}
    points = 100.0 * (baseline.accuracy - candidate.accuracy)
    out["delta_acc_points"] = points
    if baseline.accuracy > 0:
        out["delta_acc"] = (baseline.accuracy - candidate.accuracy) / baseline.accuracy
    if budget.acc_form == "relative":
        if out["delta_acc"] is None:
            return out | {"part": "ΔAcc unknown (the baseline's accuracy is 0)"}
        value, scale, unit = out["delta_acc"], 100.0, " %"
        threshold = budget.max_acc_drop / 100.0
    else:
        value, scale, unit = points, 1.0, " points"
        threshold = budget.max_acc_drop
    acc_ok = value < threshold or value <= 0
    word = "a loss" if value > 0 else "a gain" if value < 0 else "no change"
    part = f"ΔAcc {scale * value:+.2f}{unit} ({word}; {'<' if acc_ok else '≥'} {budget.max_acc_drop:g}{unit})"
    interval = _acc_interval(candidate, baseline, budget)
    if interval is not None:
        low, high = interval
        part += f", 95 % interval [{scale * low:+.2f}, {scale * high:+.2f}]{unit}"
        if low < threshold <= high:
            n = min(candidate.n_eval, baseline.n_eval)
            out["uncertain"] = True
            out["limit_to_tell"] = limit_to_tell(low, high, value, threshold, n)
    return out | {"acc_ok": acc_ok, "part": part, "interval": interval}


def judge(candidate: Measurement, baseline: Measurement, budget: Budget) -> Judgement:
    """Applies the acceptance rule of ``budget`` to ``candidate`` against ``baseline``."""
    d_speed = speedup = None
    speed_ok = None
    acc = _judge_accuracy(candidate, baseline, budget)
    acc_ok = acc["acc_ok"]
    parts: list[str] = [acc["part"]]
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
    return Judgement(
        acc["delta_acc"],
        acc["delta_acc_points"],
        d_speed,
        speedup,
        acc_ok,
        speed_ok,
        accepted,
        text,
        acc.get("interval"),
        acc.get("uncertain", False),
        acc.get("limit_to_tell"),
        min(candidate.n_eval, baseline.n_eval) if acc.get("interval") else None,
    )

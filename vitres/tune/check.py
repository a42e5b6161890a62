"""A CI gate for resolution configs: does a new sweep regress against a baseline sweep?

Records of two results files (:mod:`vitres.tune.records`) are matched by config key
(:meth:`SweepConfig.key`: model, resolution, patch, batch, backend, precision, threads,
device). For each config present in both, latency and accuracy are compared:

**Latency** counts as a regression only when it is both *large* and *real*:

- large: the current median exceeds ``baseline median · (1 + max_latency_regression)``;
- real: the difference of the medians lies beyond the measurement noise, i.e. the
  confidence interval (default 95 %) of ``current − baseline`` excludes 0.

The interval comes from the stored statistics. For a sample of ``n`` calls the standard
error of the median is ``sqrt(pi/2) · σ / sqrt(n) ≈ 1.2533 · σ / sqrt(n)`` (the asymptotic
variance of the median, ``1 / (4 n f(m)²)``, for a normal density ``f``), with σ estimated
robustly from the interquartile range, ``σ ≈ IQR / 1.349`` (the IQR of a normal is
``2 · 0.6745 σ``). The two runs are independent, so the standard error of the difference
is ``sqrt(se_base² + se_current²)`` and the interval is ``± z · se`` (``z = 1.96`` at 95 %).
When a record also carries its raw call times (a ``samples_ms`` list under ``latency``),
the interval is a percentile bootstrap of the difference of medians instead (2000
resamples of each run with replacement, a fixed seed, so the verdict is reproducible).
Records with fewer than :data:`MIN_CALLS_FOR_NOISE` timed calls have no usable noise
estimate; they are reported as ``unknown noise`` and never fail the gate.

**Accuracy** counts as a regression when it drops by more than ``max_acc_drop``
percentage points (the absolute form, ``(base − current) · 100``; this gate guards a
deployed config, it is not the tuner's relative ΔAcc acceptance rule). With
``acc_noise=True`` the drop must also exceed the binomial interval of the difference,
``z · sqrt(p₁(1−p₁)/n₁ + p₂(1−p₂)/n₂)``, with ``n`` the records' ``n_eval``.

A config whose current record failed (``status="error"``) while its baseline was ``ok``
fails the gate. Bad input raises ``ValueError`` (the CLI exits 2): no common configs,
accuracy measured on different data, or records from different machine kinds
(:func:`vitres.tune.hostkind.host_fingerprint`) unless ``allow_host_change``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from vitres.tune.hostkind import describe_host, host_fingerprint
from vitres.tune.records import LatencyStats, Measurement, latest_by_key, read_results

SE_MEDIAN_FACTOR = math.sqrt(math.pi / 2)  # 1.2533: se(median) = factor · σ / sqrt(n)
IQR_PER_SIGMA = 2 * NormalDist().inv_cdf(0.75)  # 1.349: IQR of a normal in units of σ
MIN_CALLS_FOR_NOISE = 3
BOOTSTRAP_RESAMPLES = 2000


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class CheckPolicy:
    """What the gate tolerates.

    Attributes:
        max_latency_regression: Allowed slow-down of the median as a fraction (0.10 = 10 %).
        max_acc_drop: Allowed accuracy drop in percentage points.
        confidence: Confidence level of the noise intervals.
        acc_noise: Also require an accuracy drop beyond its binomial interval.
        allow_host_change: Compare records from different machine kinds.
        fail_on_missing: Fail when a baseline config is absent from the current run (the
            default: a gate that passes with configs missing would pass an empty run).
    """

    max_latency_regression: float = 0.10
    max_acc_drop: float = 0.5
    confidence: float = 0.95
    acc_noise: bool = False
    allow_host_change: bool = False
    fail_on_missing: bool = True

    def __post_init__(self) -> None:
        if self.max_latency_regression < 0:
            raise ValueError(
                f"max_latency_regression must be >= 0, got {self.max_latency_regression}"
            )
        if self.max_acc_drop < 0:
            raise ValueError(f"max_acc_drop must be >= 0 points, got {self.max_acc_drop}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {self.confidence}")

    @property
    def z(self) -> float:
        """Two-sided normal quantile of :attr:`confidence` (1.96 at 0.95)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


def parse_fraction(text: str) -> float:
    """Reads a threshold written as a percentage (``"10%"``) or a fraction (``"0.1"``).

    Raises:
        ValueError: not a number, negative, or a bare number above 1 (ambiguous: write
            ``10%`` for ten percent).
    """
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a threshold; write e.g. 10% or 0.10") from None
    if percent:
        value /= 100.0
    elif value > 1:
        raise ValueError(f"threshold {text!r} is above 1; write {raw}% for {raw} percent")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number >= 0, got {text!r}")
    return value


# --------------------------------------------------------------------------- noise


def median_standard_error(stats: LatencyStats) -> float:
    """Standard error (ms) of a median latency from its IQR and call count.

    ``1.2533 · (IQR / 1.349) / sqrt(count)``; ``inf`` below :data:`MIN_CALLS_FOR_NOISE`
    calls (no usable noise estimate).
    """
    if stats.count < MIN_CALLS_FOR_NOISE:
        return math.inf
    sigma = stats.iqr_ms / IQR_PER_SIGMA
    return SE_MEDIAN_FACTOR * sigma / math.sqrt(stats.count)


def bootstrap_difference_interval(
    baseline_ms: Sequence[float],
    current_ms: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(current) − median(baseline)`` in ms.

    Each run is resampled with replacement independently ``resamples`` times with a
    fixed seed, so the same inputs always give the same interval.
    """
    base = np.asarray(baseline_ms, dtype=np.float64)
    cur = np.asarray(current_ms, dtype=np.float64)
    if base.size == 0 or cur.size == 0:
        raise ValueError("bootstrap needs at least one sample on each side")
    rng = np.random.default_rng(seed)
    base_medians = np.median(base[rng.integers(0, base.size, (resamples, base.size))], axis=1)
    cur_medians = np.median(cur[rng.integers(0, cur.size, (resamples, cur.size))], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(cur_medians - base_medians, [alpha, 1 - alpha])
    return float(low), float(high)


def latency_difference_interval(
    baseline: LatencyStats,
    current: LatencyStats,
    confidence: float = 0.95,
    baseline_samples: Sequence[float] | None = None,
    current_samples: Sequence[float] | None = None,
) -> tuple[float, float, str]:
    """Confidence interval ``(low, high)`` of ``current − baseline`` median latency (ms).

    Returns:
        ``(low, high, method)``, method ``"bootstrap"`` (both runs' samples given and
        each with at least :data:`MIN_CALLS_FOR_NOISE` calls) or ``"iqr"`` (the normal
        approximation from the stored statistics, see the module docstring); the bounds
        are infinite when a run has too few calls.
    """
    diff = current.median_ms - baseline.median_ms
    if (
        baseline_samples is not None
        and current_samples is not None
        and min(len(baseline_samples), len(current_samples)) >= MIN_CALLS_FOR_NOISE
    ):
        low, high = bootstrap_difference_interval(baseline_samples, current_samples, confidence)
        return low, high, "bootstrap"
    se = math.hypot(median_standard_error(baseline), median_standard_error(current))
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * se
    return diff - half, diff + half, "iqr"


def accuracy_difference_halfwidth(
    baseline_acc: float, baseline_n: int, current_acc: float, current_n: int, z: float
) -> float:
    """Half-width, in points, of the binomial interval of an accuracy difference."""
    if baseline_n <= 0 or current_n <= 0:
        return math.inf
    variance = baseline_acc * (1 - baseline_acc) / baseline_n
    variance += current_acc * (1 - current_acc) / current_n
    return 100.0 * z * math.sqrt(variance)


# --------------------------------------------------------------------------- verdicts


@dataclass
class ConfigVerdict:
    """The comparison of one config.

    Attributes:
        key: The config key.
        verdict: ``"regression"``, ``"failed"`` (the current run errored), ``"ok"``,
            ``"faster"``, ``"within noise"`` (slower than the threshold, but not beyond
            the noise), ``"unknown noise"`` (too few calls to judge latency) or
            ``"baseline failed"`` (nothing to compare against).
        regression: Whether this config fails the gate.
        reasons: Why, in words.
        baseline_ms, current_ms: Median latencies.
        change: ``current / baseline − 1``.
        interval_ms: Confidence interval of ``current − baseline`` (ms).
        interval_method: ``"iqr"`` or ``"bootstrap"``.
        baseline_acc, current_acc: Accuracies (fractions).
        acc_drop_points: ``(baseline − current) · 100``.
        acc_interval_points: Half-width of the binomial interval of the drop.
    """

    key: str
    verdict: str
    regression: bool = False
    reasons: list[str] = field(default_factory=list)
    baseline_ms: float | None = None
    current_ms: float | None = None
    change: float | None = None
    interval_ms: tuple[float, float] | None = None
    interval_method: str | None = None
    baseline_acc: float | None = None
    current_acc: float | None = None
    acc_drop_points: float | None = None
    acc_interval_points: float | None = None


@dataclass
class CheckResult:
    """The gate's verdict over all common configs.

    Attributes:
        passed: No config regressed (and, with ``fail_on_missing``, none is missing).
        configs: One verdict per common config, in baseline order.
        missing: Baseline keys absent from the current run.
        added: Current keys absent from the baseline.
        baseline_hosts, current_hosts: Machine kinds seen, fingerprint → description.
        host_changed: The compared records come from different machine kinds.
        policy: The thresholds applied.
    """

    passed: bool
    configs: list[ConfigVerdict]
    missing: list[str]
    added: list[str]
    baseline_hosts: dict[str, str]
    current_hosts: dict[str, str]
    host_changed: bool
    policy: CheckPolicy

    @property
    def regressions(self) -> list[ConfigVerdict]:
        return [v for v in self.configs if v.regression]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; infinite interval bounds become ``null``."""
        d = asdict(self)
        d["regressions"] = [v.key for v in self.regressions]
        d["method"] = (
            "regression when current median > baseline·(1+max_latency_regression) and the "
            f"{self.policy.confidence:.0%} interval of the difference excludes 0 "
            "(iqr: se(median) = 1.2533·(IQR/1.349)/sqrt(n); bootstrap when samples stored)"
        )
        return _json_safe(d)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _samples(m: Measurement, samples: dict[int, list[float]] | None) -> list[float] | None:
    stored = getattr(m.latency, "samples_ms", None)
    if stored:
        return list(stored)
    return None if samples is None else samples.get(id(m))


def compare_config(
    baseline: Measurement,
    current: Measurement,
    policy: CheckPolicy,
    samples: dict[int, list[float]] | None = None,
) -> ConfigVerdict:
    """The verdict on one config measured in both runs (see the module docstring)."""
    verdict = ConfigVerdict(key=baseline.key, verdict="ok")
    if not baseline.ok:
        verdict.verdict = "baseline failed"
        verdict.reasons.append(f"baseline record is {baseline.status}: {baseline.error}")
        return verdict
    if not current.ok:
        verdict.verdict, verdict.regression = "failed", True
        verdict.reasons.append(f"current run failed: {current.error}")
        return verdict

    if baseline.latency is not None and current.latency is not None:
        base_ms, cur_ms = baseline.latency.median_ms, current.latency.median_ms
        low, high, method = latency_difference_interval(
            baseline.latency,
            current.latency,
            policy.confidence,
            _samples(baseline, samples),
            _samples(current, samples),
        )
        verdict.baseline_ms, verdict.current_ms = base_ms, cur_ms
        verdict.change = cur_ms / base_ms - 1 if base_ms > 0 else math.inf
        verdict.interval_ms, verdict.interval_method = (low, high), method
        limit = base_ms * (1 + policy.max_latency_regression)
        if not math.isfinite(high - low):
            verdict.verdict = "unknown noise"
            verdict.reasons.append(
                f"fewer than {MIN_CALLS_FOR_NOISE} timed calls: latency not judged; sweep with "
                "more calls (--min-calls)"
            )
        elif cur_ms > limit and low > 0:
            verdict.verdict, verdict.regression = "regression", True
            verdict.reasons.append(
                f"latency {base_ms:.3g} -> {cur_ms:.3g} ms (+{verdict.change:.1%}) exceeds "
                f"+{policy.max_latency_regression:.0%} and the noise (difference "
                f"[{low:+.3g}, {high:+.3g}] ms)"
            )
        elif cur_ms > limit:
            verdict.verdict = "within noise"
            verdict.reasons.append(
                f"latency +{verdict.change:.1%} but the difference [{low:+.3g}, {high:+.3g}] ms "
                "includes 0"
            )
        elif cur_ms < base_ms * (1 - policy.max_latency_regression) and high < 0:
            verdict.verdict = "faster"

    if baseline.accuracy is not None and current.accuracy is not None:
        drop = (baseline.accuracy - current.accuracy) * 100.0
        half = accuracy_difference_halfwidth(
            baseline.accuracy, baseline.n_eval, current.accuracy, current.n_eval, policy.z
        )
        verdict.baseline_acc, verdict.current_acc = baseline.accuracy, current.accuracy
        verdict.acc_drop_points, verdict.acc_interval_points = drop, half
        if drop > policy.max_acc_drop and (not policy.acc_noise or drop > half):
            verdict.verdict, verdict.regression = "regression", True
            verdict.reasons.append(
                f"accuracy {baseline.accuracy:.2%} -> {current.accuracy:.2%} drops {drop:.2f} "
                f"points, more than {policy.max_acc_drop:g}"
                + (f" and its interval ±{half:.2f}" if policy.acc_noise else "")
            )
    return verdict


def _measured(records: Sequence[Measurement]) -> dict[str, Measurement]:
    return {m.key: m for m in latest_by_key([m for m in records if m.source == "measured"])}


def check_records(
    baseline: Sequence[Measurement],
    current: Sequence[Measurement],
    policy: CheckPolicy | None = None,
    samples: dict[int, list[float]] | None = None,
) -> CheckResult:
    """Compares two runs config by config.

    Args:
        baseline: Records of the reference run (``predicted`` records are ignored; of
            several records per key the last ``ok`` one counts).
        current: Records of the run under test.
        policy: Thresholds (defaults: 10 % latency, 0.5 points accuracy, 95 %).
        samples: Raw call times (ms) per record, keyed by ``id(record)``, for the
            bootstrap (see :func:`read_with_samples`).

    Raises:
        ValueError: no config in common; accuracy measured on different data; records
            from different machine kinds without ``policy.allow_host_change``.
    """
    policy = policy or CheckPolicy()
    base, cur = _measured(baseline), _measured(current)
    common = [key for key in base if key in cur]
    if not common:
        raise ValueError(
            "the baseline and the current run have no config in common (keys name the model, "
            "resolution, patch, batch, backend, precision, threads and device); e.g. baseline "
            f"{next(iter(base), 'none')!r} vs current {next(iter(cur), 'none')!r}. Sweep the "
            "same grid with the same --threads for both runs"
        )
    mixed, other_data = [], []
    for key in common:
        b, c = base[key], cur[key]
        if b.ok and c.ok and host_fingerprint(b.env) != host_fingerprint(c.env):
            mixed.append(key)
        if (
            b.accuracy is not None
            and c.accuracy is not None
            and (b.data, b.n_eval)
            != (
                c.data,
                c.n_eval,
            )
        ):
            other_data.append(f"{key}: {b.data} n={b.n_eval} vs {c.data} n={c.n_eval}")
    if other_data:
        raise ValueError(
            "accuracy was evaluated on different data, so it cannot be compared: "
            + "; ".join(other_data[:3])
            + ". Use the same --data, --split and --eval-limit for both runs"
        )
    if mixed and not policy.allow_host_change:
        b, c = base[mixed[0]], cur[mixed[0]]
        raise ValueError(
            f"{len(mixed)} config(s) were measured on different machine kinds: baseline "
            f"{host_fingerprint(b.env)} ({describe_host(b.env)}) vs current "
            f"{host_fingerprint(c.env)} ({describe_host(c.env)}); latencies are not comparable. "
            "Run both on the same kind of machine, or pass --allow-host-change"
        )
    verdicts = [compare_config(base[key], cur[key], policy, samples) for key in common]
    missing = [key for key in base if key not in cur]
    added = [key for key in cur if key not in base]
    passed = not any(v.regression for v in verdicts) and not (policy.fail_on_missing and missing)
    return CheckResult(
        passed=passed,
        configs=verdicts,
        missing=missing,
        added=added,
        baseline_hosts={host_fingerprint(m.env): describe_host(m.env) for m in base.values()},
        current_hosts={host_fingerprint(m.env): describe_host(m.env) for m in cur.values()},
        host_changed=bool(mixed),
        policy=policy,
    )


def read_with_samples(
    path: str | os.PathLike[str],
) -> tuple[list[Measurement], dict[int, list[float]]]:
    """Reads a results file and any raw call times stored under ``latency.samples_ms``.

    Returns:
        The records (as :func:`vitres.tune.records.read_results`) and, for each record whose
        line holds samples, ``id(record) → samples``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable or holds no records.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no results file at {path}; write one with `vitres sweep --out {path}`"
        )
    records = read_results(path)
    if not records:
        raise ValueError(f"{path} holds no records; is it the output of `vitres sweep`?")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    samples: dict[int, list[float]] = {}
    parsed = []
    for line in lines:  # read_results accepted every line but a partial last one
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    for record, raw in zip(records, parsed):
        values = (raw.get("latency") or {}).get("samples_ms")
        if values:
            samples[id(record)] = [float(v) for v in values]
    return records, samples


def check_files(
    baseline_path: str | os.PathLike[str],
    current_path: str | os.PathLike[str],
    policy: CheckPolicy | None = None,
) -> CheckResult:
    """:func:`check_records` on two results files (see :func:`read_with_samples`)."""
    base, base_samples = read_with_samples(baseline_path)
    cur, cur_samples = read_with_samples(current_path)
    return check_records(base, cur, policy, {**base_samples, **cur_samples})


# --------------------------------------------------------------------------- table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


def format_check(result: CheckResult) -> str:
    """The verdict as a text table with a one-line summary."""
    policy = result.policy
    header = ("config", "baseline", "current", "change", f"{policy.confidence:.0%} CI diff")
    header += ("ΔAcc pts", "verdict")
    rows = []
    for v in result.configs:
        interval = "-"
        if v.interval_ms is not None:
            low, high = v.interval_ms
            interval = "n/a" if not math.isfinite(high - low) else f"[{low:+.3g}, {high:+.3g}]"
        change = "-" if v.change is None else f"{v.change:+.1%}"
        # ΔAcc's one sign (vitres.tune.rule): baseline − current, positive is a loss
        acc = "-" if v.acc_drop_points is None else f"{v.acc_drop_points:+.2f}"
        label = v.verdict.upper() if v.regression else v.verdict
        rows.append((v.key, _ms(v.baseline_ms), _ms(v.current_ms), change, interval, acc, label))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for v in result.regressions:
        lines.append(f"{v.key}: " + "; ".join(v.reasons))
    if result.missing:
        lines.append(
            f"{len(result.missing)} baseline config(s) not in the current run: "
            + ", ".join(result.missing[:5])
            + (" ..." if len(result.missing) > 5 else "")
            + (
                " (this fails the gate; --allow-missing lets it pass)"
                if result.policy.fail_on_missing
                else " (allowed: --allow-missing)"
            )
        )
    if result.host_changed:
        lines.append("warning: compared across machine kinds (--allow-host-change)")
    verdict = "PASS" if result.passed else "FAIL"
    lines.append(
        f"{verdict}: {len(result.regressions)} regression(s) in {len(result.configs)} common "
        f"config(s) (latency +{policy.max_latency_regression:.0%} beyond noise, ΔAcc "
        f"> {policy.max_acc_drop:g} points, positive is a loss)"
    )
    return "\n".join(lines)

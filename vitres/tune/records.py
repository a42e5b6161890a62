"""Plain result records of a resolution sweep, stored as JSON lines.

Every stage after the sweep (cost model, recommendation, report) reads these records
from a file, so it can run without the model. One line of a results file is one
:class:`Measurement` serialised by :meth:`Measurement.to_json`; lines are only ever
appended, one whole line per write, then flushed and fsync-ed, so a sweep killed at any
moment leaves at most one partial line at the end, which :func:`read_results` ignores
and :func:`append_result` removes before writing.

Record format (``schema_version`` 1). Units: milliseconds, MiB (2**20 bytes), seconds.

``SweepConfig`` -- one point of the sweep grid (the JSON object under ``"config"``):
    model: model reference as given to the sweep (registry name, reference name, path,
        or ``"module:factory"``).
    resolution: input ``[height, width]`` in pixels.
    patch_size: patch size passed to the model's forward; ``null`` = the model's own.
    batch_size: images per forward call.
    precision: numeric precision of the backend (``"fp32"``, ``"bf16"``, ``"fp16"``,
        ``"int8"`` ...).
    backend: backend name from :mod:`vitres.backends` (``"eager"``, ``"eager-bf16"`` ...).
    threads: intra-op CPU threads set with ``torch.set_num_threads``; ``null`` = "auto":
        the count the sweep chose by measurement (:mod:`vitres.measure.threads`), recorded
        in ``env.torch_threads`` and ``env.thread_choice``.
    device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...).
    merge: token merging inside the blocks (:mod:`vitres.tokens.merge`): an int ``r``
        (patch tokens merged per block) or a float keep ratio in ``(0, 1]``; ``null`` (or
        absent, in records made before it existed) = no merging. The key gains
        ``|merge-r8`` / ``|merge-keep0.5`` only when it is set, so unmerged keys are
        unchanged.
    token_budget: mixed-resolution tokens (:mod:`vitres.tokens.quadtree`): at most this
        many patch tokens per image, in a saliency-driven quadtree of fine and coarse
        patches (``quadtree_forward(model, x, K)``); ``null`` = one patch size everywhere.
        Records written before this field existed read back as ``null``.

``LatencyStats`` -- statistics of per-call latency (the object under ``"latency"``):
    median_ms, iqr_ms (75th minus 25th percentile), p90_ms, p95_ms, p99_ms, min_ms,
    mean_ms: over the timed calls, percentiles linearly interpolated (numpy's default).
    count: number of timed calls.
    unstable: ``iqr_ms / median_ms > 0.10`` -- the timing is noisy; re-measure on a
        quieter machine or with a longer window before trusting small differences.
    robust_ms: median of the per-round medians (calls split into ``rounds`` rounds).
    ci_low_ms, ci_high_ms: 95 % confidence interval of the median (order statistics).

``Measurement`` -- one result line:
    schema_version: format version of the line (1).
    config: the ``SweepConfig``.
    key: :meth:`SweepConfig.key`, a stable id, e.g.
        ``"vit_tiny_patch16|28x28|p4|b1|eager|fp32|t2|cpu"`` (``|k16`` appended for a
        token budget of 16, so keys without a budget are as before); a resumed sweep
        skips keys already recorded with status ``ok``.
    status: ``"ok"``, ``"error"`` (the config failed; see ``error``) or ``"predicted"``
        (not measured: latency and memory come from the cost model of an adaptive sweep).
    source: ``"measured"`` or ``"predicted"``.
    error: the failure message (exception type and text, or how the child process died).
    accuracy: top-1 accuracy as a fraction in [0, 1] on the evaluation data; ``null``
        when no data was given (or for predicted records).
    n_eval: number of evaluated examples.
    data: dataset name or path used for accuracy, ``null`` without data.
    latency: ``LatencyStats`` of one forward call at ``batch_size``.
    throughput_ips: images per second, ``batch_size / median latency``.
    peak_mem_mb: peak memory of building and running the model at this config, over the
        process's baseline taken just before the model was built (so it includes the
        weights, activations and workspace). See ``mem_method``.
    mem_method: how ``peak_mem_mb`` was taken: ``"cuda_max_allocated"``,
        ``"rss_hwm_child"`` (peak RSS of an isolated child process, reset just before the
        model work), ``"rss_hwm_inproc"`` (the same in the sweep's own process -- less
        exact, the allocator keeps freed memory) or ``"rss_maxrss"`` (peak could not be
        reset; an upper bound).
    flops: FLOPs of one forward pass for ONE image, counted by ``FlopCounterMode`` and
        corrected for attention (a multiply-add = 2 FLOPs).
    flops_analytic: the closed form of :func:`vitres.measure.analytic_flops` for one
        image, ``null`` if the model family is unknown.
    params: number of parameters.
    tokens: patch tokens ``gh * gw`` (without class/register tokens); with a token
        budget, the mean token count of the timed batch's quadtrees.
    grid: token grid ``[gh, gw]`` (with a token budget: the fine grid).
    num_prefix_tokens: class + register tokens.
    native_resolution: the model's own ``[height, width]`` (``model.config.img_size``).
    native_patch_size: the model's own patch size.
    embed_dim: width D of the model (for the naive memory formula).
    build_time_s: seconds the backend's ``prepare`` took (export / compile / cast).
    env: environment fingerprint, see :func:`vitres.measure.env_fingerprint`.
    model_digest: short SHA-256 of the checkpoint file the model was loaded from
        (:func:`vitres.models.checkpoint.checkpoint_digest`), ``None`` for models not
        loaded from a vitres checkpoint. A resumed sweep re-measures records whose
        digest is not the current file's, so retrained weights never inherit old numbers.
    interference: the evidence of interference during the timing window and the verdict
        (:class:`vitres.measure.interference.Interference` as a dict): ``flagged``,
        ``reasons``, other processes' busy cores, load average, reference-kernel times and
        slowdown, tail ratio, and ``attempts``/``kept`` when the sweep re-measured the
        config (the cleanest attempt is kept). ``null`` for records made before it existed.
    data_warnings: problems with the evaluation data (unreadable files, a class count
        that differs from the model's), as sentences.
    ood_auroc: the best out-of-distribution AUROC (MSP, MaxLogit, energy, Mahalanobis,
        ViM) of the model at this resolution against the sweep's ``ood`` data, ``null``
        without it (:func:`vitres.explain.analysis.ood_auroc_for_config`).
    energy_j_per_image: joules per image over the timed calls (warm-up included), read
        from the hardware's counter (:mod:`vitres.measure.energy`); ``null`` where none
        could be read, and ``energy_missing`` says why.
    energy_method: ``"nvml"`` (the GPU's counter) or ``"rapl"`` (the CPU packages'), or
        ``null``.
    energy_missing: why the energy is missing, as a sentence (``null`` when it is there).
    host_peak_mem_mb: on a GPU, the peak host memory (resident set) of the same work,
        beside ``peak_mem_mb`` (the device's); ``null`` on a CPU, where they are one.
    timestamp: ISO-8601 UTC time the record was made.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from vitres.measure.timing import LatencyStats
from vitres.tokens.merge import check_merge, merge_is_identity, merge_label

SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "predicted")


@dataclass(frozen=True)
class SweepConfig:
    """One point of the sweep grid; see the module docstring for the fields."""

    model: str
    resolution: tuple[int, int]
    patch_size: int | None = None
    batch_size: int = 1
    precision: str = "fp32"
    backend: str = "eager"
    threads: int | None = None
    device: str = "cpu"
    merge: int | float | None = None
    token_budget: int | None = None

    def __post_init__(self) -> None:
        height, width = (int(v) for v in self.resolution)
        if height <= 0 or width <= 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        budget = self.token_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ValueError(f"token_budget must be a positive int or None, got {budget!r}")
        object.__setattr__(self, "resolution", (height, width))
        if self.merge is not None:  # settings that merge nothing are the unmerged config
            object.__setattr__(
                self, "merge", None if merge_is_identity(self.merge) else check_merge(self.merge)
            )

    def key(self) -> str:
        """A stable, human-readable id of this config, e.g. ``vit|28x28|p4|b1|eager|fp32|t2|cpu``
        (``...|cpu|k16`` with a token budget of 16)."""
        height, width = self.resolution
        patch = "native" if self.patch_size is None else str(self.patch_size)
        threads = "auto" if self.threads is None else str(self.threads)
        merge = "" if self.merge is None else f"|merge-{merge_label(self.merge)}"
        budget = "" if self.token_budget is None else f"|k{self.token_budget}"
        return (
            f"{self.model}|{height}x{width}|p{patch}|b{self.batch_size}|{self.backend}"
            f"|{self.precision}|t{threads}|{self.device}{merge}{budget}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "resolution": list(self.resolution)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["resolution"] = tuple(kwargs["resolution"])
        return cls(**kwargs)


def utc_timestamp() -> str:
    """The current time as ISO-8601 UTC with seconds, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Measurement:
    """One result line; see the module docstring for every field."""

    config: SweepConfig
    status: str = "ok"
    error: str | None = None
    accuracy: float | None = None
    n_eval: int = 0
    data: str | None = None
    latency: LatencyStats | None = None
    throughput_ips: float | None = None
    peak_mem_mb: float | None = None
    mem_method: str | None = None
    flops: int | None = None
    flops_analytic: int | None = None
    params: int | None = None
    tokens: int | None = None
    grid: tuple[int, int] | None = None
    num_prefix_tokens: int | None = None
    native_resolution: tuple[int, int] | None = None
    native_patch_size: int | None = None
    embed_dim: int | None = None
    build_time_s: float | None = None
    env: dict[str, Any] = field(default_factory=dict)
    model_digest: str | None = None
    interference: dict[str, Any] | None = None
    data_warnings: list[str] = field(default_factory=list)
    ood_auroc: float | None = None
    energy_j_per_image: float | None = None
    energy_method: str | None = None
    energy_missing: str | None = None
    host_peak_mem_mb: float | None = None
    timestamp: str = field(default_factory=utc_timestamp)
    source: str = "measured"
    key: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.accuracy is not None:
            acc = self.accuracy
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0:
                raise ValueError(
                    f"accuracy must be a fraction in [0, 1] (or null), got {acc!r}; "
                    "accuracy is stored as a fraction, e.g. 0.853 for 85.3 %"
                )
        for name in ("throughput_ips", "peak_mem_mb"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value >= 0):
                raise ValueError(f"{name} must be a number >= 0 (or null), got {value!r}")
        if self.latency is not None and not (
            math.isfinite(self.latency.median_ms) and self.latency.median_ms >= 0
        ):
            raise ValueError(f"latency median_ms must be a finite number >= 0, got {self.latency}")
        self.key = self.config.key()
        for name in ("grid", "native_resolution"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(int(v) for v in value))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def flagged(self) -> bool:
        """The timing window showed interference (see ``interference``)."""
        return bool(self.interference and self.interference.get("flagged"))

    @property
    def suspect(self) -> bool:
        """Timing not to be trusted as it stands: interference or an unstable spread."""
        return self.flagged or bool(self.latency is not None and self.latency.unstable)

    @property
    def latency_ms(self) -> float | None:
        """Median latency of one call, or ``None`` without timing."""
        return None if self.latency is None else self.latency.median_ms

    @property
    def patch_size(self) -> int | None:
        """The patch size actually used: the config's, else the model's own."""
        return (
            self.config.patch_size if self.config.patch_size is not None else self.native_patch_size
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("config", "latency"):
                value = None if value is None else value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            d[f.name] = value
        return d

    def to_json(self) -> str:
        """One JSON line (no newline); NaN/inf are written as ``null``."""
        return json.dumps(_finite(self.to_dict()), sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        if not isinstance(d, dict):
            raise ValueError(f"a record must be a JSON object, got {type(d).__name__} {d!r:.60}")
        if not isinstance(d.get("config"), dict):
            raise ValueError("a record needs a 'config' object (model, resolution, ...)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and k != "key"}
        kwargs["config"] = SweepConfig.from_dict(d["config"])
        if d.get("latency") is not None:
            kwargs["latency"] = LatencyStats.from_dict(d["latency"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str) -> Measurement:
        return cls.from_dict(json.loads(line))


def _finite(value: Any) -> Any:
    """Replaces NaN and infinities by ``None`` so the JSON is strict."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_results(path: str | os.PathLike[str]) -> list[Measurement]:
    """Reads a results file; a missing file reads as no results.

    A trailing line without its newline that does not parse (a writer killed mid-line)
    is ignored with a warning. Any other unreadable line is an error.

    Raises:
        ValueError: a line other than the last partial one is not a valid record.
    """
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise ValueError(
            f"{path} is a directory; give the results file `vitres sweep --out` wrote "
            f"(e.g. {os.path.join(os.fspath(path), 'results.jsonl')})"
        )
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}); "
            "a results file is JSON lines written by `vitres sweep`, is this another kind of file?"
        ) from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    results: list[Measurement] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last_partial = number == len(lines) and not complete
        try:
            results.append(Measurement.from_json(line))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if is_last_partial:
                warnings.warn(
                    f"{path}: ignoring a partial last line ({len(line)} characters); "
                    "a writer was probably interrupted",
                    stacklevel=2,
                )
                continue
            raise ValueError(
                f"{path}, line {number}: not a valid result record ({error}). Each line must "
                "be one JSON object written by vitres; remove or fix that line."
            ) from error
    return results


def repair_results(path: str | os.PathLike[str]) -> bool:
    """Makes the file end with a whole line: drops a partial last line, or completes a
    last line that parses but lacks its newline. Returns True if the file was changed."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # find the start of the last line
        start, chunk = size, 4096
        while start > 0:
            begin = max(0, start - chunk)
            f.seek(begin)
            block = f.read(start - begin)
            index = block.rfind(b"\n")
            if index >= 0:
                start = begin + index + 1
                break
            start = begin
        f.seek(start)
        tail = f.read()
        try:
            Measurement.from_json(tail.decode("utf-8"))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            f.truncate(start)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def append_result(path: str | os.PathLike[str], measurement: Measurement) -> None:
    """Appends one record as one line, then flushes and fsyncs, so the file only ever
    holds whole lines plus at most one partial line left by a killed writer (which is
    removed here first, see :func:`repair_results`)."""
    line = measurement.to_json() + "\n"
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    repair_results(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def latest_by_key(measurements: list[Measurement]) -> list[Measurement]:
    """One record per key: the last ``ok`` one if any, else the last one; first-seen order."""
    chosen: dict[str, Measurement] = {}
    for m in measurements:
        previous = chosen.get(m.key)
        if previous is None or m.ok or not previous.ok:
            chosen[m.key] = m
    return list(chosen.values())


class GroupKey(NamedTuple):
    """The records that share one cost curve: every field of a config but its resolution
    (token merging included: merged configs cost less per input token).

    A token budget is a field like the others: records at one budget share a curve, and
    the recommendation weighs each (resolution, budget) point against the uniform ones.

    The cost model fits one curve per group, the adaptive sweep refines per group, and
    the report draws one series per group; this is the one definition all of them use.
    """

    model: str
    patch_size: int | None
    batch_size: int
    backend: str
    precision: str
    threads: int | None
    device: str
    merge: int | float | None = None
    token_budget: int | None = None

    def label(self) -> str:
        """Short text for legends, e.g. ``eager fp32 b1`` (``p7`` when a patch is set,
        ``merge r8`` when tokens are merged, ``K16`` with a token budget)."""
        patch = "" if self.patch_size is None else f" p{self.patch_size}"
        merge = "" if self.merge is None else f" merge {merge_label(self.merge)}"
        budget = "" if self.token_budget is None else f" K{self.token_budget}"
        return f"{self.backend} {self.precision} b{self.batch_size}{patch}{merge}{budget}"


def group_key(item: Measurement | SweepConfig) -> GroupKey:
    """The :class:`GroupKey` of a record or config."""
    c = item.config if isinstance(item, Measurement) else item
    return GroupKey(
        c.model,
        c.patch_size,
        c.batch_size,
        c.backend,
        c.precision,
        c.threads,
        c.device,
        c.merge,
        c.token_budget,
    )

"""Planning a sweep: which configs to measure, and which a results file already holds.

A sweep resumes from its JSON-lines results file. :func:`plan_sweep` reads that file
(repairing a torn last line first) and sorts the wanted configs into

- **done**: recorded ``ok`` with the current weights, and not flagged unstable or
  disturbed (unless ``keep_unstable``) -- kept as they are;
- **suspect**: recorded ``ok`` but flagged -- measured again;
- **stale**: recorded ``ok`` with other weights than the model file has now -- measured
  again, with a warning;
- **todo**: everything not done, in grid order.

A resumed sweep keeps the thread count its "auto" records were measured with
(:func:`recorded_thread_choice`), so one ``tauto`` key never holds two thread counts, and
refuses a file whose "auto" records come from another machine kind.

Nothing here measures; :mod:`vitres.tune.sweep` runs the plan.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vitres.measure.threads import ThreadChoice
from vitres.models.checkpoint import checkpoint_digest
from vitres.tune.hostkind import host_fingerprint
from vitres.tune.records import (
    Measurement,
    SweepConfig,
    latest_by_key,
    read_results,
    repair_results,
)


@dataclass
class SweepPlan:
    """What a sweep measures, given what its results file already holds.

    Attributes:
        configs: The whole grid, deduplicated, in grid order.
        todo: The configs still to measure, in grid order.
        results: Records kept from the file, by config key (filled further while measuring).
        existing: Every record read from the file (used for the reference-kernel time).
        digest: The model file's weight digest (``None`` for a model not named by file).
        suspects: Keys recorded ``ok`` but flagged unstable or disturbed, measured again.
    """

    configs: list[SweepConfig]
    todo: list[SweepConfig]
    results: dict[str, Measurement]
    existing: list[Measurement] = field(default_factory=list)
    digest: str | None = None
    suspects: list[str] = field(default_factory=list)

    def messages(self, out_path: str | os.PathLike[str] | None) -> list[str]:
        """The lines a sweep prints before measuring: re-measured suspects, resume state."""
        lines = []
        if self.suspects:
            lines.append(
                f"{len(self.suspects)} recorded config(s) were flagged unstable or disturbed; "
                "measuring them again (keep_unstable / --keep-unstable keeps them)"
            )
        if not self.todo:
            lines.append(
                f"all {len(self.configs)} configs are already measured in {out_path}: nothing "
                "to measure (a new --out file, or deleting lines, measures again)"
            )
        elif self.results:
            lines.append(
                f"resuming: {len(self.results)} of {len(self.configs)} configs already "
                f"measured in {out_path}"
            )
        return lines

    def drop_other_threads(self, threads: int) -> list[str]:
        """Measures again the kept "auto" records made with another thread count than
        ``threads`` (a file written before resumed sweeps kept the count); returns their keys."""
        dropped = [
            key
            for key, m in self.results.items()
            if m.config.threads is None
            and "thread_choice" in m.env
            and int(m.env["thread_choice"]["threads"]) != threads
        ]
        for key in dropped:
            del self.results[key]
        if dropped:
            self.todo = [c for c in self.configs if c.key() not in self.results]
        return dropped


def plan_sweep(
    model_ref: object,
    configs: Sequence[SweepConfig],
    out_path: str | os.PathLike[str] | None,
    *,
    keep_unstable: bool = False,
) -> SweepPlan:
    """Sorts ``configs`` into kept and still-to-measure, from the records in ``out_path``.

    Records keyed by a model *name* must not outlive the weights they measured: a record
    whose weight digest differs from the model file's is measured again (with a warning).

    Args:
        model_ref: The sweep's model reference (a name or path gets a weight digest).
        configs: The deduplicated grid.
        out_path: The results file, or ``None`` for an in-memory sweep (nothing to resume).
        keep_unstable: Keep records flagged unstable or disturbed instead of re-measuring.

    Returns:
        The plan; its ``results`` hold the kept records.
    """
    existing: list[Measurement] = []
    if out_path is not None:
        repair_results(out_path)
        existing = read_results(out_path)
    digest = checkpoint_digest(model_ref) if isinstance(model_ref, (str, os.PathLike)) else None
    fresh = {
        m.key: m
        for m in latest_by_key(existing)
        if m.ok and (digest is None or m.model_digest == digest)
    }
    stale = {m.key for m in existing if m.ok and m.key not in fresh}
    if stale:
        warnings.warn(
            f"{len(stale)} result(s) in {out_path} were measured with other weights than "
            f"{model_ref}'s current file (digest {digest}); measuring them again",
            stacklevel=3,
        )
    wanted = {c.key() for c in configs}
    done = {k: m for k, m in fresh.items() if keep_unstable or not m.suspect}
    results = {c.key(): done[c.key()] for c in configs if c.key() in done}
    return SweepPlan(
        configs=list(configs),
        todo=[c for c in configs if c.key() not in results],
        results=results,
        existing=existing,
        digest=digest,
        suspects=sorted(k for k in fresh if k in wanted and k not in done),
    )


def best_reference(records: Iterable[Measurement], best: float | None = None) -> float | None:
    """The fastest reference-kernel time in ``records``' interference evidence."""
    for m in records:
        times = (m.interference or {}).get("reference_ms")
        if m.ok and times:
            low = min(times)
            best = low if best is None else min(best, low)
    return best


def recorded_thread_choice(
    existing: Iterable[Measurement],
    configs: Sequence[SweepConfig],
    host: str,
    out_path: str | os.PathLike[str] | None,
    refuse: bool = True,
) -> ThreadChoice | None:
    """The thread choice the file's earlier "auto" records of these configs were measured
    with on this machine kind, to reuse when the sweep resumes; ``None`` when there are none.

    Only ``ok`` records a sweep chose threads for (``env["thread_choice"]``) count. When
    a file already holds several counts, the latest one is kept.

    Args:
        existing: The results file's records, in file order.
        configs: The sweep's grid; only its "auto" configs (``threads=None``) count.
        host: This machine's kind (:func:`vitres.tune.hostkind.host_fingerprint`).
        out_path: The results file, for the messages.
        refuse: raise on another machine kind's records (else return ``None``: a sweep
            with no "auto" config left to measure mixes nothing).

    Raises:
        ValueError: the file's "auto" records of these configs were measured on another
            machine kind: its thread count is not this machine's, and its keys would mix.
    """
    auto = {c.key() for c in configs if c.threads is None}
    chosen = [m for m in existing if m.ok and m.key in auto and "thread_choice" in m.env]
    others = sorted({host_fingerprint(m.env) for m in chosen} - {host})
    if others and not refuse:
        return None
    if others:
        raise ValueError(
            f"{out_path} holds 'auto' thread (tauto) records measured on another machine kind "
            f"({', '.join(others)}; this one is {host}); their thread count is not this "
            "machine's and the two would mix under the same keys: write to another --out "
            "file, or give --threads N (its records have their own keys)"
        )
    if not chosen:
        return None
    counts = list(dict.fromkeys(int(m.env["thread_choice"]["threads"]) for m in chosen))
    first = chosen[-1].env["thread_choice"]
    threads = int(first["threads"])
    several = (
        f"; the file holds {', '.join(map(str, counts))}, the latest kept"
        if len(counts) > 1
        else ""
    )
    medians = {int(k): float(v) for k, v in (first.get("median_ms") or {}).items()}
    reason = (
        f"reusing {threads} thread{'s' if threads > 1 else ''}, the count the 'auto' records "
        f"in {out_path} were measured with on this machine kind{several} (then: "
        f"{first.get('reason', 'chosen')})"
    )
    return ThreadChoice(threads, medians, reason)

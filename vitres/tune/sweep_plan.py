"""Planning a sweep: which configs to measure, and which a results file already holds.

A sweep resumes from its JSON-lines results file. :func:`plan_sweep` reads that file
(repairing a torn last line first) and sorts the wanted configs into

- **done**: recorded ``ok`` with the current weights, and not flagged unstable or
  disturbed (unless ``keep_unstable``) -- kept as they are;
- **suspect**: recorded ``ok`` but flagged -- measured again;
- **stale**: recorded ``ok`` with other weights than the model file has now -- measured
  again, with a warning;
- **todo**: everything not done, in grid order.

Nothing here measures; :mod:`vitres.tune.sweep` runs the plan.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vitres.models.checkpoint import checkpoint_digest
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

"""Drives an :class:`~vitres.runtime.runner.AdaptiveRunner` over a frame source: a live
progress line, one JSON trace line per frame, and a summary at the end.

Trace format (JSON lines, one per processed frame, written and flushed as it goes):
``frame`` (0-based), ``t_s`` (seconds since the first frame started), ``resolution``
(the size the answer came from), ``latency_ms`` (the whole frame), ``deadline_ms``,
``met``, ``pred`` (class index), ``label`` (only when known), and ``confidence``,
``first_resolution``, ``first_pred``, ``escalated`` (see
:class:`~vitres.runtime.runner.FrameResult`), plus ``source_index`` (the frame's
position in the source, skipped frames included).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from vitres.progress import progress_bar
from vitres.runtime.runner import AdaptiveRunner, RunStats
from vitres.runtime.sources import Source


@dataclass
class StreamReport:
    """What a stream run did.

    Attributes:
        source: The source's name.
        stats: The runner's statistics.
        skipped: Frames the source could not decode.
        skip_reasons: The first few reasons.
        trace_path: Where the trace went (``None``: not written).
        controller: The controller's name.
        backend: The backend's name.
        ladder: The sizes the controller could choose.
    """

    source: str
    stats: RunStats
    skipped: int
    skip_reasons: list[str]
    trace_path: str | None
    controller: str
    backend: str
    ladder: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "stats": self.stats.to_dict(),
            "skipped": self.skipped,
            "skip_reasons": list(self.skip_reasons),
            "trace_path": self.trace_path,
            "controller": self.controller,
            "backend": self.backend,
            "ladder": list(self.ladder),
        }


def run_stream(
    runner: AdaptiveRunner,
    source: Source,
    *,
    frames: int | None = None,
    trace_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> StreamReport:
    """Processes the source's frames (at most ``frames``) and traces each.

    Raises:
        ValueError: ``frames`` is not positive, or the source yields no frame.
    """
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be a positive number, got {frames}")
    runner.warm_up()
    total = len(source) or None
    if frames is not None:
        total = frames if total is None else min(total, frames)
    trace = None
    if trace_path is not None:
        directory = os.path.dirname(os.fspath(trace_path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        trace = open(trace_path, "w", encoding="utf-8")
    bar = progress_bar(
        total=total, disable=not progress, unit="frame", desc="run", dynamic_ncols=True
    )
    done = hits = 0
    try:
        for frame in source:
            result = runner.process(frame.image, frame.label)
            if trace is not None:
                line = {**result.to_dict(), "source_index": frame.index}
                trace.write(json.dumps(line) + "\n")
                trace.flush()
            done += 1
            hits += result.met
            fps = 1000.0 / result.latency_ms if result.latency_ms > 0 else math.inf
            bar.set_postfix_str(
                f"{fps:.0f} fps, {result.resolution} px, hits {hits}/{done}"
                + (f", skipped {source.skipped.count}" if source.skipped.count else ""),
                refresh=False,
            )
            bar.update(1)
            if frames is not None and done >= frames:
                break
    finally:
        bar.close()
        if trace is not None:
            trace.close()
    if not runner.results:
        raise ValueError(
            f"{source.name} gave no decodable frame ({source.skipped.summary()}); check the source"
        )
    return StreamReport(
        source=source.name,
        stats=runner.stats(),
        skipped=source.skipped.count,
        skip_reasons=list(source.skipped.reasons),
        trace_path=None if trace_path is None else os.fspath(trace_path),
        controller=runner.controller.name,
        backend=runner.backend_name,
        ladder=list(runner.ladder),
    )


def format_summary(report: StreamReport, deadline_ms: float | None = None) -> str:
    """A few human lines: hit rate, sizes, switches, accuracy, skips, escalation."""
    s = report.stats
    lines = [
        f"{s.frames} frames from {report.source} ({report.controller} controller, "
        f"{report.backend}, ladder {report.ladder})",
        f"deadline hits {s.hits}/{s.frames} ({100 * s.hit_rate:.1f} %)"
        + ("" if deadline_ms is None else f" at {deadline_ms:.3g} ms per frame")
        + f"; latency mean {s.mean_latency_ms:.3g} ms, p95 {s.p95_latency_ms:.3g} ms",
        f"resolution mean {s.mean_resolution:.1f} px, {s.switches} switches; frames per size "
        + ", ".join(f"{k}: {v}" for k, v in s.frames_per_resolution.items()),
    ]
    if s.expected_accuracy is not None:
        lines.append(f"expected accuracy (sweep, sizes used) {100 * s.expected_accuracy:.2f} %")
    if s.accuracy is not None:
        lines.append(f"accuracy on the {s.labelled} labelled frames {100 * s.accuracy:.2f} %")
    if s.escalations:
        lines.append(
            f"escalated {s.escalations} frames (+{s.escalation_ms:.1f} ms in all): "
            f"{s.escalation_changed} answers changed, {s.escalation_fixed} fixed, "
            f"{s.escalation_broken} broken"
        )
    if report.skipped:
        shown = "; ".join(report.skip_reasons[:3])
        lines.append(f"skipped {report.skipped} undecodable frame(s): {shown}")
    if s.infeasible:
        lines.append(_infeasible_line(s.frames_per_resolution))
    if report.trace_path:
        lines.append(f"trace: {report.trace_path}")
    return "\n".join(lines)


def _infeasible_line(frames_per_resolution: dict) -> str:
    """What happened when the sweep predicted no size to fit: said from the frames, not
    assumed (the controller may have found the machine faster than the sweep)."""
    used = [size for size, count in frames_per_resolution.items() if count]
    sizes = sorted(used, key=lambda v: int(str(v).split("x")[0]))
    said = "the deadline is below what the sweep predicts for the smallest ladder size"
    if len(sizes) <= 1:
        where = f"{sizes[0]} px" if sizes else "the smallest size"
        return f"{said}: every frame ran at {where}"
    return (
        f"{said}, but the frames measured faster, so the controller moved up: frames ran at "
        f"{', '.join(f'{v} px' for v in sizes)} (counts above)"
    )

"""``vitres run --plot``: the trace of a run as a picture -- the resolution chosen per
frame, and each frame's latency against its deadline, hits and misses marked."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_trace", "read_trace"]


def read_trace(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The frames of a trace file (one JSON object per line)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_trace(
    frames: Sequence[dict[str, Any]], out: str | os.PathLike[str], title: str = "vitres run"
) -> Path:
    """Writes the two-panel plot of ``frames`` (trace records) to ``out`` (PNG).

    Raises:
        ValueError: no frames to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not frames:
        raise ValueError("the run processed no frames: nothing to plot")
    index = [f["frame"] for f in frames]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.step(index, [f["resolution"] for f in frames], where="post", color="tab:blue")
    top.set_ylabel("resolution (px)")
    top.grid(alpha=0.3)
    hits = [f for f in frames if f["met"]]
    misses = [f for f in frames if not f["met"]]
    bottom.scatter([f["frame"] for f in hits], [f["latency_ms"] for f in hits], s=6,
                   color="tab:green", label=f"met ({len(hits)})")  # fmt: skip
    bottom.scatter([f["frame"] for f in misses], [f["latency_ms"] for f in misses], s=10,
                   color="tab:red", label=f"missed ({len(misses)})")  # fmt: skip
    bottom.step(index, [f["deadline_ms"] for f in frames], where="post", color="black",
                linestyle=":", label="deadline")  # fmt: skip
    bottom.set_ylabel("latency per frame (ms)")
    bottom.set_xlabel("frame")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    share = 100 * len(hits) / len(frames)
    top.set_title(f"{title}: {share:.1f} % of {len(frames)} frames within the deadline")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return target

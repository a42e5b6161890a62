"""Constructed sweep records shared by the runtime tests (model ``m``, patch 4)."""

from __future__ import annotations

from vitres.tune.records import LatencyStats, Measurement, SweepConfig

PATCH = 4


def record(
    side: int,
    median: float,
    *,
    batch: int = 1,
    tail: float = 1.2,
    accuracy: float | None = None,
    backend: str = "eager",
    status: str = "ok",
) -> Measurement:
    """A record of model ``m`` (patch 4) at ``side`` px with the given median and
    ``p95 = tail × median``."""
    p95 = tail * median
    grid = (side // PATCH, side // PATCH)
    return Measurement(
        SweepConfig("m", (side, side), batch_size=batch, backend=backend),
        status=status,
        accuracy=accuracy,
        latency=LatencyStats(median, 0.0, p95, p95, p95, median, median, 30, False),
        tokens=grid[0] * grid[1],
        grid=grid,
        native_patch_size=PATCH,
        native_resolution=(28, 28),
    )


def linear_ms(tokens: int) -> float:
    return 0.1 * tokens + 1.0

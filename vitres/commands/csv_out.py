"""``--csv FILE``: a command's results as one flat table, beside its JSON.

Columns are plain scalars, one row per config (sweep, recommend, check) or per
resolution (eval, ood), in the spirit of timm's ``benchmark.py`` results CSV, so a
spreadsheet, pandas or a CI step reads them without knowing vitres's nested JSON.
Accuracy columns are fractions (0.853), latencies milliseconds; a column a row does not
have is empty. The file is written through a temporary file and renamed, so a reader
never sees half of it.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_csv_argument", "check_csv_path", "measurement_row", "write_csv"]


def add_csv_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--csv",
        metavar="FILE",
        default=None,
        help="also write the results as a flat CSV table (one row per config or resolution)",
    )


def check_csv_path(path: str | None) -> None:
    """Refuses, before any work, a ``--csv`` that cannot be written: a directory, a
    folder that does not exist (a CSV is written into an existing folder), or one this
    user cannot write to.

    Raises:
        ValueError: saying which.
    """
    from vitres.commands.paths import check_output_file

    if path is None:
        return
    check_output_file(path, "--csv")
    parent = Path(path).parent
    if not parent.is_dir():
        raise ValueError(f"--csv {path}: the folder {parent} does not exist; create it first")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return (
            "x".join(str(v) for v in value)
            if all(isinstance(v, int) for v in value)
            else str(value)
        )
    return value


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Writes ``rows`` (columns: every key, in first-seen order) to ``path``."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(buffer.getvalue())
    partial.replace(target)
    return target


def measurement_row(m: Any) -> dict[str, Any]:
    """One sweep record as flat columns."""
    from vitres.tune.intervals import wilson_interval

    c, lat = m.config, m.latency
    low = high = None
    if m.accuracy is not None and m.n_eval > 0:
        low, high = wilson_interval(m.accuracy, m.n_eval)
    return {
        "model": c.model,
        "height": c.resolution[0],
        "width": c.resolution[1],
        "patch_size": c.patch_size,
        "batch_size": c.batch_size,
        "backend": c.backend,
        "precision": c.precision,
        "threads": c.threads,
        "device": c.device,
        "merge": c.merge,
        "token_budget": c.token_budget,
        "status": m.status,
        "source": m.source,
        "median_ms": None if lat is None else lat.median_ms,
        "p90_ms": None if lat is None else lat.p90_ms,
        "p95_ms": None if lat is None else lat.p95_ms,
        "p99_ms": None if lat is None else lat.p99_ms,
        "unstable": None if lat is None else lat.unstable,
        "throughput_ips": m.throughput_ips,
        "accuracy": m.accuracy,
        "accuracy_low95": low,
        "accuracy_high95": high,
        "n_eval": m.n_eval or None,
        "peak_mem_mb": m.peak_mem_mb,
        "gflops": None if m.flops is None else m.flops / 1e9,
        "params": m.params,
        "tokens": m.tokens,
        "ood_auroc": m.ood_auroc,
        "model_digest": m.model_digest,
        "error": m.error,
        "key": m.key,
    }

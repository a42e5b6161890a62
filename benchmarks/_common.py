"""Scaffolding the benchmark scripts share, so each script holds only its experiment.

* :data:`ROOT` (this checkout, put first on ``sys.path`` so ``python benchmarks/x.py``
  runs this checkout's ``vitres`` and can import ``benchmarks.*`` and ``scripts.*``) and
  :data:`RESULTS_DIR`, the one results folder, ``benchmarks/results/``;
* :func:`write_json` and :func:`write_markdown`, the writers of the result files (JSON
  and Markdown, as the README and docs link to them);
* :func:`markdown_table`, the one Markdown table writer;
* :func:`environment`, the block every result file records about the machine;
* :func:`interleaved_timing`, per-call timings of several candidates taken round-robin
  (:func:`vitres.measure.interleaved_latency`), so a change of load hits them alike.

A script imports it first, before ``vitres``::

    try:  # imported as part of the benchmarks package (the tests)
        from benchmarks import _common
    except ModuleNotFoundError:  # run as `python benchmarks/x.py`
        import _common
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The one folder every benchmark writes its results to.
RESULTS_DIR = ROOT / "benchmarks" / "results"

__all__ = [
    "RESULTS_DIR",
    "ROOT",
    "environment",
    "interleaved_timing",
    "markdown_table",
    "write_json",
    "write_markdown",
]


def _target(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(
    path: str | Path,
    data: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
    newline: bool = True,
) -> Path:
    """Writes ``data`` as JSON.

    Args:
        path: The file (usually in :data:`RESULTS_DIR`); missing folders are made.
        data: JSON-serialisable data.
        indent: Indentation of the JSON text.
        default: Converter for values ``json`` cannot write.
        newline: End the file with a newline.

    Returns:
        The path written.
    """
    target = _target(path)
    text = json.dumps(data, indent=indent, default=default)
    target.write_text(text + ("\n" if newline else ""))
    return target


def write_markdown(path: str | Path, text: str | Iterable[str]) -> Path:
    """Writes Markdown: a string as it is, or lines joined with a final newline.

    Args:
        path: The file (usually in :data:`RESULTS_DIR`); missing folders are made.
        text: The document, or its lines.

    Returns:
        The path written.
    """
    target = _target(path)
    if not isinstance(text, str):
        text = "\n".join(text) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | Sequence[str] = ""
) -> list[str]:
    """A Markdown table as lines.

    Args:
        header: Column titles.
        rows: Cells, one sequence per row (written with ``str``).
        align: Per column ``"l"`` (left, the plain ``---`` rule), ``"r"`` (``---:``) or
            ``"c"`` (``:---:``), as a string or a sequence; columns past its end are left.

    Returns:
        The header line, the rule and one line per row.
    """
    marks = {"l": "---", "r": "---:", "c": ":---:", "": "---"}
    aligns = list(align) + [""] * (len(header) - len(align))
    lines = [
        "| " + " | ".join(str(h) for h in header) + " |",
        "|" + "|".join(marks[a] for a in aligns) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def environment(**extra: Any) -> dict[str, Any]:
    """The machine a result was measured on: CPU, machine type, Python, torch and its
    thread count, then ``extra`` (which may replace any of them)."""
    import torch

    from vitres.measure import cpu_info

    return {
        "cpu": cpu_info().get("cpu") or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **extra,
    }


def interleaved_timing(
    runs: Mapping[str, Callable[[Any], Any]],
    x: Any,
    rounds: int,
    *,
    calls: int = 1,
    warmup_calls: int = 2,
    rotate: bool = True,
) -> dict[str, list[float]]:
    """Per-call seconds of every ``run(x)``, timed round-robin.

    Every run is warmed up first; then each round times ``calls`` calls of each run in
    turn, so machine noise hits every candidate alike.

    Args:
        runs: name -> the call to time, given ``x``.
        x: The argument of every call.
        rounds: Rounds of timing.
        calls: Timed calls per run per round.
        warmup_calls: Untimed calls per run before the first round.
        rotate: Rotate which run goes first from round to round
            (:func:`vitres.measure.interleaved_latency`); ``False`` keeps the given order
            in every round (A/B/A/B).

    Returns:
        name -> the duration of each timed call, in seconds, in call order.
    """
    import time

    from vitres.measure import interleaved_latency

    if rotate:
        return interleaved_latency(
            dict(runs), x, rounds=rounds, calls=calls, warmup_calls=warmup_calls
        )
    if rounds < 1 or calls < 1:
        raise ValueError(f"rounds and calls must be at least 1, got {rounds} and {calls}")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(warmup_calls):
        for run in runs.values():
            run(x)
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                samples[name].append(time.perf_counter() - start)
    return samples

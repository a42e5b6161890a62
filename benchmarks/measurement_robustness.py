"""Does the tuner's answer depend on what else the machine is doing?

1. Sweep the bundled model over the demo's ladder (``make demo``'s job: eager fp32 and
   bf16 at 12-56 px on the Fashion-MNIST test set) on a quiet machine.
2. Sweep it again, into a fresh file, while this script runs a bounded competing CPU load:
   one busy process, started ``--load-start`` seconds into the sweep and stopped after
   ``--load-seconds``, so it covers part of the sweep.
3. Per config: the ratio of the loaded sweep's stored median to the quiet one, whether
   the loaded record was flagged or re-measured, and whether the recommendation is the same.

Targets (printed met / missed):
- the recommendation under load equals the quiet one;
- no stored ``ok`` record is more than 1.5x its quiet median without a flag;
- the loaded sweep (the whole ``make demo`` job) takes <= 5 minutes.

    .venv/bin/python benchmarks/measurement_robustness.py [--limit N] [--load-seconds 60]

Writes benchmarks/results/measurement_robustness.{json,md}. Run it with nothing else
busy: the quiet sweep is the reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_markdown
from vitres.measure import env_fingerprint
from vitres.report.pipeline import DEFAULT_BACKENDS, DEFAULT_MODEL, DEFAULT_RESOLUTIONS, tune
from vitres.tune.records import latest_by_key, read_results


def _busy(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x = (x * 1103515245 + 12345) % 2147483648


def _start_load(delay_s: float, duration_s: float, log: list) -> threading.Thread:
    """One busy process, from ``delay_s`` after now for ``duration_s`` seconds."""

    def run() -> None:
        time.sleep(delay_s)
        start = time.time()
        log.append(("load on", start))
        process = multiprocessing.get_context("spawn").Process(
            target=_busy, args=(start + duration_s,), daemon=True
        )
        process.start()
        process.join(duration_s + 30)
        if process.is_alive():
            process.kill()
        log.append(("load off", time.time()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _sweep(out_dir: Path, limit: int | None) -> tuple[float, object]:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    start = time.perf_counter()
    result = tune(
        model=DEFAULT_MODEL,
        resolutions=DEFAULT_RESOLUTIONS,
        backends=DEFAULT_BACKENDS,
        out_dir=out_dir,
        eval_limit=limit,
        progress=True,
    )
    return time.perf_counter() - start, result


def config_table(rows: list[dict]) -> list[str]:
    """Each config's quiet and loaded latency, and whether the loaded one was flagged."""
    return markdown_table(
        ["config", "quiet median ms", "loaded (stored) ms", "ratio", "flagged", "unstable"]
        + ["attempts"],
        (
            (
                r["key"],
                f"{r['quiet_ms']:.3f}",
                f"{r['loaded_ms']:.3f}",
                f"{r['ratio']:.2f}",
                "yes" if r["flagged"] else "no",
                "yes" if r["unstable"] else "no",
                r["attempts"],
            )
            for r in sorted(rows, key=lambda r: r["key"])
        ),
        "lrrrccr",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="eval images (default: all)")
    parser.add_argument("--load-start", type=float, default=20.0, help="seconds into the sweep")
    parser.add_argument("--load-seconds", type=float, default=70.0, help="how long it lasts")
    parser.add_argument("--work-dir", default=None, help="where the two sweeps go (temp)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vitres-robust-"))

    quiet_s, quiet = _sweep(work / "quiet", args.limit)
    events: list = []
    loader = _start_load(args.load_start, args.load_seconds, events)
    loaded_s, loaded = _sweep(work / "loaded", args.limit)
    loader.join(args.load_start + args.load_seconds + 60)

    q = {m.key: m for m in latest_by_key(read_results(quiet.results_path)) if m.ok}
    lines = read_results(loaded.results_path)
    stored = {m.key: m for m in latest_by_key(lines) if m.ok}
    rows, unflagged_slow = [], []
    for key, m in stored.items():
        base = q.get(key)
        if base is None or not base.latency_ms:
            continue
        ratio = m.latency_ms / base.latency_ms
        evidence = m.interference or {}
        attempts = int(evidence.get("attempts", 1))
        row = {
            "key": key,
            "quiet_ms": base.latency_ms,
            "loaded_ms": m.latency_ms,
            "ratio": ratio,
            "flagged": m.flagged,
            "unstable": bool(m.latency.unstable),
            "attempts": attempts,
            "reasons": evidence.get("reasons", []),
        }
        rows.append(row)
        if ratio > 1.5 and not m.suspect:
            unflagged_slow.append(key)
    disturbed_attempts = sum(1 for m in lines if m.ok and (m.interference or {}).get("flagged"))
    same = (quiet.recommendation.choice is None and loaded.recommendation.choice is None) or (
        quiet.recommendation.choice is not None
        and loaded.recommendation.choice is not None
        and quiet.recommendation.choice.key == loaded.recommendation.choice.key
    )
    targets = {
        "same_recommendation": same,
        "no_unflagged_record_over_1.5x": not unflagged_slow,
        "loaded_demo_within_5_min": loaded_s <= 300,
    }
    env = env_fingerprint()
    t0 = events[0][1] if events else None
    result = {
        "cpu": env.get("cpu"),
        "cpu_flags": env.get("cpu_flags"),
        "cores": os.cpu_count(),
        "quiet_seconds": round(quiet_s, 1),
        "loaded_seconds": round(loaded_s, 1),
        "load": {"start_s": args.load_start, "seconds": args.load_seconds, "events": events},
        "quiet_answer": quiet.recommendation.sentence(),
        "loaded_answer": loaded.recommendation.sentence(),
        "configs": rows,
        "flagged_attempts": disturbed_attempts,
        "remeasured_configs": sum(r["attempts"] > 1 for r in rows),
        "unflagged_over_1.5x": unflagged_slow,
        "targets": targets,
        "work_dir": str(work),
        "load_started_unix": t0,
    }
    write_json(RESULTS_DIR / "measurement_robustness.json", result)
    md = [
        f"CPU: {env.get('cpu')} ({os.cpu_count()} logical cores). Quiet sweep {quiet_s:.0f} s; "
        f"loaded sweep {loaded_s:.0f} s with one busy process from {args.load_start:g} s for "
        f"{args.load_seconds:g} s.",
        "",
        *config_table(rows),
    ]
    md += [
        "",
        f"Quiet answer: {result['quiet_answer']}",
        "",
        f"Loaded answer: {result['loaded_answer']}",
        "",
        f"Disturbed timing windows seen: {disturbed_attempts}; configs re-measured: "
        f"{result['remeasured_configs']}.",
        "",
        *markdown_table(
            ["target", "met"],
            ((name, "yes" if ok else "**no**") for name, ok in targets.items()),
            "lc",
        ),
    ]
    write_markdown(RESULTS_DIR / "measurement_robustness.md", md)
    print("\n".join(md))


if __name__ == "__main__":
    main()

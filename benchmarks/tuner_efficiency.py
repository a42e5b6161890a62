"""How much measuring the adaptive tuner saves, and how good its latency cost model is.

Setup: CPU, eager fp32, ViT-S/16, batch 1, resolutions 96..448 px (step 16, 23 configs).

1. Exhaustive sweep of every resolution (latency-only: there are no trained ViT-S weights
   here, so the recommendation is the largest resolution the budget allows).
2. The latency budget is put between two measured neighbours in the middle of the
   ladder, so the right answer is known and is not an end point.
3. Adaptive sweep with the same budget into a fresh results file: it measures anchors,
   fits latency(N), and measures only where the recommendation is still uncertain. Its
   measurements replay the exhaustive records (so both strategies see identical numbers
   on this noisy, shared machine); a live adaptive run is reported beside it.
   Target: same recommendation with <= 40 % of the exhaustive sweep's measurements.
4. Cost model: fit on every other resolution of the exhaustive sweep, predict the rest.
   Target: median absolute error <= 10 % on the held-out resolutions.

    .venv/bin/python benchmarks/tuner_efficiency.py [--step 16] [--min-time 1.0]

Writes benchmarks/results/tuner_efficiency.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_markdown
from vitres.measure import TimingConfig, env_fingerprint
from vitres.tune.costmodel import fit_cost
from vitres.tune.recommend import Budget, recommend
from vitres.tune.records import read_results
from vitres.tune.sweep import run_sweep

MODEL = "vit_small_patch16"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lo", type=int, default=96)
    parser.add_argument("--hi", type=int, default=448)
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--min-time", type=float, default=1.0, help="timed seconds per config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default="runs/tuner_efficiency")
    args = parser.parse_args()

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ladder = f"{args.lo}:{args.hi}:{args.step}"
    timing = TimingConfig(min_s=args.min_time, min_calls=10)
    common = dict(resolutions=ladder, backends=("eager",), threads=args.threads, timing=timing)

    print(f"exhaustive sweep of {MODEL} over {ladder}", flush=True)
    exhaustive_path = work / "exhaustive.jsonl"
    run_sweep(MODEL, out_path=exhaustive_path, **common)
    exhaustive = sorted(
        (m for m in read_results(exhaustive_path) if m.ok), key=lambda m: m.config.resolution[0]
    )
    n_total = len(exhaustive)
    middle = n_total // 2
    low, high = exhaustive[middle], exhaustive[middle + 1]
    # the question here is the largest resolution within a latency limit: limits only
    budget = Budget(max_latency_ms=math.sqrt(low.latency_ms * high.latency_ms), apply_rule=False)
    truth = recommend(exhaustive, budget).choice

    # The adaptive strategy is judged on the same numbers: its "measurements" replay the
    # exhaustive records, so machine noise between two runs cannot decide the comparison.
    print(f"adaptive sweep (replayed) with max latency {budget.max_latency_ms:.2f} ms", flush=True)
    recorded = {m.key: m for m in exhaustive}
    adaptive_path = work / "adaptive.jsonl"
    if adaptive_path.exists():
        adaptive_path.unlink()  # the adaptive run must start from nothing
    run_sweep(
        MODEL,
        out_path=adaptive_path,
        adaptive=True,
        budget=budget,
        measure=lambda _ref, config, *rest: recorded[config.key()],
        **common,
    )
    measured = [m for m in read_results(adaptive_path) if m.ok]
    choice = recommend(measured, budget).choice
    same = choice is not None and truth is not None and choice.key == truth.key
    fraction = len(measured) / n_total

    # and live, measuring for real (its answer can differ when the machine's speed drifts)
    live_path = work / "adaptive_live.jsonl"
    if live_path.exists():
        live_path.unlink()
    run_sweep(MODEL, out_path=live_path, adaptive=True, budget=budget, **common)
    live = [m for m in read_results(live_path) if m.ok]
    live_choice = recommend(live, budget).choice

    # cost model on held-out resolutions
    train = exhaustive[::2]
    held = exhaustive[1::2]
    fit = fit_cost([m.tokens for m in train], [m.latency_ms for m in train])
    errors = [abs(fit.predict(m.tokens) / m.latency_ms - 1) * 100 for m in held]
    median_error = statistics.median(errors)

    report = {
        "benchmark": "tuner_efficiency",
        "model": MODEL,
        "ladder": ladder,
        "budget_max_latency_ms": budget.max_latency_ms,
        "exhaustive_measurements": n_total,
        "adaptive_measurements": len(measured),
        "adaptive_fraction": fraction,
        "adaptive_measured_resolutions": [m.config.resolution[0] for m in measured],
        "exhaustive_choice": truth.key if truth else None,
        "adaptive_choice": choice.key if choice else None,
        "same_recommendation": same,
        "live_adaptive_measurements": len(live),
        "live_adaptive_choice": live_choice.key if live_choice else None,
        "live_adaptive_measured_latency_ms": {m.config.resolution[0]: m.latency_ms for m in live},
        "cost_model_form": fit.form,
        "cost_model_coefficients": {"a": fit.a, "b": fit.b, "c": fit.c},
        "cost_model_median_abs_error_pct": median_error,
        "cost_model_errors_pct": dict(zip([m.config.resolution[0] for m in held], errors)),
        "targets": {"adaptive_fraction_max": 0.40, "median_error_pct_max": 10.0},
        "met": {"adaptive": same and fraction <= 0.40, "cost_model": median_error <= 10.0},
        "latency_ms": {m.config.resolution[0]: m.latency_ms for m in exhaustive},
        "env": env_fingerprint(args.threads),
    }
    write_json(RESULTS_DIR / "tuner_efficiency.json", report)

    def px(m: Any) -> str:
        return f"{m.config.resolution[0]} px" if m else "- px"

    rows = [
        (
            f"recommendation (max latency {budget.max_latency_ms:.1f} ms)",
            f"exhaustive: {px(truth)}, adaptive: {px(choice)} ({'same' if same else 'DIFFERENT'})",
            "same",
        ),
        (
            "measurements",
            f"adaptive {len(measured)} of {n_total} ({100 * fraction:.0f} %)",
            "<= 40 %",
        ),
        (
            "live adaptive run (re-measured)",
            f"{px(live_choice)} with {len(live)} measurements",
            "(informative)",
        ),
        (
            f"latency cost model ({fit.form}) median abs error, held-out resolutions",
            f"{median_error:.1f} %",
            "<= 10 %",
        ),
    ]
    lines = markdown_table(("measure", "result", "target"), rows)
    write_markdown(RESULTS_DIR / "tuner_efficiency.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""`vitres recommend RESULTS`: the best config under a budget, with the ΔAcc/ΔSpeed verdict."""

from __future__ import annotations

import argparse
import json


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The budget flags shared by ``recommend``, ``report`` and ``sweep --adaptive``."""
    group = parser.add_argument_group("budget")
    group.add_argument(
        "--max-latency-ms", type=float, help="median latency per call must not exceed this"
    )
    group.add_argument("--min-fps", type=float, help="throughput (images/s) must reach this")
    group.add_argument("--max-memory-mb", type=float, help="peak memory (MiB) must not exceed this")
    group.add_argument(
        "--max-acc-drop",
        type=float,
        default=1.5,
        help="accept when the accuracy drop is below this many points (default 1.5)",
    )
    group.add_argument(
        "--min-speedup",
        type=float,
        default=0.25,
        help="accept when ΔSpeed exceeds this fraction (default 0.25 = 25%%)",
    )
    group.add_argument(
        "--baseline",
        metavar="CONFIGKEY",
        help="config key to compare against (default: native resolution, fp32 eager, batch 1)",
    )


def budget_from_args(args: argparse.Namespace):  # noqa: ANN201 - Budget, imported lazily
    from vitres.recommend import Budget

    return Budget(
        max_latency_ms=args.max_latency_ms,
        min_fps=args.min_fps,
        max_memory_mb=args.max_memory_mb,
        max_acc_drop=args.max_acc_drop,
        min_speedup=args.min_speedup,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="pick the most accurate config that meets a budget",
        description="Reads a sweep results file and prints the most accurate config that meets the "
        "budget (ties: fastest), its Pareto front, and the acceptance verdict against the baseline.",
    )
    parser.add_argument(
        "results", metavar="RESULTS", help="results file written by `vitres sweep` (JSON lines)"
    )
    add_budget_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from vitres.recommend import format_recommendation, recommend
    from vitres.records import read_results

    if not os.path.exists(args.results):
        raise FileNotFoundError(
            f"no results file at {args.results}; run `vitres sweep --out {args.results}` first"
        )
    rec = recommend(read_results(args.results), budget_from_args(args), args.baseline)
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
    else:
        print(format_recommendation(rec))
    return 0 if rec.choice is not None else 1

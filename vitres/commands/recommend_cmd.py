"""`vitres recommend RESULTS`: the config to deploy under a budget, by the acceptance rule."""

from __future__ import annotations

import argparse
import json

from vitres.commands.args import DefaultsFormatter, add_budget_arguments, budget_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="the config to deploy under a budget, by the acceptance rule",
        description="Reads a sweep results file and prints the most accurate config that meets "
        "the budget and that the acceptance rule accepts against the baseline (ties: fastest). "
        "Exits 1 when nothing passes, naming the closest config and by how much it misses.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "results", metavar="RESULTS", help="results file written by `vitres sweep` (JSON lines)"
    )
    add_budget_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    parser.set_defaults(func=run)


def load_recommendation(path: str, args: argparse.Namespace):  # noqa: ANN201 - Recommendation
    """The one decision for a results file and the budget flags (shared by the commands)."""
    import os

    from vitres.tune.recommend import recommend
    from vitres.tune.records import read_results

    if not os.path.exists(path):
        raise FileNotFoundError(f"no results file at {path}; run `vitres sweep --out {path}` first")
    return recommend(read_results(path), budget_from_args(args), args.baseline)


def run(args: argparse.Namespace) -> int:
    from vitres.tune.recommend import format_recommendation

    rec = load_recommendation(args.results, args)
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
    else:
        print(format_recommendation(rec))
    return 0 if rec.choice is not None else 1

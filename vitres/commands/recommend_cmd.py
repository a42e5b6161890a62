"""`vitres recommend RESULTS`: the config to deploy under a budget, by the acceptance rule."""

from __future__ import annotations

import argparse
import json
import os
import sys

from vitres.commands.args import DefaultsFormatter, add_budget_arguments, budget_from_args
from vitres.commands.csv_out import add_csv_argument, check_csv_path, write_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="the config to deploy under a budget, by the acceptance rule",
        description="Reads a sweep results file and prints the most accurate config that meets "
        "the budget and that the acceptance rule accepts against the baseline (ties: fastest). "
        "Exits 1 when nothing passes (or accuracy was not measured, so nothing can pass), "
        "naming the closest config and by how much it misses.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "results", metavar="RESULTS", help="results file written by `vitres sweep` (JSON lines)"
    )
    add_budget_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    add_csv_argument(parser)
    parser.set_defaults(func=run)


def load_recommendation(path: str, args: argparse.Namespace):  # noqa: ANN201 - Recommendation
    """The one decision for a results file and the budget flags (shared by the commands)."""
    import os

    from vitres.tune.recommend import recommend
    from vitres.tune.records import read_results

    if not os.path.exists(path):
        raise FileNotFoundError(f"no results file at {path}; run `vitres sweep --out {path}` first")
    return recommend(
        read_results(path), budget_from_args(args), args.baseline, args.host, args.for_model
    )


def recommendation_rows(rec) -> list[dict]:  # noqa: ANN001 - a Recommendation
    """One CSV row per measured config: its figures and its verdict against the baseline."""
    from vitres.commands.csv_out import measurement_row
    from vitres.tune.records import latest_by_key
    from vitres.tune.rule import judge

    feasible = {m.key for m in rec.feasible}
    front = {m.key for m in rec.front}
    chosen = None if rec.choice is None else rec.choice.key
    rows = []
    for m in latest_by_key([r for r in rec.records if r.ok]):
        row = measurement_row(m)
        j = judge(m, rec.baseline, rec.budget) if rec.baseline is not None else None
        row.update(
            baseline=rec.baseline is not None and m.key == rec.baseline.key,
            within_budget=m.key in feasible,
            pareto=m.key in front,
            chosen=m.key == chosen,
            delta_acc=None if j is None else j.delta_acc,
            delta_acc_points=None if j is None else j.delta_acc_points,
            delta_speed=None if j is None else j.delta_speed,
            speedup=None if j is None else j.speedup,
            accepted=None if j is None else j.accepted,
        )
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    check_csv_path(args.csv)
    from vitres.tune.hostkind import describe_host, split_by_host
    from vitres.tune.recommend import format_recommendation, recommend_per_host
    from vitres.tune.records import read_results

    if args.host is None and os.path.exists(args.results):
        records = read_results(args.results)
        kinds = split_by_host(m for m in records if m.ok)
        if len(kinds) > 1:  # one recommendation per machine kind, never mixed
            per = recommend_per_host(records, budget_from_args(args), args.baseline, args.for_model)
            if args.json:
                print(json.dumps({k: r.to_dict() for k, r in per.items()}, indent=2))
            else:
                for kind, rec in per.items():
                    print(f"== {kind}: {describe_host(kinds[kind][0].env)}")
                    print(format_recommendation(rec) + "\n")
            if args.csv:
                rows = [
                    {"host": k, **row} for k, r in per.items() for row in recommendation_rows(r)
                ]
                print(f"wrote {write_csv(args.csv, rows)}", file=sys.stderr)
            return 0 if all(r.deployable for r in per.values()) else 1
    rec = load_recommendation(args.results, args)
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
    else:
        print(format_recommendation(rec))
    if args.csv:
        path = write_csv(args.csv, recommendation_rows(rec))
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0 if rec.deployable else 1

"""`vitres check`: a CI gate -- fail when a new sweep regresses against a baseline sweep."""

from __future__ import annotations

import argparse
import dataclasses
import json

from vitres.commands.csv_out import add_csv_argument, check_csv_path, write_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="compare a sweep with a baseline sweep; exit 1 on a latency or accuracy regression",
        description="Matches the records of two results files by config key and fails (exit 1) "
        "when a config got slower by more than --max-latency-regression AND beyond the "
        "measurement noise (95%% interval of the difference of medians, from the stored IQR and "
        "call count), lost more than --max-acc-drop points of accuracy, or failed. Exit 0 when "
        "nothing regressed, 2 on bad input (unreadable files, no common configs, different "
        "machine kinds without --allow-host-change).",
    )
    parser.add_argument("--baseline", required=True, help="results file of the reference run")
    parser.add_argument("--current", required=True, help="results file of the run under test")
    add_csv_argument(parser)
    parser.add_argument(
        "--max-latency-regression",
        default="10%",
        help="allowed slow-down of the median latency: 10%% or 0.10 (default 10%%)",
    )
    parser.add_argument(
        "--max-acc-drop",
        type=float,
        default=0.5,
        help="allowed accuracy drop in percentage points (default 0.5)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the noise intervals (default 0.95)",
    )
    parser.add_argument(
        "--acc-noise",
        action="store_true",
        help="also require an accuracy drop beyond its binomial interval (from n_eval)",
    )
    parser.add_argument(
        "--allow-host-change",
        action="store_true",
        help="compare runs from different machine kinds (CPU model, cores, flags, GPU)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="pass even when baseline configs are absent from the current run (by default a "
        "missing config fails the gate: a run that measured nothing must not pass)",
    )
    parser.add_argument(
        "--fail-on-missing", action="store_true", help=argparse.SUPPRESS
    )  # the old flag: now the default
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_csv_path(args.csv)
    from vitres.tune.check import CheckPolicy, check_files, format_check, parse_fraction

    policy = CheckPolicy(
        max_latency_regression=parse_fraction(args.max_latency_regression),
        max_acc_drop=args.max_acc_drop,
        confidence=args.confidence,
        acc_noise=args.acc_noise,
        allow_host_change=args.allow_host_change,
        fail_on_missing=not args.allow_missing,
    )
    result = check_files(args.baseline, args.current, policy)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_check(result))
    if args.csv:
        rows = [{**dataclasses.asdict(v), "reasons": "; ".join(v.reasons)} for v in result.configs]
        rows += [{"key": k, "verdict": "missing"} for k in result.missing]
        rows += [{"key": k, "verdict": "added"} for k in result.added]
        print(f"wrote {write_csv(args.csv, rows)}")
    return 0 if result.passed else 1

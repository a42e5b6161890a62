"""`vitres demo`: the main job on the built-in default (sweep, recommend, report)."""

from __future__ import annotations

import argparse

from vitres.commands.args import (
    DefaultsFormatter,
    add_budget_arguments,
    add_measurement_arguments,
    add_res_argument,
    budget_from_args,
    thread_count,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.report.pipeline import DEFAULT_BACKENDS, DEFAULT_MODEL, DEFAULT_RESOLUTIONS

    parser = subparsers.add_parser(
        "demo",
        help="sweep the bundled Fashion-MNIST model, recommend a config, write the report",
        description="Sweeps the bundled reference model over a resolution ladder in fp32 and bf16 "
        "on the Fashion-MNIST test set, recommends a config under the budget (the same decision "
        "`vitres recommend` makes on the results file), and writes an HTML report. Re-running "
        "resumes: configs already measured are skipped.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model reference")
    parser.add_argument("--data", default="fashion-mnist", help="dataset for accuracy")
    add_res_argument(parser, default=DEFAULT_RESOLUTIONS)
    parser.add_argument("--backend", default=",".join(DEFAULT_BACKENDS), help="backends")
    parser.add_argument("--out-dir", default="runs/demo", help="output folder")
    parser.add_argument(
        "--limit",
        "--eval-limit",
        dest="limit",
        type=int,
        help="evaluate on the first N test images only (default: all)",
    )
    parser.add_argument("--threads", type=thread_count, help="torch threads (default: all cores)")
    add_measurement_arguments(parser)
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.report.pipeline import tune

    result = tune(
        model=args.model,
        data=args.data,
        resolutions=args.res,
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
        out_dir=args.out_dir,
        budget=budget_from_args(args),
        baseline=args.baseline,
        eval_limit=args.limit,
        threads=args.threads,
        keep_unstable=args.keep_unstable,
        max_attempts=args.max_attempts,
    )
    print(result.summary())
    return 0  # the job ran and wrote its report; "nothing passes" is an answer too

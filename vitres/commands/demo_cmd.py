"""`vitres demo`: the main job on the built-in default (sweep, recommend, report)."""

from __future__ import annotations

import argparse

from vitres.commands.recommend_cmd import add_budget_arguments, budget_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.pipeline import DEFAULT_BACKENDS, DEFAULT_MODEL, DEFAULT_RESOLUTIONS

    parser = subparsers.add_parser(
        "demo",
        help="sweep the bundled Fashion-MNIST model, recommend a config, write the report",
        description="Sweeps the bundled reference model over a resolution ladder in fp32 and bf16 "
        "on the Fashion-MNIST test set, recommends a config under the budget, and writes an HTML "
        "report. Re-running resumes: configs already measured are skipped.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    parser.add_argument("--data", default="fashion-mnist", help="dataset for accuracy")
    parser.add_argument("--res", default=DEFAULT_RESOLUTIONS, help="resolution ladder")
    parser.add_argument(
        "--backend", default=",".join(DEFAULT_BACKENDS), help="backends, comma-separated"
    )
    parser.add_argument("--out-dir", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N test images only")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.pipeline import tune

    result = tune(
        model=args.model,
        data=args.data,
        resolutions=args.res,
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
        out_dir=args.out_dir,
        budget=budget_from_args(args),
        eval_limit=args.eval_limit,
        threads=args.threads,
    )
    print(result.summary())
    return 0

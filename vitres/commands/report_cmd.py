"""`vitres report RESULTS --out report.html`: plots and tables of a sweep."""

from __future__ import annotations

import argparse

from vitres.commands.recommend_cmd import add_budget_arguments, budget_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an HTML (and Markdown) report of a sweep",
        description="Writes one self-contained HTML file with embedded plots, and a Markdown file "
        "(with its PNGs in <name>_files/) beside it.",
    )
    parser.add_argument("results", metavar="RESULTS", help="results file written by `vitres sweep`")
    parser.add_argument(
        "--out", default="report.html", help="HTML file to write (default report.html)"
    )
    parser.add_argument("--title", default="vitres resolution report", help="report title")
    parser.add_argument("--no-markdown", action="store_true", help="write only the HTML file")
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from vitres.report import write_report

    if not os.path.exists(args.results):
        raise FileNotFoundError(
            f"no results file at {args.results}; run `vitres sweep --out {args.results}` first"
        )
    html_path, md_path = write_report(
        args.results,
        args.out,
        budget_from_args(args),
        baseline=args.baseline,
        title=args.title,
        markdown=not args.no_markdown,
    )
    print(f"wrote {html_path}" + (f" and {md_path}" if md_path else ""))
    return 0

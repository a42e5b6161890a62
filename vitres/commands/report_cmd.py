"""`vitres report RESULTS --out report.html`: the recommendation, its plots and tables."""

from __future__ import annotations

import argparse

from vitres.commands.args import DefaultsFormatter, add_budget_arguments
from vitres.commands.recommend_cmd import load_recommendation


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an HTML (and Markdown) report of a sweep and its recommendation",
        description="Makes the same decision as `vitres recommend` with the same flags, and "
        "writes one self-contained HTML file with embedded plots, and a Markdown file (with "
        "its PNGs in <name>_files/) beside it.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("results", metavar="RESULTS", help="results file written by `vitres sweep`")
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    parser.add_argument("--title", default="vitres resolution report", help="report title")
    parser.add_argument("--no-markdown", action="store_true", help="write only the HTML file")
    parser.add_argument(
        "--screenshot",
        metavar="PNG",
        help="also render the HTML in headless Chromium to this PNG (needs chromium)",
    )
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.tune.report import write_report

    rec = load_recommendation(args.results, args)
    html_path, md_path = write_report(
        rec, args.out, title=args.title, markdown=not args.no_markdown
    )
    print(rec.sentence())
    print(f"wrote {html_path}" + (f" and {md_path}" if md_path else ""))
    if args.screenshot:
        from vitres.tune.render import screenshot

        print(f"wrote {screenshot(html_path, args.screenshot)}")
    return 0

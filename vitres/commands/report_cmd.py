"""`vitres report RESULTS --out report.html`: the recommendation, its plots and tables;
with ``--analysis`` (or ``--separability``, ``--tsne``, ``--ood SET``) also OOD detection,
class overlap and t-SNE per resolution."""

from __future__ import annotations

import argparse
import os

from vitres.commands.args import (
    DefaultsFormatter,
    add_analysis_arguments,
    add_budget_arguments,
    add_res_argument,
)
from vitres.commands.recommend_cmd import load_recommendation


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an HTML (and Markdown) report of a sweep and its recommendation",
        description="Makes the same decision as `vitres recommend` with the same flags, and "
        "writes one self-contained HTML file with embedded plots, and a Markdown file (with "
        "its PNGs in <name>_files/) beside it. The analysis flags add a section measured "
        "with the model and the data: class overlap and silhouette, t-SNE and OOD AUROC per "
        "method at each resolution of the records, and the overlap rule (lower the resolution when classes overlap) as advice.",
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
    group = parser.add_argument_group(
        "analysis (runs the model on the data; needs scikit-learn: pip install 'vitres[explain]')",
        "Off unless asked. Measured at the records' resolutions (or --res), with one patch "
        "size (--patch-size, else the model's own).",
    )
    group.add_argument(
        "--analysis",
        action="store_true",
        help="all of --separability, --tsne and --ood (digits unless --ood is given)",
    )
    group.add_argument(
        "--separability",
        action="store_true",
        help="class overlap (k nearest neighbours) and silhouette per resolution",
    )
    group.add_argument(
        "--tsne", action="store_true", help="a t-SNE scatter of the test features per resolution"
    )
    group.add_argument(
        "--ood",
        metavar="SET",
        default=None,
        help="OOD AUROC and FPR95 per method against SET: digits or an image folder",
    )
    group.add_argument(
        "--model",
        default=None,
        help="the model to analyse (default: the one model the records name); "
        "a bundled name, a checkpoint, ...",
    )
    add_res_argument(group)
    add_analysis_arguments(group)
    parser.set_defaults(func=run)


def _analysis(args: argparse.Namespace, rec):  # noqa: ANN001, ANN202 - Recommendation, ReportAnalysis
    """The :class:`~vitres.report.analysis.ReportAnalysis` the flags ask for, or ``None``."""
    separability = args.separability or args.analysis
    tsne = args.tsne or args.analysis
    ood = args.ood or ("digits" if args.analysis else None)
    if not (separability or tsne or ood):
        return None
    import torch

    from vitres.layers.sizes import parse_resolutions
    from vitres.report.analysis import analyse_for_report

    if args.threads:
        torch.set_num_threads(args.threads)
    return analyse_for_report(
        rec,
        args.model,
        args.data,
        resolutions=parse_resolutions(args.res) if args.res else None,
        separability=separability,
        tsne=tsne,
        ood=ood,
        methods=args.methods,
        limit=args.limit,
        train_limit=args.train_limit,
        ood_limit=args.ood_limit,
        k=args.k,
        tsne_points=args.tsne_points,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from vitres.commands.paths import check_output_file
    from vitres.report import write_report
    from vitres.tune.records import read_results

    check_output_file(args.out, "--out")
    check_output_file(args.screenshot, "--screenshot")
    if not read_results(args.results) and os.path.exists(args.results):
        raise ValueError(
            f"no records in {args.results}: it is empty; run `vitres sweep --out "
            f"{args.results}` (or give the file a sweep wrote)"
        )
    rec = load_recommendation(args.results, args)
    analysis = _analysis(args, rec)
    html_path, md_path = write_report(
        rec, args.out, title=args.title, markdown=not args.no_markdown, analysis=analysis
    )
    print(rec.sentence())
    check = None if analysis is None else analysis.rule_check()
    if check is not None:
        print(f"Advice (feature space): {check.text()}")
    print(f"wrote {html_path}" + (f" and {md_path}" if md_path else ""))
    if args.screenshot:
        from vitres.report.render import screenshot

        try:
            print(f"wrote {screenshot(html_path, args.screenshot)}")
        except RuntimeError as error:
            raise ValueError(f"the report was written, but no screenshot: {error}") from None
    return 0

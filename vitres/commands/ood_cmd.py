"""`vitres ood`: OOD detection and class separability of a model at several resolutions."""

from __future__ import annotations

import argparse
import json
import sys

from vitres.commands.args import add_analysis_arguments, add_device_argument, add_model_argument
from vitres.commands.csv_out import add_csv_argument, check_csv_path, write_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ood",
        help="OOD scores (MSP, MaxLogit, energy, Mahalanobis, ViM) and class overlap per resolution",
        description="At each resolution: accuracy on the test split; AUROC and FPR at 95 % TPR of "
        "each OOD score, test split vs the OOD set (Mahalanobis and ViM fitted on the training "
        "split at that resolution); class overlap (fraction of test points whose 10 nearest "
        "neighbours in standardised feature space are mostly of another class) and silhouette.",
    )
    add_model_argument(parser)
    add_analysis_arguments(parser)
    parser.add_argument(
        "--ood",
        default="digits",
        help="OOD set: digits (scikit-learn's 8x8 digits) or an image folder",
    )
    parser.add_argument(
        "--res", default="16,28,56", help="resolutions, comma-separated (28 or 40x24)"
    )
    parser.add_argument(
        "--no-separability", action="store_true", help="skip class overlap and silhouette"
    )
    parser.add_argument("--plot", default=None, help="write AUROC/FPR vs resolution to this PNG")
    parser.add_argument(
        "--tsne", default=None, help="write a t-SNE scatter per resolution to this PNG"
    )
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_csv_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitres.explain import analyse_resolutions, analysis_table
    from vitres.explain.plots import ood_figure, tsne_figure
    from vitres.layers.sizes import parse_resolutions

    check_csv_path(args.csv)
    from vitres.commands.paths import check_output_file

    check_output_file(args.plot, "--plot")
    check_output_file(args.tsne, "--tsne")
    if args.threads:
        torch.set_num_threads(args.threads)
    analysis = analyse_resolutions(
        args.model,
        parse_resolutions(args.res),
        args.data,
        args.ood,
        methods=args.methods,
        train_limit=args.train_limit,
        limit=args.limit,
        ood_limit=args.ood_limit,
        separability=not args.no_separability,
        k=args.k,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        data_dir=args.data_dir,
        progress=not args.no_progress and not args.json,
        device=args.device,
    )
    written = []
    if args.plot:
        ood_figure({args.model: analysis}).savefig(args.plot, dpi=120, bbox_inches="tight")
        written.append(args.plot)
    if args.tsne:
        embeddings = analysis.tsne_embeddings(args.tsne_points, progress=not args.no_progress)
        overlaps = {r.label: r.overlap for r in analysis.results if r.overlap is not None}
        figure = tsne_figure(embeddings, class_names=analysis.classes, overlaps=overlaps)
        figure.savefig(args.tsne, dpi=120, bbox_inches="tight")
        written.append(args.tsne)
    if args.csv:
        written.append(str(write_csv(args.csv, _csv_rows(args.model, analysis))))
    document = analysis.to_dict()
    for warning in document["warnings"]:
        print(f"vitres: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({**document, "files": written}))
        return 0
    fitted = (
        f"; Mahalanobis/ViM fitted on {analysis.n_train} training images"
        if analysis.n_train
        else ""
    )
    print(
        f"{args.model}: {analysis.id_data} (n={analysis.n_id}) vs {analysis.ood_data} "
        f"(n={analysis.n_ood}){fitted}"
    )
    print(f"OOD images: {analysis.ood_conversion}")
    print("cells: AUROC (FPR at 95 % TPR), best method in bold")
    print(analysis_table({args.model: analysis}))
    if spread := _interval_line(analysis):
        print(spread)
    check = analysis.rule_check()
    if check is not None:
        print(check.text())
    for path in written:
        print(f"wrote {path}")
    return 0


def _interval_line(analysis) -> str | None:
    """The range of AUROC's 95 % interval half-widths over the table's cells."""
    halves = [
        (interval[1] - interval[0]) / 2
        for r in analysis.results
        for metrics in r.ood.values()
        if (interval := metrics.auroc_ci95) is not None
    ]
    if not halves:
        return None
    low, high = f"±{min(halves):.3f}", f"±{max(halves):.3f}"
    span = high if low == high else f"{low} to {high}"
    return (
        f"AUROC 95 % intervals (Hanley–McNeil, {analysis.n_id} vs {analysis.n_ood} images): {span}"
    )


def _csv_rows(model: str, analysis) -> list[dict]:  # noqa: ANN001 - a ResolutionAnalysis
    """One row per resolution and OOD method (one per resolution without OOD data)."""
    return [
        {
            "model": model,
            "resolution": f"{r.resolution[0]}x{r.resolution[1]}",
            "accuracy": r.accuracy,
            "overlap": r.overlap,
            "method": method,
            "auroc": None if metrics is None else metrics.auroc,
            "fpr95": None if metrics is None else metrics.fpr95,
            "n_id": analysis.n_id,
            "n_ood": analysis.n_ood,
            "n_train": analysis.n_train,
        }
        for r in analysis.results
        for method, metrics in (list(r.ood.items()) or [(None, None)])
    ]

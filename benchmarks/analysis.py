"""What changes with resolution beyond accuracy: OOD detection and class separability.

For the bundled ``fmnist-vit-single`` (trained at 28 px) and ``fmnist-vit-multires``
(trained at 12..56 px), at 16, 20, 28, 40 and 56 px, with :func:`vitres.explain.analyse_resolutions`:

* accuracy on the Fashion-MNIST test split;
* OOD detection, Fashion-MNIST test (in-distribution) vs scikit-learn's 1,797 8x8 digits
  (OOD): AUROC and FPR at 95 % TPR of MSP, MaxLogit, energy, Mahalanobis and ViM, the
  last two fitted per resolution on the first ``--train-limit`` training images;
* class overlap (k = 10 nearest neighbours in standardised feature space, majority of
  another class) and silhouette of the test features;
* the seed's rule ("overlap > 30 % at high resolution -> lower the resolution") checked
  against the measured accuracy.

Writes ``benchmarks/results/analysis.{json,md}``, ``analysis.png`` (AUROC and FPR vs
resolution), ``analysis_tsne_{single,multires}.png`` and ``attention.png`` (one test image,
both models, several resolutions).

Usage::

    nice -n 10 .venv/bin/python benchmarks/analysis.py [--limit N] [--train-limit 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import numpy as np
import torch

from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_markdown
from vitres.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from vitres.explain import (
    OVERLAP_RULE_THRESHOLD,
    analyse_resolutions,
    analysis_table,
    explain_image,
    tsne_embedding,
)
from vitres.explain.metrics import average_ranks
from vitres.explain.plots import attention_figure, ood_figure, tsne_figure
from vitres.models.checkpoint import load_model

RESOLUTIONS = (16, 20, 28, 40, 56)
MODELS = {"single": "fmnist-vit-single", "multires": "fmnist-vit-multires"}
TSNE_RESOLUTIONS = ("16", "28", "56")
ATTENTION_RESOLUTIONS = (16, 28, (40, 24), 56)
TARGET_RESOLUTION = "28"
TARGET_AUROC = 0.9
HELP_MARGIN = 0.01  # a lower resolution at least 1 point more accurate
RELATIVE_MARGIN = 0.05  # a lower resolution overlapping at least 5 points less


def _spearman(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(average_ranks(np.array(x)), average_ranks(np.array(y)))[0, 1])


def rule_check(results: dict[str, dict]) -> dict:
    """The seed's rule against accuracy.

    For each model and each resolution >= 28 px taken as the high resolution: does the
    rule fire (overlap > 30 %)? Does a relative form fire (a lower resolution of the table
    overlaps at least ``RELATIVE_MARGIN`` less)? Is a lower resolution at least
    ``HELP_MARGIN`` more accurate ("lowering helps")? A rule is right when it fires
    exactly when lowering helps.
    """
    rows = []
    overlaps, accuracies = [], []
    for name, analysis in results.items():
        entries = analysis["results"]
        for entry in entries:
            overlaps.append(entry["overlap"])
            accuracies.append(entry["accuracy"])
        for index, entry in enumerate(entries):
            if entry["resolution"][0] < 28:
                continue
            lower = entries[:index]
            best_lower = max(lower, key=lambda e: e["accuracy"])
            least_overlap = min(e["overlap"] for e in lower)
            fires = entry["overlap"] > OVERLAP_RULE_THRESHOLD
            relative = least_overlap <= entry["overlap"] - RELATIVE_MARGIN
            helps = best_lower["accuracy"] >= entry["accuracy"] + HELP_MARGIN
            rows.append(
                {
                    "model": name,
                    "high_res": entry["label"],
                    "overlap": entry["overlap"],
                    "accuracy": entry["accuracy"],
                    "rule_fires": fires,
                    "relative_rule_fires": relative,
                    "best_lower_res": best_lower["label"],
                    "best_lower_accuracy": best_lower["accuracy"],
                    "lowering_helps": helps,
                    "rule_right": fires == helps,
                    "relative_rule_right": relative == helps,
                }
            )
    return {
        "threshold": OVERLAP_RULE_THRESHOLD,
        "relative_margin": RELATIVE_MARGIN,
        "help_margin": HELP_MARGIN,
        "cases": rows,
        "rule_right": sum(r["rule_right"] for r in rows),
        "relative_rule_right": sum(r["relative_rule_right"] for r in rows),
        "cases_total": len(rows),
        "spearman_overlap_vs_accuracy": _spearman(overlaps, accuracies),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    analyses, results, seconds = {}, {}, {}
    for name, reference in MODELS.items():
        start = time.time()
        analysis = analyse_resolutions(
            reference,
            RESOLUTIONS,
            "fashion-mnist",
            "digits",
            train_limit=args.train_limit,
            limit=args.limit,
            batch_size=args.batch_size,
        )
        seconds[name] = round(time.time() - start, 1)
        analyses[name] = analysis
        results[name] = analysis.to_dict()
        print(f"{name}: {seconds[name]} s", flush=True)
    ood_figure(analyses).savefig(RESULTS_DIR / "analysis.png", dpi=120, bbox_inches="tight")
    for name, analysis in analyses.items():
        embeddings = {
            label: tsne_embedding(
                analysis.test_features[label].features,
                analysis.test_features[label].labels,
                max_points=args.tsne_points,
            )
            for label in TSNE_RESOLUTIONS
        }
        overlaps = {r.label: r.overlap for r in analysis.results}
        figure = tsne_figure(embeddings, FASHION_MNIST_CLASSES, overlaps)
        figure.suptitle(f"t-SNE of {MODELS[name]}'s features (Fashion-MNIST test)", fontsize=10)
        figure.savefig(RESULTS_DIR / f"analysis_tsne_{name}.png", dpi=110, bbox_inches="tight")
    test = load_fashion_mnist("test")
    image = test.images[args.attention_index]
    rows = {
        MODELS[name]: explain_image(load_model(reference), image, ATTENTION_RESOLUTIONS)
        for name, reference in MODELS.items()
    }
    title = (
        f"attention rollout, Fashion-MNIST test image {args.attention_index} "
        f"({FASHION_MNIST_CLASSES[int(test.labels[args.attention_index])]})"
    )
    attention_figure(rows, title).savefig(
        RESULTS_DIR / "attention.png", dpi=120, bbox_inches="tight"
    )
    targets = {}
    for name, result in results.items():
        entry = next(r for r in result["results"] if r["label"] == TARGET_RESOLUTION)
        targets[f"{name}_best_auroc_at_28_ge_0.9"] = {
            "method": entry["best_method"],
            "value": round(entry["best_auroc"], 4),
            "target": TARGET_AUROC,
            "met": entry["best_auroc"] >= TARGET_AUROC,
        }
    return {
        "benchmark": "analysis",
        "models": MODELS,
        "resolutions": list(RESOLUTIONS),
        "train_limit": args.train_limit,
        "limit": args.limit,
        "results": results,
        "rule_check": rule_check(results),
        "targets": targets,
        "seconds": seconds,
        "environment": environment(),
        "_analyses": analyses,
    }


def to_markdown(result: dict) -> str:
    first = next(iter(result["results"].values()))
    lines = [
        f"In-distribution: {first['id_data']} (n = {first['n_id']}); OOD: {first['ood_data']} "
        f"(n = {first['n_ood']}; {first['ood_conversion']}). Mahalanobis and ViM are fitted "
        f"per resolution on the first {first['n_train']} training images. Cells: AUROC (FPR at "
        "95 % TPR); the best method per row in bold. Overlap: fraction of test points whose "
        f"{first['k']} nearest neighbours (standardised features) are mostly of another class.",
        "",
        analysis_table(result["_analyses"]),
        "",
        *markdown_table(
            ("target", "method", "value", "met"),
            (
                (name, t["method"], f"{t['value']:.3f}", "yes" if t["met"] else "**no**")
                for name, t in result["targets"].items()
            ),
            "llrc",
        ),
    ]
    check = result["rule_check"]
    lines += [
        "",
        f"The seed's rule (overlap > {check['threshold']:.0%} at high resolution → lower it) "
        "against the measured accuracy, each resolution ≥ 28 px taken as the high one. "
        f"Lowering helps: a lower resolution of the table is ≥ {check['help_margin'] * 100:.0f} "
        f"point more accurate. Relative rule: a lower resolution overlaps ≥ "
        f"{check['relative_margin'] * 100:.0f} points less.",
        "",
    ]

    def yes(flag: bool, bold_no: bool = False) -> str:
        return "yes" if flag else ("**no**" if bold_no else "no")

    header = (
        "model",
        "high res",
        "overlap",
        "accuracy",
        "best lower res (accuracy)",
        "lowering helps",
        "seed rule fires",
        "right",
        "relative rule fires",
        "right",
    )
    cells = (
        (
            case["model"],
            f"{case['high_res']} px",
            f"{case['overlap'] * 100:.1f} %",
            f"{case['accuracy'] * 100:.1f} %",
            f"{case['best_lower_res']} px ({case['best_lower_accuracy'] * 100:.1f} %)",
            yes(case["lowering_helps"]),
            yes(case["rule_fires"]),
            yes(case["rule_right"], True),
            yes(case["relative_rule_fires"]),
            yes(case["relative_rule_right"], True),
        )
        for case in check["cases"]
    )
    lines += markdown_table(header, cells, "llrrlccccc")
    lines += [
        "",
        f"Seed rule right in {check['rule_right']} of {check['cases_total']} cases, relative "
        f"rule in {check['relative_rule_right']}; Spearman correlation of overlap and accuracy "
        f"over all rows: {check['spearman_overlap_vs_accuracy']:.2f}.",
        "",
        "Advice as `vitres ood` prints it: "
        + "; ".join(f"{name}: {r['advice']}" for name, r in result["results"].items()),
        "",
        f"CPU: {result['environment']['cpu']}, {result['environment']['threads']} thread(s), "
        f"torch {result['environment']['torch']}; wall time "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
        + " (accuracy work; not a timing benchmark).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (all)")
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tsne-points", type=int, default=2000)
    parser.add_argument("--attention-index", type=int, default=0)
    args = parser.parse_args()
    result = run(args)
    markdown = to_markdown(result)
    result.pop("_analyses")
    write_json(RESULTS_DIR / "analysis.json", result)
    write_markdown(RESULTS_DIR / "analysis.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

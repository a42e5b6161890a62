"""Which size policy is most accurate at sizes the patch does not divide?

A ViT with patch p sees an H×W input that p does not divide through its size policy:
``pad`` (zero-pad to the next multiple, padded tokens masked out of attention and
pooling), ``crop`` (drop the remainder), or ``resize`` (resample the image to the nearest
multiple). The benchmark scores the bundled Fashion-MNIST models on the full test set at
sizes patch 4 does not divide (and, for reference, at divisible ones, where all policies
are identical) under each policy. The winner becomes the default for vitres-trained models;
imported models keep their source's behaviour (timm and Hugging Face crop).

    .venv/bin/python benchmarks/size_policy.py [--limit N]

Writes benchmarks/results/size_policy.{json,md}. Accuracy only: no timing, so it may run
beside other work.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_markdown
from vitres.data import get_dataset
from vitres.evaluate import accuracy_at
from vitres.models.checkpoint import load_model

MODELS = ("fmnist-vit-single", "fmnist-vit-multires")
POLICIES = ("pad", "crop", "resize")
SIZES = (26, 30, 34, 42, 50)
CONTROL = (28, 40)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="first N test images (all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = get_dataset("fashion-mnist", "test", in_chans=1)
    table: dict[str, dict[str, dict[str, float]]] = {}
    start = time.time()
    n = 0
    for name in MODELS:
        table[name] = {}
        for policy in POLICIES:
            model = load_model(name, size_policy=policy)
            row = {}
            for size in SIZES + CONTROL:
                acc, n = accuracy_at(model, data, size, batch_size=500, limit=args.limit)
                row[str(size)] = acc
                print(f"{name} {policy} {size}: {100 * acc:.2f}", file=sys.stderr)
            table[name][policy] = row
    best = {
        name: {str(size): max(POLICIES, key=lambda p: rows[p][str(size)]) for size in SIZES}
        for name, rows in table.items()
    }
    mean = {
        name: {p: sum(rows[p][str(s)] for s in SIZES) / len(SIZES) for p in POLICIES}
        for name, rows in table.items()
    }
    winner = max(POLICIES, key=lambda p: sum(mean[name][p] for name in MODELS))
    result = {
        "n": n,
        "sizes": SIZES,
        "control_sizes": CONTROL,
        "accuracy": table,
        "best_policy_per_size": best,
        "mean_accuracy_non_divisible": mean,
        "winner": winner,
        **environment(),
        "seconds": round(time.time() - start, 1),
    }
    write_json(RESULTS_DIR / "size_policy.json", result)
    header = ["model", "policy", *(f"{s} px" for s in SIZES + CONTROL), "mean (non-divisible)"]
    cells = [
        [name, policy]
        + [f"{100 * table[name][policy][str(s)]:.2f}" for s in SIZES + CONTROL]
        + [f"{100 * mean[name][policy]:.2f}"]
        for name in MODELS
        for policy in POLICIES
    ]
    lines = [
        f"Top-1 accuracy (%) on fashion-mnist/test (n = {n}) by size policy; 28 and 40 px are "
        "divisible by the patch (4), where every policy is the same.",
        "",
        *markdown_table(header, cells, "ll" + "r" * (len(SIZES) + len(CONTROL) + 1)),
    ]
    lines += ["", f"Most accurate on average over the non-divisible sizes: **{winner}**."]
    write_markdown(RESULTS_DIR / "size_policy.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Resolution robustness on Fashion-MNIST: interpolation versus multi-resolution training.

Scores on the full Fashion-MNIST test set (10,000 images), at 16, 20, 28, 40 and 56 px:

* ``fmnist-vit-single`` (trained at 28 px, the bundled model) with each position-table
  resampling mode (nearest, bilinear, bicubic, area, fourier): what interpolation alone
  achieves;
* ``fmnist-vit-multires`` (one resolution per step from 12..56 px during training);
* the 16, 28 and 56 px specialists: the same architecture and the same 10-epoch budget
  as the multi-resolution model, one resolution only. (The bundled single-resolution
  model is the 28 px recipe trained 22 epochs; it gives the interpolation rows and the
  "single >= 90 %" target, the equal-budget specialists give the "within 1 point" one.)

At 28 px the single-resolution model's grid is its native one, so no resampling happens
and every mode gives the same number (computed once). Writes
``benchmarks/results/resolution_robustness.{json,md,png}`` and prints the table.
Per-cell results are cached in ``runs/resolution_robustness.cache.jsonl``, keyed on a hash
of the weights, so an interrupted run resumes and a retrained model is never served old
numbers; ``--fresh`` ignores the cache.

Usage::

    .venv/bin/python benchmarks/resolution_robustness.py [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import torch

from benchmarks._common import (
    RESULTS_DIR,
    ROOT,
    environment,
    markdown_table,
    write_json,
    write_markdown,
)
from vitres.data import load_fashion_mnist
from vitres.evaluate import accuracy_at
from vitres.models.checkpoint import load_model

CACHE = ROOT / "runs" / "resolution_robustness.cache.jsonl"
RESOLUTIONS = (16, 20, 28, 40, 56)
MODES = ("nearest", "bilinear", "bicubic", "area", "fourier")
SINGLE = "fmnist-vit-single"
MULTIRES = "fmnist-vit-multires"
SPECIALISTS = {
    "16": RESULTS_DIR / "models" / "fmnist-vit-spec16.safetensors",
    "28": RESULTS_DIR / "models" / "fmnist-vit-spec28.safetensors",
    "56": RESULTS_DIR / "models" / "fmnist-vit-spec56.safetensors",
}
NATIVE = 28  # the single-resolution model's training size


def variants() -> list[dict]:
    """Rows of the table: label, checkpoint, load overrides."""
    rows = [
        {"label": f"single-res (28 px) + {mode}", "model": SINGLE, "mode": mode} for mode in MODES
    ]
    rows.append({"label": "multi-res (12-56 px)", "model": MULTIRES, "mode": None})
    for size, path in SPECIALISTS.items():
        rows.append({"label": f"specialist {size} px", "model": str(path), "mode": None})
    return rows


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of the weights, so cached cells follow the model, not its file name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_key(row: dict, res: int, limit: int | None, digest: str) -> str:
    return json.dumps([row["model"], digest, row["mode"], res, limit])


def _read_cache() -> dict[str, float]:
    if not CACHE.exists():
        return {}
    out = {}
    for line in CACHE.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out[record["key"]] = record["accuracy"]
    return out


ROW_GROUPS = ("single", "multi", "specialist")


def run(
    limit: int | None,
    fresh: bool,
    batch_size: int,
    allow_missing: bool = False,
    only: tuple[str, ...] = ROW_GROUPS,
) -> dict:
    cache = {} if fresh else _read_cache()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist("test")
    table: dict[str, dict[str, float]] = {}
    models_meta: dict[str, dict] = {}
    start = time.time()
    for row in variants():
        if not row["label"].startswith(only):
            continue
        overrides = {"pos_embed_mode": row["mode"]} if row["mode"] else {}
        try:
            model = load_model(row["model"], **overrides)
        except FileNotFoundError:
            if not allow_missing:
                raise
            print(f"  {row['label']}: checkpoint {row['model']} missing, skipped", flush=True)
            continue
        meta = getattr(model, "metadata", {})
        digest = weights_digest(model)
        models_meta[row["label"]] = {
            "checkpoint": row["model"],
            "pos_embed_mode": model.config.pos_embed_mode,
            "train_resolutions": meta.get("train_resolutions"),
            "train_seconds": meta.get("train_seconds"),
            "epochs": meta.get("epochs"),
            "weights_sha256_16": digest,
        }
        accuracy = {}
        for res in RESOLUTIONS:
            # At the native size no resampling happens: one number for every mode.
            probe = dict(row, mode=MODES[0]) if row["model"] == SINGLE and res == NATIVE else row
            key = _cache_key(probe, res, limit, digest)
            if key not in cache:
                t0 = time.time()
                cache[key], _ = accuracy_at(model, data, res, batch_size, limit)
                with open(CACHE, "a") as handle:
                    handle.write(json.dumps({"key": key, "accuracy": cache[key]}) + "\n")
                print(
                    f"  {row['label']:<34} {res:>3} px  {cache[key] * 100:6.2f}%  "
                    f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
            accuracy[str(res)] = cache[key]
        table[row["label"]] = accuracy
    return {
        "benchmark": "resolution_robustness",
        "dataset": "fashion-mnist/test",
        "n": len(data) if limit is None else min(limit, len(data)),
        "resolutions": list(RESOLUTIONS),
        "accuracy": table,
        "models": models_meta,
        "targets": targets(table) if len(table) == len(variants()) else {},
        "seconds": round(time.time() - start, 1),
        "environment": environment(),
    }


def targets(table: dict[str, dict[str, float]]) -> dict:
    """The acceptance targets of the reference models, in percentage points."""
    multi = table["multi-res (12-56 px)"]
    best_interp = {
        res: max(table[f"single-res (28 px) + {m}"][res] for m in MODES) for res in multi
    }
    specialist = {size: table[f"specialist {size} px"][size] for size in SPECIALISTS}
    single = table[f"single-res (28 px) + {MODES[0]}"]["28"]
    out: dict = {
        "single_at_28_ge_90": {
            "value": round(100 * single, 2),
            "target": 90.0,
            "met": single >= 0.90,
        }
    }
    for res, spec in specialist.items():
        gap = 100 * (multi[res] - spec)
        out[f"multires_within_1pt_of_specialist_at_{res}"] = {
            "multires": round(100 * multi[res], 2),
            "specialist": round(100 * spec, 2),
            "difference": round(gap, 2),
            "met": gap >= -1.0,
        }
    for res in ("16", "56"):
        gain = 100 * (multi[res] - best_interp[res])
        out[f"multires_3pt_above_best_interpolation_at_{res}"] = {
            "multires": round(100 * multi[res], 2),
            "best_interpolation": round(100 * best_interp[res], 2),
            "difference": round(gain, 2),
            "met": gain >= 3.0,
        }
    return out


def to_markdown(result: dict) -> str:
    res = result["resolutions"]
    lines = [
        f"Top-1 accuracy (%) on {result['dataset']} (n = {result['n']}), by input resolution.",
        "",
        *markdown_table(
            ["model", *(f"{r} px" for r in res)],
            (
                [label, *(f"{100 * accuracy[str(r)]:.2f}" for r in res)]
                for label, accuracy in result["accuracy"].items()
            ),
            "l" + "r" * len(res),
        ),
        "",
        *markdown_table(
            ("target", "numbers", "met"),
            (
                (
                    name,
                    ", ".join(f"{k} {v}" for k, v in check.items() if k != "met"),
                    "yes" if check["met"] else "**no**",
                )
                for name, check in result["targets"].items()
            ),
            "llc",
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Accuracy against input size: one line per model, interpolation modes dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    sizes = result["resolutions"]
    for label, accuracy in result["accuracy"].items():
        values = [100 * accuracy[str(r)] for r in sizes]
        if label.startswith("specialist"):
            size = label.split()[1]
            axes.plot([int(size)], [100 * accuracy[size]], "k*", markersize=11)
            axes.annotate(
                f"{size} px specialist",
                (int(size), 100 * accuracy[size]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
            continue
        style = "-o" if label.startswith("multi") else "--."
        width = 2.5 if label.startswith("multi") else 1.0
        axes.plot(sizes, values, style, linewidth=width, label=label)
    axes.set_xlabel("input size (px)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_xticks(sizes)
    axes.set_xlim(sizes[0] - 4, sizes[-1] + 6)
    axes.set_title(f"Fashion-MNIST test (n = {result['n']}): accuracy across resolutions")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower center")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--fresh", action="store_true", help="ignore cached cells")
    parser.add_argument(
        "--only",
        default=",".join(ROW_GROUPS),
        help="comma-separated row groups to score (fills the cache; the table and targets "
        f"need all of {','.join(ROW_GROUPS)})",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="skip models not trained yet (no targets)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = tuple(group.strip() for group in args.only.split(",") if group.strip())
    unknown = sorted(set(only) - set(ROW_GROUPS))
    if unknown:
        parser.error(f"--only: unknown group(s) {unknown}; expected some of {ROW_GROUPS}")
    result = run(args.limit, args.fresh, args.batch_size, args.allow_missing, only)
    if set(only) != set(ROW_GROUPS):  # a partial run only fills the cache
        print(to_markdown(result))
        return 0
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.limit is None else f".limit{args.limit}"
    write_json(RESULTS_DIR / f"resolution_robustness{suffix}.json", result)
    markdown = to_markdown(result)
    write_markdown(RESULTS_DIR / f"resolution_robustness{suffix}.md", markdown)
    plot(result, RESULTS_DIR / f"resolution_robustness{suffix}.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

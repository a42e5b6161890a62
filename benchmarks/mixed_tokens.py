"""Mixed-resolution tokens against uniform downscaling at equal token counts.

Issue 16's first benchmark. On the bundled ``fmnist-vit-single``, ``fmnist-vit-multires``
and ``fmnist-vit-flex`` models and the full Fashion-MNIST test set (10,000 images), at two
input sizes:

* **28 px** (the images as they are; 7 x 7 = 49 native tokens at patch 4), and
* **56 px** (the images upscaled 2x, bilinear; 14 x 14 = 196 native tokens), where detail
  is spatially uneven: flat background, a detailed garment.

For each token fraction ``f`` (25 %, 50 %, 75 % of the native tokens):

* **uniform**: the input resized (antialiased bilinear) so that the patch-4 grid is the
  square ``g x g`` nearest ``f x native`` in ratio (``g`` minimising
  ``|log(g**2 / (f N))|``), i.e. 16 / 20 / 24 px for 28 px inputs and 28 / 40 / 48 px for
  56 px inputs;
* **mixed**: the input at its own size, tokenised by the quadtree
  (:mod:`vitres.tokens.quadtree`) under a budget ``K = g**2``: the same number of tokens
  as uniform, never more (the table gives the mean tokens used).

Accuracy only; the cost column is FLOPs per image counted by ``FlopCounterMode``
(:func:`vitres.measure.count_flops`, the quadtree's embedding of every level included),
not timings. Target (issue 16): mixed beats uniform by >= 2 points at 25-50 % tokens.

``--selection-limit N`` first scores the quadtree's settings (levels, saliency,
proportional attention, learned-table positions, alignment) on the first N *training*
images at the 25 % and 50 % budgets, and the test set is then scored with the best of
them, so no setting is chosen on the test set (``QuadtreeTokenizer()``'s defaults were
set from this search); the table of that search is part of the results.

Also draws ``quadtree_tokens.png``: a test image upscaled to 56 px with the region
borders of its quadtree at the 25 % and 50 % budgets.

Writes ``benchmarks/results/mixed_tokens.{json,md}`` and ``quadtree_tokens.png``
(``*_quick.*`` with ``--quick``). ``run(args) -> dict`` and
``markdown(result) -> str`` are the entry points for ``benchmarks/token_adaptivity.py``.

Usage::

    taskset -c 1 .venv/bin/python benchmarks/mixed_tokens.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import torch
from tqdm.auto import tqdm

from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_markdown
from vitres.data import eval_batches, load_fashion_mnist, prepare_batch
from vitres.data.transforms import resize
from vitres.measure import count_flops
from vitres.models.checkpoint import load_model
from vitres.tokens import forward_plan, quadtree_plan
from vitres.tokens.quadtree import QuadtreeTokenizer

MODELS = ("fmnist-vit-single", "fmnist-vit-multires", "fmnist-vit-flex")
INPUT_SIZES = (28, 56)
FRACTIONS = (0.25, 0.5, 0.75)
TARGET_POINTS = 2.0
TARGET_FRACTIONS = (0.25, 0.5)


def uniform_side(native_tokens: int, fraction: float) -> int:
    """The side ``g`` of the square grid whose ``g**2`` tokens are nearest ``fraction x
    native_tokens`` in ratio."""
    wanted = fraction * native_tokens
    best = max(1, math.isqrt(int(wanted)))
    candidates = [c for c in (best - 1, best, best + 1) if c >= 1]
    return min(candidates, key=lambda g: (abs(math.log(g * g / wanted)), g))


def settings_grid() -> list[QuadtreeTokenizer]:
    """The quadtree settings the selection scores."""
    return [
        QuadtreeTokenizer(levels, saliency, proportional, positions, align, kernel)
        for levels, saliency, proportional, positions, align, kernel in itertools.product(
            (2, 3),
            ("gradient", "variance"),
            (True, False),
            ("average", "level"),
            ("clip", "resize"),
            (None, "nearest"),
        )
    ]


def describe(tokenizer: QuadtreeTokenizer) -> str:
    """``L3 gradient prop average clip model-kernel``: the settings in one short label."""
    prop = "prop" if tokenizer.proportional else "plain"
    kernel = tokenizer.kernel_resize_mode or "model"
    return (
        f"L{tokenizer.levels} {tokenizer.saliency} {prop} {tokenizer.table_positions} "
        f"{tokenizer.align} {kernel}-kernel"
    )


def batches(split: str, size: int, limit: int | None, batch_size: int, model: Any):
    """Normalised batches of the split at ``size`` px (bilinear, antialiased)."""
    data = load_fashion_mnist(split)
    cfg = model.config
    return eval_batches(
        data, size, batch_size, mean=cfg.mean, std=cfg.std, in_chans=cfg.in_chans, limit=limit
    )


@torch.no_grad()
def score(
    model: Any,
    split: str,
    size: int,
    limit: int | None,
    batch_size: int,
    *,
    uniform_size: int | None = None,
    token_budget: int | None = None,
    tokenizer: QuadtreeTokenizer | None = None,
    bar: Any = None,
) -> dict[str, float]:
    """Accuracy (and mean patch tokens) of one way of running ``model`` on ``size`` px inputs.

    ``uniform_size`` resizes each batch of ``size`` px inputs to it first; ``token_budget``
    runs the quadtree on the inputs as they are.
    """
    correct = total = tokens = fine = 0
    for x, y in batches(split, size, limit, batch_size, model):
        if uniform_size is not None and uniform_size != size:
            x = resize(x, uniform_size)
        if token_budget is None:
            logits = model(x)
            rows, cols = model.grid_size(tuple(x.shape[-2:]))
            tokens += rows * cols * len(y)
        else:
            fitted, plan = quadtree_plan(model, x, token_budget, quadtree=tokenizer)
            logits = forward_plan(model, fitted, plan)
            tokens += sum(plan.counts)
            fine += sum(int((plan.cells.level[i] == 0).sum()) for i in plan.index)
        correct += int((logits.argmax(dim=-1) == y).sum())
        total += len(y)
        if bar is not None:
            bar.update(len(y))
    return {
        "accuracy": correct / total,
        "tokens": tokens / total,
        "fine_tokens": fine / total if token_budget is not None else tokens / total,
        "n": total,
    }


def flops_per_image(
    model: Any,
    size: int,
    token_budget: int | None = None,
    tokenizer: QuadtreeTokenizer | None = None,
) -> int:
    """FLOPs of one forward pass on the first test image at ``size`` px, after one call
    that fills the caches (resampled position tables and kernels are derived once per
    size, not per image, in both the uniform and the mixed model)."""
    x, _ = next(iter(batches("test", size, 1, 1, model)))
    options = {} if token_budget is None else {"token_budget": token_budget, "quadtree": tokenizer}
    with torch.no_grad():
        model(x, **options)
    return count_flops(model, x, **options)


def select_settings(
    limit: int, batch_size: int, models: tuple[str, ...], progress: bool
) -> dict[str, Any]:
    """Accuracy of every setting in :func:`settings_grid` on the first ``limit`` training
    images, at the 25 % and 50 % budgets of both input sizes; the best by mean accuracy."""
    grid = settings_grid()
    cells = [(size, fraction) for size in INPUT_SIZES for fraction in TARGET_FRACTIONS]
    rows: dict[str, dict[str, float]] = {describe(t): {} for t in grid}
    total = len(grid) * len(cells) * len(models) * limit
    with tqdm(total=total, desc="selection", unit="img", disable=not progress) as bar:
        for name in models:
            model = load_model(name).eval()
            for size, fraction in cells:
                native = (size // 4) ** 2
                budget = uniform_side(native, fraction) ** 2
                for tokenizer in grid:
                    result = score(
                        model,
                        "train",
                        size,
                        limit,
                        batch_size,
                        token_budget=budget,
                        tokenizer=tokenizer,
                        bar=bar,
                    )
                    rows[describe(tokenizer)][f"{name} {size}px K{budget}"] = result["accuracy"]
    means = {label: sum(v.values()) / len(v) for label, v in rows.items()}
    best = max(means, key=means.get)
    return {"split": "train", "n": limit, "accuracy": rows, "mean": means, "best": best}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; ``args`` as :func:`parse_args` gives them."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.time()
    limit = args.limit
    models = tuple(args.models)
    selection = None
    if args.selection_limit:
        selection = select_settings(args.selection_limit, args.batch_size, models, args.progress)
    tokenizer = QuadtreeTokenizer()
    if selection is not None:  # the test set is scored with the settings chosen on train
        tokenizer = next(t for t in settings_grid() if describe(t) == selection["best"])
    table: list[dict[str, Any]] = []
    native_rows: list[dict[str, Any]] = []
    n_test = len(load_fashion_mnist("test")) if limit is None else limit
    total = len(models) * len(INPUT_SIZES) * (1 + 2 * len(FRACTIONS)) * n_test
    with tqdm(total=total, desc="mixed vs uniform", unit="img", disable=not args.progress) as bar:
        for name in models:
            model = load_model(name).eval()
            for size in INPUT_SIZES:
                native = model.grid_size((size, size))
                native_tokens = native[0] * native[1]
                full = score(model, "test", size, limit, args.batch_size, bar=bar)
                native_rows.append(
                    {
                        "model": name,
                        "input_px": size,
                        "tokens": native_tokens,
                        "accuracy": full["accuracy"],
                        "flops": flops_per_image(model, size),
                    }
                )
                for fraction in FRACTIONS:
                    side = uniform_side(native_tokens, fraction)
                    budget = side * side
                    uniform_px = side * 4
                    uniform = score(
                        model,
                        "test",
                        size,
                        limit,
                        args.batch_size,
                        uniform_size=uniform_px,
                        bar=bar,
                    )
                    mixed = score(
                        model,
                        "test",
                        size,
                        limit,
                        args.batch_size,
                        token_budget=budget,
                        tokenizer=tokenizer,
                        bar=bar,
                    )
                    table.append(
                        {
                            "model": name,
                            "input_px": size,
                            "fraction": fraction,
                            "native_tokens": native_tokens,
                            "budget": budget,
                            "uniform_px": uniform_px,
                            "uniform_accuracy": uniform["accuracy"],
                            "uniform_tokens": uniform["tokens"],
                            "uniform_flops": flops_per_image(model, uniform_px),
                            "mixed_accuracy": mixed["accuracy"],
                            "mixed_tokens": mixed["tokens"],
                            "mixed_fine_tokens": mixed["fine_tokens"],
                            "mixed_flops": flops_per_image(model, size, budget, tokenizer),
                            "gain_points": 100 * (mixed["accuracy"] - uniform["accuracy"]),
                        }
                    )
    picture = None
    if not args.no_picture:
        name = "quadtree_tokens_quick.png" if args.quick else "quadtree_tokens.png"
        picture = str(draw_picture(RESULTS_DIR / name, tokenizer))
    return {
        "benchmark": "mixed_tokens",
        "dataset": "fashion-mnist/test",
        "n": n_test,
        "tokenizer": {
            "label": describe(tokenizer),
            "levels": tokenizer.levels,
            "saliency": tokenizer.saliency,
            "proportional": tokenizer.proportional,
            "table_positions": tokenizer.table_positions,
            "align": tokenizer.align,
            "kernel_resize_mode": tokenizer.kernel_resize_mode,
        },
        "native": native_rows,
        "rows": table,
        "targets": targets(table),
        "selection": selection,
        "picture": picture,
        "seconds": round(time.time() - start, 1),
        "environment": environment(processor=platform.processor() or None),
    }


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and input size: does mixed beat uniform by 2 points at 25 % and 50 %?"""
    out = []
    keys = sorted({(r["model"], r["input_px"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for model, size in keys:
        gains = {
            r["fraction"]: r["gain_points"]
            for r in rows
            if r["model"] == model and r["input_px"] == size and r["fraction"] in TARGET_FRACTIONS
        }
        out.append(
            {
                "model": model,
                "input_px": size,
                "gains": gains,
                "met": bool(gains) and all(g >= TARGET_POINTS for g in gains.values()),
            }
        )
    return out


def draw_picture(path: Path, tokenizer: QuadtreeTokenizer, index: int = 0) -> Path:
    """A test image upscaled to 56 px with its quadtree's region borders at the 25 % and
    50 % budgets (49 and 100 of 196 tokens): one row with ``tokenizer``, one with the same
    settings at 3 levels (patches of 4, 8 and 16 px)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    model = load_model("fmnist-vit-flex").eval()
    cfg = model.config
    image, label = load_fashion_mnist("test")[index]
    x = prepare_batch(image[None], 56, train=False, mean=cfg.mean, std=cfg.std, in_chans=1)
    pixels = x[0, 0] * cfg.std[0] + cfg.mean[0]
    budgets = [uniform_side(196, f) ** 2 for f in TARGET_FRACTIONS]
    rows = [tokenizer] + ([] if tokenizer.levels == 3 else [replace(tokenizer, levels=3)])
    columns = len(budgets) + 1
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(3.6 * columns, 4.2 * len(rows)), squeeze=False
    )
    colours = {0: "tab:red", 1: "tab:orange", 2: "tab:cyan"}
    for row, settings in zip(axes, rows):
        row[0].imshow(pixels, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"test image {index} (class {int(label)}), 56 px", fontsize=9)
        row[0].set_ylabel(describe(settings), fontsize=8)
        for ax, budget in zip(row[1:], budgets):
            fitted, plan = quadtree_plan(model, x, budget, quadtree=settings)
            shown = fitted[0, 0] * cfg.std[0] + cfg.mean[0]  # the input as tokenised
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
            levels = plan.cells.level[plan.index[0]].tolist()
            for (top, left, height, width), level in zip(plan.boxes(0).tolist(), levels):
                ax.add_patch(
                    Rectangle(
                        (left - 0.5, top - 0.5),
                        width,
                        height,
                        fill=False,
                        lw=0.9,
                        color=colours.get(level, "tab:green"),
                    )
                )
            counts = [levels.count(lvl) for lvl in range(settings.levels)]
            sizes = ", ".join(f"{n}×{4 * 2**lvl} px" for lvl, n in enumerate(counts) if n)
            size = "x".join(str(v) for v in fitted.shape[-2:])
            ax.set_title(
                f"budget {budget} on {size} px: {plan.counts[0]} tokens\n({sizes})", fontsize=9
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("Mixed-resolution tokens: quadtree regions (red 4 px, orange 8, cyan 16)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _budget_row(r: dict[str, Any]) -> tuple[str, ...]:
    """One row of the mixed-against-uniform table."""
    return (
        r["model"],
        f"{r['input_px']} px",
        f"{r['budget']} of {r['native_tokens']} ({100 * r['fraction']:.0f} %)",
        f"{r['uniform_px']} px",
        f"{100 * r['uniform_accuracy']:.2f}",
        f"{100 * r['mixed_accuracy']:.2f}",
        f"{r['gain_points']:+.2f}",
        f"{r['mixed_tokens']:.1f} ({r.get('mixed_fine_tokens', math.nan):.1f})",
        f"{r['uniform_flops'] / 1e6:.2f}",
        f"{r['mixed_flops'] / 1e6:.2f}",
    )


def _selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """The search that chose the tokenizer's settings, as Markdown (none: no lines)."""
    lines: list[str] = []
    if selection:
        columns = list(next(iter(selection["accuracy"].values())))
        lines += [
            "",
            f"Settings chosen on the first {selection['n']} training images (accuracy %, "
            f"budgets of 25 % and 50 %); best by mean: **{selection['best']}**, used for the "
            "tables above (`QuadtreeTokenizer()`'s defaults are set from this search).",
            "",
        ]
        ranked = sorted(selection["mean"], key=selection["mean"].get, reverse=True)
        lines += markdown_table(
            ["settings", *columns, "mean"],
            (
                [label]
                + [f"{100 * selection['accuracy'][label][c]:.1f}" for c in columns]
                + [f"{100 * selection['mean'][label]:.2f}"]
                for label in ranked
            ),
            "l" + "r" * (len(columns) + 1),
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    t = result["tokenizer"]
    lines = [
        f"Top-1 accuracy (%) on {result['dataset']} (n = {result['n']}): mixed-resolution "
        f"tokens (quadtree `{t['label']}`: {t['levels']} levels, {t['saliency']} saliency, "
        f"{'proportional attention' if t['proportional'] else 'plain attention'}, "
        f"{t['table_positions']} table positions, {t['align']} edges, "
        f"{t['kernel_resize_mode'] or 'the model' + chr(39) + 's'} kernel resize) against "
        "uniform downscaling to the same token count. *fine* is the mean number of the "
        "mixed tokens that are single 4 px patches (0: no split, a uniform coarse grid). "
        "FLOPs per image (FlopCounterMode), not timings.",
        "",
    ]
    header = (
        "model",
        "input",
        "tokens (of native)",
        "uniform size",
        "uniform %",
        "mixed %",
        "mixed − uniform (points)",
        "mixed tokens used (fine)",
        "uniform MFLOPs",
        "mixed MFLOPs",
    )
    lines += markdown_table(header, map(_budget_row, result["rows"]), "l" + "r" * 9)
    lines += ["", "All native tokens, for reference:", ""]
    lines += markdown_table(
        ("model", "input", "tokens", "accuracy %", "MFLOPs"),
        (
            (
                r["model"],
                f"{r['input_px']} px",
                r["tokens"],
                f"{100 * r['accuracy']:.2f}",
                f"{r['flops'] / 1e6:.2f}",
            )
            for r in result["native"]
        ),
        "lrrrr",
    )
    lines += [
        "",
        f"Target: mixed beats uniform by ≥ {TARGET_POINTS:g} points at 25 % and 50 % tokens.",
        "",
        *markdown_table(
            ("model", "input", "gain at 25 %", "gain at 50 %", "met"),
            (
                (
                    r["model"],
                    f"{r['input_px']} px",
                    f"{r['gains'].get(0.25, math.nan):+.2f}",
                    f"{r['gains'].get(0.5, math.nan):+.2f}",
                    "yes" if r["met"] else "**no**",
                )
                for r in result["targets"]
            ),
            "lrrrc",
        ),
    ]
    lines += _selection_lines(result.get("selection"))
    env = result["environment"]
    lines += [
        "",
        f"{result['seconds']:.0f} s on {env['machine']} ({env['processor'] or 'CPU'}), "
        f"{env['threads']} thread(s), torch {env['torch']}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 test images")
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument(
        "--selection-limit",
        type=int,
        default=300,
        help="training images the quadtree settings are chosen on (0: skip the selection "
        "and use QuadtreeTokenizer()'s defaults)",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-picture", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 200
        args.selection_limit = min(args.selection_limit, 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    stem = "mixed_tokens_quick" if args.quick else "mixed_tokens"
    write_json(RESULTS_DIR / f"{stem}.json", result)
    text = markdown(result)
    write_markdown(RESULTS_DIR / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The seed's ways to run a ViT at another resolution, measured side by side.

The seed "图像分块、图像分辨率固定要求、位置编码" lists the ways a ViT trained at one input
size can run at another. This benchmark trains one small ViT recipe (the bundled
reference's: d=64, depth 4, 2 heads, patch 4, 28 px native, average pool, seed 0, from
``scripts/train_reference_models.py``) once per position-embedding kind and regime, and
scores every row on the full Fashion-MNIST test set (10,000 images) at 12, 16, 20, 24,
28, 36, 44, 56 px and a non-square 20x40:

* (a) the input resized to the native 28 px (the model never sees another size);
* (b) (c) (d) a learned table resampled by bilinear, bicubic and Fourier interpolation
  (timm's ``resample_abs_pos_embed``; FNet-style spectrum padding for Fourier);
* (e) fixed 2-D sin-cos (MAE); (f) 2-D RoPE (Heo et al. 2024, RoPE-Mixed's axial form);
* (g) a continuous relative position bias (Swin V2's log-spaced CPB);
* (h) a continuous coordinate-MLP position encoding (FLOATER-like, Liu et al. 2020);
* (i) no position embedding;

each in three regimes: trained at 28 px only; trained from scratch with one resolution
per step from 12..56 px (FlexiViT's multi-resolution training,
:func:`vitres.train.train`); and flexified (:func:`vitres.train.flexify.flexify`: the
28 px model fine-tuned at every size while distilling from itself at 28 px, the recipe
of ``scripts/flexify_reference.py``). (a)-(d) share one 28 px model and differ only at
evaluation; in the other regimes the learned table is resampled bicubically, as trained.

Budget (one fixed recipe, one thread, fp32): every run makes 3 passes over the first
12,500 training images, batch 128 at 28 px. The 28 px run is the unit (291 steps of 49
tokens, about 1,220 G multiply-accumulates). Multi-resolution steps average 84 tokens,
so that run does about 2x its work; flexify's batches are token-normalised (small sizes
take more examples), and its 3 passes plus the teacher's cached outputs add about 1x on
top of the 28 px source it starts from: the two regimes that reach every size cost about
the same in all (measured: 2,434 against 2,439 GMACs for the learned table). Each row's
wall and CPU minutes, steps and multiply-accumulates are in the table. On one core of
this project's AMD EPYC the set trains in about 25 minutes, and scoring its 21 rows at
9 sizes on 10,000 images takes about 30 minutes more.

Every run checkpoints into ``runs/arbitrary_resolution/<run>/`` (safetensors + JSON,
git-ignored) and resumes there with the shared loop's exact resume; its cost and every
accuracy cell go to ``benchmarks/results/arbitrary_resolution/<run>.json`` as soon as
they exist (keyed on the weights' digest). A rerun skips finished runs and cells, so the
script can be killed and started again at any time. The table and plot go to
``benchmarks/results/arbitrary_resolution.{json,md,png}``.

Usage::

    nohup taskset -c 0 .venv/bin/python benchmarks/arbitrary_resolution.py > run.log 2>&1 &
    .venv/bin/python benchmarks/arbitrary_resolution.py --quick     # smoke test, minutes
    .venv/bin/python benchmarks/arbitrary_resolution.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from benchmarks._common import (
    RESULTS_DIR,
    ROOT,
    environment,
    markdown_table,
    write_json,
    write_markdown,
)
from scripts.flexify_reference import CONFIG as FLEXIFY_RECIPE
from scripts.flexify_reference import EVAL_SIZES, cpu_name, forward_macs
from scripts.train_reference_models import BASE as TRAIN_RECIPE
from vitres.data import get_dataset
from vitres.data.transforms import resize
from vitres.evaluate import accuracy_at
from vitres.layers.sizes import size_label
from vitres.models.checkpoint import checkpoint_digest, load_model
from vitres.train import MODEL_FILE, flexify, token_count, train
from vitres.train.checkpoint import atomic_write_text

RUNS_DIR = ROOT / "runs" / "arbitrary_resolution"
NAME = "arbitrary_resolution"
NATIVE = 28
MULTI_RESOLUTIONS = tuple(range(12, 57, 4))
KINDS = ("learned", "sincos", "rope", "cpb", "mlp", "none")
REGIMES = ("native", "flexify", "multires")  # the order runs go in (cheapest first)
REGIME_LABELS = {"native": "28 px only", "multires": "multi-res", "flexify": "flexified"}
KIND_LABELS = {
    "sincos": "(e) fixed sin-cos",
    "rope": "(f) 2-D RoPE",
    "cpb": "(g) continuous position bias",
    "mlp": "(h) coordinate MLP (FLOATER-like)",
    "none": "(i) no position embedding",
}
# evaluation variants of a model: "model" runs it as configured; the learned 28 px model
# also runs behind an input resize and with each table-resampling mode
TABLE_MODES = {"bilinear": "(b)", "bicubic": "(c)", "fourier": "(d)"}
EVAL_BATCH = 500
# one colour per approach in every panel (keyed by its letter)
PLOT_COLORS = {
    "(a)": "tab:gray",
    "(b)": "tab:blue",
    "(b-d)": "tab:blue",
    "(c)": "tab:cyan",
    "(d)": "tab:olive",
    "(e)": "tab:green",
    "(f)": "tab:red",
    "(g)": "tab:purple",
    "(h)": "tab:brown",
    "(i)": "tab:pink",
}


@dataclass(frozen=True)
class Budget:
    """The training budget every row shares (see the module docstring)."""

    train_limit: int
    native_epochs: int
    multires_epochs: int
    flexify_epochs: int
    warmup_steps: int
    flexify_warmup_steps: int
    eval_limit: int | None  # the final scoring; None: the whole test set
    epoch_eval_limit: int


FULL = Budget(
    train_limit=12500,
    native_epochs=3,
    multires_epochs=3,
    flexify_epochs=3,
    warmup_steps=15,
    flexify_warmup_steps=3,
    eval_limit=None,
    epoch_eval_limit=200,
)
QUICK = Budget(
    train_limit=512,
    native_epochs=1,
    multires_epochs=1,
    flexify_epochs=1,
    warmup_steps=1,
    flexify_warmup_steps=1,
    eval_limit=200,
    epoch_eval_limit=100,
)
QUICK_KINDS = ("learned", "none")


# ----------------------------------------------------------------------------- runs
def run_id(kind: str, regime: str) -> str:
    return f"{kind}-{regime}"


def native_config(kind: str, budget: Budget, runs_dir: Path):
    """The 28 px run of ``kind``: the reference recipe on the shared budget."""
    return dataclasses.replace(
        TRAIN_RECIPE,
        pos_embed=kind,
        resolutions=(NATIVE,),
        epochs=budget.native_epochs,
        train_limit=budget.train_limit,
        warmup_steps=budget.warmup_steps,
        eval_resolutions=(12, NATIVE, 56),
        eval_limit=budget.epoch_eval_limit,
        out_dir=str(runs_dir / run_id(kind, "native")),
        checkpoint_every_steps=25,
        log_every_steps=1,  # every step's size and batch, for the compute of the row
        progress=True,
        resume=True,
        num_threads=1,
    )


def run_config(kind: str, regime: str, budget: Budget, runs_dir: Path):
    """The config of one run (a TrainConfig, or a FlexifyConfig from the 28 px model)."""
    native = native_config(kind, budget, runs_dir)
    out_dir = str(runs_dir / run_id(kind, regime))
    if regime == "native":
        return native
    if regime == "multires":
        return dataclasses.replace(
            native, resolutions=MULTI_RESOLUTIONS, epochs=budget.multires_epochs, out_dir=out_dir
        )
    return dataclasses.replace(
        FLEXIFY_RECIPE,
        model=str(Path(native.out_dir) / MODEL_FILE),
        resolutions=MULTI_RESOLUTIONS,
        epochs=budget.flexify_epochs,
        train_limit=budget.train_limit,
        warmup_steps=budget.flexify_warmup_steps,
        eval_resolutions=(12, NATIVE, 56),
        eval_limit=budget.epoch_eval_limit,
        out_dir=out_dir,
        checkpoint_every_steps=25,
        log_every_steps=1,
        progress=True,
        resume=True,
        num_threads=1,
    )


def step_work(out_dir: Path, patch_size: int, size_policy: str) -> tuple[int, int, int, int]:
    """``(steps, examples, sum examples x tokens, sum examples x tokens^2)`` of a finished
    run, from its per-step log records."""
    steps = examples = tokens = tokens_squared = 0
    for line in (out_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "step":
            continue
        n = token_count(record["resolution"], patch_size, size_policy)
        steps += 1
        examples += record["batch_size"]
        tokens += record["batch_size"] * n
        tokens_squared += record["batch_size"] * n * n
    return steps, examples, tokens, tokens_squared


def run_cost(out_dir: Path) -> dict:
    """What a finished run cost: time, steps, examples and multiply-accumulates."""
    model = load_model(out_dir / MODEL_FILE)
    meta, cfg = model.metadata, model.config
    steps, examples, tokens, tokens_squared = step_work(out_dir, cfg.patch_size, cfg.size_policy)
    macs = 3 * forward_macs(tokens, tokens_squared)  # training = forward + 2x backward
    teacher = meta.get("work", {}).get("teacher")
    if teacher:  # flexify's cached teacher outputs (forward only)
        macs += forward_macs(*teacher)
    return {
        "train_minutes": round(meta["train_seconds"] / 60, 2),
        "cpu_minutes": round(meta["cpu_seconds"] / 60, 2),
        "steps": steps,
        "examples": examples,
        "mean_tokens": round(tokens / max(examples, 1), 1),
        "gmacs": round(macs / 1e9, 1),
    }


def train_run(kind: str, regime: str, budget: Budget, runs_dir: Path) -> Path:
    """Trains (or resumes, or skips when finished) one run; returns its folder."""
    config = run_config(kind, regime, budget, runs_dir)
    out_dir = Path(config.out_dir)
    if (out_dir / MODEL_FILE).exists():
        return out_dir
    print(f"== training {run_id(kind, regime)} -> {out_dir}", flush=True)
    if regime == "flexify":
        flexify(config)
    else:
        train(config)
    return out_dir


# ----------------------------------------------------------------------------- evaluation
class ResizeToNative(nn.Module):
    """Approach (a): resizes every input to the model's native size before the model.

    The batch arrives normalised; bilinear resizing is linear with weights summing to
    one, so it commutes with the per-channel normalisation.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, x: Tensor) -> Tensor:
        return self.model(resize(x, tuple(self.config.img_size)))


def variants(kind: str, regime: str) -> dict[str, str]:
    """Row label -> evaluation variant, for the rows one run's model gives."""
    if kind == "learned" and regime == "native":
        rows = {"(a) resize input to 28 px": "resize"}
        for mode, letter in TABLE_MODES.items():
            rows[f"{letter} learned table + {'Fourier' if mode == 'fourier' else mode}"] = (
                f"table:{mode}"
            )
        return rows
    if kind == "learned":
        return {"(b-d) learned table (bicubic, as trained)": "model"}
    return {KIND_LABELS[kind]: "model"}


def load_variant(path: Path, variant: str) -> nn.Module:
    if variant.startswith("table:"):
        return load_model(path, pos_embed_mode=variant.split(":", 1)[1]).eval()
    model = load_model(path).eval()
    return ResizeToNative(model) if variant == "resize" else model


def cell_key(variant: str, size: tuple[int, int]) -> str:
    # at the native grid a learned table is used as is, whatever the resampling mode
    if variant.startswith("table:") and size == (NATIVE, NATIVE):
        variant = "table:native"
    return f"{variant}@{size_label(size)}"


def eval_sizes() -> list[tuple[int, int]]:
    return [(s, s) if isinstance(s, int) else tuple(s) for s in EVAL_SIZES]


def evaluate_run(
    kind: str, regime: str, out_dir: Path, record_path: Path, test_set, budget: Budget
) -> dict:
    """Scores every variant of a run's model at every size; cells already in the run's
    record (same weights) are kept, new ones written as soon as they exist."""
    weights = out_dir / MODEL_FILE
    digest = checkpoint_digest(weights)
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("weights_digest") != digest:
        record = {"cells": {}, "cell_seconds": {}}
    record.update(
        run=run_id(kind, regime),
        kind=kind,
        regime=regime,
        weights_digest=digest,
        checkpoint=str(weights.relative_to(ROOT) if weights.is_relative_to(ROOT) else weights),
        cost=run_cost(out_dir),
        rows=variants(kind, regime),
        n=len(test_set) if budget.eval_limit is None else min(budget.eval_limit, len(test_set)),
    )
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    todo = {
        cell_key(variant, size): (variant, size)
        for variant in dict.fromkeys(record["rows"].values())
        for size in eval_sizes()
        if cell_key(variant, size) not in record["cells"]
    }
    if not todo:
        return record
    with tqdm(total=len(todo) * record["n"], unit="img", desc=f"eval {record['run']}") as bar:
        models: dict[str, nn.Module] = {}
        for key, (variant, size) in todo.items():
            bar.set_postfix_str(key)
            model = models.setdefault(variant, load_variant(weights, variant))
            start, cpu_start = time.perf_counter(), time.process_time()
            accuracy, n = accuracy_at(
                model, test_set, size, EVAL_BATCH, budget.eval_limit, progress=bar
            )
            assert n == record["n"], (n, record["n"])
            record["cells"][key] = round(100 * accuracy, 2)
            record["cell_seconds"][key] = round(time.perf_counter() - start, 2)
            record.setdefault("cell_cpu_seconds", {})[key] = round(
                time.process_time() - cpu_start, 2
            )
            atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return record


# ----------------------------------------------------------------------------- report
def table_rows(records: list[dict]) -> list[dict]:
    """One row per (approach, regime), in the order of the seed's list then the regimes."""
    rows = []
    keys = [size_label(s) for s in eval_sizes()]
    for record in records:
        for label, variant in record["rows"].items():
            accuracy = {
                k: record["cells"].get(cell_key(variant, s)) for k, s in zip(keys, eval_sizes())
            }
            done = [v for v in accuracy.values() if v is not None]
            cost = dict(record["cost"])
            if record["regime"] == "flexify":
                source = next(
                    (r for r in records if r["run"] == run_id(record["kind"], "native")), None
                )
                cost["finetune_minutes"] = cost["train_minutes"]
                cost["finetune_cpu_minutes"] = cost["cpu_minutes"]
                if source is not None:  # the 28 px source is part of what it cost
                    for field in ("train_minutes", "cpu_minutes", "gmacs"):
                        cost[field] = round(cost[field] + source["cost"][field], 2)
                    cost["steps"] += source["cost"]["steps"]
            rows.append(
                {
                    "approach": label,
                    "regime": REGIME_LABELS[record["regime"]],
                    "run": record["run"],
                    "variant": variant,
                    "accuracy": accuracy,
                    "mean": round(statistics.fmean(done), 2) if len(done) == len(keys) else None,
                    "cost": cost,
                }
            )
    order = {label: i for i, label in enumerate(REGIME_LABELS.values())}
    return sorted(rows, key=lambda r: (order[r["regime"]], r["approach"]))


def findings(rows: list[dict]) -> dict:
    """The numbers behind the answers: interpolation's loss and the best row per size."""
    keys = [size_label(s) for s in eval_sizes()]
    off_native = [k for k in keys if k != str(NATIVE)]
    out: dict = {"interpolation": {}, "best": {}}
    native = {r["approach"]: r for r in rows if r["regime"] == REGIME_LABELS["native"]}
    others = [r for r in rows if r["regime"] != REGIME_LABELS["native"]]
    best_every_size = {
        k: max((r for r in others if r["accuracy"][k] is not None), key=lambda r: r["accuracy"][k])
        for k in keys
        if any(r["accuracy"][k] is not None for r in others)
    }
    for label, row in native.items():
        if not row["variant"].startswith("table:") or row["mean"] is None:
            continue
        at_native = row["accuracy"][str(NATIVE)]
        losses = {k: round(at_native - row["accuracy"][k], 2) for k in off_native}
        out["interpolation"][label] = {
            "at_28": at_native,
            "loss_by_size": losses,
            "mean_loss": round(statistics.fmean(losses.values()), 2),
            "behind_best_other_regime": {
                k: round(best_every_size[k]["accuracy"][k] - row["accuracy"][k], 2)
                for k in off_native
                if k in best_every_size
            },
        }
    for k in keys:
        scored = [r for r in rows if r["accuracy"][k] is not None]
        if scored:
            top = max(scored, key=lambda r: r["accuracy"][k])
            out["best"][k] = {
                "approach": top["approach"],
                "regime": top["regime"],
                "accuracy": top["accuracy"][k],
            }
    complete = [r for r in rows if r["mean"] is not None]
    if complete:
        top = max(complete, key=lambda r: r["mean"])
        out["best"]["mean"] = {
            "approach": top["approach"],
            "regime": top["regime"],
            "accuracy": top["mean"],
        }
    return out


def signed(value: float) -> str:
    """``+1.2`` / ``-3.4`` with one decimal, and no ``-0.0``."""
    text = f"{value:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _approach_cells(row: dict, keys: list[str]) -> list[str]:
    """One approach's row: accuracy per size, its mean (bold) and its cost."""
    cost = row["cost"]
    return [
        row["approach"],
        row["regime"],
        *("" if row["accuracy"][k] is None else f"{row['accuracy'][k]:.2f}" for k in keys),
        "" if row["mean"] is None else f"**{row['mean']:.2f}**",
        f"{cost['train_minutes']:.1f}",
        f"{cost['cpu_minutes']:.1f}",
        str(cost["steps"]),
        f"{cost['gmacs']:.0f}",
    ]


def _interpolation_cell(facts: dict, size: str) -> str:
    """Change in points against the model's own 28 px / the best other regime's row."""
    own = signed(-facts["loss_by_size"][size])
    if size in facts["behind_best_other_regime"]:
        return f"{own} / {signed(-facts['behind_best_other_regime'][size])}"
    return own


def to_markdown(result: dict) -> str:
    keys = result["sizes"]
    lines = [
        "# Arbitrary resolution: the seed's approaches side by side",
        "",
        f"Top-1 accuracy (%) on fashion-mnist/test (n = {result['n']}) at each input size; "
        f"CPU: {result['cpu']}, {result['threads']} thread, fp32. Budget: "
        f"{result['budget_text']}",
        "",
        *markdown_table(
            ["approach", "regime", *keys, "mean", "train min", "CPU min", "steps", "GMACs"],
            map(_approach_cells, result["rows"], [keys] * len(result["rows"])),
            "ll" + "r" * (len(keys) + 5),
        ),
        "",
        "Train minutes are wall-clock training time (evaluation excluded; building the "
        "recipe and flexify's teacher cache included); flexified rows include their 28 px "
        "source's. (a)-(d) are one model. GMACs: multiply-accumulates counted from the "
        "tokens of every step (training = 3x forward).",
        "",
        f"The whole set: {result['train_minutes_total']} min training "
        f"({result['train_cpu_minutes_total']} CPU min) and {result['eval_minutes_total']} min "
        f"scoring ({result['eval_cpu_minutes_total']} CPU min), on one core.",
        "",
    ]
    interpolation = result["findings"]["interpolation"]
    if interpolation:
        worst = max(max(f["loss_by_size"].values()) for f in interpolation.values())
        least = min(min(f["loss_by_size"].values()) for f in interpolation.values())
        means = [f["mean_loss"] for f in interpolation.values()]
        holds = all(3.0 <= m <= 5.0 for m in means)
        others = [k for k in keys if k != str(NATIVE)]
        lines += [
            "## Does interpolation lose 3-5 %?",
            "",
            f"Answer: {'yes' if holds else 'no'}. Off the native grid the interpolated table "
            f"loses {least:.1f} to {worst:.1f} points (mean {min(means):.1f}-{max(means):.1f} "
            "over the modes) against its own 28 px accuracy" + ("." if holds else ", not 3-5."),
            "",
            "Each cell: the change in points against the same model at 28 px / against the "
            "best multi-res or flexified row at that size (negative: interpolation is worse).",
            "",
            *markdown_table(
                ["28 px model", "at 28", *others, "mean change"],
                (
                    [label, f"{facts['at_28']:.2f}"]
                    + [_interpolation_cell(facts, k) for k in others]
                    + [signed(-facts["mean_loss"])]
                    for label, facts in interpolation.items()
                ),
                "lr" + "r" * (len(others) + 1),
            ),
            "",
        ]
    best = result["findings"]["best"]
    if best:
        lines += ["## Best row per size", ""]
        lines += markdown_table(
            ("size", "approach", "regime", "accuracy"),
            (
                (k, top["approach"], top["regime"], f"{top['accuracy']:.2f}")
                for k, top in best.items()
            ),
            "lllr",
        )
        lines.append("")
        if "mean" in best:
            lines += [
                f"Answer: {best['mean']['approach']} ({best['mean']['regime']}) has the best "
                f"mean over the sizes, {best['mean']['accuracy']:.2f} %.",
                "",
            ]
    if result["missing"]:
        lines += [
            f"Missing runs (rerun the script to finish them): {', '.join(result['missing'])}."
        ]
        lines.append("")
    lines.append(f"![accuracy against input size]({NAME}.png)")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Accuracy against input size, one panel per regime; 20x40 on its own at the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regimes = list(REGIME_LABELS.values())
    figure = Figure(figsize=(15, 4.8), dpi=110)
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(1, len(regimes), sharey=True)
    squares = [int(k) for k in result["sizes"] if "x" not in k]
    extra = [k for k in result["sizes"] if "x" in k]
    extra_x = {k: squares[-1] + 8 * (i + 1) for i, k in enumerate(extra)}
    for axes, regime in zip(axes_list, regimes):
        for row in (r for r in result["rows"] if r["regime"] == regime):
            xs = [s for s in squares if row["accuracy"][str(s)] is not None]
            ys = [row["accuracy"][str(s)] for s in xs]
            color = PLOT_COLORS[row["approach"].split()[0]]
            axes.plot(xs, ys, "-o", color=color, markersize=3, linewidth=1.3, label=row["approach"])
            for k in extra:
                if row["accuracy"][k] is not None:
                    axes.plot([extra_x[k]], [row["accuracy"][k]], "s", color=color)
        axes.axvline(NATIVE, color="grey", linewidth=0.6, linestyle=":")
        axes.set_xticks(squares + list(extra_x.values()))
        axes.set_xticklabels([str(s) for s in squares] + extra, fontsize=7)
        axes.set_title(regime)
        axes.set_xlabel("input size (px)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower center")
    axes_list[0].set_ylabel("top-1 accuracy (%)")
    figure.suptitle(f"Fashion-MNIST test (n = {result['n']}): one ViT recipe, nine approaches")
    figure.tight_layout()
    figure.savefig(path)


def budget_text(budget: Budget) -> str:
    return (
        f"the first {budget.train_limit} training images; 28 px only: {budget.native_epochs} "
        f"passes; multi-res (12..56 px, one size per step, batch 128): "
        f"{budget.multires_epochs} passes; flexified: its 28 px source plus "
        f"{budget.flexify_epochs} passes with token-normalised batches (distilled from the "
        "source at 28 px, gap sampler); seed 0, one thread."
    )


def report(
    records: list[dict], budget: Budget, missing: list[str], set_seconds: float, results: Path
) -> dict:
    rows = table_rows(records)
    n = records[0]["n"] if records else 0
    result = {
        "benchmark": NAME,
        "dataset": "fashion-mnist/test",
        "n": n,
        "sizes": [size_label(s) for s in eval_sizes()],
        **environment(cpu=cpu_name(), threads=1),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        "budget": dataclasses.asdict(budget),
        "budget_text": budget_text(budget),
        "recipe": TRAIN_RECIPE.to_dict(),
        "rows": rows,
        "findings": findings(rows),
        "missing": missing,
        "set_seconds_this_invocation": round(set_seconds, 1),
        "train_minutes_total": round(sum(r["cost"]["train_minutes"] for r in records), 1),
        "train_cpu_minutes_total": round(sum(r["cost"]["cpu_minutes"] for r in records), 1),
        "eval_minutes_total": round(sum(sum(r["cell_seconds"].values()) for r in records) / 60, 1),
        "eval_cpu_minutes_total": round(
            sum(sum(r.get("cell_cpu_seconds", {}).values()) for r in records) / 60, 1
        ),
    }
    write_json(results.with_suffix(".json"), result, indent=1)
    write_markdown(results.with_suffix(".md"), to_markdown(result))
    plot(result, results.with_suffix(".png"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 2 kinds")
    parser.add_argument("--kinds", default=None, help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--runs-dir", type=Path, default=None, help="checkpoints (git-ignored)")
    parser.add_argument("--results-dir", type=Path, default=None, help="per-run JSON records")
    parser.add_argument("--report-only", action="store_true", help="table and plot from records")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    kinds = QUICK_KINDS if args.quick else KINDS
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            parser.error(f"--kinds: unknown kind(s) {unknown}; expected some of {KINDS}")
    suffix = "_quick" if args.quick else ""
    runs_dir = args.runs_dir or ROOT / "runs" / f"{NAME}{suffix}"
    if args.results_dir:
        records_dir = args.results_dir
    elif args.quick:  # a smoke test writes nothing into the repository
        records_dir = runs_dir / "results"
    else:
        records_dir = RESULTS_DIR / NAME
    results = records_dir.parent / f"{NAME}{suffix}" if not args.quick else records_dir / NAME
    torch.set_num_threads(1)
    start = time.time()
    plan = [(kind, regime) for regime in REGIMES for kind in kinds]
    test_set = get_dataset("fashion-mnist", "test", in_chans=1)
    records, missing = [], []
    for index, (kind, regime) in enumerate(plan):
        record_path = records_dir / f"{run_id(kind, regime)}.json"
        print(f"[{index + 1}/{len(plan)}] {run_id(kind, regime)}", flush=True)
        out_dir = runs_dir / run_id(kind, regime)
        if not args.report_only:
            train_run(kind, regime, budget, runs_dir)
            evaluate_run(kind, regime, out_dir, record_path, test_set, budget)
        if record_path.exists():
            records.append(json.loads(record_path.read_text()))
        else:
            missing.append(run_id(kind, regime))
        report(records, budget, missing, time.time() - start, results)
    result = report(records, budget, missing, time.time() - start, results)
    print(results.with_suffix(".md").read_text(), flush=True)
    print(
        f"set: {result['train_minutes_total']} train min + {result['eval_minutes_total']} "
        f"eval min (wall); this invocation {result['set_seconds_this_invocation'] / 60:.1f} min",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

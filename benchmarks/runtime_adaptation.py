"""Run-time resolution control under a load change and a deadline change.

For each model -- the bundled ``fmnist-vit-multires`` over 16..56 px and ViT-Ti/16
(``vit_tiny_patch16``, 1 channel, 10 classes) over 96..224 px -- this script:

1. measures the ladder with a real sweep (:func:`vitres.tune.sweep.run_sweep`, eager fp32,
   one thread; accuracy on the first Fashion-MNIST test images), the records every
   predictive controller below reads;
2. sets the deadline D to what the middle ladder size meets on the quiet machine: 1.1 ×
   the 99th percentile of the frame latency of ``fixed:<mid>`` over a quiet pre-run;
3. streams Fashion-MNIST test images (after those used for accuracy) as frames, the same
   frames for every controller -- ``step`` (the seed's rule), ``predictive`` and every
   ``fixed:R`` -- through :class:`vitres.runtime.AdaptiveRunner`, in four phases:

   =========  ===============  =======================================================
   phase      frames           condition
   =========  ===============  =======================================================
   quiet      0 .. N/3         the deadline D
   load       N/3 .. 2N/3      one busy process on the runner's CPU (busy 0.1 ms, asleep
                               0.2 ms: a third of the CPU, ``--load-duty``), started
                               and stopped by this script (bounded: it also stops
                               itself)
   recovered  2N/3 .. 5N/6     quiet again
   tight      5N/6 .. N        quiet, the deadline cut to 0.75 D
   =========  ===============  =======================================================

and compares, per controller: the deadline hit rate overall and per phase; the hit rate
outside a settling window of 20 frames after each change (and the first 20 frames);
settling time after each change (the fewest frames after which the rest of the phase
meets >= 99 % of deadlines; ``never`` if it doesn't); switches per 100 frames outside
the settling windows; accuracy on the frames' real labels, against the oracle, the best
fixed resolution per phase (the most accurate ``fixed:R`` that meets >= 99 % of that
phase's deadlines outside its settling window, else the one with the highest hit rate).

ViT-Ti/16 has no trained weights here (nothing may be downloaded), so its accuracy is
that of random weights and is not compared; it shows the controllers at realistic costs.

Targets (printed met / missed): ``predictive`` meets >= 99 % of deadlines outside the
settling windows, its accuracy is within 0.5 points of the oracle, and it makes <= 1
switch per 100 frames in steady state. ``step`` is reported on the same run.

Writes ``benchmarks/results/runtime_adaptation.{json,md,png}`` (``--quick``:
``runtime_adaptation_quick.*``: the bundled model on a short ladder, a few hundred frames,
ViT-Ti on three sizes -- to check the script works, not to quote).

Usage (on a quiet machine; it pins itself to one CPU)::

    .venv/bin/python benchmarks/runtime_adaptation.py            # ~15 min
    .venv/bin/python benchmarks/runtime_adaptation.py --quick    # ~2 min
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import numpy as np
import torch
from tqdm.auto import tqdm

import vitres
from benchmarks._common import (
    RESULTS_DIR,
    ROOT,
    environment,
    markdown_table,
    write_json,
    write_markdown,
)
from vitres.data import load_fashion_mnist
from vitres.measure import TimingConfig
from vitres.runtime import LatencyModel
from vitres.runtime.runner import AdaptiveRunner
from vitres.tune.sweep import run_sweep

RUNS_DIR = ROOT / "runs"
SETTLE = 20  # frames after each change excluded from the steady-state numbers
TIGHT = 0.75  # the deadline change: D -> 0.75 D
LOAD_LIMIT_S = 600.0  # the busy process stops itself after this long, whatever happens
PERIOD_S = 0.0003  # the busy process's cycle: busy DUTY of it, asleep the rest
DUTY = 1 / 3  # default share of the CPU the busy process takes (--load-duty)
GUARD = 1.1  # D = GUARD × the quiet p99 frame latency of the middle ladder size

CASES = {
    "full": [
        {
            "name": "fmnist-vit-multires",
            "model": "fmnist-vit-multires",
            "ladder": [16, 24, 32, 40, 48, 56],
            "frames": 3000,
            "eval_limit": 2000,
            "trained": True,
        },
        {
            "name": "vit_tiny_patch16",
            "model": "vit_tiny_patch16",
            "ladder": [96, 128, 160, 192, 224],
            "frames": 1200,
            "eval_limit": None,
            "trained": False,
        },
    ],
    "quick": [
        {
            "name": "fmnist-vit-multires",
            "model": "fmnist-vit-multires",
            "ladder": [16, 24, 32, 40],
            "frames": 360,
            "eval_limit": 500,
            "trained": True,
        },
        {
            "name": "vit_tiny_patch16",
            "model": "vit_tiny_patch16",
            "ladder": [96, 160, 224],
            "frames": 180,
            "eval_limit": None,
            "trained": False,
        },
    ],
}
VIT_TINY_OVERRIDES = {"in_chans": 1, "num_classes": 10}
# the real DINOv2-S/14 classifier of `make real-model` (issue 27): deadline 1.5 x the quiet
# p95 at 168 px, two competing processes during the load phase; once with the sweep taken
# on the quiet machine, once with it taken while the same load ran (a busy sweep)
REAL_CACHE = Path(os.environ.get("VITRES_REAL_CACHE", Path.home() / ".cache" / "vitres" / "real"))
_REAL = {
    "model": str(REAL_CACHE / "probe" / "model.safetensors"),
    "ladder": [84, 112, 140, 168, 196],
    "frames": 450,
    "eval_limit": 500,
    "trained": True,
    "deadline": {"size": 168, "percentile": 95, "factor": 1.5},
    "processes": 2,
}
CASES["real"] = [
    {**_REAL, "name": "dinov2-s14 (quiet sweep)"},
    {**_REAL, "name": "dinov2-s14 (busy sweep)", "busy_sweep": True},
]


# ----------------------------------------------------------------------------- load


def _spin(cpu: int | None, duty: float, running: Any, stop: Any, limit_s: float) -> None:
    """The competing load: on ``cpu``, busy ``duty`` of every ``PERIOD_S`` and asleep the
    rest, until told to stop (or ``limit_s`` passes, or the parent dies). A fine-grained
    duty cycle takes about ``duty`` of the CPU from a runner on the same core at
    sub-millisecond granularity, so it slows every frame (a throughput loss) instead of
    stalling a few frames by a whole scheduler slice, which no resolution could absorb."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    running.set()
    end = time.monotonic() + limit_s
    parent = os.getppid()
    x = 0
    while not stop.is_set() and time.monotonic() < end and os.getppid() == parent:
        busy_until = time.perf_counter() + duty * PERIOD_S
        while time.perf_counter() < busy_until:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        time.sleep((1 - duty) * PERIOD_S)


class CompetingLoad:
    """Busy processes (one by default) pinned to the runner's CPU, started and stopped by
    the script."""

    def __init__(self, cpu: int | None, duty: float = DUTY, processes: int = 1) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"the load's duty cycle must be in (0, 1], got {duty}")
        self.cpu, self.duty, self.count = cpu, duty, processes
        self.context = multiprocessing.get_context("fork")
        self.processes: list[Any] = []

    def start(self) -> None:
        self.stop_event = self.context.Event()
        for _ in range(self.count):
            running = self.context.Event()
            process = self.context.Process(
                target=_spin,
                args=(self.cpu, self.duty, running, self.stop_event, LOAD_LIMIT_S),
                daemon=True,
            )
            process.start()
            running.wait(10.0)
            self.processes.append(process)

    def stop(self) -> None:
        if not self.processes:
            return
        self.stop_event.set()
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
        self.processes = []


# ----------------------------------------------------------------------------- runs


def phases(frames: int) -> list[tuple[str, int, int]]:
    """``(name, first frame, end frame)`` of the four phases."""
    a, b, c = frames // 3, 2 * frames // 3, 5 * frames // 6
    return [("quiet", 0, a), ("load", a, b), ("recovered", b, c), ("tight", c, frames)]


def run_scenario(
    model: torch.nn.Module,
    ladder: list[int],
    controller: str,
    latency: LatencyModel,
    deadline_ms: float,
    images: torch.Tensor,
    labels: torch.Tensor,
    load: CompetingLoad,
    progress: bool,
) -> list[dict[str, Any]]:
    """One controller through the four phases; the per-frame results."""
    runner = AdaptiveRunner(
        model, ladder, max_latency_ms=deadline_ms, controller=controller, records=latency
    )
    runner.warm_up()
    n = len(images)
    (_, _, a), (_, _, b), (_, _, c), _ = phases(n)
    rows = []
    try:
        for i in tqdm(range(n), desc=controller, disable=not progress, leave=False):
            if i == a:
                load.start()
            elif i == b:
                load.stop()
            elif i == c:
                runner.set_deadline(max_latency_ms=TIGHT * deadline_ms)
            result = runner.process(images[i], int(labels[i]))
            rows.append(
                {
                    "resolution": result.resolution,
                    "latency_ms": result.latency_ms,
                    "deadline_ms": result.deadline_ms,
                    "met": result.met,
                    "correct": result.pred == result.label,
                }
            )
    finally:
        load.stop()
    return rows


def quiet_deadline(
    model: torch.nn.Module,
    ladder: list[int],
    latency: LatencyModel,
    images: torch.Tensor,
    rule: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """``GUARD`` × the p99 frame latency of ``fixed:<mid>`` over a quiet pre-run, and the
    middle size; with ``rule`` (``size``, ``percentile``, ``factor``): ``factor`` × that
    percentile at that size."""
    if rule is not None:
        size, runner = rule["size"], None
        runner = AdaptiveRunner(
            model, ladder, max_latency_ms=1e9, controller=f"fixed:{size}", records=latency
        )
        for image in images:
            runner.process(image)
        latencies = sorted(r.latency_ms for r in runner.results)
        return rule["factor"] * float(np.percentile(latencies, rule["percentile"])), size
    mid = ladder[(len(ladder) - 1) // 2]
    runner = AdaptiveRunner(
        model, ladder, max_latency_ms=1e9, controller=f"fixed:{mid}", records=latency
    )
    for image in images:
        runner.process(image)
    latencies = sorted(r.latency_ms for r in runner.results)
    return GUARD * float(np.percentile(latencies, 99)), mid


# ----------------------------------------------------------------------------- metrics


def change_points(frames: int) -> list[int]:
    """Frames at which something changes (the start counts: the first frames settle)."""
    return [start for _, start, _ in phases(frames)]


def settling_mask(frames: int) -> np.ndarray:
    """True for frames inside a settling window."""
    mask = np.zeros(frames, dtype=bool)
    for c in change_points(frames):
        mask[c : c + SETTLE] = True
    return mask


def settling_frames(met: np.ndarray, start: int, end: int, rate: float = 0.99) -> int | None:
    """Fewest frames ``k`` after ``start`` such that ``[start + k, end)`` meets >= ``rate``
    of deadlines; ``None`` if no suffix of at least ``SETTLE`` frames does."""
    for k in range(0, end - start - SETTLE + 1):
        if met[start + k : end].mean() >= rate:
            return k
    return None


def summarise(rows: list[dict[str, Any]], trained: bool) -> dict[str, Any]:
    """Every number of one controller's run."""
    n = len(rows)
    met = np.array([r["met"] for r in rows])
    sizes = np.array([r["resolution"] for r in rows])
    correct = np.array([r["correct"] for r in rows])
    latency = np.array([r["latency_ms"] for r in rows])
    steady = ~settling_mask(n)
    switch_at = np.zeros(n, dtype=bool)
    switch_at[1:] = sizes[1:] != sizes[:-1]
    out: dict[str, Any] = {
        "hit_rate": float(met.mean()),
        "hit_rate_steady": float(met[steady].mean()),
        "switches": int(switch_at.sum()),
        "switches_per_100_steady": float(100 * switch_at[steady].sum() / steady.sum()),
        "mean_resolution": float(sizes.mean()),
        "accuracy": float(correct.mean()) if trained else None,
        "phases": {},
    }
    for name, start, end in phases(n):
        window = slice(start, end)
        inner = slice(start + SETTLE, end)
        out["phases"][name] = {
            "hit_rate": float(met[window].mean()),
            "hit_rate_steady": float(met[inner].mean()) if end - start > SETTLE else None,
            "settling_frames": settling_frames(met, start, end) if start > 0 else None,
            "last_switch_after": (
                int(np.flatnonzero(switch_at[window])[-1]) if switch_at[window].any() else 0
            ),
            "mean_resolution": float(sizes[window].mean()),
            "median_latency_ms": float(np.median(latency[window])),
            "accuracy": float(correct[window].mean()) if trained else None,
            "correct": int(correct[window].sum()),
            "frames": end - start,
        }
    return out


def oracle(summaries: dict[str, dict[str, Any]], ladder: list[int]) -> dict[str, Any]:
    """The best fixed resolution per phase and the accuracy it gets."""
    fixed = {size: summaries[f"fixed:{size}"] for size in ladder}
    chosen, correct, frames = {}, 0, 0
    for name in next(iter(fixed.values()))["phases"]:
        meeting = [s for s, f in fixed.items() if _steady(f["phases"][name]) >= 0.99]
        if meeting:
            best = max(meeting, key=lambda s: (fixed[s]["phases"][name]["correct"], -s))
        else:
            best = max(
                fixed,
                key=lambda s: (_steady(fixed[s]["phases"][name]), -s),
            )
        phase = fixed[best]["phases"][name]
        chosen[name] = {"resolution": best, "meets": bool(meeting), "accuracy": phase["accuracy"]}
        correct += phase["correct"]
        frames += phase["frames"]
    return {"per_phase": chosen, "accuracy": correct / frames}


def _steady(phase: dict[str, Any]) -> float:
    """A phase's steady hit rate (its whole hit rate when too short for a window)."""
    value = phase["hit_rate_steady"]
    return phase["hit_rate"] if value is None else value


def targets(summary: dict[str, Any], oracle_result: dict[str, Any] | None) -> dict[str, Any]:
    p = summary["predictive"]
    out = {
        "hit_rate_steady": {
            "value": p["hit_rate_steady"],
            "target": ">= 0.99",
            "met": p["hit_rate_steady"] >= 0.99,
        },
        "switches_per_100_steady": {
            "value": p["switches_per_100_steady"],
            "target": "<= 1",
            "met": p["switches_per_100_steady"] <= 1.0,
        },
    }
    if oracle_result is not None and p["accuracy"] is not None:
        gap = 100 * (oracle_result["accuracy"] - p["accuracy"])
        out["accuracy_vs_oracle_points"] = {"value": gap, "target": "<= 0.5", "met": gap <= 0.5}
    return out


# ----------------------------------------------------------------------------- report


def _controller_cells(name: str, s: dict[str, Any], names: list[str]) -> list[str]:
    """One controller's row of a case's table."""
    settle = " / ".join(
        "never" if s["phases"][n]["settling_frames"] is None
        else str(s["phases"][n]["settling_frames"])
        for n in names[1:]
    )  # fmt: skip
    return [
        name,
        f"{100 * s['hit_rate']:.1f} %",
        f"{100 * s['hit_rate_steady']:.1f} %",
        *(f"{100 * s['phases'][n]['hit_rate']:.1f} %" for n in names),
        settle,
        f"{s['switches_per_100_steady']:.2f}",
        f"{s['mean_resolution']:.1f}",
        "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f} %",
    ]


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"Measured {result['date']} on {env['cpu']} (pinned to CPU {env['pinned_cpu']}, 1 torch "
        f"thread), torch {env['torch']}; mode {result['mode']}. 1-minute load average at "
        f"start / end: {env['load_start']:.1f} / {env['load_end']:.1f}. Frames are "
        "Fashion-MNIST test images; phases: quiet (deadline D) | load (one busy process on "
        f"the same CPU, {100 * result['load_duty']:.0f} % duty cycle) | recovered | tight "
        f"(deadline {TIGHT} D). Steady = outside {SETTLE} frames after each change.",
        "",
    ]
    for case in result["cases"]:
        names = [p for p, _, _ in phases(case["frames"])]
        lines += [
            f"### {case['name']} (ladder {case['ladder']} px, {case['frames']} frames, "
            f"D = {case['deadline_ms']:.3g} ms = {GUARD} × p99 of fixed:{case['mid']} quietly; "
            f"the load slowed fixed:{case['mid']} by {case['load_slowdown']:.2f}× (median))",
            "",
        ]
        header = [
            "controller",
            "hits",
            "hits steady",
            *(f"hits {n}" for n in names),
            "settle load / recovered / tight",
            "switches/100 steady",
            "mean px",
            "accuracy",
        ]
        cells = [_controller_cells(name, s, names) for name, s in case["controllers"].items()]
        if case["oracle"] is not None:
            o = case["oracle"]
            picks = ", ".join(
                f"{n}: {v['resolution']} px" + ("" if v["meets"] else " (none meets)")
                for n, v in o["per_phase"].items()
            )
            oracle = f"oracle (best fixed per phase: {picks})"
            cells.append([oracle, *[""] * (len(header) - 2), f"{100 * o['accuracy']:.2f} %"])
        lines += markdown_table(header, cells, "lrr" + "r" * len(names) + "lrrr")
        lines += ["", "Targets for `predictive`:"]
        for key, t in case["targets"].items():
            value = t["value"]
            shown = f"{100 * value:.2f} %" if key == "hit_rate_steady" else f"{value:.2f}"
            lines.append(
                f"- {key}: {shown} (target {t['target']}): {'met' if t['met'] else 'missed'}"
            )
        s = case["controllers"]["step"]
        lines += [
            f"- the seed's `step` on the same run: {100 * s['hit_rate_steady']:.1f} % of steady "
            f"deadlines, {s['switches_per_100_steady']:.1f} switches per 100 steady frames.",
            "",
        ]
    lines.append(f"Plot: `{result['plot']}`.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    fig, axes = plt.subplots(2, len(cases), figsize=(7 * len(cases), 6.5), squeeze=False)
    colours = {"step": "tab:orange", "predictive": "tab:blue"}
    for column, case in enumerate(cases):
        top, bottom = axes[0][column], axes[1][column]
        n = case["frames"]
        for name in ("step", "predictive"):
            series = case["series"][name]
            x = np.arange(n)
            top.plot(x, series["resolution"], color=colours[name], lw=1, label=name)
            bottom.plot(x, series["latency_ms"], color=colours[name], lw=0.6, label=name)
        bottom.plot(np.arange(n), case["series"]["predictive"]["deadline_ms"], "k--", lw=1,
                    label="deadline")  # fmt: skip
        if case["oracle"] is not None:
            oracle_sizes = np.zeros(n)
            for name, start, end in phases(n):
                oracle_sizes[start:end] = case["oracle"]["per_phase"][name]["resolution"]
            top.plot(np.arange(n), oracle_sizes, "k:", lw=1, label="oracle (best fixed)")
        for ax in (top, bottom):
            _, a, b = phases(n)[1]
            ax.axvspan(a, b, color="grey", alpha=0.15, lw=0)
        top.set_title(f"{case['name']}: resolution per frame (grey: competing load)")
        top.set_ylabel("resolution (px)")
        bottom.set_ylabel("frame latency (ms)")
        bottom.set_xlabel("frame")
        bottom.set_yscale("log")
        top.legend(loc="lower left", fontsize=8)
        bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    if spec["model"] == "vit_tiny_patch16":
        torch.manual_seed(0)
        return vitres.create_model("vit_tiny_patch16", **VIT_TINY_OVERRIDES)
    return vitres.load_model(spec["model"])


def tiny_factory() -> torch.nn.Module:
    """ViT-Ti/16 for 1-channel, 10-class input with fixed random weights (for the sweep)."""
    torch.manual_seed(0)
    return vitres.create_model("vit_tiny_patch16", **VIT_TINY_OVERRIDES)


def _sweep(
    spec: dict[str, Any], path: Path, reference: Any, timing: TimingConfig, progress: bool
) -> list[Any]:
    """The ladder's records: a real sweep, eager fp32, one thread."""
    return run_sweep(
        reference,
        out_path=path,
        resolutions=spec["ladder"],
        backends=("eager",),
        threads=1,
        data="fashion-mnist" if spec["trained"] else None,
        eval_limit=spec["eval_limit"],
        isolate=False,
        timing=timing,
        progress=progress,
    )


def run_case(spec: dict[str, Any], quick: bool, duty: float, progress: bool) -> dict[str, Any]:
    model = build_model(spec)
    ladder = spec["ladder"]
    records_path = RUNS_DIR / f"runtime_adaptation{'_quick' if quick else ''}.{spec['name']}.jsonl"
    if records_path.exists():
        records_path.unlink()
    timing = (
        TimingConfig(min_calls=20, min_s=0.3) if quick else TimingConfig(min_calls=60, min_s=1.5)
    )
    reference = tiny_factory if spec["model"] == "vit_tiny_patch16" else spec["model"]
    load = CompetingLoad(cpu=_pinned_cpu(), duty=duty, processes=spec.get("processes", 1))
    if spec.get("busy_sweep"):
        load.start()  # the sweep measures a busy machine; the run starts quiet
    try:
        records = _sweep(spec, records_path, reference, timing, progress)
    finally:
        load.stop()
    latency = LatencyModel.from_records(records, backend="eager")
    test = load_fashion_mnist("test")
    offset = spec["eval_limit"] or 0
    images = test.images[offset : offset + spec["frames"]]
    labels = test.labels[offset : offset + spec["frames"]]
    deadline, mid = quiet_deadline(
        model, ladder, latency, images[: min(200, len(images))], spec.get("deadline")
    )
    controllers = ["step", "predictive", *(f"fixed:{s}" for s in ladder)]
    summaries, series = {}, {}
    for name in controllers:
        rows = run_scenario(model, ladder, name, latency, deadline, images, labels, load, progress)
        summaries[name] = summarise(rows, spec["trained"])
        if name in ("step", "predictive"):
            series[name] = {
                key: [round(r[key], 4) if isinstance(r[key], float) else r[key] for r in rows]
                for key in ("resolution", "latency_ms", "deadline_ms")
            }
        time.sleep(0.5)  # let the machine settle between runs
    oracle_result = oracle(summaries, ladder) if spec["trained"] else None
    mid_phases = summaries[f"fixed:{mid}"]["phases"]
    return {
        "name": spec["name"],
        "ladder": ladder,
        "frames": spec["frames"],
        "deadline_ms": deadline,
        "mid": mid,
        "records": str(records_path.relative_to(ROOT)),
        "expected_accuracy": {s: latency.expected_accuracy(s) for s in ladder},
        "predicted_p95_ms": {s: latency.p95_ms(s) for s in ladder},
        "load_slowdown": mid_phases["load"]["median_latency_ms"]
        / mid_phases["quiet"]["median_latency_ms"],
        "controllers": summaries,
        "oracle": oracle_result,
        "targets": targets(summaries, oracle_result),
        "series": series,
    }


def _pinned_cpu() -> int | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    return min(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short ladders, few frames")
    parser.add_argument(
        "--load-duty",
        type=float,
        default=DUTY,
        help="share of the CPU the competing process takes during the load phase (default 1/3)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="the real DINOv2-S/14 classifier of `make real-model` (issue 27's targets)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    mode = "real" if args.real else "quick" if args.quick else "full"
    stem = {"real": "runtime_adaptation_real", "quick": "runtime_adaptation_quick"}.get(
        mode, "runtime_adaptation"
    )
    load_start = os.getloadavg()[0]
    cases = [
        run_case(spec, args.quick, args.load_duty, not args.no_progress) for spec in CASES[mode]
    ]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "mode": mode,
        "env": environment(
            pinned_cpu=cpu,
            load_start=load_start,
            load_end=os.getloadavg()[0],
        ),
        "settle_window": SETTLE,
        "load_duty": args.load_duty,
        "tight_factor": TIGHT,
        "plot": str((RESULTS_DIR / f"{stem}.png").relative_to(ROOT)),
        "cases": cases,
    }
    plot(result, RESULTS_DIR / f"{stem}.png")
    write_json(RESULTS_DIR / f"{stem}.json", result, indent=1, default=_json, newline=False)
    table = markdown(result)
    write_markdown(RESULTS_DIR / f"{stem}.md", table)
    print(table)
    return 0


def _json(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())

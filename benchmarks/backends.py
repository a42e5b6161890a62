"""Deployment backends side by side: latency, speed-up over eager fp32, share of the
measured matmul ceilings, build time, recompiles, and accuracy on Fashion-MNIST.

Cases: the Fashion-MNIST reference model over its resolution ladder (16, 20, 28, 40, 56)
and ViT-S/16 (random weights) at 224, each at batch 1 and 8. All backends of a case are
built first (build / export / quantise / compile time recorded apart), then timed in
interleaved rounds -- every round times each backend in turn, starting from a different
one each round -- so the speed-ups compare runs that shared the same machine state.
Achieved GFLOP/s use the analytic FLOPs of :func:`vitres.measure.analytic_flops`; the
ceilings are the best large-GEMM rate measured here for fp32 and bf16 (``torch.mm``,
2048², best of several, at the start and at the end of the run).

Usage::

    .venv/bin/python benchmarks/backends.py            # full run (4-9 min on 2 cores)
    .venv/bin/python benchmarks/backends.py --quick    # ~3 min: fewer rounds / images, no compile
    .venv/bin/python benchmarks/backends.py --threads 1  # per-core, robust on a busy machine

Writes ``benchmarks/results/backends.json`` and ``backends.md`` and refreshes the table
in ``docs/deployment.md`` (between the ``backends-table`` markers).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vitres  # noqa: E402
from vitres.backends import get_backend  # noqa: E402
from vitres.data import eval_batches, load_fashion_mnist  # noqa: E402
from vitres.export import check_parity  # noqa: E402
from vitres.measure import analytic_flops, env_fingerprint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "deployment.md"
DEFAULT_OUT = RESULTS / "backends"
LADDER = (16, 20, 28, 40, 56)
REFERENCE_NAMES = ("fmnist-vit-multires", "fmnist-vit-single")
ALL_BACKENDS = (
    "eager",
    "eager-bf16",
    "compile",
    "compile-bf16",
    "onnxruntime",
    "onnxruntime-int8",
    "onnxruntime-int8-static",
)
MARK_START = "<!-- backends-table:start -->"
MARK_END = "<!-- backends-table:end -->"


# ----------------------------------------------------------------------------- ceilings


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """Best GFLOP/s of an ``n x n`` by ``n x n`` ``torch.mm`` in ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def ceilings() -> dict[str, float]:
    return {
        "fp32": matmul_ceiling(torch.float32),
        "bf16": matmul_ceiling(torch.bfloat16),
    }


# ----------------------------------------------------------------------------- models


def reference_model() -> tuple[torch.nn.Module, str, bool]:
    """The bundled Fashion-MNIST reference (multires if trained, else single), or a
    random stand-in of the same architecture."""
    for name in REFERENCE_NAMES:
        try:
            return vitres.load_model(name).eval(), name, False
        except (ValueError, FileNotFoundError, KeyError):
            continue
    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4",
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=4,
        num_heads=2,
    )
    return model.eval(), "stand-in (random weights)", True


def build_backends(
    model: torch.nn.Module,
    names: list[str],
    shape: tuple[int, ...],
    cache_dir: Path,
    calib_resolutions: list[tuple[int, int]],
    calib_images: int,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    backends, builds = {}, {}
    for name in names:
        kwargs: dict[str, Any] = {}
        if name.startswith("onnxruntime"):
            kwargs["cache_dir"] = cache_dir
        if name == "onnxruntime-int8-static":
            kwargs.update(calib_resolutions=calib_resolutions, calib_images=calib_images)
        if name.startswith("compile"):
            kwargs["dynamic"] = True  # one graph for every size and batch: no recompiles
        backend = get_backend(name, **kwargs)
        backend.prepare(copy.deepcopy(model), shape)
        info = {"build_time_s": round(backend.build_time_s, 3)}
        for attribute in ("export_time_s", "session_time_s", "quantize_time_s", "compile_time_s"):
            value = getattr(backend, attribute, None)
            if value is not None:
                info[attribute] = round(value, 3)
        if getattr(backend, "onnx_path", None) is not None:
            info["onnx_file"] = backend.onnx_path.name
        builds[name] = info
        backends[name] = backend
        print(f"  built {name:24s} in {backend.build_time_s:6.1f} s", flush=True)
    return backends, builds


# ----------------------------------------------------------------------------- timing


def interleaved_latency(
    runs: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, rounds: int, calls: int
) -> dict[str, list[float]]:
    """Per-call seconds of every ``run(x)``, timed round-robin (the first one rotates)."""
    names = list(runs)
    for name in names:  # warm-up (and any recompile for this shape) before timing
        for _ in range(2):
            runs[name](x)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run = runs[name]
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                samples[name].append(time.perf_counter() - start)
    return samples


def summarise(
    case: str,
    model: torch.nn.Module,
    resolution: int,
    batch: int,
    samples: dict[str, list[float]],
    ceiling: dict[str, float],
    backends: dict[str, Any],
) -> list[dict[str, Any]]:
    flops = analytic_flops(model.config, resolution, batch=batch)
    eager = statistics.median(samples["eager"])
    eager_min = min(samples["eager"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        ordered = sorted(values)
        gflops = flops / median / 1e9
        row = {
            "case": case,
            "resolution": resolution,
            "batch": batch,
            "backend": name,
            "precision": type(backends[name]).precision,
            "median_ms": round(median * 1e3, 3),
            "p10_ms": round(ordered[len(ordered) // 10] * 1e3, 3),
            "p90_ms": round(ordered[(9 * len(ordered)) // 10] * 1e3, 3),
            "calls": len(values),
            "speedup_vs_eager": round(eager / median, 3),
            "min_ms": round(ordered[0] * 1e3, 3),
            "speedup_vs_eager_of_min": round(eager_min / ordered[0], 3),
            "gflops": round(gflops, 2),
            "frac_fp32_ceiling": round(gflops / ceiling["fp32"], 3),
            "frac_bf16_ceiling": round(gflops / ceiling["bf16"], 3),
        }
        if hasattr(backends[name], "recompiles"):
            row["compiles_so_far"] = backends[name].compiles
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- accuracy


def accuracy(backends: dict[str, Any], model: torch.nn.Module, limit: int) -> list[dict]:
    cfg = model.config
    test = load_fashion_mnist("test")
    rows = []
    for resolution in LADDER:
        batches = list(
            eval_batches(test, resolution, 250, mean=cfg.mean, std=cfg.std, in_chans=1, limit=limit)
        )
        scores = {}
        for name, backend in backends.items():
            correct = total = 0
            for x, y in batches:
                correct += int((backend.run(x).argmax(1) == y).sum())
                total += len(y)
            scores[name] = correct / total
        for name, score in scores.items():
            rows.append(
                {
                    "resolution": resolution,
                    "backend": name,
                    "accuracy": round(score, 4),
                    "drop_points": round(100 * (scores["eager"] - score), 2),
                    "n_eval": total,
                }
            )
        print(
            f"  accuracy @{resolution}: "
            + ", ".join(f"{n} {100 * s:.2f}" for n, s in scores.items()),
            flush=True,
        )
    return rows


def calibration_methods(
    model: torch.nn.Module, fp32_graph: Path, limit: int | None
) -> list[dict[str, Any]]:
    """Static INT8 of the reference model's one graph, calibrated on 256 train images
    spread over the ladder with each method, scored on the test set at every rung."""
    from vitres.export import OnnxModel, calibration_batches, quantize_onnx

    cfg = model.config
    test = load_fashion_mnist("test")
    batches = calibration_batches(model, "fashion-mnist", [(r, r) for r in LADDER], num_images=256)
    rows = []
    for method in ("minmax", "entropy", "percentile"):
        path = fp32_graph.with_name(f"{fp32_graph.stem}-calib-{method}.onnx")
        facts = quantize_onnx(fp32_graph, path, "static", calibration=batches, calib_method=method)
        runner = OnnxModel(path)
        for resolution in LADDER:
            correct = total = 0
            for x, y in eval_batches(
                test, resolution, 250, mean=cfg.mean, std=cfg.std, in_chans=1, limit=limit
            ):
                correct += int((runner(x).argmax(1) == y).sum())
                total += len(y)
            rows.append(
                {
                    "method": method,
                    "resolution": resolution,
                    "accuracy": round(correct / total, 4),
                    "n_eval": total,
                    "quantize_s": round(facts["seconds"], 1),
                }
            )
        print(
            f"  calibration {method}: "
            + ", ".join(
                f"{r['resolution']}px {100 * r['accuracy']:.2f}"
                for r in rows
                if r["method"] == method
            ),
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------- bf16


def bf16_investigation(model: torch.nn.Module, batch: int, rounds: int) -> dict[str, Any]:
    """ViT-S/16 at 224 in bf16 four ways, interleaved: the whole model cast to bf16 (what
    ``eager-bf16`` does), ``torch.autocast`` over the fp32 model, and the cast model with
    attention forced to the math path (no fused flash kernel), against fp32; plus the
    share of bf16 time spent in linear layers and their GFLOP/s."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    fp32 = copy.deepcopy(model).eval()
    cast = copy.deepcopy(model).eval().to(torch.bfloat16)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xb = x.to(torch.bfloat16)

    def autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fp32(x)

    def math_attention() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return cast(xb)

    variants = {
        "fp32": lambda: fp32(x),
        "bf16 whole model": lambda: cast(xb),
        "bf16 autocast": autocast,
        "bf16 whole model, math attention": math_attention,
    }
    with torch.inference_mode():
        runs = {name: (lambda _x, f=f: f()) for name, f in variants.items()}
        samples = interleaved_latency(runs, x, rounds=rounds, calls=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            cast(xb)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    linear = sum(
        e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm")
    )
    linear_flops = analytic_flops(model.config, 224, batch=batch) - batch * (
        4 * 197 * 197 * model.config.embed_dim * model.config.depth
    )
    median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {
        "batch": batch,
        "median_ms": {k: round(v, 2) for k, v in median.items()},
        "speedup_vs_fp32": {k: round(median["fp32"] / v, 2) for k, v in median.items()},
        "bf16_linear_share_of_time": round(linear / total, 3) if total else None,
        "bf16_linear_gflops": round(linear_flops / (linear / 1e6) / 1e9, 1) if linear else None,
    }


# ----------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    env, ceil = result["env"], result["ceilings_gflops"]
    lines = [
        f"Measured {result['date']} on {env['cpu']} ({env['usable_cores']} cores, "
        f"{env['torch_threads']} thread(s) for torch and ONNX Runtime; flags: "
        + ", ".join(k for k, v in env["cpu_flags"].items() if v)
        + f"), torch {env['torch']}, onnxruntime {result['onnxruntime']}. "
        f"Matmul ceilings (2048² GEMM, best): fp32 {ceil['fp32']:.0f} GFLOP/s, "
        f"bf16 {ceil['bf16']:.0f} GFLOP/s. Mode: {'quick' if result['quick'] else 'full'}; "
        f"the machine was shared with other jobs, so absolute times are noisy, "
        "speed-ups were measured side by side in one run.",
        "",
        "| model | res | batch | backend | median ms | speed-up vs eager fp32 (medians) | "
        "speed-up (fastest calls) | GFLOP/s | % fp32 ceiling | % bf16 ceiling |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["latency"]:
        lines.append(
            f"| {row['case']} | {row['resolution']} | {row['batch']} | {row['backend']} | "
            f"{row['median_ms']:.2f} | {row['speedup_vs_eager']:.2f}× | "
            f"{row['speedup_vs_eager_of_min']:.2f}× | {row['gflops']:.1f} | "
            f"{100 * row['frac_fp32_ceiling']:.0f}% | {100 * row['frac_bf16_ceiling']:.0f}% |"
        )
    if result["accuracy"]:
        names = list(dict.fromkeys(r["backend"] for r in result["accuracy"]))
        n_eval = result["accuracy"][0]["n_eval"]
        lines += [
            "",
            f"Accuracy (%) of {result['reference_model']} on the Fashion-MNIST test set "
            f"({n_eval} images) per backend; in brackets the drop vs eager fp32 in points.",
            "",
            "| res | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(names),
        ]
        for resolution in LADDER:
            cells = []
            for name in names:
                row = next(
                    r
                    for r in result["accuracy"]
                    if r["resolution"] == resolution and r["backend"] == name
                )
                cells.append(f"{100 * row['accuracy']:.2f} ({row['drop_points']:+.2f})")
            lines.append(f"| {resolution} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Build times (s): "
        + "; ".join(
            f"{case}/{name} {info['build_time_s']:.1f}"
            for case, builds in result["builds"].items()
            for name, info in builds.items()
        ),
    ]
    if result.get("recompiles"):
        lines += [
            "",
            "Recompiles on shape changes (torch.compile): "
            + "; ".join(
                f"{case}/{name}: {count}"
                for case, counts in result["recompiles"].items()
                for name, count in counts.items()
            ),
        ]
    calibration = result.get("calibration_methods")
    if calibration:
        eager = {
            r["resolution"]: r["accuracy"] for r in result["accuracy"] if r["backend"] == "eager"
        }
        lines += [
            "",
            "Static INT8 calibration methods (the same fp32 graph, 256 train images over the "
            "ladder; accuracy % on the test set, drop vs eager fp32 in brackets):",
            "",
            "| method | " + " | ".join(f"{r} px" for r in LADDER) + " |",
            "|---|" + "---:|" * len(LADDER),
        ]
        for method in ("minmax", "entropy", "percentile"):
            cells = [
                f"{100 * r['accuracy']:.2f} ({100 * (eager[r['resolution']] - r['accuracy']):+.2f})"
                for r in calibration
                if r["method"] == method
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    bf16 = result.get("bf16_investigation")
    if bf16:
        lines += [
            "",
            f"bf16 variants, ViT-S/16 at 224, batch {bf16['batch']} (median ms, speed-up vs fp32): "
            + "; ".join(
                f"{k} {v:.0f} ms ({bf16['speedup_vs_fp32'][k]:.2f}×)"
                for k, v in bf16["median_ms"].items()
            )
            + f". Linear layers take {100 * bf16['bf16_linear_share_of_time']:.0f} % of the bf16 "
            f"forward and run at {bf16['bf16_linear_gflops']:.0f} GFLOP/s.",
        ]
    load = result["load_average_start_end"]
    lines += [
        "",
        f"1-minute load average at start / end: {load[0][0]:.1f} / {load[1][0]:.1f} "
        "(2 cores; above ~0.5 other jobs were running).",
    ]
    targets = result["targets"]
    lines += [
        "",
        f"Targets (best CPU backend = `{targets['best_backend']}`): ViT-S/16 batch 8 "
        f"{targets['speedup_b8']:.2f}× (target ≥ 4×: {'met' if targets['met_b8'] else 'missed'}), "
        f"batch 1 {targets['speedup_b1']:.2f}× (target ≥ 2.5×: "
        f"{'met' if targets['met_b1'] else 'missed'}), worst accuracy drop on the ladder "
        f"{targets['max_drop_points']:.2f} points (target ≤ 0.5: "
        f"{'met' if targets['met_accuracy'] else 'missed'}); one ONNX file for every ladder "
        f"resolution: {'yes' if targets['one_onnx_file'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


def update_doc(table: str) -> None:
    if not DOC.exists():
        return
    text = DOC.read_text()
    if MARK_START not in text or MARK_END not in text:
        return
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    DOC.write_text(f"{head}{MARK_START}\n{table}{MARK_END}{tail}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and images, no compile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per config")
    parser.add_argument(
        "--eval-limit", type=int, default=None, help="test images (default 2000; quick 1000)"
    )
    parser.add_argument("--backends", default=None, help="comma-separated subset")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where exported graphs go (default: a fresh temporary folder, so build times "
        "include the export)",
    )
    parser.add_argument(
        "--compile-fmnist",
        action="store_true",
        help="also time torch.compile on the Fashion-MNIST ladder (4-6 compiles of ~30 s each: "
        "batch 1 vs >1 and the native grid each get their own graph)",
    )
    parser.add_argument(
        "--render", default=None, help="only re-render the .md / docs table from this JSON file"
    )
    args = parser.parse_args(argv)
    if args.render:
        table = markdown(json.loads(Path(args.render).read_text()))
        Path(args.render).with_suffix(".md").write_text(table)
        if Path(args.render).with_suffix("").resolve() == DEFAULT_OUT.resolve():
            update_doc(table)
        print(table)
        return 0

    import onnxruntime

    torch.set_num_threads(args.threads)
    names = args.backends.split(",") if args.backends else list(ALL_BACKENDS)
    names = ["eager"] + [n for n in names if n != "eager"]  # the baseline of every speed-up
    if args.quick and not args.backends:
        names = [n for n in names if not n.startswith("compile")]
    rounds = args.rounds or (3 if args.quick else 8)
    eval_limit = args.eval_limit or (1000 if args.quick else 2000)
    temporary = tempfile.TemporaryDirectory(prefix="vitres-bench-") if not args.cache_dir else None
    cache_dir = Path(args.cache_dir or temporary.name)
    start = time.time()
    load_start = list(os.getloadavg())
    ceiling_start = ceilings()
    print(f"matmul ceilings: {ceiling_start}", flush=True)

    fmnist, fmnist_name, stand_in = reference_model()
    vit_s = vitres.create_model("vit_small_patch16").eval()
    cases = [
        ("fmnist", fmnist, LADDER, 28),
        ("vit_small_patch16", vit_s, (224,), 224),
    ]
    latency, builds, recompiles, accuracy_rows, calibration_rows = [], {}, {}, [], []
    onnx_files: dict[str, list[str]] = {}
    for case, model, resolutions, native in cases:
        print(f"{case}: building backends", flush=True)
        chans = model.config.in_chans
        calib = [(r, r) for r in resolutions]
        case_names = names
        if case == "fmnist" and not args.compile_fmnist:
            case_names = [n for n in names if not n.startswith("compile")]
        backends, builds[case] = build_backends(
            model,
            case_names,
            (1, chans, native, native),
            cache_dir,
            calib,
            256 if case == "fmnist" else 16,
        )
        for batch in (1, 8):
            for resolution in resolutions:
                x = torch.randn(
                    batch, chans, resolution, resolution, generator=torch.Generator().manual_seed(0)
                )
                heavy = case != "fmnist"
                samples = interleaved_latency(
                    {n: b.run for n, b in backends.items()},
                    x,
                    rounds=rounds,
                    calls=(3 if batch == 1 else 1) if heavy else (5 if args.quick else 10),
                )
                rows = summarise(case, model, resolution, batch, samples, ceiling_start, backends)
                latency += rows
                print(
                    f"  {case} {resolution}px b{batch}: "
                    + ", ".join(
                        f"{r['backend']} {r['median_ms']:.1f} ms ({r['speedup_vs_eager']:.2f}×)"
                        for r in rows
                    ),
                    flush=True,
                )
        recompiles[case] = {
            n: b.recompiles for n, b in backends.items() if hasattr(b, "recompiles")
        }
        onnx_files[case] = sorted(
            {i["onnx_file"] for i in builds[case].values() if "onnx_file" in i}
        )
        if case == "fmnist":
            # one fp32 graph: check it against eager at every ladder resolution, batch 3
            onnx_backend = backends.get("onnxruntime")
            if onnx_backend is not None:
                report = check_parity(
                    model, onnx_backend.onnx_path, [(r, r) for r in LADDER] + [(20, 56)]
                )
                builds[case]["onnxruntime"]["ladder_parity"] = report.max_abs_diff
            accuracy_rows = accuracy(backends, model, eval_limit)
            if onnx_backend is not None and not args.quick:
                calibration_rows = calibration_methods(model, onnx_backend.onnx_path, eval_limit)
        del backends
    bf16 = None
    if not args.quick:
        print("bf16 investigation (ViT-S/16, 224, batch 8)", flush=True)
        bf16 = bf16_investigation(vit_s, 8, rounds)
        print(f"  {bf16}", flush=True)
    ceiling_end = ceilings()
    ceiling = {k: max(ceiling_start[k], ceiling_end[k]) for k in ceiling_start}
    # recompute the ceiling fractions with the best ceiling seen
    for row in latency:
        row["frac_fp32_ceiling"] = round(row["gflops"] / ceiling["fp32"], 3)
        row["frac_bf16_ceiling"] = round(row["gflops"] / ceiling["bf16"], 3)

    vit_rows = [r for r in latency if r["case"] == "vit_small_patch16"]
    candidates = [n for n in names if n != "eager"]

    def speedup(name: str, batch: int) -> float:
        return next(
            r["speedup_vs_eager"] for r in vit_rows if r["backend"] == name and r["batch"] == batch
        )

    best = max(candidates, key=lambda n: speedup(n, 8)) if candidates else "eager"
    drops = [r["drop_points"] for r in accuracy_rows if r["backend"] == best]
    fmnist_fp32_files = [f for f in onnx_files.get("fmnist", []) if "int8" not in f]
    targets = {
        "best_backend": best,
        "speedup_b8": speedup(best, 8) if candidates else 1.0,
        "speedup_b1": speedup(best, 1) if candidates else 1.0,
        "max_drop_points": max(drops) if drops else float("nan"),
        "one_onnx_file": len(fmnist_fp32_files) == 1,
    }
    targets.update(
        met_b8=targets["speedup_b8"] >= 4.0,
        met_b1=targets["speedup_b1"] >= 2.5,
        met_accuracy=bool(drops) and targets["max_drop_points"] <= 0.5,
    )
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "quick": args.quick,
        "runtime_s": round(time.time() - start, 1),
        "env": env_fingerprint(args.threads),
        "onnxruntime": onnxruntime.__version__,
        "ceilings_gflops": {k: round(v, 1) for k, v in ceiling.items()},
        "ceilings_start_end": {"start": ceiling_start, "end": ceiling_end},
        "reference_model": fmnist_name,
        "reference_is_stand_in": stand_in,
        "rounds": rounds,
        "latency": latency,
        "accuracy": accuracy_rows,
        "builds": builds,
        "recompiles": recompiles,
        "onnx_files": onnx_files,
        "targets": targets,
        "bf16_investigation": bf16,
        "calibration_methods": calibration_rows,
        "load_average_start_end": [load_start, list(os.getloadavg())],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    if out.resolve() == DEFAULT_OUT.resolve():  # only the canonical results go in the docs
        update_doc(table)
    print(table)
    print(
        f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {result['runtime_s']:.0f} s"
    )
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

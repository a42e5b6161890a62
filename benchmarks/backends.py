"""Deployment backends and their peers side by side: latency, speed-up over eager fp32,
ratio to the best peer, share of the measured GEMM ceilings, build time, accuracy drop,
and the seeds' speed and memory claims.

Cases (issue 12): the Fashion-MNIST reference model over its resolution ladder (16, 20,
28, 40, 56), ViT-S/16 at 224 and ViT-B/16 at 224 and 384 (random weights), each at batch
1 and 8, with 1 thread and all cores. Peers (``benchmarks/peers.py``): OpenVINO with its
own PyTorch converter (fp32 and bf16), ONNX Runtime on the exported file, and Hugging
Face ``transformers`` ViT with SDPA (fp32 and bf16, the same weights as the vitres model).

All backends of a case are built first (build / export / convert / quantise / compile
time recorded apart), then each configuration is timed in interleaved rounds -- every
round times each backend and peer in turn, starting from a different one each round --
so the speed-ups compare runs that shared the same machine state. Achieved GFLOP/s use
the analytic FLOPs of :func:`vitres.measure.analytic_flops`; the ceilings are the best
large-GEMM rate measured here for fp32 and bf16 (``torch.mm``, 2048², best of several, at
the start and at the end of the run, per thread count). Rows whose p90 is over 1.25× the
median are marked noisy: on a shared machine, multi-thread PyTorch timings collapse when
another job runs, and the table says so rather than hide it.

Peak memory for the claims table is the peak RSS (over the child's baseline) of a fresh
child process that builds the backend and runs one batch
(:func:`vitres.measure.peak_memory_mb`), and, for paths that deploy a file (ONNX,
OpenVINO IR), of a fresh child that loads that file with its runtime alone and runs one
batch: what a deployment without PyTorch holds. ``--memory-only`` remeasures these.

Usage::

    .venv/bin/python benchmarks/backends.py                 # full run, quiet machine only
    .venv/bin/python benchmarks/backends.py --threads 1     # per-core only
    .venv/bin/python benchmarks/backends.py --quick --out /tmp/smoke   # smoke: 1 tiny case
    .venv/bin/python benchmarks/backends.py --memory-only benchmarks/results/backends.json

Writes ``benchmarks/results/backends.json`` and ``backends.md`` and refreshes the table
in ``docs/deployment.md`` (between the ``backends-table`` markers; full runs only).
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

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import vitres
from benchmarks._common import RESULTS_DIR, ROOT, markdown_table, write_json, write_markdown
from benchmarks.peers import (
    hf_twin,
    huggingface_sdpa,
    max_abs_diff,
    onnxruntime_int8_file,
    onnxruntime_on_file,
    openvino_direct,
    openvino_int8,
)
from vitres.backends import AUTO_ORDER, get_backend
from vitres.data import eval_batches, load_fashion_mnist
from vitres.export import check_parity
from vitres.measure import analytic_flops, env_fingerprint, interleaved_latency

DOC = ROOT / "docs" / "deployment.md"
DEFAULT_OUT = RESULTS_DIR / "backends"
LADDER = (16, 20, 28, 40, 56)
REFERENCE_NAMES = ("fmnist-vit-multires", "fmnist-vit-single")
# every CPU backend, in `--backend auto` order (TensorRT is GPU-only: benchmarks/gpu_backends.py)
ALL_BACKENDS = tuple(name for name in AUTO_ORDER if not name.startswith("tensorrt"))
# case -> (resolutions, batches); the quick smoke case is tiny and runs once
CASES = {
    "fmnist": (LADDER, (1, 8)),
    "vit_small_patch16": ((224,), (1, 8)),
    "vit_base_patch16": ((224, 384), (1, 8)),
}
QUICK_CASE = "vit_tiny_patch16@64"
NOISY_P90_RATIO = 1.25
SEED_CLAIMS = (
    ("speed", "2.5–4× faster than the native implementation"),
    ("memory", "40–60 % less memory"),
    ("throughput", "throughput 3× higher"),
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


def case_model(case: str) -> tuple[torch.nn.Module, str, bool]:
    """The model of a case, its name, and whether it is a random stand-in."""
    if case == "fmnist":
        return reference_model()
    name, _, size = case.partition("@")
    overrides = {"img_size": int(size)} if size else {}
    torch.manual_seed(0)
    return vitres.create_model(name, **overrides).eval(), name, True


def case_plan(case: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(resolutions, batches)`` of a case."""
    if case in CASES:
        return CASES[case]
    _, _, size = case.partition("@")
    return (int(size) if size else 224,), (1,)


def backend_kwargs(
    name: str, cache_dir: Path, threads: int, calib: list[tuple[int, int]], calib_images: int
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if name.startswith(("onnxruntime", "openvino")):
        kwargs.update(cache_dir=cache_dir, threads=threads)
    if name.endswith("int8-static") or name == "openvino-int8":
        kwargs.update(calib_resolutions=calib, calib_images=calib_images)
    if name.startswith("compile"):
        kwargs["dynamic"] = True  # one graph for every size and batch: no recompiles
    return kwargs


def build_backends(
    model: torch.nn.Module,
    names: list[str],
    shape: tuple[int, ...],
    cache_dir: Path,
    calib_resolutions: list[tuple[int, int]],
    calib_images: int,
    threads: int,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    backends, builds = {}, {}
    for name in names:
        backend = get_backend(
            name, **backend_kwargs(name, cache_dir, threads, calib_resolutions, calib_images)
        )
        backend.prepare(copy.deepcopy(model), shape)
        info = {"build_time_s": round(backend.build_time_s, 3)}
        for attribute in (
            "export_time_s",
            "session_time_s",
            "quantize_time_s",
            "compile_time_s",
            "convert_time_s",
        ):
            value = getattr(backend, attribute, None)
            if value is not None:
                info[attribute] = round(value, 3)
        extra = getattr(backend, "build_info", {})
        for key in (
            "fuse_time_s",
            "fused_ops",
            "converter",
            "fallback_reason",
            "inference_precision",
        ):
            if key in extra:
                info[key] = extra[key]
        if getattr(backend, "onnx_path", None) is not None:
            info["onnx_file"] = backend.onnx_path.name
        builds[name] = info
        backends[name] = backend
        print(f"  built {name:30s} in {backend.build_time_s:6.1f} s", flush=True)
    return backends, builds


def _peak_child(case: str, name: str, shape: tuple[int, ...], threads: int, cache_dir: str) -> None:
    """Builds backend ``name`` for ``case`` and runs one batch (the memory measurement's body)."""
    torch.set_num_threads(threads)
    model, _, _ = case_model(case)
    resolutions, _ = case_plan(case)
    backend = get_backend(
        name,
        **backend_kwargs(name, Path(cache_dir), threads, [(r, r) for r in resolutions], 16),
    )
    backend.prepare(model, shape)
    backend.run(torch.randn(shape))


def peak_memory(
    case: str, name: str, shape: tuple[int, ...], threads: int, cache_dir: Path
) -> float:
    """Peak RSS (MiB) of a fresh process building ``name`` and running one batch."""
    from vitres.measure import peak_memory_mb

    return round(peak_memory_mb(_peak_child, case, name, shape, threads, str(cache_dir)), 1)


def _artifact_child(
    case: str, name: str, shape: tuple[int, ...], threads: int, cache_dir: str
) -> str | None:
    """Builds ``name`` (filling the on-disk cache) and returns the file it runs, if any."""
    torch.set_num_threads(threads)
    model, _, _ = case_model(case)
    resolutions, _ = case_plan(case)
    backend = get_backend(
        name, **backend_kwargs(name, Path(cache_dir), threads, [(r, r) for r in resolutions], 16)
    )
    backend.prepare(model, shape)
    path = getattr(backend, "model_path", None) or getattr(backend, "onnx_path", None)
    return None if path is None else str(path)


def _deployed_child(path: str, shape: tuple[int, ...], threads: int) -> None:
    """Loads the deployed file with its runtime alone (no PyTorch model) and runs one batch."""
    import numpy as np

    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    if path.endswith(".xml"):
        from vitres.export.openvino import compile_openvino

        precision = "bf16" if "bf16" in path else "f32"
        compiled = compile_openvino(path, threads=threads, precision=precision)
        compiled.create_infer_request().infer({0: batch})
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: batch})


def deployed_memory(
    case: str, name: str, shape: tuple[int, ...], threads: int, cache_dir: Path
) -> float | None:
    """Peak RSS (MiB) of a fresh process that runs ``name``'s deployed file with its
    runtime only -- what a deployment without PyTorch holds; ``None`` for PyTorch paths."""
    from vitres.measure import peak_memory_mb, run_isolated

    path = run_isolated(_artifact_child, case, name, shape, threads, str(cache_dir))
    if path is None or not path.endswith((".xml", ".onnx")):
        return None
    return round(peak_memory_mb(_deployed_child, path, shape, threads), 1)


def measure_memory(
    case: str, best: str, batch: int, resolution: int, threads: int, cache_dir: Path
) -> dict[str, Any]:
    """The claims table's memory facts for one case (see the module docstring)."""
    shape = (batch, 3, resolution, resolution)
    print(f"{case}: peak memory of eager and {best}", flush=True)
    return {
        "batch": batch,
        "best": best,
        "eager_mb": peak_memory(case, "eager", shape, threads, cache_dir),
        "best_mb": peak_memory(case, best, shape, threads, cache_dir),
        "deployed_mb": deployed_memory(case, best, shape, threads, cache_dir),
    }


# ----------------------------------------------------------------------------- timing
# (interleaved rounds: vitres.measure.interleaved_latency)


def summarise(
    case: str,
    model: torch.nn.Module,
    resolution: int,
    batch: int,
    threads: int,
    samples: dict[str, list[float]],
    ceiling: dict[str, float],
    facts: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per backend / peer. ``facts[name]``: ``kind`` (vitres / peer), ``precision``,
    ``build_time_s`` and, for peers, ``max_abs_diff`` against the vitres model."""
    flops = analytic_flops(model.config, resolution, batch=batch)
    eager = statistics.median(samples["eager"])
    eager_min = min(samples["eager"])
    peers = [n for n in samples if facts[n]["kind"] == "peer"]
    best_peer = min((statistics.median(samples[n]) for n in peers), default=None)
    best_peer_at: dict[str, float] = {}  # the best peer's median per precision
    for n in peers:
        precision = facts[n]["precision"]
        median = statistics.median(samples[n])
        best_peer_at[precision] = min(median, best_peer_at.get(precision, median))
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        ordered = sorted(values)
        gflops = flops / median / 1e9
        p90 = ordered[(9 * len(ordered)) // 10]
        row = {
            "case": case,
            "resolution": resolution,
            "batch": batch,
            "threads": threads,
            "backend": name,
            "kind": facts[name]["kind"],
            "precision": facts[name]["precision"],
            "median_ms": round(median * 1e3, 3),
            "p10_ms": round(ordered[len(ordered) // 10] * 1e3, 3),
            "p90_ms": round(p90 * 1e3, 3),
            "noisy": p90 > NOISY_P90_RATIO * median,
            "calls": len(values),
            "speedup_vs_eager": round(eager / median, 3),
            "ratio_to_best_peer": None if best_peer is None else round(best_peer / median, 3),
            "ratio_to_best_peer_same_precision": (
                round(best_peer_at[facts[name]["precision"]] / median, 3)
                if facts[name]["precision"] in best_peer_at
                else None
            ),
            "min_ms": round(ordered[0] * 1e3, 3),
            "speedup_vs_eager_of_min": round(eager_min / ordered[0], 3),
            "throughput_ips": round(batch / median, 2),
            "gflops": round(gflops, 2),
            "frac_fp32_ceiling": round(gflops / ceiling["fp32"], 3),
            "frac_bf16_ceiling": round(gflops / ceiling["bf16"], 3),
            "build_time_s": facts[name].get("build_time_s"),
        }
        if "max_abs_diff" in facts[name]:
            row["max_abs_diff_vs_vitres"] = facts[name]["max_abs_diff"]
        if "compiles" in facts[name]:
            row["compiles_so_far"] = facts[name]["compiles"]
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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def latency_table(result: dict[str, Any]) -> list[str]:
    drops = {
        (r["resolution"], r["backend"]): r["drop_points"] for r in result.get("accuracy") or []
    }
    header = (
        "model",
        "res",
        "batch",
        "threads",
        "backend",
        "median ms",
        "speed-up vs eager fp32",
        "vs best peer",
        "% fp32 ceiling",
        "% bf16 ceiling",
        "build s",
        "acc. drop (pts)",
    )
    rows = []
    for row in result["latency"]:
        name = row["backend"] if row.get("kind", "vitres") == "vitres" else f"*{row['backend']}*"
        noisy = " (noisy)" if row.get("noisy") else ""
        drop = drops.get((row["resolution"], row["backend"]))
        build = row.get("build_time_s")
        rows.append(
            (
                row["case"],
                row["resolution"],
                row["batch"],
                row.get("threads", result["env"].get("torch_threads")),
                name,
                f"{row['median_ms']:.2f}{noisy}",
                _times(row["speedup_vs_eager"]),
                _times(row.get("ratio_to_best_peer")),
                _pct(row["frac_fp32_ceiling"]),
                _pct(row["frac_bf16_ceiling"]),
                "–" if build is None else f"{build:.1f}",
                "–" if drop is None else f"{drop:+.2f}",
            )
        )
    return markdown_table(header, rows, "lrrrlrrrrrrr")


def claims_table(result: dict[str, Any]) -> list[str]:
    claims = result.get("claims") or []
    if not claims:
        return []
    lines = [
        "",
        "The seeds' claims beside what is measured here:",
        "",
        *markdown_table(
            ("claim", "case", "measured"),
            ((row["claim"], row["case"], row["measured"]) for row in claims),
        ),
    ]
    return lines


def summary_table(result: dict[str, Any]) -> list[str]:
    """One row per (case, resolution, batch, threads): eager fp32, the fastest vitres
    backend and the fastest peer, side by side (the README's table)."""
    header = (
        "model",
        "res",
        "batch",
        "threads",
        "eager fp32 ms",
        "fastest vitres",
        "ms",
        "speed-up",
        "fastest peer",
        "ms",
        "vitres / peer",
        "same-precision peer",
        "ms",
        "vitres / peer",
        "% bf16 ceiling",
    )
    cells: list[list[str]] = []
    rows = result["latency"]
    keys = dict.fromkeys((r["case"], r["resolution"], r["batch"], r["threads"]) for r in rows)
    for case, res, batch, threads in keys:
        at = [
            r
            for r in rows
            if (r["case"], r["resolution"], r["batch"], r["threads"]) == (case, res, batch, threads)
        ]
        eager = next((r for r in at if r["backend"] == "eager"), None)
        best = best_vitres_row(at, batch, threads)
        peer = min(
            (r for r in at if r.get("kind") == "peer"), key=lambda r: r["median_ms"], default=None
        )
        if eager is None or best is None:
            continue
        same = min(
            (r for r in at if r.get("kind") == "peer" and r["precision"] == best["precision"]),
            key=lambda r: r["median_ms"],
            default=None,
        )
        noisy = " (noisy)" if best.get("noisy") else ""
        peer_cells = [*_peer_cells(peer, best), *_peer_cells(same, best)]
        cells.append(
            [
                case,
                str(res),
                str(batch),
                str(threads),
                f"{eager['median_ms']:.2f}",
                best["backend"],
                f"{best['median_ms']:.2f}{noisy}",
                f"{eager['median_ms'] / best['median_ms']:.2f}×",
                *peer_cells,
                f"{100 * best['frac_bf16_ceiling']:.0f}%",
            ]
        )
    return markdown_table(header, cells, "lrrrrlrrlrrlrrr")


def _peer_cells(peer: dict[str, Any] | None, best: dict[str, Any]) -> list[str]:
    """A peer's name, median and the fastest vitres path's speed ratio over it."""
    if peer is None:
        return ["–", "–", "–"]
    return [
        peer["backend"].removeprefix("peer:"),
        f"{peer['median_ms']:.2f}",
        f"{peer['median_ms'] / best['median_ms']:.2f}×",
    ]


def accuracy_table(result: dict[str, Any]) -> list[str]:
    """Accuracy of the reference model per resolution and backend (none measured: no lines)."""
    lines: list[str] = []
    if result["accuracy"]:
        names = list(dict.fromkeys(r["backend"] for r in result["accuracy"]))
        n_eval = result["accuracy"][0]["n_eval"]
        lines += [
            "",
            f"Accuracy (%) of {result['reference_model']} on the Fashion-MNIST test set "
            f"({n_eval} images) per backend; in brackets the drop vs eager fp32 in points.",
            "",
        ]
        # the first record of each (resolution, backend)
        by_key = {(r["resolution"], r["backend"]): r for r in reversed(result["accuracy"])}
        lines += markdown_table(
            ["res", *names],
            (
                [resolution]
                + [
                    f"{100 * by_key[resolution, n]['accuracy']:.2f} "
                    f"({by_key[resolution, n]['drop_points']:+.2f})"
                    for n in names
                ]
                for resolution in sorted({r["resolution"] for r in result["accuracy"]})
            ),
            "r" * (len(names) + 1),
        )
    return lines


def calibration_table(result: dict[str, Any]) -> list[str]:
    """Accuracy of static INT8 per calibration method (none measured: no lines)."""
    lines: list[str] = []
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
        ]
        lines += markdown_table(
            ["method", *(f"{r} px" for r in LADDER)],
            (
                [method]
                + [
                    f"{100 * r['accuracy']:.2f} "
                    f"({100 * (eager[r['resolution']] - r['accuracy']):+.2f})"
                    for r in calibration
                    if r["method"] == method
                ]
                for method in ("minmax", "entropy", "percentile")
            ),
            "l" + "r" * len(LADDER),
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    env, ceil = result["env"], result["ceilings_gflops"]
    per_threads = result.get("ceilings_by_threads") or {}
    ceilings_text = (
        "; ".join(
            f"{t} thread(s): fp32 {c['fp32']:.0f}, bf16 {c['bf16']:.0f} GFLOP/s"
            for t, c in per_threads.items()
        )
        or f"fp32 {ceil['fp32']:.0f} GFLOP/s, bf16 {ceil['bf16']:.0f} GFLOP/s"
    )
    versions = ", ".join(f"{k} {v}" for k, v in (result.get("versions") or {}).items())
    lines = [
        f"Measured {result['date']} on {env['cpu']} ({env['usable_cores']} cores; flags: "
        + ", ".join(k for k, v in env["cpu_flags"].items() if v)
        + f"), torch {env['torch']}, onnxruntime {result['onnxruntime']}"
        + (f", {versions}" if versions else "")
        + f". Matmul ceilings (2048² GEMM, best): {ceilings_text}. Mode: "
        f"{'quick smoke' if result['quick'] else 'full'}. Speed-ups were measured side by side "
        "in one run; *italic* rows are peers; 'vs best peer' is the best peer's median over "
        "this row's (above 1 = faster than every peer); (noisy) marks rows whose p90 is over "
        f"{NOISY_P90_RATIO}× their median (another job was running).",
        "",
        "Summary (the fastest vitres backend against the fastest peer overall, and against "
        "the fastest peer at the same precision -- INT8 against OpenVINO+NNCF and ONNX "
        "Runtime INT8 -- in each case):",
        "",
        *summary_table(result),
        "",
        "Every backend and peer:",
        "",
        *latency_table(result),
    ]
    parity = result.get("peer_parity") or {}
    if parity:
        lines += [
            "",
            "Peers compute the same function (max |logit difference| vs the vitres model): "
            + "; ".join(f"{k} {v:.1e}" for k, v in parity.items()),
        ]
    lines += accuracy_table(result)
    lines += claims_table(result)
    lines += [
        "",
        "Build times (s): "
        + "; ".join(
            f"{case}/{name} {info['build_time_s']:.1f}"
            for case, builds in result["builds"].items()
            for name, info in builds.items()
            if isinstance(info, dict) and "build_time_s" in info
        ),
    ]
    if any(result.get("recompiles", {}).values()):
        lines += [
            "",
            "Recompiles on shape changes (torch.compile): "
            + "; ".join(
                f"{case}/{name}: {count}"
                for case, counts in result["recompiles"].items()
                for name, count in counts.items()
            ),
        ]
    lines += calibration_table(result)
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
        f"({env['usable_cores']} cores; well above 0 means other jobs were running).",
    ]
    targets = result["targets"]
    if "cases" in targets:
        lines += ["", "Targets:", ""]
        lines += [f"* {line}" for line in targets["lines"]]
    else:  # results written before the peers existed
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


def thread_counts(spec: str) -> list[int]:
    """``"1,all"`` -> ``[1, <usable cores>]`` (duplicates dropped)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = [int(cores or 1) if part.strip() == "all" else int(part) for part in spec.split(",")]
    if any(c <= 0 for c in counts):
        raise ValueError(f"thread counts must be positive, got {spec!r}")
    return list(dict.fromkeys(counts))


def run_case(
    case: str,
    names: list[str],
    threads_list: list[int],
    args: argparse.Namespace,
    cache_dir: Path,
    ceilings_by_threads: dict[int, dict[str, float]],
    rounds: int,
) -> dict[str, Any]:
    """Builds and times every backend and peer of one case, per thread count."""
    from vitres.backends.onnx_backend import exported_graph

    model, model_name, _ = case_model(case)
    resolutions, batches = case_plan(case)
    native = int(model.config.img_size[0])
    chans = model.config.in_chans
    calib = [(r, r) for r in resolutions]
    twin = hf_twin(model) if args.peers else None  # loads the HF weights into `model`
    case_names = names
    if case == "fmnist" and not args.compile_fmnist:
        case_names = [n for n in names if not n.startswith("compile")]
    out: dict[str, Any] = {"latency": [], "builds": {}, "recompiles": {}, "peer_parity": {}}
    out["model_name"] = model_name
    peer_file = None  # the file `vitres export` writes, once the backends exported it
    peer_int8_file: Path | bool | None = None  # ONNX Runtime's own INT8 of it (False: failed)
    calib_images = 256 if case == "fmnist" else 16
    for threads in threads_list:
        torch.set_num_threads(threads)
        print(f"{case}, {threads} thread(s): building backends", flush=True)
        backends, builds = build_backends(
            model,
            case_names,
            (1, chans, native, native),
            cache_dir,
            calib,
            calib_images,
            threads,
        )
        out["builds"][f"{case}/t{threads}"] = builds
        facts: dict[str, dict[str, Any]] = {
            n: {"kind": "vitres", "precision": type(b).precision, **builds[n]}
            for n, b in backends.items()
        }
        if args.peers and peer_file is None:
            exported = backends.get("onnxruntime")
            peer_file = (
                exported.onnx_path
                if exported is not None
                else exported_graph(model, (native, native), cache_dir)[0]
            )
        ort_peer = onnxruntime_on_file(peer_file, threads) if peer_file is not None else None
        if args.peers and peer_int8_file is None:
            peer_int8_file = int8_peer_file(peer_file, model, calib, calib_images, out)
        ort_int8_peer = (
            None
            if not isinstance(peer_int8_file, Path)
            else {**onnxruntime_on_file(peer_int8_file, threads), "precision": "int8"}
        )
        for batch in batches:
            for resolution in resolutions:
                shape = (batch, chans, resolution, resolution)
                x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
                runs: dict[str, Callable[[torch.Tensor], Any]] = {
                    n: b.run for n, b in backends.items()
                }
                if args.peers:
                    peers = openvino_direct(model, shape, threads)
                    peers["peer:onnxruntime"] = {
                        **ort_peer,
                        "max_abs_diff": max_abs_diff(ort_peer["run"], model, x),
                    }
                    if ort_int8_peer is not None:
                        peers["peer:onnxruntime-int8"] = {
                            **ort_int8_peer,
                            "max_abs_diff": max_abs_diff(ort_int8_peer["run"], model, x),
                        }
                    peers.update(
                        openvino_int8_peer(model, shape, threads, calib_images // len(calib), out)
                    )
                    if twin is not None:
                        peers.update(huggingface_sdpa(twin[0], model, shape))
                    for name, peer in peers.items():
                        runs[name] = peer["run"]
                        facts[name] = {
                            "kind": "peer",
                            **{k: v for k, v in peer.items() if k != "run"},
                        }
                        if "max_abs_diff" in peer:
                            key = f"{case} {resolution}px b{batch} {name}"
                            out["peer_parity"][key] = peer["max_abs_diff"]
                heavy = case != "fmnist"
                calls = args.calls or ((3 if batch == 1 else 1) if heavy else 10)
                samples = interleaved_latency(runs, x, rounds=rounds, calls=calls)
                for name, backend in backends.items():
                    if hasattr(backend, "recompiles"):
                        facts[name]["compiles"] = backend.compiles
                rows = summarise(
                    case,
                    model,
                    resolution,
                    batch,
                    threads,
                    samples,
                    ceilings_by_threads[threads],
                    facts,
                )
                out["latency"] += rows
                print(
                    f"  {case} {resolution}px b{batch} t{threads}: "
                    + ", ".join(
                        f"{r['backend']} {r['median_ms']:.1f} ms ({r['speedup_vs_eager']:.2f}×)"
                        for r in rows
                    ),
                    flush=True,
                )
        out["recompiles"][f"{case}/t{threads}"] = {
            n: b.recompiles for n, b in backends.items() if hasattr(b, "recompiles")
        }
        if case == "fmnist" and threads == threads_list[0]:
            onnx_backend = backends.get("onnxruntime")
            if onnx_backend is not None:  # one fp32 graph, checked at every ladder resolution
                report = check_parity(
                    model, onnx_backend.onnx_path, [(r, r) for r in LADDER] + [(20, 56)]
                )
                builds["onnxruntime"]["ladder_parity"] = report.max_abs_diff
            out["accuracy"] = accuracy(backends, model, args.eval_limit_resolved)
            if onnx_backend is not None and not args.quick:
                out["calibration_methods"] = calibration_methods(
                    model, onnx_backend.onnx_path, args.eval_limit_resolved
                )
        del backends
    return out


def int8_peer_file(
    path: Path,
    model: torch.nn.Module,
    calib: list[tuple[int, int]],
    images: int,
    out: dict[str, Any],
) -> Path | bool:
    """ONNX Runtime's static INT8 of the exported ``path``, calibrated on the images vitres's
    INT8 backends see; ``False`` (and the reason in ``out["peer_failures"]``) if its
    quantiser cannot read the file."""
    from vitres.export.quantize import calibration_batches

    try:
        batches = calibration_batches(model, resolutions=calib, num_images=images)
        int8_path, seconds = onnxruntime_int8_file(path, batches)
    except Exception as exc:  # noqa: BLE001 - a peer that cannot build is reported, not fatal
        out.setdefault("peer_failures", {})["peer:onnxruntime-int8"] = (
            f"{type(exc).__name__}: {exc}"
        )
        print(f"  peer:onnxruntime-int8 could not be built: {exc}", flush=True)
        return False
    out.setdefault("peer_builds", {})["peer:onnxruntime-int8"] = round(seconds, 3)
    return int8_path


def openvino_int8_peer(
    model: torch.nn.Module, shape: tuple[int, ...], threads: int, images: int, out: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The OpenVINO + NNCF INT8 peer at ``shape``, calibrated on ``images`` train images at its
    resolution (what vitres's INT8 backends see there); ``{}`` if it cannot be built."""
    from vitres.export.quantize import calibration_batches

    resolution = (shape[2], shape[3])
    try:
        batches = calibration_batches(
            model, resolutions=[resolution], num_images=max(images, shape[0]), batch_size=shape[0]
        )
        return openvino_int8(model, shape, threads, batches)
    except Exception as exc:  # noqa: BLE001 - a peer that cannot build is reported, not fatal
        out.setdefault("peer_failures", {})["peer:openvino-int8"] = f"{type(exc).__name__}: {exc}"
        print(f"  peer:openvino-int8 could not be built: {exc}", flush=True)
        return {}


def best_vitres_row(rows: list[dict[str, Any]], batch: int, threads: int) -> dict[str, Any] | None:
    candidates = [
        r
        for r in rows
        if r.get("kind") == "vitres" and r["batch"] == batch and r["threads"] == threads
    ]
    return min(candidates, key=lambda r: r["median_ms"], default=None)


def claims_and_targets(
    latency: list[dict[str, Any]],
    accuracy_rows: list[dict[str, Any]],
    memory: dict[str, dict[str, float]],
    amx: bool,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The seeds' claims table and the issue's targets, from the measured rows."""
    claims, lines, cases = [], [], {}
    for case in dict.fromkeys(r["case"] for r in latency):
        rows = [r for r in latency if r["case"] == case]
        top_threads = max(r["threads"] for r in rows)
        resolution = max(r["resolution"] for r in rows if r["case"] == case)
        batches = sorted({r["batch"] for r in rows})
        at = [r for r in rows if r["resolution"] == resolution]
        facts: dict[str, Any] = {}
        for batch in batches:
            best = best_vitres_row(at, batch, top_threads)
            if best is None:
                continue
            peers = [
                r
                for r in at
                if r.get("kind") == "peer" and r["batch"] == batch and r["threads"] == top_threads
            ]
            best_peer = min(peers, key=lambda r: r["median_ms"], default=None)
            facts[batch] = {
                "best": best["backend"],
                "speedup": best["speedup_vs_eager"],
                "vs_peer": best.get("ratio_to_best_peer"),
                "vs_same_precision_peer": best.get("ratio_to_best_peer_same_precision"),
                "best_peer": None if best_peer is None else best_peer["backend"],
                "bf16_ceiling": best["frac_bf16_ceiling"],
                "throughput": best["throughput_ips"],
            }
        cases[case] = facts
        label = f"{case} {resolution}px, {top_threads} thread(s)"
        speed = "; ".join(
            f"b{b}: {f['speedup']:.2f}× ({f['best']})" for b, f in sorted(facts.items())
        )
        claims.append({"claim": SEED_CLAIMS[0][1], "case": label, "measured": speed or "–"})
        mem = memory.get(case)
        if mem:

            def change(mb: float, mem: dict = mem) -> str:
                saved = 1 - mb / mem["eager_mb"] if mem["eager_mb"] else float("nan")
                return f"{100 * saved:.0f} % less" if saved >= 0 else f"{-100 * saved:.0f} % more"

            deployed = mem.get("deployed_mb")
            text = (
                f"peak RSS over a fresh process: eager fp32 (PyTorch, model and one batch) "
                f"{mem['eager_mb']:.0f} MiB; fastest path {mem['best']}: building and running "
                f"in one process {mem['best_mb']:.0f} MiB ({change(mem['best_mb'])})"
            )
            if deployed is not None:
                text += (
                    f", its deployed file run by its runtime alone {deployed:.0f} MiB "
                    f"({change(deployed)})"
                )
            claims.append(
                {
                    "claim": SEED_CLAIMS[1][1],
                    "case": f"{label}, batch {mem['batch']}",
                    "measured": text,
                }
            )
        eager_b1 = next(
            (
                r
                for r in at
                if r["backend"] == "eager"
                and r["batch"] == batches[0]
                and r["threads"] == top_threads
            ),
            None,
        )
        if facts and eager_b1 is not None:
            batch, fact = max(facts.items(), key=lambda item: item[1]["throughput"])
            eager_same = next(
                r
                for r in at
                if r["backend"] == "eager" and r["batch"] == batch and r["threads"] == top_threads
            )
            claims.append(
                {
                    "claim": SEED_CLAIMS[2][1],
                    "case": label,
                    "measured": f"{fact['best']} at batch {batch}: {fact['throughput']:.1f} img/s "
                    f"= {fact['throughput'] / eager_b1['throughput_ips']:.2f}× eager fp32 at batch "
                    f"{batches[0]}, {fact['throughput'] / eager_same['throughput_ips']:.2f}× at "
                    f"batch {batch}",
                }
            )
        for batch, fact in sorted(facts.items()):
            if fact["vs_peer"] is not None:
                lines.append(
                    f"{label} b{batch}: best vitres `{fact['best']}` is {fact['vs_peer']:.2f}× the "
                    f"best peer `{fact['best_peer']}` (target ≥ 1.1×: "
                    f"{'met' if fact['vs_peer'] >= 1.1 else 'missed'})"
                    + (
                        ""
                        if fact.get("vs_same_precision_peer") is None
                        else f"; {fact['vs_same_precision_peer']:.2f}× the best peer at its "
                        "own precision"
                    )
                )
            if case.startswith("vit_") and batch in (1, 8):
                goal = 4.0 if batch == 8 else 2.5
                verdict = "met" if fact["speedup"] >= goal else "missed"
                scope = "" if amx else "; set for CPUs with AMX, which this one lacks"
                lines.append(
                    f"{label} b{batch}: {fact['speedup']:.2f}× over eager fp32 (target ≥ "
                    f"{goal:g}×{scope}: {verdict}); "
                    f"{100 * fact['bf16_ceiling']:.0f} % of the bf16 GEMM ceiling"
                    + (" (target ≥ 50 % at batch 8)" if batch == 8 else "")
                )
    if accuracy_rows:
        worst = max(accuracy_rows, key=lambda r: r["drop_points"])
        lines.append(
            f"worst accuracy drop on the reference ladder: {worst['drop_points']:.2f} points "
            f"({worst['backend']} at {worst['resolution']} px; target ≤ 0.5: "
            f"{'met' if worst['drop_points'] <= 0.5 else 'missed'})"
        )
    return claims, {"cases": cases, "lines": lines}


def remeasure_memory(path: Path) -> int:
    """``--memory-only``: the memory facts of ``path`` measured again, claims rewritten."""
    result = json.loads(path.read_text())
    top = max(result["threads"])
    with tempfile.TemporaryDirectory(prefix="vitres-bench-") as cache:
        for case, old in result["memory"].items():
            resolution = max(case_plan(case)[0])
            result["memory"][case] = measure_memory(
                case, old["best"], old["batch"], resolution, top, Path(cache)
            )
    amx = bool(result["env"]["cpu_flags"].get("amx_bf16"))
    result["claims"], result["targets"] = claims_and_targets(
        result["latency"], result["accuracy"], result["memory"], amx
    )
    write_json(path, result, default=str)
    table = markdown(result)
    write_markdown(path.with_suffix(".md"), table)
    if path.with_suffix("").resolve() == DEFAULT_OUT.resolve():
        update_doc(table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: one tiny case ({QUICK_CASE}, batch 1), 1 thread, 2 rounds of 2 calls, "
        "no compile; proves every backend and peer works, times nothing worth reading",
    )
    parser.add_argument("--threads", default="1,all", help="thread counts, e.g. 1,all (default)")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated cases (default {','.join(CASES)})",
    )
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per config")
    parser.add_argument("--calls", type=int, default=None, help="calls per backend per round")
    parser.add_argument(
        "--eval-limit", type=int, default=None, help="test images (default 2000; quick 200)"
    )
    parser.add_argument("--backends", default=None, help="comma-separated subset")
    parser.add_argument(
        "--no-peers", dest="peers", action="store_false", help="vitres backends only"
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory claims"
    )
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
    parser.add_argument(
        "--memory-only",
        default=None,
        help="only remeasure the peak-memory claims of this results JSON (same cases, same "
        "fastest paths) and rewrite it; memory is not a timing, so this needs no quiet machine",
    )
    args = parser.parse_args(argv)
    if args.memory_only:
        return remeasure_memory(Path(args.memory_only))
    if args.render:
        table = markdown(json.loads(Path(args.render).read_text()))
        write_markdown(Path(args.render).with_suffix(".md"), table)
        if Path(args.render).with_suffix("").resolve() == DEFAULT_OUT.resolve():
            update_doc(table)
        print(table)
        return 0

    import onnxruntime
    import openvino
    import transformers

    names = args.backends.split(",") if args.backends else list(ALL_BACKENDS)
    names = ["eager"] + [n for n in names if n != "eager"]  # the baseline of every speed-up
    cases = [c for c in args.cases.split(",") if c]
    threads_list = thread_counts(args.threads)
    if args.quick:
        cases, threads_list = [QUICK_CASE], threads_list[:1]
        args.calls = args.calls or 2
        if not args.backends:
            names = [n for n in names if not n.startswith("compile")]
    rounds = args.rounds or (2 if args.quick else 8)
    args.eval_limit_resolved = args.eval_limit or (200 if args.quick else 2000)
    temporary = tempfile.TemporaryDirectory(prefix="vitres-bench-") if not args.cache_dir else None
    cache_dir = Path(args.cache_dir or temporary.name)
    start = time.time()
    load_start = list(os.getloadavg())
    ceilings_start = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        ceilings_start[threads] = ceilings()
    print(f"matmul ceilings by threads: {ceilings_start}", flush=True)

    latency, builds, recompiles, accuracy_rows, calibration_rows = [], {}, {}, [], []
    peer_parity: dict[str, float] = {}
    memory: dict[str, dict[str, Any]] = {}
    reference_name = None
    for case in cases:
        out = run_case(case, names, threads_list, args, cache_dir, ceilings_start, rounds)
        latency += out["latency"]
        builds.update(out["builds"])
        recompiles.update(out["recompiles"])
        peer_parity.update(out["peer_parity"])
        if "accuracy" in out:
            accuracy_rows, reference_name = out["accuracy"], out["model_name"]
        calibration_rows = out.get("calibration_methods", calibration_rows)
        if args.memory and case != "fmnist":
            top = max(threads_list)
            batch = max(case_plan(case)[1])
            resolution = max(case_plan(case)[0])
            rows = [r for r in out["latency"] if r["resolution"] == resolution]
            best = best_vitres_row(rows, batch, top)
            if best is not None:
                memory[case] = measure_memory(
                    case, best["backend"], batch, resolution, top, cache_dir
                )
    bf16 = None
    if not args.quick and "vit_small_patch16" in cases:
        print("bf16 investigation (ViT-S/16, 224, batch 8)", flush=True)
        torch.set_num_threads(max(threads_list))
        bf16 = bf16_investigation(case_model("vit_small_patch16")[0], 8, rounds)
        print(f"  {bf16}", flush=True)
    ceilings_by_threads = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        end = ceilings()
        ceilings_by_threads[threads] = {k: max(ceilings_start[threads][k], end[k]) for k in end}
    for row in latency:  # recompute the ceiling shares with the best ceiling seen
        ceiling = ceilings_by_threads[row["threads"]]
        row["frac_fp32_ceiling"] = round(row["gflops"] / ceiling["fp32"], 3)
        row["frac_bf16_ceiling"] = round(row["gflops"] / ceiling["bf16"], 3)
    env = env_fingerprint(max(threads_list))
    amx = bool(env["cpu_flags"].get("amx_bf16"))
    claims, targets = claims_and_targets(latency, accuracy_rows, memory, amx)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "quick": args.quick,
        "runtime_s": round(time.time() - start, 1),
        "env": env,
        "onnxruntime": onnxruntime.__version__,
        "versions": {"openvino": openvino.__version__, "transformers": transformers.__version__},
        "threads": threads_list,
        "ceilings_gflops": {
            k: round(v, 1) for k, v in ceilings_by_threads[max(threads_list)].items()
        },
        "ceilings_by_threads": {
            str(t): {k: round(v, 1) for k, v in c.items()} for t, c in ceilings_by_threads.items()
        },
        "reference_model": reference_name,
        "rounds": rounds,
        "latency": latency,
        "accuracy": accuracy_rows,
        "builds": builds,
        "recompiles": recompiles,
        "peer_parity": peer_parity,
        "memory": memory,
        "claims": claims,
        "targets": targets,
        "bf16_investigation": bf16,
        "calibration_methods": calibration_rows,
        "load_average_start_end": [load_start, list(os.getloadavg())],
    }
    out_path = Path(args.out)
    write_json(out_path.with_suffix(".json"), result, default=str)
    table = markdown(result)
    write_markdown(out_path.with_suffix(".md"), table)
    if out_path.resolve() == DEFAULT_OUT.resolve() and not args.quick:
        update_doc(table)  # only canonical full results go in the docs
    print(table)
    print(
        f"wrote {out_path.with_suffix('.json')} and {out_path.with_suffix('.md')} in "
        f"{result['runtime_s']:.0f} s"
    )
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU backends against eager fp32 (issue 12): TensorRT FP16 / INT8, eager and compiled
half precision, for ViT-B/16 at 224 and 384, batch 1 and 32, with peak device memory.

One short script for a lent GPU machine (it fits a 10-minute run on one H100/H200):
every backend of a case is built first (build time recorded apart), then timed in
interleaved rounds -- each round times every backend in turn, the first one rotating --
so the speed-ups compare runs that shared the same GPU state. Each call is synchronised
(``torch.cuda.synchronize``) before its clock stops, and its input already lives on the
GPU, so the figures are the model's latency, not PCIe copies.

Per backend and case it records: median / p90 ms, speed-up over eager fp32, images/s,
build time, the largest logit difference to eager fp32 and top-1 agreement on the same
inputs (random weights, so a top-1 agreement is the accuracy proxy here), and peak
device memory. Peak memory is read two ways: PyTorch's allocator peak
(``torch.cuda.max_memory_allocated``, which does not see TensorRT's own allocations) and
the device's used memory (``torch.cuda.mem_get_info``) before the build and after it and
one call, which does; both over what the backends built before it hold.

Eager fp32 runs with TF32 off (true fp32, the baseline the issue names); a row
``eager-tf32`` shows what turning TF32 on gives. A backend that cannot run here (no
``tensorrt`` package, say) is listed with the reason instead of a time.

Usage::

    python benchmarks/gpu_backends.py                      # on the GPU machine (~5-8 min)
    python benchmarks/gpu_backends.py --out $OUT/gpu       # results where they come back
    python benchmarks/gpu_backends.py --smoke --device cpu # proves the script runs, on a CPU

Writes ``benchmarks/results/gpu_backends.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vitres  # noqa: E402
from vitres.backends import backend_class, get_backend  # noqa: E402
from vitres.measure import interleaved_latency  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_backends"
MODEL = "vit_base_patch16"
RESOLUTIONS = (224, 384)
BATCHES = (1, 32)
BACKENDS = (
    "eager",
    "eager-tf32",
    "eager-fp16",
    "eager-bf16",
    "compile-bf16",
    "tensorrt",
    "tensorrt-int8",
)
SMOKE = {
    "model": "vit_tiny_patch16",
    "resolutions": (32,),
    "batches": (1, 2),
    "backends": ("eager", "eager-bf16", "eager-fp16", "tensorrt"),
}
TARGET_SPEEDUP = 3.0


class _Half:
    """Eager fp16: the model cast to float16, float32 logits (no registered backend: on
    CPUs fp16 is slow and unsafe, so the sweep does not offer it)."""

    precision = "fp16"

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def prepare(self, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
        start = time.perf_counter()
        self.model = model.eval().to(device=self.device, dtype=torch.float16)
        self.build_time_s = time.perf_counter() - start

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.to(device=self.device, dtype=torch.float16)).float()


def make_backend(name: str, device: str) -> tuple[Any | None, str]:
    """``(backend, "")`` or ``(None, why it cannot run here)``."""
    if name == "eager-fp16":
        return _Half(device), ""
    registered = "eager" if name == "eager-tf32" else name
    usable, reason = backend_class(registered).availability()
    if not usable:
        return None, reason
    devices = getattr(backend_class(registered), "devices", ("cpu", "cuda"))
    if torch.device(device).type not in devices:
        return None, f"{registered} runs on {', '.join(devices)}, not {device}"
    return get_backend(registered, device=device), ""


def synced(
    backend: Any, device: torch.device, tf32: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """One call of the backend, finished on the device; TF32 set for this call only (the
    rounds interleave backends, so a global setting would leak between them)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        out = backend.run(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def device_used_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20


def run_case(
    model_name: str,
    resolution: int,
    batch: int,
    names: tuple[str, ...],
    device: torch.device,
    rounds: int,
    calls: int,
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    reference = vitres.create_model(model_name, img_size=resolution).eval()
    state = reference.state_dict()
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.inference_mode():
        torch.backends.cuda.matmul.allow_tf32 = False
        expected = reference.to(device)(x).float()
    reference.to("cpu")
    rows, runs, built = [], {}, {}
    for name in names:
        row: dict[str, Any] = {
            "model": model_name,
            "resolution": resolution,
            "batch": batch,
            "backend": name,
        }
        backend, reason = make_backend(name, str(device))
        if backend is None:
            rows.append({**row, "skipped": reason})
            continue
        model = vitres.create_model(model_name, img_size=resolution).eval()
        model.load_state_dict(state)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = name == "eager-tf32"
            torch.backends.cudnn.allow_tf32 = name == "eager-tf32"
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        before = device_used_mb(device)
        try:
            backend.prepare(model, tuple(x.shape))
            out = backend.run(x).float()
        except Exception as error:  # a backend that fails here is reported, not fatal
            rows.append({**row, "skipped": f"{type(error).__name__}: {error}"})
            continue
        used = device_used_mb(device)
        agree = (out.argmax(-1) == expected.argmax(-1)).float().mean().item()
        row.update(
            precision=getattr(backend, "precision", "fp32"),
            build_s=round(float(backend.build_time_s or 0.0), 2),
            max_abs_diff=float((out - expected).abs().max()),
            top1_agreement=agree,
            torch_peak_mb=(
                (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
                if device.type == "cuda"
                else None
            ),
            device_delta_mb=None if before is None else used - before,
        )
        runs[name], built[name] = synced(backend, device, tf32=name == "eager-tf32"), row
        rows.append(row)
    times = interleaved_latency(runs, x, rounds=rounds, calls=calls, warmup_calls=5)
    for name, seconds in times.items():
        ms = sorted(1000.0 * s for s in seconds)
        built[name].update(
            median_ms=statistics.median(ms),
            p90_ms=ms[int(0.9 * (len(ms) - 1))],
            images_per_s=1000.0 * batch / statistics.median(ms),
        )
    if "eager" in built and "median_ms" in built["eager"]:
        for row in built.values():
            row["speedup_vs_eager_fp32"] = built["eager"]["median_ms"] / row["median_ms"]
    del runs, built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        "# GPU backends vs eager fp32",
        "",
        f"`{result['command']}` -- {env['gpu']}, torch {env['torch']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}; {result['rounds']} interleaved rounds "
        f"of {result['calls']} calls. Target: TensorRT >= {TARGET_SPEEDUP:g}x eager fp32.",
        "",
        "| model | res | batch | backend | median ms | p90 ms | speed-up vs eager fp32 | "
        "images/s | build s | max abs diff | top-1 agree | torch peak MiB | device delta MiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for r in result["rows"]:
        head = f"| {r['model']} | {r['resolution']} | {r['batch']} | {r['backend']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} |||||||||")
            continue
        lines.append(
            f"{head} {f(r.get('median_ms'), '.3f')} | {f(r.get('p90_ms'), '.3f')} | "
            f"{f(r.get('speedup_vs_eager_fp32'), '.2f')}× | {f(r.get('images_per_s'), '.0f')} | "
            f"{r['build_s']:.1f} | {r['max_abs_diff']:.2e} | {r['top1_agreement']:.3f} | "
            f"{f(r['torch_peak_mb'], '.0f')} | {f(r['device_delta_mb'], '.0f')} |"
        )
    lines += ["", *result["verdicts"], ""]
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for name in ("tensorrt", "tensorrt-int8"):
        timed = [r for r in rows if r["backend"] == name and "speedup_vs_eager_fp32" in r]
        skipped = [r for r in rows if r["backend"] == name and "skipped" in r]
        if not timed:
            why = skipped[0]["skipped"] if skipped else "not run"
            out.append(f"- {name}: not measured ({why}).")
            continue
        worst = min(timed, key=lambda r: r["speedup_vs_eager_fp32"])
        mark = "MET" if worst["speedup_vs_eager_fp32"] >= TARGET_SPEEDUP else "MISSED"
        out.append(
            f"- [{mark}] {name}: worst speed-up {worst['speedup_vs_eager_fp32']:.2f}× "
            f"({worst['resolution']} px, batch {worst['batch']}; target >= {TARGET_SPEEDUP:g}×)."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu with --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 rounds: checks it runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--calls", type=int, default=None, help="calls per round (default 20)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here (torch.cuda.is_available() is False). Run this on a GPU "
            "machine, or check the script on a CPU with: --smoke --device cpu",
            file=sys.stderr,
        )
        return 2
    if device.type == "cpu" and not args.smoke:
        print(
            "error: --device cpu is only for --smoke (a check that the script runs)",
            file=sys.stderr,
        )
        return 2
    model = SMOKE["model"] if args.smoke else MODEL
    resolutions = SMOKE["resolutions"] if args.smoke else RESOLUTIONS
    batches = SMOKE["batches"] if args.smoke else BATCHES
    names = SMOKE["backends"] if args.smoke else BACKENDS
    rounds = args.rounds or (2 if args.smoke else 5)
    calls = args.calls or (2 if args.smoke else 20)
    start = time.time()
    rows = []
    for resolution in resolutions:
        for batch in batches:
            print(f"{model} {resolution} px batch {batch} ...", flush=True)
            rows += run_case(model, resolution, batch, names, device, rounds, calls)
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    result = {
        "command": "python benchmarks/gpu_backends.py" + (" --smoke" if args.smoke else ""),
        "rounds": rounds,
        "calls": calls,
        "wall_s": round(time.time() - start, 1),
        "env": {
            "gpu": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else "CPU " + platform.processor(),
            "torch": torch.__version__,
            "tensorrt": trt_version,
        },
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

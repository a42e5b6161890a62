"""GPU backends against eager fp32 (issue 12): TensorRT FP16 / INT8, eager and compiled
half precision, for ViT-B/16 at 224 and 384, batch 1 and 32, with device memory.

A script for a lent GPU machine, prepared here and not yet run on one. Every backend of
a case is built first (build time recorded apart), then timed in interleaved rounds --
each round times every backend in turn, the first one rotating -- so the speed-ups
compare runs that shared the same GPU state. Each call is synchronised
(``torch.cuda.synchronize``) before its clock stops, and its input already lives on the
GPU, so the figures are the model's latency, not PCIe copies. Results are rewritten after
every case, so a run stopped at its time limit keeps the cases it finished; ``--backends``,
``--resolutions`` and ``--batches`` split a run that does not fit one call. TensorRT
engines are built for exactly the measured shape (the shortest build).

Per backend and case it records: median / p90 ms, speed-up over eager fp32, images/s,
build time, the largest logit difference and the relative error of the logits against
eager fp32, and top-1 agreement on the same inputs (random weights leave small margins,
so agreement is a weak proxy; the relative error is the better one). Memory is read two
ways: PyTorch's allocator peak over what was allocated before the build
(``torch.cuda.max_memory_allocated``, which does not see TensorRT's own allocations), and
the device memory held after the build and one call (``torch.cuda.mem_get_info``), which
does but is no peak (a build's transient workspace is not in it).

Eager fp32 runs with TF32 off (true fp32, the baseline the issue names); a row
``eager-tf32`` shows what turning TF32 on gives. A backend that cannot be made, built or
timed (no ``tensorrt`` package, say) is listed with the reason instead of a time.

Usage::

    python benchmarks/gpu_backends.py                      # on the GPU machine
    python benchmarks/gpu_backends.py --out $OUT/gpu       # results where they come back
    python benchmarks/gpu_backends.py --backends tensorrt,tensorrt-int8 --resolutions 384
    python benchmarks/gpu_backends.py --smoke --device cpu # proves the script runs, on a CPU

Writes ``benchmarks/results/gpu_backends.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import vitres
from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_markdown
from vitres.backends import backend_class, get_backend
from vitres.backends.eager import EagerBackend
from vitres.measure import interleaved_latency

DEFAULT_OUT = RESULTS_DIR / "gpu_backends"
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


class _EagerFP16(EagerBackend):
    """Eager fp16: the model cast to float16, float32 logits. Not registered: on CPUs fp16
    is slow and overflows easily, so the sweep does not offer it."""

    precision = "fp16"
    dtype = torch.float16


def make_backend(name: str, device: str, resolution: int, batch: int) -> tuple[Any | None, str]:
    """``(backend, "")`` or ``(None, why it cannot run here)``. TensorRT engines get a
    profile of exactly the measured shape: its build is shortest, and the memory it
    holds is for that shape, not for the default profile's batch 64 at twice the size."""
    if name == "eager-fp16":
        return _EagerFP16(device), ""
    registered = "eager" if name == "eager-tf32" else name
    try:
        usable, reason = backend_class(registered).availability()
        if not usable:
            return None, reason
        devices = getattr(backend_class(registered), "devices", ("cpu", "cuda"))
        if torch.device(device).type not in devices:
            return None, f"{registered} runs on {', '.join(devices)}, not {device}"
        kwargs: dict[str, Any] = {}
        if registered.startswith("tensorrt"):
            size = (resolution, resolution)
            kwargs = {"min_size": size, "max_size": size, "max_batch": batch}
        return get_backend(registered, device=device, **kwargs), ""
    except Exception as error:  # a backend that cannot be made is reported, not fatal
        return None, f"{type(error).__name__}: {error}"


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
    torch._dynamo.reset()  # every case compiles afresh (static shapes, no cached weights)
    reference = vitres.create_model(model_name, img_size=resolution).eval()
    state = reference.state_dict()
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.inference_mode():
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        torch.backends.cudnn.allow_tf32 = False
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
        backend, reason = make_backend(name, str(device), resolution, batch)
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
        # random weights leave small logit margins, so top-1 flips easily: the relative
        # error of the logits says more about how close a precision computes
        relative = float((out - expected).norm() / expected.norm().clamp_min(1e-12))
        row.update(
            precision=getattr(backend, "precision", "fp32"),
            build_s=round(float(backend.build_time_s or 0.0), 2),
            max_abs_diff=float((out - expected).abs().max()),
            relative_error=relative,
            top1_agreement=agree,
            torch_peak_mb=(
                (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
                if device.type == "cuda"
                else None
            ),
            device_held_mb=None if before is None else used - before,
        )
        runs[name], built[name] = synced(backend, device, tf32=name == "eager-tf32"), row
        rows.append(row)
    times: dict[str, list[float]] = {}
    if runs:
        try:
            times = interleaved_latency(runs, x, rounds=rounds, calls=calls, warmup_calls=5)
        except Exception as error:  # a backend failing while timed loses the case only
            for row in built.values():
                row["skipped"] = f"timing failed: {type(error).__name__}: {error}"
    for name, seconds in times.items():
        ms = sorted(1000.0 * s for s in seconds)
        median = statistics.median(ms)
        built[name].update(
            median_ms=median,
            p90_ms=ms[int(0.9 * (len(ms) - 1))],
            images_per_s=1000.0 * batch / median,
        )
    if "eager" in built and "median_ms" in built["eager"]:
        for row in built.values():
            if "median_ms" in row:
                row["speedup_vs_eager_fp32"] = built["eager"]["median_ms"] / row["median_ms"]
    del runs, built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


HEADER = (
    "model",
    "res",
    "batch",
    "backend",
    "median ms",
    "p90 ms",
    "speed-up vs eager fp32",
    "images/s",
    "build s",
    "max abs diff",
    "rel. error",
    "top-1 agree",
    "torch peak MiB",
    "device held MiB",
)


def _row_cells(r: dict[str, Any]) -> list[str]:
    """One row of the results table (a skipped case: its reason, one line, no ``|``)."""

    def f(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    head = [r["model"], str(r["resolution"]), str(r["batch"]), r["backend"]]
    if "skipped" in r:
        reason = " ".join(str(r["skipped"]).split()).replace("|", "/")
        return head + [f"skipped: {reason}"] + [""] * (len(HEADER) - len(head) - 1)
    return head + [
        f(r.get("median_ms"), ".3f"),
        f(r.get("p90_ms"), ".3f"),
        f"{f(r.get('speedup_vs_eager_fp32'), '.2f')}×",
        f(r.get("images_per_s"), ".0f"),
        f"{r['build_s']:.1f}",
        f"{r['max_abs_diff']:.2e}",
        f"{r['relative_error']:.2e}",
        f"{r['top1_agreement']:.3f}",
        f(r["torch_peak_mb"], ".0f"),
        f(r["device_held_mb"], ".0f"),
    ]


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        "# GPU backends vs eager fp32",
        "",
        f"`{result['command']}` -- {env['gpu']}, torch {env['torch']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}; {result['rounds']} interleaved rounds "
        f"of {result['calls']} calls. Target: TensorRT >= {TARGET_SPEEDUP:g}x eager fp32.",
        "",
        *markdown_table(HEADER, map(_row_cells, result["rows"]), "lrrlrrrrrrrrrr"),
        "",
        *result["verdicts"],
        "",
    ]
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


def write_results(
    out: Path,
    command: str,
    rows: list[dict[str, Any]],
    rounds: int,
    calls: int,
    device: torch.device,
    start: float,
) -> str:
    """Writes ``out.json`` and ``out.md`` for the rows so far; returns the table."""
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {
        "command": command,
        "rounds": rounds,
        "calls": calls,
        "wall_s": round(time.time() - start, 1),
        "env": environment(gpu=gpu, host=platform.processor(), tensorrt=trt_version),
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    write_json(out.with_suffix(".json"), result, indent=1, newline=False)
    table = markdown(result)
    write_markdown(out.with_suffix(".md"), table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu with --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 rounds: checks it runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--calls", type=int, default=None, help="calls per round (default 20)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix")
    parser.add_argument("--resolutions", default=None, help="e.g. 224 (default 224,384)")
    parser.add_argument("--batches", default=None, help="e.g. 1,32 (default)")
    parser.add_argument("--backends", default=None, help=f"subset of {','.join(BACKENDS)}")
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
    if args.resolutions:
        resolutions = tuple(int(v) for v in args.resolutions.split(","))
    if args.batches:
        batches = tuple(int(v) for v in args.batches.split(","))
    if args.backends:
        unknown = sorted(set(args.backends.split(",")) - set(BACKENDS))
        if unknown:
            print(
                f"error: unknown backends {unknown}; choose from {', '.join(BACKENDS)}",
                file=sys.stderr,
            )
            return 2
        names = tuple(["eager"] + [n for n in args.backends.split(",") if n != "eager"])
    rounds = args.rounds or (2 if args.smoke else 5)
    calls = args.calls or (2 if args.smoke else 20)
    start = time.time()
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_backends.py" + (" --smoke" if args.smoke else "")
    for resolution in resolutions:
        for batch in batches:
            print(f"{model} {resolution} px batch {batch} ...", flush=True)
            rows += run_case(model, resolution, batch, names, device, rounds, calls)
            # written after every case: a run stopped at its time limit keeps what it did
            table = write_results(out, command, rows, rounds, calls, device, start)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

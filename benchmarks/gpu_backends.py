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
from benchmarks.gpu_peers import GPU_PEERS, make_peers
from vitres.backends import backend_class, get_backend
from vitres.backends.eager import EagerBackend
from vitres.measure import analytic_flops, interleaved_latency

DEFAULT_OUT = RESULTS_DIR / "gpu_backends"
# (model, resolution, batch): the cases
CASES = (
    ("vit_base_patch16", 224, 1),
    ("vit_base_patch16", 224, 64),
    ("vit_base_patch16", 384, 1),
    ("vit_base_patch16", 384, 64),
    ("vit_small_patch16", 224, 1),
)
BACKENDS = (
    "eager",
    "eager-tf32",
    "eager-fp16",
    "eager-bf16",
    "compile-bf16",
    "cudagraph-bf16",
    "fp8",
    "tensorrt",
    "tensorrt-int8",
    *GPU_PEERS,
)
SMOKE = {
    "cases": (("vit_tiny_patch16", 32, 1), ("vit_tiny_patch16", 32, 2)),
    # the compiled peer is left out: Inductor takes most of a minute per case on a CPU
    "backends": ("eager", "eager-bf16", "eager-fp16", "tensorrt", "fp8", *GPU_PEERS[::2]),
}
TARGET_SPEEDUP = 3.0  # TensorRT vs eager fp32 (issue 12)
TARGET_PEER_B1 = 3.0  # best vitres path / best peer at batch 1 (issue 28)
TARGET_PEER_B64 = 1.3  # ... at batch 64


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


def matmul_tflops(device: torch.device, size: int = 8192, calls: int = 20) -> float | None:
    """The bf16 matrix-multiply rate this GPU reaches (TFLOP/s), the ceiling the
    models' TFLOP/s are compared with; ``None`` on a CPU."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e12


def _make(name: str, peers: dict[str, Any], device: torch.device, resolution: int, batch: int):
    """A backend or peer for ``name``, or ``(None, why not)``."""
    if name.startswith("peer:"):
        peer = peers.get(name, "not set up")
        return (None, peer) if isinstance(peer, str) else (peer, "")
    return make_backend(name, str(device), resolution, batch)


def _measure_build(
    name: str, backend: Any, state: dict, case: tuple[str, int, int], x: torch.Tensor,
    expected: torch.Tensor, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Builds ``backend`` on a fresh model with ``state`` and checks one call against
    ``expected``: the row's build, accuracy and memory fields."""
    model_name, resolution, _ = case
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
    backend.prepare(model, tuple(x.shape))
    out = backend.run(x).float()
    used = device_used_mb(device)
    # random weights leave small logit margins, so top-1 flips easily: the relative
    # error of the logits says more about how close a precision computes
    return {
        "precision": getattr(backend, "precision", "fp32"),
        "build_s": round(float(backend.build_time_s or 0.0), 2),
        "max_abs_diff": float((out - expected).abs().max()),
        "relative_error": float((out - expected).norm() / expected.norm().clamp_min(1e-12)),
        "top1_agreement": (out.argmax(-1) == expected.argmax(-1)).float().mean().item(),
        "torch_peak_mb": (
            (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
            if device.type == "cuda"
            else None
        ),
        "device_held_mb": None if before is None else used - before,
    }


# long: one case end to end (reference, peers, builds, interleaved timing, derived figures)
def run_case(
    case: tuple[str, int, int],
    names: tuple[str, ...],
    device: torch.device,
    rounds: int,
    calls: int,
    peak_tflops: float | None = None,
) -> list[dict[str, Any]]:
    model_name, resolution, batch = case
    torch.manual_seed(0)
    torch._dynamo.reset()  # every case compiles afresh (static shapes, no cached weights)
    reference = vitres.create_model(model_name, img_size=resolution).eval()
    peers = make_peers(reference, tuple(n for n in names if n.startswith("peer:")), str(device))
    state = reference.state_dict()  # after the HF twin's weights went in
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.inference_mode():
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        torch.backends.cudnn.allow_tf32 = False
        expected = reference.to(device)(x).float()
    flops = analytic_flops(reference.config, resolution, batch=batch)
    reference.to("cpu")
    rows, runs, built = [], {}, {}
    for name in names:
        row: dict[str, Any] = {
            "model": model_name,
            "resolution": resolution,
            "batch": batch,
            "backend": name,
        }
        backend, reason = _make(name, peers, device, resolution, batch)
        if backend is None:
            rows.append({**row, "skipped": reason})
            continue
        try:
            row.update(_measure_build(name, backend, state, case, x, expected, device))
        except Exception as error:  # a backend that fails here is reported, not fatal
            rows.append({**row, "skipped": f"{type(error).__name__}: {error}"})
            continue
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
        tflops = flops / (median / 1000.0) / 1e12
        built[name].update(
            median_ms=median,
            p90_ms=ms[int(0.9 * (len(ms) - 1))],
            images_per_s=1000.0 * batch / median,
            tflops=tflops,
            share_of_matmul_rate=None if not peak_tflops else tflops / peak_tflops,
        )
    _speedups(built)
    del runs, built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _speedups(built: dict[str, dict[str, Any]]) -> None:
    """Speed-ups over eager fp32 and, for vitres's paths, over the case's best peer."""
    timed = {n: r for n, r in built.items() if "median_ms" in r}
    if "eager" in timed:
        for row in timed.values():
            row["speedup_vs_eager_fp32"] = timed["eager"]["median_ms"] / row["median_ms"]
    peers = [r["median_ms"] for n, r in timed.items() if n.startswith("peer:")]
    if peers:
        for name, row in timed.items():
            if not name.startswith("peer:"):
                row["speedup_vs_best_peer"] = min(peers) / row["median_ms"]


def switch_cost(device: torch.device, rounds: int = 200) -> dict[str, Any]:
    """What switching resolution costs on ``cudagraph-bf16`` once both sizes have graphs:
    the median of calls alternating 224 and 192 px minus the median of calls at one size
    (the mean of both sizes' medians), and whether anything was recorded or compiled."""
    backend, reason = make_backend("cudagraph-bf16", str(device), 224, 1)
    if backend is None:
        return {"skipped": reason}
    torch.manual_seed(0)
    model = vitres.create_model("vit_base_patch16", img_size=224).eval()
    backend.prepare(model, (1, 3, 224, 224))
    backend.record([(1, 3, 192, 192)])
    before = backend.stats()
    xs = {s: torch.randn(1, 3, s, s, device=device) for s in (224, 192)}

    def timed(sizes: list[int]) -> list[float]:
        out = []
        for size in sizes:
            start = time.perf_counter()
            backend.run(xs[size])
            torch.cuda.synchronize(device)
            out.append(1000.0 * (time.perf_counter() - start))
        return out

    steady = {s: statistics.median(timed([s] * rounds)) for s in (224, 192)}
    alternating = statistics.median(timed([224, 192] * (rounds // 2)))
    after = backend.stats()
    return {
        "steady_ms": steady,
        "alternating_ms": alternating,
        "added_ms_per_switch": alternating - sum(steady.values()) / 2,
        "recorded_while_switching": after["captures"] - before["captures"],
        "compiled_while_switching": after["compiles"] - before["compiles"],
    }


HEADER = (
    "model",
    "res",
    "batch",
    "backend",
    "median ms",
    "p90 ms",
    "vs eager fp32",
    "vs best peer",
    "images/s",
    "TFLOP/s",
    "of bf16 matmul",
    "build s",
    "rel. error",
    "top-1 agree",
    "torch peak MiB",
    "device held MiB",
)


def _row_cells(r: dict[str, Any]) -> list[str]:
    """One row of the results table (a skipped case: its reason, one line, no ``|``)."""

    def f(value: Any, spec: str, suffix: str = "") -> str:
        return "–" if value is None else format(value, spec) + suffix

    head = [r["model"], str(r["resolution"]), str(r["batch"]), r["backend"]]
    if "skipped" in r:
        reason = " ".join(str(r["skipped"]).split()).replace("|", "/")[:160]
        return head + [f"skipped: {reason}"] + [""] * (len(HEADER) - len(head) - 1)
    share = r.get("share_of_matmul_rate")
    return head + [
        f(r.get("median_ms"), ".3f"),
        f(r.get("p90_ms"), ".3f"),
        f(r.get("speedup_vs_eager_fp32"), ".2f", "×"),
        f(r.get("speedup_vs_best_peer"), ".2f", "×"),
        f(r.get("images_per_s"), ".0f"),
        f(r.get("tflops"), ".1f"),
        f(None if share is None else 100 * share, ".0f", " %"),
        f"{r['build_s']:.1f}",
        f"{r['relative_error']:.2e}",
        f"{r['top1_agreement']:.3f}",
        f(r["torch_peak_mb"], ".0f"),
        f(r["device_held_mb"], ".0f"),
    ]


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    rate = result.get("matmul_tflops")
    lines = [
        "# GPU backends and peers",
        "",
        f"`{result['command']}` -- {env['gpu']}, torch {env['torch']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}; {result['rounds']} interleaved rounds "
        f"of {result['calls']} calls; bf16 matmul rate measured here: "
        f"{'–' if rate is None else f'{rate:.0f} TFLOP/s'}. Random weights: relative error "
        "and top-1 agreement are against eager fp32 on the same inputs (peers hold the same "
        "weights).",
        "",
        *markdown_table(HEADER, map(_row_cells, result["rows"]), "lrrlrrrrrrrrrrrr"),
        "",
        *result["verdicts"],
        "",
    ]
    return "\n".join(lines)


def _peer_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for batch_kind, target in (("batch 1", TARGET_PEER_B1), ("batch 64", TARGET_PEER_B64)):
        wanted = 1 if batch_kind == "batch 1" else 64
        cases = sorted(
            {(r.get("model", "?"), r["resolution"]) for r in rows if r["batch"] == wanted}
        )
        for model, resolution in cases:
            mine = [
                r
                for r in rows
                if (r.get("model", "?"), r["resolution"], r["batch"]) == (model, resolution, wanted)
                and "speedup_vs_best_peer" in r
            ]
            if not mine:
                out.append(f"- {model} {resolution} px {batch_kind}: no peer comparison.")
                continue
            best = max(mine, key=lambda r: r["speedup_vs_best_peer"])
            mark = "MET" if best["speedup_vs_best_peer"] >= target else "MISSED"
            out.append(
                f"- [{mark}] {model} {resolution} px {batch_kind}: best vitres path "
                f"{best['backend']} is {best['speedup_vs_best_peer']:.2f}× the best peer "
                f"(target >= {target:g}×)."
            )
    return out


def _fp8_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    timed = [r for r in rows if r["backend"] == "fp8" and "relative_error" in r]
    if not timed:
        why = next((r["skipped"] for r in rows if r["backend"] == "fp8"), "not run")
        return [f"- fp8: not measured ({why})."]
    worst_error = max(r["relative_error"] for r in timed)
    worst_agree = min(r["top1_agreement"] for r in timed)
    mark = "MET" if worst_error <= 0.02 and worst_agree >= 0.99 else "MISSED"
    return [
        f"- [{mark}] fp8 accuracy: worst logits' relative error {100 * worst_error:.2f} % "
        f"(target <= 2 %), worst top-1 agreement {100 * worst_agree:.1f} % (target >= 99 %; "
        "random weights, see --real for real images)."
    ]


def verdicts(rows: list[dict[str, Any]], switch: dict[str, Any] | None = None) -> list[str]:
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
    out += _peer_verdicts(rows) + _fp8_verdicts(rows)
    if switch and "added_ms_per_switch" in switch:
        added = switch["added_ms_per_switch"]
        clean = switch["recorded_while_switching"] == 0 == switch["compiled_while_switching"]
        mark = "MET" if added <= 0.1 and clean else "MISSED"
        out.append(
            f"- [{mark}] resolution switch (cudagraph-bf16, 224 <-> 192 px, batch 1): "
            f"{added:+.3f} ms per switch, {switch['recorded_while_switching']} graphs recorded "
            f"and {switch['compiled_while_switching']} compiles while switching (target <= "
            "0.1 ms, none)."
        )
    elif switch:
        out.append(f"- resolution switch: not measured ({switch.get('skipped')}).")
    return out


def write_results(
    out: Path,
    command: str,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
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
        **settings,
        "wall_s": round(time.time() - start, 1),
        "env": environment(gpu=gpu, host=platform.processor(), tensorrt=trt_version),
        "rows": rows,
        "verdicts": verdicts(rows, settings.get("switch")),
    }
    write_json(out.with_suffix(".json"), result, indent=1, newline=False)
    table = markdown(result)
    write_markdown(out.with_suffix(".md"), table)
    return table


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu with --smoke")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 rounds: checks it runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--calls", type=int, default=None, help="calls per round (default 20)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix")
    parser.add_argument("--resolutions", default=None, help="only these, e.g. 224")
    parser.add_argument("--batches", default=None, help="only these, e.g. 1")
    parser.add_argument("--backends", default=None, help=f"subset of {','.join(BACKENDS)}")
    parser.add_argument("--no-switch", action="store_true", help="skip the resolution switch")
    return parser.parse_args(argv)


def _device_or_error(args: argparse.Namespace) -> torch.device | None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here (torch.cuda.is_available() is False). Run this on a GPU "
            "machine, or check the script on a CPU with: --smoke --device cpu",
            file=sys.stderr,
        )
        return None
    if device.type == "cpu" and not args.smoke:
        print(
            "error: --device cpu is only for --smoke (a check that the script runs)",
            file=sys.stderr,
        )
        return None
    return device


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = _device_or_error(args)
    if device is None:
        return 2
    cases = SMOKE["cases"] if args.smoke else CASES
    names = SMOKE["backends"] if args.smoke else BACKENDS
    if args.resolutions:
        cases = [c for c in cases if str(c[1]) in args.resolutions.split(",")]
    if args.batches:
        cases = [c for c in cases if str(c[2]) in args.batches.split(",")]
    if args.backends:
        unknown = sorted(set(args.backends.split(",")) - set(BACKENDS))
        if unknown:
            print(
                f"error: unknown backends {unknown}; choose from {', '.join(BACKENDS)}",
                file=sys.stderr,
            )
            return 2
        names = tuple(["eager"] + [n for n in args.backends.split(",") if n != "eager"])
    settings: dict[str, Any] = {
        "rounds": args.rounds or (2 if args.smoke else 5),
        "calls": args.calls or (2 if args.smoke else 20),
        "matmul_tflops": matmul_tflops(device),
    }
    start, rows, out = time.time(), [], Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_backends.py" + (" --smoke" if args.smoke else "")
    table = ""
    for case in cases:
        print(f"{case[0]} {case[1]} px batch {case[2]} ...", flush=True)
        rows += run_case(
            case, names, device, settings["rounds"], settings["calls"], settings["matmul_tflops"]
        )
        # written after every case: a run stopped at its time limit keeps what it did
        table = write_results(out, command, rows, settings, device, start)
    if not args.no_switch and not args.smoke:
        settings["switch"] = switch_cost(device)
        table = write_results(out, command, rows, settings, device, start)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

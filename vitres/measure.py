"""Measurement of one configuration: latency statistics, peak memory, FLOPs, environment.

Latency is timed call by call after a warm-up that lasts both a number of calls and a
time (timm's ``benchmark.py`` and torchao's benchmarks do the same), and summarised by
robust statistics (median, IQR, tail percentiles) with an ``unstable`` flag when the
spread is large. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``,
corrected for ``scaled_dot_product_attention`` (which the counter does not count on CPU),
and cross-checked against a closed form for ViT (Dosovitskiy et al., ICLR 2021) and
MLP-Mixer (Tolstikhin et al., NeurIPS 2021). Peak memory on CPU is the peak resident set
of an isolated child process over its baseline, so one config's allocations never leak
into the next, and a crash or out-of-memory kill becomes an error record.

This module measures what it is given; which configs to run is :mod:`vitres.sweep`'s job.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import platform
import resource
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from vitres.backends import backend_class, get_backend
from vitres.layers.patch_embed import token_grid
from vitres.layers.pos_embed import to_grid
from vitres.records import LatencyStats, Measurement, SweepConfig

UNSTABLE_IQR_RATIO = 0.10
CPU_FLAGS_OF_INTEREST = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")

# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and to measure; both a call count and a time must be reached."""

    warmup_calls: int = 10
    warmup_s: float = 0.2
    min_calls: int = 30
    min_s: float = 2.0

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "warmup_calls": self.warmup_calls,
            "warmup_s": self.warmup_s,
            "min_calls": self.min_calls,
            "min_s": self.min_s,
        }


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup_calls: int = 10,
    warmup_s: float = 0.2,
    min_calls: int = 30,
    min_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Times ``fn()`` call by call.

    Warm-up runs until at least ``warmup_calls`` calls AND ``warmup_s`` seconds have
    passed; then calls are timed until at least ``min_calls`` calls AND ``min_s`` seconds
    (from the start of the first timed call to the end of the last) have passed.

    The clock is read once at the start of the warm-up and once after each warm-up call,
    and twice around each timed call (``t0``, ``fn()``, ``sync()``, ``t1``).

    Args:
        fn: The call to time.
        warmup_calls: Minimum warm-up calls.
        warmup_s: Minimum warm-up seconds.
        min_calls: Minimum timed calls.
        min_s: Minimum timed seconds.
        clock: Seconds as a float; injectable so tests can use a fake clock.
        sync: Called after each ``fn()`` before reading the clock (e.g.
            ``torch.cuda.synchronize`` for asynchronous devices).

    Returns:
        The duration of every timed call, in seconds.
    """
    if min_calls < 1:
        raise ValueError(f"min_calls must be at least 1, got {min_calls}")
    start = clock()
    calls = 0
    while calls < warmup_calls or clock() - start < warmup_s:
        fn()
        if sync is not None:
            sync()
        calls += 1
    samples: list[float] = []
    first = None
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        t1 = clock()
        if first is None:
            first = t0
        samples.append(t1 - t0)
        if len(samples) >= min_calls and t1 - first >= min_s:
            return samples


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated
    between closest ranks (numpy's default ``method="linear"``)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def latency_stats(samples_s: Sequence[float]) -> LatencyStats:
    """Summarises call durations (seconds) as :class:`LatencyStats` in milliseconds."""
    if len(samples_s) == 0:
        raise ValueError("latency_stats needs at least one sample")
    ms = sorted(float(s) * 1000.0 for s in samples_s)
    median = percentile(ms, 50)
    iqr = percentile(ms, 75) - percentile(ms, 25)
    return LatencyStats(
        median_ms=median,
        iqr_ms=iqr,
        p90_ms=percentile(ms, 90),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        min_ms=ms[0],
        mean_ms=sum(ms) / len(ms),
        count=len(ms),
        unstable=bool(median > 0 and iqr / median > UNSTABLE_IQR_RATIO),
    )


# --------------------------------------------------------------------------- FLOPs

# Attention ops, and where their query/key/value tensors keep the sequence axis:
# ``bhne`` = (B, heads, N, head_dim); ``bnhe`` = (B, N, heads, head_dim). Under
# ``inference_mode`` the composite ``scaled_dot_product_attention`` itself reaches the
# dispatch modes; otherwise the fused kernel it selects does.
_ATTENTION_OPS = {
    "aten::scaled_dot_product_attention": "bhne",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "bhne",
    "aten::_scaled_dot_product_flash_attention": "bhne",
    "aten::_scaled_dot_product_efficient_attention": "bhne",
    "aten::_scaled_dot_product_cudnn_attention": "bhne",
    "aten::_scaled_dot_product_fused_attention_overrideable": "bhne",
    "aten::_flash_attention_forward": "bnhe",
    "aten::_efficient_attention_forward": "bnhe",
}


def attention_flops(
    q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], layout: str = "bhne"
) -> int:
    """FLOPs of ``softmax(Q Kᵀ) V``: ``2·B·H·Nq·Nk·E`` for QKᵀ plus ``2·B·H·Nq·Nk·Ev`` for AV.

    With ``E == Ev`` this is ``4·B·heads·Nq·Nk·head_dim``. Softmax and scaling are not
    counted (as for every other elementwise op).
    """
    seq_axis = -2 if layout == "bhne" else 1
    rows = math.prod(q_shape[:-1])  # B·H·Nq, whatever the layout
    n_k = k_shape[seq_axis]
    return 2 * rows * n_k * q_shape[-1] + 2 * rows * n_k * v_shape[-1]


class _AttentionCorrection(TorchDispatchMode):
    """Runs above a ``FlopCounterMode``: for every attention call, replaces what the
    counter added during that call (0 on CPU; the full term for kernels it knows; the
    ``bmm`` terms if the call decomposes into the math path) by the exact attention term."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.correction = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        schema = getattr(func, "_schema", None)
        layout = None if schema is None else _ATTENTION_OPS.get(schema.name)
        if layout is None:
            return func(*args, **(kwargs or {}))
        before = self.counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        counted = self.counter.get_total_flops() - before
        q, k, v = args[0], args[1], args[2]
        self.correction += attention_flops(q.shape, k.shape, v.shape, layout) - counted
        self.calls += 1
        return out


def count_flops(model: nn.Module, x: Tensor, **kwargs: Any) -> int:
    """FLOPs of ``model(x, **kwargs)`` (a multiply-add = 2 FLOPs), attention included.

    ``FlopCounterMode`` counts matmuls and convolutions, and fused attention only on the
    kernels it knows (CUDA flash/efficient); on CPU ``scaled_dot_product_attention`` is
    counted as 0. A dispatch mode above the counter intercepts every attention call and
    replaces whatever the counter added during it by ``4·B·heads·Nq·Nk·head_dim``, so
    attention is counted exactly once whether or not the counter knows the kernel.
    Elementwise ops, norms, softmax and pooling are not counted.
    """
    counter = FlopCounterMode(display=False)
    # The counter's module tracker hooks autograd on inputs that require grad, which
    # fails under inference_mode when a module is handed parameters as inputs.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(), counter:
            correction = _AttentionCorrection(counter)
            with correction:
                model(x, **kwargs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops() + correction.correction)


def analytic_flops(
    config: Any,
    resolution: int | Sequence[int],
    patch_size: int | None = None,
    batch: int = 1,
    grid: tuple[int, int] | None = None,
) -> int:
    """Closed-form FLOPs of a ViT or MLP-Mixer forward pass (a multiply-add = 2 FLOPs).

    With ``N`` patch tokens on a ``gh × gw`` grid, ``T = N + prefix`` tokens, width ``D``,
    MLP hidden ``Dh = int(D · mlp_ratio)``, ``C`` input channels and patch ``p``:

    - patch embedding (a ``p × p`` stride-``p`` conv): ``2·N·C·p²·D``
    - ViT block: qkv ``2·T·D·3D`` + QKᵀ and AV ``4·T²·D`` + proj ``2·T·D²`` + MLP ``4·T·D·Dh``
    - Mixer block: token MLP ``4·D·N·tokens_mlp_dim`` + channel MLP ``4·N·D·channels_mlp_dim``
    - head: ``2·D·num_classes``

    Biases, norms, activations, softmax, pooling and position-embedding generators
    (``cpb``/``mlp`` position embeddings) are not counted, matching the counter.

    Args:
        config: The model's ``ViTConfig`` or ``MixerConfig`` (a Mixer is recognised by
            its ``tokens_mlp_dim`` field).
        resolution: Input ``(H, W)`` or one int for a square.
        patch_size: Patch size used; ``None`` = ``config.patch_size``.
        batch: Images.
        grid: Token grid, if known (``model.grid_size``); otherwise derived from the
            config's ``size_policy`` (default ``pad``: round up).
    """
    patch = int(to_grid(patch_size if patch_size is not None else config.patch_size)[0])
    if grid is None:
        grid = token_grid(to_grid(resolution), patch, getattr(config, "size_policy", "pad"))
    n = grid[0] * grid[1]
    dim = int(config.embed_dim)
    flops = 2 * n * int(config.in_chans) * patch * patch * dim
    if hasattr(config, "tokens_mlp_dim"):
        per_block = 4 * dim * n * int(config.tokens_mlp_dim) + 4 * n * dim * int(
            config.channels_mlp_dim
        )
    else:
        prefix = int(bool(getattr(config, "class_token", True))) + int(
            getattr(config, "reg_tokens", 0)
        )
        t = n + prefix
        hidden = int(dim * float(getattr(config, "mlp_ratio", 4.0)))
        per_block = (
            2 * t * dim * 3 * dim + 4 * t * t * dim + 2 * t * dim * dim + 4 * t * dim * hidden
        )
    flops += int(config.depth) * per_block
    flops += 2 * dim * int(getattr(config, "num_classes", 0) or 0)
    return int(batch * flops)


# --------------------------------------------------------------------------- memory

_MIB = float(2**20)


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident set size of this process in MiB (Linux), ``None`` where unknown."""
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (``VmHWM``) of this process; Linux ≥ 4.0."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class PeakMemoryTracker:
    """Peak memory over a baseline taken at :meth:`start`, in MiB.

    On CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated at start. On CPU: the peak resident set (``VmHWM``, reset at start through
    ``/proc/self/clear_refs``) minus the resident set at start. In a fresh child process
    this is the memory of the model work; in a long-lived process it is less exact (the
    allocator keeps memory freed earlier, which hides part of the new peak).
    """

    def __init__(self, device: str | torch.device = "cpu", isolated: bool = False) -> None:
        self.device = torch.device(device)
        self.isolated = isolated
        self.baseline_mb = 0.0
        self.method = "none"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / _MIB
            self.method = "cuda_max_allocated"
            return
        rss = current_rss_mb()
        reset = _reset_peak_rss()
        if rss is None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        self.baseline_mb = rss
        if reset:
            self.method = "rss_hwm_child" if self.isolated else "rss_hwm_inproc"
        else:
            self.method = "rss_maxrss"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / _MIB - self.baseline_mb
        return max(0.0, _peak_rss_mb() - self.baseline_mb)


class IsolatedRunError(RuntimeError):
    """A function run in a child process failed, crashed, was killed or timed out."""


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    try:
        result = fn(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - everything must reach the parent
        where = traceback.extract_tb(error.__traceback__)[-1:]
        location = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
        conn.send(("error", f"{type(error).__name__}: {error}{location}"))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Runs ``fn(*args, **kwargs)`` in a fresh ``spawn`` child process and returns its result.

    ``fn``, the arguments and the result must be picklable (``fn`` a module-level
    function). Ctrl-C in the parent ends the child and propagates.

    Raises:
        IsolatedRunError: ``fn`` raised (the message names the exception), the child
            died (a signal such as SIGKILL, usually the out-of-memory killer), or it ran
            past ``timeout_s``.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_isolated was called while a spawned child process was importing the main "
            "module; guard the calling code with `if __name__ == '__main__':`"
        )
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, fn, args, kwargs), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise IsolatedRunError(f"child process timed out after {timeout_s:g} s")
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join(10)
            code = process.exitcode
            if code is not None and code < 0:
                name = signal.Signals(-code).name
                hint = ", most likely out of memory" if -code == signal.SIGKILL else ""
                raise IsolatedRunError(f"child process killed by {name}{hint}") from None
            raise IsolatedRunError(
                f"child process exited with code {code} without a result (if this runs from a "
                "script, guard the calling code with `if __name__ == '__main__':` -- spawned "
                "children re-import the main module)"
            ) from None
        process.join(10)
        if status != "ok":
            raise IsolatedRunError(payload)
        return payload
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()


def _peak_of_call(
    fn: Callable[..., Any], args: tuple, kwargs: dict, device: str, isolated: bool
) -> float:
    tracker = PeakMemoryTracker(device, isolated=isolated)
    tracker.start()
    fn(*args, **kwargs)
    return tracker.peak_mb()


def peak_memory_mb(
    fn: Callable[..., Any],
    *args: Any,
    device: str = "cpu",
    isolate: bool = True,
    **kwargs: Any,
) -> float:
    """Peak memory (MiB) of ``fn(*args, **kwargs)`` over the baseline just before it.

    On CUDA the call runs here and ``torch.cuda.max_memory_allocated`` is used. On CPU
    with ``isolate`` it runs in a fresh child process (``fn`` must be a module-level
    function) and the peak resident set over the child's baseline is returned.
    """
    if torch.device(device).type == "cpu" and isolate:
        return run_isolated(_peak_of_call, fn, args, kwargs, device, True)
    return _peak_of_call(fn, args, kwargs, device, False)


# --------------------------------------------------------------------------- environment


def set_threads(n: int | None) -> int:
    """Sets torch's intra-op CPU threads to ``n`` (``None`` keeps the current number);
    returns the number in effect."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def cpu_info() -> dict[str, Any]:
    """CPU model name and the flags that matter for bf16/int8 speed (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif name == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST}}


def env_fingerprint(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """What a latency number depends on, so results from different machines can be told
    apart: CPU model and flags, logical cores, torch threads, versions, device, and a
    hash of the host name (not the name itself)."""
    info = cpu_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    fingerprint = {
        **info,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        fingerprint["gpu"] = torch.cuda.get_device_name(torch.device(device))
        fingerprint["cuda"] = torch.version.cuda
    return fingerprint


# --------------------------------------------------------------------------- one config


class FixedPatchSize(nn.Module):
    """Binds ``patch_size`` so a backend sees a plain ``forward(x)``."""

    def __init__(self, model: nn.Module, patch_size: int) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, patch_size=self.patch_size)


EvalData = Callable[[nn.Module, SweepConfig], Iterable[tuple[Tensor, Tensor]]]


def evaluate_accuracy(
    run: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    pad_to: int | None = None,
) -> tuple[float, int]:
    """Top-1 accuracy (fraction) and example count of ``run`` over ``(x, y)`` batches.

    Args:
        run: Maps a batch to logits.
        batches: The evaluation batches.
        pad_to: If set, every batch is split/padded to exactly this size (repeating its
            last image; the padding is dropped), for backends built for one batch size.
    """
    correct = total = 0
    for x, y in batches:
        chunks = [x] if pad_to is None else list(torch.split(x, pad_to))
        labels = [y] if pad_to is None else list(torch.split(y, pad_to))
        for xc, yc in zip(chunks, labels):
            n = xc.shape[0]
            if pad_to is not None and n < pad_to:
                xc = torch.cat([xc, xc[-1:].expand(pad_to - n, *xc.shape[1:])])
            logits = run(xc)[:n]
            correct += int((logits.float().argmax(dim=-1).cpu() == yc.cpu()).sum())
            total += n
    if total == 0:
        raise ValueError("the evaluation data yielded no examples")
    return correct / total, total


def backend_options(
    config: SweepConfig, calibration: tuple[str, str | None] | None = None
) -> dict[str, Any]:
    """Constructor arguments of ``config.backend``: the device, and for backends that
    calibrate on real images, the data they calibrate on."""
    options: dict[str, Any] = {"device": config.device}
    if calibration is not None and backend_class(config.backend).calibrated:
        options["calibration_data"], options["calibration_data_dir"] = calibration
    return options


def measure_config(
    build_model: Callable[[], nn.Module],
    config: SweepConfig,
    *,
    eval_data: EvalData | None = None,
    data_name: str | None = None,
    timing: TimingConfig | None = None,
    known_accuracy: tuple[float, int] | None = None,
    isolated: bool = False,
    with_flops: bool = True,
    calibration: tuple[str, str | None] | None = None,
) -> Measurement:
    """Measures one config: latency, peak memory, accuracy, FLOPs; returns an ``ok`` record.

    Order: set threads; memory baseline; build the model; ``backend.prepare``; time
    ``backend.run`` on a random batch; read the peak memory; evaluate accuracy (through
    the same backend, so reduced precision shows in accuracy); count FLOPs.

    Args:
        build_model: Returns the model (called after the memory baseline, so the peak
            includes the weights).
        config: What to measure.
        eval_data: ``eval_data(model, config)`` yields ``(x, y)`` evaluation batches.
        data_name: Name of the evaluation data, for the record.
        timing: Warm-up and measurement windows.
        known_accuracy: ``(accuracy, n_eval)`` already known for this model, resolution,
            patch and backend (another batch size): evaluation is skipped.
        isolated: True when running in a fresh child process (labels the memory method).
        with_flops: Count FLOPs (one extra forward pass under the counter).
        calibration: ``(dataset name or folder, data_dir)`` that backends needing
            calibration images (static INT8) calibrate on: the sweep's own dataset, so a
            folder dataset is not quantised with Fashion-MNIST's activation ranges.
    """
    timing = timing or TimingConfig()
    threads = set_threads(config.threads)
    device = torch.device(config.device)
    tracker = PeakMemoryTracker(device, isolated=isolated)
    tracker.start()
    model = build_model().eval()
    model_config = getattr(model, "config", None)
    in_chans = int(getattr(model_config, "in_chans", 3))
    native_patch = getattr(model_config, "patch_size", None)
    native_patch = None if native_patch is None else to_grid(native_patch)[0]
    native_res = getattr(model_config, "img_size", None)
    native_res = None if native_res is None else to_grid(native_res)
    height, width = config.resolution

    runnable: nn.Module = (
        model if config.patch_size is None else FixedPatchSize(model, config.patch_size)
    )
    backend = get_backend(config.backend, **backend_options(config, calibration))
    shape = (config.batch_size, in_chans, height, width)
    backend.prepare(runnable, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)  # no copy timed
    samples = time_calls(lambda: backend.run(x), sync=backend.sync, **timing.as_kwargs())
    peak = tracker.peak_mb()
    stats = latency_stats(samples)

    accuracy, n_eval = (None, 0) if known_accuracy is None else known_accuracy
    if eval_data is not None and known_accuracy is None:
        pad_to = None if backend.dynamic_batch else config.batch_size
        accuracy, n_eval = evaluate_accuracy(backend.run, eval_data(model, config), pad_to=pad_to)

    grid = tokens = flops = flops_analytic = None
    if hasattr(model, "grid_size"):
        grid = tuple(int(g) for g in model.grid_size((height, width), patch_size=config.patch_size))
        tokens = grid[0] * grid[1]
    if with_flops:
        first = next(model.parameters(), None)
        dtype = first.dtype if first is not None else torch.float32
        flops = count_flops(runnable, x[:1].to(device=device, dtype=dtype))
        if model_config is not None:
            try:
                flops_analytic = analytic_flops(
                    model_config, (height, width), config.patch_size, grid=grid
                )
            except (AttributeError, TypeError, ValueError):
                flops_analytic = None
    return Measurement(
        config=config,
        status="ok",
        accuracy=accuracy,
        n_eval=n_eval,
        data=data_name if accuracy is not None else None,
        latency=stats,
        throughput_ips=config.batch_size / (stats.median_ms / 1000.0)
        if stats.median_ms > 0
        else None,
        peak_mem_mb=peak,
        mem_method=tracker.method,
        flops=flops,
        flops_analytic=flops_analytic,
        params=sum(p.numel() for p in model.parameters()),
        tokens=tokens,
        grid=grid,
        num_prefix_tokens=getattr(model, "num_prefix_tokens", None),
        native_resolution=native_res,
        native_patch_size=native_patch,
        embed_dim=getattr(model_config, "embed_dim", None),
        build_time_s=backend.build_time_s,
        env=env_fingerprint(threads, config.device),
    )

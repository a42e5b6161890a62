"""Load test of ``vitres serve``: does choosing batch size AND resolution per batch hold a
latency SLO where a fixed-resolution dynamic batcher breaks?

Setup. A sweep of ``fmnist-vit-multires`` (accuracy on Fashion-MNIST test images,
latency at batch 1..32, eager fp32, 1 thread) gives the server its latency model. Each
controller runs as a real ``vitres serve`` process on loopback (1 thread, monitoring off
so that a rollback does not change the controller under test, request timeout 5 s):

* ``predictive`` -- batch x resolution under the SLO, with load shedding, batches <= 32;
* ``fixed:native`` (28 px) at several batch caps, with a queue of 4096 (unbounded in
  effect, as Triton's and Ray Serve's defaults are); the best of them at each rate (the
  highest SLO attainment) is "fixed".

The client (:mod:`vitres.measure.http_load`) is open-loop and bounded: Poisson arrivals
at a set rate for a fixed time (the first ``warmup`` seconds are not counted), each
request a real Fashion-MNIST test image (PNG) posted as soon as it is due whatever the
server is doing, over raw HTTP/1.1 keep-alive connections (about a tenth of a
millisecond of CPU per request; httpx took about 2 ms, more than the server), at most
``max_in_flight`` outstanding (more are counted ``not_sent``), and it stops by itself.
Latency is taken from the moment a request was due, so client-side queueing counts.
Every request ends in exactly one outcome: an HTTP status, a client timeout (10 s: twice
the server's own 5 s request timeout, so a client timeout means the request waited
longer than that before the server's handler saw it), a connection closed or refused
before an answer, or not sent.

The rate sweep climbs geometrically until the best fixed batch's p99 exceeds the SLO
(its breaking rate R), then adds 1.5 R and 2 R; predictive runs at every rate. Recorded
per run: p50/p95/p99 of answered requests, throughput, SLO attainment (answered within
the SLO / offered), shed fraction (503) and how fast a shed request heard so, requests
without any response (transport errors and client timeouts, apart), requests not sent,
accuracy of the answers against the true labels, mean resolution and batch size, and
the CPU time per request of the server process and of the client. Targets (printed met
/ missed):

1. at 2 R, predictive keeps p99 <= SLO for answered requests, answers >= 95 %, and its
   accuracy is within 1 point of fixed's at light load;
2. zero requests without a response, at every rate, for every controller;
3. report the rate where predictive starts shedding (> 1 % of requests).

Client and server share this machine's CPUs: on a small machine the client's own CPU
use is part of what is measured (its send lag and CPU per request are reported). Writes
``benchmarks/results/serve_load.{json,md,png}`` (``--quick``: ``serve_load_quick.*``).

Usage::

    .venv/bin/python benchmarks/serve_load.py            # the real run (~20 min)
    .venv/bin/python benchmarks/serve_load.py --quick    # a short check that it works
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import httpx
import numpy as np
import torch
from PIL import Image

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
from vitres.measure.http_load import poisson_schedule, run_load
from vitres.tune.records import read_results

RUNS_DIR = ROOT / "runs" / "serve_load"
DEFAULT_MODEL = "fmnist-vit-multires"


@dataclass(frozen=True)
class Plan:
    """Everything that differs between the real run and ``--quick``."""

    name: str
    resolutions: tuple[int, ...]
    sweep_batches: tuple[int, ...]
    eval_limit: int
    timing: TimingConfig
    fixed_batches: tuple[int, ...]
    start_rate: float
    rate_step: float
    max_rate: float
    duration_s: float
    warmup_s: float
    images: int


FULL = Plan(
    name="serve_load",
    resolutions=(16, 20, 24, 28, 36, 44, 56),
    sweep_batches=(1, 2, 4, 8, 16, 32),
    eval_limit=2000,
    timing=TimingConfig(warmup_calls=10, warmup_s=0.2, min_calls=30, min_s=1.0),
    fixed_batches=(1, 4, 16, 32),
    start_rate=50.0,
    rate_step=1.5,
    max_rate=4000.0,
    duration_s=15.0,
    warmup_s=2.0,
    images=2000,
)
# the real DINOv2-S/14 classifier of `make real-model` (issue 27): 500 ms SLO, fixed 224 px
REAL = Plan(
    name="serve_load_real",
    resolutions=(112, 140, 168, 196, 224),
    sweep_batches=(1, 2, 4, 8),
    eval_limit=500,
    timing=TimingConfig(warmup_calls=2, warmup_s=0.2, min_calls=8, min_s=1.0),
    fixed_batches=(1, 4),
    start_rate=2.0,
    rate_step=1.5,
    max_rate=200.0,
    duration_s=20.0,
    warmup_s=3.0,
    images=500,
)
QUICK = Plan(
    name="serve_load_quick",
    resolutions=(16, 28, 56),
    sweep_batches=(1, 8, 32),
    eval_limit=300,
    timing=TimingConfig(warmup_calls=3, warmup_s=0.05, min_calls=10, min_s=0.1),
    fixed_batches=(8,),
    start_rate=50.0,
    rate_step=2.5,
    max_rate=800.0,
    duration_s=3.0,
    warmup_s=0.5,
    images=300,
)


# --------------------------------------------------------------------------- records


def sweep_records(plan: Plan, model: str, progress: bool) -> Path:
    """The latency (and accuracy) records the servers use; measured once, then reused."""
    from vitres.tune.grid import build_grid
    from vitres.tune.sweep import run_sweep

    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "_" for c in model)
    path = RUNS_DIR / f"{plan.name}.{tag}.records.jsonl"
    configs = build_grid(
        model, [(r, r) for r in plan.resolutions], [None], plan.sweep_batches, ["eager"], threads=1
    )
    print(f"sweep: {len(configs)} configs of {model} -> {path} (resumes; skips what is recorded)")
    torch.set_num_threads(1)
    run_sweep(
        model,
        configs,
        path,
        "fashion-mnist",
        eval_limit=plan.eval_limit,
        timing=plan.timing,
        isolate=False,
        progress=progress,
    )
    return path


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One ``vitres serve`` process on loopback."""

    def __init__(
        self, label: str, model: str, extra: list[str], records: Path, slo_ms: float, logs: Path
    ):
        self.label = label
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / ("".join(c if c.isalnum() else "_" for c in label) + ".log")
        self.command = [
            sys.executable,
            "-m",
            "vitres.cli",
            "serve",
            "--model",
            model,
            "--records",
            str(records),
            "--slo-ms",
            f"{slo_ms:g}",
            "--threads",
            "1",
            "--rollback-window",
            "0",
            "--timeout",
            f"{SERVER_TIMEOUT_S:g}",
            "--no-progress",
            "--port",
            str(self.port),
            *extra,
        ]
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT)
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited at startup:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} did not come up in {timeout_s:g} s:\n{self.log_tail()}")

    def drain(self, timeout_s: float = 30.0) -> None:
        """Waits until nothing is queued (between runs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).json()["queue_depth"] == 0:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        time.sleep(1.0)

    def stop(self) -> int:
        """SIGTERM, then the exit status (0 = graceful)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        self._log.close()
        return self.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


# --------------------------------------------------------------------------- client

# the client gives up on a request after this long; the server answers every request it
# has read within its own --timeout (5 s, then 504), so a client timeout means the
# request waited more than 5 s before the server's handler ever saw it
CLIENT_TIMEOUT_S = 10.0
SERVER_TIMEOUT_S = 5.0
# the most requests the client keeps outstanding; a server that holds more unanswered
# (fixed's 4096-deep queue under overload) has the rest counted "not sent"
CLIENT_MAX_IN_FLIGHT = 1024


def process_cpu_s(pid: int, thread: int | None = None) -> float | None:
    """CPU seconds (user + system) of a process, or of one of its threads; ``None`` where
    ``/proc`` cannot tell."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shed_counts(base: str) -> dict[str, float]:
    """The server's ``vitres_shed_total`` by reason (from ``/metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vitres_shed_total"
    }


@dataclass
class Run:
    """One controller at one rate (the counted part, after the warm-up)."""

    controller: str
    rate: float
    offered: int = 0
    answered: int = 0
    shed: int = 0
    other_status: dict = field(default_factory=dict)
    client_timeout: int = 0
    no_response: int = 0
    not_sent: int = 0
    errors: dict = field(default_factory=dict)
    latencies_ms: list = field(default_factory=list)
    shed_latencies_ms: list = field(default_factory=list)
    server_ms: list = field(default_factory=list)
    correct: int = 0
    resolutions: list = field(default_factory=list)
    batch_sizes: list = field(default_factory=list)
    lag_ms: list = field(default_factory=list)
    duration_s: float = 0.0
    server_cpu_ms_per_request: float | None = None
    server_loop_cpu_ms_per_request: float | None = None
    client_cpu_ms_per_request: float | None = None
    shed_reasons: dict = field(default_factory=dict)

    def summary(self, slo_ms: float) -> dict:
        lat = np.asarray(self.latencies_ms, dtype=float)

        def pct(values: np.ndarray | list, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        within = int(np.sum(lat <= slo_ms)) if len(lat) else 0
        sides = np.asarray(self.resolutions, dtype=float)
        offered = self.offered
        return {
            "controller": self.controller,
            "rate": self.rate,
            "offered": offered,
            "sent": offered - self.not_sent,
            "answered": self.answered,
            "answered_fraction": self.answered / offered if offered else None,
            "shed": self.shed,
            "shed_fraction": self.shed / offered if offered else None,
            "shed_reasons": self.shed_reasons,
            "other_status": self.other_status,
            "client_timeout": self.client_timeout,
            "no_response": self.no_response,
            "not_sent": self.not_sent,
            "transport_errors": self.errors,
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "p99_ms": pct(lat, 99),
            "shed_p99_ms": pct(self.shed_latencies_ms, 99),
            "server_p99_ms": pct(self.server_ms, 99),
            "throughput_rps": self.answered / self.duration_s if self.duration_s else None,
            "slo_attainment": within / offered if offered else None,
            "accuracy": self.correct / self.answered if self.answered else None,
            "mean_resolution": float(sides.mean()) if len(sides) else None,
            "resolution_counts": {
                str(int(s)): int(c) for s, c in zip(*np.unique(sides, return_counts=True))
            },
            "mean_batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else None,
            "client_lag_p99_ms": pct(self.lag_ms, 99),
            "server_cpu_ms_per_request": self.server_cpu_ms_per_request,
            "server_loop_cpu_ms_per_request": self.server_loop_cpu_ms_per_request,
            "client_cpu_ms_per_request": self.client_cpu_ms_per_request,
        }


def drive(
    server: ServerProcess,
    controller: str,
    rate: float,
    plan: Plan,
    bodies: list[bytes],
    labels: list[int],
    seed: int,
    max_in_flight: int = CLIENT_MAX_IN_FLIGHT,
) -> Run:
    """Poisson arrivals at ``rate`` for ``warmup + duration`` s (open loop, raw HTTP/1.1
    keep-alive: :mod:`vitres.measure.http_load`); counts the part after the warm-up."""
    schedule = poisson_schedule(rate, plan.warmup_s + plan.duration_s, len(bodies), seed)
    pid = server.process.pid if server.process is not None else None
    cpu_before = None if pid is None else (process_cpu_s(pid), process_cpu_s(pid, pid))
    shed_before = shed_counts(server.base)
    load = run_load(
        "127.0.0.1",
        server.port,
        "/v1/classify",
        schedule,
        bodies,
        content_type="image/png",
        timeout_s=CLIENT_TIMEOUT_S,
        max_in_flight=max_in_flight,
    )
    cpu_after = None if pid is None else (process_cpu_s(pid), process_cpu_s(pid, pid))
    shed_after = shed_counts(server.base)
    run = Run(controller, rate, duration_s=plan.duration_s)
    sent_all = len(schedule) - load.counts["not_sent"]
    if cpu_before and cpu_after and None not in (*cpu_before, *cpu_after) and sent_all:
        run.server_cpu_ms_per_request = 1000.0 * (cpu_after[0] - cpu_before[0]) / sent_all
        run.server_loop_cpu_ms_per_request = 1000.0 * (cpu_after[1] - cpu_before[1]) / sent_all
    run.client_cpu_ms_per_request = load.client_cpu_ms_per_request
    run.shed_reasons = {
        k: int(shed_after.get(k, 0) - shed_before.get(k, 0))
        for k in shed_after
        if shed_after.get(k, 0) - shed_before.get(k, 0)
    }
    for item, result in zip(schedule, load.results):
        if result.due_s < plan.warmup_s:
            continue
        run.offered += 1
        if result.outcome == "not_sent":
            run.not_sent += 1
            continue
        run.lag_ms.append(1000.0 * (result.send_lag_s or 0.0))
        if result.outcome == "timeout":
            run.client_timeout += 1
            continue
        if result.outcome != "response":
            run.no_response += 1
            kind = result.outcome + ": " + result.error.split(":")[0]
            run.errors[kind] = run.errors.get(kind, 0) + 1
            continue
        latency_ms = 1000.0 * result.latency_s
        if result.status == 200:
            answer = json.loads(result.body)
            run.answered += 1
            run.latencies_ms.append(latency_ms)
            run.server_ms.append(answer["latency_ms"])
            run.correct += int(answer["index"] == labels[item.body])
            run.resolutions.append(answer["resolution"][0])
            run.batch_sizes.append(answer["batch_size"])
        elif result.status == 503:
            run.shed += 1
            run.shed_latencies_ms.append(latency_ms)
        else:
            key = str(result.status)
            run.other_status[key] = run.other_status.get(key, 0) + 1
    return run


# --------------------------------------------------------------------------- sweep of rates


def rate_grid(plan: Plan) -> list[float]:
    rates, rate = [], plan.start_rate
    while rate <= plan.max_rate + 1e-9:
        rates.append(round(rate, 1))
        rate *= plan.rate_step
    return rates


def best_fixed(rows: list[dict], rate: float) -> dict | None:
    """The fixed batch with the highest SLO attainment at ``rate`` (then the lowest p99)."""
    at = [r for r in rows if r["controller"].startswith("fixed") and r["rate"] == rate]
    if not at:
        return None
    return max(at, key=lambda r: (r["slo_attainment"] or 0.0, -(r["p99_ms"] or float("inf"))))


def breaks(row: dict, slo_ms: float) -> bool:
    return row["p99_ms"] is None or row["p99_ms"] > slo_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run that checks it works")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="latency objective (50)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to serve ({DEFAULT_MODEL})")
    parser.add_argument(
        "--res", help="resolutions to sweep and serve, e.g. 16,28,56 (default: the plan's)"
    )
    parser.add_argument(
        "--plan", choices=("full", "real"), default="full",
        help="real: the grid for the real DINOv2-S/14 classifier (--model its checkpoint)",
    )  # fmt: skip
    parser.add_argument(
        "--fixed", default="native", help="the fixed controller's size (native, or e.g. 224)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    plan = QUICK if args.quick else REAL if args.plan == "real" else FULL
    if args.res:
        plan = replace(plan, resolutions=tuple(int(r) for r in args.res.split(",")))
    model = args.model
    slo = args.slo_ms
    started = time.time()
    load_before = os.getloadavg()

    records = sweep_records(plan, model, progress=not args.no_progress)
    accuracy = {
        m.config.resolution[0]: m.accuracy
        for m in read_results(records)
        if m.ok and m.config.batch_size == 1 and m.accuracy is not None
    }
    print("sweep accuracy:", {k: round(v, 4) for k, v in sorted(accuracy.items())})

    test = load_fashion_mnist("test")
    bodies, labels = [], []
    for i in range(plan.images):
        buffer = io.BytesIO()
        Image.fromarray(test.images[i, 0].numpy()).save(buffer, "PNG")
        bodies.append(buffer.getvalue())
        labels.append(int(test.labels[i]))

    logs = Path(tempfile.mkdtemp(prefix="vitres-serve-load-"))
    rows: list[dict] = []
    exits: dict[str, int] = {}
    rates = rate_grid(plan)

    def run_at(server: ServerProcess, label: str, rate: float) -> dict:
        seed = args.seed * 1000 + int(rate * 10)
        run = drive(server, label, rate, plan, bodies, labels, seed)
        server.drain()
        row = run.summary(slo)
        rows.append(row)
        print(
            f"  {label:>16} @ {rate:7.1f}/s: answered {row['answered_fraction']:.1%}, "
            f"shed {row['shed_fraction']:.1%}, no response {row['no_response']}, "
            f"client timeouts {row['client_timeout']}, not sent {row['not_sent']}, "
            f"p99 {row['p99_ms'] or float('nan'):8.1f} ms, acc "
            f"{(row['accuracy'] or 0):.3f}, res {row['mean_resolution'] or 0:.1f}, "
            f"batch {row['mean_batch'] or 0:.1f}, server CPU "
            f"{_fmt(row['server_cpu_ms_per_request'], '.2f')} ms/req, client "
            f"{_fmt(row['client_cpu_ms_per_request'], '.2f')} ms/req",
            flush=True,
        )
        return row

    # 1. each fixed batch climbs until its own p99 breaks; fixed breaks where all have
    break_rate: dict[int, float | None] = {}
    fixed_servers = {}
    for batch in plan.fixed_batches:
        label = f"fixed:{args.fixed}/b{batch}"
        server = ServerProcess(
            label,
            model,
            [
                "--controller",
                f"fixed:{args.fixed}",
                "--max-batch",
                str(batch),
                "--queue-limit",
                "4096",
            ],  # fmt: skip
            records,
            slo,
            logs,
        )
        print(f"{label}: starting")
        server.start()
        fixed_servers[batch] = server
        break_rate[batch] = None
        for rate in rates:
            row = run_at(server, label, rate)
            if breaks(row, slo):
                break_rate[batch] = rate
                break
    broke = [r for r in break_rate.values() if r is not None]
    fixed_never_broke = len(broke) < len(break_rate)
    fixed_break = max(broke) if broke and not fixed_never_broke else rates[-1]
    extra = [round(fixed_break * 1.5, 1), round(fixed_break * 2.0, 1)]
    grid = sorted({r for r in rates if r <= fixed_break} | set(extra))
    # 2. every fixed batch at the rates it has not run (up to 2x the breaking rate)
    for batch, server in fixed_servers.items():
        label = f"fixed:{args.fixed}/b{batch}"
        done = {r["rate"] for r in rows if r["controller"] == label}
        for rate in grid:
            if rate not in done:
                run_at(server, label, rate)
        exits[label] = server.stop()
    # 3. predictive at every rate
    server = ServerProcess(
        "predictive",
        model,
        ["--controller", "predictive", "--max-batch", str(max(plan.sweep_batches))],
        records,
        slo,
        logs,
    )
    print("predictive: starting")
    server.start()
    for rate in grid:
        run_at(server, "predictive", rate)
    exits["predictive"] = server.stop()

    # --------------------------------------------------------------- verdicts
    light = grid[0]
    fixed_light = best_fixed(rows, light)
    top = grid[-1]
    pred = {r["rate"]: r for r in rows if r["controller"] == "predictive"}
    at_top = pred[top]
    acc_gap = None
    if at_top["accuracy"] is not None and fixed_light and fixed_light["accuracy"] is not None:
        acc_gap = 100.0 * (fixed_light["accuracy"] - at_top["accuracy"])
    no_response = sum(r["no_response"] + r["client_timeout"] for r in rows)
    not_sent = sum(r["not_sent"] for r in rows)
    shedding = [r["rate"] for r in pred.values() if (r["shed_fraction"] or 0) > 0.01]
    targets = {
        "p99_within_slo_at_2x": bool(at_top["p99_ms"] is not None and at_top["p99_ms"] <= slo),
        "answered_at_least_95pct_at_2x": bool((at_top["answered_fraction"] or 0) >= 0.95),
        "accuracy_within_1pt_of_fixed_light": bool(acc_gap is not None and acc_gap <= 1.0),
        "zero_without_response": no_response == 0,
        "clean_exits": all(code == 0 for code in exits.values()),
    }
    result = {
        "benchmark": "serve_load",
        "mode": "quick" if args.quick else "full",
        "model": model,
        "slo_ms": slo,
        "plan": {
            k: (v.as_kwargs() if isinstance(v, TimingConfig) else v)
            for k, v in plan.__dict__.items()
        },
        "sweep_accuracy": accuracy,
        "fixed_break_rate": fixed_break,
        "fixed_never_broke": fixed_never_broke,
        "fixed_break_rate_per_batch": {str(k): v for k, v in break_rate.items()},
        "rates": grid,
        "rows": rows,
        "predictive_sheds_from": shedding[0] if shedding else None,
        "accuracy_gap_points": acc_gap,
        "requests_without_response": no_response,
        "client_timeouts": sum(r["client_timeout"] for r in rows),
        "requests_not_sent": not_sent,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "client_max_in_flight": CLIENT_MAX_IN_FLIGHT,
        "server_timeout_s": SERVER_TIMEOUT_S,
        "exit_codes": exits,
        "targets": targets,
        "environment": environment(
            cores=os.cpu_count(),
            # the cores this run may use (e.g. under taskset), shared by client and server
            cores_usable=len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            server_threads=1,
            load_average_1min_before_after=[
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        ),
        "wall_s": time.time() - started,
        "command": "python benchmarks/serve_load.py" + (" --quick" if args.quick else ""),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS_DIR / f"{plan.name}.json", result)
    write_markdown(RESULTS_DIR / f"{plan.name}.md", markdown(result))
    plot(result, RESULTS_DIR / f"{plan.name}.png")
    print(verdict_text(result))
    print(f"wrote {RESULTS_DIR / plan.name}.{{json,md,png}}; server logs in {logs}")
    return 0


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def no_answer(row: dict) -> str:
    """Requests without a response, with client timeouts (t) and not sent (n) apart."""
    text = str(row["no_response"] + row["client_timeout"])
    extra = [f"{row[k]} {m}" for k, m in (("client_timeout", "t"), ("not_sent", "n")) if row[k]]
    return text + (f" ({', '.join(extra)})" if extra else "")


def verdict_text(result: dict) -> str:
    slo, t = result["slo_ms"], result["targets"]
    top = result["rates"][-1]
    at_top = next(r for r in result["rows"] if r["controller"] == "predictive" and r["rate"] == top)

    def mark(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    broke = (
        f"fixed's p99 first exceeds {slo:g} ms at {result['fixed_break_rate']:g} req/s"
        if not result["fixed_never_broke"]
        else f"fixed did not break up to {result['fixed_break_rate']:g} req/s (the sweep's top)"
    )
    gap = result["accuracy_gap_points"]
    lines = [
        f"{broke}; 2x = {top:g} req/s",
        f"[{mark(t['p99_within_slo_at_2x'])}] predictive p99 at {top:g} req/s: "
        f"{_fmt(at_top['p99_ms'], '.1f')} ms (SLO {slo:g} ms)",
        f"[{mark(t['answered_at_least_95pct_at_2x'])}] predictive answered at {top:g} req/s: "
        f"{_fmt(at_top['answered_fraction'], '.1%')} (target >= 95 %)",
        f"[{mark(t['accuracy_within_1pt_of_fixed_light'])}] predictive accuracy at {top:g} req/s "
        f"is {_fmt(gap, '.2f')} points below fixed at light load (target <= 1)",
        f"[{mark(t['zero_without_response'])}] requests without a response: "
        f"{result['requests_without_response']} (every rate, every controller; of them "
        f"{result['client_timeouts']} client timeouts after {result['client_timeout_s']:g} s)",
        f"requests not sent: {result['requests_not_sent']}"
        + (
            f" (the client's limit of {result['client_max_in_flight']} outstanding was "
            "reached: the server held that many unanswered)"
            if result["requests_not_sent"]
            else ""
        ),
        f"[{mark(t['clean_exits'])}] every server exited 0 on SIGTERM: {result['exit_codes']}",
        "predictive starts shedding (> 1 %) at "
        + (
            f"{result['predictive_sheds_from']:g} req/s"
            if result["predictive_sheds_from"]
            else "no rate of the sweep"
        ),
    ]
    return "\n".join(lines)


RATE_TABLE_HEADER = (
    "rate (req/s)",
    "controller",
    "answered",
    "shed",
    "no resp.",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "server p99 ms",
    "503 p99 ms",
    "SLO att.",
    "thr. (req/s)",
    "accuracy",
    "mean res",
    "mean batch",
    "server CPU ms/req",
    "client CPU ms/req",
)


def _rate_row_cells(row: dict) -> list[str]:
    """The cells of one controller at one rate, after its rate and name."""
    return [
        _fmt(row["answered_fraction"], ".1%"),
        _fmt(row["shed_fraction"], ".1%"),
        no_answer(row),
        _fmt(row["p50_ms"], ".1f"),
        _fmt(row["p95_ms"], ".1f"),
        _fmt(row["p99_ms"], ".1f"),
        _fmt(row["server_p99_ms"], ".1f"),
        _fmt(row["shed_p99_ms"], ".1f"),
        _fmt(row["slo_attainment"], ".1%"),
        _fmt(row["throughput_rps"], ".0f"),
        _fmt(row["accuracy"], ".3f"),
        _fmt(row["mean_resolution"], ".1f"),
        _fmt(row["mean_batch"], ".1f"),
        _fmt(row["server_cpu_ms_per_request"], ".2f"),
        _fmt(row["client_cpu_ms_per_request"], ".2f"),
    ]


def markdown(result: dict) -> str:
    slo = result["slo_ms"]
    env = result["environment"]
    head = (
        "quick mode (a check that the benchmark runs, not its result)"
        if result["mode"] == "quick"
        else "full run"
    )
    lines = [
        "# Serving under load: predictive batch x resolution vs fixed:native",
        "",
        f"`{result['command']}` -- {head}. Model `{result['model']}`, SLO {slo:g} ms, "
        f"server 1 thread, CPU {env['cpu']} ({env.get('cores_usable', env['cores'])} of its "
        f"{env['cores']} cores, shared by server and client), "
        f"torch {env['torch']}, load average {env.get('load_average_1min_before_after')} "
        "(1 min, before / after; other work on the machine shows here).",
        "",
        "```",
        verdict_text(result),
        "```",
        "",
        "Sweep accuracy by resolution (Fashion-MNIST test, first "
        f"{result['plan']['eval_limit']}): "
        + ", ".join(f"{k} px {v:.1%}" for k, v in sorted(result["sweep_accuracy"].items())),
        "",
    ]
    cells = []
    for rate in result["rates"]:
        best = best_fixed(result["rows"], rate)
        for row in sorted(
            (r for r in result["rows"] if r["rate"] == rate), key=lambda r: r["controller"]
        ):
            name = row["controller"] + (" (best fixed)" if row is best else "")
            cells.append([f"{rate:g}", name, *_rate_row_cells(row)])
    lines += markdown_table(RATE_TABLE_HEADER, cells, "rl" + "r" * 15)
    lines += [
        "",
        "Answered = 200 with a prediction, and shed = 503 (Retry-After), as fractions of the "
        "requests offered (scheduled after the warm-up). No resp. = requests the server did "
        'not answer: the connection closed or reset first, refused, or garbled ("t": of '
        f"them, client timeouts after {result['client_timeout_s']:g} s, i.e. more than the "
        f"server's own {result['server_timeout_s']:g} s spent before its handler saw the "
        'request; "n": not sent, and not in the count: the client already had '
        f"{result['client_max_in_flight']} requests outstanding, which the server held "
        "unanswered). Latency from the moment a request was due (open loop). SLO attainment "
        "= answered within the SLO / offered. "
        "Server p99 = the server's own arrival-to-answer time (from the handler's start), so "
        "p99 minus server p99 is time spent outside the handler (connection, event loop, "
        "client). 503 p99 = how fast shed requests heard so. Server CPU = the server "
        "process's CPU time (all threads) per request sent, client CPU the load client's "
        "(raw HTTP/1.1 keep-alive, `vitres.measure.http_load`). Fixed runs with a 4096-deep "
        "queue; other statuses (504 after 5 s) and the shed reasons are in the JSON.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo, rates, rows = result["slo_ms"], result["rates"], result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    pred = [
        next(r for r in rows if r["controller"] == "predictive" and r["rate"] == x) for x in rates
    ]
    best = [best_fixed(rows, x) for x in rates]
    for label in sorted({r["controller"] for r in rows if r["controller"].startswith("fixed")}):
        own = sorted((r for r in rows if r["controller"] == label), key=lambda r: r["rate"])
        ax1.plot([r["rate"] for r in own], [r["p99_ms"] for r in own], ":", alpha=0.4, label=label)
    ax1.plot(rates, [r["p99_ms"] for r in best], "s-", color="tab:red", label="best fixed p99")
    ax1.plot(rates, [r["p99_ms"] for r in pred], "o-", color="tab:blue", label="predictive p99")
    ax1.plot(
        rates,
        [r["p50_ms"] for r in pred],
        "o--",
        color="tab:blue",
        alpha=0.5,
        label="predictive p50",
    )
    ax1.plot(
        rates,
        [r["server_p99_ms"] for r in pred],
        "o:",
        color="tab:purple",
        label="predictive p99, server side",
    )
    ax1.axhline(slo, color="black", lw=1, label=f"SLO {slo:g} ms")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("offered load (requests/s, Poisson)")
    ax1.set_ylabel("latency of answered requests (ms)")
    ax1.legend(fontsize=7)
    ax1.set_title("latency vs rate")
    ax2.plot(
        rates,
        [r["answered_fraction"] for r in pred],
        "o-",
        color="tab:blue",
        label="predictive answered",
    )
    ax2.plot(
        rates,
        [r["slo_attainment"] for r in pred],
        "o--",
        color="tab:blue",
        alpha=0.6,
        label="predictive SLO attainment",
    )
    ax2.plot(
        rates,
        [r["slo_attainment"] for r in best],
        "s--",
        color="tab:red",
        label="best fixed SLO attainment",
    )
    ax2.plot(
        rates, [r["accuracy"] for r in pred], "^-", color="tab:green", label="predictive accuracy"
    )
    ax2.set_xscale("log")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("offered load (requests/s)")
    ax2.legend(fontsize=7)
    ax2.set_title("answers, SLO attainment, accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""``vitres serve --ray`` against the standalone server: the same answers, the same errors,
metrics that add up, a clean SIGTERM, and throughput / latency / shedding per replica count.

Setup. A short sweep of ``fmnist-vit-multires`` (accuracy on Fashion-MNIST test images,
latency at a few batch sizes, eager fp32, 1 thread) gives every server its latency model
(``benchmarks/serve_load.py``'s sweep and client, reused). Servers, each a real process on
loopback with the same settings (1 thread per server or replica, monitoring off, request
timeout 5 s, ``--max-bytes 200000``):

* ``standalone`` -- ``vitres serve``;
* ``ray xN`` -- ``vitres serve --ray --ray-cpus C --replicas N``: a local Ray instance, N
  replicas behind Serve's proxy;
* ``empty ray xN`` -- for comparison, a Serve deployment of N replicas that answers at
  once without a model: what Serve's proxy and routing alone cost on this machine.

For every Ray deployment the script checks, and records pass / fail:

1. **answers**: the first ``images`` test images get the same label, index, resolution and
   top-k (probabilities within 1e-5) as from the standalone server;
2. **errors**: a corrupt image 400 ``bad_image``, ``top_k=0`` 400 ``bad_query``, a 300 kB
   body 413 ``too_large``, ``GET /v1/classify`` 405 with ``Allow: POST``;
3. **load**: open-loop Poisson arrivals at each rate (the client of ``serve_load.py``):
   answered / shed fractions, p50 / p99, throughput, mean resolution and batch size, and
   requests without any response (must be 0);
4. **metrics**: ``/metrics`` has the standalone server's metric names, one ``replica``
   label value per replica, and its ``vitres_requests_total`` summed over replicas equals
   what the client received, per outcome (after at most a few publishing intervals);
5. **shutdown**: an upload still arriving when SIGTERM comes is answered 200; the command
   exits 0 and prints its summary; no process it started is left.

Client, servers and Ray share this machine's cores, so the numbers say what the layers
cost here, not what a cluster gives (see ``MULTI_NODE_NOTES``, written to the results).

Usage::

    .venv/bin/python benchmarks/ray_serve.py            # replicas 1, 2, 4 (cores allowing)
    .venv/bin/python benchmarks/ray_serve.py --quick    # replicas 2, two short rates

Writes ``benchmarks/results/ray_serve.{json,md}`` (``--quick``: ``ray_serve_quick.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

from benchmarks._common import RESULTS_DIR, environment, markdown_table, write_json, write_markdown
from benchmarks.serve_load import QUICK, ServerProcess, drive, free_port, sweep_records
from vitres.data import load_fashion_mnist
from vitres.serve.metrics import REPLICA_LABEL
from vitres.tune.ray_executor import physical_cores

MODEL = "fmnist-vit-multires"
MAX_BATCH = 8

# What changes on a real multi-node cluster (Ray documentation, docs.ray.io: Serve
# "Architecture", "Add End-to-End Fault Tolerance", ray.serve.start / HTTPOptions,
# "Resources", "Environment Dependencies").
MULTI_NODE_NOTES = [
    "Serve starts an HTTP proxy on every node that holds a replica (serve.start's default "
    "proxy_location), all on the same --port; clients or a load balancer in front of the "
    "nodes pick a proxy, and each proxy routes to any replica, also on another node. Pass "
    "--host 0.0.0.0 so the proxies accept connections from outside their node.",
    "A request routed to a replica on another node crosses the network once more; the "
    "latency model (sweep records) and the SLO clock start at the replica, so that hop is "
    "outside the SLO the policy holds. Sweep each machine kind and serve it with its own "
    "records (vitres.tune.hostkind) when the nodes differ; the per-replica warm-up seeds the "
    "online correction with each node's own speed.",
    "Ray's CPUs are logical: a replica's num_cpus only keeps a node from taking more "
    "replicas than it declares. Start every node with `ray start --num-cpus=<physical "
    "cores>` so replicas' threads do not share cores; here all replicas share one machine.",
    "Every node needs vitres and the model weights (a container image or a runtime_env); "
    "a node whose checkpoint differs from the driver's refuses to start its replica. The "
    "records travel with the deployment from the driver, so nodes need no records file.",
    "The Serve controller health-checks each replica (here: is the batching thread alive) "
    "and replaces one that fails; requests in flight on a lost replica or node get an error "
    "from the proxy, not a retry. The head node holds Ray's control store (GCS): without "
    "GCS fault tolerance (an external Redis), losing the head stops the cluster.",
    "The metrics hub is an actor owned by the `vitres serve --ray` driver: keep the driver "
    "running for the deployment's lifetime (it is also what stops the deployment on "
    "SIGTERM); if it dies, /metrics falls back to the answering replica's own numbers.",
]


@dataclass(frozen=True)
class Plan:
    """Everything that differs between the real run and ``--quick``."""

    name: str
    replicas: tuple[int, ...]
    rates: tuple[float, ...]
    duration_s: float
    warmup_s: float
    images: int


FULL = Plan("ray_serve", (1, 2, 4), (25, 50, 100, 200, 400), 15.0, 2.0, 2000)
QUICK_PLAN = Plan("ray_serve_quick", (2,), (3, 8), 4.0, 0.5, 200)
SWEEP = replace(QUICK, name="ray_serve", resolutions=(16, 28, 40), sweep_batches=(1, 4, 8))


def png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def summed(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def same_answer(got: dict, want: dict) -> bool:
    keys = ("label", "index", "resolution", "controller")
    probabilities = zip(got["top_k"], want["top_k"])
    return (
        all(got[k] == want[k] for k in keys)
        and [t["index"] for t in got["top_k"]] == [t["index"] for t in want["top_k"]]
        and all(abs(a["probability"] - b["probability"]) <= 1e-5 for a, b in probabilities)
    )


def error_checks(base: str, body: bytes) -> dict[str, bool]:
    """Bad input through the server: the standalone server's statuses and kinds."""
    post = f"{base}/v1/classify"
    corrupt = httpx.post(post, content=body[:60], timeout=30)
    query = httpx.post(f"{post}?top_k=0", content=body, timeout=30)
    big = httpx.post(post, content=b"\0" * 300_000, timeout=30)
    wrong = httpx.get(post, timeout=30)
    return {
        "corrupt_400": corrupt.status_code == 400 and corrupt.json()["error"] == "bad_image",
        "top_k_400": query.status_code == 400 and query.json()["error"] == "bad_query",
        "too_large_413": big.status_code == 413 and big.json()["error"] == "too_large",
        "get_405": wrong.status_code == 405 and "POST" in wrong.headers.get("allow", ""),
    }


def slow_upload_across_sigterm(server: ServerProcess, body: bytes) -> int | None:
    """Sends one upload, SIGTERMs the server mid-body, finishes it; its status code."""
    uploading, release, result = threading.Event(), threading.Event(), {}

    def chunks():
        yield body[:20]
        uploading.set()
        release.wait(20)
        yield body[20:]

    def send() -> None:
        try:
            result["status"] = httpx.post(
                f"{server.base}/v1/classify", content=chunks(), timeout=60
            ).status_code
        except httpx.HTTPError:
            result["status"] = None

    sender = threading.Thread(target=send)
    sender.start()
    uploading.wait(10)
    time.sleep(0.5)  # the request reaches its replica
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    release.set()
    sender.join(60)
    return result.get("status")


def empty_deployment_rows(
    replicas: int, plan: Plan, load_plan, bodies: list[bytes], labels: list[int], slo_ms: float
) -> list[dict]:
    """The same client against a Serve deployment that answers at once without a model:
    what Ray Serve's proxy and routing cost on this machine, apart from vitres."""
    import ray
    from ray import serve

    from vitres.serve.config import ServeConfig
    from vitres.serve.ray_serve import max_ongoing_requests

    port = free_port()

    @serve.deployment(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=max_ongoing_requests(ServeConfig(model="", max_batch=MAX_BATCH)),
    )
    class Empty:
        async def __call__(self, request: Any) -> dict:
            await request.body()  # the body travels as for the real deployment
            return {"index": -1, "resolution": [0, 0], "batch_size": 1, "latency_ms": 0.0}

    ray.init(num_cpus=replicas, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Empty.bind(), name="empty", route_prefix="/")
        rows = []
        for rate in plan.rates:
            label = f"empty ray x{replicas}"
            run = asyncio.run(
                drive(f"http://127.0.0.1:{port}", label, rate, load_plan, bodies, labels, 0)
            )
            rows.append(run.summary(slo_ms))
            print(f"  {label} @ {rate:g}/s: p50 {rows[-1]['p50_ms'] or float('nan'):.1f} ms")
        return rows
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run that checks it works")
    parser.add_argument(
        "--slo-ms",
        type=float,
        help="latency objective (default 50; --quick: 2000, as it runs beside other work)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan = QUICK_PLAN if args.quick else FULL
    if args.slo_ms is None:
        args.slo_ms = 2000.0 if args.quick else 50.0
    cores = physical_cores()
    replica_counts = [n for n in plan.replicas if n <= max(cores, min(plan.replicas))]
    started, load_before = time.time(), os.getloadavg()
    records = sweep_records(SWEEP, MODEL, progress=True)
    test = load_fashion_mnist("test")
    bodies = [png(test.images[i]) for i in range(plan.images)]
    labels = [int(test.labels[i]) for i in range(plan.images)]
    check_images = bodies[:8]
    logs = Path(tempfile.mkdtemp(prefix="vitres-ray-serve-"))
    common = ["--max-batch", str(MAX_BATCH), "--max-bytes", "200000"]
    load_plan = replace(SWEEP, duration_s=plan.duration_s, warmup_s=plan.warmup_s)

    def load(server: ServerProcess, label: str) -> list[dict]:
        rows = []
        for rate in plan.rates:
            run = asyncio.run(
                drive(server.base, label, rate, load_plan, bodies, labels, args.seed + int(rate))
            )
            server.drain()
            row = run.summary(args.slo_ms)
            rows.append(row)
            print(
                f"  {label} @ {rate:g}/s: answered {row['answered_fraction']:.1%}, shed "
                f"{row['shed_fraction']:.1%}, no response {row['no_response']}, p99 "
                f"{row['p99_ms'] or float('nan'):.1f} ms, {row['throughput_rps'] or 0:.1f}/s",
                flush=True,
            )
        return rows

    print("standalone: starting")
    standalone = ServerProcess("standalone", MODEL, common, records, args.slo_ms, logs)
    standalone.start()
    expected = [
        httpx.post(f"{standalone.base}/v1/classify", content=b, timeout=30).json()
        for b in check_images
    ]
    standalone_metrics = httpx.get(f"{standalone.base}/metrics", timeout=30).text
    result_rows = load(standalone, "standalone")
    exits = {"standalone": standalone.stop()}
    deployments = []
    for replicas in replica_counts:
        label = f"ray x{replicas}"
        extra = ["--ray", "--ray-cpus", str(max(replicas, 1)), "--replicas", str(replicas)]
        server = ServerProcess(label, MODEL, [*common, *extra], records, args.slo_ms, logs)
        print(f"{label}: starting (a local Ray instance)")
        t0 = time.monotonic()
        server.start(timeout_s=300)
        startup_s = time.monotonic() - t0
        assert server.process is not None
        children = psutil.Process(server.process.pid).children(recursive=True)
        checks: dict[str, bool] = {}
        answers = [
            httpx.post(f"{server.base}/v1/classify", content=b, timeout=30) for b in check_images
        ]
        checks["same_answers"] = all(
            r.status_code == 200 and same_answer(r.json(), e) for r, e in zip(answers, expected)
        )
        checks.update(error_checks(server.base, check_images[0]))
        rows = load(server, label)
        result_rows += rows
        checks["every_request_answered"] = all(r["no_response"] == 0 for r in rows)
        client_counts = {
            "ok": len(answers) + sum(r["answered"] for r in rows),
            "bad_request": 2,
            "too_large": 1,
            "shed": sum(r["shed"] for r in rows),
        }
        # warm-up requests of each rate are answered but not counted by the client
        deadline, text = time.monotonic() + 15, ""
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.base}/metrics", timeout=30).text
            counted = {k: summed(text, "vitres_requests_total", outcome=k) for k in client_counts}
            if counted["bad_request"] == 2 and counted["ok"] >= client_counts["ok"]:
                break
            time.sleep(0.5)
        names = {f.name for f in text_string_to_metric_families(text)}
        replica_ids = {
            s.labels.get(REPLICA_LABEL)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        standalone_names = {f.name for f in text_string_to_metric_families(standalone_metrics)}
        checks["metric_names"] = names == standalone_names
        checks["one_label_per_replica"] = len(replica_ids - {None}) == replicas
        checks["errors_counted"] = counted["bad_request"] == 2 and counted["too_large"] == 1
        checks["answers_counted"] = counted["ok"] >= client_counts["ok"]
        checks["upload_across_sigterm_answered"] = (
            slow_upload_across_sigterm(server, check_images[1]) == 200
        )
        try:
            exits[label] = server.process.wait(120)
        except Exception:  # noqa: BLE001 - recorded as a failed check
            server.process.kill()
            exits[label] = server.process.wait()
        server._log.close()
        _, alive = psutil.wait_procs(children, timeout=30)
        for leftover in alive:
            leftover.kill()
        checks["exit_0"] = exits[label] == 0
        checks["summary_printed"] = "stopped on SIGTERM" in server.log_tail(20000)
        checks["no_process_left"] = not alive
        print(
            f"  {label}: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items())
        )
        deployments.append(
            {
                "label": label,
                "replicas": replicas,
                "startup_s": startup_s,
                "checks": checks,
                "server_counts": counted,
                "client_counts": client_counts,
            }
        )
    for replicas in replica_counts:
        print(f"empty ray x{replicas}: Ray Serve without a model, for comparison")
        result_rows += empty_deployment_rows(replicas, plan, load_plan, bodies, labels, args.slo_ms)
    result = {
        "benchmark": "ray_serve",
        "mode": "quick" if args.quick else "full",
        "model": MODEL,
        "slo_ms": args.slo_ms,
        "max_batch": MAX_BATCH,
        "plan": plan.__dict__,
        "rows": result_rows,
        "deployments": deployments,
        "exit_codes": exits,
        "all_checks_pass": all(all(d["checks"].values()) for d in deployments),
        "multi_node_notes": MULTI_NODE_NOTES,
        "environment": environment(
            physical_cores_usable=cores,
            ray=__import__("ray").__version__,
            load_average_1min_before_after=[
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        ),
        "wall_s": time.time() - started,
        "command": "python benchmarks/ray_serve.py" + (" --quick" if args.quick else ""),
    }
    write_json(RESULTS_DIR / f"{plan.name}.json", result)
    write_markdown(RESULTS_DIR / f"{plan.name}.md", markdown(result))
    print(f"all checks pass: {result['all_checks_pass']}")
    print(f"wrote {RESULTS_DIR / plan.name}.{{json,md}}; server logs in {logs}")
    return 0 if result["all_checks_pass"] else 1


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# `vitres serve --ray` vs standalone ({result['mode']})",
        "",
        f"`{result['command']}` on {env['cpu']} ({env['physical_cores_usable']} usable "
        f"core(s), load average {env['load_average_1min_before_after']}), Ray {env['ray']}, "
        f"torch {env['torch']}. Model {result['model']}, SLO {result['slo_ms']:g} ms, batches "
        f"up to {result['max_batch']}, 1 thread per server or replica. Client, servers and Ray "
        "share these cores: the numbers show what the layers cost here, not a cluster.",
        "",
    ]

    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (
        "server",
        "rate /s",
        "answered",
        "shed",
        "no response",
        "p50 ms",
        "p99 ms",
        "throughput /s",
        "mean res",
        "mean batch",
    )
    cells = (
        (
            r["controller"],
            f"{r['rate']:g}",
            num(r["answered_fraction"], ".1%"),
            num(r["shed_fraction"], ".1%"),
            r["no_response"],
            num(r["p50_ms"], ".1f"),
            num(r["p99_ms"], ".1f"),
            num(r["throughput_rps"], ".1f"),
            num(r["mean_resolution"], ".1f"),
            num(r["mean_batch"], ".2f"),
        )
        for r in result["rows"]
    )
    lines += markdown_table(header, cells, "l" + "r" * 9)
    lines += ["", "## Checks", ""]
    for d in result["deployments"]:
        passed = ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in d["checks"].items())
        lines.append(f"- **{d['label']}** (up in {d['startup_s']:.0f} s): {passed}")
    lines += ["", "## What changes on a real multi-node cluster", ""]
    lines += [f"- {note}" for note in result["multi_node_notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

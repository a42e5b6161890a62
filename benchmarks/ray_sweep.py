"""The same sweep locally and on a local two-node Ray cluster: wall time, per-config
overhead, and whether both lead to the same recommendation.

Setup: the bundled Fashion-MNIST ViT, eager fp32, batch 1, one thread per config, accuracy
on the first test images; every config measured in its own child process (the default)
in both runs.

1. Local: ``run_sweep`` in this process, one config after another.
2. Ray: a head node and one worker node started on this machine
   (``ray.cluster_utils.Cluster``, each node with ``--threads`` logical CPUs, i.e. one timed
   config per node at a time), and the same sweep with ``--ray <head address>``: every
   config a Ray task, the driver appending the records.
3. Per-config overhead of a Ray task: time from submission to result minus the time the
   task spent measuring (scheduling, worker start, argument and result transfer); and the
   slot time not spent measuring, ``(wall · slots − Σ task time) / configs``.
4. Agreement: accuracy per config (the same weights and images: must be identical),
   latency ratio Ray/local per config, and the recommendation under a latency budget set
   between the two middle local latencies.

    .venv/bin/python benchmarks/ray_sweep.py [--quick] [--threads 1] [--min-time 1.0]

Writes benchmarks/results/ray_sweep.{json,md} (``--quick``: ray_sweep_quick.*). The two
cluster nodes share this machine's cores with the driver and the local run's leftovers,
so on a 2-core box the Ray run's latencies are those of two configs timed at once.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_markdown
from vitres.measure import TimingConfig, env_fingerprint
from vitres.tune.grid import build_grid
from vitres.tune.ray_executor import RayExecutor
from vitres.tune.recommend import Budget, recommend
from vitres.tune.records import read_results
from vitres.tune.sweep import run_sweep

# What changes on a real multi-node cluster (Ray documentation, docs.ray.io: "Resources",
# "Environment Dependencies", "Task Fault Tolerance", "Fault tolerance").
MULTI_NODE_NOTES = [
    "Ray resources are logical and only used for admission control: num_cpus does not pin "
    "cores. Start every node with `ray start --num-cpus=<physical cores>` so the sum of the "
    "timed threads on a node never exceeds its cores; here both nodes share one machine's "
    "cores, which a real cluster does not.",
    "Code, weights and data must exist on every node (Ray expects dependencies on each "
    "node; install vitres in the nodes' image or pass a runtime_env with py_modules); the "
    "dataset path (--data-dir) is read on the node, and a node whose checkpoint differs from "
    "the driver's records an error instead of measuring other weights.",
    "Records then come from several machine kinds: each carries env.host_kind, and cost "
    "models / recommendations must be grouped by it (vitres.tune.hostkind.split_by_host); "
    "target one kind with custom resources (`ray start --resources '{\"edge_box\": 1}'` and "
    "`vitres sweep --ray-resources '{\"edge_box\": 1}'`).",
    "Losing a node is a system failure: Ray retries the task (max_retries=1 here) on another "
    "node with the resources; the head node (GCS) is a single point of failure unless GCS "
    "fault tolerance (an external Redis) is configured, and a lost driver ends its job's tasks "
    "(resume by re-running the sweep).",
    "Per-task overhead grows with the network: arguments and the result record travel through "
    "the object store; they are small here (a config and a record), so the overhead measured "
    "on one machine is a lower bound dominated by worker start-up (torch import).",
]


def native_key(records: dict, keys: list[str]) -> str:
    """The key of the record at the model's native resolution (else the largest)."""
    native = [k for k in keys if records[k].config.resolution == records[k].native_resolution]
    return native[0] if native else max(keys, key=lambda k: records[k].config.resolution)


def same_choice(choices: dict) -> bool:
    picked = [c.key if c is not None else None for c in choices.values()]
    return picked[0] is not None and len(set(picked)) == 1


def markdown_lines(
    report: dict[str, Any], label: dict[str, str], relative: dict[str, str], quick: bool
) -> list[str]:
    """The report as Markdown: local against Ray, measure by measure.

    Args:
        report: What :func:`main` writes as JSON.
        label: ``{"local", "ray"}`` -> the recommended resolution under the absolute budget.
        relative: The same under the budget relative to each run's native latency.
        quick: Whether the timing was the quick one.
    """

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    per, wall, ratios = (
        report["per_config_s"],
        report["wall_s"],
        report["latency_ratio_ray_over_local"],
    )
    agree, agree_relative = (
        report["same_recommendation"],
        report["same_recommendation_relative_budget"],
    )
    return [
        f"{report['model']}, {report['configs']} configs ({report['resolutions']} px), "
        f"{report['threads_per_config']} thread(s) each, "
        f"{'quick' if quick else 'full'} timing; CPU: {report['env']['cpu']}",
        "",
        *markdown_table(
            ("measure", "local", "Ray (head + 1 worker node)"),
            [
                (
                    "wall time",
                    seconds(wall["local"]),
                    f"{seconds(wall['ray'])} (+ {seconds(wall['cluster_start'])} cluster start)",
                ),
                ("wall per config", seconds(per["local_wall"]), seconds(per["ray_wall"])),
                ("task time per config (in the task)", "-", seconds(per["ray_task_mean"])),
                (
                    "Ray overhead per task: submit→result minus task time (median / max)",
                    "-",
                    f"{seconds(per['ray_overhead_median'])} / {seconds(per['ray_overhead_max'])}",
                ),
                ("slot time not measuring, per config", "-", seconds(per["ray_slot_overhead"])),
                ("tasks per node", "-", report["tasks_per_node"]),
                (
                    "accuracy identical per config",
                    "-",
                    "yes" if report["same_accuracy_every_config"] else "NO",
                ),
                (
                    "latency Ray/local (median over configs)",
                    "-",
                    f"{statistics.median(ratios.values()):.2f}×",
                )
                if ratios
                else ("latency Ray/local", "-", "-"),
                (
                    f"recommendation (max latency {report['budget_max_latency_ms']:.3f} ms)",
                    label["local"],
                    f"{label['ray']} ({'same' if agree else 'DIFFERENT'})",
                ),
                (
                    f"recommendation, budget {report['relative_budget_fraction_of_native']:.2f}× "
                    "each run's own native latency",
                    relative["local"],
                    f"{relative['ray']} ({'same' if agree_relative else 'DIFFERENT'})",
                ),
                (
                    "configs in the same latency order",
                    "-",
                    "yes" if report["same_latency_order"] else "NO",
                ),
            ],
        ),
        "",
        "On a real multi-node cluster (from Ray's documentation):",
        "",
        *[f"- {note}" for note in report["multi_node_notes"]],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 resolutions, short timing")
    parser.add_argument("--model", default="fmnist-vit-multires")
    parser.add_argument("--res", default="12:40:4", help="resolutions (ignored with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="threads per config = node CPUs")
    parser.add_argument("--min-time", type=float, default=1.0, help="timed seconds per config")
    parser.add_argument("--eval-limit", type=int, default=2000)
    parser.add_argument("--work-dir", default="runs/ray_sweep")
    args = parser.parse_args()
    if args.quick:
        args.res, args.min_time, args.eval_limit = "16,20,28", 0.2, 200

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timing = TimingConfig(min_s=args.min_time, min_calls=10)
    configs = build_grid(args.model, args.res, threads=args.threads)
    common = dict(data="fashion-mnist", eval_limit=args.eval_limit, timing=timing, progress=False)
    paths = {name: work / f"{name}.jsonl" for name in ("local", "ray")}
    for path in paths.values():
        path.unlink(missing_ok=True)  # both runs measure everything

    print(f"local sweep of {len(configs)} configs", flush=True)
    start = time.perf_counter()
    run_sweep(args.model, configs, paths["local"], **common)
    local_wall = time.perf_counter() - start

    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="vrb", dir="/tmp")  # short: socket paths are limited
    print("starting a head and a worker node", flush=True)
    start = time.perf_counter()
    node_args = {"num_cpus": args.threads, "object_store_memory": 100 * 2**20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "include_dashboard": False, "temp_dir": temp_dir},
    )
    cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    cluster_start = time.perf_counter() - start
    executor = RayExecutor(address=cluster.address, init_options={"log_to_driver": False})
    try:
        print(f"Ray sweep on {cluster.address}", flush=True)
        start = time.perf_counter()
        run_sweep(args.model, configs, paths["ray"], executor=executor, **common)
        ray_wall = time.perf_counter() - start
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)

    local = {m.key: m for m in read_results(paths["local"])}
    remote = {m.key: m for m in read_results(paths["ray"])}
    keys = [c.key() for c in configs]
    ok = [k for k in keys if local[k].ok and remote[k].ok]
    tasks = [t for t in executor.tasks if t.task_s is not None]
    slots = 2  # two nodes of one config each
    overhead = [t.finished_at - t.submitted_at - t.task_s for t in tasks]
    slot_overhead = (ray_wall * slots - sum(t.task_s for t in tasks)) / len(configs)
    ratios = {k: remote[k].latency_ms / local[k].latency_ms for k in ok}
    same_accuracy = all(local[k].accuracy == remote[k].accuracy for k in ok)

    ordered = sorted(local[k].latency_ms for k in ok)
    middle = len(ordered) // 2
    budget = Budget(max_latency_ms=math.sqrt(ordered[middle - 1] * ordered[middle]))
    runs = {"local": local, "ray": remote}
    choices = {name: recommend(list(r.values()), budget).choice for name, r in runs.items()}
    # The same budget relative to each run's own native-resolution latency: a uniform
    # slow-down of one run (two configs timed at once on shared cores) does not move it.
    ratio = budget.max_latency_ms / local[native_key(local, ok)].latency_ms
    relative = {}
    for name, records in runs.items():
        own = Budget(max_latency_ms=ratio * records[native_key(records, ok)].latency_ms)
        relative[name] = recommend(list(records.values()), own).choice
    agree = same_choice(choices)
    agree_relative = same_choice(relative)
    same_order = sorted(ok, key=lambda k: local[k].latency_ms) == sorted(
        ok, key=lambda k: remote[k].latency_ms
    )

    report = {
        "benchmark": "ray_sweep",
        "quick": args.quick,
        "model": args.model,
        "resolutions": args.res,
        "threads_per_config": args.threads,
        "timing": timing.as_kwargs(),
        "configs": len(configs),
        "ok": {
            "local": sum(m.ok for m in local.values()),
            "ray": sum(m.ok for m in remote.values()),
        },
        "wall_s": {"local": local_wall, "ray": ray_wall, "cluster_start": cluster_start},
        "per_config_s": {
            "local_wall": local_wall / len(configs),
            "ray_wall": ray_wall / len(configs),
            "ray_task_mean": statistics.mean(t.task_s for t in tasks) if tasks else None,
            "ray_overhead_median": statistics.median(overhead) if overhead else None,
            "ray_overhead_max": max(overhead) if overhead else None,
            "ray_slot_overhead": slot_overhead,
        },
        "tasks_per_node": dict(Counter(t.node_id[:8] for t in tasks if t.node_id)),
        "same_accuracy_every_config": same_accuracy,
        "latency_ratio_ray_over_local": ratios,
        "latency_ms": {k: {"local": local[k].latency_ms, "ray": remote[k].latency_ms} for k in ok},
        "budget_max_latency_ms": budget.max_latency_ms,
        "recommendation": {n: (c.key if c else None) for n, c in choices.items()},
        "same_recommendation": agree,
        "relative_budget_fraction_of_native": ratio,
        "recommendation_relative_budget": {n: (c.key if c else None) for n, c in relative.items()},
        "same_recommendation_relative_budget": agree_relative,
        "same_latency_order": same_order,
        "host_kinds": sorted({m.env.get("host_kind") for m in remote.values()}),
        "multi_node_notes": MULTI_NODE_NOTES,
        "env": env_fingerprint(args.threads),
    }
    name = "ray_sweep_quick" if args.quick else "ray_sweep"
    write_json(RESULTS_DIR / f"{name}.json", report)

    label = {n: (f"{c.config.resolution[0]} px" if c else "none") for n, c in choices.items()}
    label_relative = {
        n: (f"{c.config.resolution[0]} px" if c else "none") for n, c in relative.items()
    }
    lines = markdown_lines(report, label, label_relative, args.quick)
    write_markdown(RESULTS_DIR / f"{name}.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

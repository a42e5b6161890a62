"""`vitres sweep`: measure accuracy, latency and memory over resolutions and backends."""

from __future__ import annotations

import argparse

from vitres.commands.args import (
    DefaultsFormatter,
    add_budget_arguments,
    add_common_arguments,
    add_measurement_arguments,
    add_merge_argument,
    add_model_argument,
    add_res_argument,
    budget_from_args,
)
from vitres.commands.csv_out import add_csv_argument, check_csv_path
from vitres.devices import DEVICE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.measure import TimingConfig

    parser = subparsers.add_parser(
        "sweep",
        help="measure every resolution / patch / batch / backend / merge config into a results file",
        description="Measures each config (by default in its own child process) and appends one "
        "JSON line per config to --out as soon as it finishes. Re-running skips configs already "
        "recorded as ok.",
        formatter_class=DefaultsFormatter,
    )
    add_model_argument(parser)
    add_res_argument(parser, required=True)
    add_common_arguments(parser, patch_list=True, batch_list=True, batch_default="1")
    # on a Ray cluster the nodes, not this machine, bound --threads: checked in run()
    next(a for a in parser._actions if a.dest == "threads").type = int
    parser.add_argument(
        "--data", help="dataset for accuracy: fashion-mnist or an image folder (omit: speed only)"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument(
        "--ood",
        help="out-of-distribution data (digits or an image folder): records carry the best "
        "OOD AUROC per config, for --min-ood-auroc",
    )
    parser.add_argument("--split", default="test", help="dataset split")
    parser.add_argument(
        "--backend",
        default="eager",
        help="backends, comma-separated, e.g. eager,eager-bf16,onnxruntime; 'auto' = every "
        "backend usable here",
    )
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    add_merge_argument(parser, many=True)
    parser.add_argument(
        "--token-budget",
        default=None,
        metavar="K,...",
        help="mixed-resolution token budgets, a sweep axis, e.g. 16,25,none (none = uniform "
        "patches; default: none only); budgets run on the eager backends",
    )
    parser.add_argument("--out", default="results.jsonl", help="results file")
    add_csv_argument(parser)
    timing = parser.add_argument_group("timing")
    defaults = TimingConfig()
    timing.add_argument(
        "--min-time", type=float, default=defaults.min_s, help="seconds of timed calls per config"
    )
    timing.add_argument(
        "--min-calls", type=int, default=defaults.min_calls, help="timed calls per config at least"
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds per config before it is recorded as failed"
    )
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (faster; memory numbers less exact; a crash ends the sweep)",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="measure anchor resolutions, then only those the cost model leaves uncertain",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_measurement_arguments(parser)
    _add_ray_arguments(parser)
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--ray-cpus`` and ``--ray-resources``: configs as Ray tasks."""
    ray = parser.add_argument_group("Ray (needs the ray extra: pip install 'vitres[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run each config as a Ray task: --ray alone starts a local Ray instance, "
        "--ray auto joins this machine's cluster, --ray HOST:PORT a given head",
    )
    ray.add_argument(
        "--ray-cpus",
        type=int,
        help="CPUs of the local Ray instance (default: this machine's physical cores)",
    )
    ray.add_argument(
        "--ray-resources",
        metavar="JSON",
        help="custom resources every task needs, e.g. '{\"edge_box\": 1}' to run on nodes "
        "started with `ray start --resources '{\"edge_box\": 1}'`",
    )


def _check_measurement_flags(args: argparse.Namespace) -> None:
    """Timing and device flags no measurement can run with, refused up front (rather
    than recorded as a failed config, or a traceback from PyTorch)."""

    if args.min_calls < 1:
        raise ValueError(f"--min-calls must be at least 1, got {args.min_calls}")
    if not args.min_time >= 0:
        raise ValueError(f"--min-time must be 0 or more seconds, got {args.min_time}")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if getattr(args, "max_attempts", 1) < 1:
        raise ValueError(f"--max-attempts must be at least 1, got {args.max_attempts}")
    from vitres.devices import check_device, check_device_name

    # on Ray the configs run on nodes that may have GPUs this machine lacks
    (check_device if getattr(args, "ray", None) is None else check_device_name)(args.device)


def _check_before_work(args: argparse.Namespace) -> None:
    """Output paths and the thread count, refused before anything is measured."""
    from vitres.commands.args import thread_count
    from vitres.commands.paths import check_output_file

    check_csv_path(args.csv)
    check_output_file(args.out, "--out")
    _check_measurement_flags(args)
    if args.threads is not None and args.ray is None:  # on Ray, the nodes bound it
        try:
            thread_count(str(args.threads))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"--threads: {error}") from None


def run(args: argparse.Namespace) -> int:
    _check_before_work(args)
    from vitres.backends import expand_backend_names, list_backends
    from vitres.layers.sizes import parse_int_list
    from vitres.measure import TimingConfig
    from vitres.tokens.merge import parse_merge_list
    from vitres.tune.grid import build_grid
    from vitres.tune.sweep import run_sweep

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b not in list_backends() and b != "auto"]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; available: {', '.join(list_backends())}")
    executor = None
    if args.ray is not None:
        from vitres.tune.ray_executor import RayExecutor, parse_resources

        executor = RayExecutor(
            address=None if args.ray == "local" else args.ray,
            num_cpus=args.ray_cpus,
            resources=parse_resources(args.ray_resources),
        )
    elif args.ray_cpus is not None or args.ray_resources is not None:
        raise ValueError("--ray-cpus and --ray-resources need --ray")
    backends = expand_backend_names(backends, args.device)
    configs = build_grid(
        args.model,
        args.res,
        parse_int_list(args.patch_size, allow_native=True),
        parse_int_list(args.batch_size),
        backends,
        threads=args.threads,
        device=args.device,
        merges=parse_merge_list(args.merge),
        token_budgets=parse_int_list(args.token_budget, allow_native=True),
    )
    timing = TimingConfig(min_calls=args.min_calls, min_s=args.min_time)
    results = run_sweep(
        args.model,
        configs,
        args.out,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        eval_limit=args.limit,
        timing=timing,
        isolate=not args.no_isolate,
        timeout_s=args.timeout,
        adaptive=args.adaptive,
        budget=budget_from_args(args),
        progress=not args.no_progress,
        keep_unstable=args.keep_unstable,
        max_attempts=args.max_attempts,
        executor=executor,
        ood=args.ood,
    )
    from vitres.tune.summary import summary_table

    if results:
        print(summary_table(results))
    if args.csv:
        from vitres.commands.csv_out import measurement_row, write_csv
        from vitres.tune.records import latest_by_key

        print(f"wrote {write_csv(args.csv, (measurement_row(m) for m in latest_by_key(results)))}")
    ok = sum(m.ok for m in results)
    failed = sum(m.status == "error" for m in results)
    predicted = sum(m.status == "predicted" for m in results)
    print(
        f"{ok} ok, {failed} failed, {predicted} predicted of {len(configs)} configs -> {args.out}"
    )
    return 0 if failed == 0 else 1

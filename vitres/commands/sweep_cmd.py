"""`vitres sweep`: measure accuracy, latency and memory over resolutions and backends."""

from __future__ import annotations

import argparse

from vitres.commands.recommend_cmd import add_budget_arguments, budget_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="measure every resolution / patch / batch / backend config into a results file",
        description="Measures each config (by default in its own child process) and appends one JSON "
        "line per config to --out as soon as it finishes. Re-running skips configs already "
        "recorded as ok.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model: reference name (fmnist-vit-multires), checkpoint path, registry "
        "name (vit_tiny_patch16) or module:factory",
    )
    parser.add_argument(
        "--data", help="dataset for accuracy: fashion-mnist or an image folder (omit: speed only)"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument(
        "--res", required=True, help="resolutions: 16,20,28 or ranges 96:448:32 or HxW like 28x40"
    )
    parser.add_argument(
        "--patch", default=None, help="patch sizes, e.g. 4,7 (default: the model's own)"
    )
    parser.add_argument(
        "--backend",
        default="eager",
        help="backends, e.g. eager,eager-bf16; 'auto' = every backend usable here (default eager)",
    )
    parser.add_argument("--batch", default="1", help="batch sizes, e.g. 1,8 (default 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--out", default="results.jsonl", help="results file (default results.jsonl)"
    )
    parser.add_argument(
        "--eval-limit", type=int, help="evaluate accuracy on the first N examples only"
    )
    parser.add_argument(
        "--min-time", type=float, default=2.0, help="seconds of timed calls per config (default 2)"
    )
    parser.add_argument(
        "--min-calls", type=int, default=30, help="timed calls per config at least (default 30)"
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
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.backends import expand_backend_names, list_backends
    from vitres.measure import TimingConfig
    from vitres.sweep import build_grid, parse_int_list, run_sweep

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b not in list_backends() and b != "auto"]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; available: {', '.join(list_backends())}")
    backends = expand_backend_names(backends, args.device)
    configs = build_grid(
        args.model,
        args.res,
        parse_int_list(args.patch, allow_native=True),
        parse_int_list(args.batch),
        backends,
        threads=args.threads,
        device=args.device,
    )
    timing = TimingConfig(min_calls=args.min_calls, min_s=args.min_time)
    results = run_sweep(
        args.model,
        configs,
        args.out,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        eval_limit=args.eval_limit,
        timing=timing,
        isolate=not args.no_isolate,
        timeout_s=args.timeout,
        adaptive=args.adaptive,
        budget=budget_from_args(args),
        progress=not args.no_progress,
    )
    ok = sum(m.ok for m in results)
    failed = sum(m.status == "error" for m in results)
    predicted = sum(m.status == "predicted" for m in results)
    print(
        f"{ok} ok, {failed} failed, {predicted} predicted of {len(configs)} configs -> {args.out}"
    )
    return 0 if failed == 0 else 1

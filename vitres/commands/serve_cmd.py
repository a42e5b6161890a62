"""`vitres serve`: an HTTP classification server that holds a latency SLO by choosing
batch size and input resolution per batch, sheds load it cannot serve in time, and rolls
back to a safe configuration when serving leaves the band the sweep measured. With
``--ray [ADDRESS] --replicas N`` the same server runs as N replicas of a Ray Serve
deployment (:mod:`vitres.serve.ray_serve`)."""

from __future__ import annotations

import argparse

from vitres.serve.config import ServeConfig

_DEFAULTS = ServeConfig(model="")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP under a latency SLO (dynamic batch x resolution)",
        description="Starts a FastAPI/uvicorn server: POST /v1/classify (an image as the raw body "
        "or a multipart file), GET /healthz, GET /metrics (Prometheus). A worker forms each batch "
        "and picks its batch size and resolution from the sweep's latency model so that every "
        "queued request meets --slo-ms; requests that cannot are answered 503 with Retry-After. "
        "SIGTERM or Ctrl-C stops it gracefully. With --ray the same server runs as --replicas "
        "replicas of a Ray Serve deployment.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model: reference name (fmnist-vit-multires), checkpoint path, registry name or "
        "module:factory",
    )
    parser.add_argument(
        "--records",
        help="sweep results (JSON lines) with latencies of this model and backend, ideally at "
        "several batch sizes; omitted: a short calibration sweep runs at startup",
    )
    parser.add_argument(
        "--slo-ms",
        type=float,
        default=_DEFAULTS.slo_ms,
        help=f"latency objective per request, arrival to answer (default {_DEFAULTS.slo_ms:g})",
    )
    parser.add_argument("--host", default=_DEFAULTS.host, help=f"default {_DEFAULTS.host}")
    parser.add_argument(
        "--port", type=int, default=_DEFAULTS.port, help=f"default {_DEFAULTS.port}"
    )
    parser.add_argument(
        "--controller",
        default=_DEFAULTS.controller,
        help="predictive (batch x resolution under the SLO, the default) or fixed:R / "
        "fixed:native (one resolution, batches of what is queued, no SLO shedding)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=_DEFAULTS.max_batch,
        help=f"largest batch (default {_DEFAULTS.max_batch})",
    )
    parser.add_argument(
        "--backend",
        default=_DEFAULTS.backend,
        help="eager, eager-bf16, onnxruntime... (default eager)",
    )
    parser.add_argument(
        "--res",
        help="resolution ladder, e.g. 16,20,28,40,56 (default: the records' resolutions; when "
        "calibrating, 0.5x to 2x the native size)",
    )
    parser.add_argument("--patch", type=int, help="patch size, when the records hold several")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the records')")
    parser.add_argument("--device", default=_DEFAULTS.device, help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--queue-limit", type=int, help="most requests waiting (default 4 x --max-batch)"
    )
    parser.add_argument(
        "--safe-res", help="rollback resolution (default: the smallest of the ladder)"
    )
    parser.add_argument(
        "--safe-backend",
        default=_DEFAULTS.safe_backend,
        help="rollback backend (default eager, i.e. fp32 PyTorch)",
    )
    parser.add_argument(
        "--rollback-window",
        type=float,
        default=_DEFAULTS.rollback_window_s,
        help="seconds out of band before rolling back; 0 disables monitoring "
        f"(default {_DEFAULTS.rollback_window_s:g})",
    )
    parser.add_argument(
        "--latency-tolerance",
        type=float,
        default=_DEFAULTS.latency_tolerance,
        help="out of band above this median of served / sweep p95 latency "
        f"(default {_DEFAULTS.latency_tolerance:g})",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=_DEFAULTS.max_error_rate,
        help=f"out of band above this fraction of failed requests (default {_DEFAULTS.max_error_rate:g})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=_DEFAULTS.max_bytes,
        help=f"largest image file, bytes (413 above; default {_DEFAULTS.max_bytes})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=_DEFAULTS.max_pixels,
        help=f"largest image, pixels (413 above; default {_DEFAULTS.max_pixels})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=_DEFAULTS.request_timeout_s,
        help=f"seconds a request may wait for its answer (504 after; default {_DEFAULTS.request_timeout_s:g})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        help="most classify requests inside the server at once; more are answered 503 before "
        "their body is read (default: twice the queue limit plus 64)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=_DEFAULTS.backlog,
        help=f"connections the kernel queues before the server accepts them (default {_DEFAULTS.backlog})",
    )
    parser.add_argument(
        "--save-calibration", help="write the startup calibration's records here (reuse: --records)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no calibration progress bar")
    ray = parser.add_argument_group(
        "Ray Serve (needs the ray extra: pip install 'vitres[ray]')",
        "the same server as a Ray Serve deployment: every replica runs the batching policy, "
        "monitor and rollback above on its own queue; --host/--port are where Serve's proxies "
        "listen",
    )
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="deploy on Ray Serve: --ray alone starts a local Ray instance, --ray auto joins "
        "this machine's cluster, --ray HOST:PORT a given head",
    )
    ray.add_argument(
        "--replicas",
        type=int,
        help="replicas of the deployment, each asking Ray for --threads CPUs (default 1)",
    )
    ray.add_argument(
        "--ray-cpus",
        type=int,
        help="CPUs of the local Ray instance (default: this machine's physical cores)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [
        name
        for name in ("fastapi", "uvicorn", "prometheus_client", "multipart")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ValueError(f"vitres serve needs {', '.join(missing)}: pip install 'vitres[serve]'")
    if args.ray is None and (args.replicas is not None or args.ray_cpus is not None):
        raise ValueError("--replicas and --ray-cpus need --ray (a Ray Serve deployment)")
    config = ServeConfig(
        model=args.model,
        slo_ms=args.slo_ms,
        records=args.records,
        controller=args.controller,
        max_batch=args.max_batch,
        backend=args.backend,
        resolutions=args.res,
        patch_size=args.patch,
        threads=args.threads,
        device=args.device,
        queue_limit=args.queue_limit,
        safe_resolution=args.safe_res,
        safe_backend=args.safe_backend,
        rollback_window_s=args.rollback_window,
        latency_tolerance=args.latency_tolerance,
        max_error_rate=args.max_error_rate,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        request_timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
        backlog=args.backlog,
        save_calibration=args.save_calibration,
        host=args.host,
        port=args.port,
        progress=not args.no_progress,
    )
    if args.ray is not None:
        from vitres.serve.config import RayServeConfig
        from vitres.serve.ray_serve import require_serve, serve_on_ray

        require_serve()
        ray_config = RayServeConfig(
            address=None if args.ray == "local" else args.ray,
            replicas=1 if args.replicas is None else args.replicas,
            num_cpus=args.ray_cpus,
        )
        return serve_on_ray(config, ray_config)
    from vitres.serve.launch import serve

    return serve(config)

"""`vitres serve`: an HTTP classification server that holds a latency SLO by choosing
batch size and input resolution per batch, sheds load it cannot serve in time, and rolls
back to a safe configuration when serving leaves the band the sweep measured. With
``--ray [ADDRESS] --replicas N`` the same server runs as N replicas of a Ray Serve
deployment (:mod:`vitres.serve.ray_serve`)."""

from __future__ import annotations

import argparse

from vitres.commands.flags import DefaultsFormatter, add_dataclass_arguments, config_from_args
from vitres.serve.config import ServeConfig

# ServeConfig fields under their established flag names (the value goes to args.<field>)
_FLAGS = {
    "resolutions": ["--res"],
    "patch_size": ["--patch"],
    "safe_resolution": ["--safe-res"],
    "rollback_window_s": ["--rollback-window"],
    "request_timeout_s": ["--timeout"],
}
# settings the server takes from the library only (no flag today)
_NOT_FLAGS = ("batch_time_fraction", "retry_after_s")


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
        formatter_class=DefaultsFormatter,
    )
    add_dataclass_arguments(parser, ServeConfig, skip=_NOT_FLAGS, flags=_FLAGS)
    _add_ray_arguments(parser)
    parser.set_defaults(func=run)


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--replicas`` and ``--ray-cpus`` (a Ray Serve deployment)."""
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
    config = config_from_args(ServeConfig, args, skip=_NOT_FLAGS)
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

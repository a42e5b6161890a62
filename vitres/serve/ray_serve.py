"""``vitres serve --ray``: the standalone server deployed as a Ray Serve application of N
replicas, each of them the same server.

Ray Serve (on Ray: Moritz et al., "Ray: A Distributed Framework for Emerging AI
Applications", OSDI 2018) runs HTTP proxies on the cluster's nodes and routes each
request to one replica of a deployment. Here a replica is exactly what ``vitres serve``
runs, minus uvicorn: its constructor calls :func:`vitres.serve.launch.build_worker` (the
same latency model, batching policy, engines, band monitor and safe configuration) and
its HTTP app is :func:`vitres.serve.app.create_app`'s FastAPI app, handed to Serve
with ``@serve.ingress`` and built on the replica (``__serve_build_asgi_app__``). So there
is one policy implementation, and endpoints, answers, errors (400, 413, 405, 503 with
``Retry-After``, 504) and metric names are the standalone server's.

What the deployment adds:

* **Replicas and resources.** ``replicas`` replicas, each asking Ray for ``num_cpus`` =
  its threads (and a GPU on ``cuda``); the threads come from ``--threads`` or from the
  records, as for the standalone server. A deployment no node combination can hold is
  refused before anything starts.
* **Records once.** The driver (this process) reads the records, or runs the calibration
  sweep, once, and passes them to every replica, so nodes need the model but not the
  records file. A node whose checkpoint differs from the driver's refuses to start.
* **Per-replica policy.** Each replica batches, sheds and rolls back on its own queue.
  Serve's router sends a request to the less loaded of two replicas; a replica accepts
  up to ``queue_limit + 2 * max_batch`` requests at once (``max_ongoing_requests``), so
  its own admission control, not Serve's, decides what is shed.
* **Metrics.** Each replica counts in its own registry and publishes a snapshot every
  ``metrics_interval_s`` to a small actor (:class:`ReplicaMetricsHub`). ``GET /metrics``,
  whichever replica answers it, returns every live replica's metrics: the standalone
  server's families, each sample labelled ``replica="<id>"``
  (:func:`vitres.serve.metrics.render_replicas`); its own numbers are current, the
  others' at most one interval old.
* **Shutdown.** SIGTERM or Ctrl-C: ``serve.delete`` stops routing to the replicas, waits
  for their open requests, then runs each app's lifespan shutdown (the worker finishes
  its queue); then ``serve.shutdown()`` when no other application is left on the cluster,
  and ``ray.shutdown()`` when this command started Ray.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitres.serve.config import RayServeConfig, ServeConfig
from vitres.serve.metrics import render_replicas, sum_samples
from vitres.tune.records import Measurement

__all__ = [
    "RayServeApp",
    "ReplicaMetricsHub",
    "ServeReplica",
    "deploy",
    "max_ongoing_requests",
    "require_serve",
    "serve_on_ray",
]

logger = logging.getLogger("vitres.serve")

#: Replica metrics not refreshed for this many publishing intervals are left out.
_STALE_INTERVALS = 5.0


def require_serve() -> tuple[Any, Any]:
    """Imports Ray and Ray Serve, or says how to install them.

    Returns:
        ``(ray, ray.serve)``.

    Raises:
        ValueError: either is not importable.
    """
    from vitres.tune.ray_executor import require_ray

    ray = require_ray()
    try:
        import ray.serve as serve
    except ImportError as error:
        raise ValueError(
            f"vitres serve --ray needs Ray Serve, which is not importable here ({error}); "
            "install the extra with `pip install 'vitres[ray]'` (or `pip install 'ray[serve]'`)"
        ) from None
    return ray, serve


def max_ongoing_requests(config: ServeConfig) -> int:
    """How many requests Serve may hand one replica at once: its queue, the batch it is
    running, and as many again being received, so the replica's policy sheds first."""
    queue_limit = config.queue_limit if config.queue_limit is not None else 4 * config.max_batch
    return queue_limit + 2 * config.max_batch


class ReplicaMetricsHub:
    """The latest metrics snapshot of every replica (run as a Ray actor, no CPUs).

    Each snapshot comes with its replica's sequence number and replaces the stored one
    only when it is newer, so whatever a scrape shows of a replica is never older than
    what an earlier scrape showed: counters never appear to go back.

    Args:
        stale_after_s: Snapshots not refreshed for this long are left out of
            :meth:`collect` (the replica is gone); a replica's last snapshot, sent as it
            stops, is kept for :meth:`collect` with ``include_stopped``.
    """

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = float(stale_after_s)
        self._snapshots: dict[str, tuple[float, int, list, bool]] = {}

    def put(self, replica: str, sequence: int, families: list, stopped: bool = False) -> None:
        """Stores ``replica``'s snapshot number ``sequence`` (:meth:`ServerMetrics.snapshot`)
        unless a newer one is stored."""
        stored = self._snapshots.get(replica)
        if stored is None or sequence >= stored[1]:
            self._snapshots[replica] = (time.monotonic(), sequence, families, stopped)
        elif not stopped:
            self._snapshots[replica] = (time.monotonic(), *stored[1:])  # it is alive

    def collect(self, include_stopped: bool = False) -> dict[str, list]:
        """``{replica: snapshot}`` of the live replicas (and, with ``include_stopped``,
        the last one of every replica that ever published)."""
        now = time.monotonic()
        return {
            replica: families
            for replica, (when, _, families, stopped) in self._snapshots.items()
            if include_stopped or (not stopped and now - when <= self.stale_after_s)
        }

    def exchange(self, replica: str, sequence: int, families: list) -> dict[str, list]:
        """:meth:`put`, then :meth:`collect`, in one call (what a scrape does)."""
        self.put(replica, sequence, families)
        return self.collect()


class ServeReplica:
    """One replica of the deployment: a whole ``vitres serve`` server inside Ray Serve.

    Serve wraps it with ``@serve.ingress`` (see :func:`deploy`): Serve calls the
    constructor, then :meth:`__serve_build_asgi_app__`, then the app's lifespan (which
    starts the worker); at shutdown the lifespan's end lets the worker finish its queue.
    Only Serve constructs it: the constructor is a coroutine (Serve awaits it), so that
    the model is built and warmed in a thread while the replica still answers Serve.

    Args:
        config: The server's settings (``threads`` set: the replica's CPUs).
        records: The latency records, read or calibrated once by the driver.
        hub: A :class:`ReplicaMetricsHub` actor handle.
        digest: The driver's :func:`~vitres.models.checkpoint.checkpoint_digest` of the
            model (``None``: not a checkpoint file).
        metrics_interval_s: Seconds between two metrics snapshots sent to the hub.

    Raises:
        ValueError: this node's checkpoint differs from the driver's, or the records,
            controller or resolutions are bad (as for the standalone server).
    """

    async def __init__(
        self,
        config: ServeConfig,
        records: list[Measurement],
        hub: Any,
        digest: str | None,
        metrics_interval_s: float,
    ) -> None:
        from ray import serve

        from vitres.models.checkpoint import checkpoint_digest
        from vitres.serve.launch import attach_log_handler, build_worker

        attach_log_handler()
        node_digest = None if digest is None else checkpoint_digest(config.model)
        if node_digest != digest:
            raise ValueError(
                f"this node's checkpoint of {config.model!r} has digest {node_digest}, the "
                f"driver's {digest}; install the same weights on every node"
            )
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.limits = config.limits()
        self.model_name = config.served_name()
        self.hub = hub
        self.metrics_interval_s = float(metrics_interval_s)
        self.worker = await asyncio.to_thread(build_worker, config, records=records, log=self._log)
        self._snapshot_lock = threading.Lock()
        self._sequence = 0
        self._stop_publishing = threading.Event()
        self._publisher = threading.Thread(
            target=self._publish_loop, name="vitres-metrics", daemon=True
        )
        self._publisher.start()

    def _log(self, line: str) -> None:
        logger.info("replica %s: %s", self.replica, line.removeprefix("vitres serve: "))

    def __serve_build_asgi_app__(self) -> Any:
        """The standalone server's app over this replica's worker; ``/metrics`` merged."""
        from vitres.serve.app import create_app

        return create_app(
            self.worker, self.limits, metrics_text=self.metrics_text, model_name=self.model_name
        )

    def _snapshot(self) -> tuple[int, list]:
        """This replica's metrics now, numbered (numbers grow with time)."""
        with self._snapshot_lock:
            self._sequence += 1
            return self._sequence, self.worker.metrics.snapshot()

    async def metrics_text(self) -> bytes:
        """Every live replica's metrics as Prometheus text: this one's current (and
        stored in the hub first, so no later scrape shows older numbers of it), the
        others' as they last published."""
        sequence, own = self._snapshot()
        try:
            snapshots = await asyncio.wait_for(
                self.hub.exchange.remote(self.replica, sequence, own),
                timeout=max(5.0, self.metrics_interval_s),
            )
        except Exception as error:  # noqa: BLE001 - still answer with this replica's own
            logger.warning("replica %s: no other replicas' metrics (%s)", self.replica, error)
            snapshots = {}
        snapshots[self.replica] = own
        return render_replicas(snapshots)

    def _publish_loop(self) -> None:
        warned = False
        while not self._stop_publishing.wait(self.metrics_interval_s):
            try:
                self._publish(stopped=False)
                warned = False
            except Exception as error:  # noqa: BLE001 - metrics must not stop serving
                if not warned:
                    logger.warning("replica %s: cannot publish metrics (%s)", self.replica, error)
                warned = True

    def _publish(self, stopped: bool) -> None:
        import ray

        sequence, snapshot = self._snapshot()
        ray.get(self.hub.put.remote(self.replica, sequence, snapshot, stopped), timeout=10.0)

    def check_health(self) -> None:
        """Serve's periodic health check: the batching thread must be alive.

        Raises:
            RuntimeError: it is not (Serve then replaces the replica).
        """
        if not (self.worker.running or self.worker.closing):
            raise RuntimeError(f"replica {self.replica}: the batching thread is not running")

    async def __del__(self) -> None:
        """Serve calls this after the app's lifespan has stopped the worker: the final
        counts go to the hub (the driver's summary reads them)."""
        if not hasattr(self, "_publisher"):
            return
        self._stop_publishing.set()
        await asyncio.to_thread(self._publisher.join, 10.0)
        try:
            await asyncio.to_thread(self._publish, True)
        except Exception as error:  # noqa: BLE001 - stopping anyway
            logger.warning("replica %s: final metrics not published (%s)", self.replica, error)


@dataclass
class RayServeApp:
    """A running deployment, as :func:`deploy` returns it.

    Attributes:
        url: Where the proxy on this machine answers (when Ray was started here).
        name: The Serve application's name.
        replicas: Replicas deployed.
        threads: CPU threads (and Ray CPUs) of each replica.
        started_ray: Whether :func:`deploy` started or connected Ray (then
            :meth:`shutdown` ends that connection).
        local: Whether Ray is a local instance started by :func:`deploy`.
        hub: The :class:`ReplicaMetricsHub` actor.
    """

    url: str
    name: str
    replicas: int
    threads: int
    started_ray: bool
    local: bool
    hub: Any

    def snapshots(self, include_stopped: bool = False) -> dict[str, list]:
        """``{replica: metric families}`` as last published by each replica."""
        import ray

        return ray.get(self.hub.collect.remote(include_stopped))

    def shutdown(self) -> dict[str, list]:
        """Stops the application gracefully (every open request is answered), then Serve
        when no other application is left, then Ray if :func:`deploy` connected it.

        Returns:
            Each replica's final metrics (:meth:`snapshots` with ``include_stopped``).
        """
        import ray
        from ray import serve

        try:
            serve.delete(self.name)
            final = self.snapshots(include_stopped=True)
            ray.kill(self.hub)
            if not serve.status().applications:
                serve.shutdown()
        finally:
            if self.started_ray:
                ray.shutdown()
        return final


def _check_port_free(host: str, port: int) -> None:
    """Refuses a port something listens on. A port left in TIME-WAIT by a server that
    just stopped is free to listen on again (SO_REUSEADDR, as the servers themselves
    bind), so it is not refused."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(
                f"cannot serve on {host}:{port} ({error.strerror}); is the port in use? choose "
                "another with --port"
            ) from None


def _check_room(ray: Any, replicas: int, needed: dict[str, float]) -> None:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    room = sum(
        min(int(node.get(name, 0.0) // amount) for name, amount in needed.items()) for node in nodes
    )
    if room < replicas:
        cpus = [int(node.get("CPU", 0)) for node in nodes]
        raise ValueError(
            f"{replicas} replica(s) needing {needed} each do not fit on this Ray cluster (nodes "
            f"with {cpus} CPUs have room for {room}); use fewer --replicas or --threads, "
            "--ray-cpus for a local instance, or add nodes"
        )


def _deploy_error(serve: Any, ray_config: RayServeConfig, error: Exception) -> str:
    """What went wrong in a failed deployment: the last ``SomeError: message`` line of the
    deployment's status (the replica's own exception), else of ``error``."""
    texts = []
    try:
        application = serve.status().applications[ray_config.app_name]
        texts += [d.message for d in application.deployments.values()]
        texts.append(application.message)
    except Exception:  # noqa: BLE001 - fall back to the error itself
        pass
    texts.append(str(error))
    for text in texts:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
        if causes:
            return causes[-1]
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _wait_until_serving(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ValueError(f"the deployment is running but {url}/healthz does not answer")
        time.sleep(0.2)


def _replica_threads(
    config: ServeConfig, records: list[Measurement], log: Callable[[str], None]
) -> tuple[ServeConfig, int]:
    """The threads each replica computes with (``--threads``, else the records'), and the
    config carrying them."""
    from vitres.serve.launch import serving_threads

    threads = serving_threads(config, records)
    if threads is None:  # the replicas then run as Ray starts them: OMP_NUM_THREADS=1
        log(
            "vitres serve: the records do not say their threads; each replica asks Ray for "
            "1 CPU and computes with 1 thread (pass --threads to choose)"
        )
    else:
        config = dataclasses.replace(config, threads=threads)
    return config, threads or 1


def _run_deployment(
    serve: Any,
    deployment: Any,
    config: ServeConfig,
    ray_config: RayServeConfig,
    args: tuple[Any, ...],
) -> None:
    """Runs the deployment as the Serve application; a replica that fails to start
    becomes a ValueError naming why."""
    try:
        serve.run(
            deployment.bind(config, *args),
            name=ray_config.app_name,
            route_prefix="/",
            logging_config={"enable_access_log": False},
        )
    except RuntimeError as error:
        raise ValueError(
            f"the Serve deployment did not start: {_deploy_error(serve, ray_config, error)} "
            "(the replica's traceback is in the log above)"
        ) from None


def _undo_deploy(
    ray: Any, serve: Any, ray_config: RayServeConfig, started: bool, deployed: bool, hub: Any
) -> None:
    """After a failed deploy: this command's own Ray goes (with Serve); on a cluster
    others use, only what this call created."""
    if started:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    else:
        if deployed and ray_config.app_name in serve.status().applications:
            serve.delete(ray_config.app_name)
        if hub is not None:
            ray.kill(hub)


def deploy(
    config: ServeConfig,
    ray_config: RayServeConfig | None = None,
    log: Callable[[str], None] = print,
    on_signal: Callable[[int, object], None] | None = None,
) -> RayServeApp:
    """Deploys the server on Ray Serve and returns once it answers.

    Args:
        config: The server's settings, as for :func:`vitres.serve.launch.serve`
            (``host``/``port``: where Serve's proxies listen).
        ray_config: Where and how many replicas.
        log: Where progress lines go.
        on_signal: A SIGTERM / SIGINT handler to keep: Ray installs its own when it
            starts (which aborts the process), so this one is installed again after.

    Raises:
        ValueError: Ray Serve is missing, the cluster is unreachable or too small, the
            port is taken, or the replicas could not start (the message says why).
        FileNotFoundError: ``config.records`` does not exist.
    """
    from vitres.models.checkpoint import checkpoint_digest
    from vitres.serve.launch import check_settings, load_records
    from vitres.tune.ray_executor import connect_ray

    ray_config = ray_config or RayServeConfig()
    ray, serve = require_serve()
    check_settings(config, local_device=False)
    local = ray_config.address is None and not ray.is_initialized()
    if local:
        _check_port_free(config.host, config.port)
    records = load_records(config, log=log)
    config, threads = _replica_threads(config, records, log)
    digest = checkpoint_digest(config.model)
    needed = {"CPU": float(threads)}
    if config.device.startswith("cuda"):
        needed["GPU"] = 1.0

    started = connect_ray(ray_config.address, ray_config.num_cpus, ray_config.init_options)
    for sig in (signal.SIGTERM, signal.SIGINT) if on_signal else ():  # ray.init replaced it
        signal.signal(sig, on_signal)
    hub, deployed = None, False
    try:
        if ray_config.app_name in serve.status().applications:
            raise ValueError(
                f"a Serve application named {ray_config.app_name!r} already runs on this Ray "
                f"cluster; stop it first (`serve shutdown`, or serve.delete('{ray_config.app_name}'))"
            )
        _check_room(ray, ray_config.replicas, needed)
        serve.start(http_options={"host": config.host, "port": config.port})
        hub = ray.remote(num_cpus=0)(ReplicaMetricsHub).remote(
            _STALE_INTERVALS * ray_config.metrics_interval_s
        )
        deployment = serve.deployment(
            name="classifier",
            num_replicas=ray_config.replicas,
            ray_actor_options={"num_cpus": float(threads), "num_gpus": needed.get("GPU", 0.0)},
            max_ongoing_requests=max_ongoing_requests(config),
            graceful_shutdown_wait_loop_s=0.5,
            graceful_shutdown_timeout_s=config.request_timeout_s + 5.0,
            max_constructor_retry_count=1,
        )(serve.ingress()(ServeReplica))
        log(
            f"vitres serve: deploying {ray_config.replicas} replica(s) x {threads} thread(s) on "
            f"Ray {ray.__version__} ({'a local instance' if local else ray_config.address or 'connected'})"
        )
        deployed = True
        args = (records, hub, digest, ray_config.metrics_interval_s)
        _run_deployment(serve, deployment, config, ray_config, args)
        probe_host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        url = f"http://{probe_host}:{config.port}"
        app = RayServeApp(
            url, ray_config.app_name, ray_config.replicas, threads, started, local, hub
        )
        if local:
            _wait_until_serving(url, 30.0)
    except BaseException:
        _undo_deploy(ray, serve, ray_config, started, deployed, hub)
        raise
    return app


def serve_on_ray(
    config: ServeConfig,
    ray_config: RayServeConfig | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Deploys the server on Ray Serve (:func:`deploy`) and keeps it running until
    SIGTERM or Ctrl-C, which stop it gracefully; returns 0 after the stop.

    Raises:
        ValueError: as :func:`deploy`.
        FileNotFoundError: ``config.records`` does not exist.
    """
    ray_config = ray_config or RayServeConfig()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    # installed before deploying: a SIGTERM while Ray starts the replicas (an orchestrator
    # giving up on a slow start) is remembered, and the deployment, once up, is stopped
    # gracefully, instead of killing the process halfway through Ray's start-up
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app = deploy(config, ray_config, log, on_signal=on_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):  # and again, once Serve has started
            signal.signal(sig, on_signal)
        where = app.url if app.local else f"port {config.port} of the cluster's nodes"
        if not stop.is_set():
            log(
                f"vitres serve: serving on Ray Serve at {where}: {app.replicas} replica(s) x "
                f"{app.threads} thread(s), application {app.name!r}; SIGTERM or Ctrl-C stops it"
            )
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = app.shutdown()
    how = {signal.SIGTERM: " on SIGTERM", signal.SIGINT: " on Ctrl-C"}.get(received[0], "")
    log(
        f"vitres serve: stopped{how}: "
        f"{sum_samples(final, 'vitres_requests_total', outcome='ok'):.0f} answered, "
        f"{sum_samples(final, 'vitres_shed_total'):.0f} shed, "
        f"{sum_samples(final, 'vitres_requests_total', outcome='error'):.0f} failed, in "
        f"{sum_samples(final, 'vitres_batch_size_count'):.0f} batches, by {len(final)} replica(s)"
    )
    return 0

"""Sweep configs as Ray tasks: one task per config, on a local Ray instance or a cluster.

Ray (Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", OSDI
2018) schedules tasks against *logical* resources. Each config becomes one task that asks
for ``num_cpus = config.threads`` (plus any custom resources, e.g. ``{"edge_box": 1}`` to
target a kind of node), so Ray never runs more timed threads on a node than the CPUs the
node declares: timed configs do not share cores as long as every node declares its
*physical* cores (a local instance started here does; on a cluster, start each node with
``ray start --num-cpus=<physical cores>``). Logical resources are only accounting, and Ray
sets ``OMP_NUM_THREADS`` itself in each worker; the task therefore sets torch's intra-op
threads (and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for any child process it starts) to
the config's threads explicitly, and the record's ``env`` says what was in effect.

The driver (the process running the sweep) alone writes the results file: tasks return
:class:`~vitres.tune.records.Measurement` objects and :func:`vitres.tune.sweep.run_sweep` appends
each as it arrives, so resuming a killed driver works exactly as for a local sweep. Each
record's ``env`` is taken on the node that measured it and carries its
:func:`vitres.tune.hostkind.host_fingerprint` under ``env["host_kind"]``.

Failures: an exception in the measurement becomes an ``error`` record on the node (Ray
does not retry application errors). A task lost with its worker or node (a system
failure) is retried once by Ray (``max_retries=1``); if the retry is lost too, the config
gets an ``error`` record naming Ray's reason, and a resumed sweep measures it again.
``local_mode`` is never used (deprecated; Ray now raises on it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitres.tune.hostkind import HOST_KIND_KEY, UNKNOWN_HOST, host_fingerprint
from vitres.tune.records import Measurement, SweepConfig

MeasureFn = Callable[..., Measurement]
MakeArgs = Callable[[SweepConfig], tuple]


def require_ray() -> Any:
    """Imports Ray, or says how to install it.

    Raises:
        ValueError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--ray needs Ray, which is not installed; install it with "
            "`pip install 'vitres[ray]'` (or `pip install 'ray[serve]'`)"
        ) from None
    return ray


def parse_resources(text: str | None) -> dict[str, float]:
    """Reads custom Ray resources given as JSON, e.g. ``'{"edge_box": 1}'``.

    Raises:
        ValueError: not a JSON object of names to non-negative numbers, or it names
            ``CPU``/``GPU`` (those come from the config's threads and device).
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(
            f"--ray-resources must be a JSON object such as '{{\"edge_box\": 1}}', got {text!r} "
            f"({error})"
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in value.items()
    ):
        raise ValueError(
            f"--ray-resources must map resource names to non-negative numbers, got {text!r}"
        )
    reserved = sorted({"CPU", "GPU"} & set(value))
    if reserved:
        raise ValueError(
            f"--ray-resources cannot set {reserved}: CPUs come from --threads, GPUs from --device"
        )
    return {k: float(v) for k, v in value.items()}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-thread siblings counted once)."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores: dict[int, tuple[str, str]] = {}
    processor = physical = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                if name == "processor":
                    processor, physical = int(value), "0"
                elif name == "physical id":
                    physical = value
                elif name == "core id" and processor is not None:
                    cores[processor] = (str(physical), value)
    except (OSError, ValueError):
        return len(usable)
    if not all(cpu in cores for cpu in usable):
        return len(usable)
    return max(1, len({cores[cpu] for cpu in usable}))


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fails fast when a ``host:port`` (or ``ray://host:port``) head does not answer;
    ``ray.init`` would otherwise wait on it for minutes. ``"auto"`` is left to Ray.

    Raises:
        ValueError: nothing accepts connections at that address.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ValueError(
            f"no Ray head answers at {address} ({error}); start one with `ray start --head "
            "--port 6379`, pass its address (host:6379), `auto`, or omit the address to start "
            "a local instance"
        ) from None


def connect_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    init_options: dict[str, Any] | None = None,
) -> bool:
    """Connects this process to Ray, or starts a local instance; returns True when this
    call connected (the caller then owns the connection and ends it with ``ray.shutdown``),
    False when this process was already connected.

    Args:
        address: ``None`` starts a local instance; ``"auto"`` joins the cluster this
            machine belongs to; ``"host:port"`` or ``"ray://host:10001"`` a given head.
        num_cpus: CPUs of a local instance (default: this machine's physical cores).
        init_options: Further ``ray.init`` keywords (e.g. ``_temp_dir``).

    Raises:
        ValueError: Ray is not installed, ``num_cpus`` is given with an address, or no
            cluster answers at ``address``.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address is not None and num_cpus is not None:
        raise ValueError(
            "--ray-cpus sets the CPUs of a local Ray instance; a cluster's nodes declare "
            "their own (`ray start --num-cpus N`): drop --ray-cpus or the address"
        )
    options: dict[str, Any] = {"include_dashboard": False, **(init_options or {})}
    if address is None:
        options["num_cpus"] = num_cpus or physical_cores()
    else:
        options["address"] = address
        options.pop("include_dashboard")
        check_reachable(address)
    try:
        ray.init(**options)
    except ConnectionError as error:
        raise ValueError(
            f"cannot reach a Ray cluster at {address!r} ({error}); start one with "
            "`ray start --head`, pass its address (host:6379), or omit the address to "
            "start a local instance"
        ) from None
    return True


def task_resources(config: SweepConfig, custom: dict[str, float]) -> dict[str, float]:
    """What one config's task asks Ray for: its threads as CPUs, a GPU on CUDA, and ``custom``."""
    needed = {"CPU": float(config.threads or 1), **custom}
    if config.device.startswith("cuda"):
        needed["GPU"] = 1.0
    return needed


def use_threads(threads: int | None) -> int:
    """Makes this worker compute with ``threads`` intra-op threads; returns what is in effect.

    Ray starts workers with ``OMP_NUM_THREADS`` from the first task's ``num_cpus`` and
    reuses them for later tasks, so torch's pool is set explicitly, and the variables are
    set for child processes (an isolated measurement) to start with the same number.
    """
    import torch

    if threads is None:
        return torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def measure_task(
    measure: MeasureFn, args: tuple, config: SweepConfig, expected_digest: str | None = None
) -> tuple[Measurement, float, str]:
    """The body of one Ray task: measure ``config`` on this node.

    Args:
        measure: Called as ``measure(*args)``; ``args[0]`` is the model reference.
        args: Its arguments.
        config: The config measured.
        expected_digest: The driver's :func:`~vitres.models.checkpoint.checkpoint_digest`
            of the model; a node whose checkpoint file differs records an error instead of
            measuring other weights under the driver's digest.

    Returns:
        ``(record, seconds the measurement took, Ray node id)``; an exception becomes an
        ``error`` record (with this node's environment), never a task failure.
    """
    import ray

    from vitres.measure import IsolatedRunError, env_fingerprint
    from vitres.models.checkpoint import checkpoint_digest

    start = time.perf_counter()
    use_threads(config.threads)
    node_digest = None if expected_digest is None else checkpoint_digest(args[0])
    try:
        if node_digest != expected_digest:
            raise ValueError(
                f"this node's checkpoint of {args[0]!r} has digest {node_digest}, the driver's "
                f"{expected_digest}; install the same weights on every node"
            )
        record = measure(*args)
    except IsolatedRunError as error:
        record = Measurement(config=config, status="error", error=str(error))
    except Exception as error:  # noqa: BLE001 - a failing config must not end the sweep
        record = Measurement(
            config=config, status="error", error=f"{type(error).__name__}: {error}"
        )
    if not record.env:
        record.env = env_fingerprint(config.threads, config.device)
    record.env[HOST_KIND_KEY] = host_fingerprint(record.env)
    return record, time.perf_counter() - start, ray.get_runtime_context().get_node_id()


@dataclass
class TaskRecord:
    """Bookkeeping of one finished task, for overhead accounting (not written to results)."""

    key: str
    node_id: str | None
    task_s: float | None
    submitted_at: float
    finished_at: float


@dataclass
class RayExecutor:
    """Runs configs as Ray tasks and yields their records as they finish.

    Use it as the ``executor`` of :func:`vitres.tune.sweep.run_sweep`; call it directly as
    ``executor(configs, measure, make_args)``.

    Attributes:
        address: ``None`` starts a local Ray instance (or reuses the one this process
            already started with ``ray.init``); ``"auto"`` joins the cluster this machine
            belongs to; ``"host:port"`` or ``"ray://host:10001"`` a given head.
        num_cpus: CPUs of a local instance (default: this machine's physical cores).
        resources: Custom resources every task requires, e.g. ``{"edge_box": 1}``.
        max_retries: Ray retries of a task lost with its worker or node.
        init_options: Further ``ray.init`` keywords (e.g. ``_temp_dir``) when this
            executor connects or starts Ray.
        tasks: Filled while running: one :class:`TaskRecord` per finished config.
    """

    address: str | None = None
    num_cpus: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 1
    init_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[TaskRecord] = field(default_factory=list)

    def connect(self) -> bool:
        """Connects to (or starts) Ray; returns True when this call started the connection."""
        return connect_ray(self.address, self.num_cpus, self.init_options)

    def check_feasible(self, configs: Sequence[SweepConfig]) -> None:
        """Refuses configs no alive node can ever run (Ray would wait for them forever).

        Raises:
            ValueError: a config needs more CPUs/GPUs/custom resources than any node has.
        """
        ray = require_ray()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for config in configs:
            needed = task_resources(config, self.resources)
            if not any(all(node.get(k, 0.0) >= v for k, v in needed.items()) for node in nodes):
                largest = max(nodes, key=lambda n: n.get("CPU", 0.0), default={})
                shown = {k: v for k, v in largest.items() if not k.startswith(("node:", "memory"))}
                raise ValueError(
                    f"no Ray node can run {config.key()}: it needs {needed}, the largest node "
                    f"has {shown}. Use fewer --threads, or add a node with these resources "
                    "(`ray start --num-cpus N --resources '{...}'`)"
                )

    def __call__(
        self, configs: Sequence[SweepConfig], measure: MeasureFn, make_args: MakeArgs
    ) -> Iterator[tuple[SweepConfig, Measurement]]:
        """Measures ``configs`` as Ray tasks; yields ``(config, record)`` as each finishes.

        Args:
            configs: The configs still to measure.
            measure: A picklable function, called on the node as ``measure(*make_args(c))``
                (e.g. :func:`vitres.tune.sweep.measure_one`).
            make_args: Builds a config's arguments, called when its task is submitted
                (so an accuracy measured by an earlier task can be passed on).
        """
        ray = require_ray()
        started = self.connect()
        remote = ray.remote(measure_task)
        pending: dict[Any, tuple[SweepConfig, float]] = {}
        digest = None
        if configs and isinstance(make_args(configs[0])[0], (str, os.PathLike)):
            from vitres.models.checkpoint import checkpoint_digest

            digest = checkpoint_digest(make_args(configs[0])[0])
        try:
            self.check_feasible(configs)
            queue = list(configs)
            slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
            while queue or pending:
                while queue and len(pending) < slots:
                    config = queue.pop(0)
                    ref = remote.options(
                        num_cpus=float(config.threads or 1),
                        num_gpus=1 if config.device.startswith("cuda") else 0,
                        resources=self.resources or None,
                        max_retries=self.max_retries,
                        retry_exceptions=False,
                        name=f"vitres-sweep:{config.key()}",
                    ).remote(measure, make_args(config), config, digest)
                    pending[ref] = (config, time.perf_counter())
                done, _ = ray.wait(list(pending), num_returns=1)
                config, submitted = pending.pop(done[0])
                try:
                    record, task_s, node_id = ray.get(done[0])
                except ray.exceptions.RayError as error:
                    record, task_s, node_id = self.lost_record(config, error), None, None
                self.tasks.append(
                    TaskRecord(config.key(), node_id, task_s, submitted, time.perf_counter())
                )
                yield config, record
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def lost_record(self, config: SweepConfig, error: Exception) -> Measurement:
        """The ``error`` record of a task Ray could not complete (its worker or node was
        lost on every attempt); the node's environment is unknown."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        attempts = 1 + self.max_retries
        return Measurement(
            config=config,
            status="error",
            error=f"Ray task lost after {attempts} attempt(s): {type(error).__name__}: {reason}",
            env={HOST_KIND_KEY: UNKNOWN_HOST},
        )

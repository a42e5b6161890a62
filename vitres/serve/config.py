"""The settings of ``vitres serve``: what to serve, how to batch, when to roll back, and
what the HTTP layer accepts. Plain dataclasses without heavy imports, so the command line
can build its help from them without loading the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitres.limits import DEFAULT_MAX_PIXELS

__all__ = ["HttpLimits", "RayServeConfig", "ServeConfig"]


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP layer accepts.

    Attributes:
        max_bytes: Largest image file, bytes (413 above).
        max_pixels: Largest image, height x width (413 above; checked before decoding).
        request_timeout_s: Longest a request waits for its answer (504 after).
        default_top_k: Classes returned when the query names none.
        max_in_flight: Most classify requests inside the server at once (being read,
            decoded, queued, run or answered); more are shed (503) before their body is
            read. ``None``: twice the queue limit plus 64 (:meth:`in_flight_limit`).
    """

    max_bytes: int = 8 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 30.0
    default_top_k: int = 5
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_bytes and max_pixels must be positive")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")

    def in_flight_limit(self, queue_limit: int) -> int:
        """The in-flight bound for a worker queue of ``queue_limit``: ``max_in_flight``
        when set, else ``2 * queue_limit + 64`` (room for the queue, the batch running,
        and requests being decoded or answered)."""
        return self.max_in_flight if self.max_in_flight is not None else 2 * queue_limit + 64


@dataclass
class ServeConfig:
    """Everything ``vitres serve`` takes.

    Attributes:
        model: Model reference (reference name, checkpoint path, registry name,
            ``module:factory``).
        slo_ms: Latency objective per request, arrival to answer, ms.
        records: Sweep records (JSON lines) with latencies of this model and backend,
            ideally at several batch sizes; ``None`` (omitted) runs a short calibration
            sweep at startup.
        controller: ``predictive`` (batch x resolution under the SLO) or ``fixed:R`` /
            ``fixed:native`` (one resolution, batches of what is queued, no SLO shedding).
        max_batch: Largest batch.
        backend: Backend to serve on (dynamic batch sizes needed): eager, eager-bf16,
            onnxruntime...; default: with ``records``, the backend of the config they
            recommend (when they time it at several batch sizes), else eager.
        resolutions: Resolution ladder, e.g. ``16,20,28,40,56`` (default: the records'
            resolutions; when calibrating, 0.5x to 2x the native size).
        patch_size: Patch size the records were measured at, when they hold several.
        threads: CPU threads (default: those the records were measured with).
        device: ``cpu`` or ``cuda``.
        queue_limit: Most requests waiting (default: 4 x the largest batch).
        batch_time_fraction: Most of the SLO one batch may take (predictive).
        safe_resolution: Rollback resolution (default: the ladder's smallest).
        safe_backend: Rollback backend (``eager`` is fp32 PyTorch).
        rollback_window_s: Seconds out of band before rolling back; ``0`` disables
            monitoring.
        latency_tolerance: Out of band above this median of served / sweep p95 latency.
        max_error_rate: Out of band above this fraction of failed requests.
        max_bytes: Largest image file accepted, bytes (413 above).
        max_pixels: Largest image accepted, pixels (413 above).
        request_timeout_s: Seconds a request may wait for its answer (504 after).
        max_in_flight: Most classify requests inside the server at once (default: twice
            the queue limit plus 64); more are shed before their body is read.
        backlog: Connections the kernel holds for the server before it accepts them.
        retry_after_s: ``Retry-After`` of a shed request, seconds.
        save_calibration: Where to write the startup calibration's records (reuse them
            as ``records``).
        host: Address to listen on.
        port: Port to listen on.
        progress: Show the calibration progress bar.
        model_name: The model's name in the Open Inference Protocol
            (``/v2/models/NAME/infer``); default: its file or bundled name.
    """

    model: str
    slo_ms: float = 50.0
    records: str | None = None
    controller: str = "predictive"
    max_batch: int = 32
    backend: str | None = None
    resolutions: str | None = None
    patch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    queue_limit: int | None = None
    batch_time_fraction: float = 0.5
    safe_resolution: str | None = None
    safe_backend: str = "eager"
    rollback_window_s: float = 10.0
    latency_tolerance: float = 2.0
    max_error_rate: float = 0.05
    max_bytes: int = 8 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 30.0
    max_in_flight: int | None = None
    backlog: int = 2048
    retry_after_s: float = 1.0
    save_calibration: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    progress: bool = True
    model_name: str | None = None

    def served_name(self) -> str:
        """The Open Inference Protocol name: ``model_name``, else the model's file or
        bundled name."""
        from vitres.serve.oip import served_model_name

        return self.model_name or served_model_name(self.model)

    def limits(self) -> HttpLimits:
        """The HTTP layer's part of the settings."""
        return HttpLimits(
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            request_timeout_s=self.request_timeout_s,
            max_in_flight=self.max_in_flight,
        )


@dataclass
class RayServeConfig:
    """How ``vitres serve --ray`` deploys the server on Ray Serve.

    Attributes:
        address: ``None`` starts a local Ray instance (stopped again at the end);
            ``"auto"`` joins the cluster this machine belongs to; ``"host:port"`` (or
            ``"ray://host:10001"``) a given head.
        replicas: Replicas of the deployment; each one is a whole server (model, policy,
            worker, monitor) and asks Ray for ``num_cpus`` = its threads.
        num_cpus: CPUs of a local Ray instance (default: this machine's physical cores).
        app_name: Name of the Serve application (one per cluster with that name).
        metrics_interval_s: How often each replica publishes its metrics to the others.
        init_options: Further ``ray.init`` keywords (e.g. ``_temp_dir``) when this
            command connects to or starts Ray.
    """

    address: str | None = None
    replicas: int = 1
    num_cpus: int | None = None
    app_name: str = "vitres"
    metrics_interval_s: float = 1.0
    init_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"--ray-cpus must be at least 1, got {self.num_cpus}")
        if not self.metrics_interval_s > 0:
            raise ValueError(f"metrics_interval_s must be > 0, got {self.metrics_interval_s}")

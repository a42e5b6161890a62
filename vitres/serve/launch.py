"""What ``vitres serve`` runs: the model, its latency model (from the sweep's records, or
from a short calibration at startup (timed with vitres.measure)), the batching policy, a safe configuration to
roll back to, and uvicorn on top.

:func:`build_worker` assembles everything up to the worker (tests and benchmarks use
it with FastAPI's test client); :func:`serve` adds the HTTP server and runs it until
SIGTERM or Ctrl-C, which stop it gracefully: no new connections, every request already
received is answered, then the process exits with status 0.

Controllers:

* ``predictive`` -- :class:`~vitres.serve.batching.SloBatchingPolicy` over every
  resolution of the ladder (the records' resolutions, or ``resolutions``).
* ``fixed:R`` (``fixed:28``, ``fixed:28x40``, ``fixed:native``) --
  :class:`~vitres.serve.batching.FixedBatchingPolicy`: one resolution, batches of
  what is queued up to ``max_batch``, no SLO shedding (the baseline).

The safe configuration (``safe_resolution``, default the smallest of the ladder, on
``safe_backend``, default ``eager`` = fp32 PyTorch) is built and warmed at startup, so a
rollback is a pointer swap.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from vitres.devices import check_device, check_device_name
from vitres.measure import TimingConfig, set_threads
from vitres.models.checkpoint import checkpoint_digest
from vitres.runtime.calibration import CALIBRATION_TIMING
from vitres.runtime.latency import LatencyModel, OnlineCorrection
from vitres.runtime.session import default_ladder
from vitres.serve.app import ServerApp, create_app
from vitres.serve.batching import FixedBatchingPolicy, SloBatchingPolicy
from vitres.serve.config import ServeConfig
from vitres.serve.engine import ServingEngine
from vitres.serve.metrics import ServerMetrics
from vitres.serve.monitor import BandMonitor
from vitres.serve.worker import BatchingWorker, CorrectedPredictor, ServingMode
from vitres.tune.deployment import DEFAULT_BACKEND, recommended_backend, records_of_model
from vitres.tune.records import Measurement, append_result, read_results

Size = tuple[int, int]

__all__ = [
    "ServeConfig",
    "build_worker",
    "calibration_ladder",
    "parse_controller",
    "serve",
]

logger = logging.getLogger("vitres.serve")

_FIXED = re.compile(r"^fixed:(native|\d+|\d+[x×]\d+)$")


def parse_controller(spec: str, native: Size) -> Size | None:
    """``"predictive"`` -> ``None``; ``"fixed:28"`` -> ``(28, 28)``; ``"fixed:28x40"`` ->
    ``(28, 40)``; ``"fixed:native"`` -> ``native``.

    Raises:
        ValueError: anything else.
    """
    text = spec.strip().lower()
    if text == "predictive":
        return None
    match = _FIXED.match(text)
    if not match:
        raise ValueError(
            f"unknown controller {spec!r}; use predictive, fixed:native, fixed:R (e.g. fixed:28) "
            "or fixed:HxW (e.g. fixed:28x40)"
        )
    value = match.group(1)
    if value == "native":
        return tuple(native)
    from vitres.layers.sizes import parse_resolutions

    return parse_resolutions(value)[0]


def calibration_ladder(model: nn.Module) -> list[Size]:
    """Resolutions the start-up calibration times when none are given: the stream runner's
    default (:func:`vitres.runtime.session.default_ladder`, about 0.4x the native size up
    to it). Without measured accuracy a larger size is taken to be more accurate, which
    holds up to the size a model was trained at, not necessarily above it."""
    return [(size, size) for size in default_ladder(model)]


def calibration_batches(max_batch: int) -> list[int]:
    """Batch sizes the start-up calibration times: powers of two up to ``max_batch``, and it."""
    sizes = {1, max_batch}
    size = 2
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def _calibrate(
    config: ServeConfig,
    model: nn.Module,
    ladder: Sequence[Size],
    safe: Size,
    log: Callable[[str], None],
) -> list[Measurement]:
    """Times the ladder (and the safe size on the safe backend) at every calibration batch
    with :func:`vitres.runtime.calibration.calibrate`, speed only, and returns the points as
    records (written to ``config.save_calibration`` when set)."""
    from vitres.runtime.calibration import calibrate

    batches = calibration_batches(config.max_batch)
    runs = [(config.backend, list(ladder))]
    if config.safe_backend != config.backend:
        runs.append((config.safe_backend, [safe]))
    count = sum(len(sizes) for _, sizes in runs) * len(batches)
    log(
        f"vitres serve: no --records given: calibrating first, a short speed-only sweep of "
        f"{count} configs ({len(ladder)} resolutions x batches {batches} on "
        f"{config.backend}); pass --records FILE (a `vitres sweep` results file) to skip this"
    )
    start = time.perf_counter()
    records: list[Measurement] = []
    for backend, sizes in runs:
        calibration = calibrate(
            model,
            sizes,
            backend=backend,
            batches=batches,
            device=config.device,
            threads=config.threads,
            patch_size=config.patch_size,
            timing=TimingConfig(**CALIBRATION_TIMING),
            progress=config.progress,
            log=log,
        )
        records += calibration.records(config.model)
    if config.save_calibration:
        for record in records:
            append_result(config.save_calibration, record)
    failed = [m for m in records if not m.ok]
    log(
        f"vitres serve: calibration done in {time.perf_counter() - start:.1f} s "
        f"({len(records) - len(failed)} ok, {len(failed)} failed)"
        + (f"; records saved to {config.save_calibration}" if config.save_calibration else "")
    )
    return records


def _latency_model(
    records: Sequence[Measurement], config: ServeConfig, backend: str, log: Callable[[str], None]
) -> LatencyModel:
    mine = records_of_model(
        records, config.model, checkpoint_digest(config.model), config.records or "the records"
    )
    return LatencyModel.from_records(
        mine,
        backend=backend,
        device=config.device,
        threads=config.threads,
        patch_size=config.patch_size,
    )


def with_backend(
    config: ServeConfig, records: Sequence[Measurement] | None, log: Callable[[str], None]
) -> ServeConfig:
    """``config`` with its backend set: as given, else the backend of the config the
    records recommend when they can predict it at every batch size served, else eager."""
    if config.backend is not None:
        return config
    if records is None:
        return dataclasses.replace(config, backend=DEFAULT_BACKEND)
    mine = records_of_model(
        records, config.model, checkpoint_digest(config.model), config.records or "the records"
    )

    def usable(backend: str) -> str | None:
        batches = {m.config.batch_size for m in mine if m.config.backend == backend}
        if len(batches) < 2 and config.max_batch > 1:
            return f"the records time it at batch {sorted(batches)} only; a server batches"
        return None

    backend, why = recommended_backend(mine, usable)
    log(f"vitres serve: backend {why}")
    return dataclasses.replace(config, backend=backend)


def _check_predictable(model: LatencyModel, sizes: Sequence[Size], max_batch: int) -> None:
    for size in sizes:
        for batch in (1, max_batch):
            try:
                model.p95_ms(size, batch)
            except ValueError as error:
                raise ValueError(
                    f"the latency model cannot predict {size[0]}x{size[1]} at batch {batch}: "
                    f"{error}. Sweep that resolution, or leave it out of --res"
                ) from None


def load_records(
    config: ServeConfig, model: nn.Module | None = None, log: Callable[[str], None] = print
) -> list[Measurement]:
    """The latency records to serve with: ``config.records`` read, or (without it) a short
    calibration of ``model`` (default: resolved from ``config.model``) on this machine.

    Raises:
        FileNotFoundError: ``config.records`` does not exist.
        ValueError: bad controller or resolutions.
    """
    from vitres.layers.sizes import parse_resolutions

    if config.records is not None:
        import os

        if not os.path.exists(config.records):
            raise FileNotFoundError(
                f"no results file {config.records}; run `vitres sweep --model {config.model} "
                f"--backend {config.backend or DEFAULT_BACKEND} --batch 1,8,32 ... --out {config.records}` first, "
                "or leave out --records to calibrate at startup"
            )
        return read_results(config.records)
    config = with_backend(config, None, log)
    if model is None:
        from vitres.models.resolve import resolve_model

        model = resolve_model(config.model)
    fixed = parse_controller(config.controller, tuple(model.config.img_size))
    ladder = (
        calibration_ladder(model)
        if config.resolutions is None
        else parse_resolutions(config.resolutions)
    )
    if fixed is not None and fixed not in ladder:
        ladder = [*ladder, fixed]
    return _calibrate(config, model, ladder, _safe_size(config, ladder), log)


def serving_threads(config: ServeConfig, records: Sequence[Measurement]) -> int | None:
    """The CPU threads a server computes with: ``config.threads``, else those the records'
    latencies were measured with (``None`` when they do not say).

    Raises:
        ValueError: the records have no usable latencies of this model and backend.
    """
    if config.threads is not None:
        return config.threads
    config = with_backend(config, records, lambda line: None)
    return _latency_model(records, config, config.backend, lambda line: None).threads


def check_settings(config: ServeConfig, *, local_device: bool = True) -> None:
    """Refuses settings no server can run with (before any model is loaded); on Ray
    (``local_device=False``) the replicas may have GPUs this machine lacks."""
    (check_device if local_device else check_device_name)(config.device)
    if not config.slo_ms > 0:
        raise ValueError(f"--slo-ms must be a positive number of milliseconds, got {config.slo_ms}")
    if config.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {config.max_batch}")
    if not 0 <= config.port <= 65535:
        raise ValueError(
            f"--port {config.port} is not a TCP port; give 1..65535 (0: any free port)"
        )


def _serving_mode(
    config: ServeConfig,
    model: nn.Module,
    latency: LatencyModel,
    ladder: list[Size],
    fixed: Size | None,
    serving_sizes: list[Size],
    log: Callable[[str], None],
) -> ServingMode:
    """The configuration served first: the predictive policy over ``ladder`` (or the
    fixed one at ``fixed``), its engine warmed and its correction seeded."""
    _check_predictable(latency, serving_sizes, config.max_batch)
    predictor = CorrectedPredictor(OnlineCorrection(latency))
    if fixed is None:
        accuracy = {size: latency.expected_accuracy(size) for size in ladder}
        policy = SloBatchingPolicy(
            ladder,
            predictor,
            config.slo_ms,
            config.max_batch,
            accuracy=accuracy,
            queue_limit=config.queue_limit,
            batch_time_fraction=config.batch_time_fraction,
        )
        name = "predictive"
    else:
        policy = FixedBatchingPolicy(
            fixed,
            config.slo_ms,
            config.max_batch,
            predict_ms=predictor,
            queue_limit=config.queue_limit,
        )
        name = f"fixed:{fixed[0]}x{fixed[1]}"
    engine = ServingEngine(
        model,
        config.backend,
        serving_sizes,
        config.max_batch,
        device=config.device,
        patch_size=latency.patch_size,
    )
    engine.warm()
    _seed_correction(engine, predictor, serving_sizes, config.max_batch, log)
    return ServingMode(name, engine, policy, predictor)


def _safe_mode(
    config: ServeConfig,
    safe_model: nn.Module,
    records: Sequence[Measurement],
    latency: LatencyModel,
    safe_size: Size,
    log: Callable[[str], None],
) -> ServingMode:
    """The configuration to roll back to: ``safe_size`` on ``config.safe_backend``,
    predicted with that backend's records (else the served backend's), built and warmed
    now so that a rollback is a pointer swap."""
    try:
        safe_latency = _latency_model(records, config, config.safe_backend, log)
    except ValueError:
        log(
            f"vitres serve: the records have no {config.safe_backend} latencies; the safe "
            f"configuration is predicted with {config.backend}'s"
        )
        safe_latency = latency
    _check_predictable(safe_latency, [safe_size], config.max_batch)
    safe_predictor = CorrectedPredictor(OnlineCorrection(safe_latency))
    safe_engine = ServingEngine(
        safe_model,
        config.safe_backend,
        [safe_size],
        config.max_batch,
        device=config.device,
        patch_size=latency.patch_size,
    )
    safe_engine.warm()
    _seed_correction(safe_engine, safe_predictor, [safe_size], config.max_batch, None)
    safe_policy = SloBatchingPolicy(
        [safe_size],
        safe_predictor,
        config.slo_ms,
        config.max_batch,
        queue_limit=config.queue_limit,
        batch_time_fraction=config.batch_time_fraction,
    )
    safe_name = f"safe:{safe_size[0]}x{safe_size[1]}/{config.safe_backend}"
    return ServingMode(safe_name, safe_engine, safe_policy, safe_predictor)


def _log_worker(
    config: ServeConfig,
    mode: ServingMode,
    safe_mode: ServingMode | None,
    latency: LatencyModel,
    serving_sizes: list[Size],
    log: Callable[[str], None],
) -> None:
    predictor = mode.predictor
    assert predictor is not None  # both policies here predict
    log(f"vitres serve: {mode.describe()}; SLO {config.slo_ms:g} ms")
    log(f"vitres serve: latency model {latency.describe()}")
    for size in serving_sizes:
        acc = latency.expected_accuracy(size)
        log(
            f"  {size[0]}x{size[1]}: p95 {predictor(size, 1):.2f} ms at batch 1, "
            f"{predictor(size, config.max_batch):.2f} ms at batch {config.max_batch}"
            + ("" if acc is None else f", accuracy {acc:.1%}")
        )
    if safe_mode is not None:
        log(
            f"vitres serve: rollback to {safe_mode.name} after {config.rollback_window_s:g} s out "
            f"of band (latency > {config.latency_tolerance:g}x the sweep's p95 or error rate > "
            f"{config.max_error_rate:.0%})"
        )


def build_worker(
    config: ServeConfig,
    *,
    model: nn.Module | None = None,
    records: Sequence[Measurement] | None = None,
    log: Callable[[str], None] = print,
) -> BatchingWorker:
    """The model, latency model, policy, engines and monitor, as a (not started) worker.

    Args:
        config: What to serve and how.
        model: The model itself (default: resolved from ``config.model``).
        records: Sweep records (default: read from ``config.records``, else calibrate).
        log: Where progress lines go.

    Raises:
        ValueError: bad controller, resolution, backend or records.
        FileNotFoundError: ``config.records`` does not exist.
    """
    from vitres.layers.sizes import parse_resolutions
    from vitres.models.resolve import resolve_model

    check_settings(config)
    if config.threads is not None:
        set_threads(config.threads)
    model = model if model is not None else resolve_model(config.model)
    safe_model = copy.deepcopy(model)  # backends may cast their model in place
    native = tuple(model.config.img_size)
    fixed = parse_controller(config.controller, native)
    ladder_given = None if config.resolutions is None else parse_resolutions(config.resolutions)

    if records is None and config.records is not None:
        records = load_records(config, model, log)
    config = with_backend(config, records, log)
    if records is None:
        records = load_records(config, model, log)

    latency = _latency_model(records, config, config.backend, log)
    if config.threads is None and latency.threads is not None:
        set_threads(latency.threads)  # serve as the records were measured
    ladder = list(ladder_given or latency.resolutions)
    safe_size = _safe_size(config, ladder)
    serving_sizes = [fixed] if fixed is not None else ladder
    mode = _serving_mode(config, model, latency, ladder, fixed, serving_sizes, log)
    safe_mode = None
    monitor = None
    if config.rollback_window_s > 0:
        safe_mode = _safe_mode(config, safe_model, records, latency, safe_size, log)
    metrics = ServerMetrics(config.slo_ms, config.max_batch)
    if config.rollback_window_s > 0:
        monitor = BandMonitor(
            window_s=config.rollback_window_s,
            latency_tolerance=config.latency_tolerance,
            max_error_rate=config.max_error_rate,
        )
    worker = BatchingWorker(
        mode, metrics, safe=safe_mode, monitor=monitor, retry_after_s=config.retry_after_s
    )
    _log_worker(config, mode, safe_mode, latency, serving_sizes, log)
    return worker


def _seed_correction(
    engine: ServingEngine,
    predictor: CorrectedPredictor,
    sizes: Sequence[Size],
    max_batch: int,
    log: Callable[[str], None] | None,
) -> None:
    """Times one batch per size at batch 1 and ``max_batch`` after the warm-up and seeds
    the online correction with the median of measured / predicted (as the stream runner
    does), so the first requests already see this process's speed."""
    model = predictor.correction.model
    ratios = []
    for size in sizes:
        for batch in sorted({1, max_batch}):
            ratios.append(engine.time_batch(size, batch) / model.predict(size, batch).median_ms)
    factor = statistics.median(ratios)
    predictor.correction.set_factor(factor)
    if log is not None:
        log(
            f"vitres serve: warm-up ran at {factor:.2f}x the records' latency; predictions start there"
        )


def _safe_size(config: ServeConfig, ladder: Sequence[Size]) -> Size:
    if config.safe_resolution is not None:
        from vitres.layers.sizes import parse_resolutions

        return parse_resolutions(config.safe_resolution)[0]
    return min(ladder, key=lambda s: (s[0] * s[1], s))


def build_app(config: ServeConfig, **kwargs: object) -> ServerApp:
    """:func:`build_worker` wrapped in the HTTP app (``kwargs`` go to build_worker)."""
    worker = build_worker(config, **kwargs)  # type: ignore[arg-type]
    return create_app(worker, config.limits(), model_name=config.served_name())


def _fastest_http_stack() -> tuple[str, str]:
    """uvicorn's fastest HTTP parser and event loop that are installed: httptools and
    uvloop (both C) when present, else h11 and asyncio (pure Python, several times the
    CPU per request)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


def attach_log_handler() -> None:
    """Sends the ``vitres.serve`` log (the app's and the worker's lines) to stderr, once."""
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s vitres.serve %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _uvicorn_config(app: Any, config: ServeConfig, http: str, loop: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=http,
        loop=loop,
        backlog=config.backlog,
        proxy_headers=False,  # client addresses are not used: skip the per-request rewrite
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(math.ceil(config.request_timeout_s)) + 5,
    )


def serve(config: ServeConfig, log: Callable[[str], None] = print) -> int:
    """Listens on ``config.host:config.port`` at once, builds the server meanwhile
    (:class:`~vitres.serve.starting.StartingApp`: live at once, ready once calibrated),
    and serves until SIGTERM or Ctrl-C; returns 0 after a graceful stop.

    Raises:
        ValueError: bad configuration, the address could not be bound, or the server
            could not be built (the build's own error).
    """
    import uvicorn

    from vitres.serve.starting import StartingApp

    if config.backlog < 1:
        raise ValueError(f"--backlog must be at least 1, got {config.backlog}")
    check_settings(config)
    attach_log_handler()
    http, loop = _fastest_http_stack()
    holder: dict[str, Any] = {}

    def on_ready(app: ServerApp) -> None:
        log(
            f"vitres serve: ready; HTTP parser {http}, event loop {loop}, accept backlog "
            f"{config.backlog}, at most {app.state.max_in_flight} requests in flight"
        )

    def on_failure(error: BaseException) -> None:
        holder["server"].should_exit = True

    # a results file is read before listening: a wrong path is an error, not a start
    records = load_records(config, log=log) if config.records is not None else None
    starting = StartingApp(
        lambda: build_app(config, records=records, log=log), on_ready, on_failure
    )
    server = uvicorn.Server(_uvicorn_config(starting, config, http, loop))
    holder["server"] = server
    log(
        f"vitres serve: listening on {config.host}:{config.port} while the model loads and "
        "calibrates: /v2/health/live answers 200 now, /healthz and /v2/health/ready 503 "
        "until it is ready"
    )
    stops: list[int] = []
    # uvicorn handles SIGTERM itself and, once stopped, raises it again for the handler
    # it found installed: this one, so that a graceful stop ends with status 0
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
    try:
        server.run()
    except SystemExit as error:
        raise ValueError(
            f"could not serve on {config.host}:{config.port} (see the error above); is the port "
            "in use? choose another with --port"
        ) from error
    finally:
        signal.signal(signal.SIGTERM, previous)
    if starting.error is not None:
        if isinstance(starting.error, (ValueError, FileNotFoundError)):
            raise starting.error
        raise ValueError(f"the server could not start: {starting.error}") from starting.error
    if starting.app is None:
        log(f"vitres serve: stopped{' on SIGTERM' if stops else ''} before it was ready")
        return 0
    stats = starting.app.state.worker.stats
    log(
        f"vitres serve: stopped{' on SIGTERM' if stops else ''}: {stats.answered} answered, "
        f"{stats.shed} shed, {stats.failed} failed, in {stats.batches} batches"
        + (f"; rolled back ({stats.rollbacks[0].reason})" if stats.rollbacks else "")
    )
    return 0

"""The HTTP face of the server: a FastAPI app over a :class:`BatchingWorker`.

Endpoints:

* ``POST /v1/classify`` -- one image, as the raw request body or as a multipart file
  (field ``file`` or ``image``, else the first file), in any format Pillow reads.
  Query ``top_k`` (default 5). Answers JSON ``{label, index, probability, top_k: [{label,
  index, probability}...], resolution: [h, w], batch_size, queue_ms, latency_ms,
  controller}``. Errors are JSON ``{"error": kind, "message": ...}``: 400 not an image /
  corrupt / bad query, 413 over the byte or pixel limit, 503 shed (with ``Retry-After``)
  or shutting down, 500 inference failed, 504 no answer within the request timeout.
* ``GET /healthz`` -- 200 ``{"status": "ok", ...}`` while serving, 503 while stopping.
* ``GET /metrics`` -- Prometheus text (:mod:`vitres.runtime.metrics`).

Every request gets exactly one response: the handler has one return per outcome and
the worker answers each queued request once (:mod:`vitres.runtime.worker`). The app's
lifespan starts the worker and, at shutdown, lets it finish what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from vitres.data.decode import ImageInputError, ImageTooLargeError, decode_image, peek_pixels
from vitres.runtime.metrics import CONTENT_TYPE_LATEST
from vitres.runtime.serve_config import HttpLimits
from vitres.runtime.worker import BatchingWorker, RequestRejected

__all__ = ["HttpLimits", "create_app"]

logger = logging.getLogger("vitres.serve")

# room for multipart boundaries and part headers on top of the image itself
_MULTIPART_OVERHEAD = 64 * 1024
# small images (by file size and by the pixel count in their header) are decoded on the
# event loop -- tens of microseconds, cheaper than a hop to the thread pool; larger ones
# in the thread pool, so that they never stall the loop
_DECODE_INLINE_BYTES = 64 * 1024
_DECODE_INLINE_PIXELS = 256 * 256


class _BodyTooLarge(Exception):
    pass


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (before reading it) a declared length over ``limit``
    and stopping as soon as a streamed (chunked) body passes it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"the request body is {declared} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge(f"the request body is over {limit} bytes")
    return bytes(body)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The image file of a multipart body: field ``file``, else ``image``, else the first
    file part.

    Raises:
        ImageInputError: malformed multipart, or no file part.
    """

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=8, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ImageInputError(f"the multipart body could not be parsed: {error.message}") from None
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        chosen = next((v for k, v in files if k in ("file", "image")), None)
        chosen = chosen or (files[0][1] if files else None)
        if chosen is None:
            fields = sorted({k for k, _ in form.multi_items()})
            raise ImageInputError(
                f"the multipart body has no file part (fields: {fields or 'none'}); send the "
                "image as a file field named 'file', e.g. curl -F file=@image.png"
            )
        return await chosen.read()
    finally:
        await form.close()


def create_app(
    worker: BatchingWorker,
    limits: HttpLimits | None = None,
    metrics_text: Callable[[], Awaitable[bytes]] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``worker``; its lifespan starts and stops the worker.

    Args:
        worker: The batching worker (not started; the app starts it).
        limits: Input limits and the request timeout.
        metrics_text: What ``GET /metrics`` answers (Prometheus text); default: this
            worker's metrics. A Ray Serve replica passes the merge of every replica's.
    """
    limits = limits or HttpLimits()
    metrics = worker.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        worker.start()
        logger.info("serving %s", worker.mode.describe())
        try:
            yield
        finally:
            # uvicorn calls this after the open connections have their answers
            await run_in_threadpool(worker.stop, limits.request_timeout_s)
            logger.info(
                "stopped: %d answered, %d shed, %d failed, %d batches",
                worker.stats.answered,
                worker.stats.shed,
                worker.stats.failed,
                worker.stats.batches,
            )

    app = FastAPI(
        title="vitres serve",
        description="Image classification with batch size and resolution chosen per batch "
        "under a latency SLO.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.limits = limits

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        message = str(error.detail)
        if error.status_code == 405:
            allowed = (error.headers or {}).get("Allow") or (error.headers or {}).get("allow")
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f"; use {allowed}" if allowed else ""
            )
        elif error.status_code == 404:
            message = (
                f"no endpoint {request.url.path}; the endpoints are POST /v1/classify, "
                "GET /healthz and GET /metrics"
            )
        return _error(
            error.status_code, kinds.get(error.status_code, "http_error"), message, error.headers
        )

    def count(outcome: str) -> None:
        metrics.requests.labels(outcome=outcome).inc()

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        arrival = worker.clock()
        if worker.closing:
            count("unavailable")
            return _error(503, "shutting_down", "the server is shutting down; retry elsewhere")
        top_k_text = request.query_params.get("top_k")
        top_k = limits.default_top_k
        if top_k_text is not None:
            if not top_k_text.isdigit() or int(top_k_text) < 1:
                count("bad_request")
                return _error(
                    400,
                    "bad_query",
                    f"top_k must be a positive integer, got {top_k_text!r}",
                )
            top_k = int(top_k_text)
        top_k = min(top_k, worker.num_classes)
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        limit = limits.max_bytes + (_MULTIPART_OVERHEAD if multipart else 0)
        try:
            body = await _read_body(request, limit)
            data = await _multipart_file(request, body) if multipart else body
            options = {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}
            pixels = peek_pixels(data) if len(data) <= _DECODE_INLINE_BYTES else None
            if pixels is not None and pixels <= _DECODE_INLINE_PIXELS:
                image = decode_image(data, worker.in_chans, **options)
            else:
                image = await run_in_threadpool(decode_image, data, worker.in_chans, **options)
        except _BodyTooLarge as error:
            count("too_large")
            return _error(
                413,
                "too_large",
                f"{error}, over the limit of {limits.max_bytes} bytes per image; send a "
                "smaller image",
            )
        except ImageTooLargeError as error:
            count("too_large")
            return _error(413, "too_large", str(error))
        except ImageInputError as error:
            count("bad_request")
            return _error(400, "bad_image", str(error))
        try:
            future = worker.submit(image, arrival, top_k)
        except RequestRejected as error:
            return _rejected(error)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            count("timeout")
            return _error(
                504,
                "timeout",
                f"no answer within {limits.request_timeout_s:g} s; the server is overloaded",
            )
        except RequestRejected as error:
            return _rejected(error)
        except Exception as error:  # noqa: BLE001 - any failure still gets its one answer
            logger.exception("request failed")
            count("error")
            return _error(500, "internal_error", f"{type(error).__name__}: {error}")
        count("ok")
        metrics.request_latency.observe(max(0.0, worker.clock() - arrival))
        return JSONResponse(result)

    def _rejected(error: RequestRejected) -> JSONResponse:
        headers = None
        if error.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
        outcome = {"shed": "shed", "shutting_down": "unavailable"}.get(error.kind, "error")
        count(outcome)
        return _error(error.status, error.kind, str(error), headers)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        mode = worker.mode
        body = {
            "status": "shutting_down" if worker.closing else "ok",
            "controller": mode.name,
            "rolled_back": worker.rolled_back,
            "backend": mode.engine.backend_name,
            "precision": mode.engine.precision,
            "resolutions": [list(s) for s in mode.policy.resolutions],
            "max_batch": mode.policy.max_batch,
            "slo_ms": mode.policy.slo_ms,
            "queue_depth": worker.queue_depth,
        }
        return JSONResponse(body, status_code=503 if worker.closing else 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        text = metrics.render() if metrics_text is None else await metrics_text()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app

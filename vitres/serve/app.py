"""The HTTP face of the server: a FastAPI app over a :class:`BatchingWorker`, with the
one endpoint that carries the load answered on a raw ASGI fast path in front of it.

Endpoints:

* ``POST /v1/classify`` -- one image, as the raw request body or as a multipart file
  (field ``file`` or ``image``, else the first file), in any format Pillow reads.
  Query ``top_k`` (default 5). Answers JSON ``{label, index, probability, top_k: [{label,
  index, probability}...], resolution: [h, w], batch_size, queue_ms, latency_ms,
  controller}``. Errors are JSON ``{"error": kind, "message": ...}``: 400 not an image /
  corrupt / bad query, 413 over the byte or pixel limit, 503 shed (with ``Retry-After``)
  or shutting down, 500 inference failed, 504 no answer within the request timeout.
* ``GET /healthz`` -- 200 ``{"status": "ok", ...}`` while serving, 503 while stopping.
* ``GET /metrics`` -- Prometheus text (:mod:`vitres.serve.metrics`).
* ``/v2/...`` -- the Open Inference Protocol (KServe v2; :mod:`vitres.serve.oip`), on the
  same worker: health, model metadata and batched ``infer``.

**The fast path.** ``POST /v1/classify`` is answered by :class:`ServerApp` straight from
the ASGI messages (the body from ``receive``, one pre-encoded JSON answer to ``send``),
skipping FastAPI's routing, request object, dependency machinery and response classes:
about a third of a millisecond of CPU per request, which at a few hundred requests a
second is a good part of a core. Every other path and method goes to the FastAPI app
(``/docs`` lists the classify route; other methods on it get its 405). Both routes call
the same handler (:func:`create_app`'s ``answer``).

**Admission before the body.** The event loop's delay (:mod:`vitres.serve.loop_delay`,
its heartbeat runs in the app's lifespan) counts against the SLO, and the handler asks
the worker whether the request would be admitted *before* reading and decoding the
body, so an overloaded server answers 503 for a few tens of microseconds of CPU. The
number of classify requests inside the server at once is bounded
(:attr:`HttpLimits.max_in_flight`; over it: 503 ``shed``, reason ``in_flight``), which
bounds memory and the work the loop has taken on.

Every request gets exactly one response: the handler has one return per outcome and
the worker answers each queued request once (:mod:`vitres.serve.worker`); a client
that leaves before its body arrived is counted (``disconnected``), as there is no one
left to answer. The app's lifespan starts the worker and the heartbeat and, at shutdown,
lets the worker finish what is queued.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from vitres.data.decode import (
    ImageInputError,
    ImageTooLargeError,
    open_image,
    small_image_warning,
)
from vitres.serve.config import HttpLimits
from vitres.serve.metrics import CONTENT_TYPE_LATEST, OUTCOMES
from vitres.serve.worker import BatchingWorker, RequestRejected

__all__ = ["CLASSIFY_PATH", "HttpLimits", "ServerApp", "create_app"]

logger = logging.getLogger("vitres.serve")

CLASSIFY_PATH = "/v1/classify"
# room for multipart boundaries and part headers on top of the image itself
_MULTIPART_OVERHEAD = 64 * 1024
# small images (by file size and by the pixel count in their header) are decoded on the
# event loop -- tens of microseconds, cheaper than a hop to the thread pool; larger ones
# in the thread pool, so that they never stall the loop
_DECODE_INLINE_BYTES = 64 * 1024
_DECODE_INLINE_PIXELS = 256 * 256
_JSON = b"application/json"

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, JSON body (encoded), extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def send(self, send: Send) -> None:
        """Sends it as raw ASGI messages."""
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(self.body))]
        headers.extend(self.headers)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def response(self) -> Response:
        """The same answer as a Starlette response (for the FastAPI route)."""
        extra = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        return Response(self.body, self.status, headers=extra, media_type="application/json")


def _dumps(value: Any) -> bytes:
    # as Starlette's JSONResponse: compact, UTF-8, and no NaN (not JSON; it raises, and
    # the handler answers 500)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@functools.lru_cache(maxsize=256)
def _error(status: int, kind: str, message: str, retry_after_s: float | None = None) -> Reply:
    # cached: under overload the same few 503s are sent thousands of times a second, and
    # a Reply is immutable
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if retry_after_s is not None:
        headers = ((b"retry-after", b"%d" % max(1, math.ceil(retry_after_s))),)
    return Reply(status, _dumps({"error": kind, "message": message}), headers)


def _error_response(
    status: int, kind: str, message: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refusing (before reading it) a declared length over ``limit``
    and stopping as soon as a streamed (chunked) body passes it.

    Raises:
        _BodyTooLarge: over the limit.
        _ClientGone: the client disconnected first.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"the request body is {declared.decode()} bytes")
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    parts, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"the request body is over {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _multipart_file(headers: Headers, body: bytes) -> bytes:
    """The image file of a multipart body: field ``file``, else ``image``, else the first
    file part.

    Raises:
        ImageInputError: malformed multipart, or no file part.
    """

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=8, max_fields=32)
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


class ServerApp:
    """The ASGI app ``vitres serve`` runs: ``POST /v1/classify`` on the fast path,
    everything else (and the lifespan) through the FastAPI app.

    Args:
        api: The FastAPI app (health, metrics, docs, errors, lifespan).
        answer: The classify handler, ``(scope, receive) -> Reply``.
    """

    def __init__(self, api: FastAPI, answer: Callable[[dict, Receive], Awaitable[Reply]]) -> None:
        self.api = api
        self.answer = answer

    @property
    def state(self) -> Any:
        """The FastAPI app's state (``worker``, ``limits``)."""
        return self.api.state

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CLASSIFY_PATH:
            reply = await self.answer(scope, receive)
            if reply is not None:
                await reply.send(send)
            return
        await self.api(scope, receive, send)


class _ClassifyHandler:
    """The classify handler, ``(scope, receive) -> Reply``: one reply per request
    (``None``: the client left), in-flight bound first, then admission, query, body,
    image, the worker's answer.

    Args:
        worker: The batching worker that answers.
        limits: Input limits, the request timeout and the in-flight bound.
    """

    def __init__(self, worker: BatchingWorker, limits: HttpLimits) -> None:
        self.worker = worker
        self.limits = limits
        self.max_in_flight = limits.in_flight_limit(worker.mode.policy.queue_limit)
        self.in_flight = 0
        metrics = worker.metrics
        self.counters = {outcome: metrics.requests.labels(outcome=outcome) for outcome in OUTCOMES}
        self.request_latency = metrics.request_latency
        self.options = {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}

    def rejected(self, error: RequestRejected) -> Reply:
        """The reply to a request the worker refused (shed, shutting down, failed)."""
        outcome = {"shed": "shed", "shutting_down": "unavailable"}.get(error.kind, "error")
        self.counters[outcome].inc()
        return _error(error.status, error.kind, str(error), error.retry_after_s)

    async def __call__(self, scope: dict, receive: Receive) -> Reply | None:
        worker = self.worker
        started = worker.clock()
        if self.in_flight >= self.max_in_flight:
            return self.rejected(worker.shed_in_flight(self.max_in_flight))
        self.in_flight += 1
        try:
            return await self.classify(scope, receive, started)
        except Exception as error:  # noqa: BLE001 - a bug here still answers, once
            logger.exception("the classify handler failed")
            self.counters["error"].inc()
            return _error(500, "internal_error", f"{type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1

    async def classify(self, scope: dict, receive: Receive, started: float) -> Reply | None:
        """One admitted request, from its query to its answer."""
        worker = self.worker
        try:
            waited = worker.check_admission(started)
        except RequestRejected as error:
            return self.rejected(error)
        top_k = self.top_k(scope)
        if isinstance(top_k, Reply):
            return top_k
        image = await self.read_image(scope, receive)
        if image is None or isinstance(image, Reply):
            return image
        try:
            future = worker.submit(image, started, top_k, waited_s=waited)
        except RequestRejected as error:
            return self.rejected(error)
        return await self.result(future, started, tiny_image_warning(image, worker))

    def top_k(self, scope: dict) -> int | Reply:
        """The query's ``top_k`` (default from the limits, at most the class count), or
        the 400 reply to a bad one."""
        top_k = self.limits.default_top_k
        query = scope.get("query_string", b"")
        if query:
            text = None
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if key == "top_k":
                    text = value
            if text is not None:
                if not text.isdigit() or int(text) < 1:
                    self.counters["bad_request"].inc()
                    return _error(
                        400, "bad_query", f"top_k must be a positive integer, got {text!r}"
                    )
                top_k = int(text)
        return min(top_k, self.worker.num_classes)

    async def read_image(self, scope: dict, receive: Receive) -> Any:
        """The request's image, decoded (small ones on the loop, larger in the thread
        pool); else the 400/413 reply, or ``None`` when the client left."""
        limits, worker = self.limits, self.worker
        content_type = declared = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = value
        multipart = content_type is not None and content_type.startswith(b"multipart/form-data")
        limit = limits.max_bytes + (_MULTIPART_OVERHEAD if multipart else 0)
        try:
            body = await _read_body(receive, declared, limit)
            data = await _multipart_file(Headers(scope=scope), body) if multipart else body
            opened = open_image(data, **self.options)  # the header only: limits, size
            if len(data) <= _DECODE_INLINE_BYTES and opened.pixels <= _DECODE_INLINE_PIXELS:
                return opened.decode(worker.in_chans)
            return await run_in_threadpool(opened.decode, worker.in_chans)
        except _ClientGone:
            self.counters["disconnected"].inc()
            return None
        except _BodyTooLarge as error:
            self.counters["too_large"].inc()
            return _error(
                413,
                "too_large",
                f"{error}, over the limit of {limits.max_bytes} bytes per image; send a "
                "smaller image",
            )
        except ImageTooLargeError as error:
            self.counters["too_large"].inc()
            return _error(413, "too_large", str(error))
        except ImageInputError as error:
            self.counters["bad_request"].inc()
            return _error(400, "bad_image", str(error))

    async def result(self, future: Any, started: float, warning: str | None = None) -> Reply:
        """The worker's answer to a submitted request, within the request timeout (with
        ``warning`` in it when the image gave the model little to see)."""
        timeout_s = self.limits.request_timeout_s
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            self.counters["timeout"].inc()
            return _error(
                504, "timeout", f"no answer within {timeout_s:g} s; the server is overloaded"
            )
        except RequestRejected as error:
            return self.rejected(error)
        except Exception as error:  # noqa: BLE001 - any failure still gets its one answer
            logger.exception("request failed")
            self.counters["error"].inc()
            return _error(500, "internal_error", f"{type(error).__name__}: {error}")
        reply = Reply(200, _dumps(result if warning is None else {**result, "warning": warning}))
        self.counters["ok"].inc()
        self.request_latency.observe(max(0.0, self.worker.clock() - started))
        return reply


def tiny_image_warning(image: Any, worker: BatchingWorker) -> str | None:
    """:func:`~vitres.data.decode.small_image_warning` of a decoded image, at the patch
    the worker's model runs at."""
    patch = getattr(worker.mode.engine, "effective_patch", 1)
    return small_image_warning(*image.shape[-2:], patch)


def _lifespan(worker: BatchingWorker, limits: HttpLimits) -> Callable[[FastAPI], Any]:
    """The app's lifespan: starts the worker and the event loop's heartbeat; at shutdown,
    lets the worker finish what is queued."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        heartbeat = asyncio.get_running_loop().create_task(worker.loop_delay.run())
        worker.start()
        logger.info("serving %s", worker.mode.describe())
        try:
            yield
        finally:
            # uvicorn calls this after the open connections have their answers
            await run_in_threadpool(worker.stop, limits.request_timeout_s)
            heartbeat.cancel()
            logger.info(
                "stopped: %d answered, %d shed, %d failed, %d batches",
                worker.stats.answered,
                worker.stats.shed,
                worker.stats.failed,
                worker.stats.batches,
            )

    return lifespan


def _add_error_handler(api: FastAPI) -> None:
    """404 and 405 as JSON errors that name the endpoints or the allowed methods."""

    @api.exception_handler(StarletteHTTPException)
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
                f"no endpoint {request.url.path}; the endpoints are POST {CLASSIFY_PATH}, "
                "GET /healthz, GET /metrics and the Open Inference Protocol under /v2 "
                "(health/live, health/ready, models/NAME, models/NAME/ready, "
                "POST models/NAME/infer)"
            )
        return _error_response(
            error.status_code, kinds.get(error.status_code, "http_error"), message, error.headers
        )


def _add_routes(
    api: FastAPI,
    handler: _ClassifyHandler,
    metrics_text: Callable[[], Awaitable[bytes]] | None,
) -> None:
    """``POST /v1/classify`` (documented; :class:`ServerApp` answers it itself),
    ``GET /healthz`` and ``GET /metrics``."""
    worker = handler.worker
    metrics = worker.metrics

    @api.post(CLASSIFY_PATH, summary="Classify one image (raw body or multipart file)")
    async def classify_route(request: Request) -> Response:
        # ServerApp answers this path itself; the route documents it and serves the app
        # when it is mounted without ServerApp in front
        reply = await handler(request.scope, request.receive)
        return reply.response() if reply is not None else Response(status_code=400)

    @api.get("/healthz")
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
            "in_flight": handler.in_flight,
            "loop_delay_ms": 1000.0 * worker.loop_delay.delay_s(),
        }
        return JSONResponse(body, status_code=503 if worker.closing else 200)

    @api.get("/metrics")
    async def prometheus_metrics() -> Response:
        text = metrics.render() if metrics_text is None else await metrics_text()
        return Response(text, media_type=CONTENT_TYPE_LATEST)


def create_app(
    worker: BatchingWorker,
    limits: HttpLimits | None = None,
    metrics_text: Callable[[], Awaitable[bytes]] | None = None,
    model_name: str = "model",
) -> ServerApp:
    """The app serving ``worker``; its lifespan starts and stops the worker and the event
    loop's heartbeat.

    Args:
        worker: The batching worker (not started; the app starts it).
        limits: Input limits, the request timeout and the in-flight bound.
        metrics_text: What ``GET /metrics`` answers (Prometheus text); default: this
            worker's metrics. A Ray Serve replica passes the merge of every replica's.
        model_name: The name Open Inference Protocol clients use (``/v2/models/NAME``).
    """
    import vitres
    from vitres.serve.oip import add_oip_routes

    limits = limits or HttpLimits()
    handler = _ClassifyHandler(worker, limits)
    worker.metrics.in_flight.set_function(lambda: float(handler.in_flight))
    worker.metrics.loop_delay.set_function(worker.loop_delay.delay_s)
    api = FastAPI(
        title="vitres serve",
        description="Image classification with batch size and resolution chosen per batch "
        "under a latency SLO.",
        lifespan=_lifespan(worker, limits),
    )
    api.state.worker = worker
    api.state.limits = limits
    api.state.max_in_flight = handler.max_in_flight
    _add_error_handler(api)
    _add_routes(api, handler, metrics_text)
    add_oip_routes(api, handler, model_name, vitres.__version__)
    return ServerApp(api, handler)

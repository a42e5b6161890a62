"""The Open Inference Protocol (KServe v2, what Triton, KServe and their clients speak)
beside ``POST /v1/classify``, on the same batching worker and SLO policy.

Endpoints (``{name}``: the served model's name, ``ServeConfig.model_name``):

* ``GET /v2`` -- server metadata (name, version, extensions: ``binary_tensor_data``).
* ``GET /v2/health/live`` -- 200 while the process serves HTTP.
* ``GET /v2/health/ready`` -- 200 once the worker runs, 503 while stopping.
* ``GET /v2/models/{name}`` (and ``/versions/{v}``) -- the model's inputs and outputs.
* ``GET /v2/models/{name}/ready`` -- as ``/v2/health/ready``; 404 for another name.
* ``POST /v2/models/{name}/infer`` -- one input tensor named anything, batched:

  - ``BYTES`` ``[N]`` (or ``[N, 1]``): encoded images (PNG, JPEG, ... as Pillow reads),
  - ``UINT8`` ``[N, C, H, W]``: pixels 0..255,
  - ``FP32`` ``[N, C, H, W]``: pixels scaled to 0..1 (8-bit / 255),

  as JSON ``data`` (a flat row-major list; BYTES as strings) or binary (the
  ``binary_tensor_data`` extension: ``parameters.binary_data_size`` and the
  ``Inference-Header-Content-Length`` header, as ``tritonclient`` sends by default).
  Normalisation and resizing are the server's (the model's mean and std, the resolution
  its policy picks per batch). Each image joins the batching queue as a ``/v1`` request
  does, so the SLO policy batches and sheds them alike. Outputs: ``probabilities``
  (``FP32 [N, classes]``), ``label`` (``BYTES [N]``), ``index`` (``INT64 [N]``) and
  ``resolution`` (``INT64 [N, 2]``), all or those the request names, as JSON or binary
  (``parameters.binary_data`` per output, or ``binary_data_output`` for all).

Errors are ``{"error": message}`` (the protocol's form): 400 a malformed request, 404 an
unknown model, 413 an image over the limits, 503 shed (``Retry-After``) or stopping,
504 no answer in time, 500 inference failed. Every request gets exactly one answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from vitres.data.decode import ImageInputError, ImageTooLargeError, open_image
from vitres.serve.worker import RequestRejected

__all__ = ["HEADER_LENGTH", "OUTPUTS", "add_oip_routes", "served_model_name"]

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUTS = ("probabilities", "label", "index", "resolution")
_NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}


def served_model_name(reference: str) -> str:
    """A protocol-safe name for a model reference: its file or bundled name."""
    tail = re.split(r"[/\\:]", reference.rstrip("/\\"))[-1]
    tail = re.sub(r"\.(safetensors|json|onnx|npz|pth|pt|bin)$", "", tail)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tail) or "model"


class InferError(Exception):
    """A request the protocol answers with an error (status, message, extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _reply(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON header and the binary tensor data after it."""
    try:
        size = len(body) if header_length is None else int(header_length)
    except ValueError:
        raise InferError(
            400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
        ) from None
    if not 0 < size <= len(body):
        raise InferError(400, f"{HEADER_LENGTH} {size} does not fit a body of {len(body)} bytes")
    try:
        request = json.loads(body[:size])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InferError(400, f"the inference request is not valid JSON: {err}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InferError(400, "an inference request is a JSON object with a list 'inputs'")
    return request, body[size:]


def _bytes_elements(raw: bytes) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then data."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InferError(400, "a BYTES tensor ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InferError(400, "a BYTES element is longer than the data sent")
        out.append(raw[offset : offset + length])
        offset += length
    return out


@dataclass
class _Input:
    datatype: str
    shape: list[int]
    values: Any  # np.ndarray for tensors, list[bytes] for BYTES


def _read_input(request: dict, tail: bytes) -> _Input:
    """The request's one input, with its data from JSON or from the binary tail."""
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InferError(400, f"expected exactly one input (the images), got {len(inputs)}")
    spec = inputs[0]
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in ("BYTES", "UINT8", "FP32"):
        raise InferError(
            400, f"input datatype {datatype!r} is not accepted; use BYTES (encoded images), "
            "UINT8 [N, C, H, W] pixels or FP32 [N, C, H, W] pixels in 0..1"
        )  # fmt: skip
    if not (
        isinstance(shape, list) and shape and all(isinstance(v, int) and v >= 0 for v in shape)
    ):
        raise InferError(400, f"input shape must be a list of non-negative integers, got {shape!r}")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(tail):
            raise InferError(
                400, f"binary_data_size {size!r} does not fit the {len(tail)} bytes sent"
            )
        raw = tail[:size]
        if datatype == "BYTES":
            return _Input(datatype, shape, _bytes_elements(raw))
        values = np.frombuffer(raw, dtype=_NUMPY[datatype])
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise InferError(400, "the input has neither 'data' nor parameters.binary_data_size")
        if datatype == "BYTES":
            flat = _flatten(data)
            if not all(isinstance(v, str) for v in flat):
                raise InferError(400, "BYTES data in JSON must be strings")
            return _Input(datatype, shape, [v.encode("latin-1") for v in flat])
        try:
            values = np.asarray(_flatten(data), dtype=_NUMPY[datatype])
        except (TypeError, ValueError, OverflowError) as err:
            raise InferError(400, f"input data do not fit {datatype}: {err}") from None
    if values.size != math.prod(shape):
        raise InferError(
            400, f"input shape {shape} holds {math.prod(shape)} values, got {values.size}"
        )
    return _Input(datatype, shape, values.reshape(shape))


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _images(item: _Input, in_chans: int, options: dict) -> list[torch.Tensor]:
    """``(C, H, W)`` images of the input: decoded (BYTES), uint8 or 0..1 float tensors."""
    if item.datatype == "BYTES":
        if len(item.shape) > 2 or (len(item.shape) == 2 and item.shape[1] != 1):
            raise InferError(400, f"BYTES input shape must be [N] or [N, 1], got {item.shape}")
        if len(item.values) != item.shape[0]:
            raise InferError(400, f"shape {item.shape} but {len(item.values)} images sent")
        try:
            return [open_image(v, **options).decode(in_chans) for v in item.values]
        except ImageTooLargeError as err:
            raise InferError(413, str(err)) from None
        except ImageInputError as err:
            raise InferError(400, str(err)) from None
    if len(item.shape) != 4 or item.shape[1] != in_chans or min(item.shape[2:]) < 1:
        raise InferError(
            400, f"{item.datatype} input shape must be [N, {in_chans}, H, W] (channels first), "
            f"got {item.shape}"
        )  # fmt: skip
    if item.shape[2] * item.shape[3] > options["max_pixels"]:
        raise InferError(413, f"{item.shape[2]}x{item.shape[3]} is over the pixel limit")
    tensor = torch.from_numpy(np.array(item.values))
    if item.datatype == "FP32" and not bool(torch.isfinite(tensor).all()):
        raise InferError(400, "FP32 pixels must be finite numbers in 0..1")
    return list(tensor.clamp(0, 1) if item.datatype == "FP32" else tensor)


def _output_tensors(results: Sequence[dict], num_classes: int) -> dict[str, tuple[str, list, Any]]:
    """Every output as ``(datatype, shape, values)``."""
    probabilities = np.zeros((len(results), num_classes), np.float32)
    for row, result in zip(probabilities, results):
        for entry in result["top_k"]:
            row[entry["index"]] = entry["probability"]
    return {
        "probabilities": ("FP32", [len(results), num_classes], probabilities),
        "label": ("BYTES", [len(results)], [r["label"] for r in results]),
        "index": ("INT64", [len(results)], np.array([r["index"] for r in results], np.int64)),
        "resolution": (
            "INT64",
            [len(results), 2],
            np.array([r["resolution"] for r in results], np.int64),
        ),
    }


def _encode(datatype: str, values: Any) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.ascontiguousarray(values).tobytes()


def _response(request: dict, model: str, results: Sequence[dict], num_classes: int) -> Response:
    """The inference response, JSON or JSON + binary outputs."""
    tensors = _output_tensors(results, num_classes)
    wanted = request.get("outputs")
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output"))
    if wanted is None:
        wanted = [{"name": n} for n in OUTPUTS]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InferError(400, "'outputs' must be a list of objects with a 'name'")
    unknown = [o.get("name") for o in wanted if o.get("name") not in tensors]
    if unknown:
        raise InferError(400, f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    outputs, tail = [], []
    for spec in wanted:
        datatype, shape, values = tensors[spec["name"]]
        entry: dict[str, Any] = {"name": spec["name"], "datatype": datatype, "shape": shape}
        if (spec.get("parameters") or {}).get("binary_data", binary_all):
            blob = _encode(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            tail.append(blob)
        else:
            entry["data"] = (
                values if datatype == "BYTES" else np.asarray(values).reshape(-1).tolist()
            )
        outputs.append(entry)
    body = {"model_name": model, "outputs": outputs}
    if "id" in request:
        body["id"] = request["id"]
    header = json.dumps(body).encode()
    if not tail:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(tail),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


async def _infer(handler: Any, request: Request, name: str, started: float) -> Response:
    """One admitted inference request: parse, queue every image, gather the answers."""
    worker, limits = handler.worker, handler.limits
    declared = request.headers.get("content-length")
    limit = limits.max_bytes * max(1, worker.mode.policy.max_batch) + 65536
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InferError(413, f"the request is {declared} bytes, over the limit of {limit}")
    body = await request.body()
    if len(body) > limit:
        raise InferError(413, f"the request is {len(body)} bytes, over the limit of {limit}")
    payload, tail = _split_body(body, request.headers.get(HEADER_LENGTH))
    images = _images(_read_input(payload, tail), worker.in_chans, handler.options)
    if not images:
        raise InferError(400, "the input holds no images")
    waited = worker.check_admission(started)
    futures = []
    try:
        for image in images:
            futures.append(worker.submit(image, started, worker.num_classes, waited_s=waited))
    except RequestRejected:
        for future in futures:  # the request is answered 503 as a whole
            future.cancel()
        raise
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), limits.request_timeout_s
        )
    except asyncio.TimeoutError:
        for future in futures:
            future.cancel()
        raise InferError(504, f"no answer within {limits.request_timeout_s:g} s") from None
    return _response(payload, name, results, worker.num_classes)


def add_oip_routes(api: FastAPI, handler: Any, model_name: str, version: str) -> None:
    """Adds the ``/v2`` endpoints serving ``handler``'s worker as model ``model_name``."""
    worker = handler.worker

    def ready() -> bool:
        return worker.running and not worker.closing

    def model_or_404(name: str) -> JSONResponse | None:
        if name != model_name:
            return _reply(404, f"no model {name!r}; this server serves {model_name!r}")
        return None

    @api.get("/v2", summary="Open Inference Protocol: server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(
            {"name": "vitres", "version": version, "extensions": ["binary_tensor_data"]}
        )

    @api.get("/v2/health/live", summary="Liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get("/v2/health/ready", summary="Readiness: 503 until the worker runs and while stopping")
    async def server_ready() -> JSONResponse:
        return JSONResponse({"ready": ready()}, status_code=200 if ready() else 503)

    async def metadata(name: str) -> JSONResponse:
        missing = model_or_404(name)
        if missing is not None:
            return missing
        chans, classes = worker.in_chans, worker.num_classes
        return JSONResponse({
            "name": model_name,
            "versions": ["1"],
            "platform": "vitres",
            "inputs": [
                {"name": "images", "datatype": "BYTES", "shape": [-1]},
                {"name": "pixels", "datatype": "UINT8", "shape": [-1, chans, -1, -1]},
                {"name": "pixels", "datatype": "FP32", "shape": [-1, chans, -1, -1]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "index", "datatype": "INT64", "shape": [-1]},
                {"name": "resolution", "datatype": "INT64", "shape": [-1, 2]},
            ],
        })  # fmt: skip

    api.add_api_route("/v2/models/{name}", metadata, methods=["GET"], summary="Model metadata")
    api.add_api_route("/v2/models/{name}/versions/{version}", metadata, methods=["GET"])

    @api.get("/v2/models/{name}/ready", summary="Model readiness")
    async def model_ready(name: str) -> JSONResponse:
        missing = model_or_404(name)
        if missing is not None:
            return missing
        return JSONResponse(
            {"name": model_name, "ready": ready()}, status_code=200 if ready() else 503
        )

    async def infer(name: str, request: Request) -> Response:
        missing = model_or_404(name)
        if missing is not None:
            return missing
        return await _answer(handler, request, name)

    api.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"], summary="Inference")
    api.add_api_route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"])


async def _answer(handler: Any, request: Request, name: str) -> Response:
    """Exactly one answer per request, counted as ``/v1`` requests are."""
    worker = handler.worker
    started = worker.clock()
    counters: dict[str, Callable] = handler.counters
    try:
        response = await _infer(handler, request, name, started)
    except RequestRejected as error:
        outcome = {"shed": "shed", "shutting_down": "unavailable"}.get(error.kind, "error")
        counters[outcome].inc()
        headers = {}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        return _reply(error.status, str(error), headers)
    except InferError as error:
        outcome = {413: "too_large", 504: "timeout"}.get(error.status, "bad_request")
        counters[outcome].inc()
        return _reply(error.status, str(error), error.headers)
    except Exception as error:  # noqa: BLE001 - any failure still gets its one answer
        counters["error"].inc()
        return _reply(500, f"{type(error).__name__}: {error}")
    counters["ok"].inc()
    handler.request_latency.observe(max(0.0, worker.clock() - started))
    return response

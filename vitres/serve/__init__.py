"""The server behind ``vitres serve``: batch size x resolution under a latency SLO,
admission control, a safe configuration to roll back to, Prometheus metrics, the
Open Inference-style HTTP face, and its Ray Serve deployment.

One concept per module, in the order a request meets them:

- :mod:`~vitres.serve.config`: the settings (:class:`ServeConfig`, :class:`HttpLimits`,
  :class:`RayServeConfig`), plain dataclasses the command line builds its help from;
- :mod:`~vitres.serve.app`: the HTTP app (FastAPI, with a raw ASGI fast path for
  ``POST /v1/classify``);
- :mod:`~vitres.serve.worker`: the queue and the thread that runs batches;
- :mod:`~vitres.serve.batching`: the batching policy (which batch, which resolution, what
  to shed); :mod:`~vitres.serve.loop_delay`, the event loop's delay it counts;
- :mod:`~vitres.serve.engine`: one prepared backend per resolution;
- :mod:`~vitres.serve.monitor`: the latency band and the rollback decision;
- :mod:`~vitres.serve.metrics`: the Prometheus families;
- :mod:`~vitres.serve.launch`: everything assembled (:func:`build_worker`) and run under
  uvicorn (:func:`serve`);
- :mod:`~vitres.serve.ray_serve`: the same server as a Ray Serve application.

The latency model it batches with is the run-time one (:mod:`vitres.runtime.latency`),
shared with the per-frame runner. Names are loaded on first use, so importing
:mod:`vitres.serve.config` (as the command line does) loads neither torch nor FastAPI.

See docs/serving.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitres.serve.app import ServerApp, create_app
    from vitres.serve.batching import (
        Admission,
        BatchDecision,
        FixedBatchingPolicy,
        SloBatchingPolicy,
    )
    from vitres.serve.config import HttpLimits, RayServeConfig, ServeConfig
    from vitres.serve.launch import build_worker, serve
    from vitres.serve.metrics import ServerMetrics
    from vitres.serve.monitor import BandMonitor, RollbackEvent
    from vitres.serve.ray_serve import deploy, serve_on_ray
    from vitres.serve.worker import BatchingWorker

#: Public name -> the module that defines it.
_EXPORTS = {
    "Admission": "vitres.serve.batching",
    "BandMonitor": "vitres.serve.monitor",
    "BatchDecision": "vitres.serve.batching",
    "BatchingWorker": "vitres.serve.worker",
    "FixedBatchingPolicy": "vitres.serve.batching",
    "HttpLimits": "vitres.serve.config",
    "RayServeConfig": "vitres.serve.config",
    "RollbackEvent": "vitres.serve.monitor",
    "ServeConfig": "vitres.serve.config",
    "ServerApp": "vitres.serve.app",
    "ServerMetrics": "vitres.serve.metrics",
    "SloBatchingPolicy": "vitres.serve.batching",
    "build_worker": "vitres.serve.launch",
    "create_app": "vitres.serve.app",
    "deploy": "vitres.serve.ray_serve",
    "serve": "vitres.serve.launch",
    "serve_on_ray": "vitres.serve.ray_serve",
}

__all__ = [
    "Admission",
    "BandMonitor",
    "BatchDecision",
    "BatchingWorker",
    "FixedBatchingPolicy",
    "HttpLimits",
    "RayServeConfig",
    "RollbackEvent",
    "ServeConfig",
    "ServerApp",
    "ServerMetrics",
    "SloBatchingPolicy",
    "build_worker",
    "create_app",
    "deploy",
    "serve",
    "serve_on_ray",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vitres.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (what tab completion offers)."""
    return sorted(__all__)

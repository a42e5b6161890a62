"""The per-frame runner behind ``vitres run``: it picks each frame's resolution under an
FPS or latency target.

- :mod:`~vitres.runtime.latency`: the latency model fitted on the sweep's records, with
  its online correction (shared with the server, :mod:`vitres.serve`, which sits above);
- :mod:`~vitres.runtime.controller`: the per-frame resolution controllers (fixed, step,
  predictive);
- :mod:`~vitres.runtime.runner`: :class:`AdaptiveRunner`, one frame at a time;
- :mod:`~vitres.runtime.sources`: frames from a dataset, a folder or a video;
- :mod:`~vitres.runtime.stream`, :mod:`~vitres.runtime.session`: a whole stream, and
  ``vitres run`` end to end (calibration included).

The HTTP server lives in :mod:`vitres.serve`. See docs/runtime.md."""

from vitres.runtime.controller import (
    Controller,
    FixedController,
    PredictiveController,
    StepController,
    parse_controller,
)
from vitres.runtime.latency import LatencyModel, LatencyPrediction, OnlineCorrection, as_size
from vitres.runtime.runner import AdaptiveRunner, FrameResult, RunStats
from vitres.runtime.sources import DatasetSource, FolderSource, Frame, VideoSource, open_source

__all__ = [
    "AdaptiveRunner",
    "Controller",
    "DatasetSource",
    "FixedController",
    "FolderSource",
    "Frame",
    "FrameResult",
    "LatencyModel",
    "LatencyPrediction",
    "OnlineCorrection",
    "PredictiveController",
    "RunStats",
    "StepController",
    "VideoSource",
    "as_size",
    "open_source",
    "parse_controller",
]

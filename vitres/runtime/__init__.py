"""Run-time adaptation: the latency model shared by the stream controller and the server,
the per-frame resolution controllers, the stream runner and its frame sources.

See docs/runtime.md."""

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

"""Run-time adaptation: the latency model shared by the stream controller and the server,
the per-frame resolution controllers, and the stream runner."""

from vitres.runtime.latency import LatencyModel, LatencyPrediction, OnlineCorrection, as_size

__all__ = ["LatencyModel", "LatencyPrediction", "OnlineCorrection", "as_size"]

"""INT8 on the CPU through ONNX Runtime's quantiser (see :func:`vitres.export.quantize_onnx`).

* ``onnxruntime-int8``: dynamic quantisation -- int8 weights (per channel), activations
  quantised on the fly per call. Needs no data.
* ``onnxruntime-int8-static``: static QDQ -- activation ranges fixed by calibration on
  real images (the *train* split of ``calibration_data``, Fashion-MNIST by default, at
  the build resolution), MinMax / Entropy / Percentile.

Both quantise only the weight matmuls (static also the patch convolution); LayerNorm,
Softmax, GELU, residual Adds and attention stay float (at the backends' opset 23,
attention is one fused float ``Attention`` operator). Quantised graphs are cached beside
the fp32 export. ``quantize_time_s`` is part of ``build_time_s``. Calibration method,
image count, split and data default to the shared
:class:`~vitres.export.spec.ExportSpec` (percentile, 256 train images); the sequence and
the cache names are :mod:`vitres.backends.calibration`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitres.backends.base import register_backend
from vitres.backends.calibration import CalibratedBackend, calibrated_export_spec
from vitres.backends.onnx_backend import OnnxRuntimeBackend, exported_graph
from vitres.export.spec import ExportSpec


@register_backend
class OnnxRuntimeInt8Backend(CalibratedBackend, OnnxRuntimeBackend):
    """ONNX Runtime, dynamic INT8.

    Every argument left ``None`` takes the :class:`~vitres.export.spec.ExportSpec` value
    (``spec``, or the shared defaults), so ``vitres export`` makes the same graph.

    Args:
        device: Only ``"cpu"``.
        threads: ONNX Runtime intra-op threads.
        cache_dir: Where graphs are kept.
        calib_method: Static mode: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        calibration_data: Static mode: dataset name or image folder for calibration.
        calibration_data_dir: Static mode: folder of a named dataset's files.
        calib_images: Static mode: number of calibration images.
        calib_split: Static mode: the split calibration images come from.
        calib_resolutions: Static mode: ``(H, W)`` sizes to calibrate at (default: the
            build size). A dynamic graph that will serve several sizes should see them all.
        quantize_attention_matmuls: Also quantise Q·Kᵀ and softmax·V (opset-18 graphs;
            at opset 23 attention is one fused float operator).
        opset: See :class:`~vitres.backends.onnx_backend.OnnxRuntimeBackend`.
        spec: The export spec the other arguments override.
    """

    name = "onnxruntime-int8"
    precision = "int8"
    mode = "dynamic"

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        calib_method: str | None = None,
        calibration_data: str | None = None,
        calib_images: int | None = None,
        calib_split: str | None = None,
        calibration_data_dir: str | None = None,
        calib_resolutions: Sequence[tuple[int, int]] | None = None,
        quantize_attention_matmuls: bool | None = None,
        opset: int | None = None,
        spec: ExportSpec | None = None,
    ) -> None:
        spec = calibrated_export_spec(
            spec,
            self.mode,
            method=calib_method,
            data=calibration_data,
            images=calib_images,
            split=calib_split,
            resolutions=calib_resolutions,
            quantize_attention_matmuls=quantize_attention_matmuls,
        )
        super().__init__(device, threads, cache_dir, opset=opset, spec=spec)
        self.calibration_data_dir = calibration_data_dir

    @property
    def calib_method(self) -> str:
        return self.spec.calib_method

    @property
    def calibration_data(self) -> str:
        return self.spec.calib_data

    def graph_for(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        from vitres.export import quantize_onnx

        spec, calibration = self.spec, self.calibration
        fp32_path = self.float_graph(model, image_size)
        tag = f"int8-{self.mode}"
        if spec.quantize_attention_matmuls:
            tag += "-attn"
        sizes = None
        if self.mode == "static":
            sizes = calibration.sizes_for(image_size, self.build_info.get("dynamic", True))
            tag += f"-{calibration.cache_tag(sizes)}"

        def quantise(batches: list[np.ndarray] | None, out: Path) -> dict[str, Any]:
            return quantize_onnx(
                fp32_path,
                out,
                self.mode,
                calibration=batches,
                calib_method=calibration.method,
                percentile=calibration.percentile,
                quantize_attention_matmuls=spec.quantize_attention_matmuls,
            )

        path = fp32_path.with_name(f"{fp32_path.stem}-{tag}.onnx")
        return self.quantised_once(model, path, quantise, sizes)


@register_backend
class OnnxRuntimeInt8StaticBackend(OnnxRuntimeInt8Backend):
    """ONNX Runtime, static INT8 (QDQ), calibrated on real images (see the module docstring)."""

    name = "onnxruntime-int8-static"
    mode = "static"
    calibrated = True


__all__ = ["OnnxRuntimeInt8Backend", "OnnxRuntimeInt8StaticBackend", "exported_graph"]

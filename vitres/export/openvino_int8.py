"""INT8 post-training quantisation of an OpenVINO model with NNCF, on real images.

``nncf.quantize`` with ``model_type=TRANSFORMER`` (Intel's recipe for transformers: the
``MIXED`` preset -- symmetric weights, asymmetric activations --, SmoothQuant to move
activation outliers into the weights (Xiao et al., ICML 2023), and fast bias correction)
inserts ``FakeQuantize`` operations that OpenVINO's CPU plugin runs as int8 kernels. The
statistics come from real, model-ready images (:func:`vitres.export.calibration_batches`:
the train split of the sweep's data, at the sizes the model will serve). NNCF picks its
own range estimators, so the spec's ONNX Runtime ``calib_method`` does not apply here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["quantize_openvino"]


def quantize_openvino(
    ov_model: Any,
    calibration: Sequence[np.ndarray],
    *,
    preset: str = "mixed",
    fast_bias_correction: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The INT8 version of ``ov_model`` (an ``openvino.Model``), calibrated on ``calibration``.

    Args:
        ov_model: A float model (:func:`vitres.export.openvino.convert_to_openvino`).
        calibration: Batches of real, model-ready images ``(B, C, H, W)``, float32.
        preset: ``"mixed"`` (symmetric weights, asymmetric activations; NNCF's default for
            transformers) or ``"performance"`` (symmetric everywhere).
        fast_bias_correction: NNCF's fast bias correction (``False``: the slower, more
            exact one).

    Returns:
        The quantised model and facts (images, batches, preset, FakeQuantize count,
        seconds).

    Raises:
        ValueError: no calibration images, or an unknown preset.
    """
    import nncf

    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("OpenVINO INT8 needs calibration images: pass calibration_batches(...)")
    presets = {
        "mixed": nncf.QuantizationPreset.MIXED,
        "performance": nncf.QuantizationPreset.PERFORMANCE,
    }
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    start = time.perf_counter()
    quantized = nncf.quantize(
        ov_model,
        nncf.Dataset(batches),
        preset=presets[preset],
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
        fast_bias_correction=fast_bias_correction,
    )
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return quantized, {
        "method": "nncf",
        "preset": preset,
        "images": int(sum(len(b) for b in batches)),
        "batches": len(batches),
        "fake_quantize_ops": int(fake_quantize),
        "seconds": time.perf_counter() - start,
    }

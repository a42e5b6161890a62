"""INT8 quantisation of an exported graph with ONNX Runtime, and its calibration data.

Dynamic (weights int8, activations quantised per call) or static QDQ calibrated on real
images with MinMax, Entropy or Percentile ranges (Jacob et al., CVPR 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"). Only
the weight matmuls (``MatMul``/``Gemm`` with a constant weight, and the patch ``Conv``)
are quantised by default; LayerNorm, Softmax, GELU, residual ``Add`` and the
activation-by-activation attention matmuls stay float. Dynamo graphs carry
``value_info`` for initialisers that confuses the quantiser, so the model is first run
through ORT's ``quant_pre_process`` (shape inference and optimisation), falling back to
stripping ``value_info``. Defaults (method, images, split, data) are the
:class:`~vitres.export.spec.ExportSpec` ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitres.export.exportable import unwrap_model
from vitres.export.spec import CALIBRATION_METHODS, ExportSpec

__all__ = ["QUANT_MODES", "calibration_batches", "quantize_onnx"]

QUANT_MODES = ("dynamic", "static")
_DEFAULTS = ExportSpec()


def calibration_batches(
    model: nn.Module,
    data: str = _DEFAULTS.calib_data,
    resolutions: Sequence[int | tuple[int, int]] | None = None,
    *,
    num_images: int = _DEFAULTS.calib_images,
    batch_size: int = 8,
    split: str = _DEFAULTS.calib_split,
    data_dir: str | None = None,
) -> list[np.ndarray]:
    """Real, model-ready images for static INT8 calibration.

    The first ``num_images`` images of ``split`` (the *train* split by default, so the
    test set stays unseen), at each resolution in turn (a graph that serves several
    resolutions should see the activation ranges of all of them), normalised with the
    model's mean and std. ``resolutions=None`` calibrates at the model's native size.
    """
    from vitres.data import eval_batches, get_dataset

    base, _ = unwrap_model(model)
    cfg = base.config
    dataset = get_dataset(data, split, data_dir=data_dir, in_chans=cfg.in_chans)
    if resolutions is None:
        resolutions = [tuple(int(v) for v in cfg.img_size)]
    if not resolutions:
        raise ValueError("calibration needs at least one resolution")
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    per_resolution = max(1, num_images // len(resolutions))
    out = []
    for resolution in resolutions:
        for x, _ in eval_batches(
            dataset,
            resolution,
            batch_size,
            mean=cfg.mean,
            std=cfg.std,
            in_chans=cfg.in_chans,
            limit=per_resolution,
        ):
            out.append(x.numpy())
    return out


class _CalibrationReader:
    """ORT ``CalibrationDataReader`` over a list of image batches.

    ``set_range`` lets the quantiser feed one batch at a time (``CalibStridedMinMax``), so
    calibration holds the activations of one batch, not of every batch at once.
    """

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self.batches = list(batches)
        self.input_name = input_name
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def _preprocess_for_quantization(src: Path, dst: Path) -> str:
    """Makes a dynamo-exported graph readable by ORT's quantiser.

    The dynamo exporter's optimiser folds some weights (e.g. transposes them) but leaves
    ``value_info`` entries with their old shapes on the initialisers, and the quantiser's
    shape inference then fails ("Inferred shape and existing shape differ"). Those
    entries are dropped, then ORT's ``quant_pre_process`` (ONNX shape inference + graph
    optimisation) runs; its symbolic shape inference cannot follow the shape arithmetic
    of a dynamic-size graph, so that part is skipped.

    Returns:
        The steps taken, e.g. ``"strip_value_info+quant_pre_process"``.
    """
    import onnx

    proto = onnx.load(str(src))
    initializers = {init.name for init in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    stripped = dst.with_name(dst.stem + ".stripped.onnx")
    onnx.save(proto, str(stripped))
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with _quiet_quantizer():
            quant_pre_process(str(stripped), str(dst), skip_symbolic_shape=True)
        return "strip_value_info+quant_pre_process"
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; the strip suffices
        stripped.replace(dst)
        return "strip_value_info"


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silences the quantiser's prints, warnings and root-logger advice."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _weight_matmuls(proto: Any, op_types: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of ``op_types`` nodes with / without a constant (initialiser) input."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    with_weight, activation_only = [], []
    for node in proto.graph.node:
        if node.op_type in op_types:
            target = with_weight if any(i in constants for i in node.input) else activation_only
            target.append(node.name)
    return with_weight, activation_only


def _checked_op_types(
    mode: str,
    calib_method: str,
    target: str,
    calibration: Iterable[np.ndarray] | None,
    op_types: Sequence[str] | None,
) -> Sequence[str]:
    """The operators to quantise (``op_types``, else the mode's default), after refusing an
    unknown mode, calibration method or target, and static INT8 without calibration
    images."""
    if mode not in QUANT_MODES:
        raise ValueError(f"INT8 mode must be one of {QUANT_MODES}, got {mode!r}")
    if calib_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be one of {CALIBRATION_METHODS}, got {calib_method!r}"
        )
    if target not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"target must be 'onnxruntime' or 'tensorrt', got {target!r}")
    if mode == "static" and calibration is None:
        raise ValueError(
            "static INT8 needs calibration images: pass calibration=calibration_batches(...)"
        )
    if op_types is not None:
        return op_types
    return ("MatMul", "Gemm") if mode == "dynamic" else ("MatMul", "Gemm", "Conv")


def _quantize_static(
    prepared: Path,
    dst: Path,
    reader: Any,
    op_types: list[str],
    excluded: list[str],
    *,
    per_channel: bool,
    calib_method: str,
    percentile: float,
    target: str,
) -> None:
    """Static (QDQ) INT8 of ``prepared`` into ``dst``, activation ranges calibrated on
    ``reader``'s batches; TensorRT's form (symmetric int8 activations, a QDQ pair per
    consumer) for ``target="tensorrt"``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    tensorrt = target == "tensorrt"
    extra: dict[str, Any] = {
        "ActivationSymmetric": tensorrt,
        "WeightSymmetric": True,
        "CalibMovingAverage": False,
        "CalibTensorRangeSymmetric": tensorrt,
        "CalibStridedMinMax": 1,  # one batch at a time (bounded memory)
    }
    if calib_method == "percentile":
        extra["CalibPercentile"] = percentile
    if tensorrt:
        extra.update({"DedicatedQDQPair": True, "AddQDQPairToWeight": True})
    quantize_static(
        str(prepared),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=methods[calib_method],
        extra_options=extra,
    )


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    mode: str = "dynamic",
    *,
    calibration: Iterable[np.ndarray] | None = None,
    calib_method: str = _DEFAULTS.calib_method,
    per_channel: bool = True,
    quantize_attention_matmuls: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    percentile: float = _DEFAULTS.calib_percentile,
    target: str = "onnxruntime",
) -> dict[str, Any]:
    """Quantises an fp32 ONNX graph to INT8 with ONNX Runtime.

    Args:
        src: fp32 graph (from :func:`export_onnx`).
        dst: Where to write the INT8 graph.
        mode: ``"dynamic"`` (int8 weights; activations quantised per call from their
            running range) or ``"static"`` (QDQ; activation ranges fixed by calibration).
        calibration: Static mode: batches of real, model-ready images
            (:func:`calibration_batches`).
        calib_method: Static mode: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        per_channel: Per-output-channel weight scales.
        quantize_attention_matmuls: Also quantise the activation-by-activation matmuls
            (Q·Kᵀ, softmax·V); off by default (softmax outputs lose most precision).
        op_types: Operators to quantise. Default: ``MatMul`` and ``Gemm``, plus the patch
            ``Conv`` for static (ORT's dynamic ``ConvInteger`` is slower than the float
            convolution on CPUs). LayerNorm, Softmax, GELU, attention and residual Adds are
            left float by not listing them.
        nodes_to_exclude: Further node names to keep float.
        percentile: Static ``percentile`` calibration: the kept percentile of |x|.
        target: ``"onnxruntime"`` (uint8 asymmetric activations) or ``"tensorrt"``
            (int8 symmetric activations with zero point 0 and a dedicated QDQ pair per
            consumer, which TensorRT's explicit quantisation requires).

    Returns:
        Facts about the quantisation: mode, method, quantised / excluded node counts,
        preprocessing used, seconds taken.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = _checked_op_types(mode, calib_method, target, calibration, op_types)
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prep_method = _preprocess_for_quantization(src, prepared)
        proto = onnx.load(str(prepared))
        weighted, activation_only = _weight_matmuls(proto, op_types)
        # the activation-by-activation matmuls stay float unless asked for
        excluded = [*nodes_to_exclude, *([] if quantize_attention_matmuls else activation_only)]
        input_name = proto.graph.input[0].name
        del proto
        with _quiet_quantizer():
            if mode == "dynamic":
                quantize_dynamic(
                    str(prepared), str(dst), op_types_to_quantize=list(op_types),
                    per_channel=per_channel, weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    extra_options={"MatMulConstBOnly": not quantize_attention_matmuls},
                )  # fmt: skip
            else:
                reader = _CalibrationReader(calibration, input_name)
                _quantize_static(
                    prepared, dst, reader, list(op_types), excluded, per_channel=per_channel,
                    calib_method=calib_method, percentile=percentile, target=target,
                )  # fmt: skip
    return {
        "mode": mode,
        "calib_method": calib_method if mode == "static" else None,
        "quantized_candidates": len(weighted),
        "excluded_nodes": len(excluded),
        "preprocess": prep_method,
        "seconds": time.perf_counter() - start,
        "path": str(dst),
    }

"""Exporting vitres models: ONNX graphs for every input size, checked, quantised, described.

One concept per module:

* :mod:`~vitres.export.spec` -- :class:`ExportSpec`, every choice an export makes, with
  the defaults the ONNX backends and ``vitres export`` share;
* :mod:`~vitres.export.exportable` -- which models export, and with which sizes;
* :mod:`~vitres.export.onnx` -- :func:`export_onnx`, one graph for every ``H x W``;
* :mod:`~vitres.export.parity` -- :func:`check_parity`, ONNX Runtime against eager;
* :mod:`~vitres.export.runtime` -- cached sessions and :class:`OnnxModel`;
* :mod:`~vitres.export.quantize` -- INT8 with ONNX Runtime and its calibration images;
* :mod:`~vitres.export.fuse` -- ONNX Runtime's transformer fusions of an exported graph;
* :mod:`~vitres.export.openvino` -- OpenVINO models, converted from PyTorch (or ONNX);
* :mod:`~vitres.export.openvino_int8` -- their INT8 by NNCF on real images;
* :mod:`~vitres.export.metadata` -- the spec and provenance in the file's metadata;
* :mod:`~vitres.export.from_spec` -- :func:`export_from_spec`, spec -> finished file;
* :mod:`~vitres.export.plan` -- :class:`ExportPlan` (a spec and its provenance) and
  :func:`export_from_plan`; a sweep record becomes a plan one room up
  (:func:`vitres.tune.export_plan.plan_from_record`).
"""

from vitres.export.exportable import check_exportable, is_mixer, unwrap_model
from vitres.export.from_spec import ExportArtifact, export_from_spec
from vitres.export.fuse import FUSED_OP_TYPES, fuse_onnx, fused_op_counts
from vitres.export.metadata import read_export_metadata, read_export_spec, write_export_metadata
from vitres.export.onnx import ExportResult, export_onnx
from vitres.export.openvino import OpenVinoConversion, compile_openvino, convert_to_openvino
from vitres.export.openvino_int8 import quantize_openvino
from vitres.export.parity import ExportParityError, ParityReport, check_parity, default_check_sizes
from vitres.export.plan import ExportPlan, export_from_plan
from vitres.export.quantize import QUANT_MODES, calibration_batches, quantize_onnx
from vitres.export.runtime import INPUT_NAME, OUTPUT_NAME, OnnxModel, onnx_session
from vitres.export.spec import (
    CALIBRATION_METHODS,
    DEFAULT_OPSET,
    INT8_MODES,
    MIN_OPSET,
    ExportSpec,
)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "INT8_MODES",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "QUANT_MODES",
    "ExportArtifact",
    "ExportParityError",
    "ExportPlan",
    "ExportResult",
    "ExportSpec",
    "FUSED_OP_TYPES",
    "OpenVinoConversion",
    "OnnxModel",
    "ParityReport",
    "calibration_batches",
    "check_exportable",
    "check_parity",
    "compile_openvino",
    "convert_to_openvino",
    "default_check_sizes",
    "export_from_plan",
    "export_from_spec",
    "export_onnx",
    "fuse_onnx",
    "fused_op_counts",
    "is_mixer",
    "onnx_session",
    "quantize_onnx",
    "quantize_openvino",
    "read_export_metadata",
    "read_export_spec",
    "unwrap_model",
    "write_export_metadata",
]

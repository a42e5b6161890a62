"""Export what was measured: a sweep record mapped to the export spec that reproduces it.

:func:`plan_from_record` is a pure function of one record (a
:class:`vitres.tune.records.Measurement`): its model reference and checkpoint digest, its
patch size, and its backend, which fixes the graph --

===========================  =================================================================
``onnxruntime``              the float32 graph
``onnxruntime-int8``         dynamic INT8 of that graph
``onnxruntime-int8-static``  static INT8, calibrated as the sweep calibrated: on the record's
                             data (train split), at the record's resolution
``onnxruntime-fused*``       the same, on the graph with ONNX Runtime's transformer fusions
``eager``, ``compile``       the float32 graph, with a note (PyTorch ran the same function)
``eager-bf16``,              the float32 graph, with a note (the record's accuracy and
``compile-bf16``             latency are bf16's)
``tensorrt*``, ``openvino*`` the float32 graph those runtimes build from, with a note
===========================  =================================================================

Opset, calibration method and image count are the shared :class:`ExportSpec` defaults,
which are what the backends used. :func:`export_from_plan` then loads nothing and
decides nothing: it checks that the checkpoint is still the one measured and runs
:func:`~vitres.export.from_spec.export_from_spec`, with the parity check covering the
record's own resolution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from torch import nn

from vitres.export.exportable import check_exportable, unwrap_model
from vitres.export.from_spec import ExportArtifact, export_from_spec
from vitres.export.spec import ExportSpec

if TYPE_CHECKING:  # records belong to the tuner; only their attributes are read here
    from vitres.tune.records import Measurement

__all__ = ["ExportPlan", "export_from_plan", "find_record", "plan_from_record"]

_INT8_OF_BACKEND = {
    "onnxruntime": "none",
    "onnxruntime-int8": "dynamic",
    "onnxruntime-int8-static": "static",
    "onnxruntime-fused": "none",
    "onnxruntime-fused-int8-static": "static",
}
_FLOAT_NOTES = {
    "eager": "measured with eager PyTorch (fp32); the ONNX graph computes the same function, "
    "its latency under ONNX Runtime is not the record's",
    "compile": "measured with torch.compile (fp32); the ONNX graph computes the same function, "
    "its latency under ONNX Runtime is not the record's",
    "eager-bf16": "measured with eager PyTorch in bf16; the ONNX graph is fp32, so its accuracy "
    "may differ slightly from the record's and its latency is not the record's",
    "compile-bf16": "measured with torch.compile in bf16; the ONNX graph is fp32, so its "
    "accuracy may differ slightly from the record's and its latency is not the record's",
}


@dataclass(frozen=True)
class ExportPlan:
    """How to export the configuration of one sweep record.

    Attributes:
        spec: The export spec that reproduces the record's graph.
        model: The record's model reference (bundled name, checkpoint path...).
        model_digest: The checkpoint digest the record was measured with, if known.
        record_key: The record's key.
        resolution: The ``(H, W)`` the record measured (the parity check covers it).
        notes: How the export differs from what was measured, in words (empty when it
            is the measured graph itself).
    """

    spec: ExportSpec
    model: str
    model_digest: str | None
    record_key: str
    resolution: tuple[int, int]
    notes: tuple[str, ...] = ()


def plan_from_record(record: Measurement, defaults: ExportSpec | None = None) -> ExportPlan:
    """The :class:`ExportPlan` that exports exactly what ``record`` measured.

    Args:
        record: A measured (``ok``) sweep record.
        defaults: The spec whose fields the record does not fix (opset, calibration
            method, image count...): the shared defaults when ``None``.

    Raises:
        ValueError: the record failed or was predicted, not measured.
    """
    defaults = defaults or ExportSpec()
    config = record.config
    if record.status == "predicted":
        raise ValueError(
            f"record {record.key} was predicted by the cost model, not measured; measure it "
            "(vitres sweep without --adaptive, or a grid holding this config) before exporting"
        )
    if record.status != "ok":
        raise ValueError(f"record {record.key} failed ({record.error}); it cannot be exported")
    if config.merge is not None:
        raise ValueError(
            f"record {record.key} was measured with token merging (merge={config.merge!r}), "
            "which does not export; export the unmerged record of the same resolution, or "
            "deploy the merged model with the eager or compile backend"
        )
    if config.token_budget is not None:
        raise ValueError(
            f"record {record.key} ran mixed-resolution tokens (token budget "
            f"{config.token_budget}), which choose regions per image at run time and have no "
            "exported graph; deploy it with the eager model (vitres.tokens.quadtree_forward(model, x, K)) or "
            "export a record without a budget"
        )
    backend = config.backend
    notes: list[str] = []
    int8 = _INT8_OF_BACKEND.get(backend)
    if int8 is None:
        int8 = "none"
        if backend in _FLOAT_NOTES:
            notes.append(_FLOAT_NOTES[backend])
        elif backend.startswith("tensorrt"):
            notes.append(
                f"measured with {backend}; TensorRT builds its engine from this fp32 graph on "
                "the target GPU (vitres' tensorrt backends do it for you)"
            )
        elif backend.startswith("openvino"):
            notes.append(
                f"measured with {backend}; OpenVINO reads this fp32 graph "
                "(openvino.convert_model), its precision and INT8 steps run there"
            )
        else:
            notes.append(f"backend {backend!r} is not an ONNX backend; exporting the fp32 graph")
    spec = replace(
        defaults,
        patch_size=config.patch_size,
        int8=int8,
        fused=backend.startswith("onnxruntime-fused"),
    )
    if int8 == "static":
        spec = replace(
            spec,
            calib_data=record.data or defaults.calib_data,
            calib_resolutions=(tuple(config.resolution),),
        )
    return ExportPlan(
        spec=spec,
        model=config.model,
        model_digest=record.model_digest,
        record_key=record.key,
        resolution=tuple(config.resolution),
        notes=tuple(notes),
    )


def find_record(records: Sequence[Measurement], key: str) -> Measurement:
    """The last record with ``key`` (a resumed sweep may hold several).

    Raises:
        ValueError: no record has that key; the message lists a few that exist.
    """
    matches = [m for m in records if m.key == key]
    if matches:
        ok = [m for m in matches if m.status == "ok"]
        return (ok or matches)[-1]
    known = list(dict.fromkeys(m.key for m in records if m.status == "ok")) or list(
        dict.fromkeys(m.key for m in records)
    )
    if not known:
        raise ValueError(f"no record has key {key!r}: the results hold no records")
    shown = "\n  ".join(known[:5])
    more = f"\n  ... and {len(known) - 5} more" if len(known) > 5 else ""
    raise ValueError(
        f"no record has key {key!r}; keys in the results include:\n  {shown}{more}\n"
        "(copy one exactly, or use --recommended)"
    )


def export_from_plan(
    model: nn.Module,
    path: str | os.PathLike[str],
    plan: ExportPlan,
    *,
    model_ref: str | None = None,
    calib_data_dir: str | None = None,
    atol: float | None = None,
) -> ExportArtifact:
    """Exports ``model`` (loaded from ``plan.model``, or from ``model_ref``) as planned.

    A model that has no dynamic-size graph (MLP-Mixer, ``area``/``fourier`` resampling)
    is exported as the static graph of the record's resolution, as the backends did.

    Args:
        model: The model the record measured.
        path: The file to write.
        plan: From :func:`plan_from_record`.
        model_ref: Where ``model`` was loaded from, if not ``plan.model``.
        calib_data_dir: Folder of a named calibration dataset's files.
        atol: Parity tolerance instead of the spec's.

    Raises:
        ValueError: the checkpoint is not the one the record measured (its digest
            changed), or the spec cannot be carried out.
    """
    from vitres.models.checkpoint import checkpoint_digest

    reference = model_ref or plan.model
    digest = checkpoint_digest(reference)
    if plan.model_digest is not None and digest is not None and digest != plan.model_digest:
        raise ValueError(
            f"the checkpoint {reference} is not the one record {plan.record_key} measured "
            f"(digest {digest}, record {plan.model_digest}): the weights changed since the "
            "sweep. Re-run the sweep, or export the old checkpoint"
        )
    spec = plan.spec if atol is None else replace(plan.spec, atol=atol)
    notes = list(plan.notes)
    base, _ = unwrap_model(model)
    try:
        check_exportable(base, dynamic=True, opset=spec.opset)
    except ValueError as reason:
        spec = replace(spec, dynamic=False, example_size=plan.resolution)
        notes.append(f"static graph of {plan.resolution[0]}x{plan.resolution[1]}: {reason}")
    provenance = {
        "model": reference,
        "model_digest": plan.model_digest or digest,
        "record_key": plan.record_key,
        "notes": "; ".join(notes) or None,
    }
    return export_from_spec(
        model,
        path,
        spec,
        provenance=provenance,
        extra_check_sizes=[plan.resolution],
        calib_data_dir=calib_data_dir,
    )

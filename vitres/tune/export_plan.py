"""Export what was measured: a sweep record mapped to the export spec that reproduces it.

This is the tuner's bridge to :mod:`vitres.export`: records belong to the tuner, so the
mapping lives here, and the export room takes only the resulting
:class:`~vitres.export.plan.ExportPlan` (a spec plus where it came from).

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
which are what the backends used. :func:`vitres.export.plan.export_from_plan` then loads
nothing and decides nothing. :func:`find_record` picks a record by its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from vitres.export.plan import ExportPlan
from vitres.export.spec import ExportSpec
from vitres.tune.records import Measurement

__all__ = ["find_record", "plan_from_record"]

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
        data=record.data,
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

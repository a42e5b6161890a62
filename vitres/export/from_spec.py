"""From an :class:`~vitres.export.spec.ExportSpec` to the file to deploy.

:func:`export_from_spec` runs every step a spec asks for -- the float32 export and its
parity check, ONNX Runtime's transformer fusions (checked again), then, for INT8, calibration on real images and quantisation -- and writes
the resolved spec and the provenance (model, checkpoint digest, sweep record) into the
final file's metadata. ``vitres export`` is this function behind flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from vitres.export.exportable import unwrap_model
from vitres.export.fuse import fuse_onnx
from vitres.export.metadata import read_export_metadata, write_export_metadata
from vitres.export.onnx import ExportResult, export_onnx
from vitres.export.parity import check_parity, default_check_sizes
from vitres.export.quantize import calibration_batches, quantize_onnx
from vitres.export.spec import ExportSpec

__all__ = ["ExportArtifact", "export_from_spec"]


@dataclass
class ExportArtifact:
    """What :func:`export_from_spec` wrote.

    Attributes:
        path: The file to deploy (the INT8 graph when the spec asks for INT8).
        spec: The spec as carried out: patch size, example size and calibration
            resolutions resolved (what the metadata holds).
        fp32: The float32 export and its parity report (its file is ``path`` for plain
            float32 specs, ``<stem>.fp32.onnx`` beside it otherwise).
        quantization: Facts of the INT8 step (:func:`quantize_onnx`), ``None`` for fp32.
        fusion: Facts of the fusion step (:func:`~vitres.export.fuse.fuse_onnx`, with the
            fused graph's parity report), ``None`` without it.
        metadata: The vitres metadata of ``path``, as read back from the file.
    """

    path: Path
    spec: ExportSpec
    fp32: ExportResult
    quantization: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def export_from_spec(
    model: nn.Module,
    path: str | os.PathLike[str],
    spec: ExportSpec | None = None,
    *,
    provenance: Mapping[str, object] | None = None,
    extra_check_sizes: Sequence[tuple[int, int]] = (),
    calib_data_dir: str | None = None,
) -> ExportArtifact:
    """Exports ``model`` as ``spec`` says and describes the result in its metadata.

    Args:
        model: A ViT or MLP-Mixer (or a wrapper binding a patch size).
        path: The file to write (the INT8 or fused graph when the spec asks for one; the
            plain float32 export goes beside it as ``<stem>.fp32.onnx``, a fused graph that
            INT8 starts from as ``<stem>.fused.onnx``).
        spec: What to export; the shared defaults (:class:`ExportSpec`) when ``None``.
        provenance: Metadata entries naming where the model came from: ``model``,
            ``model_digest``, ``record_key``, ``notes`` (``None`` values are skipped).
        extra_check_sizes: Sizes the parity check covers besides the default ones.
        calib_data_dir: Folder of a named calibration dataset's files.

    Returns:
        An :class:`ExportArtifact`.

    Raises:
        ValueError: the spec cannot be carried out for this model (see
            :func:`export_onnx`), or a static graph with calibration resolutions other
            than its one size.
        ExportParityError: the float32 graph disagrees with eager PyTorch.
    """
    spec = spec or ExportSpec()
    path = Path(path)
    plain = spec.int8 == "none" and not spec.fused
    fp32_path = path if plain else path.with_name(path.stem + ".fp32.onnx")
    provenance = dict(provenance or {})
    result = export_onnx(
        model,
        fp32_path,
        spec.example_size,
        dynamic=spec.dynamic,
        patch_size=spec.patch_size,
        opset=spec.opset,
        atol=spec.atol,
        extra_check_sizes=extra_check_sizes,
        metadata=provenance,
    )
    resolved = replace(spec, patch_size=result.patch_size, example_size=result.example_size)
    float_path = fp32_path  # the float graph INT8 starts from
    fusion = None
    if spec.fused:
        float_path = path if spec.int8 == "none" else path.with_name(path.stem + ".fused.onnx")
        fusion = _fuse(model, result, resolved, float_path, extra_check_sizes)
    facts = None
    if spec.int8 != "none":
        resolved, facts = _quantize(model, result, resolved, float_path, path, calib_data_dir)
    return ExportArtifact(
        path=path,
        spec=resolved,
        fp32=result,
        quantization=facts,
        fusion=fusion,
        metadata=read_export_metadata(path),
    )


def _fuse(
    model: nn.Module,
    result: ExportResult,
    resolved: ExportSpec,
    fused_path: Path,
    extra_check_sizes: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """Fuses the float32 graph into ``fused_path``, checks its parity against eager
    PyTorch and writes its metadata; returns the fusion's facts (with ``parity``)."""
    base, _ = unwrap_model(model)
    fp32_path = result.path
    fusion = fuse_onnx(
        fp32_path,
        fused_path,
        num_heads=base.config.num_heads,
        hidden_size=base.config.embed_dim,
    )
    sizes = default_check_sizes(base, result.example_size, result.patch_size, result.dynamic)
    sizes = list(dict.fromkeys([*sizes, *(tuple(s) for s in extra_check_sizes)]))
    fusion["parity"] = check_parity(
        model, fused_path, sizes, patch_size=result.patch_size, atol=resolved.atol
    )
    write_export_metadata(
        fused_path,
        {
            **read_export_metadata(fp32_path),
            "export_spec": replace(resolved, int8="none").to_json(),
            "fp32_graph": fp32_path.name,
        },
    )
    return fusion


def _calibration_resolutions(
    spec: ExportSpec, model: nn.Module, result: ExportResult
) -> tuple[tuple[int, int], ...]:
    """The sizes static INT8 calibrates at: the spec's, else the native size; a static
    graph's one size only.

    Raises:
        ValueError: a static graph with calibration resolutions other than its one size.
    """
    base, _ = unwrap_model(model)
    resolutions = spec.calib_resolutions or (tuple(int(v) for v in base.config.img_size),)
    if result.dynamic:
        return tuple(resolutions)
    if spec.calib_resolutions is not None and set(spec.calib_resolutions) != {result.example_size}:
        raise ValueError(
            f"a static graph takes {result.example_size[0]}x"
            f"{result.example_size[1]} only; calibrating it at "
            f"{list(spec.calib_resolutions)} makes no sense. Drop the calibration "
            "resolutions or export a dynamic graph"
        )
    return (result.example_size,)


def _quantize(
    model: nn.Module,
    result: ExportResult,
    resolved: ExportSpec,
    float_path: Path,
    path: Path,
    calib_data_dir: str | None,
) -> tuple[ExportSpec, dict[str, Any]]:
    """Quantises ``float_path`` into ``path`` as the spec says (static INT8 calibrates on
    the spec's data first) and writes its metadata; returns the spec as carried out and
    the quantisation's facts."""
    calibration = None
    if resolved.int8 == "static":
        resolutions = _calibration_resolutions(resolved, model, result)
        resolved = replace(resolved, calib_resolutions=resolutions)
        calibration = calibration_batches(
            model,
            resolved.calib_data,
            list(resolutions),
            num_images=resolved.calib_images,
            split=resolved.calib_split,
            data_dir=calib_data_dir,
        )
    facts = quantize_onnx(
        float_path,
        path,
        resolved.int8,
        calibration=calibration,
        calib_method=resolved.calib_method,
        percentile=resolved.calib_percentile,
        quantize_attention_matmuls=resolved.quantize_attention_matmuls,
    )
    write_export_metadata(
        path,
        {
            **read_export_metadata(float_path),
            "export_spec": resolved.to_json(),
            "fp32_graph": float_path.name,
        },
    )
    return resolved, facts

"""Exporting a planned configuration: an :class:`ExportPlan` is an export spec plus where
it came from (model reference, checkpoint digest, the record it reproduces, the
resolution measured, notes), and :func:`export_from_plan` carries it out.

The plan is made above this room (:func:`vitres.tune.export_plan.plan_from_record` maps a
sweep record to one); this module loads nothing and decides nothing: it checks that the
checkpoint is still the one measured and runs
:func:`~vitres.export.from_spec.export_from_spec`, with the parity check covering the
planned resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from torch import nn

from vitres.export.exportable import check_exportable, unwrap_model
from vitres.export.from_spec import ExportArtifact, export_from_spec
from vitres.export.spec import ExportSpec

__all__ = ["ExportPlan", "export_from_plan"]


@dataclass(frozen=True)
class ExportPlan:
    """How to export the configuration of one sweep record (an export spec and its
    provenance).

    Attributes:
        spec: The export spec that reproduces the record's graph.
        model: The record's model reference (bundled name, checkpoint path...).
        model_digest: The checkpoint digest the record was measured with, if known.
        record_key: The record's key.
        resolution: The ``(H, W)`` the record measured (the parity check covers it).
        notes: How the export differs from what was measured, in words (empty when it
            is the measured graph itself).
        data: The data the record was measured on (a dataset name or folder), if any.
    """

    spec: ExportSpec
    model: str
    model_digest: str | None
    record_key: str
    resolution: tuple[int, int]
    notes: tuple[str, ...] = ()
    data: str | None = None


def _class_names(data: str | None) -> str | None:
    """The class names of the record's data as a JSON list: Fashion-MNIST's, or an image
    folder's sub-folder names (sorted, as the loader numbers them); ``None`` if unknown."""
    import json
    import os

    from vitres.data import FASHION_MNIST_ALIASES
    from vitres.data.fashion_mnist import FASHION_MNIST_CLASSES

    if not data:
        return None
    if data.lower() in FASHION_MNIST_ALIASES:
        return json.dumps(list(FASHION_MNIST_CLASSES))
    root = os.path.expanduser(data)
    for split in ("train", ""):
        folder = os.path.join(root, split) if split else root
        if os.path.isdir(folder):
            names = sorted(
                e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
            )
            if names and not (split == "" and "train" in names):
                return json.dumps(names)
    return None


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
        plan: From :func:`vitres.tune.export_plan.plan_from_record`.
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
        "recommended_size": f"{plan.resolution[0]}x{plan.resolution[1]}",
        "data": plan.data,
        "class_names": _class_names(plan.data),
    }
    return export_from_spec(
        model,
        path,
        spec,
        provenance=provenance,
        extra_check_sizes=[plan.resolution],
        calib_data_dir=calib_data_dir,
    )

"""The calibration spec of static INT8: which real images fix the activation ranges, and how.

Static quantisation (Jacob et al., CVPR 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference") fixes each activation's range
on real images. :class:`CalibrationSpec` names them (data, split, count, sizes) and the
method (min-max, entropy, percentile); its defaults and rules are the
:class:`~vitres.export.spec.ExportSpec` ones, of which it is the calibration part.
:func:`calibrated_export_spec` writes calibration arguments back into an export spec.
The INT8 backends (:mod:`vitres.backends.calibration`) calibrate through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitres.export.spec import ExportSpec

__all__ = ["CalibrationSpec", "calibrated_export_spec"]

_DEFAULTS = ExportSpec()
#: The percentile left out of cache names (the default before it was configurable).
_UNTAGGED_PERCENTILE = 99.999

Size = tuple[int, int]


@dataclass(frozen=True)
class CalibrationSpec:
    """The real images static INT8 calibrates on, and how activation ranges are fixed.

    Values are checked by :class:`~vitres.export.spec.ExportSpec`'s rules (the one place
    they live), so a bad method or a non-positive image count fails here too.

    Attributes:
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        percentile: With ``percentile``: the kept percentile of ``|x|``.
        images: Number of calibration images.
        data: Dataset name or image folder the images come from.
        split: The split of ``data`` (train, so the test set stays unseen).
        resolutions: ``(H, W)`` sizes to calibrate at; ``None`` = the build size.
        data_dir: Folder of a named dataset's files (``None``: the dataset's default).
    """

    method: str = _DEFAULTS.calib_method
    percentile: float = _DEFAULTS.calib_percentile
    images: int = _DEFAULTS.calib_images
    data: str = _DEFAULTS.calib_data
    split: str = _DEFAULTS.calib_split
    resolutions: tuple[Size, ...] | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        checked = ExportSpec(**self.export_fields())  # raises ValueError, saying what was wrong
        object.__setattr__(self, "resolutions", checked.calib_resolutions)
        object.__setattr__(self, "percentile", checked.calib_percentile)

    @classmethod
    def from_export_spec(cls, spec: ExportSpec, data_dir: str | None = None) -> CalibrationSpec:
        """The calibration part of ``spec`` (plus where a named dataset's files are)."""
        return cls(
            method=spec.calib_method,
            percentile=spec.calib_percentile,
            images=spec.calib_images,
            data=spec.calib_data,
            split=spec.calib_split,
            resolutions=spec.calib_resolutions,
            data_dir=data_dir,
        )

    def export_fields(self) -> dict[str, Any]:
        """The :class:`~vitres.export.spec.ExportSpec` fields this spec sets."""
        return {
            "calib_method": self.method,
            "calib_percentile": self.percentile,
            "calib_images": self.images,
            "calib_data": self.data,
            "calib_split": self.split,
            "calib_resolutions": self.resolutions,
        }

    def sizes_for(self, image_size: Sequence[int], dynamic: bool = True) -> list[Size]:
        """The ``(H, W)`` sizes to calibrate a graph built at ``image_size`` on: the
        spec's resolutions, or the build size alone (always, for a static graph, which
        takes one size only)."""
        build = (int(image_size[0]), int(image_size[1]))
        if not dynamic or self.resolutions is None:
            return [build]
        return list(self.resolutions)

    def cache_tag(
        self, sizes: Sequence[Size], *, method: bool = True, percentile: bool = True
    ) -> str:
        """The settings as a file-name part: ``[method-]data-split-images-HxW_HxW[-pP]``.

        Only the last part of ``data`` is used (graphs never mix datasets). ``method``
        leaves out the method (OpenVINO's NNCF names its preset instead); ``percentile``
        appends a non-default percentile of the ``percentile`` method.
        """
        data = Path(self.data).name or "data"
        names = "_".join(f"{h}x{w}" for h, w in sizes)
        tag = f"{data}-{self.split}-{self.images}-{names}"
        if method:
            tag = f"{self.method}-{tag}"
        if percentile and self.method == "percentile" and self.percentile != _UNTAGGED_PERCENTILE:
            tag += f"-p{self.percentile:g}"
        return tag

    def batches(self, model: nn.Module, sizes: Sequence[Size]) -> list[np.ndarray]:
        """Model-ready calibration images at each size (:func:`vitres.export.calibration_batches`)."""
        import vitres.export as export  # looked up per call (tests substitute it)

        return export.calibration_batches(
            model,
            self.data,
            list(sizes),
            num_images=self.images,
            split=self.split,
            data_dir=self.data_dir,
        )


def calibrated_export_spec(
    spec: ExportSpec | None,
    int8: str,
    *,
    method: str | None = None,
    data: str | None = None,
    images: int | None = None,
    split: str | None = None,
    resolutions: Sequence[Sequence[int]] | None = None,
    **other: Any,
) -> ExportSpec:
    """``spec`` (or the shared defaults) with a backend's INT8 mode and calibration
    arguments; arguments left ``None`` keep the spec's values.

    Args:
        spec: The export spec the arguments override.
        int8: ``"dynamic"`` or ``"static"``.
        method: Calibration method.
        data: Dataset name or image folder.
        images: Number of calibration images.
        split: Their split.
        resolutions: ``(H, W)`` sizes to calibrate at.
        **other: Further :class:`~vitres.export.spec.ExportSpec` fields (``None`` keeps).
    """
    return (spec or ExportSpec()).with_overrides(
        int8=int8,
        calib_method=method,
        calib_data=data,
        calib_images=images,
        calib_split=split,
        calib_resolutions=None if resolutions is None else tuple(tuple(r) for r in resolutions),
        **other,
    )

"""One calibration spec and one calibrate-then-quantise sequence for the INT8 backends.

``onnxruntime-int8(-static)``, ``onnxruntime-fused-int8-static``, ``openvino-int8`` and
``tensorrt-int8`` all fix activation ranges on real images (Jacob et al., CVPR 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference"). They share:

* :class:`~vitres.export.calibration.CalibrationSpec`: which images (data, split,
  count, sizes) and how ranges are fixed (method, percentile), with the
  :class:`~vitres.export.spec.ExportSpec` defaults;
  :func:`~vitres.export.calibration.calibrated_export_spec` writes a backend's
  calibration arguments into its export spec, so ``vitres export`` and the sweep
  quantise the same way (both re-exported here).
* :class:`CalibratedBackend`: the sequence -- pick the sizes, name the cached file by
  the settings, and only when it is missing draw the calibration images, quantise into a
  partial file and give it the final name; the time it took is ``quantize_time_s``.

The quantiser itself (ONNX Runtime or NNCF) stays with each backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitres.export.calibration import CalibrationSpec, calibrated_export_spec
from vitres.export.spec import ExportSpec

__all__ = ["CalibratedBackend", "CalibrationSpec", "calibrated_export_spec"]

Size = tuple[int, int]
#: ``quantise(calibration_batches_or_None, output_path) -> facts`` (facts hold ``"seconds"``)
Quantiser = Callable[[list[np.ndarray] | None, Path], dict[str, Any]]


class CalibratedBackend:
    """Mixin: the calibrate-then-quantise sequence of a backend with an INT8 file cache.

    The backend sets ``spec`` (an :class:`~vitres.export.spec.ExportSpec`) and
    ``calibration_data_dir``; backends that report build facts also have ``build_info``.
    """

    spec: ExportSpec
    calibration_data_dir: str | None = None
    quantize_time_s: float | None = None
    build_info: dict[str, Any]

    @property
    def calibration(self) -> CalibrationSpec:
        """The calibration settings in effect (from the export spec)."""
        return CalibrationSpec.from_export_spec(self.spec, self.calibration_data_dir)

    def quantised_once(
        self,
        model: nn.Module,
        path: Path,
        quantise: Quantiser,
        sizes: Sequence[Size] | None,
        *,
        sidecars: Sequence[str] = (),
        record: bool = True,
    ) -> Path:
        """``path``, made by ``quantise`` unless it is already cached.

        When ``path`` is missing: draws the calibration images at ``sizes`` (``None``:
        a dynamic quantisation that needs none), quantises into ``<stem>.partial<suffix>``
        and only then gives it (and its ``sidecars`` suffixes, e.g. OpenVINO's ``.bin``)
        the final name, so an interrupted build never leaves a file that looks finished.

        Args:
            model: The float model (calibration images are prepared for it).
            path: The cached quantised file.
            quantise: Writes the quantised file to the path it gets; returns its facts
                (``"seconds"`` among them).
            sizes: ``(H, W)`` sizes to calibrate at, or ``None`` for no calibration.
            sidecars: Suffixes of files written beside the main one.
            record: Set ``quantize_time_s`` and ``build_info["quantization"]`` /
                ``["quantize_time_s"]`` (0 when cached).

        Returns:
            ``path``.
        """
        if record:
            self.quantize_time_s = 0.0
        if not path.exists():
            batches = None if sizes is None else self.calibration.batches(model, sizes)
            partial = path.with_name(f"{path.stem}.partial{path.suffix}")
            facts = quantise(batches, partial)
            for suffix in sidecars:
                partial.with_suffix(suffix).replace(path.with_suffix(suffix))
            partial.replace(path)
            if record:
                self.quantize_time_s = facts["seconds"]
                self.build_info["quantization"] = {**facts, "path": str(path)}
        if record:
            self.build_info["quantize_time_s"] = self.quantize_time_s
        return path

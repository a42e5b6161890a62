"""The export spec: every choice that decides what an exported ONNX file computes.

One :class:`ExportSpec` holds the opset, dynamic or static sizes, the example size, the
patch size, whether ONNX Runtime's transformer fusions run, the INT8 mode and its calibration (method, images, resolutions, data), and
the parity tolerance. Its defaults are *the* defaults: the ``onnxruntime*`` and
``tensorrt*`` backends export and quantise with them, and so does ``vitres export``, so a
file exported from a sweep record is the graph that was measured. The spec is written
into the ONNX file's ``metadata_props`` (:mod:`vitres.export.metadata`).

Default opset 23: the dynamo exporter then emits ONNX's fused ``Attention`` (opset 23)
and ``Gelu`` (opset 20), which ONNX Runtime runs faster than the opset-18 decomposition
and TensorRT >= 10.14 parses. Opset 18 is the floor (the exporter's, and where
``Resize`` gained ``antialias``); use it for runtimes that stop below 23.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_OPSET",
    "INT8_MODES",
    "MIN_OPSET",
    "ExportSpec",
]

DEFAULT_OPSET = 23
MIN_OPSET = 18  # the dynamo exporter's floor; also where Resize gained `antialias`
INT8_MODES = ("none", "dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _size(value: Any, what: str) -> tuple[int, int]:
    """``28``, ``[28, 40]`` or ``(28, 40)`` as a positive ``(H, W)``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size (H, W) of positive ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a size (H, W) of positive ints, got {value!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} must be positive, got {height}x{width}")
    return height, width


@dataclass(frozen=True)
class ExportSpec:
    """What an exported graph computes and how it was made.

    Attributes:
        opset: ONNX opset of the default domain (>= 18).
        dynamic: One graph for every ``H x W`` (ViT); False = one static size (batch
            stays dynamic). MLP-Mixers and some position embeddings need False.
        example_size: ``(H, W)`` to trace at; ``None`` = the exporter's default (native
            plus two patches tall and one wide for dynamic graphs, native for static).
            For a static graph it is *the* input size.
        patch_size: Patch size baked into the graph; ``None`` = the model's own.
        fused: Apply ONNX Runtime's transformer fusions (SkipLayerNormalization, BiasGelu;
            attention is fused at opset 23) after export, see :mod:`vitres.export.fuse`.
            The file then needs ONNX Runtime (``com.microsoft`` operators).
        int8: ``"none"`` (float32), ``"dynamic"`` (int8 weights, activations quantised
            per call) or ``"static"`` (QDQ, activation ranges fixed by calibration).
        calib_method: Static INT8: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        calib_percentile: Static INT8 with ``percentile``: the kept percentile of ``|x|``.
        calib_images: Static INT8: number of calibration images.
        calib_resolutions: Static INT8: ``(H, W)`` sizes to calibrate at; ``None`` = the
            build size (a backend) or the native size (``vitres export``). A dynamic graph
            that serves several sizes should see them all.
        calib_data: Static INT8: dataset name or image folder calibration images come from.
        calib_split: Static INT8: the split of ``calib_data`` (train, so the test set stays
            unseen).
        quantize_attention_matmuls: INT8: also quantise Q·Kᵀ and softmax·V (opset-18
            graphs; at opset 23 attention is one fused float operator).
        atol: Largest absolute logit difference the parity check allows (fp32 graph vs
            eager PyTorch).
    """

    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    example_size: tuple[int, int] | None = None
    patch_size: int | None = None
    fused: bool = False
    int8: str = "none"
    calib_method: str = "percentile"
    calib_percentile: float = 99.999
    calib_images: int = 256
    calib_resolutions: tuple[tuple[int, int], ...] | None = None
    calib_data: str = "fashion-mnist"
    calib_split: str = "train"
    quantize_attention_matmuls: bool = False
    atol: float = 1e-4

    def __post_init__(self) -> None:
        if isinstance(self.opset, bool) or not isinstance(self.opset, int):
            raise ValueError(f"opset must be an int, got {self.opset!r}")
        if self.opset < MIN_OPSET:
            raise ValueError(
                f"opset {self.opset} is not supported: torch.onnx's dynamo exporter emits "
                f"opset >= {MIN_OPSET}, and antialiased position-table resampling needs "
                f"Resize's `antialias` attribute (opset 18); use opset >= {MIN_OPSET} "
                f"(default {DEFAULT_OPSET})"
            )
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {self.dynamic!r}")
        if self.example_size is not None:
            object.__setattr__(self, "example_size", _size(self.example_size, "example_size"))
        if self.patch_size is not None:
            if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int):
                raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
            if self.patch_size <= 0:
                raise ValueError(
                    f"patch_size must be a positive int, got {self.patch_size}; leave it "
                    "unset (None) for the model's own patch size"
                )
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be True or False, got {self.fused!r}")
        if self.int8 not in INT8_MODES:
            raise ValueError(f"int8 must be one of {INT8_MODES}, got {self.int8!r}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got "
                f"{self.calib_method!r}"
            )
        if not (0.0 < float(self.calib_percentile) <= 100.0):
            raise ValueError(
                f"calib_percentile must lie in (0, 100], got {self.calib_percentile!r}"
            )
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int):
            raise ValueError(f"calib_images must be a positive int, got {self.calib_images!r}")
        if self.calib_images <= 0:
            raise ValueError(f"calib_images must be positive, got {self.calib_images}")
        if self.calib_resolutions is not None:
            if isinstance(self.calib_resolutions, (str, bytes)) or not isinstance(
                self.calib_resolutions, Sequence
            ):
                raise ValueError(
                    "calib_resolutions must be a list of sizes (H, W), got "
                    f"{self.calib_resolutions!r}"
                )
            sizes = tuple(_size(r, "calib_resolutions entry") for r in self.calib_resolutions)
            if not sizes:
                raise ValueError("calib_resolutions must not be empty (use None for the default)")
            object.__setattr__(self, "calib_resolutions", sizes)
        for name in ("calib_data", "calib_split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.quantize_attention_matmuls, bool):
            raise ValueError(
                "quantize_attention_matmuls must be True or False, got "
                f"{self.quantize_attention_matmuls!r}"
            )
        atol = float(self.atol)
        if not math.isfinite(atol) or atol <= 0:
            raise ValueError(f"atol must be a positive finite number, got {self.atol!r}")
        object.__setattr__(self, "atol", atol)
        object.__setattr__(self, "calib_percentile", float(self.calib_percentile))

    def with_overrides(self, **changes: Any) -> ExportSpec:
        """A copy with the fields in ``changes`` that are not ``None`` replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: sizes as ``[H, W]`` lists."""
        data = asdict(self)
        if self.example_size is not None:
            data["example_size"] = list(self.example_size)
        if self.calib_resolutions is not None:
            data["calib_resolutions"] = [list(r) for r in self.calib_resolutions]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportSpec:
        """The spec :meth:`to_dict` wrote.

        Raises:
            ValueError: unknown fields (a typo would otherwise be dropped silently), or
                invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an export spec is a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown export spec field(s) {unknown}; known fields: {sorted(names)}"
            )
        return cls(**dict(data))

    def to_json(self) -> str:
        """One line of JSON with sorted keys (what the ONNX metadata holds)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExportSpec:
        """The spec :meth:`to_json` wrote."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"export spec is not valid JSON: {error}") from None
        return cls.from_dict(data)

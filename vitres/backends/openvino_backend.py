"""``openvino`` / ``openvino-bf16`` / ``openvino-int8``: Intel OpenVINO on the CPU.

``prepare`` converts the model (:func:`vitres.export.openvino.convert_to_openvino`:
directly from PyTorch with dynamic batch, height and width, falling back to the ONNX
graph), checks it against eager PyTorch, and compiles it with an explicit thread count
(``INFERENCE_NUM_THREADS``) and precision hint: ``f32`` for ``openvino``, ``bf16`` for
``openvino-bf16`` (AMX / AVX-512 BF16; a CPU without them runs f32, and
``build_info["inference_precision"]`` says what really ran). ``openvino-int8`` quantises
the converted model with NNCF on real calibration images from the sweep's data (the
train split, at the build size by default) and runs it with an ``f32`` hint for the
parts that stay float.

One converted model serves every size of a ladder: converted models are cached on disk
(OpenVINO IR, by a hash of the weights, config, patch size and converter), so a sweep
converts each model once; ``convert_time_s``, ``quantize_time_s`` and ``compile_time_s``
split ``build_time_s``, which never counts toward latency.

**Per-shape specialisation.** A graph with dynamic height and width recomputes its
shape-dependent parts (the position table resampled to the grid, the reshapes) on every
call; OpenVINO's own static conversion folds them into constants, which is worth 1.3-1.7x
on the small Fashion-MNIST model (``benchmarks/backends.py``). So each new
``(batch, height, width)`` that :meth:`run` sees gets the same IR reshaped to that static
shape and compiled once (a fraction of a second for small models; the time goes to
``build_info["specialise_time_s"]``, and a sweep's warm-up calls absorb it). At most
``max_static_shapes`` are kept; shapes beyond that run on the dynamic compiled model,
which computes the same function. ``specialise=False`` keeps the dynamic model only.

An optional extra (``pip install 'vitres[openvino]'``): without ``openvino`` (and, for
INT8, ``nncf``) :meth:`availability` says so and the sweep skips the backend.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend
from vitres.backends.calibration import CalibratedBackend, calibrated_export_spec
from vitres.backends.onnx_backend import DEFAULT_CACHE_DIR, exported_graph, model_fingerprint
from vitres.export.spec import ExportSpec


def _type_name(value: Any) -> str:
    """``"f32"`` / ``"bf16"`` for an ``openvino.Type`` (or its string)."""
    getter = getattr(value, "get_type_name", None)
    return str(getter() if callable(getter) else value)


def openvino_availability(int8: bool = False) -> tuple[bool, str]:
    """``(usable, reason)``: needs ``openvino`` (and ``nncf`` for INT8)."""
    needed = ("openvino", "nncf") if int8 else ("openvino",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return False, f"missing {', '.join(missing)}: pip install 'vitres[openvino]'"
    return True, ""


@register_backend
class OpenVinoBackend(Backend):
    """OpenVINO on the CPU, float32 (see the module docstring).

    Args:
        device: Only ``"cpu"`` (OpenVINO's ``CPU`` plugin).
        threads: ``INFERENCE_NUM_THREADS``; torch's thread count at ``prepare`` when ``None``.
        cache_dir: Where converted models are kept (a temp folder by default).
        converter: ``"auto"`` (PyTorch directly, ONNX when that fails), ``"pytorch"`` or
            ``"onnx"``.
        spec: Export spec of the ONNX fallback graph and the parity tolerance (INT8:
            calibration images, split, data, resolutions); shared defaults when ``None``.
        specialise: Compile a static copy for each new input shape (see the module
            docstring); ``False`` runs every shape on the one dynamic model.
        max_static_shapes: How many static copies are kept at most.
    """

    name = "openvino"
    precision = "fp32"
    dynamic_batch = True
    devices = ("cpu",)
    inference_precision = "f32"

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        converter: str = "auto",
        spec: ExportSpec | None = None,
        specialise: bool = True,
        max_static_shapes: int = 16,
    ) -> None:
        super().__init__(device)
        if max_static_shapes < 0:
            raise ValueError(f"max_static_shapes must be >= 0, got {max_static_shapes}")
        if self.device.type != "cpu":
            raise ValueError(f"backend {self.name!r} runs on the CPU only (got device {device!r})")
        from vitres.export.openvino import CONVERTERS

        if converter not in CONVERTERS:
            raise ValueError(f"converter must be one of {CONVERTERS}, got {converter!r}")
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.converter = converter
        self.spec = spec or ExportSpec()
        self.specialise = bool(specialise)
        self.max_static_shapes = int(max_static_shapes)
        self._static_requests: dict[tuple[int, ...], Any] = {}
        self.convert_time_s: float | None = None
        self.compile_time_s: float | None = None
        self.build_info: dict[str, Any] = {}

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return openvino_availability()

    # ------------------------------------------------------------------ models
    def float_model(self, model: nn.Module, image_size: tuple[int, int]) -> tuple[Path, dict]:
        """The converted float model's IR file (cached) and its conversion facts."""
        import openvino as ov

        from vitres.export import unwrap_model
        from vitres.export.openvino import convert_to_openvino, direct_conversion_is_dynamic

        base, _ = unwrap_model(model)
        patch = self.patch_size
        dynamic = direct_conversion_is_dynamic(base, patch, image_size)
        key = model_fingerprint(
            model,
            openvino=ov.__version__,
            converter=self.converter,
            opset=self.spec.opset,
            size=None if dynamic else tuple(image_size),
        )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        xml = self.cache_dir / f"openvino-{type(base).__name__.lower()}-{key}.xml"
        facts_path = xml.with_suffix(".json")
        self.convert_time_s = 0.0
        if xml.exists() and facts_path.exists():
            return xml, {**json.loads(facts_path.read_text()), "converted": False}

        def onnx_graph() -> Path:
            path, info = exported_graph(model, image_size, self.cache_dir, self.spec)
            self.build_info["onnx_export_time_s"] = info["export_time_s"]
            return path

        conversion = convert_to_openvino(
            model,
            patch_size=patch,
            image_size=tuple(image_size),
            converter=self.converter,
            onnx_graph=onnx_graph,
            atol=self.spec.atol,
        )
        self.convert_time_s = conversion.convert_time_s
        partial = xml.with_name(xml.stem + ".partial.xml")
        ov.save_model(conversion.model, str(partial), compress_to_fp16=False)
        facts = {
            "converter": conversion.converter,
            "dynamic": conversion.dynamic,
            "min_side": conversion.min_side,
            "fallback_reason": conversion.fallback_reason,
            "parity": str(conversion.parity),
            "in_chans": int(base.config.in_chans),
        }
        facts_path.write_text(json.dumps(facts))
        partial.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        partial.replace(xml)  # only checked models get the final name
        return xml, {**facts, "converted": True}

    def runtime_model(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        """The IR this backend compiles (the INT8 subclass quantises the float one)."""
        path, facts = self.float_model(model, image_size)
        self.build_info.update(facts)
        return path

    @property
    def patch_size(self) -> int:
        return self._patch

    # ------------------------------------------------------------------ build and run
    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        from vitres.export import unwrap_model
        from vitres.export.openvino import compile_openvino

        model.eval()
        base, bound_patch = unwrap_model(model)
        self._patch = int(bound_patch or base.config.patch_size)
        self.in_chans = int(base.config.in_chans)
        self.size_policy = base.config.size_policy
        image_size = (int(input_shape[2]), int(input_shape[3]))
        self.model_path = self.runtime_model(model, image_size)
        self.static_size = None if self.build_info.get("dynamic", True) else image_size
        start = time.perf_counter()
        threads = int(self.threads or torch.get_num_threads())
        self.compiled = compile_openvino(
            str(self.model_path), threads=threads, precision=self.inference_precision
        )
        self.request = self.compiled.create_infer_request()
        self._threads_used = threads
        self._static_requests = {}
        self.compile_time_s = time.perf_counter() - start
        self.build_info.update(
            compile_time_s=self.compile_time_s,
            convert_time_s=self.convert_time_s,
            threads=int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            inference_precision=_type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
            specialise_time_s=0.0,
            static_shapes=[],
        )
        self.run(torch.zeros(input_shape))  # first inference: shape-specific kernels

    def run(self, batch: Tensor) -> Tensor:
        from vitres.export.runtime import check_image_shape, float32_images

        height, width = self.static_size or ("dynamic", "dynamic")
        check_image_shape(
            tuple(batch.shape),
            channels=self.in_chans,
            height=height,
            width=width,
            patch_size=self.patch_size,
            multiple_of_patch=self.size_policy == "error",
            min_side=self.build_info.get("min_side"),
            name=f"the {self.name} model",
        )
        patch = self.patch_size
        if self.size_policy == "resize" and (batch.shape[-2] % patch or batch.shape[-1] % patch):
            from vitres.layers.patch_embed import fit_to_patch

            # the same resampling eager applies, in PyTorch (see export.openvino._graph_sizes)
            checked = torch.from_numpy(float32_images(batch))
            batch, _ = fit_to_patch(checked, patch, "resize")
        result = self.request_for(tuple(batch.shape)).infer(
            {0: float32_images(batch)}, share_outputs=False
        )
        return torch.from_numpy(result[0])

    def request_for(self, shape: tuple[int, ...]) -> Any:
        """The infer request for a batch of ``shape``: its static copy (compiled on first
        use, while fewer than ``max_static_shapes`` exist) or the dynamic model's."""
        if self.static_size is not None or not self.specialise:
            return self.request
        request = self._static_requests.get(shape)
        if request is not None:
            return request
        if len(self._static_requests) >= self.max_static_shapes:
            return self.request
        import openvino as ov

        from vitres.export.openvino import compile_openvino

        start = time.perf_counter()
        static = ov.Core().read_model(str(self.model_path))
        static.reshape({static.inputs[0]: ov.PartialShape([int(d) for d in shape])})
        compiled = compile_openvino(
            static, threads=self._threads_used, precision=self.inference_precision
        )
        request = compiled.create_infer_request()
        self._static_requests[shape] = request
        self.build_info["specialise_time_s"] += time.perf_counter() - start
        self.build_info["static_shapes"].append(list(shape))
        return request


@register_backend
class OpenVinoBF16Backend(OpenVinoBackend):
    """OpenVINO with the ``bf16`` inference precision hint (float32 logits)."""

    name = "openvino-bf16"
    precision = "bf16"
    inference_precision = "bf16"


@register_backend
class OpenVinoInt8Backend(CalibratedBackend, OpenVinoBackend):
    """OpenVINO, INT8 by NNCF post-training quantisation on real calibration images.

    Calibration arguments left ``None`` take the export spec's values (shared defaults:
    256 images of the train split of Fashion-MNIST, at the build size).

    Args:
        calibration_data: Dataset name or image folder calibration images come from.
        calibration_data_dir: Folder of a named dataset's files.
        calib_images: Number of calibration images.
        calib_split: Their split.
        calib_resolutions: ``(H, W)`` sizes to calibrate at (default: the build size).
        preset: NNCF preset, ``"mixed"`` or ``"performance"``.
        **kwargs: See :class:`OpenVinoBackend`.
    """

    name = "openvino-int8"
    precision = "int8"
    calibrated = True

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        converter: str = "auto",
        spec: ExportSpec | None = None,
        calibration_data: str | None = None,
        calibration_data_dir: str | None = None,
        calib_images: int | None = None,
        calib_split: str | None = None,
        calib_resolutions: Sequence[tuple[int, int]] | None = None,
        preset: str = "mixed",
    ) -> None:
        spec = calibrated_export_spec(
            spec,
            "static",
            data=calibration_data,
            images=calib_images,
            split=calib_split,
            resolutions=calib_resolutions,
        )
        super().__init__(device, threads, cache_dir, converter, spec)
        self.calibration_data_dir = calibration_data_dir
        self.preset = preset

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return openvino_availability(int8=True)

    def runtime_model(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        import openvino as ov

        from vitres.export.openvino_int8 import quantize_openvino

        float_path, facts = self.float_model(model, image_size)
        self.build_info.update(facts)
        calibration = self.calibration
        sizes = calibration.sizes_for(image_size, facts["dynamic"])
        tag = f"int8-nncf-{self.preset}-{calibration.cache_tag(sizes, method=False)}"

        def quantise(batches: list[np.ndarray] | None, out: Path) -> dict[str, Any]:
            quantized, qfacts = quantize_openvino(
                ov.Core().read_model(str(float_path)), batches, preset=self.preset
            )
            ov.save_model(quantized, str(out), compress_to_fp16=False)
            return qfacts

        path = float_path.with_name(f"{float_path.stem}-{tag}.xml")
        return self.quantised_once(model, path, quantise, sizes, sidecars=(".bin",))


__all__ = ["OpenVinoBF16Backend", "OpenVinoBackend", "OpenVinoInt8Backend", "openvino_availability"]

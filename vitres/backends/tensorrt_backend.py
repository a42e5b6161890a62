"""``tensorrt`` / ``tensorrt-int8``: NVIDIA TensorRT engines built from the ONNX export.

An optional extra for machines with an NVIDIA GPU and the ``tensorrt`` Python package
(``pip install tensorrt``). Without either, :meth:`availability` returns ``False`` with
the reason and the sweep skips the backend; nothing here imports ``tensorrt`` at module
load.

The engine is built from the dynamic ONNX graph (:func:`vitres.backends.onnx_backend.
exported_graph`) with one optimisation profile: ``min`` / ``opt`` / ``max`` input shapes.
By default ``opt`` is the build shape, ``min`` is batch 1 at half the resolution (at
least one patch) and ``max`` is ``max_batch`` at twice the resolution; every shape in
that box runs without a rebuild, with kernels tuned for ``opt``. A static graph
(MLP-Mixer) fixes the resolution, so only the batch varies. Precision: ``fp16``
(``BuilderFlag.FP16``), or ``int8`` from the static QDQ graph of
:func:`vitres.export.quantize_onnx` (explicit quantisation, TensorRT >= 8.6) with FP16
for the float parts. Engines are cached on disk per graph, profile, precision, GPU and
TensorRT version; ``engine_time_s`` is the engine build (or load) time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend
from vitres.backends.calibration import CalibratedBackend, calibrated_export_spec
from vitres.backends.onnx_backend import DEFAULT_CACHE_DIR, exported_graph
from vitres.export.spec import ExportSpec


def tensorrt_availability() -> tuple[bool, str]:
    """``(usable, reason)``: needs the ``tensorrt`` package and a CUDA GPU."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed (optional extra: pip install tensorrt)"
    if not torch.cuda.is_available():
        return False, "TensorRT needs an NVIDIA GPU and CUDA; torch.cuda.is_available() is False"
    for name in ("onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(name) is None:
            return False, f"the ONNX export needs {name}: pip install 'vitres[onnx]'"
    return True, ""


@register_backend
class TensorRTBackend(Backend):
    """TensorRT engine, FP16, with a min/opt/max optimisation profile.

    Args:
        device: A CUDA device (``"cuda"`` when given ``"cpu"``, since TensorRT is GPU-only).
        min_size: ``(H, W)`` of the profile's minimum (default: half the build size).
        max_size: ``(H, W)`` of the profile's maximum (default: twice the build size).
        max_batch: Largest batch of the profile.
        workspace_gb: Builder workspace limit.
        cache_dir: Where ONNX graphs and engines are kept.
        spec: The export spec of the ONNX graph (opset 23 by default: TensorRT >= 10.14
            parses its fused ``Attention``; pass ``ExportSpec(opset=18)`` for older
            TensorRT); the shared defaults when ``None``.
    """

    name = "tensorrt"
    precision = "fp16"
    dynamic_batch = True
    devices = ("cuda",)

    def __init__(
        self,
        device: str = "cuda",
        min_size: tuple[int, int] | None = None,
        max_size: tuple[int, int] | None = None,
        max_batch: int = 64,
        workspace_gb: float = 4.0,
        cache_dir: str | Path | None = None,
        spec: ExportSpec | None = None,
    ) -> None:
        super().__init__("cuda" if torch.device(device).type == "cpu" else device)
        self.spec = spec or ExportSpec()
        self.min_size = min_size
        self.max_size = max_size
        self.max_batch = max_batch
        self.workspace_gb = workspace_gb
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.engine_time_s: float | None = None
        self.engine_path: Path | None = None  # the serialized plan, after build
        self.profile: dict[str, tuple[int, ...]] = {}

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return tensorrt_availability()

    # ------------------------------------------------------------------ graph and profile
    def onnx_graph(self, model: nn.Module, image_size: tuple[int, int]) -> tuple[Path, bool]:
        path, info = exported_graph(model, image_size, self.cache_dir, self.spec)
        return path, bool(info["dynamic"])

    def optimisation_profile(
        self, input_shape: tuple[int, ...], patch: int, dynamic: bool
    ) -> dict[str, tuple[int, ...]]:
        """``{"min", "opt", "max"}`` input shapes of the engine's one profile."""
        batch, chans, height, width = input_shape
        if not dynamic:
            low = high = (height, width)
        else:
            low = self.min_size or (max(patch, height // 2), max(patch, width // 2))
            high = self.max_size or (height * 2, width * 2)
        if not (low[0] <= height <= high[0] and low[1] <= width <= high[1]):
            raise ValueError(
                f"build size {height}x{width} lies outside the profile {low} .. {high}; "
                "widen min_size / max_size"
            )
        return {
            "min": (1, chans, *low),
            "opt": (batch, chans, height, width),
            "max": (max(batch, self.max_batch), chans, *high),
        }

    # ------------------------------------------------------------------ build and run
    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        import tensorrt as trt

        from vitres.export import unwrap_model

        model.eval()
        base, bound_patch = unwrap_model(model)
        patch = int(bound_patch or base.config.patch_size)
        onnx_path, dynamic = self.onnx_graph(model, (input_shape[2], input_shape[3]))
        self.profile = self.optimisation_profile(input_shape, patch, dynamic)
        start = time.perf_counter()
        logger = trt.Logger(trt.Logger.WARNING)
        key = hashlib.sha256(
            f"{onnx_path.name}|{self.profile}|{self.precision}|{trt.__version__}|"
            f"{torch.cuda.get_device_name(self.device)}|{self.workspace_gb}".encode()
        ).hexdigest()[:16]
        engine_path = onnx_path.with_name(f"{onnx_path.stem}-{self.precision}-{key}.engine")
        runtime = trt.Runtime(logger)
        if engine_path.exists():
            serialized = engine_path.read_bytes()
        else:
            serialized = self._build_engine(trt, logger, onnx_path)
            engine_path.write_bytes(serialized)
        self.engine_path = engine_path
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load the engine {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self.input_name = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.engine_time_s = time.perf_counter() - start

    def _build_engine(self, trt: Any, logger: Any, onnx_path: Path) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TRT >= 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            hint = ""
            if self.spec.opset >= 23:
                hint = (
                    f"; the graph has opset {self.spec.opset} (fused Attention, parsed by "
                    "TensorRT >= 10.14): upgrade TensorRT or pass spec=ExportSpec(opset=18)"
                )
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}{hint}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, int(self.workspace_gb * (1 << 30))
        )
        config.set_flag(trt.BuilderFlag.FP16)
        if self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        profile = builder.create_optimization_profile()
        input_name = network.get_input(0).name
        profile.set_shape(input_name, self.profile["min"], self.profile["opt"], self.profile["max"])
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
        return bytes(serialized)

    def run(self, batch: Tensor) -> Tensor:
        x = batch.to(device=self.device, dtype=torch.float32).contiguous()
        low, high = self.profile["min"], self.profile["max"]
        if any(not (lo <= s <= hi) for s, lo, hi in zip(x.shape, low, high)):
            raise ValueError(
                f"input shape {tuple(x.shape)} is outside the engine's optimisation profile "
                f"{low} .. {high}; rebuild with a wider min_size / max_size / max_batch"
            )
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)),
            device=self.device,
            dtype=torch.float32,
        )
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


@register_backend
class TensorRTInt8Backend(CalibratedBackend, TensorRTBackend):
    """TensorRT from the static QDQ INT8 graph (calibrated on real images), FP16 elsewhere.

    Calibration arguments left ``None`` take the export spec's values (the shared
    :class:`~vitres.export.spec.ExportSpec` defaults), as the ONNX Runtime INT8 backends do.

    Args:
        calib_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        calibration_data: Dataset name or image folder (its train split is used).
        calibration_data_dir: Folder of a named dataset's files.
        calib_images: Number of calibration images.
        **kwargs: See :class:`TensorRTBackend` (``spec`` among them).
    """

    name = "tensorrt-int8"
    precision = "int8"
    calibrated = True

    def __init__(
        self,
        device: str = "cuda",
        calib_method: str | None = None,
        calibration_data: str | None = None,
        calib_images: int | None = None,
        calibration_data_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device, **kwargs)
        self.spec = calibrated_export_spec(
            self.spec,
            "static",
            method=calib_method,
            data=calibration_data,
            images=calib_images,
        )
        self.calibration_data_dir = calibration_data_dir

    def onnx_graph(self, model: nn.Module, image_size: tuple[int, int]) -> tuple[Path, bool]:
        from vitres.export import quantize_onnx

        path, dynamic = super().onnx_graph(model, image_size)
        calibration = self.calibration
        sizes = [(int(image_size[0]), int(image_size[1]))]  # the engine's build size only

        def quantise(batches: list[np.ndarray] | None, out: Path) -> dict[str, Any]:
            return quantize_onnx(
                path,
                out,
                "static",
                calibration=batches,
                calib_method=calibration.method,
                percentile=calibration.percentile,
                target="tensorrt",
            )

        tag = calibration.cache_tag(sizes, percentile=False)
        qdq = path.with_name(f"{path.stem}-int8-static-{tag}-trt.onnx")
        return self.quantised_once(model, qdq, quantise, sizes, record=False), dynamic

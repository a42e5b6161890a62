"""``onnxruntime``: the model exported to ONNX (:mod:`vitres.export`) and run by ONNX
Runtime on the CPU, in float32.

``prepare`` exports the model -- one dynamic graph for every size and batch for a ViT, a
static graph per resolution for an MLP-Mixer -- checks it against eager PyTorch, and
opens a session with an explicit thread count and every graph optimisation. Exported
files are cached on disk by a hash of the weights, config, patch size, exporter and the
code that builds the graph (:func:`code_fingerprint`: edited vitres code or another
exporter version never reuses a stale file), so a sweep exports each model once;
sessions are cached per file. ``export_time_s`` and ``session_time_s`` split
``build_time_s`` (which also includes hashing and the check).

Opset, parity tolerance (and, for the INT8 backends, calibration) come from one
:class:`~vitres.export.spec.ExportSpec`, whose defaults ``vitres export`` shares: a file
exported from a sweep record is the graph the sweep measured.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend
from vitres.export.spec import ExportSpec

_REQUIRED = ("onnx", "onnxruntime", "onnxscript")
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "vitres-onnx-cache"


def onnx_availability() -> tuple[bool, str]:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        return False, f"missing {', '.join(missing)}: pip install 'vitres[onnx]'"
    return True, ""


# the packages whose code decides what an exported, quantised or converted graph computes
# (data: calibration images are decoded, resized and normalised there)
_GRAPH_CODE = ("models", "layers", "export", "backends", "tokens", "data")
# the libraries that write or rewrite the cached files
_GRAPH_LIBRARIES = ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A short hash of the vitres source that builds graphs (models, layers, export,
    backends, tokens, data), its version and the versions of the libraries that write
    the files: part of every cache key, so that a graph cached by other code is never
    reused. Where the source is not readable as files (a zip import, a byte-code-only
    install) the version stands in for it, with a warning."""
    import warnings
    from importlib import metadata

    import vitres

    root = Path(vitres.__file__).resolve().parent
    digest = hashlib.sha256(str(vitres.__version__).encode())
    for library in _GRAPH_LIBRARIES:
        try:
            digest.update(f"{library}={metadata.version(library)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library}=none".encode())
    files = 0
    for package in _GRAPH_CODE:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
            files += 1
    if not files:
        warnings.warn(
            f"vitres's source files are not readable under {root}: exported-graph caches "
            "are keyed by the version only; clear the cache folder after changing vitres",
            stacklevel=2,
        )
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module, **extra: Any) -> str:
    """A short hash of a model's weights, config, ``extra`` facts (patch size, opset...)
    and the graph-building code (:func:`code_fingerprint`)."""
    from vitres.export import unwrap_model

    base, bound_patch = unwrap_model(model)
    digest = hashlib.sha256()
    facts = {
        "config": base.config.to_dict(),
        "class": type(base).__name__,
        "bound_patch": bound_patch,
        "torch": torch.__version__,
        "code": code_fingerprint(),
        **extra,
    }
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    for name, tensor in base.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def exported_graph(
    model: nn.Module,
    image_size: tuple[int, int],
    cache_dir: str | Path | None = None,
    spec: ExportSpec | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The fp32 ONNX graph of ``model`` for inputs of ``image_size``, exported once.

    A ViT gets one dynamic graph (any size, any batch), shared by every resolution; a
    model that cannot be exported with dynamic sizes (MLP-Mixer, ``area``/``fourier``
    position resampling, ``cpb``) gets a static graph for ``image_size``.

    Returns:
        The file, and facts: whether it was exported now, the export seconds, dynamic or
        static, the parity report.
    """
    from vitres.export import check_exportable, export_onnx, unwrap_model

    spec = spec or ExportSpec()
    opset = spec.opset
    base, _ = unwrap_model(model)
    try:
        check_exportable(base, dynamic=True, opset=opset)
        dynamic = True
    except ValueError:
        dynamic = False
    key = model_fingerprint(
        model, opset=opset, dynamic=dynamic, size=None if dynamic else image_size
    )
    directory = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    path = directory / f"{type(base).__name__.lower()}-{key}.onnx"
    info: dict[str, Any] = {"dynamic": dynamic, "exported": False, "export_time_s": 0.0}
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.onnx")
        result = export_onnx(
            model,
            partial,
            None if dynamic else tuple(image_size),
            dynamic=dynamic,
            opset=opset,
            atol=spec.atol,
        )
        partial.replace(path)  # only checked graphs ever get the final name
        info.update(
            exported=True,
            export_time_s=result.export_time_s,
            parity=str(result.parity),
            size_rule=result.size_rule,
        )
    return path, info


@register_backend
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU, float32, with an explicit intra-op thread count.

    Args:
        device: Only ``"cpu"``.
        threads: ``intra_op_num_threads``; torch's thread count at ``prepare`` when ``None``.
        cache_dir: Where exported graphs are kept (a temp folder by default).
        optimization: ORT graph optimisation level (``"all"``).
        opset: Opset of the graph this backend exports for itself; ``spec.opset`` (23 by
            default: ONNX's fused ``Attention`` and ``Gelu``) when ``None``.
        spec: The export spec (opset, tolerance; INT8 subclasses also read calibration);
            the shared defaults when ``None``.
    """

    name = "onnxruntime"
    precision = "fp32"
    dynamic_batch = True
    devices = ("cpu",)

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        optimization: str = "all",
        opset: int | None = None,
        spec: ExportSpec | None = None,
    ) -> None:
        super().__init__(device)
        if self.device.type != "cpu":
            raise ValueError(
                f"backend {self.name!r} runs on the CPU only (got device {device!r}); use "
                "'tensorrt' for GPUs"
            )
        self.threads = threads
        self.cache_dir = cache_dir
        self.optimization = optimization
        self.spec = (spec or ExportSpec()).with_overrides(opset=opset)
        self.onnx_path: Path | None = None
        self.export_time_s: float | None = None
        self.session_time_s: float | None = None
        self.build_info: dict[str, Any] = {}

    def float_graph(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        """The float32 graph (subclasses fuse it)."""
        path, info = exported_graph(model, image_size, self.cache_dir, self.spec)
        self.build_info.update(info)
        self.export_time_s = info["export_time_s"]
        return path

    def graph_for(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        """The graph this backend runs (subclasses quantise the float graph)."""
        return self.float_graph(model, image_size)

    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        from vitres.export import OnnxModel, unwrap_model

        model.eval()
        base, bound_patch = unwrap_model(model)
        self.onnx_path = self.graph_for(model, (input_shape[2], input_shape[3]))
        start = time.perf_counter()
        self.runner = OnnxModel(
            self.onnx_path,
            threads=self.threads or torch.get_num_threads(),
            patch_size=int(bound_patch or base.config.patch_size),
            multiple_of_patch=base.config.size_policy == "error",
            optimization=self.optimization,
        )
        self.session_time_s = time.perf_counter() - start
        self.build_info["session_time_s"] = self.session_time_s

    @property
    def opset(self) -> int:
        """The opset of the graphs this backend exports."""
        return self.spec.opset

    def run(self, batch: Tensor) -> Tensor:
        return self.runner(batch)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return onnx_availability()

"""ONNX export with one graph for every input size, its parity check, and INT8 quantisation.

A vitres ViT resamples its position table to each input's token grid, so the exported
graph keeps that resampling as an ONNX ``Resize`` whose output size comes from the
input's shape (``Shape -> Div -> Resize``): batch, height and width are all dynamic. The
graph is traced with ``torch.onnx.export(..., dynamo=True)`` at a *non-native,
non-square* example size, so the exporter can neither fold the resampling into a
constant (it would at the native grid) nor tie height to width.

Input sizes. The model's size policy runs inside the graph, so the graph accepts any
``H, W >= patch``: ``pad`` zero-pads bottom/right to the next multiple of the patch (as
eager does), ``crop`` drops the remainder, ``resize`` resizes to the nearest multiple
(antialiased bilinear). With ``size_policy="error"`` the dims are exported as
``H = patch * k`` and :class:`OnnxModel` rejects other sizes with a clear message. The
patch size is fixed at export time (one graph per patch size); the PI-resized kernel of a
non-native patch is stored in the graph.

Limits (each raises a ``ValueError`` that says so):

* MLP-Mixer token-mixing weights depend on the grid: one static graph per resolution
  (``dynamic=False``); batch stays dynamic.
* Position tables resampled by ``area`` (adaptive pooling) or ``fourier`` (FFT), and the
  Swin-V2 continuous position bias (``cpb``), do not export with dynamic sizes.
* The dynamo exporter emits opset >= 18; antialiased resampling
  (``pos_embed_antialias=True``) relies on the ``antialias`` attribute ONNX ``Resize``
  gained in opset 18 (checked in the graph and numerically after export).

Every export is checked: ONNX Runtime against eager PyTorch at several sizes (the example
size, the native size, a non-square size that shrinks one side of the grid and grows the
other, and, where the policy allows, a size the patch does not divide), with a batch size
other than the example's; a difference above ``atol`` (1e-4 by default) raises
:class:`ExportParityError`.

INT8 (:func:`quantize_onnx`) uses ONNX Runtime's quantiser: dynamic (weights int8,
activations quantised per call) or static QDQ calibrated on real images with MinMax,
Entropy or Percentile ranges. Only the weight matmuls (``MatMul``/``Gemm`` with a
constant weight, and the patch ``Conv``) are quantised by default; LayerNorm, Softmax,
GELU, residual ``Add`` and the activation-by-activation attention matmuls stay float.
Dynamo graphs carry ``value_info`` for initialisers that confuses the quantiser, so the
model is first run through ORT's ``quant_pre_process`` (shape inference and
optimisation), falling back to stripping ``value_info``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitres.layers.patch_embed import fit_to_patch

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_OPSET",
    "ExportParityError",
    "ExportResult",
    "OnnxModel",
    "ParityReport",
    "calibration_batches",
    "check_parity",
    "default_check_sizes",
    "export_onnx",
    "onnx_session",
    "quantize_onnx",
    "unwrap_model",
]

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's floor; also where Resize gained `antialias`
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_MODES = ("dynamic", "static")
_MAX_SIDE = 16384
_DYNAMIC_POS_EMBED_KINDS = ("learned", "sincos", "rope", "mlp", "none")
_DYNAMIC_RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")


class ExportParityError(RuntimeError):
    """The exported graph disagrees with eager PyTorch beyond the tolerance."""


# ----------------------------------------------------------------------------- model helpers


def unwrap_model(module: nn.Module) -> tuple[nn.Module, int | None]:
    """The vitres model inside ``module`` and the patch size bound to it, if any.

    Accepts a model, or a wrapper that binds a patch size (``vitres.models.common.FixedPatchSize``:
    attributes ``model`` and ``patch_size``, no ``config``).
    """
    if getattr(module, "config", None) is None:
        inner = getattr(module, "model", None)
        if isinstance(inner, nn.Module) and getattr(inner, "config", None) is not None:
            return inner, getattr(module, "patch_size", None)
        raise ValueError(
            f"expected a vitres model (VisionTransformer or MlpMixer with a .config), got "
            f"{type(module).__name__}"
        )
    return module, None


def _is_mixer(model: nn.Module) -> bool:
    return hasattr(model.config, "tokens_mlp_dim")


def _check_exportable(model: nn.Module, dynamic: bool, opset: int) -> None:
    cfg = model.config
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: torch.onnx's dynamo exporter emits opset >= "
            f"{MIN_OPSET}, and antialiased position-table resampling needs Resize's "
            f"`antialias` attribute (opset 18); use opset >= {MIN_OPSET}"
        )
    if not dynamic:
        return
    if _is_mixer(model):
        raise ValueError(
            "an MLP-Mixer cannot be exported with dynamic height/width: its token-mixing "
            "weights depend on the token grid, so each resolution needs its own graph. "
            "Export one graph per resolution with dynamic=False (CLI: --static); the batch "
            "dimension stays dynamic"
        )
    kind = getattr(cfg, "pos_embed", "learned")
    if kind not in _DYNAMIC_POS_EMBED_KINDS:
        raise ValueError(
            f"pos_embed={kind!r} does not export with dynamic sizes (its bias tables are "
            f"built by indexing that the ONNX exporter cannot keep symbolic); dynamic "
            f"export supports pos_embed in {_DYNAMIC_POS_EMBED_KINDS}. Export with "
            "dynamic=False for one graph per resolution"
        )
    mode = getattr(cfg, "pos_embed_mode", "bicubic")
    if kind == "learned" and mode not in _DYNAMIC_RESAMPLE_MODES:
        raise ValueError(
            f"pos_embed_mode={mode!r} does not export with dynamic sizes (area = adaptive "
            f"pooling and fourier = FFT have no shape-driven ONNX form); use one of "
            f"{_DYNAMIC_RESAMPLE_MODES} (load the model with pos_embed_mode='bicubic') or "
            "export with dynamic=False"
        )


class _ExportableModel(nn.Module):
    """``images -> logits`` with the patch size bound and the size policy in the graph.

    The model's own policy step skips divisible inputs (a branch on ``H % patch``); here
    the policy runs first without that branch, so the exporter keeps the sizes symbolic,
    the model sees divisible sides and one graph serves every size.
    """

    def __init__(self, model: nn.Module, patch_size: int, policy: str) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size
        self.policy = policy

    def forward(self, images: Tensor) -> Tensor:
        images, _ = fit_to_patch(images, self.patch_size, self.policy, symbolic=True)
        return self.model(images, patch_size=self.patch_size)


# ----------------------------------------------------------------------------- results


@dataclass
class ParityReport:
    """ONNX Runtime vs eager PyTorch on random inputs.

    Attributes:
        max_abs_diff: ``"HxW"`` -> largest absolute logit difference at that size.
        batch_size: Images per checked batch.
        atol: The tolerance.
    """

    max_abs_diff: dict[str, float]
    batch_size: int
    atol: float

    @property
    def ok(self) -> bool:
        return all(d <= self.atol for d in self.max_abs_diff.values())

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}: {v:.2e}" for k, v in self.max_abs_diff.items())
        return f"max |onnx - eager| (batch {self.batch_size}, atol {self.atol:g}): {sizes}"


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ONNX file.
        dynamic: True if one graph serves every ``H x W`` (batch is always dynamic).
        patch_size: The patch size baked into the graph.
        example_size: ``(H, W)`` the graph was traced at.
        size_rule: Human-readable rule for the input sizes the graph accepts.
        opset: ONNX opset of the default domain.
        export_time_s: Wall seconds of tracing and writing.
        parity: The post-export check (``None`` if skipped).
        antialias_resize: Whether the graph holds an antialiased Resize.
    """

    path: Path
    dynamic: bool
    patch_size: int
    example_size: tuple[int, int]
    size_rule: str
    opset: int
    export_time_s: float
    parity: ParityReport | None = None
    antialias_resize: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporter's progress prints and its 'torchvision is not installed' notes."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _size_rule(dynamic: bool, policy: str, patch: int, example: tuple[int, int]) -> str:
    if not dynamic:
        return f"exactly {example[0]}x{example[1]} (static graph; batch is dynamic)"
    if policy == "error":
        return f"H and W multiples of {patch} (H = {patch}*k), each >= {patch}"
    how = {"pad": "zero-padded", "crop": "cropped", "resize": "resized"}[policy]
    return f"any H, W >= {patch} ({how} in the graph to a multiple of {patch})"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_size: tuple[int, int] | None = None,
    *,
    dynamic: bool = True,
    patch_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
    check: bool = True,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Exports a vitres model to ONNX and checks it against eager PyTorch.

    Args:
        model: A ViT or MLP-Mixer (or a wrapper binding a patch size).
        path: Output ``.onnx`` file (weights over 1.8 GB go to a ``.data`` file beside it).
        example_size: ``(H, W)`` to trace at. For dynamic export it must be non-native and
            non-square (default: two patches taller and one patch wider than native); for
            static export it is *the* input size (default: native).
        dynamic: One graph for every ``H x W`` (ViT only); False = one static size.
        patch_size: Patch size baked into the graph; the model's own when ``None``.
        opset: ONNX opset (>= 18).
        example_batch: Batch of the example input (not 1: the exporter would fix it).
        check: Run :func:`check_parity` after the export (recommended; raises on failure).
        check_sizes: Sizes to check; :func:`default_check_sizes` when ``None``.
        atol: Largest allowed absolute logit difference.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: unsupported combination (dynamic Mixer, opset < 18, a position
            embedding without a dynamic ONNX form, a native or square dynamic example).
        ExportParityError: ONNX Runtime disagrees with eager beyond ``atol``.
    """
    base, bound_patch = unwrap_model(model)
    cfg = base.config
    patch = int(patch_size or bound_patch or cfg.patch_size)
    _check_exportable(base, dynamic, opset)
    native = tuple(int(v) for v in cfg.img_size)
    if example_size is None:
        example_size = _default_example_size(native, patch) if dynamic else native
    example_size = (int(example_size[0]), int(example_size[1]))
    policy = cfg.size_policy
    if dynamic:
        if example_size == native or example_size[0] == example_size[1]:
            raise ValueError(
                f"dynamic export needs a non-native, non-square example size (got "
                f"{example_size}, native {native}): at the native size the exporter can fold "
                "the position-table resampling away, and a square size lets it tie H to W"
            )
        if policy == "error" and (example_size[0] % patch or example_size[1] % patch):
            raise ValueError(
                f"size_policy='error' exports H and W as multiples of {patch}; the example "
                f"size {example_size} is not"
            )
    if min(example_size) < patch:
        raise ValueError(f"example size {example_size} is smaller than one {patch}px patch")
    if example_batch < 2:
        raise ValueError("example_batch must be >= 2 (batch 1 would be baked into the graph)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if patch != cfg.patch_size:
        # The PI-resize of the kernel solves a pseudo-inverse, which has no ONNX form; its
        # matrix is memoised per (old, new) size, so computing the kernel once here makes
        # it a constant of the traced graph.
        with torch.no_grad():
            base.patch_kernel(patch)
    wrapper = _ExportableModel(base, patch, policy).eval()
    was_training = base.training
    base.eval()
    example = torch.randn(example_batch, cfg.in_chans, *example_size)
    batch_dim = torch.export.Dim("batch", min=1, max=65536)
    dims: dict[int, Any] = {0: batch_dim}
    if dynamic:
        if policy == "error":
            rows = torch.export.Dim("rows", min=1, max=_MAX_SIDE // patch)
            cols = torch.export.Dim("cols", min=1, max=_MAX_SIDE // patch)
            dims.update({2: patch * rows, 3: patch * cols})
        else:
            dims.update(
                {
                    2: torch.export.Dim("height", min=patch, max=_MAX_SIDE),
                    3: torch.export.Dim("width", min=patch, max=_MAX_SIDE),
                }
            )
    param_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    start = time.perf_counter()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": dims},
                opset_version=opset,
                dynamo=True,
                external_data=param_bytes > 1.8e9,
            )
    except Exception as error:  # the exporter raises many types; say what was exported
        raise RuntimeError(
            f"ONNX export of {type(base).__name__} at {example_size} "
            f"(dynamic={dynamic}, patch {patch}) failed: {type(error).__name__}: "
            f"{str(error)[:2000]}"
        ) from error
    finally:
        base.train(was_training)
    export_time = time.perf_counter() - start

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    antialiased = _antialias_resizes(proto)
    expected = int(policy == "resize" and dynamic)
    if (
        dynamic
        and getattr(cfg, "pos_embed", "") == "learned"
        and cfg.pos_embed_antialias
        and cfg.pos_embed_mode in ("bilinear", "bicubic")
    ):
        if graph_opset < 18:
            raise ValueError(
                f"the model resamples its position table with antialias, which needs ONNX "
                f"Resize's `antialias` attribute (opset >= 18); the graph has opset {graph_opset}"
            )
        expected += 1
    if antialiased < expected:
        raise ExportParityError(
            f"the model resamples with antialias but the exported graph holds {antialiased} "
            f"Resize node(s) with antialias=1 (expected {expected}); the exporter dropped it"
        )
    result = ExportResult(
        path=path,
        dynamic=dynamic,
        patch_size=patch,
        example_size=example_size,
        size_rule=_size_rule(dynamic, policy, patch, example_size),
        opset=graph_opset,
        export_time_s=export_time,
        antialias_resize=antialiased > 0,
    )
    if check:
        sizes = (
            list(check_sizes)
            if check_sizes is not None
            else default_check_sizes(base, example_size, patch, dynamic)
        )
        result.parity = check_parity(base, path, sizes, patch_size=patch, atol=atol)
    return result


def _default_example_size(native: tuple[int, int], patch: int) -> tuple[int, int]:
    """Non-native and non-square: two patches taller, one patch wider than native."""
    return (native[0] + 2 * patch, native[1] + patch)


def _antialias_resizes(proto: Any) -> int:
    """Number of ``Resize`` nodes with ``antialias=1``."""
    return sum(
        any(a.name == "antialias" and a.i == 1 for a in node.attribute)
        for node in proto.graph.node
        if node.op_type == "Resize"
    )


def default_check_sizes(
    model: nn.Module, example_size: tuple[int, int], patch: int, dynamic: bool = True
) -> list[tuple[int, int]]:
    """Sizes the parity check runs at.

    Dynamic: the example size, the native size, a non-square size whose grid shrinks in
    height and grows in width (exercises antialiased shrinking and enlarging at once),
    and, unless the size policy is ``error``, a size the patch divides in neither side.
    Static: the example size only.
    """
    if not dynamic:
        return [tuple(example_size)]
    native_h, native_w = (int(v) for v in unwrap_model(model)[0].config.img_size)
    sizes = [
        tuple(example_size),
        (native_h, native_w),
        (max(patch, native_h - 2 * patch), native_w + 3 * patch),
    ]
    if unwrap_model(model)[0].config.size_policy != "error":
        sizes.append((native_h + patch // 2 + 1, max(patch, native_w - patch // 2 - 1)))
    return list(dict.fromkeys(sizes))


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    sizes: Sequence[tuple[int, int]],
    *,
    patch_size: int | None = None,
    batch_size: int = 3,
    atol: float = 1e-4,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compares ONNX Runtime with eager PyTorch (float32) on random images.

    Args:
        model: The eager model (float32).
        onnx_path: The exported graph.
        sizes: ``(H, W)`` sizes to compare at.
        patch_size: Patch size the graph was exported with.
        batch_size: Images per batch (differs from the export example's batch on purpose).
        atol: Largest allowed absolute logit difference.
        seed: Seed of the random images.
        raise_on_failure: Raise :class:`ExportParityError` above ``atol``.
    """
    base, bound_patch = unwrap_model(model)
    patch = int(patch_size or bound_patch or base.config.patch_size)
    session = onnx_session(onnx_path, threads=torch.get_num_threads())
    generator = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = {}
    was_training = base.training
    base.eval()
    try:
        for height, width in sizes:
            x = torch.randn(batch_size, base.config.in_chans, height, width, generator=generator)
            with torch.inference_mode():
                expected = base(x, patch_size=patch).float().numpy()
            try:
                got = session.run(None, {INPUT_NAME: x.numpy()})[0]
            except Exception as error:  # onnxruntime raises its own exception types
                raise ExportParityError(
                    f"ONNX Runtime failed at {height}x{width}: {type(error).__name__}: {error}"
                ) from error
            diffs[f"{height}x{width}"] = float(np.abs(got - expected).max())
    finally:
        base.train(was_training)
    report = ParityReport(max_abs_diff=diffs, batch_size=batch_size, atol=atol)
    if raise_on_failure and not report.ok:
        raise ExportParityError(
            f"exported graph {onnx_path} disagrees with eager PyTorch: {report}. The export "
            "is wrong for some sizes (a shape folded into a constant, or an operator with "
            "different numerics); do not deploy it"
        )
    return report


# ----------------------------------------------------------------------------- runtime

_SESSIONS: dict[tuple, Any] = {}
_MAX_SESSIONS = 8


def onnx_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    *,
    optimization: str = "all",
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """An ONNX Runtime session for ``path``, cached per file (path, size, modification
    time), thread count, optimisation level and providers.

    Args:
        path: The ``.onnx`` file.
        threads: ``intra_op_num_threads``; torch's thread count when ``None``.
        optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
        providers: Execution providers in priority order.
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise FileNotFoundError(f"ONNX file {resolved} does not exist")
    stat = resolved.stat()
    threads = int(threads or torch.get_num_threads())
    key = (str(resolved), stat.st_size, stat.st_mtime_ns, threads, optimization, tuple(providers))
    session = _SESSIONS.get(key)
    if session is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = levels[optimization]
        options.log_severity_level = 3
        session = ort.InferenceSession(str(resolved), options, providers=list(providers))
        if len(_SESSIONS) >= _MAX_SESSIONS:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = session
    return session


class OnnxModel:
    """Runs an exported graph like the model: ``OnnxModel(path)(images) -> logits``.

    Validates inputs before ONNX Runtime sees them (ONNX has no way to state "a multiple
    of the patch"): channel count, and for ``size_policy='error'`` graphs that ``H`` and
    ``W`` are multiples of the patch; for static graphs the exact size.

    Args:
        path: The ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (torch's count when ``None``).
        patch_size: The graph's patch size, for the divisibility check (``None``: no check).
        multiple_of_patch: Require ``H, W`` multiples of ``patch_size``.
        optimization: ONNX Runtime graph optimisation level (see :func:`onnx_session`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        patch_size: int | None = None,
        multiple_of_patch: bool = False,
        optimization: str = "all",
    ) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads, optimization=optimization)
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.input_shape = list(meta.shape)  # ints for static dims, strings for dynamic ones
        self.patch_size = patch_size
        self.multiple_of_patch = multiple_of_patch

    def check_input(self, shape: Sequence[int]) -> None:
        if len(shape) != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(shape)}")
        for axis, name in ((1, "channels"), (2, "height"), (3, "width")):
            expected = self.input_shape[axis]
            if isinstance(expected, int) and shape[axis] != expected:
                raise ValueError(
                    f"{self.path.name} is a static graph: {name} must be {expected}, got "
                    f"{shape[axis]} (input shape {tuple(shape)}); export another graph for "
                    "this size"
                )
        if self.multiple_of_patch and self.patch_size:
            p = self.patch_size
            if shape[2] % p or shape[3] % p:
                raise ValueError(
                    f"{self.path.name} accepts H and W that are multiples of {p} "
                    f"(size_policy='error'); got {shape[2]}x{shape[3]}. Resize or pad the "
                    f"images to a multiple of {p}"
                )

    def __call__(self, images: Tensor | np.ndarray) -> Tensor:
        array = images.detach().cpu().float().numpy() if isinstance(images, Tensor) else images
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.check_input(array.shape)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


# ----------------------------------------------------------------------------- INT8


def calibration_batches(
    model: nn.Module,
    data: str = "fashion-mnist",
    resolutions: Sequence[int | tuple[int, int]] = (28,),
    *,
    num_images: int = 256,
    batch_size: int = 8,
    split: str = "train",
    data_dir: str | None = None,
) -> list[np.ndarray]:
    """Real, model-ready images for static INT8 calibration.

    The first ``num_images`` images of ``split`` (the *train* split by default, so the
    test set stays unseen), at each resolution in turn (a graph that serves several
    resolutions should see the activation ranges of all of them), normalised with the
    model's mean and std.
    """
    from vitres.data import eval_batches, get_dataset

    base, _ = unwrap_model(model)
    cfg = base.config
    dataset = get_dataset(data, split, data_dir=data_dir, in_chans=cfg.in_chans)
    per_resolution = max(1, num_images // max(1, len(resolutions)))
    out = []
    for resolution in resolutions:
        for x, _ in eval_batches(
            dataset,
            resolution,
            batch_size,
            mean=cfg.mean,
            std=cfg.std,
            in_chans=cfg.in_chans,
            limit=per_resolution,
        ):
            out.append(x.numpy())
    return out


class _CalibrationReader:
    """ORT ``CalibrationDataReader`` over a list of image batches.

    ``set_range`` lets the quantiser feed one batch at a time (``CalibStridedMinMax``), so
    calibration holds the activations of one batch, not of every batch at once.
    """

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self.batches = list(batches)
        self.input_name = input_name
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def _preprocess_for_quantization(src: Path, dst: Path) -> str:
    """Makes a dynamo-exported graph readable by ORT's quantiser.

    The dynamo exporter's optimiser folds some weights (e.g. transposes them) but leaves
    ``value_info`` entries with their old shapes on the initialisers, and the quantiser's
    shape inference then fails ("Inferred shape and existing shape differ"). Those
    entries are dropped, then ORT's ``quant_pre_process`` (ONNX shape inference + graph
    optimisation) runs; its symbolic shape inference cannot follow the shape arithmetic
    of a dynamic-size graph, so that part is skipped.

    Returns:
        The steps taken, e.g. ``"strip_value_info+quant_pre_process"``.
    """
    import onnx

    proto = onnx.load(str(src))
    initializers = {init.name for init in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    stripped = dst.with_name(dst.stem + ".stripped.onnx")
    onnx.save(proto, str(stripped))
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with _quiet_quantizer():
            quant_pre_process(str(stripped), str(dst), skip_symbolic_shape=True)
        return "strip_value_info+quant_pre_process"
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; the strip suffices
        stripped.replace(dst)
        return "strip_value_info"


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silences the quantiser's prints, warnings and root-logger advice."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _weight_matmuls(proto: Any, op_types: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of ``op_types`` nodes with / without a constant (initialiser) input."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    with_weight, activation_only = [], []
    for node in proto.graph.node:
        if node.op_type in op_types:
            target = with_weight if any(i in constants for i in node.input) else activation_only
            target.append(node.name)
    return with_weight, activation_only


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    mode: str = "dynamic",
    *,
    calibration: Iterable[np.ndarray] | None = None,
    calib_method: str = "minmax",
    per_channel: bool = True,
    quantize_attention_matmuls: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    percentile: float = 99.999,
    target: str = "onnxruntime",
) -> dict[str, Any]:
    """Quantises an fp32 ONNX graph to INT8 with ONNX Runtime.

    Args:
        src: fp32 graph (from :func:`export_onnx`).
        dst: Where to write the INT8 graph.
        mode: ``"dynamic"`` (int8 weights; activations quantised per call from their
            running range) or ``"static"`` (QDQ; activation ranges fixed by calibration).
        calibration: Static mode: batches of real, model-ready images
            (:func:`calibration_batches`).
        calib_method: Static mode: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        per_channel: Per-output-channel weight scales.
        quantize_attention_matmuls: Also quantise the activation-by-activation matmuls
            (Q·Kᵀ, softmax·V); off by default (softmax outputs lose most precision).
        op_types: Operators to quantise. Default: ``MatMul`` and ``Gemm``, plus the patch
            ``Conv`` for static (ORT's dynamic ``ConvInteger`` is slower than the float
            convolution on CPUs). LayerNorm, Softmax, GELU, attention and residual Adds are
            left float by not listing them.
        nodes_to_exclude: Further node names to keep float.
        percentile: Static ``percentile`` calibration: the kept percentile of |x|.
        target: ``"onnxruntime"`` (uint8 asymmetric activations) or ``"tensorrt"``
            (int8 symmetric activations with zero point 0 and a dedicated QDQ pair per
            consumer, which TensorRT's explicit quantisation requires).

    Returns:
        Facts about the quantisation: mode, method, quantised / excluded node counts,
        preprocessing used, seconds taken.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in QUANT_MODES:
        raise ValueError(f"INT8 mode must be one of {QUANT_MODES}, got {mode!r}")
    if calib_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be one of {CALIBRATION_METHODS}, got {calib_method!r}"
        )
    if target not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"target must be 'onnxruntime' or 'tensorrt', got {target!r}")
    if mode == "static" and calibration is None:
        raise ValueError(
            "static INT8 needs calibration images: pass calibration=calibration_batches(...)"
        )
    if op_types is None:
        op_types = ("MatMul", "Gemm") if mode == "dynamic" else ("MatMul", "Gemm", "Conv")
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prep_method = _preprocess_for_quantization(src, prepared)
        proto = onnx.load(str(prepared))
        weighted, activation_only = _weight_matmuls(proto, op_types)
        excluded = list(nodes_to_exclude)
        if not quantize_attention_matmuls:
            excluded += activation_only
        input_name = proto.graph.input[0].name
        del proto
        with _quiet_quantizer():
            if mode == "dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(dst),
                    op_types_to_quantize=list(op_types),
                    per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    extra_options={"MatMulConstBOnly": not quantize_attention_matmuls},
                )
            else:
                methods = {
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }
                tensorrt = target == "tensorrt"
                extra: dict[str, Any] = {
                    "ActivationSymmetric": tensorrt,
                    "WeightSymmetric": True,
                    "CalibMovingAverage": False,
                    "CalibTensorRangeSymmetric": tensorrt,
                    "CalibStridedMinMax": 1,  # one batch at a time (bounded memory)
                }
                if calib_method == "percentile":
                    extra["CalibPercentile"] = percentile
                if tensorrt:
                    extra.update({"DedicatedQDQPair": True, "AddQDQPairToWeight": True})
                quantize_static(
                    str(prepared),
                    str(dst),
                    _CalibrationReader(calibration, input_name),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types),
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=methods[calib_method],
                    extra_options=extra,
                )
    return {
        "mode": mode,
        "calib_method": calib_method if mode == "static" else None,
        "quantized_candidates": len(weighted),
        "excluded_nodes": len(excluded),
        "preprocess": prep_method,
        "seconds": time.perf_counter() - start,
        "path": str(dst),
    }

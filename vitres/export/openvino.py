"""Converting a vitres model to OpenVINO, directly from PyTorch, with ONNX as the fallback.

:func:`convert_to_openvino` traces the model with ``torch.export`` -- the same wrapper and
symbolic size policy as the ONNX export, batch, height and width dynamic -- and hands the
exported program to ``openvino.convert_model``, whose PyTorch frontend keeps attention as
``ScaledDotProductAttention``, LayerNorm as ``MVN`` and GELU as ``Gelu``. One converted
model serves every size of a resolution ladder.

Two limits of the direct route, both handled:

* torch specialises a size of one token, so the direct graph is traced for sides of at
  least two patches; :attr:`OpenVinoConversion.min_side` records it and the backend
  rejects smaller inputs with a clear message (a build size below it converts a static
  graph instead);
* operators the frontend has no rule for (the antialiased bicubic resampling of
  ``pos_embed_antialias=True``, for one) fail the conversion; so does a graph that
  disagrees with eager PyTorch. Either way the model is converted from the checked ONNX
  graph instead (OpenVINO's ONNX frontend reads opset 23), and the reason is recorded.

Every conversion is checked against eager PyTorch at float32 (:func:`openvino_parity`),
at the export's check sizes plus the build size and half the native size. The last one
matters: OpenVINO's antialiased ``Resize`` (the ONNX route of an antialiased model) does
not filter as torch does when it shrinks the position table strongly (3e-4 at half the
native grid on a tiny ViT), so such a model raises :class:`ExportParityError` instead of
running with wrong logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitres.export.exportable import check_exportable, unwrap_model
from vitres.export.onnx import default_example_size, exportable_wrapper, size_dims
from vitres.export.parity import ExportParityError, ParityReport, default_check_sizes

__all__ = [
    "CONVERTERS",
    "OpenVinoConversion",
    "compile_openvino",
    "convert_to_openvino",
    "direct_conversion_is_dynamic",
    "openvino_parity",
]

CONVERTERS = ("auto", "pytorch", "onnx")


@dataclass
class OpenVinoConversion:
    """What :func:`convert_to_openvino` made.

    Attributes:
        model: The ``openvino.Model``.
        converter: ``"pytorch"`` (direct) or ``"onnx"`` (from the exported graph).
        dynamic: True if height and width are dynamic (batch always is).
        patch_size: The patch size baked into the model.
        min_side: The smallest side the model serves (``None``: one patch, as eager).
        fallback_reason: Why the direct conversion was not used, if it was not.
        convert_time_s: Wall seconds of tracing and converting.
        parity: The check against eager PyTorch.
    """

    model: Any
    converter: str
    dynamic: bool
    patch_size: int
    min_side: int | None
    fallback_reason: str | None
    convert_time_s: float
    parity: ParityReport | None = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def compile_openvino(
    ov_model: Any, *, threads: int, precision: str = "f32", device: str = "CPU"
) -> Any:
    """``ov_model`` compiled for latency with an explicit thread count and precision hint.

    Args:
        ov_model: An ``openvino.Model`` (or the path of an IR / ONNX file).
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``INFERENCE_PRECISION_HINT``: ``"f32"`` or ``"bf16"`` (a CPU without
            bf16 support runs f32; read the compiled model's property to know).
        device: OpenVINO device.
    """
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    return ov.Core().compile_model(ov_model, device, config)


def openvino_parity(
    model: nn.Module,
    ov_model: Any,
    sizes: Sequence[tuple[int, int]],
    *,
    patch_size: int,
    atol: float,
    batch_size: int = 3,
    seed: int = 0,
) -> ParityReport:
    """Largest absolute logit difference, OpenVINO (float32) vs eager, at each size."""
    base, _ = unwrap_model(model)
    compiled = compile_openvino(ov_model, threads=torch.get_num_threads(), precision="f32")
    request = compiled.create_infer_request()
    generator = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = {}
    for height, width in sizes:
        x = torch.randn(batch_size, base.config.in_chans, height, width, generator=generator)
        with torch.inference_mode():
            expected = base(x, patch_size=patch_size).float().numpy()
        got = request.infer({0: x.numpy()}, share_outputs=False)[0]
        if got.shape != expected.shape:
            diffs[f"{height}x{width}"] = float("inf")
        else:
            diffs[f"{height}x{width}"] = float(np.abs(got - expected).max())
    return ParityReport(max_abs_diff=diffs, batch_size=batch_size, atol=atol)


def _two_token_side(patch: int, policy: str) -> int:
    """The smallest side that gets two tokens under the size policy."""
    return patch + 1 if policy == "pad" else 2 * patch


def direct_conversion_is_dynamic(
    model: nn.Module, patch_size: int, image_size: tuple[int, int]
) -> bool:
    """Whether :func:`convert_to_openvino` converts ``model`` directly with dynamic height
    and width for a build at ``image_size`` (a model with a dynamic form, built at a size
    whose sides hold two tokens or more)."""
    base, _ = unwrap_model(model)
    return _can_be_dynamic(base) and min(image_size) >= _two_token_side(
        patch_size, base.config.size_policy
    )


def _from_pytorch(base: nn.Module, patch: int, example: tuple[int, int], dynamic: bool) -> Any:
    import openvino as ov

    # with the resize policy the backend resamples in PyTorch first (see _graph_sizes):
    # the graph takes multiples of the patch only, and has no Resize for OpenVINO to differ on
    config = base.config
    policy = "error" if config.size_policy == "resize" else config.size_policy
    base.config = dataclasses.replace(config, size_policy=policy)
    try:
        wrapper = exportable_wrapper(base, patch, policy)
        # two tokens per side at least: torch would specialise a one-token side
        dims = size_dims(patch, policy, dynamic, min_grid=2)
        x = torch.randn(2, config.in_chans, *example)
        with _quiet(), torch.no_grad():
            program = torch.export.export(
                wrapper,
                (x,),
                dynamic_shapes={"images": dims},
                strict=False,
                prefer_deferred_runtime_asserts_over_guards=True,
            )
            return ov.convert_model(program)
    finally:
        base.config = config


def _half_size(native: tuple[int, int], smallest: int) -> tuple[int, int]:
    """Half the native size (at least ``smallest``): a strong shrink of the position
    table, where resampling filters (antialiasing) differ most between runtimes."""
    return (max(smallest, native[0] // 2), max(smallest, native[1] // 2))


def _can_be_dynamic(base: nn.Module) -> bool:
    try:
        check_exportable(base, dynamic=True, opset=18)
    except ValueError:
        return False
    return True


def _graph_sizes(base: nn.Module, sizes: list, patch: int) -> list:
    """The sizes the OpenVINO graph itself sees. With ``size_policy="resize"`` the backend
    resamples an input the patch does not divide in PyTorch first (OpenVINO's antialiased
    Resize differs from torch's), so the graph only ever gets multiples of the patch."""
    if base.config.size_policy != "resize":
        return sizes
    kept = [s for s in sizes if s[0] % patch == 0 and s[1] % patch == 0]
    return kept or sizes


def convert_to_openvino(
    model: nn.Module,
    *,
    patch_size: int | None = None,
    image_size: tuple[int, int] | None = None,
    converter: str = "auto",
    onnx_graph: Callable[[], Path] | None = None,
    atol: float = 1e-4,
) -> OpenVinoConversion:
    """Converts ``model`` to an ``openvino.Model`` and checks it against eager.

    Args:
        model: A ViT or MLP-Mixer (or a wrapper binding a patch size).
        patch_size: Patch size baked in; the bound or native one when ``None``.
        image_size: The size the model will be built for (default: native); the parity
            check covers it. A model without a dynamic form (MLP-Mixer), or a build size
            with a one-token side, is converted directly for exactly this size.
        converter: ``"pytorch"`` (direct), ``"onnx"`` (from ``onnx_graph()``) or
            ``"auto"`` (direct, falling back to ONNX on a failure or a parity miss).
        onnx_graph: Returns the path of the model's checked ONNX graph (called only when
            the ONNX route is taken).
        atol: Parity tolerance (float32 logits).

    Raises:
        ValueError: unknown converter, or no ``onnx_graph`` for the ONNX route.
        ExportParityError: the converted model disagrees with eager beyond ``atol``.
        RuntimeError: the direct conversion did not work and no ONNX fallback was allowed.
    """
    import openvino  # noqa: F401 - without OpenVINO, fail before any work

    if converter not in CONVERTERS:
        raise ValueError(f"converter must be one of {CONVERTERS}, got {converter!r}")
    if converter == "onnx" and onnx_graph is None:
        raise ValueError("converter='onnx' needs onnx_graph (a function returning the file)")
    base, bound_patch = unwrap_model(model)
    cfg = base.config
    patch = int(patch_size or bound_patch or cfg.patch_size)
    native = tuple(int(v) for v in cfg.img_size)
    build = tuple(int(v) for v in image_size) if image_size is not None else native
    was_training = base.training
    base.eval()
    reason = None
    start = time.perf_counter()
    try:
        if converter in ("auto", "pytorch"):
            conversion, reason = _convert_directly(base, patch, build, atol, start)
            if conversion is not None:
                return conversion
            if converter == "pytorch" or onnx_graph is None:
                raise RuntimeError(
                    f"OpenVINO's PyTorch conversion of {type(base).__name__} (patch {patch}) "
                    f"did not work: {reason}; use converter='onnx' or 'auto'"
                )
        return _convert_from_onnx(base, patch, build, onnx_graph(), atol, start, reason)
    finally:
        base.train(was_training)


def _convert_directly(
    base: nn.Module, patch: int, build: tuple[int, int], atol: float, start: float
) -> tuple[OpenVinoConversion | None, str | None]:
    """OpenVINO's PyTorch frontend on ``base``, checked against eager: the conversion,
    or ``None`` and the reason it did not work."""
    cfg = base.config
    native = tuple(int(v) for v in cfg.img_size)
    min_side = _two_token_side(patch, cfg.size_policy)
    dynamic = _can_be_dynamic(base) and min(build) >= min_side
    example = default_example_size(native, patch) if dynamic else build
    sizes = default_check_sizes(base, example, patch, dynamic)
    if dynamic:
        sizes = [*sizes, build, _half_size(native, min_side)]
    sizes = [s for s in dict.fromkeys(sizes) if not dynamic or min(s) >= min_side]
    sizes = _graph_sizes(base, sizes, patch)
    try:
        ov_model = _from_pytorch(base, patch, example, dynamic)
        parity = openvino_parity(base, ov_model, sizes, patch_size=patch, atol=atol)
    except Exception as error:  # noqa: BLE001 - the frontend raises many types
        return None, f"direct conversion failed: {type(error).__name__}: {str(error)[:500]}"
    if not parity.ok:
        return None, f"direct conversion disagrees with eager: {parity}"
    conversion = OpenVinoConversion(
        model=ov_model,
        converter="pytorch",
        dynamic=dynamic,
        patch_size=patch,
        min_side=min_side if dynamic else None,
        fallback_reason=None,
        convert_time_s=time.perf_counter() - start,
        parity=parity,
    )
    return conversion, None


def _convert_from_onnx(
    base: nn.Module,
    patch: int,
    build: tuple[int, int],
    onnx_path: Path,
    atol: float,
    start: float,
    reason: str | None,
) -> OpenVinoConversion:
    """OpenVINO's ONNX frontend on the model's checked ONNX graph, checked against eager.

    Raises:
        ExportParityError: the converted model disagrees with eager beyond ``atol``.
    """
    import openvino as ov

    native = tuple(int(v) for v in base.config.img_size)
    can_be_dynamic = _can_be_dynamic(base)
    with _quiet():
        ov_model = ov.convert_model(str(onnx_path))
    example = default_example_size(native, patch) if can_be_dynamic else build
    sizes = [*default_check_sizes(base, example, patch, can_be_dynamic), build]
    if can_be_dynamic:
        sizes.append(_half_size(native, patch))
    sizes = _graph_sizes(base, list(dict.fromkeys(sizes)), patch)
    parity = openvino_parity(base, ov_model, sizes, patch_size=patch, atol=atol)
    if not parity.ok:
        raise ExportParityError(
            f"OpenVINO's conversion of {onnx_path} disagrees with eager PyTorch: {parity}"
        )
    return OpenVinoConversion(
        model=ov_model,
        converter="onnx",
        dynamic=can_be_dynamic,
        patch_size=patch,
        min_side=None,
        fallback_reason=reason,
        convert_time_s=time.perf_counter() - start,
        parity=parity,
    )

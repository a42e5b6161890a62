"""ONNX export with one graph for every input size (:func:`export_onnx`).

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
``H = patch * k`` and :class:`~vitres.export.runtime.OnnxModel` rejects other sizes with
a clear message. The patch size is fixed at export time (one graph per patch size); the
PI-resized kernel of a non-native patch (Beyer et al., CVPR 2023, "FlexiViT") is stored
in the graph.

Limits (each raises a ``ValueError`` that says so; see :mod:`vitres.export.exportable`):
MLP-Mixer token-mixing weights depend on the grid (one static graph per resolution,
``dynamic=False``; batch stays dynamic); ``area``/``fourier`` position resampling and
``cpb`` have no dynamic form; the dynamo exporter emits opset >= 18, where ``Resize``
gained the ``antialias`` attribute that antialiased resampling relies on (checked in the
graph and numerically after export).

Every export is checked against eager PyTorch (:mod:`vitres.export.parity`) and records
its spec and provenance in the file's metadata (:mod:`vitres.export.metadata`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitres.export.exportable import check_exportable, unwrap_model
from vitres.export.metadata import write_export_metadata
from vitres.export.parity import ExportParityError, ParityReport, check_parity, default_check_sizes
from vitres.export.runtime import INPUT_NAME, OUTPUT_NAME
from vitres.export.spec import ExportSpec
from vitres.layers.patch_embed import fit_to_patch

__all__ = ["ExportResult", "ExportableModel", "export_onnx", "exportable_wrapper", "size_dims"]

_DEFAULTS = ExportSpec()
_MAX_SIDE = 16384


class ExportableModel(nn.Module):
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
        spec: The spec of this export with the patch and example size used (what the
            file's metadata holds).
        extra: Further facts for callers to attach.
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
    spec: ExportSpec = field(default_factory=ExportSpec)
    extra: dict[str, Any] = field(default_factory=dict)


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
    opset: int = _DEFAULTS.opset,
    example_batch: int = 2,
    check: bool = True,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    extra_check_sizes: Sequence[tuple[int, int]] = (),
    atol: float = _DEFAULTS.atol,
    metadata: Mapping[str, object] | None = None,
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
        opset: ONNX opset (>= 18; default :data:`~vitres.export.spec.DEFAULT_OPSET`).
        example_batch: Batch of the example input (not 1: the exporter would fix it).
        check: Run :func:`check_parity` after the export (recommended; raises on failure).
        check_sizes: Sizes to check; :func:`default_check_sizes` when ``None``.
        extra_check_sizes: Further sizes to check (e.g. the size a sweep measured).
        atol: Largest allowed absolute logit difference.
        metadata: Further entries for the file's vitres metadata (``model``,
            ``model_digest``, ``record_key``, ``notes``...; see :mod:`vitres.export.metadata`).
            The export spec, the vitres version, patch size, size policy and input rule
            are always written.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: unsupported combination (dynamic Mixer, opset < 18, a position
            embedding without a dynamic ONNX form, a native or square dynamic example,
            a patch size <= 0).
        ExportParityError: ONNX Runtime disagrees with eager beyond ``atol``.
    """
    # Validates opset, patch size, example size and tolerance with the spec's messages.
    spec = ExportSpec(
        opset=opset, dynamic=dynamic, example_size=example_size, patch_size=patch_size, atol=atol
    )
    base, bound_patch = unwrap_model(model)
    cfg = base.config
    patch = int(patch_size if patch_size is not None else (bound_patch or cfg.patch_size))
    check_exportable(base, dynamic, opset)
    example_size = _example_size(cfg, patch, dynamic, example_size)
    if example_batch < 2:
        raise ValueError("example_batch must be >= 2 (batch 1 would be baked into the graph)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(example_batch, cfg.in_chans, *example_size)
    export_time = _run_exporter(base, patch, path, example, dynamic, opset)
    graph_opset, antialiased = _check_graph(path, cfg, dynamic)
    result = ExportResult(
        path=path,
        dynamic=dynamic,
        patch_size=patch,
        example_size=example_size,
        size_rule=_size_rule(dynamic, cfg.size_policy, patch, example_size),
        opset=graph_opset,
        export_time_s=export_time,
        antialias_resize=antialiased > 0,
        spec=replace(spec, example_size=example_size, patch_size=patch),
    )
    _write_metadata(result, cfg, metadata)
    if check:
        if check_sizes is None:
            check_sizes = default_check_sizes(base, example_size, patch, dynamic)
        sizes = list(dict.fromkeys([*check_sizes, *(tuple(s) for s in extra_check_sizes)]))
        result.parity = check_parity(base, path, sizes, patch_size=patch, atol=atol)
    return result


def _write_metadata(result: ExportResult, cfg: Any, metadata: Mapping[str, object] | None) -> None:
    """Writes the export's vitres metadata into its file: the spec, the vitres version, the
    patch size, size policy, channels and input rule, and ``metadata``."""
    import vitres

    height, width = (int(v) for v in cfg.img_size)
    entries: dict[str, object] = {
        "export_spec": result.spec.to_json(),
        "version": vitres.__version__,
        "patch_size": result.patch_size,
        "size_policy": cfg.size_policy,
        "in_chans": cfg.in_chans,
        "size_rule": result.size_rule,
        # what a user needs to feed the file without vitres
        "input_layout": "NCHW float32",
        "mean": json.dumps([float(v) for v in cfg.mean]),
        "std": json.dumps([float(v) for v in cfg.std]),
        "preprocessing": (
            f"{'RGB' if cfg.in_chans == 3 else 'greyscale'} pixels scaled to 0..1 (8-bit / "
            "255), then (x - mean) / std per channel; any size the size rule allows"
        ),
        "native_size": f"{height}x{width}",
        "num_classes": getattr(cfg, "num_classes", 0),
        "output": "logits" if getattr(cfg, "num_classes", 0) else "features",
        **(metadata or {}),
    }
    write_export_metadata(result.path, entries)


def _example_size(
    cfg: Any, patch: int, dynamic: bool, example_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The size to trace at: as given, else the default for the kind of export; checked.

    Raises:
        ValueError: a native or square size for a dynamic export, a size the ``error``
            policy would refuse, or a size smaller than one patch.
    """
    native = tuple(int(v) for v in cfg.img_size)
    if example_size is None:
        example_size = default_example_size(native, patch) if dynamic else native
    example_size = (int(example_size[0]), int(example_size[1]))
    if dynamic:
        if example_size == native or example_size[0] == example_size[1]:
            raise ValueError(
                f"dynamic export needs a non-native, non-square example size (got "
                f"{example_size}, native {native}): at the native size the exporter can fold "
                "the position-table resampling away, and a square size lets it tie H to W"
            )
        if cfg.size_policy == "error" and (example_size[0] % patch or example_size[1] % patch):
            raise ValueError(
                f"size_policy='error' exports H and W as multiples of {patch}; the example "
                f"size {example_size} is not"
            )
    if min(example_size) < patch:
        raise ValueError(f"example size {example_size} is smaller than one {patch}px patch")
    return example_size


def _run_exporter(
    base: nn.Module, patch: int, path: Path, example: Tensor, dynamic: bool, opset: int
) -> float:
    """Traces ``base`` at ``patch`` on ``example`` into ``path``; returns the seconds taken.

    Raises:
        RuntimeError: the exporter failed (its message, and what was being exported).
    """
    wrapper = exportable_wrapper(base, patch)
    was_training = base.training
    base.eval()
    dims = size_dims(patch, base.config.size_policy, dynamic)
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
            f"ONNX export of {type(base).__name__} at {tuple(example.shape[-2:])} "
            f"(dynamic={dynamic}, patch {patch}) failed: {type(error).__name__}: "
            f"{str(error)[:2000]}"
        ) from error
    finally:
        base.train(was_training)
    return time.perf_counter() - start


def _check_graph(path: Path, cfg: Any, dynamic: bool) -> tuple[int, int]:
    """The exported graph's opset and antialiased Resize nodes, the latter checked against
    what the model resamples with antialias (the size policy ``resize`` and an
    antialiased learned position table).

    Raises:
        ValueError: antialias is needed but the opset has no such attribute.
        ExportParityError: the exporter dropped an antialias.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    antialiased = _antialias_resizes(proto)
    expected = int(cfg.size_policy == "resize" and dynamic)
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
    return graph_opset, antialiased


def exportable_wrapper(
    model: nn.Module, patch_size: int, policy: str | None = None
) -> ExportableModel:
    """``model`` wrapped for tracing at ``patch_size`` (eval mode, the size policy in the
    graph), with a non-native patch's PI-resized kernel computed up front.

    The PI-resize solves a pseudo-inverse, which has no graph form; its matrix is memoised
    per (old, new) size, so computing the kernel once here makes it a traced constant.
    """
    if patch_size != model.config.patch_size:
        with torch.no_grad():
            model.patch_kernel(patch_size)
    return ExportableModel(model, patch_size, policy or model.config.size_policy).eval()


def size_dims(patch: int, policy: str, dynamic: bool, *, min_grid: int = 1) -> dict[int, Any]:
    """``torch.export`` dynamic dims of an ``images`` input: batch always; height and width
    when ``dynamic`` (multiples of the patch for ``size_policy='error'``), each side at
    least ``min_grid`` patches (``min_grid=2`` keeps torch from specialising a one-token
    side, which some converters need)."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=65536)}
    if not dynamic:
        return dims
    if policy == "error":
        rows = torch.export.Dim("rows", min=min_grid, max=_MAX_SIDE // patch)
        cols = torch.export.Dim("cols", min=min_grid, max=_MAX_SIDE // patch)
        dims.update({2: patch * rows, 3: patch * cols})
    else:
        # the smallest side with min_grid tokens under the policy
        low = (min_grid - 1) * patch + 1 if policy == "pad" else min_grid * patch
        low = max(low, patch)
        dims.update(
            {
                2: torch.export.Dim("height", min=low, max=_MAX_SIDE),
                3: torch.export.Dim("width", min=low, max=_MAX_SIDE),
            }
        )
    return dims


def default_example_size(native: tuple[int, int], patch: int) -> tuple[int, int]:
    """Non-native and non-square: two patches taller, one patch wider than native."""
    return (native[0] + 2 * patch, native[1] + patch)


def _antialias_resizes(proto: Any) -> int:
    """Number of ``Resize`` nodes with ``antialias=1``."""
    return sum(
        any(a.name == "antialias" and a.i == 1 for a in node.attribute)
        for node in proto.graph.node
        if node.op_type == "Resize"
    )

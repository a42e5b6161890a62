"""Which vitres models export to ONNX, and with which sizes.

:func:`unwrap_model` finds the vitres model (and a bound patch size) inside a wrapper;
:func:`check_exportable` says, before any tracing, whether a model exports with dynamic
height and width at an opset. MLP-Mixer token-mixing weights depend on the token grid,
and position tables resampled by ``area`` (adaptive pooling) or ``fourier`` (FFT), like
the Swin-V2 continuous position bias (``cpb``), have no shape-driven ONNX form: those
export as one static graph per resolution.
"""

from __future__ import annotations

from torch import nn

from vitres.export.spec import MIN_OPSET
from vitres.tokens.mode import BoundTokenMode

__all__ = ["check_exportable", "is_mixer", "unwrap_model"]

_DYNAMIC_POS_EMBED_KINDS = ("learned", "sincos", "rope", "mlp", "none")
_DYNAMIC_RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")


def unwrap_model(module: nn.Module) -> tuple[nn.Module, int | None]:
    """The vitres model inside ``module`` and the patch size bound to it, if any.

    Accepts a model, or a wrapper that binds a patch size (``vitres.measure.FixedPatchSize``:
    attributes ``model`` and ``patch_size``, no ``config``) or a token mode
    (:class:`~vitres.tokens.BoundTokenMode`, refused when the mode does not export:
    :meth:`~vitres.tokens.TokenMode.check_exportable`).
    """
    if isinstance(module, BoundTokenMode):  # a bound token mode says if it exports
        module.mode.check_exportable()
    if getattr(module, "config", None) is None:
        inner = getattr(module, "model", None)
        if isinstance(inner, nn.Module) and getattr(inner, "config", None) is not None:
            return inner, getattr(module, "patch_size", None)
        raise ValueError(
            f"expected a vitres model (VisionTransformer or MlpMixer with a .config), got "
            f"{type(module).__name__}"
        )
    return module, None


def is_mixer(model: nn.Module) -> bool:
    """True for an MLP-Mixer (its token mixing depends on the grid)."""
    return hasattr(model.config, "tokens_mlp_dim")


def check_exportable(model: nn.Module, dynamic: bool, opset: int) -> None:
    """Raises ``ValueError`` (saying why and what to do) unless ``model`` exports at
    ``opset`` with dynamic (``dynamic=True``) or static sizes."""
    cfg = model.config
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: torch.onnx's dynamo exporter emits opset >= "
            f"{MIN_OPSET}, and antialiased position-table resampling needs Resize's "
            f"`antialias` attribute (opset 18); use opset >= {MIN_OPSET}"
        )
    if not dynamic:
        return
    if is_mixer(model):
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
    if getattr(cfg, "rel_pos_bias", False) or getattr(cfg, "shared_rel_pos_bias", False):
        raise ValueError(
            "BEiT's relative position bias tables (rel_pos_bias / shared_rel_pos_bias) do "
            "not export with dynamic sizes (the bias is gathered from the table by an index "
            "built per grid, which the ONNX exporter cannot keep symbolic). Export with "
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

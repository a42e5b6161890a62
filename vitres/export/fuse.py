"""Fused transformer graphs for ONNX Runtime: attention, LayerNorm and GELU as single ops.

An exported vitres graph (opset 23) already holds ONNX's fused ``Attention``. ONNX
Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``, model type
``vit``) then fuses the rest of each block: the residual ``Add`` + ``LayerNormalization``
pairs into ``com.microsoft.SkipLayerNormalization``, and the bias ``Add`` + ``Gelu`` of the
MLP into ``com.microsoft.BiasGelu``. In an opset-18 graph attention stays decomposed
(MatMul, Softmax, MatMul): the optimizer's ViT attention pattern does not match the
dynamo exporter's, so export at opset >= 23 to get it fused.

The optimizer's symbolic shape inference cannot follow the shape arithmetic of a
dynamic-size graph, so it runs without it; its SkipLayerNormalization fusion then assumes
same-shaped (or ``(1, N, D)``-broadcast) Add inputs, which holds for a ViT's residual
stream. Every fused graph is checked against eager PyTorch by the caller
(:func:`vitres.export.parity.check_parity`), at the same tolerance as the export.
The fused file needs ONNX Runtime (``com.microsoft`` operators).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FUSED_OP_TYPES", "fuse_onnx", "fused_op_counts"]

# what a fused ViT block holds: (domain, op type)
FUSED_OP_TYPES = (
    ("", "Attention"),
    ("com.microsoft", "SkipLayerNormalization"),
    ("com.microsoft", "BiasGelu"),
)


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """Silences the optimizer's prints and its 'shape inference failed' log lines."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fused_op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """``"domain:op"`` -> count of the fused operators in the graph at ``path``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter((n.domain or "", n.op_type) for n in proto.graph.node)
    return {f"{domain or 'ai.onnx'}:{op}": counts[(domain, op)] for domain, op in FUSED_OP_TYPES}


def fuse_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    num_heads: int,
    hidden_size: int,
) -> dict[str, Any]:
    """Writes ``src`` with ONNX Runtime's transformer fusions applied to ``dst``.

    Args:
        src: An exported fp32 graph (:func:`vitres.export.export_onnx`).
        dst: Where to write the fused graph.
        num_heads: Attention heads of the model.
        hidden_size: Its width ``D``.

    Returns:
        Facts: fused-op counts in the written graph, the optimizer's own statistics and
        the seconds taken.

    Raises:
        ValueError: nothing was fused (not a transformer graph the optimizer recognises).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    options = FusionOptions("vit")
    options.enable_shape_inference = False  # see the module docstring
    with _quiet_optimizer():
        optimized = optimize_model(
            str(src),
            model_type="vit",
            num_heads=int(num_heads),
            hidden_size=int(hidden_size),
            opt_level=0,  # only the Python fusions; the session applies its own later
            optimization_options=options,
        )
        statistics = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(dst))
    counts = fused_op_counts(dst)
    if not any(v for k, v in counts.items() if not k.endswith(":Attention")):
        dst.unlink(missing_ok=True)
        raise ValueError(
            f"ONNX Runtime's transformer optimizer fused nothing in {src.name} (no "
            "SkipLayerNormalization or BiasGelu): it is not a ViT graph the optimizer knows"
        )
    return {
        "fused_ops": counts,
        "optimizer_statistics": statistics,
        "seconds": time.perf_counter() - start,
        "path": str(dst),
    }

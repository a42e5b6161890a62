"""``onnxruntime-fused`` / ``onnxruntime-fused-int8-static``: ONNX Runtime on the graph
with its transformer fusions (:mod:`vitres.export.fuse`).

The exported graph (opset 23, so attention is one ``Attention`` operator) is rewritten by
ONNX Runtime's transformer optimizer: residual ``Add`` + ``LayerNormalization`` become
``SkipLayerNormalization`` and bias ``Add`` + ``Gelu`` become ``BiasGelu``. The fused graph
is checked against eager PyTorch (the spec's tolerance, 1e-4) at the export's sizes
before it is cached beside the plain one. The static INT8 variant quantises the fused
graph exactly as ``onnxruntime-int8-static`` quantises the plain one (same calibration
defaults). ``fuse_time_s`` is part of ``build_time_s``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from vitres.backends.base import register_backend
from vitres.backends.int8 import OnnxRuntimeInt8StaticBackend
from vitres.backends.onnx_backend import OnnxRuntimeBackend


class _FusedFloatGraph:
    """Mixin: the float graph of an ONNX Runtime backend, fused (cached, parity-checked)."""

    def float_graph(self, model: nn.Module, image_size: tuple[int, int]) -> Path:
        from vitres.export import check_parity, default_check_sizes, read_export_spec
        from vitres.export.fuse import fuse_onnx, fused_op_counts
        from vitres.export.metadata import read_export_metadata, write_export_metadata

        plain = super().float_graph(model, image_size)  # type: ignore[misc]
        fused = plain.with_name(f"{plain.stem}-fused.onnx")
        self.build_info["fuse_time_s"] = 0.0  # type: ignore[attr-defined]
        if not fused.exists():
            from vitres.export import unwrap_model

            base, _ = unwrap_model(model)
            spec = read_export_spec(plain)
            partial = fused.with_suffix(".partial.onnx")
            facts = fuse_onnx(
                plain, partial, num_heads=base.config.num_heads, hidden_size=base.config.embed_dim
            )
            sizes = default_check_sizes(base, spec.example_size, spec.patch_size, spec.dynamic)
            if spec.dynamic:
                sizes.append(tuple(image_size))
            parity = check_parity(
                model,
                partial,
                sizes,
                patch_size=spec.patch_size,
                atol=self.spec.atol,  # type: ignore[attr-defined]
            )
            write_export_metadata(
                partial,
                {
                    **read_export_metadata(plain),
                    "export_spec": replace(spec, fused=True).to_json(),
                    "fp32_graph": plain.name,
                },
            )
            partial.replace(fused)  # only checked graphs get the final name
            self.build_info.update(  # type: ignore[attr-defined]
                fuse_time_s=facts["seconds"], fused_parity=str(parity)
            )
        self.build_info["fused_ops"] = fused_op_counts(fused)  # type: ignore[attr-defined]
        return fused


@register_backend
class OnnxRuntimeFusedBackend(_FusedFloatGraph, OnnxRuntimeBackend):
    """ONNX Runtime, float32, on the fused graph (see the module docstring)."""

    name = "onnxruntime-fused"


@register_backend
class OnnxRuntimeFusedInt8StaticBackend(_FusedFloatGraph, OnnxRuntimeInt8StaticBackend):
    """ONNX Runtime, static INT8 (QDQ) of the fused graph, calibrated on real images."""

    name = "onnxruntime-fused-int8-static"


__all__ = ["OnnxRuntimeFusedBackend", "OnnxRuntimeFusedInt8StaticBackend"]

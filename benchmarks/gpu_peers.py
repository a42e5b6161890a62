"""The GPU peers of ``benchmarks/gpu_backends.py``, each set up the way its own docs say,
holding the same weights as the vitres model they are compared with.

* ``peer:timm-eager-bf16``: timm's ``VisionTransformer`` of the same architecture (its
  module names are vitres's, so the vitres state dict loads into it unchanged), cast to
  bfloat16, ``torch.inference_mode``.
* ``peer:timm-compile-bf16``: the same under ``torch.compile`` (default mode, as timm's
  ``benchmark.py --torchcompile`` does).
* ``peer:hf-sdpa-bf16``: Hugging Face ``ViTForImageClassification`` with
  ``attn_implementation="sdpa"``, cast to bfloat16; its random weights are loaded into the
  vitres model (:func:`benchmarks.peers.hf_twin`), so all three compute one function.

Each peer is an object with ``prepare(model, shape)``, ``run(x)``, ``build_time_s`` and
``precision``, like a vitres backend, so the benchmark times them in the same rounds.
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

GPU_PEERS = ("peer:timm-eager-bf16", "peer:timm-compile-bf16", "peer:hf-sdpa-bf16")


def timm_vision_transformer() -> Any:
    """timm's ``vision_transformer`` module: imported normally, or, where timm's package
    ``__init__`` cannot import (no torchvision), through the tests' shim."""
    try:
        return importlib.import_module("timm.models.vision_transformer")
    except ImportError:
        tests = str(Path(__file__).resolve().parents[1] / "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        from timm_shim import load_timm

        if load_timm() is None:
            raise ImportError("timm is not installed") from None
        return importlib.import_module("timm.models.vision_transformer")


def timm_twin(model: nn.Module) -> nn.Module:
    """timm's ViT of ``model``'s architecture with ``model``'s weights (float32)."""
    cfg = model.config
    height, width = (int(v) for v in cfg.img_size)
    vision_transformer = timm_vision_transformer()
    twin = vision_transformer.VisionTransformer(
        img_size=(height, width),
        patch_size=int(cfg.patch_size),
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        global_pool=cfg.global_pool,
    )
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"vitres -> timm weights: missing {missing}, unexpected {unexpected}")
    return twin.eval()


class _Peer:
    """A peer behind the backend protocol (``prepare``, ``run``, ``build_time_s``)."""

    precision = "bf16"

    def __init__(self, name: str, device: str, twin: nn.Module) -> None:
        self.name, self.device, self.twin = name, torch.device(device), twin
        self.build_time_s: float | None = None

    def prepare(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        start = time.perf_counter()
        self.net = copy.deepcopy(self.twin).to(device=self.device, dtype=torch.bfloat16).eval()
        if self.name == "peer:timm-compile-bf16":
            self.net = torch.compile(self.net)
        self.run(torch.zeros(shape, device=self.device))  # compiles here, not while timed
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.build_time_s = time.perf_counter() - start

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.name == "peer:hf-sdpa-bf16":
                native = (
                    tuple(int(v) for v in self.twin.config.image_size)
                    if isinstance(self.twin.config.image_size, (tuple, list))
                    else (self.twin.config.image_size,) * 2
                )
                out = self.net(
                    pixel_values=x.to(self.device, torch.bfloat16),
                    interpolate_pos_encoding=tuple(x.shape[2:]) != native,
                ).logits
            else:
                out = self.net(x.to(self.device, torch.bfloat16))
        return out.float()


def make_peers(model: nn.Module, names: tuple[str, ...], device: str) -> dict[str, Any]:
    """``name -> peer or the reason it cannot run``; ``model`` gets the HF twin's weights
    when an HF peer is asked for (so every peer and backend computes one function)."""
    out: dict[str, Any] = {}
    if "peer:hf-sdpa-bf16" in names:
        from benchmarks.peers import hf_twin

        try:
            twins = hf_twin(model)
        except Exception as error:  # transformers missing or too old: reported, not fatal
            twins = None
            out["peer:hf-sdpa-bf16"] = f"{type(error).__name__}: {error}"
        if twins is not None:
            out["peer:hf-sdpa-bf16"] = _Peer("peer:hf-sdpa-bf16", device, twins[0])
        elif "peer:hf-sdpa-bf16" not in out:
            out["peer:hf-sdpa-bf16"] = "HF ViT cannot express this model"
    for name in ("peer:timm-eager-bf16", "peer:timm-compile-bf16"):
        if name in names:
            try:
                out[name] = _Peer(name, device, timm_twin(model))
            except Exception as error:  # timm missing: reported, not fatal
                out[name] = f"{type(error).__name__}: {error}"
    return out


__all__ = ["GPU_PEERS", "make_peers", "timm_twin", "timm_vision_transformer"]

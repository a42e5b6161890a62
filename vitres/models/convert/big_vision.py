"""big_vision / Google ViT ``.npz`` checkpoints to timm's state dict layout, as a pure mapping.

The ``.npz`` is read with numpy (``allow_pickle=False``: nothing is unpickled) by
:mod:`vitres.models.resolve`; this module maps its flat ``"a/b/c"`` arrays to timm's
``VisionTransformer`` names, which :mod:`vitres.models.convert.timm` then maps to vitres.
The layouts, as timm's own ``.npz`` loader reads them:

* the original Google ViT checkpoints: ``Transformer/encoderblock_{i}/`` with
  ``LayerNorm_0`` / ``MultiHeadDotProductAttention_1`` / ``LayerNorm_2`` / ``MlpBlock_3``
  and ``Transformer/posembed_input/pos_embedding`` (optionally under ``opt/target/``);
* big_vision (``params/``, SigLIP's image tower under ``params/img/``):
  ``LayerNorm_0`` / ``MultiHeadDotProductAttention_0`` / ``LayerNorm_1`` / ``MlpBlock_0``,
  ``pos_embedding``, blocks stored per layer or stacked along a leading layer axis
  (``Transformer/encoderblock/``, a scanned model), and the attention-pool head
  ``MAPHead_0``.

Flax kernels are ``(in, out)``, convolutions ``(H, W, in, out)`` and attention kernels
``(D, heads, head_dim)``; they are transposed to PyTorch's layout. The head count is read
from the attention kernel's shape. Everything under the model's prefix must be mapped:
an array this mapping does not know is refused, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["PREFIXES", "big_vision_heads", "convert_big_vision_npz"]

PREFIXES = ("opt/target/", "params/img/", "params/", "")
# arrays beside the image tower that are not part of it (SigLIP's text tower and its
# logit scale / bias), under a two-tower checkpoint's "params/"
_OTHER_TOWERS = re.compile(r"^params/(txt/.*|t|b)$")


def _prefix(arrays: Mapping[str, np.ndarray]) -> str:
    for prefix in PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            return prefix
    raise ValueError(
        "not a big_vision / Google ViT .npz: no embedding/kernel under any of "
        f"{[p or '(top level)' for p in PREFIXES]}; first arrays: {list(arrays)[:6]}"
    )


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _dense(kernel: np.ndarray) -> Tensor:
    return _tensor(kernel).T.contiguous()  # (in, out) -> (out, in)


def big_vision_heads(arrays: Mapping[str, np.ndarray]) -> int:
    """The head count, from the first block's query kernel ``(D, heads, head_dim)``."""
    for key, value in arrays.items():
        if key.endswith("MultiHeadDotProductAttention_0/query/kernel") or key.endswith(
            "MultiHeadDotProductAttention_1/query/kernel"
        ):
            if "MAPHead" not in key:
                return int(value.shape[-2])
    raise ValueError("no attention query kernel in the .npz: cannot tell the head count")


class _Reader:
    """Takes arrays by name and remembers which were used."""

    def __init__(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        self.arrays = arrays
        self.prefix = prefix
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return self.prefix + name in self.arrays

    def take(self, name: str, layer: int | None = None) -> np.ndarray:
        key = self.prefix + name
        if key not in self.arrays:
            raise ValueError(f"the .npz has no {key!r} (expected by its layout)")
        self.used.add(key)
        value = np.asarray(self.arrays[key])
        return value[layer] if layer is not None else value


def _attention(read: _Reader, base: str, layer: int | None) -> dict[str, Tensor]:
    """q, k, v, out of a flax ``MultiHeadDotProductAttention`` as timm's fused qkv + proj."""
    parts = {n: read.take(f"{base}{n}/kernel", layer) for n in ("query", "key", "value")}
    biases = {n: read.take(f"{base}{n}/bias", layer) for n in ("query", "key", "value")}
    out = read.take(f"{base}out/kernel", layer)  # (heads, head_dim, D)
    return {
        "weight": torch.cat([_tensor(parts[n]).flatten(1).T for n in ("query", "key", "value")]),
        "bias": torch.cat([_tensor(biases[n]).reshape(-1) for n in ("query", "key", "value")]),
        "proj.weight": _tensor(out).permute(2, 0, 1).flatten(1).contiguous(),
        "proj.bias": _tensor(read.take(f"{base}out/bias", layer)),
    }


def _blocks(read: _Reader, big_vision: bool) -> dict[str, Tensor]:
    mha, ln2, mlp = (0, 1, 0) if big_vision else (1, 2, 3)
    stacked = read.has("Transformer/encoderblock/LayerNorm_0/scale")
    if stacked:
        depth = int(
            read.arrays[read.prefix + "Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        )
    else:
        depth = sum(
            1
            for k in read.arrays
            if re.fullmatch(
                re.escape(read.prefix) + r"Transformer/encoderblock_\d+/LayerNorm_0/scale", k
            )
        )
    out: dict[str, Tensor] = {}
    for i in range(depth):
        base, layer = (
            ("Transformer/encoderblock/", i)
            if stacked
            else (f"Transformer/encoderblock_{i}/", None)
        )
        b = f"blocks.{i}."
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", f"LayerNorm_{ln2}")):
            out[b + ours + ".weight"] = _tensor(read.take(f"{base}{theirs}/scale", layer))
            out[b + ours + ".bias"] = _tensor(read.take(f"{base}{theirs}/bias", layer))
        attention = _attention(read, f"{base}MultiHeadDotProductAttention_{mha}/", layer)
        out[b + "attn.qkv.weight"], out[b + "attn.qkv.bias"] = (
            attention["weight"],
            attention["bias"],
        )
        out[b + "attn.proj.weight"] = attention["proj.weight"]
        out[b + "attn.proj.bias"] = attention["proj.bias"]
        for r in range(2):
            dense = f"{base}MlpBlock_{mlp}/Dense_{r}/"
            out[f"{b}mlp.fc{r + 1}.weight"] = _dense(read.take(dense + "kernel", layer))
            out[f"{b}mlp.fc{r + 1}.bias"] = _tensor(read.take(dense + "bias", layer))
    return out


def _map_head(read: _Reader) -> dict[str, Tensor]:
    base = "MAPHead_0/"
    attention = _attention(read, base + "MultiHeadDotProductAttention_0/", None)
    dim = attention["proj.weight"].shape[0]
    return {
        "attn_pool.latent": _tensor(read.take(base + "probe")),
        "attn_pool.q.weight": attention["weight"][:dim],
        "attn_pool.q.bias": attention["bias"][:dim],
        "attn_pool.kv.weight": attention["weight"][dim:],
        "attn_pool.kv.bias": attention["bias"][dim:],
        "attn_pool.proj.weight": attention["proj.weight"],
        "attn_pool.proj.bias": attention["proj.bias"],
        "attn_pool.norm.weight": _tensor(read.take(base + "LayerNorm_0/scale")),
        "attn_pool.norm.bias": _tensor(read.take(base + "LayerNorm_0/bias")),
        **{
            f"attn_pool.mlp.fc{r + 1}.{kind}": (
                _dense(read.take(f"{base}MlpBlock_0/Dense_{r}/kernel"))
                if kind == "weight"
                else _tensor(read.take(f"{base}MlpBlock_0/Dense_{r}/bias"))
            )
            for r in range(2)
            for kind in ("weight", "bias")
        },
    }


def convert_big_vision_npz(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """timm's ``VisionTransformer`` state dict of a big_vision / Google ViT ``.npz``.

    Raises:
        ValueError: not such a checkpoint, a part of its layout missing, or arrays under
            the model's prefix that this mapping does not know (named).
    """
    prefix = _prefix(arrays)
    read = _Reader(arrays, prefix)
    big_vision = prefix.startswith("params/") or read.has("pos_embedding")
    kernel = _tensor(read.take("embedding/kernel"))  # (H, W, C, D)
    out = {
        "patch_embed.proj.weight": kernel.permute(3, 2, 0, 1).contiguous(),
        "patch_embed.proj.bias": _tensor(read.take("embedding/bias")),
    }
    if read.has("cls"):
        out["cls_token"] = _tensor(read.take("cls")).reshape(1, 1, -1)
    position = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    table = _tensor(read.take(position))
    out["pos_embed"] = table if table.ndim == 3 else table.unsqueeze(0)
    out.update(_blocks(read, big_vision))
    out["norm.weight"] = _tensor(read.take("Transformer/encoder_norm/scale"))
    out["norm.bias"] = _tensor(read.take("Transformer/encoder_norm/bias"))
    if read.has("MAPHead_0/probe"):
        out.update(_map_head(read))
    if read.has("head/kernel"):
        out["head.weight"] = _dense(read.take("head/kernel"))
        out["head.bias"] = _tensor(read.take("head/bias"))
    unknown = sorted(
        k
        for k in arrays
        if k.startswith(prefix) and k not in read.used and not _OTHER_TOWERS.match(k)
    )
    if unknown:
        raise ValueError(
            f"arrays in the .npz that vitres does not map: {unknown[:8]}"
            f"{'...' if len(unknown) > 8 else ''} (e.g. a pre-logits layer or another "
            "architecture); refused rather than dropped"
        )
    return out

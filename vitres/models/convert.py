"""Weight conversion: Hugging Face and timm ViTs to vitres, as pure mappings.

Each function here is pure: a ``state_dict -> state_dict`` mapping (as timm's
``checkpoint_filter_fn``) or a config reader (``dict -> ViTConfig fields``). Nothing
reads files or builds models; :mod:`vitres.models.resolve` does that.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from vitres.layers.patch_embed import resample_patch_embed
from vitres.layers.pos_embed import resample_pos_embed
from vitres.models.config import ViTConfig
from vitres.models.registry import VIT_SIZES

_HF_LAYER_MAP = {
    # files written by save_pretrained
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # in-memory names of current transformers
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_LAYER_RE = re.compile(
    r"^(?:vit\.)?(?:encoder\.layer|encoder\.layers|layers)\.(\d+)\.(.+)\.(weight|bias)$"
)


def convert_hf_vit_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Maps a Hugging Face ``ViTForImageClassification``/``ViTModel`` state dict to vitres names.

    Accepts both the names in ``save_pretrained`` files and current in-memory names.
    The pooler and mask token, unused for classification, are dropped.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        bare = key[4:] if key.startswith("vit.") else key
        if bare.startswith("pooler.") or bare == "embeddings.mask_token":
            continue
        simple = {
            "embeddings.cls_token": "cls_token",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight",
            "layernorm.bias": "norm.bias",
            "classifier.weight": "head.weight",
            "classifier.bias": "head.bias",
        }.get(bare)
        if simple:
            out[simple] = value
            continue
        match = _HF_LAYER_RE.match(key)
        if not match or match.group(2) not in _HF_LAYER_MAP:
            unknown.append(key)
            continue
        index, part, kind = int(match.group(1)), _HF_LAYER_MAP[match.group(2)], match.group(3)
        if part in ("q", "k", "v"):
            qkv.setdefault((index, kind), {})[part] = value
        else:
            out[f"blocks.{index}.{part}.{kind}"] = value
    if unknown:
        raise ValueError(f"unknown keys in Hugging Face ViT weights: {unknown[:8]}")
    for (index, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(
                f"layer {index} {kind}: expected query, key and value, found {sorted(parts)}"
            )
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def hf_vit_config(hf: dict) -> dict:
    if hf.get("model_type") != "vit":
        raise ValueError(
            f"only Hugging Face ViT is supported, got model_type={hf.get('model_type')!r}"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"unsupported hidden_act {hf.get('hidden_act')!r}; vitres ViT uses exact GELU"
        )
    hidden = hf["hidden_size"]
    labels = hf.get("id2label") or {}
    return {
        "img_size": hf.get("image_size", 224),
        "patch_size": hf.get("patch_size", 16),
        "in_chans": hf.get("num_channels", 3),
        "num_classes": len(labels) if labels else hf.get("num_labels", 2),
        "embed_dim": hidden,
        "depth": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "mlp_ratio": hf.get("intermediate_size", 4 * hidden) / hidden,
        "qkv_bias": hf.get("qkv_bias", True),
        "norm_eps": hf.get("layer_norm_eps", 1e-12),
        # reproduce transformers' interpolate_pos_encoding and its strided conv
        "pos_embed_mode": "bicubic",
        "pos_embed_antialias": False,
        "size_policy": "crop",
        "mean": (0.5,) * hf.get("num_channels", 3),
        "std": (0.5,) * hf.get("num_channels", 3),
    }


def convert_timm_vit_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Maps a timm ``VisionTransformer`` state dict to vitres names (mostly identical)."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc_norm."):
            out["norm." + key[len("fc_norm.") :]] = value
        elif key in ("norm.weight", "norm.bias") and "fc_norm.weight" in state:
            continue  # timm's avg-pool models keep an identity norm
        else:
            out[key] = value
    return out


def timm_vit_config(state: dict[str, Tensor], meta: dict) -> dict:
    proj = state["patch_embed.proj.weight"]
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    class_token = "cls_token" in state
    reg_tokens = state["reg_token"].shape[1] if "reg_token" in state else 0
    num_prefix = int(class_token) + reg_tokens
    pos_len = state["pos_embed"].shape[1] if "pos_embed" in state else 0
    arch = str(meta.get("architecture", ""))
    heads = meta.get("num_heads")
    if heads is None:
        size = re.match(r"vit_(tiny|small|base|large)", arch)
        heads = (
            VIT_SIZES[size.group(1)][2]
            if size
            else {w: h for w, _, h in VIT_SIZES.values()}.get(dim)
        )
    if heads is None:
        raise ValueError(f"cannot infer num_heads for width {dim}; pass num_heads=...")
    grid_positions = pos_len - num_prefix
    no_embed_class = False
    side = int(round(grid_positions**0.5))
    if side * side != grid_positions:  # timm no_embed_class: table without prefix positions
        grid_positions, no_embed_class = pos_len, True
        side = int(round(pos_len**0.5))
    img = meta.get("img_size") or side * patch
    head = state.get("head.weight")
    return {
        "img_size": img,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": head.shape[0] if head is not None else 0,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": hidden / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token,
        "reg_tokens": reg_tokens,
        "global_pool": "avg" if "fc_norm.weight" in state or not class_token else "token",
        "pos_embed_prefix": not no_embed_class,
        "pos_embed_mode": "bicubic",
        "pos_embed_antialias": True,
        "size_policy": "crop",
        "norm_eps": 1e-6,
        "mean": tuple(meta.get("mean", (0.5,) * in_chans)),
        "std": tuple(meta.get("std", (0.5,) * in_chans)),
    }


def adapt_state_dict(
    state: dict[str, Tensor], source: ViTConfig, target: ViTConfig
) -> dict[str, Tensor]:
    """Resamples position table and patch kernel from ``source`` to ``target`` geometry (pure)."""
    state = dict(state)
    if target.patch_size != source.patch_size:
        state["patch_embed.proj.weight"] = resample_patch_embed(
            state["patch_embed.proj.weight"],
            target.patch_size,
            target.kernel_resize_mode,
            target.kernel_resize_antialias,
        )
    if "pos_embed" in state and target.grid != source.grid:
        prefix = source.num_prefix_tokens if source.pos_embed_prefix else 0
        state["pos_embed"] = resample_pos_embed(
            state["pos_embed"],
            target.grid,
            source.grid,
            prefix,
            target.pos_embed_mode,
            target.pos_embed_antialias,
        )
    return state

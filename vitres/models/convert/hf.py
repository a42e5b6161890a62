"""Hugging Face ViTs to vitres, as pure mappings: the state dict (``state_dict ->
state_dict``) and the config (``config.json -> ViTConfig fields``). Nothing here reads
files or builds models; :mod:`vitres.models.resolve` does that.

Supported Hugging Face families (``config.json`` ``model_type``) and what is matched:

* ``vit``: ``ViTForImageClassification`` logits, ``ViTModel`` pooler (dense + tanh);
* ``deit``: ``DeiTForImageClassificationWithTeacher`` (logits = mean of the class and
  distillation heads), ``DeiTForImageClassification`` (class head), ``DeiTModel``;
* ``dinov2`` / ``dinov2_with_registers``: ``pooler_output`` (normed class token),
  ``last_hidden_state``, the classifier on ``[class, mean(patches)]``; LayerScale;
  registers have no position (folded as timm does: ``cls += pos[0]``, table without
  prefix positions); the with-registers model resamples with antialias, plain DINOv2 not;
* ``siglip_vision_model`` / ``siglip``: ``pooler_output`` of the attention-pool head,
  no class token, tanh GELU; ``SiglipForImageClassification`` logits (the mean of the
  normed tokens; the tower's unused attention pool is dropped);
* ``siglip2_vision_model`` / ``siglip2``: ``Siglip2VisionModel`` ``pooler_output`` and
  ``last_hidden_state`` for an image cut into patches without padding (NaFlex batches:
  :mod:`vitres.tokens.naflex`); its linear patch embedding becomes the conv kernel, its
  square table of ``num_patches`` positions is resized bilinear with antialias;
  ``Siglip2ForImageClassification`` logits (the mean of the normed tokens);
* ``clip_vision_model`` / ``clip``: ``pooler_output`` (post-LayerNorm of the class
  token), ``image_embeds`` (the bias-free projection), pre-LayerNorm, quick GELU, no
  patch bias;
* ``vit_msn``: ``ViTMSNModel`` ``last_hidden_state``, ``ViTMSNForImageClassification``
  logits (the class token after the final norm);
* ``vit_mae``: the encoder of ``ViTMAEModel`` / ``ViTMAEForPreTraining`` *without
  masking* (its fixed sin-cos table is stored in the weights and resampled as the source
  does; the pre-training decoder is dropped): the source's ``last_hidden_state`` with
  ``mask_ratio=0`` and patches kept in order;
* ``ijepa``: ``IJepaModel`` ``last_hidden_state`` (no class token, positions for patches
  only), ``IJepaForImageClassification`` logits (the mean of the normed tokens);
* ``dinov3_vit``: ``DINOv3ViTModel`` ``pooler_output`` and ``last_hidden_state``: axial
  RoPE on normalised patch centres (``rope_scale`` = 2 pi, jitter and rescaling are
  training-only), register tokens, LayerScale, no key bias (stored as zeros). Its q / k
  channels rotate in halves (``rotate_half``); vitres rotates adjacent pairs, so each
  head's q and k rows are permuted on import (dot products unchanged). The gated MLP
  (``use_gated_mlp``, the 7B model) is refused.
* ``beit`` / ``data2vec-vision``: ``BeitModel`` / ``Data2VecVisionModel``
  ``pooler_output`` (class token after the final norm, or the normed mean of the patch
  tokens) and ``...ForImageClassification`` logits: relative position bias tables per
  block and/or shared, resampled bilinearly at other sizes exactly as the source does
  (:mod:`vitres.models.convert.beit`), LayerScale, no key bias (zeros); a model with
  mean pooling and no pooler (``Data2VecVisionModel``'s default) has no final norm
  (``final_norm=False``): its ``last_hidden_state`` is matched.

Each imported model keeps its source's size policy: the grid is floored by the strided
convolution (``size_policy="crop"``) and the position table resampled bicubic, as the
source's ``interpolate_pos_encoding`` does (SigLIP-2, which never sees such a size, is
cropped the same way; its processor resizes instead, :func:`vitres.tokens.to_naflex`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from vitres.models.convert.beit import BEIT_DROPPED, beit_hf_fields, beit_hf_key, fill_key_bias
from vitres.models.convert.common import num_head_features, per_channel

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HF_ACTIVATIONS",
    "HF_FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "convert_hf_state_dict",
    "convert_hf_vit_state_dict",
    "hf_config_fields",
    "hf_family",
    "hf_vision_config",
    "supported_hf_model_types",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# model_type -> (family, default mean, default std)
HF_FAMILIES: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "vit": ("vit", (0.5,), (0.5,)),
    "deit": ("deit", IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": ("dinov2", IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": ("dinov2_with_registers", IMAGENET_MEAN, IMAGENET_STD),
    "siglip_vision_model": ("siglip", (0.5,), (0.5,)),
    "siglip": ("siglip", (0.5,), (0.5,)),
    "siglip2_vision_model": ("siglip2", (0.5,), (0.5,)),
    "siglip2": ("siglip2", (0.5,), (0.5,)),
    "clip_vision_model": ("clip", CLIP_MEAN, CLIP_STD),
    "clip": ("clip", CLIP_MEAN, CLIP_STD),
    "vit_msn": ("vit", IMAGENET_MEAN, IMAGENET_STD),
    "vit_mae": ("vit_mae", IMAGENET_MEAN, IMAGENET_STD),
    "ijepa": ("ijepa", IMAGENET_MEAN, IMAGENET_STD),
    "dinov3_vit": ("dinov3", IMAGENET_MEAN, IMAGENET_STD),
    "beit": ("beit", (0.5,), (0.5,)),
    "data2vec-vision": ("beit", (0.5,), (0.5,)),
}
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}
_HF_PREFIXES = (
    "vit.",
    "deit.",
    "dinov2_with_registers.",
    "dinov2.",
    "vision_model.",
    "ijepa.",
    "beit.",
    "data2vec_vision.",
)
_HF_DROPPED = re.compile(
    r"^(?:embeddings\.mask_token|embeddings\.position_ids|text_model\..*|text_projection\..*"
    r"|logit_scale|logit_bias|decoder\..*)$"
)
_HF_SIMPLE = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
    "pre_layrnorm.weight": "norm_pre.weight",
    "pre_layrnorm.bias": "norm_pre.bias",
    "pooler.dense.weight": "pre_logits.fc.weight",
    "pooler.dense.bias": "pre_logits.fc.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
    "visual_projection.weight": "head.weight",
    "head.probe": "attn_pool.latent",
    "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}
_HF_LAYER_PARTS = {
    # files written by save_pretrained (ViT, DeiT, DINOv2)
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # current in-memory names of transformers
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "attention.o_proj": "attn.proj",
    # CLIP / SigLIP
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    # DINOv3
    "mlp.up_proj": "mlp.fc1",
    "mlp.down_proj": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_HF_LAYER_RE = re.compile(
    r"^(?:encoder\.|model\.)?(?:layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$"
)


def supported_hf_model_types() -> list[str]:
    """The ``model_type`` values :func:`convert_hf_state_dict` accepts."""
    return sorted(HF_FAMILIES)


def hf_family(hf: dict) -> str:
    """The vitres family of a Hugging Face (vision) config.

    Raises:
        ValueError: an unsupported ``model_type`` (named, with the list of supported ones),
            ``hidden_act`` or variant (DINOv2's SwiGLU MLP).
    """
    model_type = hf.get("model_type")
    if model_type not in HF_FAMILIES:
        architectures = hf.get("architectures") or []
        named = f" ({', '.join(architectures)})" if architectures else ""
        raise ValueError(
            f"unsupported Hugging Face model_type {model_type!r}{named}; supported: "
            f"{', '.join(supported_hf_model_types())} (ViT, DeiT, DINOv2, DINOv2 with "
            "registers, SigLIP and SigLIP-2 vision, CLIP vision, ViT-MSN, ViT-MAE encoder, I-JEPA, "
            "DINOv3, BEiT, Data2Vec-vision). Swin "
            "and other hierarchical models are not ViTs with one token grid and stay refused"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {act!r}; supported: {sorted(HF_ACTIVATIONS)}")
    if hf.get("use_gated_mlp"):
        raise ValueError(
            "DINOv3 with use_gated_mlp=True (a gated SwiGLU MLP, as in DINOv3 7B) is not supported"
        )
    if hf.get("use_swiglu_ffn"):
        raise ValueError(
            "DINOv2 with use_swiglu_ffn=True (a SwiGLU MLP, as in DINOv2 giant) is not supported"
        )
    return HF_FAMILIES[model_type][0]


def hf_vision_config(hf: dict) -> dict:
    """The vision part of a config: itself, or ``vision_config`` of a CLIP / SigLIP /
    SigLIP-2 pair."""
    if hf.get("model_type") in ("clip", "siglip", "siglip2"):
        vision = dict(hf.get("vision_config") or {})
        vision.setdefault("model_type", hf["model_type"])
        if "projection_dim" in hf:
            vision.setdefault("projection_dim", hf["projection_dim"])
        return {**vision, "model_type": hf["model_type"]}
    return hf


def _rotate_half_to_pairs(weight: Tensor, num_heads: int) -> Tensor:
    """Rows of a q or k projection (weight or bias) reordered per head from the halves
    layout (channel ``i`` pairs with ``i + d/2``) to adjacent pairs (``2i``, ``2i+1``)."""
    head_dim = weight.shape[0] // num_heads
    half = head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    index = (torch.arange(num_heads)[:, None] * head_dim + order[None, :]).flatten()
    return weight[index]


def _dinov3_parts(
    qkv: dict[tuple[int, str], dict[str, Tensor]], out: dict[str, Tensor], num_heads: int | None
) -> None:
    """DINOv3's q / k rows in vitres's RoPE pair order, and its absent biases (key, and
    optionally the others) as zeros, which add nothing."""
    if not num_heads:
        raise ValueError("DINOv3 weights need the config's num_attention_heads to convert")
    for (_, kind), parts in qkv.items():
        if kind == "weight":
            parts["q"] = _rotate_half_to_pairs(parts["q"], num_heads)
            parts["k"] = _rotate_half_to_pairs(parts["k"], num_heads)
    for index in [i for i, kind in qkv if kind == "weight"]:
        weight = qkv[(index, "weight")]
        biases = qkv.setdefault((index, "bias"), {})
        for part in ("q", "k", "v"):
            biases.setdefault(part, weight[part].new_zeros(weight[part].shape[0]))
        biases["q"] = _rotate_half_to_pairs(biases["q"], num_heads)
        biases["k"] = _rotate_half_to_pairs(biases["k"], num_heads)
        for name in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            key = f"blocks.{index}.{name}"
            if f"{key}.bias" not in out:
                out[f"{key}.bias"] = out[f"{key}.weight"].new_zeros(out[f"{key}.weight"].shape[0])


def _siglip2_parts(out: dict[str, Tensor], patch_size: int | Sequence[int] | None) -> None:
    """SigLIP-2's patch embedding as vitres's convolution kernel.

    Its ``nn.Linear`` reads patches flattened as (row in patch, column in patch, channel)
    (``convert_image_to_patches`` of its image processor): the weight ``(D, p * p * C)``
    is that kernel ``(D, C, p, p)`` with its axes permuted.
    """
    weight = out.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 2:
        if not patch_size:
            raise ValueError("SigLIP-2 weights need the config's patch_size to convert")
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        dim, features = weight.shape
        if features % (ph * pw):
            raise ValueError(
                f"SigLIP-2 patch embedding has {features} inputs per patch, not a multiple of "
                f"the config's {ph}x{pw} patch"
            )
        kernel = weight.reshape(dim, ph, pw, features // (ph * pw)).permute(0, 3, 1, 2)
        out["patch_embed.proj.weight"] = kernel.contiguous()  # (D, C, ph, pw)


def _map_outside_layers(bare: str, value: Tensor, family: str, out: dict[str, Tensor]) -> bool:
    """Maps (into ``out``) or drops a key outside the per-layer q / k / v pattern; False
    when the key is not one of those."""
    if _HF_DROPPED.match(bare):
        return True
    if family == "beit" and (renamed := beit_hf_key(bare)) is not None:
        if renamed != BEIT_DROPPED:
            out[renamed] = value
        return True
    if bare in _HF_SIMPLE:
        out[_HF_SIMPLE[bare]] = value
    elif bare == "embeddings.class_embedding":  # CLIP: (D,)
        out["cls_token"] = value.reshape(1, 1, -1)
    elif bare == "embeddings.position_embedding.weight":  # CLIP / SigLIP nn.Embedding
        out["pos_embed"] = value.unsqueeze(0)
    elif bare in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
        kind = "weight" if bare.endswith("weight") else "bias"
        dim = value.shape[0] // 3
        out[f"attn_pool.q.{kind}"] = value[:dim]
        out[f"attn_pool.kv.{kind}"] = value[dim:]
    else:
        return False
    return True


def convert_hf_state_dict(
    state: dict[str, Tensor],
    family: str,
    num_heads: int | None = None,
    patch_size: int | Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Maps a Hugging Face state dict of a supported family to vitres names.

    Accepts the names in ``save_pretrained`` files and the current in-memory names, with
    or without the model prefix (``vit.``, ``deit.``, ``dinov2.``, ``vision_model.``).
    Query, key and value are concatenated into ``qkv``; the attention-pool head's packed
    ``in_proj`` is split into ``q`` and ``kv``; unused tensors (mask token, text tower of
    a CLIP/SigLIP pair) are dropped.

    Args:
        state: the source's state dict.
        family: :func:`hf_family` of its config.
        num_heads: the config's heads (DINOv3 needs them to reorder its q / k channels).
        patch_size: the config's patch size (SigLIP-2 needs it to fold its linear patch
            embedding into a kernel).

    Raises:
        ValueError: keys this mapping does not know (it never drops weights silently).
    """
    if family == "clip" and any(key.endswith("classifier.weight") for key in state):
        raise ValueError(
            "CLIPForImageClassification is not supported: it classifies the mean of the "
            "patch tokens before CLIP's post-LayerNorm, and vitres applies that norm to every "
            "token; supported CLIP models: CLIPVisionModel, CLIPVisionModelWithProjection, "
            "CLIPModel (its vision tower)"
        )
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        bare = key
        for prefix in _HF_PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix) :]
                break
        if _map_outside_layers(bare, value, family, out):
            continue
        match = _HF_LAYER_RE.match(bare)
        if not match or match.group(2) not in _HF_LAYER_PARTS:
            unknown.append(key)
            continue
        index, part, kind = int(match.group(1)), _HF_LAYER_PARTS[match.group(2)], match.group(3)
        if part in ("q", "k", "v"):
            qkv.setdefault((index, kind), {})[part] = value
        elif part in ("ls1", "ls2"):
            out[f"blocks.{index}.{part}.gamma"] = value
        else:
            out[f"blocks.{index}.{part}.{kind}"] = value
    if unknown:
        raise ValueError(
            f"unknown keys in Hugging Face {family} weights: {unknown[:8]}"
            f"{'...' if len(unknown) > 8 else ''}; this architecture variant is not supported"
        )
    _family_parts(family, qkv, out, num_heads, patch_size)
    return out


def _family_parts(
    family: str,
    qkv: dict[tuple[int, str], dict[str, Tensor]],
    out: dict[str, Tensor],
    num_heads: int | None,
    patch_size: int | Sequence[int] | None,
) -> None:
    """What follows the key mapping: each family's own adjustments, and the query, key and
    value of each layer concatenated into ``qkv``."""
    if family == "dinov3":
        _dinov3_parts(qkv, out, num_heads)
    if family == "siglip2":
        _siglip2_parts(out, patch_size)
    if family in ("siglip", "siglip2") and "head.weight" in out:
        # Siglip(2)ForImageClassification classifies the mean of the normed tokens; its
        # tower's attention pool is unused (global_pool becomes "avg")
        for key in [k for k in out if k.startswith("attn_pool.")]:
            del out[key]
    if family == "beit":
        fill_key_bias(qkv)
    if "reg_token" in out and out["reg_token"].shape[1] == 0:  # DINOv3 stores (1, 0, D)
        del out["reg_token"]
    for (index, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(
                f"layer {index} {kind}: expected query, key and value, found {sorted(parts)}"
            )
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    if family == "dinov2_with_registers" and "pos_embed" in out and "cls_token" in out:
        # its class token has a position and its registers none: fold the class position
        # into the token, keep a table of patch positions only (exact; timm does the same)
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]


def _rope_fields(hf: dict) -> dict:
    """DINOv3's position kind: RoPE on normalised patch centres, angles times 2 pi."""
    return {"pos_embed": "rope", "rope_theta": float(hf.get("rope_theta", 100.0)),
            "rope_scale": 2 * math.pi}  # fmt: skip


def _siglip2_fields(hf: dict) -> dict:
    """SigLIP-2's geometry and position resampling: a square table of ``num_patches``
    positions, resized per grid bilinear with antialias (``align_corners=False``, in
    float32), as its ``resize_positional_embeddings`` does."""
    num_patches = int(hf.get("num_patches", 256))
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"SigLIP-2 with num_patches={num_patches} is not supported: its position table "
            "is a square grid, so num_patches must be a square (256, 576, 1024...)"
        )
    patch = hf.get("patch_size", 16)
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return {"img_size": (side * ph, side * pw), "pos_embed_mode": "bilinear",
            "pos_embed_antialias": True}  # fmt: skip


def _global_pool(family: str, state: dict[str, Tensor], head_features: int) -> str:
    """What the family's classifier reads."""
    if family in ("siglip", "siglip2"):
        return "map" if "attn_pool.latent" in state else "avg"
    if family == "ijepa":
        return "avg"  # the classifier reads the mean of the normed tokens
    if family in ("dinov2", "dinov2_with_registers") and head_features:
        return "token_avg"  # the classifier reads [class token, mean of patches]
    return "token"


def hf_config_fields(hf: dict, state: dict[str, Tensor], preprocessor: dict | None = None) -> dict:
    """:class:`ViTConfig` fields of a Hugging Face model (its config and converted weights).

    Args:
        hf: ``config.json`` (the vision part of a CLIP / SigLIP pair is taken).
        state: the state dict after :func:`convert_hf_state_dict` (heads are read from it).
        preprocessor: ``preprocessor_config.json``, for the normalisation mean/std.
    """
    hf = hf_vision_config(hf)
    family = hf_family(hf)
    _, mean, std = HF_FAMILIES[hf["model_type"]]
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(
            f"unsupported hidden_act {act!r} in the {hf['model_type']} config; supported: "
            f"{', '.join(sorted(HF_ACTIVATIONS))}"
        )
    if family == "ijepa" and "pre_logits.fc.weight" in state:
        raise ValueError(
            "IJepaModel with a pooling layer is not supported (its pooler reads the first "
            "patch token); save the model without it (add_pooling_layer=False)"
        )
    hidden = hf["hidden_size"]
    channels = hf.get("num_channels", 3)
    if family in ("dinov2", "dinov2_with_registers"):
        mlp_ratio = float(hf.get("mlp_ratio", 4))
    else:
        mlp_ratio = hf.get("intermediate_size", 4 * hidden) / hidden
    if preprocessor:
        mean = tuple(preprocessor.get("image_mean", mean))
        std = tuple(preprocessor.get("image_std", std))
    if "pre_logits.fc.weight" in state and hf.get("pooler_act", "tanh") != "tanh":
        raise ValueError(f"unsupported pooler_act {hf.get('pooler_act')!r}; only tanh is")
    class_token = "cls_token" in state
    head_features = num_head_features(state)
    global_pool = _global_pool(family, state, head_features)
    init = hf.get("layerscale_value", 1.0) if "blocks.0.ls1.gamma" in state else None
    pooler = state.get("pre_logits.fc.weight")
    fields = {
        "img_size": hf.get("image_size", 224),
        "patch_size": hf.get("patch_size", 16),
        "in_chans": channels,
        "num_classes": head_features,
        "embed_dim": hidden,
        "depth": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "mlp_ratio": mlp_ratio,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token,
        "dist_token": "dist_token" in state,
        "head_dist": "head_dist.weight" in state,
        "reg_tokens": int(state["reg_token"].shape[1]) if "reg_token" in state else 0,
        "global_pool": global_pool,
        "fc_norm": False,
        "init_values": init,
        "pre_norm": "norm_pre.weight" in state,
        "patch_embed_bias": "patch_embed.proj.bias" in state,
        "act_layer": HF_ACTIVATIONS[act],
        "representation_size": int(pooler.shape[0]) if pooler is not None else 0,
        "head_bias": "head.bias" in state or not head_features,
        "norm_eps": hf.get("layer_norm_eps", 1e-12),
        # reproduce the source's interpolate_pos_encoding and its strided conv
        "pos_embed_prefix": family != "dinov2_with_registers",
        "pos_embed_mode": "bicubic",
        "pos_embed_antialias": family == "dinov2_with_registers",
        "size_policy": "crop",
        "mean": per_channel(mean, channels),
        "std": per_channel(std, channels),
    }
    if family == "siglip2":
        return {**fields, **_siglip2_fields(hf)}
    if family == "beit":
        return {**fields, **beit_hf_fields(hf, state)}
    return {**fields, **_rope_fields(hf)} if family == "dinov3" else fields


def convert_hf_vit_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Maps a Hugging Face ``ViTForImageClassification`` / ``ViTModel`` state dict (old name,
    vitres <= 0.1)."""
    return convert_hf_state_dict(state, "vit")

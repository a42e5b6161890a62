"""timm's ``eva.py`` models to vitres, as pure mappings: the config (``model_args`` and
the weights -> ViTConfig fields) and the state dict (``state_dict -> state_dict``).

timm's ``Eva`` class holds EVA (Fang et al., CVPR 2023), EVA-02 (Fang et al. 2023:
SwiGLU with a sub-LN, q / v biases without a k bias, RoPE on patch indices scaled to the
pre-training grid), timm's RoPE ViTs (RoPE-ViT, Heo et al., ECCV 2024: axial and
"mixed" learned frequencies, with or without a learned table), DINOv3 (Simeoni et al.
2025: RoPE on normalised patch centres, register tokens, LayerScale) and the Perception
Encoder (Bolya et al. 2025: a norm before the blocks, a grid offset, an attention pool
over every token). What vitres has an exact counterpart for loads; everything else is
refused by name (grouped-query attention, RMSNorm, LayerScale on the attention branch
only, MRoPE, a token norm and an fc_norm both). EVA-02-E's post-norm blocks
(``use_post_norm``: ``x + norm(attn(x))``) are vitres's ``res_post_norm``.

Rotary layouts: vitres turns channel pairs ``(2i, 2i+1)``, rows first. timm's
``rope_rotate_half`` pairs channel ``i`` with ``i + head_dim / 2``, and
``rope_grid_indexing='xy'`` turns the columns' pairs first, so each head's q and k
channels are permuted on import (dot products are unchanged). timm's train-time
coordinate augmentations (shift, jitter, rescale) change nothing in eval mode.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from vitres.models.convert.common import num_head_features, per_channel

__all__ = ["convert_eva_state_dict", "eva_config_fields"]

# Eva model_args vitres honours (each read below), and those that change nothing at inference
_EVA_ARGS = {
    "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim",
    "depth", "num_heads", "num_kv_heads", "qkv_bias", "qkv_fused", "qk_norm", "mlp_ratio",
    "swiglu_mlp", "swiglu_align_to", "scale_mlp", "scale_attn_inner", "attn_type",
    "norm_layer", "init_values", "attn_only_layer_scale", "class_token", "num_reg_tokens",
    "no_embed_class", "use_abs_pos_emb", "use_rot_pos_emb", "rope_type", "rope_grid_offset",
    "rope_grid_indexing", "rope_temperature", "rope_rotate_half", "rope_mrope_section",
    "use_post_norm", "use_pre_transformer_norm", "use_post_transformer_norm", "use_fc_norm",
    "attn_pool_num_heads", "attn_pool_mlp_ratio", "dynamic_img_pad", "ref_feat_shape",
}  # fmt: skip
_EVA_IGNORED = {
    "dynamic_img_size", "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
    "attn_drop_rate", "drop_path_rate", "head_init_scale", "rope_shift_coords",
    "rope_jitter_coords", "rope_rescale_coords",
}  # fmt: skip
# norm_layer as timm_archs.json spells it -> LayerNorm eps (Eva's default: timm's LayerNorm, 1e-6)
_EVA_NORMS = {
    None: 1e-6,
    "timm.layers.norm.LayerNorm": 1e-6,
    "torch.nn.modules.normalization.LayerNorm": 1e-5,
    "partial:timm.layers.norm.LayerNorm:eps=1e-05": 1e-5,
    "partial:timm.layers.norm.LayerNorm:eps=1e-06": 1e-6,
    "partial:torch.nn.modules.normalization.LayerNorm:eps=1e-05": 1e-5,
    "partial:torch.nn.modules.normalization.LayerNorm:eps=1e-06": 1e-6,
}
_ROPE_TYPES = ("cat", "dinov3", "mixed")
_SUPPORTED = (
    "vitres loads eva.py's EVA, EVA-02 (E too), DINOv3, RoPE-ViT (axial and mixed) and PE "
    "models: LayerNorm, pre- or post-norm blocks, SwiGLU with or without sub-LN, q/v or full qkv biases, q/k norm, "
    f"RoPE of rope_type {_ROPE_TYPES}, a learned table, register tokens, LayerScale on both "
    "branches, avg/max/avgmax/token/map pools with at most one final norm"
)


def _missing_features(args: dict) -> list[str]:
    """What ``args`` asks for that vitres does not implement, in words."""
    missing = []
    unknown = sorted(set(args) - _EVA_ARGS - _EVA_IGNORED)
    if unknown:
        missing.append(f"model_args {unknown}")
    if args.get("norm_layer") not in _EVA_NORMS:
        missing.append(f"norm_layer {args['norm_layer']!r} (vitres has LayerNorm only)")
    heads = args.get("num_heads", 12)
    kv_heads = args.get("num_kv_heads")
    kv_heads = kv_heads if isinstance(kv_heads, (list, tuple)) else [kv_heads]
    if any(h is not None and h != heads for h in kv_heads):
        missing.append("grouped-query attention (num_kv_heads)")
    if args.get("attn_only_layer_scale"):
        missing.append("LayerScale on the attention branch only (attn_only_layer_scale)")
    rope_type = args.get("rope_type", "cat")
    if args.get("use_rot_pos_emb") and rope_type not in _ROPE_TYPES:
        missing.append(f"rope_type={rope_type!r}")
    if args.get("rope_mrope_section") is not None:
        missing.append("MRoPE sections (rope_mrope_section)")
    if rope_type == "dinov3" and args.get("rope_grid_offset", 0.0):
        missing.append("a grid offset of DINOv3's normalised RoPE (rope_grid_offset)")
    if args.get("global_pool", "avg") not in ("avg", "max", "avgmax", "token", "map"):
        missing.append(f"global_pool={args.get('global_pool')!r}")
    return missing


def _final_norms(args: dict, arch: str) -> dict:
    """Where the one final norm acts (``fc_norm``: on the pool) or that there is none;
    refuses two (a token norm and an fc_norm)."""
    pool = args.get("global_pool", "avg")
    fc_norm = args.get("use_fc_norm")
    fc_norm = pool == "avg" if fc_norm is None else bool(fc_norm)
    post_norm = args.get("use_post_transformer_norm")
    post_norm = not fc_norm if post_norm is None else bool(post_norm)
    if fc_norm and post_norm:
        raise ValueError(
            f"timm architecture {arch!r} (timm's eva.py) has both a final norm and an "
            "fc_norm; vitres models end in at most one norm, so it is refused rather than "
            "loaded wrong"
        )
    return {"fc_norm": fc_norm, "final_norm": fc_norm or post_norm}


def _mlp_fields(state: dict[str, Tensor], args: dict, dim: int) -> dict:
    """The MLP kind, its sub-LN and a ratio whose ``int(dim * ratio)`` is the hidden width."""
    swiglu = bool(args.get("swiglu_mlp"))
    if "blocks.0.mlp.fc1_g.weight" in state:
        hidden = int(state["blocks.0.mlp.fc1_g.weight"].shape[0])
    elif swiglu:  # timm's packed GluMlp: gate rows, then value rows
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0]) // 2
    else:
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = (hidden + 0.5) / dim
    return {
        "mlp_ratio": ratio,
        "mlp_kind": "swiglu" if swiglu else "mlp",
        "mlp_norm": "blocks.0.mlp.norm.weight" in state,
        "attn_norm": "blocks.0.attn.norm.weight" in state,
    }


def _rope_fields(args: dict) -> dict:
    """The rotary position kind of ``args`` (``rope_type``: cat, dinov3 or mixed)."""
    if not args.get("use_rot_pos_emb"):
        return {}
    rope_type = args.get("rope_type", "cat")
    theta = float(args.get("rope_temperature", 10000.0))
    if rope_type == "dinov3":  # 0.5-centred coordinates in [-1, 1], angles 2 pi x / period
        return {"rope_theta": theta, "rope_scale": 2 * math.pi}
    if rope_type == "mixed":
        return {"rope_theta": theta, "rope_coords": "index", "rope_mixed": True}
    ref = args.get("ref_feat_shape")
    if ref is not None:
        ref = (int(ref), int(ref)) if isinstance(ref, int) else tuple(int(v) for v in ref)
    return {
        "rope_theta": theta,
        "rope_coords": "index",
        "rope_offset": float(args.get("rope_grid_offset", 0.0)),
        "rope_ref_grid": ref,
    }


def _geometry(
    state: dict[str, Tensor], args: dict, pretrained: dict, patch: tuple[int, int], prefix: int
) -> tuple[tuple[int, int], dict]:
    """The native image size and the learned table's fields; refuses a table that does
    not fit the image, the patch and the prefix tokens."""
    img = args.get("img_size")
    if img is None:
        img = tuple(pretrained["input_size"][-2:]) if pretrained.get("input_size") else 224
    img = (int(img), int(img)) if isinstance(img, int) else tuple(int(v) for v in img)
    if "pos_embed" not in state:
        return img, {"pos_embed": "rope" if args.get("use_rot_pos_emb") else "none"}
    no_embed_class = bool(args.get("no_embed_class", False))
    needed = (img[0] // patch[0]) * (img[1] // patch[1]) + (0 if no_embed_class else prefix)
    if int(state["pos_embed"].shape[1]) != needed:
        raise ValueError(
            f"the position table holds {int(state['pos_embed'].shape[1])} positions, but a "
            f"{img[0]}x{img[1]} image in {patch[0]}x{patch[1]} patches needs {needed}; "
            "check img_size"
        )
    return img, {
        "pos_embed": "learned",
        "pos_embed_rope": bool(args.get("use_rot_pos_emb")),
        "pos_embed_prefix": not no_embed_class,
        "pos_embed_mode": "bicubic",
        "pos_embed_antialias": True,  # timm's resample_abs_pos_embed
    }


def _check_fit(args: dict, arch: str, found: dict) -> None:
    for key, value in found.items():
        declared = args.get(key)
        if key == "patch_size" and declared is not None:
            declared = (declared, declared) if isinstance(declared, int) else tuple(declared)
        if declared is not None and declared != value:
            raise ValueError(
                f"the weights do not fit timm architecture {arch!r}: {key} is {value} in the "
                f"weights but {declared} in its model_args; pass the architecture the weights "
                "were made with, or load timm's save_for_hf directory"
            )


def _check_layout(state: dict[str, Tensor], args: dict, arch: str) -> None:
    """Refuses weights whose keys are not those ``args`` build (e.g. a plain
    ``VisionTransformer``'s weights named as an ``eva.py`` architecture)."""
    rope_attn = args.get("attn_type", "eva") == "rope"
    separate_biases = not rope_attn and args.get("qkv_fused", True) and args.get("qkv_bias", True)
    expected = [
        ("cls_token", bool(args.get("class_token", True))),
        ("reg_token", bool(args.get("num_reg_tokens", 0))),
        ("pos_embed", bool(args.get("use_abs_pos_emb", True))),
        ("norm_pre.weight", bool(args.get("use_pre_transformer_norm"))),
        ("rope.freqs", bool(args.get("use_rot_pos_emb")) and args.get("rope_type") == "mixed"),
        ("blocks.0.gamma_1", args.get("init_values") is not None),
        ("blocks.0.attn.q_bias", bool(separate_biases)),
        ("blocks.0.attn.norm.weight", bool(args.get("scale_attn_inner"))),
    ]
    wrong = [
        f"{key} ({'expected' if want else 'not expected'})"
        for key, want in expected
        if (key in state) != want
    ]
    if wrong:
        raise ValueError(
            f"the weights do not fit timm architecture {arch!r} (timm's eva.py): "
            f"{', '.join(wrong)}; pass the architecture the weights were made with, or load "
            "timm's save_for_hf directory"
        )


def eva_config_fields(
    state: dict[str, Tensor],
    args: dict,
    arch: str,
    pretrained: dict,
    num_heads: int | None = None,
) -> dict:
    """:class:`ViTConfig` fields of the weights of a timm ``eva.py`` architecture.

    Args:
        state: timm's own state dict.
        args: the architecture's ``model_args`` (the table's under the config's).
        arch: its name (for messages).
        pretrained: timm's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``).
        num_heads: an override of the heads.

    Raises:
        ValueError: a feature vitres has no exact counterpart for, named.
    """
    missing = _missing_features(args)
    if missing:
        raise ValueError(
            f"timm architecture {arch!r} (timm's eva.py) uses {'; '.join(missing)}, which "
            f"vitres does not implement, so it is refused rather than loaded wrong; {_SUPPORTED}"
        )
    norms = _final_norms(args, arch)
    _check_layout(state, args, arch)
    proj = state["patch_embed.proj.weight"]
    dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = (int(proj.shape[-2]), int(proj.shape[-1]))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    _check_fit(args, arch, {"embed_dim": dim, "depth": depth, "patch_size": patch})
    class_token = "cls_token" in state
    reg_tokens = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    img, table = _geometry(state, args, pretrained, patch, int(class_token) + reg_tokens)
    heads = int(num_heads or args.get("num_heads", 12))
    head_features = num_head_features(state)
    if args.get("num_classes", head_features) != head_features:
        raise ValueError(
            f"config declares num_classes={args['num_classes']} but the weights hold a "
            f"{head_features}-way head"
        )
    bias_keys = ("blocks.0.attn.q_bias", "blocks.0.attn.qkv.bias", "blocks.0.attn.q_proj.bias")
    layer_scale = "blocks.0.gamma_1" in state
    return {
        "img_size": img,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": head_features,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "qkv_bias": any(k in state for k in bias_keys),
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        "init_values": (args.get("init_values") or 1e-5) if layer_scale else None,
        "class_token": class_token,
        "reg_tokens": reg_tokens,
        "global_pool": args.get("global_pool", "avg"),
        **norms,
        "pre_norm": "norm_pre.weight" in state,
        "patch_embed_bias": "patch_embed.proj.bias" in state,
        "act_layer": "gelu",  # Eva's blocks and attention pool: nn.GELU
        "head_bias": "head.bias" in state or not head_features,
        "size_policy": "pad" if args.get("dynamic_img_pad") else "crop",
        "norm_eps": _EVA_NORMS[args.get("norm_layer")],
        "mean": per_channel(tuple(pretrained.get("mean", (0.5,) * in_chans)), in_chans),
        "std": per_channel(tuple(pretrained.get("std", (0.5,) * in_chans)), in_chans),
        "attn_pool_heads": int(args.get("attn_pool_num_heads") or 0),
        "attn_pool_mlp_ratio": float(args.get("attn_pool_mlp_ratio") or 0.0),
        "attn_pool_prefix": True,  # Eva's attention pool reads every token
        "res_post_norm": bool(args.get("use_post_norm")),  # EvaBlockPostNorm
        **table,
        **_mlp_fields(state, args, dim),
        **_rope_fields(args),
    }


def _rope_channel_order(head_dim: int, rotate_half: bool, columns_first: bool) -> Tensor | None:
    """timm's channel for each vitres channel of a head (``None``: the same order).

    vitres pair ``p`` turns with the row frequency ``p`` (first half) or the column
    frequency ``p - head_dim / 4``; with ``columns_first`` timm's angle ``a`` is the column
    frequency for ``a < head_dim / 4``. timm's angle ``a`` turns channels ``(2a, 2a+1)``,
    or ``(a, a + head_dim / 2)`` with ``rotate_half``.
    """
    if not rotate_half and not columns_first:
        return None
    pairs, quarter = head_dim // 2, head_dim // 4
    order = []
    for p in range(pairs):
        a = (p + quarter) % pairs if columns_first else p
        order += [a, a + pairs] if rotate_half else [2 * a, 2 * a + 1]
    return torch.tensor(order)


def _permute_heads(value: Tensor, order: Tensor, num_heads: int) -> Tensor:
    """Rows of a q or k projection (weight or bias) reordered within each head."""
    head_dim = order.numel()
    index = (torch.arange(num_heads)[:, None] * head_dim + order[None, :]).flatten()
    return value[index]


def _fused_attention(state: dict[str, Tensor], out: dict[str, Tensor], block: str) -> None:
    """``qkv.weight`` / ``qkv.bias`` of one block from timm's separate projections or
    its separate q / v biases (the key's absent bias is zeros, which add nothing)."""
    attn = f"{block}.attn"
    if f"{attn}.q_proj.weight" in state:
        parts = [state[f"{attn}.{p}_proj.weight"] for p in "qkv"]
        out[f"{attn}.qkv.weight"] = torch.cat(parts, dim=0)
        biases = [state.get(f"{attn}.{p}_proj.bias") for p in "qkv"]
    else:
        out[f"{attn}.qkv.weight"] = state[f"{attn}.qkv.weight"]
        if f"{attn}.qkv.bias" in state:
            out[f"{attn}.qkv.bias"] = state[f"{attn}.qkv.bias"]
            return
        biases = [state.get(f"{attn}.{p}_bias") for p in "qkv"]
    if any(b is not None for b in biases):
        zeros = out[f"{attn}.qkv.weight"].new_zeros(out[f"{attn}.qkv.weight"].shape[0] // 3)
        out[f"{attn}.qkv.bias"] = torch.cat([zeros if b is None else b for b in biases])


_ATTN_PARTS = re.compile(r"^blocks\.\d+\.attn\.(q_proj|k_proj|v_proj|q_bias|k_bias|v_bias|qkv)\.?")


def _rotate_qk(out: dict[str, Tensor], order: Tensor, num_heads: int) -> None:
    """Every block's q / k rows (and q / k norms) in vitres's rotary channel order."""
    for key in [k for k in out if re.match(r"^blocks\.\d+\.attn\.qkv\.", k)]:
        q, k, v = out[key].chunk(3, dim=0)
        q, k = _permute_heads(q, order, num_heads), _permute_heads(k, order, num_heads)
        out[key] = torch.cat([q, k, v], dim=0)
    for key in [k for k in out if re.match(r"^blocks\.\d+\.attn\.[qk]_norm\.", k)]:
        out[key] = out[key][order]


def convert_eva_state_dict(state: dict[str, Tensor], args: dict) -> dict[str, Tensor]:
    """Maps the state dict of a timm ``eva.py`` model to vitres names.

    q / k / v projections or biases become one ``qkv`` (zeros for the key's absent bias),
    ``gamma_1`` / ``gamma_2`` LayerScale, timm's packed SwiGLU ``fc1`` its gate and value
    halves, ``fc_norm`` the one final norm, ``rope.freqs`` (RoPE-Mixed) ``rope_freqs``
    with the axes in vitres's order; q / k channels are permuted to vitres's rotary pairs.

    Args:
        state: timm's own state dict.
        args: the architecture's ``model_args``.
    """
    out: dict[str, Tensor] = {}
    num_heads = int(args.get("num_heads", 12))
    packed_glu = bool(args.get("swiglu_mlp")) and "blocks.0.mlp.fc1_g.weight" not in state
    columns_first = args.get("rope_grid_indexing", "ij") == "xy"
    for key, value in state.items():
        match = re.match(r"^(blocks\.\d+)\.(.*)$", key)
        if key == "rope.freqs":  # (x then y) frequencies: vitres's first axis is the column
            out["rope_freqs"] = value if columns_first else value.flip(0)
        elif key.startswith("fc_norm."):
            out["norm." + key[len("fc_norm.") :]] = value
        elif match and match.group(2) in ("gamma_1", "gamma_2"):
            out[f"{match.group(1)}.ls{match.group(2)[-1]}.gamma"] = value
        elif match and packed_glu and match.group(2).startswith("mlp.fc1."):
            kind = match.group(2).split(".")[-1]
            gate, values = value.chunk(2, dim=0)
            out[f"{match.group(1)}.mlp.fc1_g.{kind}"] = gate
            out[f"{match.group(1)}.mlp.fc1_x.{kind}"] = values
        elif match and _ATTN_PARTS.match(key):
            if match.group(2).startswith("attn.qkv.weight") or "q_proj.weight" in key:
                _fused_attention(state, out, match.group(1))
        else:
            out[key] = value
    head_dim = out["blocks.0.attn.qkv.weight"].shape[0] // 3 // num_heads
    rotary = args.get("use_rot_pos_emb") and args.get("rope_type", "cat") != "mixed"
    order = _rope_channel_order(head_dim, bool(args.get("rope_rotate_half")), columns_first)
    if rotary and order is not None:
        _rotate_qk(out, order, num_heads)
    return out

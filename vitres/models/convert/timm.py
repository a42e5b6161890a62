"""timm ViTs to vitres, as pure mappings: the state dict (``state_dict -> state_dict``, as
timm's ``checkpoint_filter_fn``) and the config (timm's ``config.json`` and the weights ->
ViTConfig fields). vitres module names follow timm's ``VisionTransformer``, so timm state
dicts map almost one to one. Nothing here reads files or builds models;
:mod:`vitres.models.resolve` does that.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from vitres.models.convert.common import num_head_features, per_channel

__all__ = [
    "TIMM_ACTIVATIONS",
    "TIMM_HEADS_BY_SIZE",
    "TIMM_HEADS_BY_WIDTH",
    "TIMM_POOLS",
    "convert_timm_state_dict",
    "convert_timm_vit_state_dict",
    "timm_config_fields",
]

# width -> heads of timm's named sizes (Ti, S, M, B, L, H, So400m, g, G)
TIMM_HEADS_BY_SIZE = {
    "tiny": 3,
    "small": 6,
    "medium": 8,
    "base": 12,
    "large": 16,
    "huge": 16,
    "so400m": 16,
    "giant": 16,
    "gigantic": 16,
}
TIMM_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16}
TIMM_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}
TIMM_POOLS = ("token", "avg", "max", "avgmax", "map")
# model_args of timm's VisionTransformer that vitres reads, and those that change nothing
_TIMM_ARGS = {
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "qk_norm",
    "init_values",
    "class_token",
    "no_embed_class",
    "reg_tokens",
    "pre_norm",
    "fc_norm",
    "act_layer",
}
_TIMM_IGNORED_ARGS = {
    "dynamic_img_size",
    "dynamic_img_pad",
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "weight_init",
    "fix_init",
    "pretrained_strict",
}
_TIMM_UNSUPPORTED_KEYS = re.compile(
    r"^(patch_embed\.norm\.|blocks\.\d+\.attn\.norm\.|blocks\.\d+\.mlp\.norm\.|"
    r"blocks\.\d+\.mlp\.fc1_[gx]\.|attn_pool\.(q_norm|k_norm|pos_embed)|"
    r"blocks\.\d+\.(in_proj|in_norm|attn_out_proj)\.)"
)


def convert_timm_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Maps a timm ``VisionTransformer`` (or distilled DeiT) state dict to vitres names.

    Names are timm's own, except the final norm: timm keeps ``norm`` (before pooling) or
    ``fc_norm`` (after pooling) and an identity for the other; vitres has one ``norm``
    used in either place (``ViTConfig.fc_norm`` says which). DeiT-3's old ``gamma_1`` /
    ``gamma_2`` layer scales become ``ls1.gamma`` / ``ls2.gamma``; timm's unused
    ``pre_logits`` of old checkpoints are kept as a representation layer.

    Raises:
        ValueError: keys of timm variants vitres does not implement (named).
    """
    unsupported = sorted(k for k in state if _TIMM_UNSUPPORTED_KEYS.match(k))
    if unsupported:
        raise ValueError(
            f"unsupported timm ViT variant: keys {unsupported[:6]} (patch-embed norm, scaled "
            "attention/MLP norms, SwiGLU, parallel blocks or attention-pool q/k norm)"
        )
    if "fc_norm.weight" in state and "norm.weight" in state:
        raise ValueError(
            "timm weights with both norm and fc_norm are not supported (vitres has one final norm)"
        )
    out = {}
    for key, value in state.items():
        if key.startswith("fc_norm."):
            out["norm." + key[len("fc_norm.") :]] = value
        elif re.match(r"^blocks\.\d+\.gamma_[12]$", key):
            out[re.sub(r"gamma_([12])$", r"ls\1.gamma", key)] = value
        else:
            out[key] = value
    return out


def _timm_heads(arch: str, width: int) -> int | None:
    size = re.search(r"_(tiny|small|medium|base|large|huge|so400m|giant|gigantic)_", f"_{arch}_")
    if size:
        return TIMM_HEADS_BY_SIZE[size.group(1)]
    return TIMM_HEADS_BY_WIDTH.get(width)


def _check_model_args(args: dict) -> None:
    unknown = sorted(set(args) - _TIMM_ARGS - _TIMM_IGNORED_ARGS)
    if unknown:
        raise ValueError(
            f"unsupported timm model_args {unknown}; vitres reads {sorted(_TIMM_ARGS)}"
        )


def _num_heads(
    state: dict[str, Tensor], args: dict, arch: str, dim: int, num_heads: int | None
) -> int:
    """Heads: the override > ``model_args`` > the q-norm width > the architecture name."""
    q_norm = state.get("blocks.0.attn.q_norm.weight")
    from_q_norm = dim // int(q_norm.shape[0]) if q_norm is not None else None
    heads = num_heads or args.get("num_heads") or from_q_norm or _timm_heads(arch, dim)
    if heads is None:
        raise ValueError(
            f"cannot tell num_heads of timm weights of width {dim}{f' ({arch})' if arch else ''}; "
            "pass num_heads=..."
        )
    return int(heads)


def _geometry(
    state: dict[str, Tensor],
    args: dict,
    pretrained: dict,
    patch: tuple[int, int],
    num_prefix: int,
) -> tuple[tuple[int, int], int, bool]:
    """The native image size, the position table's length, and whether prefix tokens have
    no position (``no_embed_class``).

    Raises:
        ValueError: the table's length does not fit the image, patch and prefix tokens.
    """
    # native geometry: model_args.img_size > pretrained_cfg.input_size > the table's length
    pos_len = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    img = args.get("img_size")
    if img is None and pretrained.get("input_size"):
        img = tuple(pretrained["input_size"][-2:])
    if img is not None:
        img = (img, img) if isinstance(img, int) else tuple(int(v) for v in img)
        grid_positions = (img[0] // patch[0]) * (img[1] // patch[1])
    else:
        grid_positions = pos_len - num_prefix
        side = math.isqrt(max(grid_positions, 0))
        if side * side != grid_positions:  # no_embed_class: no prefix positions
            grid_positions = pos_len
            side = math.isqrt(pos_len)
        img = (side * patch[0], side * patch[1])
    if "no_embed_class" in args:
        no_embed_class = bool(args["no_embed_class"])
    else:
        no_embed_class = num_prefix > 0 and pos_len == grid_positions
    if pos_len and pos_len != grid_positions + (0 if no_embed_class else num_prefix):
        raise ValueError(
            f"the position table holds {pos_len} positions, but a {img[0]}x{img[1]} image in "
            f"{patch[0]}x{patch[1]} patches with {num_prefix} prefix token(s) needs "
            f"{grid_positions + (0 if no_embed_class else num_prefix)}; check img_size"
        )
    return img, pos_len, no_embed_class


def _pool_and_norm(
    state: dict[str, Tensor], args: dict, document: dict, class_token: bool
) -> tuple[str, bool | None]:
    """The global pool and where the final norm goes (``fc_norm``; ``None``: no norm)."""
    # the pool: model_args > top-level global_pool (save_for_hf) > the weights
    pool = args.get("global_pool", document.get("global_pool"))
    if pool is None:
        if "attn_pool.latent" in state:
            pool = "map"
        elif "fc_norm.weight" in state or not class_token:
            pool = "avg"
        else:
            pool = "token"
    if pool not in TIMM_POOLS:
        raise ValueError(f"unsupported timm global_pool {pool!r}; supported: {TIMM_POOLS}")
    if "fc_norm" in args and args["fc_norm"] is not None:
        fc_norm = bool(args["fc_norm"])
    elif "fc_norm.weight" in state:
        fc_norm = True
    elif "norm.weight" in state:
        fc_norm = False
    else:
        fc_norm = None
    return pool, fc_norm


def _activation(args: dict, arch: str) -> str:
    act = args.get("act_layer") or ("quick_gelu" if "quickgelu" in arch else "gelu")
    if act not in TIMM_ACTIVATIONS:
        raise ValueError(
            f"unsupported timm act_layer {act!r}; supported: {sorted(TIMM_ACTIVATIONS)}"
        )
    return TIMM_ACTIVATIONS[act]


def _checked_num_classes(state: dict[str, Tensor], args: dict, document: dict) -> int:
    head_features = num_head_features(state)
    if "num_classes" in args or "num_classes" in document:
        declared = args.get("num_classes", document.get("num_classes"))
        if declared != head_features:
            raise ValueError(
                f"config declares num_classes={declared} but the weights hold a "
                f"{head_features}-way head"
            )
    return head_features


def _init_values(state: dict[str, Tensor], args: dict) -> float | None:
    init = args.get("init_values")
    if init is None and ("blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state):
        init = 1e-5  # the stored gammas are loaded over it
    return init


def timm_config_fields(
    state: dict[str, Tensor], document: dict | None = None, num_heads: int | None = None
) -> dict:
    """:class:`ViTConfig` fields of timm weights, from the state dict and timm's ``config.json``.

    timm's ``save_for_hf`` writes ``{"architecture", "num_classes", "global_pool",
    "model_args": {...}, "pretrained_cfg": {"input_size": [C, H, W], "mean", "std", ...}}``.
    Precedence: ``num_heads`` (an override) > ``model_args`` > top-level ``global_pool`` /
    ``num_classes`` > ``pretrained_cfg`` > the architecture name > the state dict.

    Args:
        state: timm's own state dict (before :func:`convert_timm_state_dict`: the
            ``norm`` / ``fc_norm`` names tell where the final norm goes).
        document: timm's ``config.json`` (``None`` for a bare weights file).
        num_heads: heads, when neither the config nor the name gives them.
    """
    document = document or {}
    args = dict(document.get("model_args") or {})
    _check_model_args(args)
    pretrained = document.get("pretrained_cfg") or {}
    arch = str(document.get("architecture") or pretrained.get("architecture") or "")
    proj = state["patch_embed.proj.weight"]
    dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = (int(proj.shape[-2]), int(proj.shape[-1]))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    class_token = "cls_token" in state
    dist_token = "dist_token" in state
    reg_tokens = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    heads = _num_heads(state, args, arch, dim, num_heads)
    num_prefix = int(class_token) + int(dist_token) + reg_tokens
    img, pos_len, no_embed_class = _geometry(state, args, pretrained, patch, num_prefix)
    pool, fc_norm = _pool_and_norm(state, args, document, class_token)
    act = _activation(args, arch)
    head_features = _checked_num_classes(state, args, document)
    pre_logits = state.get("pre_logits.fc.weight")
    return {
        "img_size": img,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": head_features,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": hidden / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        "init_values": _init_values(state, args),
        "class_token": class_token,
        "dist_token": dist_token,
        "head_dist": "head_dist.weight" in state,
        "reg_tokens": reg_tokens,
        "global_pool": pool,
        "fc_norm": fc_norm,
        "pre_norm": "norm_pre.weight" in state,
        "patch_embed_bias": "patch_embed.proj.bias" in state,
        "act_layer": act,
        "representation_size": int(pre_logits.shape[0]) if pre_logits is not None else 0,
        "head_bias": "head.bias" in state or not head_features,
        "pos_embed": "learned" if pos_len else "none",
        "pos_embed_prefix": not no_embed_class,
        "pos_embed_mode": "bicubic",
        "pos_embed_antialias": True,  # timm's resample_abs_pos_embed
        "size_policy": "crop",
        # timm's CLIP models use LayerNorm(eps=1e-5); everything else its default 1e-6
        "norm_eps": 1e-5 if "clip" in arch else 1e-6,
        "mean": per_channel(tuple(pretrained.get("mean", (0.5,) * in_chans)), in_chans),
        "std": per_channel(tuple(pretrained.get("std", (0.5,) * in_chans)), in_chans),
    }


convert_timm_vit_state_dict = convert_timm_state_dict  # old name (vitres <= 0.1)

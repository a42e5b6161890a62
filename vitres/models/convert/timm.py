"""timm ViTs to vitres, as pure mappings: the state dict (``state_dict -> state_dict``, as
timm's ``checkpoint_filter_fn``) and the config (timm's ``config.json`` and the weights ->
ViTConfig fields). vitres module names follow timm's ``VisionTransformer``, so timm state
dicts map almost one to one; those of timm's ``eva.py`` architectures (EVA, EVA-02, DINOv3,
the RoPE ViTs, PE) go through :mod:`vitres.models.convert.timm_eva`. Nothing here reads
files or builds models; :mod:`vitres.models.resolve` does that.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

from torch import Tensor

from vitres.models.convert.common import num_head_features, per_channel
from vitres.models.convert.timm_eva import convert_eva_state_dict, eva_config_fields

__all__ = [
    "TIMM_ACTIVATIONS",
    "timm_architectures",
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
# timm's model_args values (as scripts/timm_arch_table.py spells them) -> LayerNorm eps
_TIMM_NORMS = {
    None: 1e-6,  # VisionTransformer's default: LayerNorm(eps=1e-6)
    "torch.nn.modules.normalization.LayerNorm": 1e-5,
    "timm.layers.norm.LayerNorm": 1e-5,
    "partial:timm.layers.norm.LayerNorm:eps=1e-05": 1e-5,
    "partial:torch.nn.modules.normalization.LayerNorm:eps=1e-06": 1e-6,
    "partial:torch.nn.modules.normalization.LayerNorm:eps=1e-05": 1e-5,
}
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
    "norm_layer",
    "final_norm",
    "distilled",
    "dynamic_img_pad",
    "block_fn",
    "mlp_layer",
    "scale_attn_norm",
    "scale_mlp_norm",
}
# timm's block classes vitres has (as timm_archs.json spells them): the pre-norm Block and
# the residual post-norm block (vit_base_patch16_rpn_224)
_RES_POST_BLOCK = "timm.models.vision_transformer.ResPostBlock"
_TIMM_BLOCKS = (None, "timm.models.vision_transformer.Block", _RES_POST_BLOCK)
# timm's MLPs vitres has: Mlp, and the packed SiLU-gated GluMlp (DINOv2-g's SwiGLU)
_SILU = "torch.nn.modules.activation.SiLU"
_PACKED_SWIGLU = f"partial:timm.layers.mlp.GluMlp:act_layer={_SILU},gate_last=False"
_TIMM_MLPS = (None, "timm.layers.mlp.Mlp", _PACKED_SWIGLU)
_TIMM_IGNORED_ARGS = {
    "dynamic_img_size",
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


def convert_timm_state_dict(
    state: dict[str, Tensor], document: dict | None = None, arch: str | None = None
) -> dict[str, Tensor]:
    """Maps a timm ``VisionTransformer`` (or distilled DeiT) state dict to vitres names;
    the weights of an ``eva.py`` architecture (named by ``arch`` or the config's
    ``architecture``) go through :func:`~vitres.models.convert.timm_eva.convert_eva_state_dict`.

    Names are timm's own, except the final norm: timm keeps ``norm`` (before pooling) or
    ``fc_norm`` (after pooling) and an identity for the other; vitres has one ``norm``
    used in either place (``ViTConfig.fc_norm`` says which). DeiT-3's old ``gamma_1`` /
    ``gamma_2`` layer scales become ``ls1.gamma`` / ``ls2.gamma``; timm's unused
    ``pre_logits`` of old checkpoints are kept as a representation layer.

    Raises:
        ValueError: keys of timm variants vitres does not implement (named).
    """
    args: dict = {}
    if document or arch:
        name, args, _ = _arch_and_args(document or {}, arch)
        if _is_eva(name):
            return convert_eva_state_dict(state, args)
    inner_norms = {  # the attention / MLP norms the architecture declares
        "attn": bool(args.get("scale_attn_norm")),
        "mlp": bool(args.get("scale_mlp_norm")),
    }
    unsupported = sorted(
        k
        for k in state
        if _TIMM_UNSUPPORTED_KEYS.match(k)
        and not (re.match(r"^blocks\.\d+\.(attn|mlp)\.norm\.", k) and inner_norms[k.split(".")[2]])
    )
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
        elif args.get("mlp_layer") == _PACKED_SWIGLU and re.match(r"^blocks\.\d+\.mlp\.fc1\.", key):
            gate, values = value.chunk(2, dim=0)  # GluMlp: gate rows, then value rows
            out[key.replace(".fc1.", ".fc1_g.")] = gate
            out[key.replace(".fc1.", ".fc1_x.")] = values
        else:
            out[key] = value
    return out


@cache
def timm_architectures() -> dict[str, dict]:
    """timm's ViT architecture names -> ``{"module", "model_args", "mean", "std",
    "input_size"}``, as timm's own entry points define them (the table
    ``scripts/timm_arch_table.py`` writes from timm's registries)."""
    table = json.loads(Path(__file__).with_name("timm_archs.json").read_text())
    return table["archs"]


def _is_eva(arch: str | None) -> bool:
    """Whether ``arch`` is an architecture of timm's ``eva.py``."""
    facts = timm_architectures().get((arch or "").split(".")[0])
    return facts is not None and facts["module"] == "eva"


def _known_archs_hint() -> str:
    names = list(timm_architectures())
    return (
        f"{len(names)} timm architectures, e.g. vit_base_patch16_224, "
        "vit_small_patch14_reg4_dinov2, deit_base_distilled_patch16_224"
    )


def _check_fit(args: dict, arch: str, found: dict) -> None:
    """Refuses weights whose shapes contradict the architecture's ``model_args``."""
    for key, value in found.items():
        declared = args.get(key)
        if isinstance(declared, (list, tuple)):
            declared = tuple(int(v) for v in declared)
        elif key == "patch_size" and declared is not None:
            declared = (int(declared), int(declared))
        if declared is not None and declared != value:
            raise ValueError(
                f"the weights do not fit timm architecture {arch!r}: {key} is {value} in the "
                f"weights but {declared} in its model_args; pass the architecture the weights "
                "were made with, or load timm's save_for_hf directory, whose config.json "
                "records the model_args"
            )


def _arch_args(arch: str, document_args: dict) -> dict:
    """The architecture's own ``model_args`` under the ones the config records.

    Raises:
        ValueError: a config that records no ``model_args`` for a name vitres does not know.
    """
    facts = timm_architectures().get(arch.split(".")[0])
    if facts is None:
        if not document_args:
            raise ValueError(
                f"unknown timm architecture {arch!r} and no model_args in its config.json: "
                f"vitres cannot tell its heads, activation, norms or pooling; vitres knows "
                f"{_known_archs_hint()} (vitres.models.convert.timm_architectures())"
            )
        return dict(document_args)
    return {**facts["model_args"], **document_args}


def _check_model_args(args: dict, arch: str = "") -> None:
    where = f"timm architecture {arch!r}" if arch else "these timm weights"
    unknown = sorted(set(args) - _TIMM_ARGS - _TIMM_IGNORED_ARGS)
    if unknown:
        shown = {k: args[k] for k in unknown}
        raise ValueError(
            f"unsupported timm model_args {unknown} for {where} ({shown}): vitres implements "
            f"timm's plain VisionTransformer blocks only; it reads {sorted(_TIMM_ARGS)}"
        )
    if args.get("block_fn") not in _TIMM_BLOCKS:
        raise ValueError(
            f"unsupported timm block_fn {args['block_fn']!r} for {where}: vitres has timm's "
            "pre-norm Block and the residual post-norm ResPostBlock (parallel blocks are not "
            "implemented)"
        )
    if args.get("mlp_layer") not in _TIMM_MLPS or (
        args.get("mlp_layer") == _PACKED_SWIGLU and args.get("act_layer") not in (None, _SILU)
    ):
        raise ValueError(
            f"unsupported timm mlp_layer {args['mlp_layer']!r} for {where}: vitres has timm's "
            "Mlp and the packed SiLU-gated GluMlp (SwiGLU)"
        )
    if args.get("norm_layer") not in _TIMM_NORMS:
        raise ValueError(
            f"unsupported timm norm_layer {args['norm_layer']!r} for {where}; vitres has "
            "LayerNorm only"
        )


def _num_heads(
    state: dict[str, Tensor], args: dict, arch: str, dim: int, num_heads: int | None
) -> int:
    """Heads: the override > ``model_args`` (the config's, then the architecture table's) >
    the q-norm width. Never guessed from a size word in the name."""
    q_norm = state.get("blocks.0.attn.q_norm.weight")
    from_q_norm = dim // int(q_norm.shape[0]) if q_norm is not None else None
    heads = num_heads or args.get("num_heads") or from_q_norm
    if heads is None and arch and arch.split(".")[0] in timm_architectures():
        heads = 12  # the architecture's entry point leaves VisionTransformer's default
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
    act = args.get("act_layer") or "gelu"  # VisionTransformer's default: exact GELU
    if args.get("mlp_layer") == _PACKED_SWIGLU:
        return "gelu"  # the SwiGLU gates with SiLU; no block activation is left to choose
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


def _block_fields(state: dict[str, Tensor], args: dict, dim: int) -> dict:
    """LayerScale's ``init_values``, the block kind and the MLP: timm's ``ResPostBlock``
    (residual post-norm, ``x + norm(attn(x))``) reads ``init_values`` as its norms' initial
    weight, not as a LayerScale; timm's packed ``GluMlp`` (DINOv2-g) is a SwiGLU whose
    ``fc1`` holds the gate rows, then the value rows; the norms inside the attention and
    the MLP (``scale_attn_norm`` / ``scale_mlp_norm``), and none at the end
    (``final_norm=False``)."""
    res_post_norm = args.get("block_fn") == _RES_POST_BLOCK
    init = None if res_post_norm else args.get("init_values")
    if init is None and ("blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state):
        init = 1e-5  # the stored gammas are loaded over it
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    swiglu = args.get("mlp_layer") == _PACKED_SWIGLU
    hidden = hidden // 2 if swiglu else hidden
    ratio = hidden / dim if int(dim * (hidden / dim)) == hidden else (hidden + 0.5) / dim
    return {
        "init_values": init,
        "res_post_norm": res_post_norm,
        "mlp_ratio": ratio,
        "mlp_kind": "swiglu" if swiglu else "mlp",
        "attn_norm": bool(args.get("scale_attn_norm")),  # a norm before the projection
        "mlp_norm": bool(args.get("scale_mlp_norm")),  # a norm before fc2 (BEiT-3)
        "final_norm": args.get("final_norm", True) is not False,  # neither norm nor fc_norm
    }


def _arch_and_args(document: dict, arch: str | None) -> tuple[str, dict, dict]:
    """The architecture name, its ``model_args`` (the table's under the config's) and its
    pretrained config (the table's mean and std when the config has none)."""
    pretrained = document.get("pretrained_cfg") or {}
    recorded = str(document.get("architecture") or pretrained.get("architecture") or "")
    if arch and recorded and arch.split(".")[0] != recorded.split(".")[0]:
        raise ValueError(f"arch={arch!r} contradicts the config's architecture {recorded!r}")
    arch = arch or recorded
    if not document and not arch:
        raise ValueError(
            "a bare timm state dict does not say its architecture: heads, activation, norm "
            "eps and pooling cannot be told from its keys, and vitres does not guess them; "
            "pass arch= (e.g. vitres.from_pretrained(file, arch='vit_base_patch16_224'); "
            f"vitres knows {_known_archs_hint()}) or load timm's save_for_hf directory "
            "(config.json + model.safetensors)"
        )
    recorded_args = dict(document.get("model_args") or {})
    args = _arch_args(arch, recorded_args) if arch else recorded_args
    if not _is_eva(arch):  # eva.py's model_args are checked by its own reader
        _check_model_args(args, arch)
    known = timm_architectures().get(arch.split(".")[0], {})
    if not pretrained and known:
        # the weights' own position table tells the native size, not the default config
        pretrained = {k: known[k] for k in ("mean", "std") if k in known}
    return arch, args, pretrained


def timm_config_fields(
    state: dict[str, Tensor],
    document: dict | None = None,
    num_heads: int | None = None,
    arch: str | None = None,
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
        num_heads: heads, where model_args do not give them, or from the weights' shapes (a
            big_vision kernel): the architecture gives the function of a narrower variant.
        arch: a timm architecture name, for a bare weights file (or to confirm the config's).

    Raises:
        ValueError: a bare state dict without ``arch`` (its keys do not tell activation,
            pooling, norms), an architecture or argument vitres does not implement exactly,
            or ``arch`` contradicting the config.
    """
    document = document or {}
    arch, args, pretrained = _arch_and_args(document, arch)
    if _is_eva(arch):
        return eva_config_fields(state, args, arch, pretrained, num_heads)
    proj = state["patch_embed.proj.weight"]
    dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = (int(proj.shape[-2]), int(proj.shape[-1]))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if num_heads is None:  # heads from the architecture: its widths must be the weights'
        _check_fit(args, arch, {"embed_dim": dim, "depth": depth, "patch_size": patch})
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
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        **_block_fields(state, args, dim),
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
        # timm's PatchEmbed: a strided convolution (crop), or zero padding bottom/right
        "size_policy": "pad" if args.get("dynamic_img_pad") else "crop",
        "norm_eps": _TIMM_NORMS[args.get("norm_layer")],
        "mean": per_channel(tuple(pretrained.get("mean", (0.5,) * in_chans)), in_chans),
        "std": per_channel(tuple(pretrained.get("std", (0.5,) * in_chans)), in_chans),
    }


convert_timm_vit_state_dict = convert_timm_state_dict  # old name (vitres <= 0.1)

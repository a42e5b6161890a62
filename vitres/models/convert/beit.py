"""BEiT and Data2Vec-vision to vitres, as pure mappings (Hugging Face and timm).

BEiT (Bao et al., ICLR 2022), BEiT v2 (Peng et al., 2022) and Data2Vec-vision (Baevski
et al., ICML 2022) are pre-norm ViTs with a class token, LayerScale, query and value
biases but no key bias (stored here as zeros: a key bias adds the same logit to every
key of a query, which the softmax cancels), an optional absolute position table, and
learned relative position bias tables, per block and/or shared
(:mod:`vitres.layers.rel_pos_table`). The pool is the class token after the final norm,
or the mean of the patch tokens followed by a norm (``use_mean_pooling``).

Sources:

* Hugging Face ``model_type`` ``beit`` (``BeitModel``, ``BeitForImageClassification``)
  and ``data2vec-vision`` (``Data2VecVisionModel``, ``...ForImageClassification``):
  the keys of ``save_pretrained`` files and the current in-memory names;
* timm's ``beit.py`` (``beit_*``, ``beitv2_*``): ``q_bias`` / ``v_bias``,
  ``blocks.i.attn.relative_position_bias_table``, ``rel_pos_bias`` (shared),
  ``gamma_1`` / ``gamma_2``.

At another grid the tables are resampled the way Hugging Face's ``BeitRelativePositionBias``
does (bilinear, the class-token entries kept) and the absolute table, if any, bicubic
as its ``interpolate_pos_encoding``; sizes the patch does not divide are cropped, as the
strided convolution does. timm's BEiT runs at its native size only (its
``set_input_size`` resamples with a different, geometric-progression rule and is not
followed); vitres runs a timm BEiT at other sizes with the Hugging Face rule above.
Nothing here reads files or builds models; :mod:`vitres.models.resolve` does that.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from vitres.models.convert.common import num_head_features, per_channel

__all__ = [
    "BEIT_DROPPED",
    "TIMM_BEIT_ARCHS",
    "beit_hf_fields",
    "beit_hf_key",
    "convert_timm_beit_state_dict",
    "fill_key_bias",
    "is_timm_beit",
    "timm_beit_config_fields",
]

BEIT_DROPPED = "<dropped>"  # what beit_hf_key answers for tensors vitres does not need
_HF_BLOCK_TABLE = re.compile(
    r"^(?:encoder\.)?(?:layer|layers)\.(\d+)\.(?:attention\.attention\.)?"
    r"relative_position_bias\.relative_position_bias_table$"
)
_HF_SHARED_TABLE = re.compile(
    r"^(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table$"
)
_HF_LAMBDA = re.compile(r"^(?:encoder\.)?(?:layer|layers)\.(\d+)\.lambda_([12])$")
_HF_INDEX = re.compile(r"(?:^|\.)relative_position_index$")


def beit_hf_key(bare: str) -> str | None:
    """The vitres name of a BEiT-only Hugging Face key (model prefix removed), or
    :data:`BEIT_DROPPED` for the old stored index buffers; ``None``: a key the shared
    ViT mapping knows."""
    if _HF_INDEX.search(bare):
        return BEIT_DROPPED
    if match := _HF_BLOCK_TABLE.match(bare):
        return f"rel_pos_tables.{match.group(1)}.relative_position_bias_table"
    if _HF_SHARED_TABLE.match(bare):
        return "rel_pos_bias.relative_position_bias_table"
    if match := _HF_LAMBDA.match(bare):
        return f"blocks.{match.group(1)}.ls{match.group(2)}.gamma"
    if bare in ("pooler.layernorm.weight", "pooler.layernorm.bias"):
        return "norm." + bare.rsplit(".", 1)[1]
    return None


def fill_key_bias(qkv: dict[tuple[int, str], dict[str, Tensor]]) -> None:
    """Adds the key bias BEiT does not have, as zeros (the softmax cancels a key bias)."""
    for (_, kind), parts in qkv.items():
        if kind == "bias" and "k" not in parts and "q" in parts:
            parts["k"] = torch.zeros_like(parts["q"])


def _refuse(what: str, why: str) -> ValueError:
    return ValueError(
        f"{what} is not supported: {why}. Supported BEiT / Data2Vec-vision models: a class "
        "token, per-block and/or shared relative position bias, optional absolute "
        "positions, LayerScale, class-token or mean pooling (with or without a norm), a "
        "square native image"
    )


def beit_hf_fields(hf: dict, state: dict[str, Tensor]) -> dict:
    """The :class:`ViTConfig` fields a BEiT / Data2Vec-vision config sets beyond the
    shared Hugging Face ones (``state`` is converted).

    A model with mean pooling and no pooler (``Data2VecVisionModel``'s default) has no
    final norm at all: it loads with ``final_norm=False``, its ``last_hidden_state`` is
    ``forward_features`` and ``model(x)`` the mean of its patch tokens.

    Raises:
        ValueError: a non-square native image (the source's own table reshape swaps
            rows and columns there).
    """
    name = f"Hugging Face {hf.get('model_type')}"
    image = hf.get("image_size", 224)
    if isinstance(image, (list, tuple)) and len(set(image)) != 1:
        raise _refuse(
            f"{name} with image_size={list(image)}",
            "a non-square native image (the source resamples its tables as if square)",
        )
    mean_pool = bool(hf.get("use_mean_pooling", True))
    scale = hf.get("layer_scale_init_value", 0.1)
    return {
        "global_pool": "avg" if mean_pool else "token",
        "fc_norm": mean_pool,
        "final_norm": "norm.weight" in state or not mean_pool,
        "pos_embed": "learned" if "pos_embed" in state else "none",
        "rel_pos_bias": bool(hf.get("use_relative_position_bias")),
        "shared_rel_pos_bias": bool(hf.get("use_shared_relative_position_bias")),
        "init_values": scale if "blocks.0.ls1.gamma" in state else None,
    }


# ----------------------------------------------------------------------------- timm
_TIMM_BEIT_ARGS = {
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "embed_dim",
    "depth",
    "num_heads",
    "qkv_bias",
    "mlp_ratio",
    "init_values",
    "use_abs_pos_emb",
    "use_rel_pos_bias",
    "use_shared_rel_pos_bias",
    "use_fc_norm",
}
_TIMM_BEIT_IGNORED = {
    "drop_rate",
    "pos_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "head_init_scale",
}
_HALF = (0.5, 0.5, 0.5)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _arch(
    width: int, depth: int, heads: int, init: float, img: int, mean_std: tuple | None = None
) -> dict:
    """One row of :data:`TIMM_BEIT_ARCHS`."""
    mean, std = mean_std or (_HALF, _HALF)
    args = {"patch_size": 16, "embed_dim": width, "depth": depth, "num_heads": heads,
            "img_size": img, "init_values": init, "use_abs_pos_emb": False,
            "use_rel_pos_bias": True}  # fmt: skip
    return {"model_args": args, "mean": mean, "std": std, "input_size": (3, img, img)}


# timm 1.0.31's beit.py entry points: their model_args and default pretrained mean / std
TIMM_BEIT_ARCHS = {
    "beit_base_patch16_224": _arch(768, 12, 12, 0.1, 224),
    "beit_base_patch16_384": _arch(768, 12, 12, 0.1, 384),
    "beit_large_patch16_224": _arch(1024, 24, 16, 1e-5, 224),
    "beit_large_patch16_384": _arch(1024, 24, 16, 1e-5, 384),
    "beit_large_patch16_512": _arch(1024, 24, 16, 1e-5, 512),
    "beitv2_base_patch16_224": _arch(768, 12, 12, 1e-5, 224, _IMAGENET),
    "beitv2_large_patch16_224": _arch(1024, 24, 16, 1e-5, 224, _IMAGENET),
}
_TIMM_BEIT_KEYS = re.compile(
    r"^(rel_pos_bias\.|blocks\.\d+\.attn\.(q_bias|v_bias|relative_position_bias_table)$)"
)


def is_timm_beit(state: dict[str, Tensor], architecture: str) -> bool:
    """Whether timm weights are timm's ``beit.py`` model: by its architecture name when
    there is one, else by its keys (q / v biases, relative position tables; a nameless
    file is then refused unless its config records ``model_args``)."""
    base = architecture.split(".")[0]
    if base:
        return base in TIMM_BEIT_ARCHS or base.startswith(("beit_", "beitv2_"))
    return any(_TIMM_BEIT_KEYS.match(k) for k in state)


def convert_timm_beit_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Maps a timm ``Beit`` state dict to vitres names: ``q_bias`` / ``v_bias`` become the
    ``qkv`` bias (zero key bias), per-block tables ``rel_pos_tables.i``, ``gamma_1`` /
    ``gamma_2`` the LayerScales, ``fc_norm`` the one final norm.

    Raises:
        ValueError: SwiGLU or scaled-MLP variants (keys vitres does not implement).
    """
    unknown = sorted(k for k in state if re.match(r"^blocks\.\d+\.mlp\.(norm|fc1_g|fc1_x)\.", k))
    if unknown:
        raise _refuse(f"timm BEiT with keys {unknown[:4]}", "SwiGLU or normed MLPs")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("relative_position_index") or key.endswith("attn.k_bias"):
            continue
        if match := re.match(r"^blocks\.(\d+)\.attn\.relative_position_bias_table$", key):
            out[f"rel_pos_tables.{match.group(1)}.relative_position_bias_table"] = value
        elif match := re.match(r"^blocks\.(\d+)\.attn\.q_bias$", key):
            v_bias = state[f"blocks.{match.group(1)}.attn.v_bias"]
            out[f"blocks.{match.group(1)}.attn.qkv.bias"] = torch.cat(
                [value, torch.zeros_like(value), v_bias]
            )
        elif re.match(r"^blocks\.\d+\.attn\.v_bias$", key):
            continue
        elif match := re.match(r"^blocks\.(\d+)\.gamma_([12])$", key):
            out[f"blocks.{match.group(1)}.ls{match.group(2)}.gamma"] = value
        elif key.startswith("fc_norm."):
            out["norm." + key[len("fc_norm.") :]] = value
        else:
            out[key] = value
    return out


def _timm_beit_args(document: dict, known: dict, arch: str) -> dict:
    if not known and not document.get("model_args"):
        raise _refuse(
            f"timm BEiT weights{f' {arch!r}' if arch else ''} without model_args",
            "vitres does not guess heads or LayerScale; pass arch= (one of "
            f"{sorted(TIMM_BEIT_ARCHS)}) or load timm's save_for_hf directory",
        )
    args = {**(known.get("model_args") or {}), **(document.get("model_args") or {})}
    unsupported = sorted(set(args) - _TIMM_BEIT_ARGS - _TIMM_BEIT_IGNORED)
    flagged = [k for k in ("swiglu_mlp", "scale_mlp") if args.get(k)]
    if unsupported or flagged or args.get("attn_head_dim") is not None:
        raise _refuse(
            f"timm BEiT {arch!r} with model_args {sorted(set(unsupported) | set(flagged))}",
            f"vitres reads {sorted(_TIMM_BEIT_ARGS)}",
        )
    return args


def _check_widths(args: dict, arch: str, dim: int, patch: tuple[int, int]) -> None:
    declared = args.get("patch_size", 16)
    declared = (declared, declared) if isinstance(declared, int) else tuple(declared)
    if args.get("embed_dim", dim) != dim or declared != patch:
        raise ValueError(
            f"the weights do not fit timm architecture {arch!r}: width {dim} and patch "
            f"{patch} in the weights, {args.get('embed_dim')} and {declared} in its model_args"
        )


def timm_beit_config_fields(state: dict[str, Tensor], document: dict, arch: str) -> dict:
    """:class:`ViTConfig` fields of timm ``Beit`` weights (timm's own names).

    Args:
        state: timm's state dict.
        document: timm's ``config.json`` (``{}`` for a bare file).
        arch: the architecture name (the config's or ``arch=``; ``""``: none).

    Raises:
        ValueError: no ``model_args`` and no known architecture, or arguments, pools or
            MLPs vitres does not implement (named).
    """
    known = TIMM_BEIT_ARCHS.get(arch.split(".")[0], {})
    args = _timm_beit_args(document, known, arch)
    pretrained = document.get("pretrained_cfg") or known or {}
    proj = state["patch_embed.proj.weight"]
    dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = (int(proj.shape[-2]), int(proj.shape[-1]))
    img = args.get("img_size") or (pretrained.get("input_size") or [3, 224, 224])[-2:]
    img = (img, img) if isinstance(img, int) else tuple(int(v) for v in img)
    if "num_heads" not in args:
        raise _refuse(f"timm BEiT {arch!r}", "its config records no num_heads")
    _check_widths(args, arch, dim, patch)
    pool = args.get("global_pool", document.get("global_pool", "avg"))
    if pool not in ("avg", "token"):
        raise _refuse(f"timm BEiT {arch!r} with global_pool={pool!r}", "pools are avg, token")
    fc_norm = args.get("use_fc_norm")
    fc_norm = (pool == "avg") if fc_norm is None else bool(fc_norm)
    head_features = num_head_features(state)
    return {
        "img_size": img,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": head_features,
        "embed_dim": dim,
        "depth": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        "num_heads": int(args["num_heads"]),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.q_bias" in state,
        "init_values": (args.get("init_values") or 0.1) if "blocks.0.gamma_1" in state else None,
        "global_pool": pool,
        "fc_norm": fc_norm,
        "pos_embed": "learned" if "pos_embed" in state else "none",
        "pos_embed_mode": "bicubic",
        "rel_pos_bias": "blocks.0.attn.relative_position_bias_table" in state,
        "shared_rel_pos_bias": "rel_pos_bias.relative_position_bias_table" in state,
        "head_bias": "head.bias" in state or not head_features,
        "size_policy": "crop",
        "norm_eps": 1e-6,  # timm's BEiT: LayerNorm(eps=1e-6)
        "mean": per_channel(tuple(pretrained.get("mean", (0.5,) * in_chans)), in_chans),
        "std": per_channel(tuple(pretrained.get("std", (0.5,) * in_chans)), in_chans),
    }

"""Checkpoints: vitres's own format (safetensors + JSON) and import of foreign ViT weights.

* ``save_model`` / ``load_model``: weights in safetensors, the config in JSON (beside the
  weights and also in the safetensors metadata). Nothing is ever unpickled.
* ``from_pretrained``: a local Hugging Face ``transformers`` ViT (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``), a timm ViT state dict, or a vitres
  checkpoint, detected automatically. Foreign weights are translated by pure
  ``state_dict -> state_dict`` mappings, checked key by key and shape by shape, and
  ``.bin``/``.pth`` files are read with ``torch.load(..., weights_only=True)`` only.

An imported model reproduces its source by default, at other resolutions too:
Hugging Face resamples position tables bicubic without antialias and drops the pixels a
patch does not cover; timm resamples bicubic with antialias.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vitres.layers.patch_embed import resample_patch_embed
from vitres.layers.pos_embed import resample_pos_embed
from vitres.models.mixer import MixerConfig, MlpMixer
from vitres.models.registry import VIT_SIZES, build_from_config
from vitres.models.vit import VisionTransformer, ViTConfig

FORMAT_NAME = "vitres"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_ARCHS: dict[str, type] = {"vit": ViTConfig, "mixer": MixerConfig}


# ----------------------------------------------------------------------------- vitres format
def _arch_of(config: ViTConfig | MixerConfig) -> str:
    return "vit" if isinstance(config, ViTConfig) else "mixer"


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths: ``x.safetensors`` + ``x.json``, or ``dir/model.safetensors`` + ``dir/config.json``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "model.safetensors", path / "config.json"


def save_model(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Saves ``model`` as safetensors weights plus a JSON config.

    Args:
        model: a :class:`VisionTransformer` or :class:`MlpMixer`.
        path: ``name.safetensors`` (config goes to ``name.json``) or a directory.
        metadata: extra JSON-serialisable facts to keep (training recipe, accuracy).

    Returns:
        The weights file written.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, (ViTConfig, MixerConfig)):
        raise ValueError(f"save_model needs a vitres model, got {type(model).__name__}")
    weights_path, config_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": _arch_of(config),
        "config": config.to_dict(),
        "metadata": metadata or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, str(tmp), metadata={"vitres": json.dumps(document)})
    tmp.replace(weights_path)
    _chmod_like_open(weights_path)
    config_path.write_text(json.dumps(document, indent=2) + "\n")
    return weights_path


def _chmod_like_open(path: Path) -> None:
    """safetensors creates files 0600; give them the mode ``open()`` would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Reads all tensors and the string metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, metadata


def _resolve_reference(name: str) -> Path | None:
    candidate = WEIGHTS_DIR / f"{name}.safetensors"
    return candidate if candidate.exists() else None


def _checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths of a checkpoint path or bundled reference name."""
    reference = _resolve_reference(str(path)) if not Path(path).exists() else None
    return _paths(reference or path)


def checkpoint_digest(path: str | Path) -> str | None:
    """Short SHA-256 of the weights file of a vitres checkpoint (a path or a bundled name),
    or ``None`` when ``path`` names no such file (registry names, factories, folders of
    other formats)."""
    try:
        weights_path, _ = _checkpoint_paths(path)
    except (OSError, ValueError):
        return None
    if not weights_path.is_file():
        return None
    digest = hashlib.sha256()
    with open(weights_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def load_model(path: str | Path, **overrides) -> nn.Module:
    """Loads a vitres checkpoint (a path, or a bundled reference name like ``fmnist-vit-multires``).

    Args:
        path: ``x.safetensors``, its ``x.json``, a checkpoint directory, or a bundled name.
        **overrides: run-time config fields to change, e.g. ``pos_embed_mode="fourier"``.
    """
    weights_path, config_path = _checkpoint_paths(path)
    if not weights_path.exists():
        bundled = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
        raise FileNotFoundError(
            f"no vitres checkpoint at {path!s} (looked for {weights_path}); bundled models: {bundled}"
        )
    state, metadata = read_safetensors(weights_path)
    if config_path.exists():
        document = json.loads(config_path.read_text())
    elif "vitres" in metadata:
        document = json.loads(metadata["vitres"])
    else:
        raise ValueError(
            f"{weights_path} has no vitres config ({config_path} missing, no metadata)"
        )
    if document.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{config_path} is not a vitres config (format={document.get('format')!r})"
        )
    config_cls = _ARCHS.get(document.get("arch"))
    if config_cls is None:
        raise ValueError(
            f"unknown arch {document.get('arch')!r} in {config_path}; expected {list(_ARCHS)}"
        )
    config = config_cls.from_dict({**document["config"], **overrides})
    model = build_from_config(config)
    _load_checked(model, state, str(weights_path))
    model.metadata = document.get("metadata", {})
    return model.eval()


def _load_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` after checking key sets and shapes, with a readable error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights in {source} do not match the model: {len(expected)} keys expected, "
            f"{len(state)} found; missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"shape mismatch loading {source} (file vs model): {bad[:8]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


# ----------------------------------------------------------------------------- foreign formats
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Reads a foreign weights file: safetensors, or ``.bin``/``.pth``/``.pt`` with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if path.suffix in (".bin", ".pth", ".pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a flat state dict of tensors")
        return state
    raise ValueError(
        f"unsupported weights file {path.name}; expected .safetensors, .bin, .pth or .pt"
    )


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


def _hf_config(hf: dict) -> dict:
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


def _timm_config(state: dict[str, Tensor], meta: dict) -> dict:
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


def _build_foreign(
    state: dict[str, Tensor], config_fields: dict, overrides: dict, source: str
) -> nn.Module:
    """Builds the source's own geometry, then adapts to the requested one."""
    base = ViTConfig(**config_fields)
    geometry = {k: overrides[k] for k in ("img_size", "patch_size") if k in overrides}
    target = ViTConfig(**{**config_fields, **overrides})
    state = adapt_state_dict(state, base, target) if geometry else state
    model = VisionTransformer(target)
    _load_checked(model, state, source)
    return model.eval()


def detect_format(path: str | Path) -> str:
    """``"vitres"``, ``"hf"`` or ``"timm"`` for a local directory or file."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if config.exists():
            document = json.loads(config.read_text())
            if document.get("format") == FORMAT_NAME:
                return "vitres"
            if "model_type" in document:
                return "hf"
            if "architecture" in document or "pretrained_cfg" in document:
                return "timm"
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if (path / name).exists():
                return "timm"
        raise ValueError(
            f"cannot tell the format of {path}: expected a vitres checkpoint, a Hugging Face ViT "
            "(config.json with model_type) or timm weights (model.safetensors / pytorch_model.bin)"
        )
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix == ".safetensors":
        metadata = read_safetensors_metadata(path)
        if "vitres" in metadata or path.with_suffix(".json").exists():
            return "vitres"
        return "timm"
    if path.suffix == ".json":
        return "vitres"
    if path.suffix in (".bin", ".pth", ".pt"):
        return "timm"
    raise ValueError(
        f"unsupported file {path.name}: expected .safetensors, .json, .bin, .pth or .pt"
    )


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _find_weights(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(
        f"no weights file (model.safetensors or pytorch_model.bin) in {directory}"
    )


def from_pretrained(path: str | Path, **overrides) -> nn.Module:
    """Loads a local Hugging Face, timm or vitres ViT, auto-detected.

    Args:
        path: a directory or a weights file. Nothing is downloaded.
        **overrides: config fields. ``img_size`` / ``patch_size`` resample the stored
            position table / PI-resize the patch kernel to make that the new native
            geometry; others (``pos_embed_mode``, ``size_policy``...) change run-time
            behaviour.

    Returns:
        A model in eval mode that reproduces the source's outputs unless overridden.
    """
    reference = _resolve_reference(str(path)) if not Path(path).exists() else None
    if reference is not None:
        return load_model(reference, **overrides)
    kind = detect_format(path)
    path = Path(path)
    if kind == "vitres":
        if overrides.keys() & {"img_size", "patch_size"}:
            model = load_model(path)
            geometry = {k: overrides[k] for k in ("img_size", "patch_size") if k in overrides}
            target = type(model.config).from_dict({**model.config.to_dict(), **overrides})
            if not isinstance(model, VisionTransformer):
                raise ValueError(
                    "changing the native geometry is supported for ViT checkpoints only"
                )
            state = (
                adapt_state_dict(model.state_dict(), model.config, target)
                if geometry
                else model.state_dict()
            )
            new = VisionTransformer(target)
            _load_checked(new, state, str(path))
            return new.eval()
        return load_model(path, **overrides)
    if kind == "hf":
        hf = json.loads((path / "config.json").read_text())
        weights = _find_weights(path)
        state = convert_hf_vit_state_dict(read_state_dict(weights))
        fields = _hf_config(hf)
        if "head.weight" not in state:
            fields["num_classes"] = 0
        return _build_foreign(state, fields, overrides, str(weights))
    # timm
    meta: dict = {}
    weights = path
    if path.is_dir():
        weights = _find_weights(path)
        if (path / "config.json").exists():
            document = json.loads((path / "config.json").read_text())
            meta = {**document.get("pretrained_cfg", {}), **document}
            if "num_heads" in document.get("model_args", {}):
                meta["num_heads"] = document["model_args"]["num_heads"]
    raw = read_state_dict(weights)
    if "patch_embed.proj.weight" not in raw or "blocks.0.attn.qkv.weight" not in raw:
        raise ValueError(
            f"{weights} is not a timm ViT state dict (no patch_embed.proj.weight / blocks.0.attn.qkv.weight); "
            f"first keys: {list(raw)[:6]}"
        )
    fields = _timm_config(raw, meta)
    state = convert_timm_vit_state_dict(raw)
    if "num_heads" in overrides:
        fields["num_heads"] = overrides["num_heads"]
    return _build_foreign(state, fields, overrides, str(weights))


__all__ = [
    "MlpMixer",
    "adapt_state_dict",
    "convert_hf_vit_state_dict",
    "convert_timm_vit_state_dict",
    "detect_format",
    "from_pretrained",
    "load_model",
    "read_state_dict",
    "save_model",
]

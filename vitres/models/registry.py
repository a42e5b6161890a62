"""Named model configurations: ``vit_{tiny,small,base,large}_patch{P}`` and Mixers."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from vitres.models.config import MixerConfig, ViTConfig
from vitres.models.mixer import MlpMixer
from vitres.models.vit import VisionTransformer

# width, depth, heads (Dosovitskiy et al. 2021; Touvron et al. 2021 for tiny/small)
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
VIT_LISTED_PATCHES = (4, 8, 14, 16, 32)  # 4: `vitres train`'s default, vit_tiny_patch4

# width, depth, token-MLP width, channel-MLP width (Tolstikhin et al. 2021)
MIXER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 4, 64, 512),
    "s": (512, 8, 256, 2048),
    "b": (768, 12, 384, 3072),
    "l": (1024, 24, 512, 4096),
}

_VIT_NAME = re.compile(r"^vit_(tiny|small|base|large)_patch(\d+)$")
_MIXER_NAME = re.compile(r"^mixer_(tiny|s|b|l)(\d+)$")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (any patch size works, these are listed)."""
    vits = [f"vit_{size}_patch{p}" for size in VIT_SIZES for p in VIT_LISTED_PATCHES]
    mixers = [f"mixer_{size}{p}" for size in MIXER_SIZES for p in (16, 32)]
    return vits + mixers


def model_config(name: str, **overrides) -> ViTConfig | MixerConfig:
    """The config a name stands for, with ``overrides`` applied."""
    match = _VIT_NAME.match(name)
    if match:
        width, depth, heads = VIT_SIZES[match.group(1)]
        base = {
            "embed_dim": width,
            "depth": depth,
            "num_heads": heads,
            "patch_size": int(match.group(2)),
        }
        return ViTConfig(**{**base, **overrides})
    match = _MIXER_NAME.match(name)
    if match:
        width, depth, tokens_dim, channels_dim = MIXER_SIZES[match.group(1)]
        base = {
            "embed_dim": width,
            "depth": depth,
            "tokens_mlp_dim": tokens_dim,
            "channels_mlp_dim": channels_dim,
            "patch_size": int(match.group(2)),
        }
        return MixerConfig(**{**base, **overrides})
    raise ValueError(
        f"unknown model name {name!r}; expected vit_<tiny|small|base|large>_patch<P> or "
        f"mixer_<tiny|s|b|l><P>, e.g. {list_models()[:4]}"
    )


def build_from_config(config: ViTConfig | MixerConfig) -> nn.Module:
    builders: dict[type, Callable[..., nn.Module]] = {
        ViTConfig: VisionTransformer,
        MixerConfig: MlpMixer,
    }
    return builders[type(config)](config)


def create_model(name: str, **overrides) -> nn.Module:
    """Builds a randomly initialised model by name, e.g. ``create_model("vit_small_patch16")``.

    Args:
        name: a name from :func:`list_models` (any patch size is accepted).
        **overrides: config fields, e.g. ``img_size=28, in_chans=1, num_classes=10``.
    """
    try:
        config = model_config(name, **overrides)
    except TypeError as err:
        raise ValueError(f"bad override for {name!r}: {err}") from None
    return build_from_config(config)

"""Building blocks: position embeddings, patch embedding, derived-tensor cache."""

from vitres.layers.patch_embed import PatchEmbed, fit_to_patch, resample_patch_embed
from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    CoordinateMLPPosEmbed,
    apply_rope,
    fourier_resample_2d,
    resample_pos_embed,
    rope_2d,
    sincos_2d,
)

__all__ = [
    "ContinuousPositionBias",
    "CoordinateMLPPosEmbed",
    "PatchEmbed",
    "apply_rope",
    "fit_to_patch",
    "fourier_resample_2d",
    "resample_patch_embed",
    "resample_pos_embed",
    "rope_2d",
    "sincos_2d",
]

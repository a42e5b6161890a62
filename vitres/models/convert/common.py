"""What every weight conversion shares: reading the classifier's width from a state dict,
per-channel normalisation constants, and resampling a converted state dict to another
geometry (patch size, grid). All pure functions."""

from __future__ import annotations

from torch import Tensor

from vitres.layers.patch_embed import resample_patch_embed
from vitres.layers.pos_embed import resample_pos_embed
from vitres.layers.rel_pos_table import resample_relative_table
from vitres.models.config import ViTConfig

__all__ = ["adapt_state_dict", "num_head_features", "per_channel"]


def num_head_features(state: dict[str, Tensor]) -> int:
    """Classes of the (vitres-named) classifier ``head``; 0 for a model without one."""
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None else 0


def per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Normalisation ``values`` for ``channels`` channels: as given when there is one per
    channel, else the first repeated (a grey-scale ``(0.5,)`` for an RGB model)."""
    return values if len(values) == channels else (values[0],) * channels


def adapt_state_dict(
    state: dict[str, Tensor], source: ViTConfig, target: ViTConfig
) -> dict[str, Tensor]:
    """Resamples position table, relative position bias tables (BEiT) and patch kernel
    from ``source`` to ``target`` geometry (pure)."""
    state = dict(state)
    if target.patch_hw != source.patch_hw:
        state["patch_embed.proj.weight"] = resample_patch_embed(
            state["patch_embed.proj.weight"],
            target.patch_hw,
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
    if target.grid != source.grid:
        for key in [k for k in state if k.endswith("relative_position_bias_table")]:
            state[key] = resample_relative_table(state[key], source.grid, target.grid)
    return state

"""What the ViT and the Mixer share: config (de)serialisation and run-time geometry."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torch import Tensor

from vitres.layers.cache import is_tracing
from vitres.layers.patch_embed import token_grid
from vitres.layers.pos_embed import to_grid
from vitres.models.validation import check_images, check_patch_size

ConfigT = TypeVar("ConfigT", bound="ConfigBase")


class ConfigBase:
    """Mixin for model config dataclasses with ``img_size``, ``in_chans``, ``mean``, ``std``."""

    def _normalise_common(self) -> None:
        self.img_size = to_grid(self.img_size, "img_size")
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        self.mean = mean if len(mean) == self.in_chans else (mean[0],) * self.in_chans
        self.std = std if len(std) == self.in_chans else (std[0],) * self.in_chans

    @property
    def grid(self) -> tuple[int, int]:
        """The native token grid ``(rows, cols)``."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["img_size"] = list(self.img_size)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**data)


class AnyResolutionMixin:
    """Geometry and input checks of a model whose grid follows its input."""

    num_prefix_tokens: int = 0

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def grid_size(
        self, image_size: tuple[int, int], patch_size: int | None = None
    ) -> tuple[int, int]:
        """The token grid ``(rows, cols)`` this model uses for an ``(H, W)`` input."""
        p = patch_size or self.config.patch_size
        return token_grid(to_grid(image_size, "image_size"), p, self.config.size_policy)

    def num_tokens(self, image_size: tuple[int, int], patch_size: int | None = None) -> int:
        """Tokens in the sequence, prefix tokens included."""
        rows, cols = self.grid_size(image_size, patch_size)
        return rows * cols + self.num_prefix_tokens

    def _checked_patch_size(self, x: Tensor, patch_size: int | None) -> int:
        """Validates the input (outside tracing) and returns the patch size to use."""
        p = self.config.patch_size if patch_size is None else patch_size
        if not is_tracing():
            check_images(x, self.config.in_chans)
            check_patch_size(p, x.shape[-2:])
        return p

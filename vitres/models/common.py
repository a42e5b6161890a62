"""What the ViT and the Mixer share: run-time geometry and input checks.

``ConfigBase`` lives in :mod:`vitres.models.config`; it is re-exported here for old imports.
"""

from __future__ import annotations

from torch import Tensor, nn

from vitres.layers.cache import is_tracing
from vitres.layers.patch_embed import PatchEmbed, PatchSize, to_patch, token_grid
from vitres.layers.pos_embed import to_grid
from vitres.models.config import ConfigBase, ConfigT
from vitres.models.validation import cast_images, check_images, check_patch_size, check_valid_size


class AnyResolutionMixin:
    """Geometry and input checks of a model whose grid follows its input."""

    num_prefix_tokens: int = 0

    @property
    def patch_size(self) -> PatchSize:
        return self.config.patch_size

    def grid_size(
        self, image_size: tuple[int, int], patch_size: PatchSize | None = None
    ) -> tuple[int, int]:
        """The token grid ``(rows, cols)`` this model uses for an ``(H, W)`` input."""
        p = patch_size or self.config.patch_size
        return token_grid(to_grid(image_size, "image_size"), p, self.config.size_policy)

    def num_tokens(self, image_size: tuple[int, int], patch_size: PatchSize | None = None) -> int:
        """Tokens in the sequence, prefix tokens included."""
        rows, cols = self.grid_size(image_size, patch_size)
        return rows * cols + self.num_prefix_tokens

    def _patch_embed_module(self) -> PatchEmbed:
        embed = getattr(self, "patch_embed", None) or getattr(self, "stem", None)
        if not isinstance(embed, PatchEmbed):
            raise TypeError(f"{type(self).__name__} has no patch_embed/stem PatchEmbed")
        return embed

    def patch_kernel(self, patch_size: PatchSize) -> Tensor:
        """The (cached) patch-embedding kernel for ``patch_size``, resized with the config's
        ``kernel_resize_mode`` / ``kernel_resize_antialias``."""
        cfg = self.config
        return self._patch_embed_module().kernel(
            to_patch(patch_size), cfg.kernel_resize_mode, cfg.kernel_resize_antialias
        )

    def check_input(
        self,
        x: Tensor,
        patch_size: PatchSize | None,
        valid_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, PatchSize, tuple[int, int] | None]:
        """Validates the input (outside tracing), casts it to the weights' dtype, and
        returns it with the patch size to use and the checked ``valid_size``.

        Raises:
            ValueError: the images, patch size or ``valid_size`` do not fit the model.
        """
        p = self.config.patch_size if patch_size is None else patch_size
        if not is_tracing():
            check_images(x, self.config.in_chans)
            check_patch_size(p, x.shape[-2:])
            if valid_size is not None:
                valid_size = check_valid_size(valid_size, x.shape[-2:])
        weight = self._patch_embed_module().proj.weight
        return cast_images(x, weight.dtype), p, valid_size

    def _checked_patch_size(self, x: Tensor, patch_size: PatchSize | None) -> PatchSize:
        """Validates the input (outside tracing) and returns the patch size to use."""
        return self.check_input(x, patch_size)[1]


__all__ = ["AnyResolutionMixin", "ConfigBase", "ConfigT", "FixedPatchSize"]


class FixedPatchSize(nn.Module):
    """Binds ``patch_size`` so a backend sees a plain ``forward(x)`` (token modes bind
    with :meth:`vitres.tokens.TokenMode.bind`)."""

    def __init__(self, model: nn.Module, patch_size: PatchSize | None) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, patch_size=self.patch_size)

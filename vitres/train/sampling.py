"""Which input size and patch size each training step uses.

Multi-resolution training draws one ``(resolution, patch size)`` per step for the whole
batch (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023), uniformly
over the configured sets; the draws come from the step's own generator
(:func:`vitres.train.schedule.step_generator`), so they repeat on resume.
"""

from __future__ import annotations

import torch

__all__ = ["sample_step_shape"]


def sample_step_shape(
    resolutions: tuple[int, ...], patch_sizes: tuple[int, ...], generator: torch.Generator
) -> tuple[int, int | None]:
    """Draws ``(resolution, patch_size)`` for one batch, each uniform over its set.

    ``patch_size`` is ``None`` (the model's own) when ``patch_sizes`` is empty.
    """
    res = resolutions[int(torch.randint(len(resolutions), (1,), generator=generator))]
    patch = None
    if patch_sizes:
        patch = patch_sizes[int(torch.randint(len(patch_sizes), (1,), generator=generator))]
    return res, patch

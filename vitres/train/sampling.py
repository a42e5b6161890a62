"""Which input size and patch size each training step uses, and how many examples.

Multi-resolution training draws one ``(resolution, patch size)`` per step for the whole
batch (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023):
:func:`sample_step_shape` uniformly over the configured sets. Flexifying uses
:class:`GapSampler`, which favours the sizes whose outputs are furthest from the
teacher's, and :func:`token_batch_size`, which scales the batch inversely with the
token count so that a step costs about the same at every size. Every draw comes from
the step's own generator (:func:`vitres.train.schedule.step_generator`), so it repeats
on resume.
"""

from __future__ import annotations

import math

import torch

from vitres.layers.patch_embed import token_grid

__all__ = ["GapSampler", "sample_step_shape", "token_batch_size", "token_count"]


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


def token_count(resolution: int | tuple[int, int], patch_size: int, policy: str = "pad") -> int:
    """Patch tokens of a square (or ``(H, W)``) input under a size policy."""
    size = (resolution, resolution) if isinstance(resolution, int) else resolution
    rows, cols = token_grid(size, patch_size, policy)
    return int(rows) * int(cols)


def token_batch_size(
    tokens: int, native_tokens: int, batch_size: int, min_batch_size: int, max_batch_size: int
) -> int:
    """Examples per step so that ``examples x tokens`` matches the native step's.

    ``round(batch_size * native_tokens / tokens)`` clamped to ``[min_batch_size,
    max_batch_size]``: a 56 px step of a 28 px / patch 4 model (196 tokens against 49)
    takes a quarter of the examples, a 12 px one (9 tokens) up to ``max_batch_size``.
    The attention's cost grows faster than the token count, so large sizes still cost a
    little more per step; the clamp keeps tiny inputs from using huge batches.
    """
    if tokens < 1 or native_tokens < 1:
        raise ValueError(f"token counts must be >= 1; got {tokens} and {native_tokens}")
    if not 1 <= min_batch_size <= max_batch_size:
        raise ValueError(
            f"need 1 <= min_batch_size <= max_batch_size; got {min_batch_size}, {max_batch_size}"
        )
    wanted = round(batch_size * native_tokens / tokens)
    return max(min_batch_size, min(max_batch_size, wanted))


class GapSampler:
    """Draws sizes in proportion to how far the student is from the teacher at each.

    The sampler keeps, per arm (one ``(resolution, patch size)`` pair), an exponential
    moving average ``g_i`` of the gap measured at the steps that used it (the
    distillation KL to the teacher; the cross-entropy without a teacher). The
    probability of arm ``i`` among ``K`` is

        p_i = (1 - floor) * g_i / sum_j g_j + floor / K

    An arm not measured yet counts with the largest gap measured so far (all arms are
    uniform before any measurement), so every size is tried early; ``floor`` keeps
    every size in training, sizes already close to the teacher included, so none
    drifts away unseen. ``kind="uniform"`` ignores the gaps (``p_i = 1 / K``).

    Args:
        arms: the ``(resolution, patch size or None)`` pairs.
        kind: ``"gap"`` or ``"uniform"``.
        floor: share of the draws spread uniformly, in [0, 1].
        momentum: weight of the newest measurement in the average, in (0, 1].
    """

    KINDS = ("gap", "uniform")

    def __init__(
        self,
        arms: list[tuple[int, int | None]],
        kind: str = "gap",
        floor: float = 0.25,
        momentum: float = 0.1,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"sampler must be one of {self.KINDS}; got {kind!r}")
        if not arms:
            raise ValueError("the sampler needs at least one (resolution, patch size)")
        if not 0 <= floor <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"need 0 <= floor <= 1 and 0 < momentum <= 1; got {floor}, {momentum}")
        self.arms = list(arms)
        self.kind, self.floor, self.momentum = kind, floor, momentum
        self.gaps: list[float | None] = [None] * len(self.arms)

    def probabilities(self) -> list[float]:
        """The current draw probability of each arm."""
        count = len(self.arms)
        measured = [g for g in self.gaps if g is not None]
        if self.kind == "uniform" or not measured:
            return [1.0 / count] * count
        fill = max(measured)
        gaps = [max(g if g is not None else fill, 0.0) for g in self.gaps]
        total = sum(gaps)
        if total <= 0 or not math.isfinite(total):
            return [1.0 / count] * count
        return [(1 - self.floor) * g / total + self.floor / count for g in gaps]

    def draw(self, generator: torch.Generator) -> tuple[int, int | None]:
        """One arm, drawn with :meth:`probabilities` from ``generator``."""
        weights = torch.tensor(self.probabilities(), dtype=torch.float64)
        index = int(torch.multinomial(weights, 1, generator=generator))
        return self.arms[index]

    def update(self, arm: tuple[int, int | None], gap: float) -> None:
        """Folds the gap measured at a step that used ``arm`` into its average."""
        if not math.isfinite(gap):
            return
        index = self.arms.index(arm)
        old = self.gaps[index]
        self.gaps[index] = gap if old is None else (1 - self.momentum) * old + self.momentum * gap

    def state_dict(self) -> dict:
        return {"gaps": list(self.gaps)}

    def load_state_dict(self, state: dict) -> None:
        gaps = state.get("gaps")
        if gaps is not None:
            if len(gaps) != len(self.arms):
                raise ValueError(f"sampler state has {len(gaps)} arms, the config {len(self.arms)}")
            self.gaps = list(gaps)

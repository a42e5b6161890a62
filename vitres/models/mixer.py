"""MLP-Mixer (Tolstikhin et al., NeurIPS 2021) at any resolution and patch size.

A Mixer has no position embedding; its token-mixing MLP *is* position-specific: the
first layer's weight ``W1 (T, N)`` has one column per token and the second layer's
``W2 (N, T)`` and bias ``b2 (N)`` one row per token. To run on another token grid,
vitres reads each of these as a 2-D map over the native grid and resamples it to the new
grid (``token_resample_mode``, antialiased when shrinking). ``W1`` is also scaled by
``N / N'`` so that a token-constant input gives the same pre-activation at every grid.

Limits: this is exact only for weight maps that are smooth over the grid. Token-mixing
weights learned at one grid often hold sharp, position-specific patterns, so a Mixer
degrades faster away from its native grid than a ViT with resampled position
embeddings; training at mixed resolutions (``vitres train``) is the remedy. Resampled
weights are cached per grid in eval mode.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import VersionedCache
from vitres.layers.mlp import Mlp
from vitres.layers.patch_embed import PatchEmbed, PatchSize, fit_to_patch
from vitres.layers.pos_embed import resample_grid
from vitres.models.common import AnyResolutionMixin
from vitres.models.config import MixerConfig

__all__ = ["MixerConfig", "MlpMixer", "resample_token_mixing"]


def resample_token_mixing(
    fc1_weight: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    mode: str = "bilinear",
) -> tuple[Tensor, Tensor, Tensor]:
    """Resamples a token-mixing MLP from ``old_grid`` to ``new_grid`` (see module docstring).

    Returns:
        ``(W1' (T, N'), W2' (N', T), b2' (N'))``.
    """
    if old_grid == new_grid:
        return fc1_weight, fc2_weight, fc2_bias
    hidden = fc1_weight.shape[0]
    old_n = old_grid[0] * old_grid[1]
    new_n = new_grid[0] * new_grid[1]
    shrinking = new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1]
    antialias = shrinking and mode in ("bilinear", "bicubic")

    def resample(maps: Tensor) -> Tensor:  # (C, N) -> (C, N')
        grid = maps.float().reshape(1, -1, old_grid[0], old_grid[1])
        return resample_grid(grid, new_grid, mode, antialias).reshape(maps.shape[0], new_n)

    w1 = (resample(fc1_weight) * (old_n / new_n)).to(fc1_weight.dtype)
    w2 = resample(fc2_weight.T).T.to(fc2_weight.dtype).contiguous()
    b2 = resample(fc2_bias[None]).reshape(new_n).to(fc2_bias.dtype)
    assert w1.shape == (hidden, new_n)
    return w1, w2, b2


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        num_tokens = cfg.grid[0] * cfg.grid[1]
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_tokens = Mlp(num_tokens, cfg.tokens_mlp_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_mlp_dim)

    def forward(self, x: Tensor, token_weights: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        w1, w2, b2 = token_weights
        y = self.norm1(x).transpose(1, 2)  # (B, D, N)
        y = F.linear(F.gelu(F.linear(y, w1, self.mlp_tokens.fc1.bias)), w2, b2)
        x = x + y.transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(AnyResolutionMixin, nn.Module):
    """MLP-Mixer that accepts any input size and patch size."""

    num_prefix_tokens = 0

    def __init__(self, config: MixerConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = dataclasses.replace(config, **overrides) if config else MixerConfig(**overrides)
        self.config = cfg
        self.stem = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.blocks = nn.ModuleList(MixerBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = (
            nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        )
        self._cache = VersionedCache(max_entries=256)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=1e-6)

    def token_weights(self, index: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """The (cached) token-mixing weights of block ``index`` for ``grid``."""
        mlp = self.blocks[index].mlp_tokens
        if grid == self.config.grid:
            return mlp.fc1.weight, mlp.fc2.weight, mlp.fc2.bias
        sources = [mlp.fc1.weight, mlp.fc2.weight, mlp.fc2.bias]
        packed = self._cache.get(
            ("tokens", index, grid, self.config.token_resample_mode),
            sources,
            lambda: torch.cat(
                [
                    t.reshape(-1)
                    for t in resample_token_mixing(
                        *sources, self.config.grid, grid, self.config.token_resample_mode
                    )
                ]
            ),
            enabled=not self.training,
        )
        n = grid[0] * grid[1]
        hidden = mlp.fc1.weight.shape[0]
        w1 = packed[: hidden * n].reshape(hidden, n)
        w2 = packed[hidden * n : 2 * hidden * n].reshape(n, hidden)
        return w1, w2, packed[2 * hidden * n :]

    def forward_features(self, x: Tensor, patch_size: PatchSize | None = None) -> Tensor:
        cfg = self.config
        x, p, _ = self.check_input(x, patch_size)
        x, _ = fit_to_patch(x, p, cfg.size_policy)
        tokens, grid = self.stem(x, p, cfg.kernel_resize_mode, cfg.kernel_resize_antialias)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, self.token_weights(index, grid))
        return self.norm(tokens)

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = tokens.mean(dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor, patch_size: PatchSize | None = None) -> Tensor:
        """Classifies ``(B, in_chans, H, W)`` images of any size (see module docstring).

        A Mixer has no attention: its token-mixing weights are tied to one grid of equal
        patches, so token merging and mixed-resolution tokens (:mod:`vitres.tokens`)
        refuse it.
        """
        return self.forward_head(self.forward_features(x, patch_size))

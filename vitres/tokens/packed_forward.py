"""Running a packed batch through a ViT: every image exactly as if it ran alone.

Each image is embedded at its own size (size policy, patch embedding, its own grid's
position embedding and prefix tokens), then placed in its row of the batch
(:class:`~vitres.tokens.pack_plan.PackedBatch`). What keeps the images apart:

* attention: a token attends only to tokens of its own image. With one image per row a
  key-padding mask does it; with several (packing) the mask is block-diagonal. Padding
  tokens form a block of their own, so every softmax row has at least one finite entry
  (a padding query attends to padding) and nothing turns into NaN;
* RoPE: each token gets the rotation of its own image's grid (prefix and padding tokens
  the identity rotation);
* the continuous position bias: each image's block holds the bias of its own grid;
* pooling: each image's tokens are gathered back into a sequence of their own, with a
  mask over the padding, and pooled per image.

Learned, sin-cos and MLP position embeddings are added before packing. The result equals
``model(image[None])`` up to float rounding (the attention sums over the same keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vitres.tokens.pack_plan import PackedBatch

if TYPE_CHECKING:  # the model imports this module
    from vitres.models.vit import VisionTransformer

__all__ = ["forward_batch"]


def _positions(batch: PackedBatch, lengths: Sequence[int], skip: int = 0) -> Tensor:
    """Flat positions ``row · row_length + offset + t`` of every token of the batch's
    images, in slot order, leaving out each image's first ``skip`` tokens."""
    parts = [
        torch.arange(skip, n) + row * batch.row_length + offset
        for row, offset, n in zip(batch.rows, batch.offsets, lengths)
    ]
    return torch.cat(parts)


def forward_batch(
    model: VisionTransformer,
    images: Sequence[Tensor],
    batch: PackedBatch,
    patch_size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Logits ``(len(batch.images), classes)`` of one batch, in slot order.

    Args:
        model: the ViT.
        images: all images of the plan, ``(in_chans, H, W)`` each.
        batch: the batch to run.
        patch_size: the patch size for every image.
    """
    if batch.layout == "single":
        return model(images[batch.images[0]][None], patch_size=patch_size)
    cfg = model.config
    prefix = model.num_prefix_tokens
    embedded, grids = [], []
    for slot, image in enumerate(batch.images):
        tokens, grid, _ = model._embed(images[image][None], patch_size, None)
        if tokens.shape[1] != batch.lengths[slot]:
            raise ValueError(
                f"image {image} has {tokens.shape[1]} tokens but was planned with "
                f"{batch.lengths[slot]}; plan with the same model and patch size"
            )
        embedded.append(tokens[0])
        grids.append(grid)
    first = embedded[0]
    device, dtype, dim = first.device, first.dtype, first.shape[-1]
    rows, length = batch.num_rows, batch.row_length
    where = _positions(batch, batch.lengths).to(device)
    sequence = first.new_zeros(rows * length, dim).index_copy_(0, where, torch.cat(embedded))
    sequence = sequence.view(rows, length, dim)
    segment = torch.full((rows * length,), -1, dtype=torch.long, device=device)
    owner = torch.repeat_interleave(
        torch.arange(len(batch.images), device=device), torch.tensor(batch.lengths, device=device)
    )
    segment = segment.index_copy_(0, where, owner).view(rows, length)
    if batch.one_per_row:  # keys of the row's one image; padding queries see them too
        allowed = (segment >= 0)[:, None, None, :]  # (R, 1, 1, L)
    else:  # block-diagonal: each image, and the padding, attends within itself
        allowed = (segment[:, :, None] == segment[:, None, :])[:, None]  # (R, 1, L, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed, float("-inf"))
    rope = None
    if cfg.pos_embed == "rope":
        head_dim = cfg.embed_dim // cfg.num_heads
        cos = torch.ones(rows * length, head_dim, device=device)
        sin = torch.zeros(rows * length, head_dim, device=device)
        tables = [model._rope(grid, device) for grid in grids]
        patches = _positions(batch, batch.lengths, skip=prefix).to(device)
        cos.index_copy_(0, patches, torch.cat([c for c, _ in tables]))
        sin.index_copy_(0, patches, torch.cat([s for _, s in tables]))
        rope = (cos.view(rows, 1, length, head_dim), sin.view(rows, 1, length, head_dim))
    for index, block in enumerate(model.blocks):
        layer_mask = mask
        if model.cpb is not None:
            bias = torch.zeros(rows, cfg.num_heads, length, length, dtype=dtype, device=device)
            for grid, row, offset, n in zip(grids, batch.rows, batch.offsets, batch.lengths):
                block_bias = model._cpb_bias(index, grid).to(dtype)
                bias[row, :, offset : offset + n, offset : offset + n] = block_bias
            layer_mask = bias + mask
        sequence = block(sequence, rope=rope, num_prefix_tokens=0, attn_mask=layer_mask)
    sequence = model._token_norm(sequence).reshape(rows * length, dim)
    longest = max(batch.lengths)
    steps = torch.arange(longest, device=device)
    starts = torch.tensor(
        [row * length + offset for row, offset in zip(batch.rows, batch.offsets)], device=device
    )
    valid = steps[None, :] < torch.tensor(batch.lengths, device=device)[:, None]  # (n, T)
    gather = torch.where(valid, starts[:, None] + steps[None, :], starts[:, None])
    return model.forward_head(sequence[gather], token_mask=valid)

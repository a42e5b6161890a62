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

import torch
from torch import Tensor, nn

from vitres.layers.layout import TokenLayout, TokenSegment
from vitres.tokens.pack_plan import PackedBatch

__all__ = ["encode_batch", "forward_batch", "packed_layout"]


def _positions(batch: PackedBatch, lengths: Sequence[int], skip: int = 0) -> Tensor:
    """Flat positions ``row · row_length + offset + t`` of every token of the batch's
    images, in slot order, leaving out each image's first ``skip`` tokens."""
    parts = [
        torch.arange(skip, n) + row * batch.row_length + offset
        for row, offset, n in zip(batch.rows, batch.offsets, lengths)
    ]
    return torch.cat(parts)


def forward_batch(
    model: nn.Module,
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
    tokens, valid = encode_batch(model, images, batch, patch_size)
    return model.forward_head(tokens, token_mask=valid)


def encode_batch(
    model: nn.Module,
    images: Sequence[Tensor],
    batch: PackedBatch,
    patch_size: int | tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Each image's encoded tokens, taken back out of the packed rows.

    Args:
        model: the ViT.
        images: all images of the plan, ``(in_chans, H, W)`` each.
        batch: the batch to run.
        patch_size: the patch size for every image.

    Returns:
        The tokens ``(len(batch.images), T, D)``, in slot order, each image's sequence
        (prefix tokens first, after the final token norm) padded to the longest ``T``
        with copies of its first token, and the mask ``(len(batch.images), T)`` of its
        real tokens.
    """
    if batch.layout == "single":
        tokens = model.encode(model.tokenize(images[batch.images[0]][None], patch_size)).tokens
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    layout = packed_layout(model, images, batch, patch_size)
    rows, length, dim = layout.tokens.shape
    device = layout.tokens.device
    sequence = model.encode(layout).tokens.reshape(rows * length, dim)
    longest = max(batch.lengths)
    steps = torch.arange(longest, device=device)
    starts = torch.tensor(
        [row * length + offset for row, offset in zip(batch.rows, batch.offsets)], device=device
    )
    valid = steps[None, :] < torch.tensor(batch.lengths, device=device)[:, None]  # (n, T)
    gather = torch.where(valid, starts[:, None] + steps[None, :], starts[:, None])
    return sequence[gather], valid


def packed_layout(
    model: nn.Module,
    images: Sequence[Tensor],
    batch: PackedBatch,
    patch_size: int | tuple[int, int] | None = None,
) -> TokenLayout:
    """The packed sequence ``(rows, row_length, D)`` of a batch: each image tokenised at
    its own size (:meth:`~vitres.models.vit.VisionTransformer.tokenize`) and placed in its
    row, with the attention mask that keeps the images apart."""
    embedded, segments = [], []
    for slot, image in enumerate(batch.images):
        layout = model.tokenize(images[image][None], patch_size)
        tokens = layout.tokens
        if tokens.shape[1] != batch.lengths[slot]:
            raise ValueError(
                f"image {image} has {tokens.shape[1]} tokens but was planned with "
                f"{batch.lengths[slot]}; plan with the same model and patch size"
            )
        embedded.append(tokens[0])
        segments.append(
            TokenSegment(
                layout.grid,
                batch.rows[slot],
                batch.offsets[slot],
                batch.lengths[slot],
                layout.num_prefix_tokens,
            )
        )
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
    return TokenLayout(sequence, 0, attn_mask=mask, segments=tuple(segments))

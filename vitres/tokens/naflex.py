"""NaFlex input: SigLIP-2's variable-resolution batches, run as a packed batch.

SigLIP 2 (Tschannen et al., "SigLIP 2: Multilingual Vision-Language Encoders with
Improved Semantic Understanding, Localization, and Dense Features", 2025) has a NaFlex
variant, after NaViT (Dehghani et al., "Patch n' Pack", NeurIPS 2023): each image keeps
its aspect ratio, is resized so that its patch grid holds at most ``max_num_patches``
patches, and enters the model as a row of flattened patches padded to that length. A
batch in Hugging Face's layout (``Siglip2VisionModel``) is three tensors:

* ``pixel_values`` ``(B, N, p * p * C)``: each image's ``rows * cols`` patches in
  row-major order, each flattened as (row in patch, column in patch, channel), then
  padding;
* ``pixel_attention_mask`` ``(B, N)``: 1 for the image's patches, 0 for padding;
* ``spatial_shapes`` ``(B, 2)``: each image's grid ``(rows, cols)``.

A NaFlex batch is a packed batch with one image per row, so :func:`forward_naflex`
turns the patches back into images and runs them through
:func:`~vitres.tokens.packed_forward.encode_batch` (each image at its own grid, with its
own resampled position table; padding keys masked), the same path as
:func:`vitres.tokens.forward_packed`: there is no second block loop.

:func:`to_naflex` makes these inputs from ordinary images the way
``Siglip2ImageProcessor`` does: the grid of :func:`naflex_grid` (its search for the
largest scale whose grid fits ``max_num_patches``, each side rounded up to whole
patches), an antialiased bilinear resize (``F.interpolate``, which torchvision's tensor
resize calls for float images; PIL's resize of 8-bit images rounds differently), the
patches flattened as above and padded. For decoded 8-bit images,
:func:`vitres.data.naflex_from_pil` reproduces Hugging Face's PIL processor bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.tokens.pack_plan import plan_batches
from vitres.tokens.packed_forward import encode_batch

__all__ = [
    "NaFlexInputs",
    "NaFlexOutput",
    "forward_naflex",
    "naflex_grid",
    "naflex_images",
    "to_naflex",
]

DEFAULT_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class NaFlexInputs:
    """A NaFlex batch in Hugging Face's layout (the names of ``Siglip2VisionModel``).

    Attributes:
        pixel_values: ``(B, N, p * p * C)`` flattened patches, padding after each image's.
        pixel_attention_mask: ``(B, N)`` int32, 1 for an image's patches.
        spatial_shapes: ``(B, 2)`` int64, each image's grid ``(rows, cols)``.
    """

    pixel_values: Tensor
    pixel_attention_mask: Tensor
    spatial_shapes: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        """The three tensors by name, as ``Siglip2VisionModel(**inputs.as_dict())`` takes them."""
        return {
            "pixel_values": self.pixel_values,
            "pixel_attention_mask": self.pixel_attention_mask,
            "spatial_shapes": self.spatial_shapes,
        }


@dataclass(frozen=True)
class NaFlexOutput:
    """What :func:`forward_naflex` returns.

    Attributes:
        pooled: ``(B, F)`` what ``model(image)`` returns for each image: SigLIP-2's
            ``pooler_output`` (the attention pool) for a vision tower, logits for a
            classifier.
        last_hidden_state: ``(B, prefix + N, D)`` the encoded tokens after the final
            norm, each image's in the places of its patches (prefix tokens first; SigLIP-2
            has none); padding places hold zeros.
        mask: ``(B, prefix + N)`` bool, True where ``last_hidden_state`` holds a token.
    """

    pooled: Tensor
    last_hidden_state: Tensor
    mask: Tensor


def _to_pair(patch_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(patch_size, int):
        return patch_size, patch_size
    ph, pw = patch_size
    return int(ph), int(pw)


def naflex_grid(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """The grid ``(rows, cols)`` that ``Siglip2ImageProcessor`` resizes an image to.

    It searches (by bisection, on scales from 1e-6 to 100, to a width of 1e-5) for the
    largest scale whose grid holds at most ``max_num_patches`` patches, each side scaled
    and rounded up to whole patches, at least one.

    Args:
        height: the image's height in pixels.
        width: its width.
        patch_size: the (square) patch size.
        max_num_patches: patches per image at most.
    """
    if min(height, width, patch_size, max_num_patches) < 1:
        raise ValueError(
            f"naflex_grid needs positive sizes, got {height}x{width}, patch {patch_size}, "
            f"max_num_patches {max_num_patches}"
        )

    def cells(scale: float, side: int) -> int:
        return max(1, math.ceil(side * scale / patch_size))

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        middle = (low + high) / 2
        if cells(middle, height) * cells(middle, width) <= max_num_patches:
            low = middle
        else:
            high = middle
    return cells(low, height), cells(low, width)


def _patches(image: Tensor, patch: tuple[int, int]) -> Tensor:
    """``(C, rows * ph, cols * pw)`` -> ``(rows * cols, ph * pw * C)``, row-major."""
    channels, height, width = image.shape
    ph, pw = patch
    rows, cols = height // ph, width // pw
    cut = image.reshape(channels, rows, ph, cols, pw)
    return cut.permute(1, 3, 2, 4, 0).reshape(rows * cols, ph * pw * channels)


def to_naflex(
    images: Sequence[Tensor] | Tensor,
    patch_size: int = 16,
    max_num_patches: int = 256,
    resize: bool = True,
) -> NaFlexInputs:
    """Ordinary images as a NaFlex batch, as ``Siglip2ImageProcessor`` lays it out.

    Args:
        images: ``(C, H, W)`` float images, already normalised (or a ``(B, C, H, W)``
            batch).
        patch_size: the model's patch size.
        max_num_patches: the row length ``N``; each image's grid holds at most this many.
        resize: resize each image to its :func:`naflex_grid` (antialiased bilinear);
            ``False``: keep each image's size, which the patch must divide.

    Raises:
        ValueError: an image that is not ``(C, H, W)``, or (without resizing) one the
            patch does not divide or whose grid exceeds ``max_num_patches``.
    """
    images = list(images)
    if not images:
        raise ValueError("to_naflex: the list of images is empty")
    values, masks, shapes = [], [], []
    for index, image in enumerate(images):
        if image.ndim != 3:
            raise ValueError(f"image {index} has shape {tuple(image.shape)}; expected (C, H, W)")
        height, width = image.shape[-2:]
        if resize:
            rows, cols = naflex_grid(height, width, patch_size, max_num_patches)
            size = (rows * patch_size, cols * patch_size)
            if size != (height, width):
                image = F.interpolate(
                    image[None].float(), size, mode="bilinear", align_corners=False, antialias=True
                )[0].to(image.dtype)
        elif height % patch_size or width % patch_size:
            raise ValueError(
                f"image {index} is {height}x{width}, which the patch {patch_size} does not "
                "divide; pass resize=True or crop it to whole patches"
            )
        rows, cols = image.shape[-2] // patch_size, image.shape[-1] // patch_size
        if rows * cols > max_num_patches:
            raise ValueError(
                f"image {index} has {rows}x{cols} = {rows * cols} patches, more than "
                f"max_num_patches={max_num_patches}; pass resize=True or a larger row"
            )
        flat = _patches(image, (patch_size, patch_size))
        values.append(F.pad(flat, (0, 0, 0, max_num_patches - rows * cols)))
        mask = torch.zeros(max_num_patches, dtype=torch.int32)
        mask[: rows * cols] = 1
        masks.append(mask)
        shapes.append((rows, cols))
    return NaFlexInputs(torch.stack(values), torch.stack(masks), torch.tensor(shapes))


def naflex_images(
    pixel_values: Tensor,
    pixel_attention_mask: Tensor,
    spatial_shapes: Tensor,
    patch_size: int | Sequence[int],
) -> list[Tensor]:
    """The images ``(C, rows * ph, cols * pw)`` of a NaFlex batch (its patches put back).

    Raises:
        ValueError: shapes that do not agree, a grid longer than the row, or a mask that
            is not each image's patches first and padding after (the layout of
            ``Siglip2ImageProcessor``, which the source's position resizing assumes).
    """
    ph, pw = _to_pair(patch_size)
    if pixel_values.ndim != 3:
        raise ValueError(
            f"pixel_values must be (B, N, patch * patch * C), got {tuple(pixel_values.shape)}"
        )
    batch, length, features = pixel_values.shape
    if features % (ph * pw):
        raise ValueError(
            f"pixel_values hold {features} values per patch, not a multiple of the {ph}x{pw} "
            "patch; patch_size must be the size the patches were cut at"
        )
    channels = features // (ph * pw)
    if tuple(pixel_attention_mask.shape) != (batch, length):
        raise ValueError(
            f"pixel_attention_mask must be (B, N) = {(batch, length)}, got "
            f"{tuple(pixel_attention_mask.shape)}"
        )
    if tuple(spatial_shapes.shape) != (batch, 2):
        raise ValueError(f"spatial_shapes must be (B, 2), got {tuple(spatial_shapes.shape)}")
    images = []
    steps = torch.arange(length, device=pixel_attention_mask.device)
    for index, (rows, cols) in enumerate(spatial_shapes.tolist()):
        count = rows * cols
        if rows < 1 or cols < 1 or count > length:
            raise ValueError(
                f"image {index}: spatial shape {rows}x{cols} does not fit a row of {length} patches"
            )
        if not torch.equal(pixel_attention_mask[index].bool(), steps < count):
            raise ValueError(
                f"image {index}: pixel_attention_mask must mark its first {count} patches "
                f"({rows}x{cols}) and nothing after them, as Siglip2ImageProcessor writes it"
            )
        flat = pixel_values[index, :count].reshape(rows, cols, ph, pw, channels)
        images.append(flat.permute(4, 0, 2, 1, 3).reshape(channels, rows * ph, cols * pw))
    return images


def forward_naflex(
    model: nn.Module,
    pixel_values: Tensor,
    pixel_attention_mask: Tensor,
    spatial_shapes: Tensor,
    patch_size: int | Sequence[int] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> NaFlexOutput:
    """Runs a NaFlex batch (Hugging Face's ``Siglip2VisionModel`` inputs) through a ViT.

    Each image runs at its own grid, as ``model`` runs it alone (its size policy does
    nothing: the grid is whole patches); for a SigLIP-2 tower imported with
    :func:`vitres.from_pretrained` the result is the source's ``pooler_output`` and
    ``last_hidden_state`` of each image's patches.

    Args:
        model: a vitres ViT.
        pixel_values: ``(B, N, p * p * C)`` flattened patches.
        pixel_attention_mask: ``(B, N)``, 1 for patches, 0 for padding.
        spatial_shapes: ``(B, 2)`` each image's grid ``(rows, cols)``.
        patch_size: the size the patches were cut at (the model's own when ``None``; any
            other is run with the model's resized patch kernel).
        batch_tokens: token slots per forward call at most (bounds the memory).

    Returns:
        The :class:`NaFlexOutput`.

    Raises:
        ValueError: a model without ``encode`` (not a ViT), or inputs that are not a NaFlex
            batch (:func:`naflex_images` says which image and why).
    """
    if not hasattr(model, "encode"):
        raise ValueError(f"forward_naflex needs a vitres ViT; {type(model).__name__} has no encode")
    patch = _to_pair(patch_size if patch_size is not None else model.config.patch_size)
    images = naflex_images(pixel_values, pixel_attention_mask, spatial_shapes, patch)
    lengths = [model.num_tokens(tuple(image.shape[-2:]), patch) for image in images]
    prefix = model.num_prefix_tokens
    width = prefix + pixel_values.shape[1]
    pooled: list[Tensor | None] = [None] * len(images)
    hidden: Tensor | None = None
    mask = torch.zeros(len(images), width, dtype=torch.bool, device=pixel_values.device)
    for batch in plan_batches(lengths, "pad", batch_tokens=batch_tokens):
        tokens, valid = encode_batch(model, images, batch, patch)
        heads = model.forward_head(tokens, token_mask=valid)
        if hidden is None:
            hidden = tokens.new_zeros(len(images), width, tokens.shape[-1])
        for slot, image in enumerate(batch.images):
            count = lengths[image]
            pooled[image] = heads[slot]
            hidden[image, :count] = tokens[slot, :count]
            mask[image, :count] = True
    return NaFlexOutput(torch.stack(pooled), hidden, mask)  # type: ignore[arg-type]

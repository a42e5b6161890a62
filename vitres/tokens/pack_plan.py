"""Which images share a forward call, and where their tokens go: packing plans.

Pure functions of the images' sequence lengths (tokens, prefix included); nothing here
knows a model. A plan is a list of :class:`PackedBatch` (one forward call each) made by
one of the strategies of :func:`vitres.pack`:

* ``loop``: one image per call, at its own size;
* ``pad``: every image padded to the longest sequence, in input order (one bucket);
* ``bucket``: images sorted by length and padded to the longest of their batch, so each
  batch holds images of similar length (length bucketing);
* ``pack``: several images' sequences concatenated into rows of up to ``max_tokens``
  tokens (NaViT, Dehghani et al., NeurIPS 2023), by first-fit decreasing bin packing;
  attention is block-diagonal, one block per image.

Every batch holds at most ``batch_tokens`` token slots (rows × row length), padding
included, which bounds its memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LAYOUTS", "PackedBatch", "plan_batches"]

#: strategy -> how a batch lays its images out
LAYOUTS = {"loop": "single", "pad": "rows", "bucket": "rows", "pack": "rows"}


@dataclass(frozen=True)
class PackedBatch:
    """One forward call: the images it holds and where each sits.

    Attributes:
        images: positions of the images in the input list, one per slot.
        rows: the row of each image.
        offsets: the first token of each image in its row.
        lengths: the sequence length of each image (prefix tokens included).
        num_rows: rows of the call (the batch dimension).
        row_length: tokens per row, padding included.
        layout: ``"single"`` (one image alone, no padding) or ``"rows"``.
    """

    images: tuple[int, ...]
    rows: tuple[int, ...]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    num_rows: int
    row_length: int
    layout: str

    @property
    def one_per_row(self) -> bool:
        """Each row holds a single image (then a key-padding mask is enough)."""
        return len(set(self.rows)) == len(self.rows)

    @property
    def slots(self) -> int:
        """Token slots of the call, padding included."""
        return self.num_rows * self.row_length


def _rows_batch(
    images: Sequence[int], rows: Sequence[int], offsets: Sequence[int], lengths: Sequence[int]
) -> PackedBatch:
    num_rows = max(rows) + 1
    ends = [o + n for o, n in zip(offsets, lengths)]
    return PackedBatch(
        tuple(images), tuple(rows), tuple(offsets), tuple(lengths), num_rows, max(ends), "rows"
    )


def _one_per_row(
    order: Sequence[int], lengths: Sequence[int], row_length: int | None, batch_tokens: int
) -> list[PackedBatch]:
    """Images in ``order``, one per row; a batch grows while (rows + 1) × its longest
    row (or ``row_length``) fits ``batch_tokens`` (at least one image per batch)."""
    batches: list[PackedBatch] = []
    current: list[int] = []
    longest = 0
    for image in order:
        width = row_length or max(longest, lengths[image])
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(_finish_rows(current, lengths, row_length))
            current, longest = [], 0
        current.append(image)
        longest = max(longest, lengths[image])
    if current:
        batches.append(_finish_rows(current, lengths, row_length))
    return batches


def _finish_rows(images: list[int], lengths: Sequence[int], row_length: int | None) -> PackedBatch:
    batch = _rows_batch(images, range(len(images)), [0] * len(images), [lengths[i] for i in images])
    if row_length is not None and row_length > batch.row_length:
        batch = PackedBatch(
            batch.images,
            batch.rows,
            batch.offsets,
            batch.lengths,
            batch.num_rows,
            row_length,
            "rows",
        )
    return batch


def _first_fit_decreasing(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Rows of image positions, each row's lengths summing to at most ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for image in order:
        for index, room in enumerate(free):
            if lengths[image] <= room:
                rows[index].append(image)
                free[index] -= lengths[image]
                break
        else:
            rows.append([image])
            free.append(max_tokens - lengths[image])
    return rows


def plan_batches(
    lengths: Sequence[int],
    strategy: str,
    max_tokens: int | None = None,
    batch_tokens: int = 8192,
) -> list[PackedBatch]:
    """The batches of ``strategy`` for images of these sequence lengths.

    Args:
        lengths: tokens of each image, prefix included (all positive).
        strategy: ``loop``, ``pad``, ``bucket`` or ``pack``.
        max_tokens: row length of ``pack`` (default: the longest sequence); must hold the
            longest image.
        batch_tokens: token slots per batch at most (a batch holds one image or one row
            at the least).

    Raises:
        ValueError: an unknown strategy, no images, or sizes that cannot be planned.
    """
    if strategy not in LAYOUTS:
        raise ValueError(
            f"unknown packing strategy {strategy!r}; expected one of {sorted(LAYOUTS)}"
        )
    if not lengths:
        raise ValueError("nothing to pack: the list of images is empty")
    if any(n < 1 for n in lengths):
        raise ValueError(f"sequence lengths must be positive, got {list(lengths)}")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    longest = max(lengths)
    if strategy == "loop":
        return [PackedBatch((i,), (0,), (0,), (n,), 1, n, "single") for i, n in enumerate(lengths)]
    if strategy == "pad":
        return _one_per_row(range(len(lengths)), lengths, longest, batch_tokens)
    if strategy == "bucket":
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        return _one_per_row(order, lengths, None, batch_tokens)
    row_length = longest if max_tokens is None else max_tokens
    if row_length < longest:
        raise ValueError(
            f"max_tokens={max_tokens} is shorter than the longest image ({longest} tokens); "
            f"use max_tokens >= {longest} (or leave it unset)"
        )
    rows = _first_fit_decreasing(lengths, row_length)
    per_batch = max(1, batch_tokens // row_length)
    batches = []
    for start in range(0, len(rows), per_batch):
        images, row_of, offsets, sizes = [], [], [], []
        for row, members in enumerate(rows[start : start + per_batch]):
            offset = 0
            for image in members:
                images.append(image)
                row_of.append(row)
                offsets.append(offset)
                sizes.append(lengths[image])
                offset += lengths[image]
        batches.append(_rows_batch(images, row_of, offsets, sizes))
    return batches

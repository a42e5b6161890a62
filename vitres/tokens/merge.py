"""Token merging inside the blocks of a ViT (ToMe: Bolya et al., "Token Merging: Your ViT
But Faster", ICLR 2023).

In every block, between the attention and the MLP, ``r`` patch tokens are merged into
others that resemble them, so every later layer runs on fewer tokens. No training:

* **bipartite soft matching**: the tokens are split alternately into sets A and B; each
  A token's most similar B token (cosine similarity of the attention keys, averaged
  over heads) is its candidate, and the ``r`` A tokens with the most similar candidates
  are merged into them;
* **size-weighted averaging**: a token remembers how many patches it stands for (its
  size ``s``); merging averages the features weighted by size and adds the sizes;
* **proportional attention**: a key of size ``s`` gets ``log s`` added to its attention
  logits, so it draws the weight of ``s`` identical keys. Merging two identical tokens
  therefore changes nothing.

vitres adds what running at any resolution needs:

* the knob is an int ``r`` (tokens merged per block, as in the paper, at most half the
  patch tokens of a block) or a float keep ratio in ``(0, 1]``: keep about that fraction
  of the patch tokens by the last block, an equal share merged in each block. A fixed
  ``r`` removes most of a low-resolution image; the ratio scales with the token count;
* prefix tokens (class, distillation, registers) are never merged;
* padding: tokens that hold only padding (``valid_size``) are masked out of attention
  and pooling in the plain forward, so they are dropped before the first block here
  (which gives the same result) and never merged into content;
* position: learned, sin-cos and MLP embeddings are added to the input and merge with
  the features. RoPE and the continuous position bias act inside every block, so each
  token carries its centre (the size-weighted mean of its patches' centres): RoPE
  rotates by the angle at that centre, and the bias is the offset table interpolated at
  the offset of two centres (:func:`vitres.layers.pos_embed.offset_bias_at`);
* pooling: the mean (and the attention pool) weigh each token by its size, so the mean
  over the original patches is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.layout import TokenLayout
from vitres.layers.pos_embed import grid_coordinates

__all__ = [
    "MergePlan",
    "MergeReduction",
    "MergeSpec",
    "bipartite_soft_matching",
    "check_merge",
    "merge_is_identity",
    "merge_label",
    "merge_layout",
    "merge_schedule",
    "merged_forward",
    "model_merge_schedule",
    "proportional_attention",
    "parse_merge",
    "parse_merge_list",
]

#: An int ``r`` (patch tokens merged per block) or a float keep ratio in ``(0, 1]``.
MergeSpec = int | float

_HOW = (
    "pass an int r >= 0 (patch tokens merged in each block, e.g. 8) or a float keep ratio "
    "in (0, 1] (the fraction of patch tokens left after the last block, e.g. 0.5)"
)


def check_merge(merge: object) -> MergeSpec:
    """``merge`` if it is a valid setting, else ``ValueError`` saying what is expected."""
    if isinstance(merge, bool) or not isinstance(merge, (int, float)):
        hint = " (text: parse it with parse_merge)" if isinstance(merge, str) else ""
        raise ValueError(f"merge must be a number, got {merge!r}{hint}; {_HOW}")
    if isinstance(merge, int):
        if merge < 0:
            raise ValueError(f"merge={merge} merges a negative number of tokens; {_HOW}")
        return merge
    if not math.isfinite(merge) or not 0.0 < merge <= 1.0:
        raise ValueError(f"merge={merge} is not a keep ratio in (0, 1]; {_HOW}")
    return float(merge)


def merge_is_identity(merge: object) -> bool:
    """True for the settings that merge nothing (``0``, ``1.0``); checks the value."""
    value = check_merge(merge)
    return value == 0 if isinstance(value, int) else value == 1.0


def parse_merge(text: str | int | float | None) -> MergeSpec | None:
    """A merge setting from text: ``"8"`` → ``r = 8``, ``"0.5"`` → keep ratio 0.5,
    ``"none"`` → ``None``. ``"1"`` is ``r = 1``; write ``"1.0"`` for "keep everything"."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else check_merge(text)
    cleaned = str(text).strip().lower()
    if cleaned in ("", "none", "off"):
        return None
    try:
        value: MergeSpec = int(cleaned) if cleaned.lstrip("+-").isdigit() else float(cleaned)
    except ValueError:
        raise ValueError(f"cannot read merge setting {text!r}; {_HOW}") from None
    return check_merge(value)


def parse_merge_list(spec: str | Sequence[object] | None) -> list[MergeSpec | None]:
    """A sweep axis: ``"0,8,0.5"`` → ``[None, 8, 0.5]``. Settings that merge nothing
    become ``None`` (so they share the key of an unmerged config); duplicates dropped."""
    if spec is None:
        return [None]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[MergeSpec | None] = []
    for part in parts:
        value = parse_merge(part)  # type: ignore[arg-type]
        if value is not None and merge_is_identity(value):
            value = None
        if value not in out:
            out.append(value)
    return out or [None]


def merge_label(merge: MergeSpec | None) -> str:
    """``"none"``, ``"r8"`` or ``"keep0.5"``: how a setting is written in labels."""
    if merge is None:
        return "none"
    return f"r{merge}" if isinstance(merge, int) else f"keep{merge:g}"


def merge_schedule(merge: MergeSpec, num_tokens: int, depth: int) -> tuple[int, ...]:
    """Patch tokens merged in each of ``depth`` blocks, starting from ``num_tokens``.

    A block merges at most half its patch tokens (each merge needs one token of each
    set). An int ``r`` merges ``min(r, N // 2)`` in every block. A keep ratio ``q``
    keeps ``max(1, round(q · N))`` tokens: the merges are spread as evenly as the
    half-per-block limit allows.

    Raises:
        ValueError: an invalid setting, or a keep ratio too small to reach in ``depth``
            blocks (the message gives the smallest reachable one).
    """
    merge = check_merge(merge)
    schedule: list[int] = []
    tokens = num_tokens
    if isinstance(merge, int):
        for _ in range(depth):
            r = min(merge, tokens // 2)
            schedule.append(r)
            tokens -= r
        return tuple(schedule)
    target = max(1, math.floor(merge * num_tokens + 0.5))
    remaining = num_tokens - target
    for index in range(depth):
        r = min(-(-remaining // (depth - index)), tokens // 2)
        schedule.append(r)
        tokens -= r
        remaining -= r
    if remaining > 0:
        lowest = tokens / num_tokens
        raise ValueError(
            f"merge={merge} asks to keep {target} of "
            f"{num_tokens} patch tokens, but {depth} blocks can halve them at most "
            f"{depth} times: the smallest keep ratio here is about {lowest:.3g}"
        )
    return tuple(schedule)


@dataclass(frozen=True)
class MergePlan:
    """One bipartite soft matching: which tokens of set A (even positions) merge into
    which tokens of set B (odd positions), per sample.

    Attributes:
        kept: ``(B, Na - r)`` positions in A of the A tokens that stay.
        sources: ``(B, r)`` positions in A of the A tokens merged away.
        destinations: ``(B, r)`` positions in B each source merges into.
    """

    kept: Tensor
    sources: Tensor
    destinations: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` → ``(B, N - r, C)``: the kept A tokens, then the B tokens with the
        sources *added* to their destinations (weight before, divide after, to average)."""
        channels = x.shape[-1]
        set_a, set_b = x[:, ::2], x[:, 1::2]
        kept = set_a.gather(1, self.kept[..., None].expand(-1, -1, channels))
        sources = set_a.gather(1, self.sources[..., None].expand(-1, -1, channels))
        destinations = self.destinations[..., None].expand(-1, -1, channels)
        return torch.cat([kept, set_b.scatter_add(1, destinations, sources)], dim=1)


def bipartite_soft_matching(metric: Tensor, r: int) -> MergePlan:
    """ToMe's matching of ``metric`` ``(B, N, C)`` (one row per mergeable token).

    Each A token (even position) is paired with its most similar B token (odd position)
    by cosine similarity; the ``r`` best pairs are merged (ties: the earlier A token).

    Raises:
        ValueError: ``r`` is negative or more than the B tokens can take (``N // 2``).
    """
    tokens = metric.shape[1]
    if not 0 <= r <= tokens // 2:
        raise ValueError(f"can merge 0..{tokens // 2} of {tokens} tokens in one step, got r={r}")
    unit = F.normalize(metric.float(), dim=-1)
    scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # (B, Na, Nb)
    best, best_b = scores.max(dim=-1)
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    sources = order[:, :r]
    return MergePlan(order[:, r:], sources, best_b.gather(1, sources))


class MergeReduction:
    """Token merging as a per-block reduction of the model's ``encode`` loop
    (:class:`~vitres.models.vit.TokenReduction`): block ``i`` merges ``schedule[i]``
    patch tokens, and the layout's sizes and centres merge with the features.

    Args:
        schedule: patch tokens merged after each block's attention.
    """

    def __init__(self, schedule: Sequence[int]) -> None:
        self.schedule = tuple(schedule)

    def __call__(
        self, index: int, tokens: Tensor, metric: Tensor, layout: TokenLayout
    ) -> tuple[Tensor, TokenLayout]:
        """Merges ``schedule[index]`` of the patch tokens of ``tokens`` ``(B, prefix + N,
        D)`` by ``metric`` and updates the layout's sizes and centres the same way."""
        r = self.schedule[index]
        if r == 0:
            return tokens, layout
        prefix = layout.num_prefix_tokens
        plan = bipartite_soft_matching(metric[:, prefix:], r)
        sizes = layout.sizes[..., None]  # (B, N, 1)
        parts = [tokens[:, prefix:].float() * sizes, sizes]
        extra = [c for c in (layout.cells, layout.centres) if c is not None]
        parts += [c.to(torch.float32) * sizes for c in extra]
        summed = plan.apply(torch.cat(parts, dim=-1))
        dim = tokens.shape[-1]
        total = summed[..., dim : dim + 1]
        merged = (summed[..., :dim] / total).to(tokens.dtype)
        changes = {"sizes": total[..., 0]}
        offset = dim + 1
        for name in ("cells", "centres"):
            if getattr(layout, name) is not None:
                changes[name] = (summed[..., offset : offset + 2] / total).double()
                offset += 2
        tokens = torch.cat([tokens[:, :prefix], merged], dim=1)
        changes["attn_mask"] = proportional_attention(changes["sizes"], prefix, tokens.dtype)
        return tokens, layout.replace(tokens=tokens, **changes)


def proportional_attention(
    sizes: Tensor, num_prefix_tokens: int, dtype: torch.dtype
) -> Tensor | None:
    """``log size`` of each key on the attention logits, ``(B, 1, 1, T)`` (prefix tokens
    have size 1); ``None`` while every token has size 1."""
    if not bool((sizes != 1).any()):
        return None
    log_size = F.pad(sizes.log(), (num_prefix_tokens, 0))
    return log_size.to(dtype)[:, None, None, :]


def merge_layout(layout: TokenLayout, base_grid: tuple[int, int], pos_embed: str) -> TokenLayout:
    """A uniform layout prepared for merging: padding-only tokens dropped (they are
    masked everywhere), every patch token of size 1, and the centres the relative
    position kinds follow (``cells`` for the continuous bias, base-grid ``centres`` for
    RoPE)."""
    tokens, grid, keep = layout.tokens, layout.grid, layout.content
    prefix = layout.num_prefix_tokens
    content = None if keep is None else keep[prefix:]
    if keep is not None:
        tokens = tokens[:, keep]
    batch, device = tokens.shape[0], tokens.device

    def per_token(points: Tensor) -> Tensor:  # (N0, 2) -> (B, N, 2) content tokens
        points = points if content is None else points[content.to(points.device)]
        return points.to(device)[None].expand(batch, -1, -1)

    cells = centres = None
    if pos_embed == "cpb":
        rows, cols = torch.meshgrid(
            torch.arange(grid[0], dtype=torch.float64),
            torch.arange(grid[1], dtype=torch.float64),
            indexing="ij",
        )
        cells = per_token(torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1))
    if pos_embed == "rope":
        ys, xs = grid_coordinates(grid, base_grid, dtype=torch.float64)
        centres = per_token(torch.stack([ys, xs], dim=-1))
    sizes = torch.ones(batch, tokens.shape[1] - prefix, device=device)
    return layout.replace(
        tokens=tokens, content=None, attn_mask=None, centres=centres, cells=cells, sizes=sizes
    )


def content_tokens(layout: TokenLayout) -> int:
    """Patch tokens of a uniform layout that hold content (what a schedule counts)."""
    if layout.content is None:
        return layout.grid[0] * layout.grid[1]
    return int(layout.content[layout.num_prefix_tokens :].sum())


def model_merge_schedule(
    model: nn.Module,
    image_size: tuple[int, int] | Sequence[int],
    merge: MergeSpec,
    patch_size: int | tuple[int, int] | None = None,
) -> tuple[int, ...]:
    """Patch tokens ``model`` merges in each block for an ``(H, W)`` input."""
    rows, cols = model.grid_size(tuple(int(v) for v in image_size), patch_size)
    return merge_schedule(merge, rows * cols, model.config.depth)


def merged_forward(
    model: nn.Module,
    x: Tensor,
    merge: MergeSpec | None,
    patch_size: int | tuple[int, int] | None = None,
    valid_size: tuple[int, int] | None = None,
    schedule: Sequence[int] | None = None,
) -> Tensor:
    """``model(x, patch_size, valid_size)`` with token merging (see the module docstring).

    Args:
        model: a :class:`~vitres.models.vit.VisionTransformer` (any other model takes
            only the settings that merge nothing, and runs plainly).
        x: ``(B, in_chans, H, W)`` images.
        merge: the setting (:func:`check_merge`), scheduled over the content tokens;
            ``None``, ``0`` and ``1.0`` run the plain forward.
        patch_size: the patch size for this call.
        valid_size: ``(h, w)`` of content; padding-only tokens are dropped first.
        schedule: tokens to merge per block, instead of ``merge``'s schedule (a schedule
            of zeros runs this path without merging; tests compare it with the plain one).

    Returns:
        The logits (or embeddings) the model returns.

    Raises:
        ValueError: an invalid setting, or merging asked of a model without attention.
    """
    plain = merge is None or merge_is_identity(merge)  # checks the setting
    if not hasattr(model, "encode"):
        if plain:
            return model(x, patch_size=patch_size)
        raise ValueError(
            f"merge={merge!r}: {type(model).__name__} has no attention, so token merging "
            "(ToMe) does not apply (its token mixing is tied to the token grid); use a ViT, "
            "or drop merge"
        )
    if schedule is None and plain:
        if valid_size is None:
            return model(x, patch_size=patch_size)
        return model(x, patch_size=patch_size, valid_size=valid_size)
    cfg = model.config
    layout = model.tokenize(x, patch_size, valid_size)
    if schedule is None:
        schedule = merge_schedule(merge, content_tokens(layout), cfg.depth)
        if not any(schedule):  # nothing to merge at this size: exactly the plain forward
            return model.forward_layout(model.encode(layout))
    if len(schedule) != cfg.depth:
        raise ValueError(f"schedule has {len(schedule)} entries for {cfg.depth} blocks")
    rotary = getattr(cfg, "uses_rope", False)  # RoPE alone or beside a learned table
    layout = merge_layout(layout, cfg.grid, "rope" if rotary else cfg.pos_embed)
    encoded = model.encode(layout, MergeReduction(schedule))
    return model.forward_head(encoded.tokens, token_sizes=encoded.sizes)

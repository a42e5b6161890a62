"""Running a ViT on mixed-resolution tokens (:mod:`vitres.tokens.quadtree`).

:func:`quadtree_plan` checks and fits the input as the model's plain forward does and
plans each image's quadtree; :func:`forward_plan` embeds the planned cells, gives them
positions at their centres (:meth:`~vitres.models.vit.VisionTransformer.layout_at`) and
runs the model's ``encode`` loop; :func:`quadtree_forward` does both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.layers.cache import is_tracing
from vitres.layers.layout import TokenLayout
from vitres.layers.patch_embed import PatchSize, fit_to_patch, to_patch
from vitres.tokens.quadtree import (
    QuadtreePlan,
    QuadtreeTokenizer,
    cell_centres,
    cell_means,
    embed_cells,
)

__all__ = ["forward_plan", "quadtree_forward", "quadtree_plan"]


def quadtree_plan(
    model: nn.Module,
    x: Tensor,
    token_budget: int,
    patch_size: PatchSize | None = None,
    valid_size: tuple[int, int] | None = None,
    quadtree: QuadtreeTokenizer | None = None,
) -> tuple[Tensor, QuadtreePlan]:
    """The checked, size-fitted input and each image's quadtree under ``token_budget``.

    The input goes through the same checks and size policy as the model's forward (the
    fine patch decides the grid); padding outside ``valid_size`` is cropped first, so no
    token holds only padding.

    Raises:
        ValueError: no budget, a traced call, or a model without attention.
    """
    if token_budget is None:
        raise ValueError(
            "a quadtree needs token_budget=K (patch tokens per image); without one the "
            "model runs on one patch size (drop quadtree=)"
        )
    if not hasattr(model, "layout_at"):
        raise ValueError(
            "mixed-resolution tokens (token_budget) need attention, which takes any set "
            f"of tokens; {type(model).__name__} mixes one grid of equal patches by "
            "position. Use a ViT, or lower the resolution instead"
        )
    if is_tracing():
        raise ValueError(
            "mixed-resolution tokens choose regions from the pixels at run time, which "
            "a traced or exported graph cannot do; export the model without token_budget"
        )
    x, p, valid_size = model.check_input(x, patch_size, valid_size)
    if valid_size is not None:
        x = x[..., : valid_size[0], : valid_size[1]]
    tokenizer = quadtree or QuadtreeTokenizer()
    if tokenizer.align == "resize":  # whole coarsest cells: resize to their multiple
        ph, pw = to_patch(p)
        x, _ = fit_to_patch(x, (ph * tokenizer.coarsest, pw * tokenizer.coarsest), "resize")
    x, _ = fit_to_patch(x, p, model.config.size_policy)
    return x, tokenizer.plan(x, p, token_budget)


def quadtree_forward(
    model: nn.Module,
    x: Tensor,
    token_budget: int,
    patch_size: PatchSize | None = None,
    valid_size: tuple[int, int] | None = None,
    quadtree: QuadtreeTokenizer | None = None,
) -> Tensor:
    """The model's logits with mixed-resolution tokens: at most ``token_budget`` patch
    tokens per image, coarse where the image is flat and fine where it has detail.

    Args:
        model: a :class:`~vitres.models.vit.VisionTransformer`.
        x: ``(B, in_chans, H, W)`` images.
        token_budget: patch tokens per image at most.
        patch_size: the fine patch (the model's when ``None``).
        valid_size: ``(h, w)`` of content; the padding is cropped off before tokenising.
        quadtree: the quadtree's levels and saliency (default ``QuadtreeTokenizer()``).
    """
    x, plan = quadtree_plan(model, x, token_budget, patch_size, valid_size, quadtree)
    return forward_plan(model, x, plan)


def forward_plan(model: nn.Module, x: Tensor, plan: QuadtreePlan) -> Tensor:
    """Logits of images tokenised by ``plan`` (``x`` as :func:`quadtree_plan` returns it).

    Images whose trees have the same token count run as one batch; different counts
    (possible on grids the coarsest cell does not divide) run as separate batches, so
    no padding token ever enters attention or pooling and each image's logits are
    those of running it alone.
    """
    groups: dict[int, list[int]] = {}
    for image, count in enumerate(plan.counts):
        groups.setdefault(count, []).append(image)
    outputs = []
    for images in groups.values():
        index = torch.stack([plan.index[i] for i in images])  # (b, N) cells
        layout = plan_layout(model, x[images], plan, index)
        encoded = model.encode(layout)
        outputs.append((images, model.forward_head(encoded.tokens, token_sizes=encoded.sizes)))
    if len(outputs) == 1:
        return outputs[0][1]
    first = outputs[0][1]
    logits = first.new_empty((x.shape[0], *first.shape[1:]))
    for images, out in outputs:
        logits[images] = out
    return logits


def plan_layout(model: nn.Module, x: Tensor, plan: QuadtreePlan, index: Tensor) -> TokenLayout:
    """The layout of images that share a token count ``N``: tokens ``(b, prefix + N, D)``.

    ``index`` (b, N) names each token's cell; embeddings, positions and centres are
    computed once per cell of the grid and gathered. With ``plan.proportional`` each
    token's size (how many of the image's finest tokens it stands for) weighs it in
    attention (ToMe, Bolya et al., ICLR 2023: ``log(size)`` on the logits of each key, so
    a coarse token draws the attention its pixels would as finer tokens) and pooling.
    """
    cfg = model.config
    cells = plan.cells
    mode = plan.kernel_resize_mode or cfg.kernel_resize_mode

    def kernel(size: tuple[int, int]) -> Tensor:
        return model.patch_embed.kernel(size, mode, cfg.kernel_resize_antialias)

    table = embed_cells(x, kernel, model.patch_embed.proj.bias, plan.patch, cells)  # (b, M, D)
    tokens = table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]).to(x.device))
    ys, xs = cell_centres(cells)  # (M,) in [-1, 1]
    centres = torch.stack([ys[index], xs[index]], dim=-1)  # (b, N, 2)
    learned, learned_prefix = _learned_entries(model, plan, index, tokens.dtype)
    layout = model.layout_at(tokens, centres, learned, learned_prefix, grid=plan.grid)
    if not plan.proportional:
        return layout
    sizes = plan.token_sizes(index).to(x.device)
    prefix = layout.num_prefix_tokens
    log_size = F.pad(sizes.to(layout.tokens).log(), (prefix, 0))[:, None, None, :]
    return layout.replace(attn_mask=log_size, sizes=sizes)


def _learned_entries(
    model: nn.Module, plan: QuadtreePlan, index: Tensor, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """A learned table's entries for the tokens ``(b, N, D)`` and its prefix entries."""
    pos = model.position_table(plan.grid)
    if pos is None:
        return None, None
    pos = pos[0].to(dtype)  # (prefix? + rows * cols, D)
    cfg = model.config
    first = cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0
    prefix_pos = pos[:first] if first else None
    if plan.table_positions == "average":
        table = cell_means(pos[first:], plan.cells)
    else:  # the table at each level's own grid, as the uniform model at that patch
        table = torch.cat(
            [model.position_table(shape)[0, first:] for shape in plan.cells.level_shapes]
        ).to(dtype)
    return table[index.to(pos.device)], prefix_pos

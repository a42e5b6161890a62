"""Token adaptivity: fewer tokens where they carry little (merging), images of
different sizes in one pass without resizing (packing), and different resolutions for
different image regions (mixed-resolution tokens).

- :mod:`vitres.tokens.merge`: token merging inside the blocks (ToMe, Bolya et al. 2023),
  ``merged_forward(model, x, r_or_ratio)``, a per-block reduction of the model's
  ``encode`` loop;
- :mod:`vitres.tokens.pack`: :func:`pack` plans images of different sizes by a strategy
  (loop, pad, bucket, pack, auto) and :func:`forward_packed` runs them, each image as
  if alone (NaViT, Dehghani et al. 2023); :mod:`vitres.tokens.pack_plan` is the pure
  planning, :mod:`vitres.tokens.packed_forward` the packed layout;
- :mod:`vitres.tokens.naflex`: SigLIP-2's NaFlex batches (flattened patches, a padding
  mask and each image's grid, Hugging Face's layout): :func:`forward_naflex` runs them
  through the packed path, :func:`to_naflex` makes them from images as
  ``Siglip2ImageProcessor`` does;
- :mod:`vitres.tokens.quadtree`: a saliency-driven quadtree tokeniser under a token
  budget, run by :func:`quadtree_forward` (:mod:`vitres.tokens.quadtree_forward`);
- :mod:`vitres.tokens.mode`: :class:`TokenMode`, the one typed choice among these.

Every token kind builds a :class:`~vitres.layers.layout.TokenLayout` through the ViT's
public API (``tokenize``, ``layout_at``, ``position_table``, ``encode``,
``forward_head``); the models import nothing from here.
"""

from vitres.tokens.merge import (
    MergeReduction,
    MergeSpec,
    bipartite_soft_matching,
    check_merge,
    merge_is_identity,
    merge_label,
    merge_schedule,
    merged_forward,
    model_merge_schedule,
    parse_merge,
    parse_merge_list,
)
from vitres.tokens.mode import TOKEN_MODE_KINDS, BoundTokenMode, TokenMode
from vitres.tokens.naflex import (
    NaFlexInputs,
    NaFlexOutput,
    forward_naflex,
    naflex_grid,
    naflex_images,
    to_naflex,
)
from vitres.tokens.pack import (
    PACK_STRATEGIES,
    PackPlan,
    StrategyChoice,
    StrategyChooser,
    forward_packed,
    pack,
    run_plan,
)
from vitres.tokens.quadtree import QuadtreePlan, QuadtreeTokenizer, quadtree_cells
from vitres.tokens.quadtree_forward import forward_plan, quadtree_forward, quadtree_plan

__all__ = [
    "PACK_STRATEGIES",
    "TOKEN_MODE_KINDS",
    "BoundTokenMode",
    "MergeReduction",
    "MergeSpec",
    "NaFlexInputs",
    "NaFlexOutput",
    "PackPlan",
    "QuadtreePlan",
    "QuadtreeTokenizer",
    "StrategyChoice",
    "StrategyChooser",
    "TokenMode",
    "bipartite_soft_matching",
    "check_merge",
    "merge_is_identity",
    "merge_label",
    "merge_schedule",
    "merged_forward",
    "model_merge_schedule",
    "naflex_grid",
    "naflex_images",
    "forward_naflex",
    "forward_packed",
    "forward_plan",
    "pack",
    "parse_merge",
    "parse_merge_list",
    "quadtree_cells",
    "quadtree_forward",
    "quadtree_plan",
    "run_plan",
    "to_naflex",
]

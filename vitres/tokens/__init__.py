"""Token adaptivity: fewer tokens where they carry little (merging), images of
different sizes in one pass without resizing (packing), and different resolutions for
different image regions (mixed-resolution tokens).

- :mod:`vitres.tokens.merge`: token merging inside the blocks (ToMe, Bolya et al. 2023),
  ``model(x, merge=r_or_ratio)``;
- :mod:`vitres.tokens.pack`: :func:`pack` plans images of different sizes by a strategy
  (loop, pad, bucket, pack, auto) and ``model.forward_packed`` runs them, each image as
  if alone (NaViT, Dehghani et al. 2023); :mod:`vitres.tokens.pack_plan` is the pure
  planning, :mod:`vitres.tokens.packed_forward` the packed forward pass;
- :mod:`vitres.tokens.quadtree`: a saliency-driven quadtree tokeniser under a token
  budget, ``model(x, token_budget=K)``.

This package knows the ViT's internals (the model delegates to it); it does not import
:mod:`vitres.models`.
"""

from vitres.tokens.merge import (
    MergeSpec,
    bipartite_soft_matching,
    check_merge,
    merge_is_identity,
    merge_label,
    merge_schedule,
    parse_merge,
    parse_merge_list,
)
from vitres.tokens.pack import (
    PACK_STRATEGIES,
    PackPlan,
    StrategyChoice,
    StrategyChooser,
    pack,
    run_plan,
)
from vitres.tokens.quadtree import QuadtreePlan, QuadtreeTokenizer, quadtree_cells

__all__ = [
    "PACK_STRATEGIES",
    "MergeSpec",
    "PackPlan",
    "QuadtreePlan",
    "QuadtreeTokenizer",
    "StrategyChoice",
    "StrategyChooser",
    "bipartite_soft_matching",
    "check_merge",
    "merge_is_identity",
    "merge_label",
    "merge_schedule",
    "pack",
    "parse_merge",
    "parse_merge_list",
    "quadtree_cells",
    "run_plan",
]

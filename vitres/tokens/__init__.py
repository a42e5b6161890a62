"""Token-level adaptivity: tokenisers that give different image regions different
resolutions (:mod:`vitres.tokens.quadtree`)."""

from vitres.tokens.quadtree import QuadtreePlan, QuadtreeTokenizer, quadtree_cells

__all__ = ["QuadtreePlan", "QuadtreeTokenizer", "quadtree_cells"]

"""One typed token mode: how a model tokenises its input for a call.

A :class:`TokenMode` is uniform patches (the plain forward), token merging (ToMe,
:mod:`vitres.tokens.merge`), mixed-resolution quadtree tokens under a budget
(:mod:`vitres.tokens.quadtree`), or packing images of different sizes
(:mod:`vitres.tokens.pack`). Its rules (what combines with what) are checked here and
only here; evaluation, the tuner's grid, the measurement, export and the CLI all build
one. Records keep their own JSON fields (``merge``, ``token_budget``): a mode is made
from them with :meth:`TokenMode.of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from vitres.layers.patch_embed import PatchSize
from vitres.tokens.merge import MergeSpec, check_merge, merge_is_identity, merged_forward
from vitres.tokens.pack import PACK_STRATEGIES, forward_packed
from vitres.tokens.quadtree import QuadtreeTokenizer, check_token_budget
from vitres.tokens.quadtree_forward import quadtree_forward

__all__ = ["TOKEN_MODE_KINDS", "BoundTokenMode", "TokenMode"]

TOKEN_MODE_KINDS = ("uniform", "merge", "quadtree", "packed")


@dataclass(frozen=True)
class TokenMode:
    """How a model tokenises (validated on construction).

    Attributes:
        merge: token merging, an int ``r`` or a keep ratio (:func:`check_merge`);
            ``None``, ``0`` and ``1.0`` merge nothing.
        token_budget: mixed-resolution tokens, patch tokens per image at most.
        quadtree: the quadtree's settings (with ``token_budget`` only).
        pack: a packing strategy (:data:`~vitres.tokens.pack.PACK_STRATEGIES`) for images
            of different sizes.

    Raises:
        ValueError: an invalid setting, or settings that do not combine (merging and
            packing run on uniform grids, so neither combines with a token budget; a
            merge that merges nothing, ``0`` or ``1.0``, is no merge).
    """

    merge: MergeSpec | None = None
    token_budget: int | None = None
    quadtree: QuadtreeTokenizer | None = None
    pack: str | None = None

    def __post_init__(self) -> None:
        if self.merge is not None:
            check_merge(self.merge)
        if self.token_budget is not None:
            check_token_budget(self.token_budget)
            merging = self.merge is not None and not merge_is_identity(self.merge)
            if merging or self.pack is not None:
                raise ValueError(
                    "merge and token_budget cannot be combined yet (nor pack and "
                    "token_budget): token merging and packing run on a uniform patch grid; "
                    "pass token_budget (--token-budget) alone, or merge / pack without it"
                )
        if self.quadtree is not None and self.token_budget is None:
            raise ValueError(
                "quadtree settings (--quadtree-levels) need token_budget=K (mixed-resolution "
                "tokens); without one the model runs on one patch size"
            )
        if self.pack is not None and self.merge is not None:
            raise ValueError(
                "token merging inside packed sequences is not supported; use merge or pack"
            )
        if self.pack is not None and self.pack not in PACK_STRATEGIES:
            raise ValueError(
                f"unknown packing strategy {self.pack!r}; expected one of {PACK_STRATEGIES}"
            )

    @classmethod
    def of(
        cls,
        merge: MergeSpec | None = None,
        token_budget: int | None = None,
        quadtree_levels: int | None = None,
        pack: str | None = None,
    ) -> TokenMode:
        """A mode from flat settings (a record's fields, CLI flags)."""
        quadtree = None if quadtree_levels is None else QuadtreeTokenizer(levels=quadtree_levels)
        if quadtree is not None and token_budget is None:
            raise ValueError("--quadtree-levels needs --token-budget (mixed-resolution tokens)")
        return cls(merge, token_budget, quadtree, pack)

    @property
    def kind(self) -> str:
        """``uniform``, ``merge``, ``quadtree`` or ``packed``."""
        if self.token_budget is not None:
            return "quadtree"
        if self.pack is not None:
            return "packed"
        if self.merge is not None and not merge_is_identity(self.merge):
            return "merge"
        return "uniform"

    def check_model(self, model: nn.Module) -> None:
        """``ValueError`` unless ``model`` can take a token budget (mixed-resolution
        tokens need attention: a ViT), nor merge or mix the tokens of a model with BEiT's
        relative position bias tables (biases between cells of one grid only). Merging
        and packing refuse other models themselves."""
        if self.token_budget is not None and not hasattr(model, "layout_at"):
            raise ValueError(
                f"--token-budget needs a ViT (mixed-resolution tokens); {type(model).__name__} "
                "mixes one grid of equal patches"
            )
        config = getattr(model, "config", None)
        tables = getattr(config, "rel_pos_bias", False) or getattr(
            config, "shared_rel_pos_bias", False
        )
        if tables and self.kind in ("merge", "quadtree"):
            raise ValueError(
                f"{self.kind} tokens are not supported for a model with BEiT's relative "
                "position bias tables (BEiT, Data2Vec-vision): the tables hold biases between "
                "cells of one uniform grid; run it with uniform or packed tokens"
            )

    def check_exportable(self) -> None:
        """``ValueError`` if no exported graph can hold this mode (token merging, a token
        budget)."""
        if self.merge is not None:
            raise ValueError(
                f"token merging (merge={self.merge!r}) does not export: its matching sorts "
                "and scatters tokens by their values, which no exported graph here holds. "
                "Run merged models with the eager, eager-bf16 or compile backends"
            )
        if self.token_budget is not None:
            raise ValueError(
                f"mixed-resolution tokens (token_budget={self.token_budget}) do not export: "
                "the quadtree chooses its regions from the pixels at run time, which a traced "
                "graph cannot do. Export the model without a token budget, or run it with "
                "the eager, eager-bf16 or compile backends"
            )

    def forward(
        self,
        model: nn.Module,
        x: Tensor | Sequence[Tensor],
        patch_size: PatchSize | None = None,
        valid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """The model's output for ``x`` in this mode (a list of images when packing)."""
        kind = self.kind
        if kind == "quadtree":
            return quadtree_forward(
                model, x, self.token_budget, patch_size, valid_size, self.quadtree
            )
        if kind == "packed":
            return forward_packed(model, x, self.pack, patch_size=patch_size)
        if self.merge is not None:
            return merged_forward(model, x, self.merge, patch_size, valid_size)
        if valid_size is not None:
            return model(x, patch_size=patch_size, valid_size=valid_size)
        return model(x) if patch_size is None else model(x, patch_size=patch_size)

    def bind(self, model: nn.Module, patch_size: PatchSize | None = None) -> nn.Module:
        """``model`` with this mode and ``patch_size`` bound, so a backend sees a plain
        ``forward(x)``."""
        return BoundTokenMode(model, self, patch_size)


class BoundTokenMode(nn.Module):
    """A model with a token mode and a patch size bound: ``forward(x)``.

    Exporters read ``model``, ``patch_size`` and ``merge`` (and refuse a bound merge:
    no graph holds it) and ``token_budget``.
    """

    def __init__(self, model: nn.Module, mode: TokenMode, patch_size: PatchSize | None) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.patch_size = patch_size
        self.merge = mode.merge
        self.token_budget = mode.token_budget

    def forward(self, x: Tensor) -> Tensor:
        return self.mode.forward(self.model, x, self.patch_size)

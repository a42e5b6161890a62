"""Attention maps of a Vision Transformer on the input's own token grid.

Tools such as pytorch-grad-cam or vit-explain reshape attention to a fixed ``14 x 14``
grid; here the map follows whatever grid the input gets (non-square included), drops
the prefix tokens (class and register tokens) and flags tokens that hold only padding.

Three methods:

* ``raw``: the attention of each requested layer, heads fused;
* ``last``: the last requested layer's attention, heads fused;
* ``rollout``: attention rollout (Abnar and Zuidema, "Quantifying Attention Flow in
  Transformers", ACL 2020): per layer ``A'_l = (fuse(A_l) + I) / 2`` (the identity
  accounts for the residual connection), rows renormalised, and ``R = A'_L ... A'_1``.

The map is read from the rows the model's output is pooled from: the class token's row
for ``global_pool="token"``, the mean of the content patch tokens' rows for
``global_pool="avg"``. Column ``j`` of the map is how much of that output comes from input
patch ``j``.

Attention weights are computed explicitly only inside :func:`capture_attention`, and only
for the layers asked for: a forward hook on each of those ``Attention`` modules recomputes
``softmax(q k^T / sqrt(d) + mask)`` with :meth:`Attention.forward_with_weights`. The model's
own forward keeps the fused ``scaled_dot_product_attention`` and its output is never
changed; the hook checks that the explicit computation reproduces the fused output, so a
map can never silently describe another computation than the one the model ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitres.layers.patch_embed import fit_to_patch, padded_token_mask
from vitres.models.vit import VisionTransformer

__all__ = [
    "ATTENTION_METHODS",
    "HEAD_FUSIONS",
    "AttentionMaps",
    "attention_maps",
    "attention_rollout",
    "capture_attention",
    "parse_layers",
]

ATTENTION_METHODS = ("rollout", "last", "raw")
HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class AttentionMaps:
    """Attention maps on the token grid of one input batch.

    Attributes:
        maps: ``(B, K, rows, cols)`` float32; ``K = 1`` for ``rollout`` and ``last``, one
            map per layer in ``layers`` for ``raw``. Tokens that hold only padding are 0.
        valid: ``(rows, cols)`` bool, True where a token holds image content.
        grid: ``(rows, cols)`` token grid of the input.
        patch_size: patch side the model ran with.
        image_size: ``(H, W)`` of the input.
        layers: the layers whose attention went into the maps (0-based).
        method: ``rollout``, ``last`` or ``raw``.
        logits: ``(B, num_classes)`` model output of the same forward pass.
    """

    maps: Tensor
    valid: Tensor
    grid: tuple[int, int]
    patch_size: int
    image_size: tuple[int, int]
    layers: tuple[int, ...]
    method: str
    logits: Tensor


def _vit_blocks(model: nn.Module) -> nn.ModuleList:
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"attention maps need a vitres VisionTransformer; got {type(model).__name__}"
            + (
                " (an MLP-Mixer mixes tokens with MLPs and has no attention to show)"
                if type(model).__name__ == "MlpMixer"
                else ""
            )
        )
    if len(model.blocks) == 0:
        raise ValueError("the model has no transformer blocks (depth 0): no attention to show")
    return model.blocks


def _layer_indices(layers: int | Sequence[int] | None, depth: int) -> list[int]:
    """Sorted, de-duplicated 0-based layer indices (negative ones count from the end)."""
    if layers is None:
        return list(range(depth))
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError("layers is empty; give at least one layer index, or None for all")
    out = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not -depth <= item < depth:
            raise ValueError(
                f"layer {item!r} does not exist: the model has {depth} blocks "
                f"(valid indices 0..{depth - 1}, or -{depth}..-1 from the end)"
            )
        out.add(item % depth)
    return sorted(out)


def parse_layers(spec: str | None) -> list[int] | None:
    """``"0,2,-1"`` -> ``[0, 2, -1]``; ``None``, ``""`` or ``"all"`` -> ``None`` (all layers)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"layers must be comma-separated block indices like 0,2,-1 (or 'all'); got {spec!r}"
        ) from None


@contextlib.contextmanager
def capture_attention(
    model: nn.Module, layers: int | Sequence[int] | None = None, check: bool = True
) -> Iterator[dict[int, Tensor]]:
    """Records the attention weights of some layers during the forward passes inside.

    Example:
        >>> with capture_attention(model, layers=[-1]) as weights:
        ...     logits = model(x)
        >>> weights[model.config.depth - 1].shape  # (B, heads, T, T)

    Args:
        model: a vitres :class:`~vitres.models.vit.VisionTransformer`.
        layers: 0-based block indices (negative from the end); all blocks when ``None``.
        check: verify that the explicit attention reproduces the fused output of each
            recorded layer (raises ``RuntimeError`` if not).

    Yields:
        A dict ``layer -> weights (B, heads, T, T)`` (detached), filled by each forward
        pass (a later pass overwrites an earlier one).
    """
    blocks = _vit_blocks(model)
    captured: dict[int, Tensor] = {}
    handles = []

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            explicit, weights = module.forward_with_weights(*args, **kwargs)
            if check:
                tolerance = 1e-4 if output.dtype in (torch.float32, torch.float64) else 3e-2
                scale = 1.0 + float(output.detach().abs().max())
                error = float((explicit.detach() - output.detach()).abs().max())
                if error > tolerance * scale:
                    raise RuntimeError(
                        f"explicit attention of block {index} differs from the fused output by "
                        f"{error:.3g} (allowed {tolerance * scale:.3g}): the Attention module "
                        "computes something forward_with_weights does not reproduce"
                    )
            captured[index] = weights.detach()

        return hook

    for index in _layer_indices(layers, len(blocks)):
        attn = blocks[index].attn
        handles.append(attn.register_forward_hook(make_hook(index), with_kwargs=True))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _fuse_heads(weights: Tensor, head_fusion: str) -> Tensor:
    """``(B, heads, T, T) -> (B, T, T)`` float32."""
    weights = weights.float()
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    return weights.amin(dim=1)


def attention_rollout(weights: Sequence[Tensor], head_fusion: str = "mean") -> Tensor:
    """Attention rollout ``R = A'_L ... A'_1`` with ``A'_l = rownorm((fuse(A_l) + I) / 2)``.

    Args:
        weights: per layer, in forward order, ``(B, heads, T, T)`` attention weights.
        head_fusion: ``mean``, ``max`` or ``min`` over heads.

    Returns:
        ``(B, T, T)`` float32; row ``i`` says how much of token ``i``'s output comes from
        each input token.
    """
    if not weights:
        raise ValueError("attention_rollout needs the weights of at least one layer")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; expected one of {HEAD_FUSIONS}")
    batch, _, tokens, _ = weights[0].shape
    eye = torch.eye(tokens, device=weights[0].device)
    result = eye.expand(batch, tokens, tokens)
    for layer in weights:
        step = 0.5 * _fuse_heads(layer, head_fusion) + 0.5 * eye
        step = step / step.sum(dim=-1, keepdim=True)
        result = step @ result  # (B, T, T)
    return result


def _token_validity(
    model: VisionTransformer,
    x: Tensor,
    patch_size: int,
    valid_size: tuple[int, int] | None,
) -> tuple[tuple[int, int], Tensor]:
    """The token grid of ``x`` and the ``(rows * cols,)`` mask of tokens with content."""
    _, content = fit_to_patch(x[:1], patch_size, model.config.size_policy)
    if valid_size is not None:
        content = (min(content[0], valid_size[0]), min(content[1], valid_size[1]))
    grid = model.grid_size(tuple(x.shape[-2:]), patch_size)
    keep = padded_token_mask(grid, content, patch_size)
    if keep is None:
        keep = torch.ones(grid[0] * grid[1], dtype=torch.bool)
    return grid, keep


def _pooled_rows(matrix: Tensor, model: VisionTransformer, keep: Tensor) -> Tensor:
    """``(B, T, T) -> (B, T)``: the row(s) the model's pooled output is read from."""
    if model.config.global_pool == "token":
        return matrix[:, 0]
    prefix = model.num_prefix_tokens
    rows = prefix + torch.nonzero(keep.to(matrix.device)).flatten()
    return matrix[:, rows].mean(dim=1)


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    x: Tensor,
    layers: int | Sequence[int] | None = None,
    method: str = "rollout",
    head_fusion: str = "mean",
    patch_size: int | None = None,
    valid_size: tuple[int, int] | None = None,
) -> AttentionMaps:
    """Attention maps of ``model`` for the images ``x``, on their own token grid.

    Args:
        model: a vitres :class:`~vitres.models.vit.VisionTransformer` (run in eval mode
            for the call, its mode restored after).
        x: ``(B, in_chans, H, W)`` model-ready images, any ``H x W`` of at least one patch.
        layers: blocks to use (0-based, negative from the end); all when ``None``. For
            ``rollout`` the product runs over these layers in order; ``last`` uses the last
            of them; ``raw`` gives one map each.
        method: ``rollout``, ``last`` or ``raw`` (see the module docstring).
        head_fusion: how heads are combined: ``mean``, ``max`` or ``min``.
        patch_size: patch side for the call (the model's own when ``None``).
        valid_size: ``(h, w)`` of real content in the top-left corner, as for
            ``model(x, valid_size=...)``; tokens without content are 0 in the maps.

    Returns:
        :class:`AttentionMaps`.

    Raises:
        ValueError: for a model without attention, an unknown method or head fusion, a
            layer that does not exist, or images the model cannot take.
    """
    if method not in ATTENTION_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {ATTENTION_METHODS}")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; expected one of {HEAD_FUSIONS}")
    blocks = _vit_blocks(model)
    indices = _layer_indices(layers, len(blocks))
    recorded = indices[-1:] if method == "last" else indices
    p = model.config.patch_size if patch_size is None else patch_size
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model, recorded) as captured:
            logits = model(x, patch_size=p, valid_size=valid_size)
    finally:
        model.train(was_training)
    grid, keep = _token_validity(model, x, p, valid_size)
    prefix = model.num_prefix_tokens
    tokens = captured[recorded[0]].shape[-1]
    if tokens != prefix + grid[0] * grid[1]:
        raise RuntimeError(
            f"attention has {tokens} tokens but the grid {grid} with {prefix} prefix tokens "
            f"implies {prefix + grid[0] * grid[1]}"
        )
    if method == "rollout":
        matrices = [attention_rollout([captured[i] for i in recorded], head_fusion)]
    else:
        matrices = [_fuse_heads(captured[i], head_fusion) for i in recorded]
    rows = [_pooled_rows(matrix, model, keep)[:, prefix:] for matrix in matrices]  # (B, N) each
    maps = torch.stack(rows, dim=1)  # (B, K, N)
    maps = maps * keep.to(maps.device, maps.dtype)
    batch = maps.shape[0]
    return AttentionMaps(
        maps=maps.reshape(batch, len(rows), grid[0], grid[1]).cpu(),
        valid=keep.reshape(grid).cpu(),
        grid=(int(grid[0]), int(grid[1])),
        patch_size=int(p),
        image_size=(int(x.shape[-2]), int(x.shape[-1])),
        layers=tuple(recorded),
        method=method,
        logits=logits.detach().cpu(),
    )
